//! The edge table of a trace: statistics of every edge, Benjamini–Hochberg q-values over every test
//! performed, the filters, the sign-flip null, and the summary.

use std::collections::BTreeMap;
use std::path::Path;

use super::{EdgeStats, TraceAccumulator, TraceError};
use crate::formats::trace::{FiltersRecord, NullSummary, TracePlan, TraceSummary};
use crate::formats::{atomic_write, Column, Table};
use crate::stats::bh_qvalues;

/// Which edges the table keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdgeFilters {
    /// Keep edges with BH q at most this.
    pub max_q: f64,
    /// Keep edges with |Cohen's d| at least this.
    pub min_abs_d: f64,
    /// Keep edges whose sign agrees in at least this fraction of cells.
    pub min_consistency: f64,
}

impl EdgeFilters {
    pub fn passes(&self, s: &EdgeStats, q: f64) -> bool {
        q <= self.max_q && s.cohens_d.abs() >= self.min_abs_d && s.sign_consistency >= self.min_consistency
    }
}

const FDR_RULE: &str = "Benjamini-Hochberg over every test performed (edges with n >= 2 and a finite p)";
const NULL_METHOD: &str =
    "sign flips of each (source feature, cell) observation, shared across targets; BH and \
                           the filters applied to each permutation as to the data";

/// Statistics of every edge, BH over every test performed; writes the filtered table to `out` (Parquet
/// or TSV by the extension) and its summary beside it (`.summary.json`), and returns the summary.
pub fn write_table(
    plan: &TracePlan,
    acc: &TraceAccumulator,
    filters: &EdgeFilters,
    out: &Path,
    seconds: f64,
) -> Result<TraceSummary, TraceError> {
    let mut keys: Vec<(u32, u16, u32)> = acc.edges.keys().copied().collect();
    keys.sort_unstable();
    let stats: Vec<_> = keys
        .iter()
        .map(|k| acc.edges[k].stats(acc.cells_active[&k.0]))
        .collect();
    let tested: Vec<usize> = (0..keys.len()).filter(|&i| stats[i].p.is_finite()).collect();
    let q_tested = bh_qvalues(&tested.iter().map(|&i| stats[i].p).collect::<Vec<_>>())?;
    let mut q = vec![f64::NAN; keys.len()];
    for (&i, &qv) in tested.iter().zip(&q_tested) {
        q[i] = qv;
    }

    let kept: Vec<usize> = (0..keys.len())
        .filter(|&i| filters.passes(&stats[i], q[i]))
        .collect();
    let null = null_edges(plan, acc, &keys, &tested, filters, kept.len())?;
    let f64s = |get: &dyn Fn(usize) -> f64| Column::F64(kept.iter().map(|&i| get(i)).collect());
    let table = Table::new()
        .column("source_hook", Column::Str(vec![plan.source.clone(); kept.len()]))
        .column(
            "source_feature",
            Column::I64(kept.iter().map(|&i| i64::from(keys[i].0)).collect()),
        )
        .column(
            "target_hook",
            Column::Str(
                kept.iter()
                    .map(|&i| plan.targets[keys[i].1 as usize].clone())
                    .collect(),
            ),
        )
        .column(
            "target_feature",
            Column::I64(kept.iter().map(|&i| i64::from(keys[i].2)).collect()),
        )
        .column(
            "n_cells",
            Column::I64(kept.iter().map(|&i| i64::from(stats[i].n)).collect()),
        )
        .column("mean_change", f64s(&|i| stats[i].mean))
        .column("sd_change", f64s(&|i| stats[i].sd))
        .column("cohens_d", f64s(&|i| stats[i].cohens_d))
        .column("hedges_g", f64s(&|i| stats[i].hedges_g))
        .column("sign_consistency", f64s(&|i| stats[i].sign_consistency))
        .column("t", f64s(&|i| stats[i].t))
        .column("p", f64s(&|i| stats[i].p))
        .column("q", f64s(&|i| q[i]));
    table.write(out)?;
    let written = kept.len();
    let mut per_target: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &kept {
        *per_target
            .entry(plan.targets[keys[i].1 as usize].clone())
            .or_default() += 1;
    }
    let excitatory = kept.iter().filter(|&&i| stats[i].mean > 0.0).count();
    let inhibitory = written - excitatory;

    let traced = acc.cells_active.len();
    let target_latents: u64 = plan.target_d_sae.iter().map(|&d| d as u64).sum();
    let summary = TraceSummary {
        source: plan.source.clone(),
        targets: plan.targets.clone(),
        cells: plan.cells,
        features_requested: plan.features_requested,
        features_traced: traced,
        features_skipped_never_fired: plan.features_requested - traced,
        ablations: acc.ablations,
        seconds,
        ablations_per_second: acc.ablations as f64 / seconds.max(1e-9),
        tests_performed: tested.len(),
        all_zero_targets: traced as u64 * target_latents - keys.len() as u64,
        untestable_edges: keys.len() - tested.len(),
        edges_written: written,
        edges_per_target: per_target,
        excitatory_fraction: excitatory as f64 / written.max(1) as f64,
        inhibitory_fraction: inhibitory as f64 / written.max(1) as f64,
        filters: Some(FiltersRecord {
            max_q: filters.max_q,
            min_abs_d: filters.min_abs_d,
            min_consistency: filters.min_consistency,
            fdr: FDR_RULE.into(),
        }),
        null,
        out: out.display().to_string(),
    };
    // Field order, not sorted keys: the layout this file always had.
    let summary_path = out.with_extension("summary.json");
    let text = serde_json::to_string_pretty(&summary).map_err(|e| TraceError::Serialise(e.to_string()))?;
    atomic_write(&summary_path, text.as_bytes())?;
    Ok(summary)
}

/// The sign-flip null: for each permutation, the statistics of every tested edge from its flipped
/// sums, BH over the same family, and the count of edges the filters pass.
fn null_edges(
    plan: &TracePlan,
    acc: &TraceAccumulator,
    keys: &[(u32, u16, u32)],
    tested: &[usize],
    filters: &EdgeFilters,
    observed: usize,
) -> Result<Option<NullSummary>, TraceError> {
    let permutations = plan.settings.null_permutations;
    if permutations == 0 {
        return Ok(None);
    }
    let counts = (0..permutations)
        .map(|b| -> Result<usize, TraceError> {
            let stats: Vec<_> = tested
                .iter()
                .map(|&i| {
                    let k = &keys[i];
                    acc.edges[k].flipped_stats(acc.cells_active[&k.0], &acc.null[k][b])
                })
                .collect();
            let q = bh_qvalues(&stats.iter().map(|s| s.p).collect::<Vec<_>>())?;
            Ok(stats
                .iter()
                .zip(&q)
                .filter(|(s, &q)| filters.passes(s, q))
                .count())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mean = counts.iter().sum::<usize>() as f64 / permutations as f64;
    Ok(Some(NullSummary {
        permutations,
        seed: plan.settings.seed,
        null_edges_mean: mean,
        null_edges: counts,
        empirical_fdr: mean / observed.max(1) as f64,
        method: NULL_METHOD.into(),
    }))
}

/// The summary of a shard run (its accumulator is written; the table comes from `trace merge`).
pub fn shard_summary(plan: &TracePlan, acc: &TraceAccumulator, seconds: f64, out: &Path) -> TraceSummary {
    TraceSummary {
        source: plan.source.clone(),
        targets: plan.targets.clone(),
        cells: plan.cells,
        features_requested: plan.features_requested,
        features_traced: acc.cells_active.len(),
        features_skipped_never_fired: 0,
        ablations: acc.ablations,
        seconds,
        ablations_per_second: acc.ablations as f64 / seconds.max(1e-9),
        tests_performed: 0,
        all_zero_targets: 0,
        untestable_edges: 0,
        edges_written: 0,
        edges_per_target: BTreeMap::new(),
        excitatory_fraction: 0.0,
        inhibitory_fraction: 0.0,
        filters: None,
        null: None,
        out: out.display().to_string(),
    }
}
