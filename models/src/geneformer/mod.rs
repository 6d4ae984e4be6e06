//! Geneformer (V1 and V2): Hugging Face `BertForMaskedLM`, post-LN BERT with ReLU.

mod config;
mod model;

pub use config::BertConfig;
pub use model::{Geneformer, LoadOptions};
