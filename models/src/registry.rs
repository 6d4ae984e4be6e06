//! The model registry: [`load`] recognises a model folder and returns a [`LoadedModel`] that knows its
//! encoder, what it reads (rank-ordered tokens, or genes with expression values), its special tokens,
//! the tokenizer of the token stores it reads, and the loss it was pretrained with. Code downstream
//! (forward, extract, SAE evaluation, tracing, effects) asks the loaded model these questions instead of
//! matching on the architecture.
//!
//! # Adding a model
//!
//! A third model (say a pre-LN encoder) touches:
//! 1. one folder, `models/src/<name>/`: its config reader, its architecture implementing
//!    `scinterp_engine::Encoder` (a pre-LN model builds its blocks from the engine's pre-LN block and
//!    says so in its `EncoderDims`), and a `pub(crate) const MODEL: ModelEntry` saying what its folder
//!    holds (`looks_for`), how to tell it apart (`recognises`) and how to load it (`load`, which fills in
//!    [`LoadedModel`]: input kind, special tokens, tokenizer, loss);
//! 2. one line in [`MODELS`] below (and `pub mod <name>;` in `lib.rs`).
//!
//! If it reads the token stores of an existing tokenizer, nothing else changes. A model with a new
//! tokenizer also adds its kind to [`TokenizerKind`] and implements the tokenizer beside the others in
//! `tokenize/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use scinterp_engine::Encoder;

use crate::error::ModelError;
use crate::token_store::TokenStoreManifest;

/// One model the registry knows.
pub struct ModelEntry {
    /// The model's name, as token stores (`tokenizer`) and activation stores (`model.kind`) record it.
    pub name: &'static str,
    /// What a folder of this model holds, for the message refusing a folder that nothing recognises.
    pub looks_for: &'static str,
    /// Whether `dir` is a folder of this model.
    pub recognises: fn(&Path) -> bool,
    /// Loads the folder (`with_head`: also the pretraining head).
    pub load: fn(&Path, bool) -> Result<LoadedModel, ModelError>,
}

/// The models [`load`] recognises, tried in order (scGPT first: its folders are told apart by
/// `args.json`, while a Geneformer folder only needs `config.json`).
pub const MODELS: &[ModelEntry] = &[crate::scgpt::MODEL, crate::geneformer::MODEL];

/// What a model reads at each position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// Token ids only, genes ordered by rank (Geneformer).
    RankTokens,
    /// A gene id and an expression value per position (scGPT).
    GeneValues,
}

/// The pretraining objective, which SAE evaluation scores spliced models with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PretrainingLoss {
    /// Masked language modelling: cross-entropy of the true token at positions replaced by `mask_id`.
    MaskedLm { mask_id: u32 },
    /// Squared error of the predicted expression value (the first head column) at gene positions.
    MaskedExpression,
}

/// Token ids that are not genes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub cls: Option<u32>,
    pub eos: Option<u32>,
}

impl SpecialTokens {
    /// The ids that are set.
    pub fn ids(&self) -> Vec<u32> {
        [self.pad, self.mask, self.cls, self.eos]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// The tokenizers of `scinterp tokenize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Geneformer V2 (104M, 316M): rank value encoding, `<cls>` … `<eos>`, 4,096 tokens.
    GeneformerV2,
    /// Geneformer V1 (10M, 12L): rank value encoding, no special tokens, 2,048 tokens.
    GeneformerV1,
    /// scGPT whole-human: gene symbols, per-cell binned values, `<cls>` first, 1,200 tokens.
    Scgpt,
}

impl TokenizerKind {
    /// The `tokenizer` field of the token stores it writes.
    pub fn store_name(self) -> &'static str {
        match self {
            TokenizerKind::GeneformerV2 | TokenizerKind::GeneformerV1 => "geneformer",
            TokenizerKind::Scgpt => "scgpt",
        }
    }

    /// Whether its stores carry an expression value per token.
    pub fn has_values(self) -> bool {
        matches!(self, TokenizerKind::Scgpt)
    }

    /// The tokenizer that wrote a store, from its manifest's `tokenizer` and `tokenizer_version`.
    pub fn of_store(manifest: &TokenStoreManifest) -> Option<Self> {
        match manifest.tokenizer.as_str() {
            "scgpt" => Some(TokenizerKind::Scgpt),
            "geneformer" if manifest.tokenizer_version.eq_ignore_ascii_case("v1") => {
                Some(TokenizerKind::GeneformerV1)
            }
            "geneformer" => Some(TokenizerKind::GeneformerV2),
            _ => None,
        }
    }

    /// Geneformer's special tokens, fixed by its dictionaries: V2 `<pad> <mask> <cls> <eos>` (0–3), V1
    /// `<pad> <mask>` (0–1). `None` for scGPT, whose ids come from the model's vocab.json.
    pub fn fixed_special_tokens(self) -> Option<SpecialTokens> {
        match self {
            TokenizerKind::GeneformerV2 => Some(SpecialTokens {
                pad: Some(0),
                mask: Some(1),
                cls: Some(2),
                eos: Some(3),
            }),
            TokenizerKind::GeneformerV1 => Some(SpecialTokens {
                pad: Some(0),
                mask: Some(1),
                cls: None,
                eos: None,
            }),
            TokenizerKind::Scgpt => None,
        }
    }
}

/// Where a model's special token ids come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Specials {
    /// Read from the model folder (scGPT's vocab.json).
    Fixed(SpecialTokens),
    /// Fixed by the tokenizer version that wrote the cells (Geneformer V1 has no `<cls>`/`<eos>`).
    ByTokenizer,
}

/// A model loaded from a folder, whichever architecture it is.
pub struct LoadedModel {
    /// The registry's name of the model (`geneformer`, `scgpt`).
    pub name: &'static str,
    pub encoder: Box<dyn Encoder>,
    /// The weights file that was read.
    pub weights: PathBuf,
    pub input: InputKind,
    pub loss: PretrainingLoss,
    /// The `tokenizer` of the token stores this model reads.
    pub tokenizer: &'static str,
    pub specials: Specials,
    /// The token every cell should start with, whose final state is the cell embedding (scGPT `<cls>`).
    pub embedding_token: Option<u32>,
}

impl LoadedModel {
    /// The special tokens of cells tokenized as `manifest` says; the manifest is only read (by calling
    /// it) when the ids depend on the tokenizer version.
    pub fn special_tokens<E>(
        &self,
        manifest: impl FnOnce() -> Result<TokenStoreManifest, E>,
    ) -> Result<SpecialTokens, E> {
        Ok(match &self.specials {
            Specials::Fixed(s) => s.clone(),
            Specials::ByTokenizer => TokenizerKind::of_store(&manifest()?)
                .and_then(TokenizerKind::fixed_special_tokens)
                .unwrap_or_default(),
        })
    }
}

/// Loads the model folder `dir` with the first entry of [`MODELS`] that recognises it; a path that is
/// not a folder, or a folder none recognises, is refused with what each model looks for.
pub fn load(dir: &Path, with_head: bool) -> Result<LoadedModel, ModelError> {
    let looked_for = || {
        MODELS
            .iter()
            .map(|m| format!("{} ({})", m.name, m.looks_for))
            .collect::<Vec<_>>()
            .join("; ")
    };
    if !dir.is_dir() {
        return Err(ModelError::NotAModelFolder {
            dir: dir.to_path_buf(),
            reason: "not a folder",
            looked_for: looked_for(),
        });
    }
    let Some(entry) = MODELS.iter().find(|m| (m.recognises)(dir)) else {
        return Err(ModelError::NotAModelFolder {
            dir: dir.to_path_buf(),
            reason: "not a model folder this version knows",
            looked_for: looked_for(),
        });
    };
    let started = Instant::now();
    let model = (entry.load)(dir, with_head)?;
    tracing::info!(
        "loaded {} ({}, {} layers, d_model {}) in {:.2} s",
        model.weights.display(),
        model.name,
        model.encoder.dims().n_layers,
        model.encoder.dims().d_model,
        started.elapsed().as_secs_f64()
    );
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_it_does_not_recognise_naming_what_it_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), false).err().unwrap().to_string();
        for part in ["not a model folder", "config.json", "args.json", "vocab.json"] {
            assert!(err.contains(part), "{err}");
        }
        let file = dir.path().join("config.json");
        std::fs::write(&file, "{}").unwrap();
        let err = load(&file, false).err().unwrap().to_string();
        assert!(
            err.contains("not a folder") && err.contains("config.json"),
            "{err}"
        );
    }

    #[test]
    fn special_tokens_follow_the_tokenizer_version() {
        let v2 = TokenizerKind::GeneformerV2.fixed_special_tokens().unwrap();
        assert_eq!(v2.ids(), vec![0, 1, 2, 3]);
        let v1 = TokenizerKind::GeneformerV1.fixed_special_tokens().unwrap();
        assert_eq!(v1.ids(), vec![0, 1]);
        assert_eq!(TokenizerKind::Scgpt.fixed_special_tokens(), None);
    }
}
