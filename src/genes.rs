//! Names for token ids (the loader lives in `scinterp_models::gene_names`).

pub use scinterp_models::gene_names::GeneNames;
