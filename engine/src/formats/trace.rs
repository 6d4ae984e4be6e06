//! The files of `scinterp trace`: the edge table's JSON summary (`<out>.summary.json`), and the
//! settings recorded in checkpoints and shard files (which decide whether a checkpoint resumes and
//! whether shards belong together).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything that decides a trace's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceSettings {
    /// Model folder, token store and SAE folder (absolute paths).
    pub model: String,
    pub input: String,
    pub saes: String,
    pub source: String,
    pub targets: Vec<String>,
    /// `--features` as given (`all`, a list, `top:N`).
    pub features: String,
    pub cells: usize,
    pub chunk_cells: usize,
    pub max_batch_tokens: usize,
    pub null_permutations: usize,
    pub seed: u64,
}

/// The settings a checkpoint or shard file carries: the trace's, and which shard (`[i, n]`) if any.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub plan: TraceSettings,
    pub shard: Option<(usize, usize)>,
}

/// What a trace was asked to do, as the table and the shards need it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TracePlan {
    pub source: String,
    pub targets: Vec<String>,
    pub target_d_sae: Vec<usize>,
    pub features_requested: usize,
    pub cells: usize,
    /// Everything that decides the result (for resume and for checking shards belong together).
    pub settings: TraceSettings,
}

/// The header of a shard file: its run settings and the plan `trace merge` needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardHeader {
    pub settings: RunSettings,
    pub plan: TracePlan,
}

/// The edge filters of the table, as recorded in the summary (fields in the sorted order this record
/// always had).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FiltersRecord {
    pub fdr: String,
    pub max_q: f64,
    pub min_abs_d: f64,
    /// Edges over fewer cells are untestable (absent in summaries written before it: 2).
    #[serde(default = "two")]
    pub min_cells: u32,
    pub min_consistency: f64,
}

fn two() -> u32 {
    2
}

/// `<out>.summary.json` (and `--json`). Written in this field order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub source: String,
    pub targets: Vec<String>,
    pub cells: usize,
    pub features_requested: usize,
    pub features_traced: usize,
    /// Requested features that never fired in the traced cells (nothing to ablate).
    pub features_skipped_never_fired: usize,
    pub ablations: u64,
    pub seconds: f64,
    pub ablations_per_second: f64,
    /// Edges whose target changed in at least one cell and whose statistics were tested.
    pub tests_performed: usize,
    /// (feature, target feature) pairs whose change was zero in every cell: counted, not tested.
    pub all_zero_targets: u64,
    /// Edges with n < min_cells, or no finite p-value: not tested.
    pub untestable_edges: usize,
    pub edges_written: usize,
    pub edges_per_target: BTreeMap<String, usize>,
    /// Of the edges written: mean_change < 0 (ablating the source lowers the target, so the source
    /// raises it; the published "inhibitory") and mean_change > 0 (the source lowers the target; the
    /// published "excitatory"). Edges with mean exactly 0 are in neither and counted in `zero_mean_edges`.
    pub source_raises_target_fraction: f64,
    pub source_lowers_target_fraction: f64,
    pub zero_mean_edges: usize,
    /// `None` for a shard (no table yet).
    pub filters: Option<FiltersRecord>,
    /// With `--null-permutations`: the observed rule fixed (p ≤ `p_threshold` plus the effect filters),
    /// the tested edges whose sign-flipped statistics pass it per permutation (mean and each), and the
    /// empirical FDR of the rule: min(1, π̂₀ · mean null edges / edges written).
    pub null: Option<NullSummary>,
    pub out: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NullSummary {
    pub permutations: usize,
    pub seed: u64,
    /// The largest p among the edges written (None when no edge was written: no null edge counts).
    pub p_threshold: Option<f64>,
    pub null_edges_mean: f64,
    pub null_edges: Vec<usize>,
    /// Storey's π̂₀ of the tested edges (λ = ½), which scales the null count.
    pub pi0: f64,
    pub empirical_fdr: f64,
    pub method: String,
}

/// One row of a trace edge table (`scinterp trace` output, Parquet or TSV), as other commands read it.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceEdgeRow {
    pub source_hook: String,
    pub source_feature: i64,
    pub target_hook: String,
    pub target_feature: i64,
    /// Mean change of the target when the source is ablated (> 0: the source lowers the target).
    pub mean_change: f64,
    /// BH q of the edge's test.
    pub q: f64,
}

/// Reads a trace edge table (`.parquet` or `.tsv`); a missing column or a bad value is an error that
/// names the file.
pub fn read_trace_edges(path: &std::path::Path) -> Result<Vec<TraceEdgeRow>, super::TableError> {
    let t = super::Table::read(path)?;
    let (sh, sf) = (t.strs("source_hook")?, t.i64s("source_feature")?);
    let (th, tf) = (t.strs("target_hook")?, t.i64s("target_feature")?);
    let (mc, q) = (t.f64s("mean_change")?, t.f64s("q")?);
    Ok((0..t.rows())
        .map(|r| TraceEdgeRow {
            source_hook: sh[r].clone(),
            source_feature: sf[r],
            target_hook: th[r].clone(),
            target_feature: tf[r],
            mean_change: mc[r],
            q: q[r],
        })
        .collect())
}
