//! Geneformer (V1 and V2): Hugging Face `BertForMaskedLM`, post-LN BERT with ReLU.

mod config;
mod model;

pub use config::BertConfig;
pub use model::{Geneformer, LoadOptions};

use std::path::Path;

use crate::registry::{InputKind, LoadedModel, ModelEntry, PretrainingLoss, Specials};

/// Geneformer in the model registry.
pub(crate) const MODEL: ModelEntry = ModelEntry {
    name: "geneformer",
    looks_for: "config.json with model.safetensors or pytorch_model.bin",
    recognises: |dir: &Path| dir.join("config.json").is_file(),
    load: load_registered,
};

fn load_registered(dir: &Path, with_head: bool) -> Result<LoadedModel, crate::ModelError> {
    let model = Geneformer::load(dir, LoadOptions { with_head })?;
    Ok(LoadedModel {
        name: MODEL.name,
        weights: model.weights_path().to_path_buf(),
        encoder: Box::new(model),
        input: InputKind::RankTokens,
        // `<mask>` is id 1 in the V1 and V2 dictionaries alike.
        loss: PretrainingLoss::MaskedLm { mask_id: 1 },
        tokenizer: "geneformer",
        specials: Specials::ByTokenizer,
        embedding_token: None,
    })
}
