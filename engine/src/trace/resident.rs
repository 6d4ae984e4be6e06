//! The plan of the GPU-resident tracer (`cuda::CudaForward::trace_resident`), independent of the device:
//! how a chunk's ablations become tail passes, what each pass gathers, encodes, sums and reduces, and how
//! the device's edge statistics join a [`TraceAccumulator`].
//!
//! One pass replays one cell: copy 0 is the cell's clean source state, copies 1..=B ablate B of the
//! features that fire in it (`trace_ablate`), all under one token budget. The clean copy runs in the same
//! batch as the ablated ones, so clean and ablated rows go through the same kernel configuration and a
//! row the ablation did not change gets the same code (no rounding noise as an effect). For every target
//! hook the rows the SAE reads at each ablation's active positions are gathered, clean rows first, then
//! ablated rows, and encoded in one call; `trace_code_sums` sums each ablation's codes over its positions
//! and `trace_reduce` pushes the per-cell change into the statistics slot of its source feature. Only the
//! statistics come back, once per chunk.
//!
//! The observation of a (feature, cell) is the CPU tracer's, `(Σ ablated − Σ clean) / n` over the
//! active positions, with the two sums formed in f32 on the device instead of one interleaved f64 sum;
//! edge statistics equal the CPU's to rounding (tested in `tests` below with the host references of the
//! kernels).

use std::ops::Range;

use scinterp_kernels::gpu::{sign_flip_hash, AblationList, CodeSegments, GpuError, TraceStatsHost};

use super::{Ablation, CleanCell, EdgeSums, FlipSums, SignFlipNull, TraceAccumulator};
use crate::stats::RunningStats;

/// Most bytes of device statistics one phase keeps (over all target hooks); a chunk whose features
/// need more is traced in several phases, each over a range of the features.
pub const STATS_BUDGET_BYTES: usize = 4 << 30;

/// Most ablations in one pass: with the clean copy, the 65,535 copies a kernel grid's y dimension holds.
pub const MAX_PASS_ABLATIONS: usize = 65_534;

/// One tail pass: one cell, its clean copy and `ablations.len()` ablated copies.
#[derive(Debug)]
pub struct Pass {
    /// Index of the cell in the chunk.
    pub cell: usize,
    /// Indices into the chunk's ablation list.
    pub ablations: Range<usize>,
    /// Copy 0: no edit; copy 1 + i: ablation i of the pass.
    pub list: AblationList,
    /// Rows of the tail's output (`[copies · len, d]`) the target SAEs encode: for every ablation, its
    /// active positions in the clean copy, then, for every ablation, the same positions in its copy.
    pub gather_rows: Vec<u32>,
    /// Active positions of each ablation (its rows in each half of `gather_rows`).
    pub lengths: Vec<usize>,
    /// The statistics slot of each ablation's feature in its phase.
    pub slots: Vec<u32>,
    /// `n_active` and `sign_hash` of `trace_reduce`, one per ablation (cells = 1).
    pub n_active: Vec<u32>,
    pub sign_hash: Vec<u64>,
}

impl Pass {
    pub fn copies(&self) -> usize {
        self.list.copies()
    }

    /// The clean and the ablated code segments of the encoded rows (`[2 · rows, k]`), for
    /// `trace_code_sums` into `n_targets` latents.
    pub fn segments(&self, n_targets: usize) -> Result<(CodeSegments, CodeSegments), GpuError> {
        let rows: usize = self.lengths.iter().sum();
        Ok((
            CodeSegments::new(0, &self.lengths, n_targets)?,
            CodeSegments::new(rows, &self.lengths, n_targets)?,
        ))
    }
}

/// A range of the chunk's source features whose statistics fit the budget together, and its passes.
#[derive(Debug)]
pub struct Phase {
    /// The features of the phase, ascending; slot k of its statistics is `features[k]`.
    pub features: Vec<u32>,
    pub passes: Vec<Pass>,
}

/// Device bytes of one statistics slot over all targets: mean and M2 (f64), two counts (u32) per target
/// latent, and per permutation a sum (f64) and two counts.
pub fn slot_bytes(target_widths: &[usize], permutations: usize) -> usize {
    target_widths
        .iter()
        .map(|&f| f * (8 + 8 + 4 + 4 + permutations * 16))
        .sum::<usize>()
        .max(1)
}

/// Splits the ablations of a chunk (ordered by cell, then feature, as `trace_cells` builds them) into
/// phases of at most `budget` statistics bytes, and each phase into one-cell passes of at most
/// `max_batch_tokens` tokens (a pass holds at least one ablation, even when a cell alone exceeds it).
pub fn plan(
    clean: &[CleanCell],
    ablations: &[Ablation],
    n_source_features: usize,
    null: &SignFlipNull,
    (max_batch_tokens, bytes_per_slot, budget): (usize, usize, usize),
) -> Result<Vec<Phase>, GpuError> {
    let mut features: Vec<u32> = ablations.iter().map(|a| a.feature).collect();
    features.sort_unstable();
    features.dedup();
    let per_phase = (budget / bytes_per_slot.max(1)).clamp(1, 65_535);
    let mut phases = Vec::new();
    for part in features.chunks(per_phase) {
        let (lo, hi) = (part[0], part[part.len() - 1]);
        let in_phase: Vec<usize> = (0..ablations.len())
            .filter(|&i| (lo..=hi).contains(&ablations[i].feature))
            .collect();
        let mut passes = Vec::new();
        let mut at = 0;
        while at < in_phase.len() {
            let cell = ablations[in_phase[at]].cell;
            let len = clean[cell].tokens.len();
            // Ablations of this cell (contiguous: the list is ordered by cell).
            let mut end = at;
            while end < in_phase.len()
                && ablations[in_phase[end]].cell == cell
                && end - at < MAX_PASS_ABLATIONS
                && (end == at || (end - at + 2) * len <= max_batch_tokens)
            {
                end += 1;
            }
            let chosen = &in_phase[at..end];
            // `in_phase` indices of one cell are consecutive in the ablation list.
            let range = chosen[0]..chosen[chosen.len() - 1] + 1;
            passes.push(pass(clean, ablations, range, part, n_source_features, null)?);
            at = end;
        }
        phases.push(Phase {
            features: part.to_vec(),
            passes,
        });
    }
    Ok(phases)
}

fn pass(
    clean: &[CleanCell],
    ablations: &[Ablation],
    range: Range<usize>,
    phase_features: &[u32],
    n_source_features: usize,
    null: &SignFlipNull,
) -> Result<Pass, GpuError> {
    let cell_index = ablations[range.start].cell;
    let cell = &clean[cell_index];
    let len = cell.tokens.len();
    let mut list = AblationList::new(len, n_source_features)?;
    list.push(ablations[range.start].feature, &[], &[])?; // copy 0: the clean copy
    let (mut clean_rows, mut ablated_rows) = (Vec::new(), Vec::new());
    let mut lengths = Vec::with_capacity(range.len());
    let mut slots = Vec::with_capacity(range.len());
    let mut n_active = Vec::with_capacity(range.len());
    let mut sign_hash = Vec::with_capacity(range.len());
    for (i, a) in ablations[range.clone()].iter().enumerate() {
        let rows: Vec<usize> = a.active.iter().map(|&(p, _)| cell.sae_positions[p]).collect();
        let acts: Vec<f32> = a.active.iter().map(|&(_, v)| v).collect();
        list.push(a.feature, &rows, &acts)?;
        let copy = (1 + i) * len;
        clean_rows.extend(rows.iter().map(|&r| r as u32));
        ablated_rows.extend(rows.iter().map(|&r| (copy + r) as u32));
        lengths.push(rows.len());
        let slot = phase_features
            .binary_search(&a.feature)
            .map_err(|_| GpuError::BadArgs {
                kernel: "trace_reduce",
                reason: format!("feature {} is not in its phase", a.feature),
            })?;
        slots.push(slot as u32);
        n_active.push(rows.len() as u32);
        sign_hash.push(if null.permutations > 0 {
            sign_flip_hash(null.seed, a.feature, &cell.tokens)
        } else {
            0
        });
    }
    clean_rows.extend(ablated_rows);
    Ok(Pass {
        cell: cell_index,
        ablations: range,
        list,
        gather_rows: clean_rows,
        lengths,
        slots,
        n_active,
        sign_hash,
    })
}

/// One target's device statistics (downloaded) as an accumulator: every edge with a non-zero
/// observation, and its sign-flip sums (join it to the chunk's with [`TraceAccumulator::merge`]).
/// `cells_active` and `ablations` are counted by the caller.
pub fn to_accumulator(target: u16, stats: &TraceStatsHost) -> TraceAccumulator {
    let mut acc = TraceAccumulator::default();
    for (k, &f) in stats.features.iter().enumerate() {
        for g in 0..stats.n_targets {
            let e = stats.edge(k, g);
            if e.count == 0 {
                continue;
            }
            let key = (f, target, g as u32);
            acc.edges.insert(
                key,
                EdgeSums {
                    nonzero: RunningStats::from_parts(e.count, e.mean, e.m2),
                    positive: e.positive,
                    negative: e.negative,
                },
            );
            if stats.permutations > 0 {
                let flips = (0..stats.permutations)
                    .map(|p| {
                        let (sum, positive, negative) = stats.flip(k, p, g);
                        FlipSums {
                            sum,
                            positive,
                            negative,
                        }
                    })
                    .collect();
                acc.null.insert(key, flips);
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{run, CpuForward, Start};
    use crate::hooks::{HookPlan, HookPoint};
    use crate::test_model::tiny_encoder;
    use crate::trace::{ablations_of, clean_runs, trace_cells, TraceSetup};

    /// The resident sequence run on the CPU with the kernels' host references (ablation, code sums,
    /// reduction) and the CPU forward and SAE encode: what the GPU runs, step by step.
    fn trace_on_host(
        enc: &dyn crate::encoder::Encoder,
        setup: &TraceSetup,
        features: &[u32],
        cells: &[Vec<u32>],
        (max_batch_tokens, budget): (usize, usize),
    ) -> (TraceAccumulator, usize, usize) {
        let d = enc.dims().d_model;
        let clean = clean_runs(enc, &CpuForward, setup, cells, None).unwrap();
        let mut acc = TraceAccumulator::default();
        let ablations = ablations_of(&clean, features, &mut acc);
        let widths: Vec<usize> = setup.targets.iter().map(|(_, s)| s.d_sae).collect();
        let phases = plan(
            &clean,
            &ablations,
            setup.source_sae.d_sae,
            &setup.null,
            (
                max_batch_tokens,
                slot_bytes(&widths, setup.null.permutations),
                budget,
            ),
        )
        .unwrap();
        let plan_hooks = HookPlan::new().capture_many(setup.targets.iter().map(|(h, _)| *h));
        let mut passes = 0;
        for phase in &phases {
            let mut stats: Vec<TraceStatsHost> = widths
                .iter()
                .map(|&f| TraceStatsHost::new(&phase.features, f, setup.null.permutations))
                .collect();
            for pass in &phase.passes {
                passes += 1;
                let cell = &clean[pass.cell];
                let len = cell.tokens.len();
                let state = pass
                    .list
                    .apply_host(cell.source_state.as_slice(), d, &setup.source_sae.w_dec)
                    .unwrap();
                let batch = cell.copies(pass.copies()).unwrap();
                let out = run(
                    enc,
                    &batch,
                    &plan_hooks,
                    Start::BlockInput {
                        layer: setup.source_layer + 1,
                        state: crate::matrix::Matrix::from_vec(pass.copies() * len, d, state),
                    },
                    false,
                )
                .unwrap();
                for (t, (hook, sae)) in setup.targets.iter().enumerate() {
                    let y = out.captures.get(*hook).unwrap();
                    let x: Vec<f32> = pass
                        .gather_rows
                        .iter()
                        .flat_map(|&r| y.row(r as usize).to_vec())
                        .collect();
                    let codes = sae.encode(&x);
                    let (c, a) = pass.segments(sae.d_sae).unwrap();
                    let clean_sum = c.sums_host(&codes.indices, &codes.values, sae.k).unwrap();
                    let ablated_sum = a.sums_host(&codes.indices, &codes.values, sae.k).unwrap();
                    stats[t]
                        .accumulate(
                            &clean_sum,
                            &ablated_sum,
                            &pass.n_active,
                            &pass.sign_hash,
                            1,
                            Some(&pass.slots),
                        )
                        .unwrap();
                }
                acc.ablations += pass.ablations.len() as u64;
            }
            for (t, st) in stats.iter().enumerate() {
                acc.merge(to_accumulator(t as u16, st));
            }
        }
        (acc, phases.len(), passes)
    }

    /// The resident plan, run with the kernels' host references, gives the CPU tracer's edges: the
    /// same edges, cells and sign counts, and means, M2 and sign-flip sums within rounding (the code
    /// sums are f32 here, an interleaved f64 sum in the CPU tracer). With several passes per cell and
    /// several phases.
    #[test]
    fn the_resident_plan_on_the_host_equals_the_cpu_tracer() {
        let enc = tiny_encoder(3, 64, 2, 128, 50, 7);
        let d = 64;
        let sae = |seed| crate::sae::tests::random_sae(d, 48, 4, seed);
        let (src, tgt1, tgt2) = (sae(11), sae(12), sae(13));
        let cells = crate::trace::tests::random_cells(5, 6, (5, 2));
        let features: Vec<u32> = (0..48).filter(|f| f % 5 != 2).collect();
        for (permutations, max_batch_tokens, budget) in [
            (0usize, 10_000usize, STATS_BUDGET_BYTES),
            (7, 40, 40_000),
            (3, 1, 1),
        ] {
            let setup = TraceSetup {
                source_layer: 0,
                source_sae: &src,
                targets: vec![(HookPoint::ResidPost(1), &tgt1), (HookPoint::ResidPost(2), &tgt2)],
                special_ids: vec![0],
                max_batch_tokens,
                null: SignFlipNull {
                    permutations,
                    seed: 3,
                },
            };
            let mut want = TraceAccumulator::default();
            trace_cells(
                (&enc, &CpuForward),
                &setup,
                &features,
                &cells,
                None,
                &mut want,
                &mut |_| {},
            )
            .unwrap();
            let (got, phases, passes) =
                trace_on_host(&enc, &setup, &features, &cells, (max_batch_tokens, budget));
            println!("null {permutations}, {max_batch_tokens} tokens per pass, budget {budget} B: {phases} phases, {passes} passes, {} edges", got.edges.len());
            assert!(want.ablations > 10 && want.edges.len() > 50);
            assert_eq!(got.ablations, want.ablations);
            assert_eq!(got.cells_active, want.cells_active);
            let mut keys: Vec<_> = got.edges.keys().collect();
            let mut want_keys: Vec<_> = want.edges.keys().collect();
            keys.sort_unstable();
            want_keys.sort_unstable();
            assert_eq!(keys, want_keys, "edge sets");
            for (k, w) in &want.edges {
                let g = &got.edges[k];
                let ((gn, gm, gs), (wn, wm, ws)) = (g.nonzero.parts(), w.nonzero.parts());
                assert_eq!(
                    (gn, g.positive, g.negative),
                    (wn, w.positive, w.negative),
                    "{k:?}"
                );
                assert!(
                    (gm - wm).abs() <= 1e-5 * wm.abs().max(1e-3),
                    "{k:?}: mean {gm} vs {wm}"
                );
                assert!(
                    (gs - ws).abs() <= 1e-4 * ws.abs().max(1e-4),
                    "{k:?}: M2 {gs} vs {ws}"
                );
                if permutations > 0 {
                    // A flipped sum may cancel to near 0: compare on the scale of Σ|x| ≤ √(n·Σx²).
                    let scale = (wn as f64 * (ws + wn as f64 * wm * wm)).sqrt();
                    for (p, (gf, wf)) in got.null[k].iter().zip(&want.null[k]).enumerate() {
                        assert_eq!(
                            (gf.positive, gf.negative),
                            (wf.positive, wf.negative),
                            "{k:?} flip {p}"
                        );
                        assert!(
                            (gf.sum - wf.sum).abs() <= 1e-5 * scale,
                            "{k:?} flip {p}: {} vs {} (scale {scale})",
                            gf.sum,
                            wf.sum
                        );
                    }
                } else {
                    assert!(got.null.is_empty());
                }
            }
            match budget {
                1 => assert_eq!(phases, want.cells_active.len(), "one feature per phase"),
                b if b == STATS_BUDGET_BYTES => assert_eq!(phases, 1),
                _ => assert!(phases > 1),
            }
            if max_batch_tokens == 10_000 {
                assert_eq!(passes, cells.len(), "one pass per cell");
            } else {
                assert!(passes > cells.len());
            }
        }
    }
}
