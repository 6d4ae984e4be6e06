//! `<out>.summary.json` of `scinterp effects` (written with sorted keys).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EffectsSummary {
    pub source: String,
    /// Features requested, and those that fired in some cell.
    pub features: usize,
    pub features_fired: usize,
    pub alphas: Vec<f32>,
    pub cells: usize,
    /// (feature, α, cell) edits run, controls included.
    pub edits: usize,
    pub edits_per_second: f64,
    /// Rows of the table: one per (feature, α).
    pub rows: usize,
    pub readout: String,
    /// The random-direction control; `None` with `--no-control`.
    pub control: Option<ControlRecord>,
    /// The pseudotime readout (`--pseudotime-tool`); absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudotime: Option<PseudotimeRecord>,
    pub seconds: f64,
    pub out: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlRecord {
    pub seed: u64,
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PseudotimeRecord {
    /// The tool folder read.
    pub tool: String,
    pub panel_genes: usize,
    /// Weights hash in the tool's provenance, and whether it is the steered model's.
    pub tool_weights_blake3: String,
    pub same_weights: bool,
    pub readout: String,
}
