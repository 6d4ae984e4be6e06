//! An exported tool's pseudotime as the readout of steering (`scinterp effects --pseudotime-tool`).
//!
//! The tool is linear in log1p panel expression, so its pseudotime shift under a change δ of that
//! expression is `δ·v` with `v` its gradient ([`Tool::pseudotime_gradient`]). Effects stands the steered
//! model's implied log-abundance of each panel gene in for δ (see `scinterp_engine::effects`).

use std::path::Path;

use scinterp_engine::cuda::GpuPrecision;
use scinterp_engine::device::Backend;
use scinterp_engine::effects::pipeline::{EffectsConfig, EffectsInputs};
use scinterp_engine::effects::{PanelReadout, PseudotimeReadout};
use scinterp_engine::formats::effects::EffectsSummary;
use scinterp_models::input::ModelOnCells;
use scinterp_models::LoadedModel;

use crate::files::read_tool;
use crate::ExportError;

/// The folders `scinterp effects` reads.
#[derive(Clone, Copy, Debug)]
pub struct EffectsFiles<'a> {
    /// Model folder (its MLM head is read).
    pub model: &'a Path,
    /// Token store of the cells.
    pub input: &'a Path,
    /// Folder of SAE folders, one per hook.
    pub saes: &'a Path,
    /// An exported tool of this model whose pseudotime is read on the edited cells.
    pub pseudotime_tool: Option<&'a Path>,
}

/// `scinterp effects` as a library call: loads the model with its head and the cells, reads the tool's
/// pseudotime readout when one is given (it replaces `config.pseudotime`), runs the blocks on `backend`
/// and writes `config.out`. `progress(edits_done, total)`.
pub fn effects(
    files: &EffectsFiles,
    mut config: EffectsConfig,
    backend: Backend,
    precision: GpuPrecision,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EffectsSummary, ExportError> {
    let loaded = ModelOnCells::open(files.model, files.input, true, backend, precision)?;
    if let Some(dir) = files.pseudotime_tool {
        config.pseudotime = Some(pseudotime_readout(dir, &loaded.model)?);
    }
    let inputs = EffectsInputs {
        cells: loaded.view(),
        saes: files.saes,
        input: files.input,
    };
    Ok(scinterp_engine::effects::pipeline::run(
        &config, &inputs, progress,
    )?)
}

/// Reads the tool in `dir` as a pseudotime readout of `model`. Refused: a tool of another model kind
/// (its panel tokens index another vocabulary) or one whose panel tokens the model does not have.
pub fn pseudotime_readout(dir: &Path, model: &LoadedModel) -> Result<PseudotimeReadout, ExportError> {
    let loaded = read_tool(dir)?;
    let card_path = dir.join(crate::files::CARD);
    let kind = loaded.card.provenance["model_kind"].as_str().unwrap_or("");
    if kind != model.name {
        return Err(ExportError::option(
            "--pseudotime-tool",
            format!(
                "{} was exported from a `{kind}` model but --model is `{}`: its panel tokens index \
                 another vocabulary; export a tool from this model (scinterp export operator --model …)",
                dir.display(),
                model.name
            ),
        ));
    }
    let vocab = model.encoder.dims().vocab_size;
    let tokens: Vec<u32> = loaded.card.panel.iter().map(|g| g.token).collect();
    if let Some(g) = loaded.card.panel.iter().find(|g| g.token as usize >= vocab) {
        return Err(ExportError::invalid(
            &card_path,
            format!(
                "panel gene {} has token {}, outside the model's vocabulary ({vocab} tokens): the tool \
                 belongs to another model",
                g.id, g.token
            ),
        ));
    }
    let weights = loaded.tool.pseudotime_gradient();
    if let Some(i) = weights.iter().position(|v| !v.is_finite()) {
        return Err(ExportError::invalid(
            dir.join(crate::files::WEIGHTS),
            format!("the pseudotime gradient of panel gene {i} is not finite"),
        ));
    }
    let tool_hash = loaded.card.provenance["weights_blake3"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let model_hash =
        blake3::hash(&std::fs::read(&model.weights).map_err(ExportError::io(&model.weights, "cannot read"))?)
            .to_hex()
            .to_string();
    Ok(PseudotimeReadout {
        panel_genes: tokens.len(),
        readout: PanelReadout { tokens, weights },
        tool: dir.to_path_buf(),
        same_weights: tool_hash == model_hash,
        tool_weights_blake3: tool_hash,
    })
}
