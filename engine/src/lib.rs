//! scinterp-engine: the model-agnostic machinery.
//!
//! - [`Matrix`] and [`PackedBatch`]: row-major f32 activations over packed variable-length cells
//!   (cells are concatenated, never padded to the longest).
//! - [`cpu`]: the CPU backend's ops (faer GEMM, rayon threads, f32).
//! - [`hooks`]: TransformerLens-named hook points; captures and edits (edits are data, not closures).
//! - [`encoder`]: the [`Encoder`] trait that models implement, and the post-LN block weights.
//! - [`executor`]: runs an encoder with hooks, from the embedding or from any layer (tail replay);
//!   [`Forward`] is the backend seam (CPU, or [`cuda`]'s GPU forward pass).
//! - [`formats`]: tables (Parquet/TSV), atomic writes, typed JSON summaries (catalog, trace…).
//! - [`store`] and [`extract`]: resumable activation stores and the batched extraction that fills them.
//! - [`sae`]: TopK sparse autoencoders: encode/decode, training with a sparse backward, SAELens files.
//! - [`analyze`]: the feature catalogue, SVD comparison, co-activation modules and cross-layer matching.
//! - [`annotate`]: feature annotation: gene-set (Fisher) and TRRUST/PPI edge enrichment with BH over
//!   every test, and cell-type enrichment.
//! - [`effects`]: feature → output effects (ablation and steering doses, logit and direction readouts).
//! - [`device`]: `--device auto|cpu|cuda`, resolved without panicking where CUDA is absent.
//! - [`stats`]: hypergeometric/Fisher and Student t tails in log space, BH/BY q-values, effect sizes,
//!   streaming mean/variance (f64).

pub mod analyze;
pub mod annotate;
pub mod batching;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod effects;
pub mod encoder;
pub mod error;
pub mod executor;
pub mod extract;
pub mod formats;
pub mod hooks;
pub mod matrix;
pub mod npy;
pub mod packed;
pub mod rng;
pub mod sae;
pub mod stats;
pub mod store;
#[cfg(test)]
mod test_model;
pub mod trace;

pub use encoder::{
    Activation, BertEmbedding, Encoder, EncoderDims, LayerNormWeights, LinearWeights, PostLnBlock,
    WeightShapeError,
};
pub use error::EngineError;
pub use executor::{run, CpuForward, Forward, ModelAndCells, RunOutput, Start};
pub use hooks::{Captures, Edit, HookPlan, HookPoint};
pub use matrix::Matrix;
pub use packed::PackedBatch;
