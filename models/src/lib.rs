//! scinterp-models: checkpoint readers (safetensors; PyTorch zip through a pickle reader that never
//! executes code), configs, and the model architectures (they implement the engine's `Encoder`).

pub mod cells;
pub mod checkpoint;
pub mod error;
pub mod extract;
pub mod forward;
pub mod gene_names;
pub mod geneformer;
pub mod input;
pub mod planted;
pub mod random_control;
pub mod registry;
pub mod sae_splice;
pub mod scgpt;
pub mod synthetic;
#[cfg(test)]
mod test_data;
pub mod token_chunks;
pub mod token_store;
pub mod tokenize;
pub mod trace;
pub mod weights;

pub use error::{Invalid, ModelError};
pub use registry::{load, LoadedModel};
