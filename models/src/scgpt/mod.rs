//! scGPT whole-human (`bowang-lab/scGPT`, `TransformerModel`): gene and value encoders, post-norm torch
//! encoder layers, expression and MVC decoders. Tokenisation lives in `tokenize::scgpt`.

mod config;
mod model;

pub use config::{ScgptConfig, SCGPT_LAYER_NORM_EPS, SCGPT_MAX_VALUE};
pub use model::{is_scgpt_dir, Scgpt, ScgptLoadOptions};

use std::path::Path;

use crate::registry::{InputKind, LoadedModel, ModelEntry, PretrainingLoss, SpecialTokens, Specials};

/// scGPT in the model registry.
pub(crate) const MODEL: ModelEntry = ModelEntry {
    name: "scgpt",
    looks_for: "args.json, vocab.json and best_model.pt or model.safetensors",
    recognises: is_scgpt_dir,
    load: load_registered,
};

fn load_registered(dir: &Path, with_head: bool) -> Result<LoadedModel, crate::ModelError> {
    let model = Scgpt::load(dir, ScgptLoadOptions { with_head })?;
    let (cls, pad) = (model.cls_id(), model.pad_id());
    Ok(LoadedModel {
        name: MODEL.name,
        weights: model.weights_path().to_path_buf(),
        encoder: Box::new(model),
        input: InputKind::GeneValues,
        loss: PretrainingLoss::MaskedExpression,
        tokenizer: "scgpt",
        // `<cls>` and `<pad>`: the positions that are not genes.
        specials: Specials::Fixed(SpecialTokens {
            pad: Some(pad),
            mask: None,
            cls: Some(cls),
            eos: None,
        }),
        // Its cell embedding is the final state at position 0, which should hold `<cls>`.
        embedding_token: Some(cls),
    })
}
