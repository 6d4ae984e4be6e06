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
    /// Keep edges with `sign_consistency` at least this: the fraction of **all** n cells whose change
    /// has the edge's majority sign (cells with no change count against it).
    pub min_consistency: f64,
    /// Edges whose source fired in fewer cells are untestable: no p-value, not in the BH family.
    pub min_cells: u32,
}

/// The default `min_cells`: below 3 cells a t test has at most one degree of freedom and Hedges' g is
/// undefined (J(1) = 0).
pub const DEFAULT_MIN_CELLS: u32 = 3;

impl Default for EdgeFilters {
    /// The command line's defaults: q ≤ 0.05, no effect-size filters, at least [`DEFAULT_MIN_CELLS`].
    fn default() -> Self {
        EdgeFilters {
            max_q: 0.05,
            min_abs_d: 0.0,
            min_consistency: 0.0,
            min_cells: DEFAULT_MIN_CELLS,
        }
    }
}

impl EdgeFilters {
    /// The effect-size filters (|d| and consistency), without the q threshold.
    pub fn effect_passes(&self, s: &EdgeStats) -> bool {
        s.cohens_d.abs() >= self.min_abs_d && s.sign_consistency >= self.min_consistency
    }

    pub fn passes(&self, s: &EdgeStats, q: f64) -> bool {
        q <= self.max_q && self.effect_passes(s)
    }

    /// Whether an edge over `n` cells is tested (enough cells and a finite p-value).
    pub fn testable(&self, s: &EdgeStats) -> bool {
        s.n >= self.min_cells.max(2) && s.p.is_finite()
    }
}

const FDR_RULE: &str =
    "Benjamini-Hochberg over every test performed (edges with n >= min_cells and a finite p)";
const NULL_METHOD: &str =
    "sign flips of each (source feature, cell) observation, shared across targets; the \
     observed rule is fixed (p <= p_threshold, the largest p among the edges written, plus the |d| and \
     consistency filters) and applied to every tested edge's flipped statistics; empirical_fdr = \
     min(1, pi0 * mean null edges / edges written), pi0 = min(1, #{tested p > 0.5} / (0.5 * tests)) \
     (Storey), since every tested edge is flipped, true ones included";

/// Statistics of every edge of an accumulator, BH over the tested ones, and the edges the filters keep.
pub struct EdgeTable {
    /// Edge keys, sorted.
    pub keys: Vec<(u32, u16, u32)>,
    pub stats: Vec<EdgeStats>,
    /// BH q (NaN for untestable edges).
    pub q: Vec<f64>,
    /// Indices of the tested edges.
    pub tested: Vec<usize>,
    /// Indices of the edges the filters keep.
    pub kept: Vec<usize>,
}

impl EdgeTable {
    pub fn new(acc: &TraceAccumulator, filters: &EdgeFilters) -> Result<EdgeTable, TraceError> {
        let mut keys: Vec<(u32, u16, u32)> = acc.edges.keys().copied().collect();
        keys.sort_unstable();
        let stats: Vec<_> = keys
            .iter()
            .map(|k| acc.edges[k].stats(acc.cells_active[&k.0]))
            .collect();
        let tested: Vec<usize> = (0..keys.len()).filter(|&i| filters.testable(&stats[i])).collect();
        let q_tested = bh_qvalues(&tested.iter().map(|&i| stats[i].p).collect::<Vec<_>>())?;
        let mut q = vec![f64::NAN; keys.len()];
        for (&i, &qv) in tested.iter().zip(&q_tested) {
            q[i] = qv;
        }
        let kept: Vec<usize> = tested
            .iter()
            .copied()
            .filter(|&i| filters.passes(&stats[i], q[i]))
            .collect();
        Ok(EdgeTable {
            keys,
            stats,
            q,
            tested,
            kept,
        })
    }

    /// The largest p among the kept edges: with the effect filters, the observed rule as a fixed rule.
    pub fn p_threshold(&self) -> Option<f64> {
        self.kept.iter().map(|&i| self.stats[i].p).reduce(f64::max)
    }

    /// Storey's estimate of the share of true nulls among the tested edges, π̂₀ = #{p > ½} / (½ · tests),
    /// at most 1 (1 when nothing was tested).
    pub fn pi0(&self) -> f64 {
        if self.tested.is_empty() {
            return 1.0;
        }
        let above = self.tested.iter().filter(|&&i| self.stats[i].p > 0.5).count();
        (above as f64 / (0.5 * self.tested.len() as f64)).min(1.0)
    }

    /// The empirical FDR of the rule from the null counts V_b: min(1, π̂₀ · mean V_b / R), R the edges
    /// kept (0 when nothing is kept). Every tested edge is flipped, true ones included, so mean V_b
    /// estimates the false discoveries of m tests; π̂₀ scales it to the m₀ true nulls.
    pub fn empirical_fdr(&self, null_counts: &[usize]) -> f64 {
        if self.kept.is_empty() || null_counts.is_empty() {
            return 0.0;
        }
        let mean = null_counts.iter().sum::<usize>() as f64 / null_counts.len() as f64;
        (self.pi0() * mean / self.kept.len() as f64).min(1.0)
    }

    /// The sign-flip null of the rule as applied: per permutation, the tested edges whose flipped
    /// statistics pass the fixed observed rule (p ≤ [`EdgeTable::p_threshold`] and the effect filters).
    pub fn null_counts(
        &self,
        acc: &TraceAccumulator,
        filters: &EdgeFilters,
        permutations: usize,
    ) -> Vec<usize> {
        let Some(p_max) = self.p_threshold() else {
            return vec![0; permutations];
        };
        (0..permutations)
            .map(|b| {
                self.tested
                    .iter()
                    .filter(|&&i| {
                        let k = &self.keys[i];
                        let s = acc.edges[k].flipped_stats(acc.cells_active[&k.0], &acc.null[k][b]);
                        s.p <= p_max && filters.effect_passes(&s)
                    })
                    .count()
            })
            .collect()
    }
}

/// Statistics of every edge, BH over every test performed; writes the filtered table to `out` (Parquet
/// or TSV by the extension) and its summary beside it (`.summary.json`), and returns the summary.
pub fn write_table(
    plan: &TracePlan,
    acc: &TraceAccumulator,
    filters: &EdgeFilters,
    out: &Path,
    seconds: f64,
) -> Result<TraceSummary, TraceError> {
    if filters.min_cells < DEFAULT_MIN_CELLS {
        return Err(TraceError::MinCells(filters.min_cells));
    }
    let t = EdgeTable::new(acc, filters)?;
    let (keys, stats, q, kept) = (&t.keys, &t.stats, &t.q, &t.kept);
    let null = null_summary(plan, acc, &t, filters);
    let f64s = |get: &dyn Fn(usize) -> f64| Column::F64(kept.iter().map(|&i| get(i)).collect());
    let frac = |c: u32, n: u32| f64::from(c) / f64::from(n.max(1));
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
        .column("q", f64s(&|i| q[i]))
        // Cells where ablating the source lowered (raised) the target: the source raises (lowers) it.
        .column(
            "source_raises_target_fraction",
            f64s(&|i| frac(stats[i].ablation_lowers, stats[i].n)),
        )
        .column(
            "source_lowers_target_fraction",
            f64s(&|i| frac(stats[i].ablation_raises, stats[i].n)),
        );
    table.write(out)?;
    let written = kept.len();
    let mut per_target: BTreeMap<String, usize> = BTreeMap::new();
    for &i in kept {
        *per_target
            .entry(plan.targets[keys[i].1 as usize].clone())
            .or_default() += 1;
    }
    // mean_change = ablated − clean: < 0 means the source raises the target. Zero means: neither.
    let raises = kept.iter().filter(|&&i| stats[i].mean < 0.0).count();
    let lowers = kept.iter().filter(|&&i| stats[i].mean > 0.0).count();

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
        tests_performed: t.tested.len(),
        all_zero_targets: traced as u64 * target_latents - keys.len() as u64,
        untestable_edges: keys.len() - t.tested.len(),
        edges_written: written,
        edges_per_target: per_target,
        source_raises_target_fraction: raises as f64 / written.max(1) as f64,
        source_lowers_target_fraction: lowers as f64 / written.max(1) as f64,
        zero_mean_edges: written - raises - lowers,
        filters: Some(FiltersRecord {
            max_q: filters.max_q,
            min_abs_d: filters.min_abs_d,
            min_consistency: filters.min_consistency,
            min_cells: filters.min_cells,
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

/// The sign-flip null summary of the table's rule (None without permutations).
fn null_summary(
    plan: &TracePlan,
    acc: &TraceAccumulator,
    t: &EdgeTable,
    filters: &EdgeFilters,
) -> Option<NullSummary> {
    let permutations = plan.settings.null_permutations;
    if permutations == 0 {
        return None;
    }
    let counts = t.null_counts(acc, filters, permutations);
    let mean = counts.iter().sum::<usize>() as f64 / permutations as f64;
    Some(NullSummary {
        permutations,
        seed: plan.settings.seed,
        p_threshold: t.p_threshold(),
        null_edges_mean: mean,
        pi0: t.pi0(),
        empirical_fdr: t.empirical_fdr(&counts),
        null_edges: counts,
        method: NULL_METHOD.into(),
    })
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
        source_raises_target_fraction: 0.0,
        source_lowers_target_fraction: 0.0,
        zero_mean_edges: 0,
        filters: None,
        null: None,
        out: out.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::formats::trace::TraceSettings;
    use crate::rng::Rng;
    use crate::trace::SignFlipNull;

    fn plan(permutations: usize) -> TracePlan {
        TracePlan {
            source: "blocks.0.hook_resid_post".into(),
            targets: vec!["blocks.1.hook_resid_post".into()],
            target_d_sae: vec![64],
            features_requested: 3,
            cells: 5,
            settings: TraceSettings {
                model: "m".into(),
                input: "i".into(),
                saes: "s".into(),
                source: "blocks.0.hook_resid_post".into(),
                targets: vec!["blocks.1.hook_resid_post".into()],
                features: "all".into(),
                cells: 5,
                chunk_cells: 5,
                max_batch_tokens: 100,
                null_permutations: permutations,
                seed: 1,
            },
        }
    }

    fn push(acc: &mut TraceAccumulator, feature: u32, per_cell: &[&[(u32, f64)]]) {
        *acc.cells_active.entry(feature).or_default() += per_cell.len() as u32;
        for changes in per_cell {
            let map: HashMap<u32, f64> = changes.iter().copied().collect();
            acc.add_cell(feature, 0, &map, &[]);
        }
    }

    /// Direction fields count f → g (ablated − clean < 0: the source raises the target); an edge with
    /// mean exactly 0 is on neither side; an edge over 2 cells is untestable; a constant non-zero change
    /// (duplicated cells) gets the exact sign-flip p 2/2ⁿ, not p = 0.
    #[test]
    fn directions_untestable_edges_and_constant_samples() {
        let mut acc = TraceAccumulator::default();
        push(
            &mut acc,
            0,
            &[
                &[(1, 1.0), (2, -1.0), (3, 1.0)],
                &[(1, 1.1), (2, -1.1), (3, -1.0)],
                &[(1, 0.9), (2, -0.9), (3, 1.0)],
                &[(1, 1.2), (2, -1.2), (3, -1.0)],
            ],
        );
        push(&mut acc, 1, &[&[(4, 1.0)], &[(4, 1.1)]]);
        let constant: &[(u32, f64)] = &[(5, 0.3)];
        push(&mut acc, 2, &[constant; 5]);
        let constant = acc.edges[&(2, 0, 5)].stats(5);
        assert_eq!((constant.sd, constant.p), (0.0, 2.0 / 32.0));
        let filters = EdgeFilters {
            max_q: 1.0,
            min_abs_d: 0.0,
            min_consistency: 0.0,
            min_cells: 3,
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("edges.tsv");
        let s = write_table(&plan(0), &acc, &filters, &out, 1.0).unwrap();
        assert_eq!(
            (s.tests_performed, s.untestable_edges, s.edges_written),
            (4, 1, 4)
        );
        // Targets 1 and 5 rise under ablation (the source lowers them), 2 falls, 3 has mean 0.
        assert_eq!(s.source_lowers_target_fraction, 0.5);
        assert_eq!(s.source_raises_target_fraction, 0.25);
        assert_eq!(s.zero_mean_edges, 1);
        let table = Table::read(&out).unwrap();
        let target = table.i64s("target_feature").unwrap();
        let raises = table.f64s("source_raises_target_fraction").unwrap();
        let lowers = table.f64s("source_lowers_target_fraction").unwrap();
        let cons = table.f64s("sign_consistency").unwrap();
        let row = |g: i64| target.iter().position(|&t| t == g).unwrap();
        assert_eq!((raises[row(2)], lowers[row(2)]), (1.0, 0.0));
        assert_eq!((raises[row(1)], lowers[row(1)]), (0.0, 1.0));
        assert_eq!((raises[row(3)], lowers[row(3)], cons[row(3)]), (0.5, 0.5, 0.5));
        assert!(!target.contains(&4));
        // Fewer than 3 cells cannot be asked for.
        let two = EdgeFilters {
            min_cells: 2,
            ..filters
        };
        assert!(matches!(
            write_table(&plan(0), &acc, &two, &out, 1.0),
            Err(TraceError::MinCells(2))
        ));
    }

    /// t with 3 degrees of freedom (heavy tails).
    fn t3(rng: &mut Rng) -> f64 {
        let chi2: f64 = (0..3).map(|_| rng.normal().powi(2)).sum();
        rng.normal() / (chi2 / 3.0).sqrt()
    }

    /// Planted edges: 20 % of the edges have a real effect, the rest are symmetric zero-inflated
    /// heavy-tailed noise; 20 cells per source feature. The estimate of the rule's FDR (the observed rule
    /// fixed, applied to sign-flipped statistics, scaled by π̂₀) tracks the true FDP of the edges written:
    /// it lies within [0.6, 1.5] × the true FDP (over seeds 1–12 the FDP ranged 0.033–0.058 around the
    /// estimate's ≈ 0.05; the FDP of ~30 false edges varies by ~20 %). Re-running BH per permutation (the
    /// old estimator) gives ≈ 0 here and fails the lower bound.
    #[test]
    fn the_sign_flip_fdr_tracks_the_true_fdp_of_planted_edges() {
        let null = SignFlipNull {
            permutations: 60,
            seed: 9,
        };
        let (features, targets, cells) = (160u32, 25u32, 20u32);
        let mut rng = Rng::new(21, 3);
        let mut acc = TraceAccumulator::default();
        let mut truth: HashSet<(u32, u16, u32)> = HashSet::new();
        for f in 0..features {
            acc.cells_active.insert(f, cells);
            let effects: Vec<f64> = (0..targets)
                .map(|g| {
                    if g % 5 == 0 {
                        1.0 + 1.5 * rng.uniform()
                    } else {
                        0.0
                    }
                })
                .collect();
            for (g, &e) in effects.iter().enumerate() {
                if e != 0.0 {
                    truth.insert((f, 0, g as u32));
                }
            }
            for c in 0..cells {
                let signs = null.signs(f, &[c, 7]);
                // Zero-inflated: 30 % of the cells show no change.
                let mut changes: HashMap<u32, f64> = HashMap::new();
                for (g, &e) in effects.iter().enumerate() {
                    if rng.uniform() >= 0.3 {
                        changes.insert(g as u32, e + t3(&mut rng));
                    }
                }
                acc.add_cell(f, 0, &changes, &signs);
            }
        }
        let filters = EdgeFilters {
            max_q: 0.1,
            min_abs_d: 0.3,
            min_consistency: 0.0,
            min_cells: 3,
        };
        let t = EdgeTable::new(&acc, &filters).unwrap();
        let false_kept = t.kept.iter().filter(|&&i| !truth.contains(&t.keys[i])).count();
        let fdp = false_kept as f64 / t.kept.len() as f64;
        let counts = t.null_counts(&acc, &filters, null.permutations);
        let estimate = t.empirical_fdr(&counts);
        assert!(
            t.kept.len() > 300 && false_kept >= 10,
            "{} kept, {false_kept} false",
            t.kept.len()
        );
        // π̂₀ is near the planted 0.8.
        assert!((t.pi0() - 0.8).abs() < 0.1, "pi0 {}", t.pi0());
        assert!(
            (0.6 * fdp..=1.5 * fdp).contains(&estimate),
            "estimate {estimate:.4} vs true FDP {fdp:.4} ({} kept)",
            t.kept.len()
        );
        // The old estimator: BH re-run on each permutation, the filters applied to its q.
        let old: f64 = (0..null.permutations)
            .map(|b| {
                let s: Vec<EdgeStats> = t
                    .tested
                    .iter()
                    .map(|&i| {
                        let k = &t.keys[i];
                        acc.edges[k].flipped_stats(cells, &acc.null[k][b])
                    })
                    .collect();
                let q = bh_qvalues(&s.iter().map(|s| s.p).collect::<Vec<_>>()).unwrap();
                s.iter().zip(&q).filter(|(s, &q)| filters.passes(s, q)).count() as f64
            })
            .sum::<f64>()
            / null.permutations as f64
            / t.kept.len() as f64;
        assert!(old < 0.6 * fdp, "old {old} vs {fdp}");
    }
}
