//! Tokenizers: turn a [`CountMatrix`](crate::cells::CountMatrix) into the token sequences a model reads.
//!
//! - [`geneformer`]: Geneformer's rank value encoding (`TranscriptomeTokenizer`), V1 and V2 dictionaries,
//!   read from the published pickles by the code-free pickle reader.

pub mod geneformer;
pub mod scgpt;
