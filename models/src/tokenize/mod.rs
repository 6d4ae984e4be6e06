//! Tokenizers: turn a [`CountMatrix`](crate::cells::CountMatrix) into the token sequences a model reads.
//!
//! - [`geneformer`]: Geneformer's rank value encoding (`TranscriptomeTokenizer`), V1 and V2 dictionaries,
//!   read from the published pickles by the code-free pickle reader.
//! - [`scgpt`]: scGPT's gene vocabulary and per-cell value binning.
//! - [`pipeline`]: the chunked, resumable run from an input file to a token store, for any of them.

mod gene_columns;
pub mod geneformer;
pub mod pipeline;
pub mod scgpt;

pub use pipeline::{Config, PipelineError, Report};
