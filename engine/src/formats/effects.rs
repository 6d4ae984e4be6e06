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
    pub seconds: f64,
    pub out: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlRecord {
    pub seed: u64,
    pub kind: String,
}
