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
    /// Per SAE of `saes`: `metadata.scinterp.training.seed` of its cfg.json (the seed its decoder was
    /// initialised from), when recorded.
    pub training_seeds: Vec<Option<u64>>,
    /// The different-seed control (`--control-saes`); null when none was run (and `warnings` says so).
    pub seed_control: Option<SeedControlSummary>,
    /// What a reader must know before trusting the matches: no control run, SAEs that share an
    /// initialisation, matches that pair feature i with feature i.
    pub warnings: Vec<String>,
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
    /// Matches (|cos| ≥ match_threshold) whose best feature has the same index: chance gives about
    /// matches / d_sae; most of them means the two SAEs started from one decoder.
    pub same_index_matches: usize,
}

/// The different-seed control: SAEs trained on the same hooks as some primaries from another seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedControlSummary {
    pub rule: String,
    /// Per control SAE: how many features of the primary come back in the control (same hook).
    pub hooks: Vec<SeedControlHook>,
    /// Cross-layer matching repeated with every control in place of its hook's primary, for each pair
    /// that has a control on at least one side, beside the primary pair's counts.
    pub pairs: Vec<ControlPairSummary>,
    /// Lifespans along the chain with every control in place of its hook's primary.
    pub lifespans: Vec<ControlLifespanSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedControlHook {
    pub hook: String,
    /// The control SAE folder and the primary it stands beside.
    pub control_sae: String,
    pub primary_sae: String,
    pub primary_seed: Option<u64>,
    pub control_seed: Option<u64>,
    pub alive_primary: usize,
    pub alive_control: usize,
    /// Alive primary features whose best |cos| among the control's alive features is ≥ match_threshold
    /// (≥ strong_threshold), and that count over `alive_primary`: the share of features reproducible
    /// across seeds, the ceiling for any cross-layer match rate.
    pub reproduced: usize,
    pub reproduced_fraction: f64,
    pub strong_reproduced: usize,
    pub strong_reproduced_fraction: f64,
    /// Median over alive primary features of the best |cos| in the control (null when none alive).
    pub median_best_abs_cos: Option<f64>,
    /// The same median against as many random unit directions (seeded Gaussian) as the control has alive
    /// features: what a best |cos| is by chance at this width and count.
    pub chance_median_best_abs_cos: Option<f64>,
    pub same_index_matches: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlPairSummary {
    pub from: String,
    pub to: String,
    /// "control" or "primary": which SAE of each hook this row compares.
    pub from_sae: String,
    pub to_sae: String,
    pub alive_from: usize,
    pub matches: usize,
    pub strong_matches: usize,
    pub mean_matched_abs_cos: Option<f64>,
    pub same_index_matches: usize,
    /// The same pair between the primaries (from `matching.pairs`), for comparison.
    pub primary_alive_from: usize,
    pub primary_matches: usize,
    pub primary_strong_matches: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlLifespanSummary {
    pub hook: String,
    /// "control" or "primary".
    pub sae: String,
    pub alive: usize,
    pub transient_at_most_3_layers: usize,
    pub mean_lifespan: f64,
    /// The primary chain's figures for this hook (from `lifespans`).
    pub primary_transient_at_most_3_layers: usize,
    pub primary_mean_lifespan: f64,
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
