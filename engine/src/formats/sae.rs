//! The `metadata` record scinterp writes into an SAE's `cfg.json` (SAELens keeps it): the hook, the
//! model, and scinterp's training record. Written with sorted keys; read back leniently through
//! [`crate::sae::io::SaeFolder`] (SAEs made elsewhere carry other metadata).

use serde::Serialize;

use crate::sae::splice::SpliceLosses;
use crate::sae::train::{EvalStats, TrainConfig, TrainSummary};

/// The `metadata` of a trained SAE's cfg.json.
#[derive(Clone, Debug, Serialize)]
pub struct SaeMetadata<'a> {
    /// sae-lens ≥ 6 reads a cfg.json without this as an old-format config and drops the metadata.
    pub sae_lens_version: &'static str,
    pub hook_name: String,
    pub hook_layer: Option<usize>,
    /// The model folder the activations came from, when the store records one.
    pub model_name: Option<serde_json::Value>,
    pub scinterp: SaeTrainingRecord<'a>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SaeTrainingRecord<'a> {
    pub version: &'static str,
    pub activation_store: String,
    pub training: &'a TrainConfig,
    pub summary: &'a TrainSummary,
    pub normalization: NormalizationRecord,
    pub holdout: HoldoutRecord,
    /// How `training.seed` follows from the run's `--seed` and the hook.
    pub seed_rule: &'static str,
    pub heldout: &'a EvalStats,
    pub spliced: &'a Option<SpliceLosses>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NormalizationRecord {
    pub kind: &'static str,
    pub scale: f64,
    pub folded_into: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct HoldoutRecord {
    pub rule: &'static str,
    pub seed: u64,
    pub fraction: f64,
    pub cells: usize,
    pub file: &'static str,
}

/// The version of SAELens whose cfg.json layout scinterp writes.
pub const SAE_LENS_VERSION: &str = "6.54.12";
