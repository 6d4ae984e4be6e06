//! `layers.json`: the summary of a layer comparison (`scinterp layers`).

use serde::{Deserialize, Serialize};

use super::TableFormat;

pub const LAYERS_FILE: &str = "layers.json";
pub const LAYERS_FORMAT: &str = "scinterp-layers";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayersSummary {
    pub format: String,
    pub format_version: u32,
    pub acts: String,
    pub saes: Vec<String>,
    pub hooks: Vec<String>,
    pub rows: usize,
    pub table_format: TableFormat,
    pub matching: MatchingSummary,
    pub lifespans: Vec<LifespanSummary>,
    pub highways: HighwaysSummary,
    pub seconds: f64,
    pub scinterp_version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatchingSummary {
    pub rule: String,
    pub match_threshold: f64,
    pub strong_threshold: f64,
    pub pairs: Vec<MatchPairSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatchPairSummary {
    pub from: String,
    pub to: String,
    pub alive_from: usize,
    pub matches: usize,
    pub strong_matches: usize,
    /// NaN (written as null) when nothing matched.
    pub mean_matched_abs_cos: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LifespanSummary {
    pub hook: String,
    pub alive: usize,
    pub transient_at_most_3_layers: usize,
    pub mean_lifespan: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HighwaysSummary {
    pub rule: String,
    pub null: String,
    pub min_fires: u64,
    pub min_cocount: u64,
    pub pmi_threshold: f64,
    pub pairs: Vec<HighwayPairSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HighwayPairSummary {
    pub from: String,
    pub to: String,
    pub eligible_sources: usize,
    pub highways: usize,
    pub highway_fraction: f64,
    pub highways_permuted_pairing: usize,
    pub highway_fraction_permuted_pairing: f64,
    pub mean_best_npmi: f64,
    pub mean_best_npmi_permuted_pairing: f64,
}
