//! Feature → output effects: ablate or scale an SAE feature inside the residual stream, replay the
//! blocks after it and the head, and read the model's output (methods.md §7, A16–A18).
//!
//! For source feature f in a cell where it fires, the edit at f's active positions t is
//! `δ(t) = (α − 1)·a_f(t)·w_f` (α = 0 ablates; α > 1 amplifies, i.e. steers), with the SAE's error term
//! kept. Two readouts per (feature, α, cell):
//! - the MLM logit of the token at each gene position, its change averaged over the positions whose
//!   token is in a readout gene set and, separately, over the other positions (target vs others);
//! - optionally the change of the final state's projection on a given direction, averaged over the
//!   gene positions;
//! - optionally a linear readout of a gene panel (an exported tool's pseudotime): per panel gene g, the
//!   model-implied log-abundance `z_g` = the mean over the cell's gene positions of the log-softmax of the
//!   MLM logits restricted to the panel's tokens, and the readout `Σ_g v_g·z_g`. For a tool whose
//!   pseudotime is linear in log1p panel expression with gradient `v`, the change of that sum is the
//!   tool's pseudotime shift when the model's implied log-abundances stand in for log1p expression.
//!
//! A control runs the same edit with f's direction replaced by a seeded random direction of the same
//! norm (magnitude-matched), so that effects specific to w_f can be told from effects of any push of
//! that size at those positions.

pub mod pipeline;

use std::collections::HashSet;

use crate::encoder::Encoder;
use crate::error::EngineError;
use crate::executor::{CpuForward, Forward, Start};
use crate::hooks::{HookPlan, HookPoint};
use crate::matrix::Matrix;
use crate::packed::PackedBatch;
use crate::rng::Rng;
use crate::sae::{SparseCodes, TopKSae};

pub use pipeline::{run as run_effects, EffectsConfig, EffectsError, EffectsInputs, PseudotimeReadout};

/// What to edit and what to read.
pub struct EffectsSetup<'a> {
    /// The source hook is `blocks.{source_layer}.hook_resid_post`.
    pub source_layer: usize,
    pub source_sae: &'a TopKSae,
    /// Scales of a_f: 0 ablates, others steer (a dose list).
    pub alphas: Vec<f32>,
    /// Tokens of the readout gene set.
    pub readout_tokens: HashSet<u32>,
    /// A readout direction on the final state (`d_model` values), if any.
    pub direction: Option<Vec<f32>>,
    /// Seed of the random control directions (one per feature); `None` runs no control.
    pub control_seed: Option<u64>,
    /// A linear readout of a gene panel, if any.
    pub panel_readout: Option<PanelReadout>,
    pub special_ids: Vec<u32>,
    pub max_batch_tokens: usize,
}

/// A linear readout over a gene panel: token `tokens[i]` weighs `weights[i]` (e.g. the gradient of an
/// exported tool's pseudotime with respect to the log1p expression of its panel genes).
#[derive(Clone, Debug, PartialEq)]
pub struct PanelReadout {
    pub tokens: Vec<u32>,
    pub weights: Vec<f64>,
}

impl PanelReadout {
    /// `Σ_g v_g·z_g` with `z_g` the mean over `positions` (rows of `logits`, `[rows, panel]`) of the
    /// log-softmax over the panel columns.
    fn read(&self, logits: &Matrix, positions: impl Iterator<Item = usize>) -> f64 {
        let k = self.tokens.len();
        let mut z = vec![0f64; k];
        let mut n = 0usize;
        for r in positions {
            let row = logits.row(r);
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let log_sum = row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
            z.iter_mut()
                .zip(row)
                .for_each(|(zi, &x)| *zi += x as f64 - log_sum);
            n += 1;
        }
        if n == 0 {
            return f64::NAN;
        }
        z.iter().zip(&self.weights).map(|(zi, v)| zi / n as f64 * v).sum()
    }
}

/// One (feature, α, cell) readout. NaN where no position of the kind exists.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EffectObservation {
    pub feature: u32,
    pub alpha: f32,
    pub control: bool,
    /// Index of the cell in the chunk given.
    pub cell: usize,
    pub target_logit_change: f64,
    pub other_logit_change: f64,
    pub direction_change: f64,
    /// Change of the panel readout (NaN without one).
    pub panel_readout_change: f64,
}

struct CleanCell {
    tokens: Vec<u32>,
    source_state: Matrix,
    gene_positions: Vec<usize>,
    codes: SparseCodes,
    /// Own-token logit at each gene position, and the final state's projection on the direction.
    logits: Vec<f32>,
    projections: Vec<f64>,
    /// The panel readout of the unedited cell (NaN without one).
    panel_readout: f64,
}

/// A seeded random direction with the norm of `like`.
pub fn control_direction(like: &[f32], seed: u64, feature: u32) -> Vec<f32> {
    let mut rng = Rng::new(seed, 0xC0_47_20_1D ^ u64::from(feature));
    let r: Vec<f32> = like.iter().map(|_| rng.normal() as f32).collect();
    let (nr, nl) = (norm(&r), norm(like));
    r.iter().map(|x| x * nl / nr.max(f32::MIN_POSITIVE)).collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// The MLM logit of each row's own token (only those columns of the head are computed).
fn own_token_logits(
    encoder: &dyn Encoder,
    final_state: &Matrix,
    batch: &PackedBatch,
) -> Result<Vec<f32>, EngineError> {
    encoder
        .head_columns(final_state, batch, batch.tokens())
        .ok_or_else(|| EngineError::InvalidStart("the model has no output head to read".into()))
}

/// The panel readout of every cell of `batch` (NaN without a readout).
fn panel_readouts(
    encoder: &dyn Encoder,
    final_state: &Matrix,
    batch: &PackedBatch,
    positions: &[&[usize]],
    readout: Option<&PanelReadout>,
) -> Result<Vec<f64>, EngineError> {
    let Some(readout) = readout else {
        return Ok(vec![f64::NAN; positions.len()]);
    };
    let logits = encoder
        .head_logit_columns(final_state, batch, &readout.tokens)
        .ok_or_else(|| EngineError::InvalidStart("the model has no output head to read".into()))?;
    Ok(positions
        .iter()
        .enumerate()
        .map(|(i, ps)| {
            let base = batch.cell_range(i).start;
            readout.read(&logits, ps.iter().map(|&p| base + p))
        })
        .collect())
}

/// Own-token logits and direction projections of the gene positions of cell `i` of `batch`.
fn readouts(
    own_logits: &[f32],
    final_state: &Matrix,
    batch: &PackedBatch,
    i: usize,
    positions: &[usize],
    direction: Option<&[f32]>,
) -> (Vec<f32>, Vec<f64>) {
    let base = batch.cell_range(i).start;
    let logits = positions.iter().map(|&p| own_logits[base + p]).collect();
    let projections = match direction {
        Some(w) => positions
            .iter()
            .map(|&p| dot64(final_state.row(base + p), w))
            .collect(),
        None => vec![0.0; positions.len()],
    };
    (logits, projections)
}

/// Runs every (feature, α, control) edit of `features` in the cells `tokens` and returns one
/// observation per (feature, α, control, cell where the feature fires).
pub fn output_effects(
    encoder: &dyn Encoder,
    setup: &EffectsSetup,
    features: &[u32],
    tokens: &[Vec<u32>],
) -> Result<Vec<EffectObservation>, EngineError> {
    output_effects_with_progress(encoder, &CpuForward, setup, features, tokens, &mut |_| {})
}

/// The edits [`output_effects_with_progress`] reports for `n_cells` cells: one per (cell, feature, α,
/// control), whether or not the feature fires in the cell.
pub fn edit_count(setup: &EffectsSetup, n_features: usize, n_cells: usize) -> u64 {
    let controls = if setup.control_seed.is_some() { 2 } else { 1 };
    (n_cells as u64) * (n_features as u64) * (setup.alphas.len() as u64) * controls
}

/// [`output_effects`], calling `progress(n)` as each `n` more edits (see [`edit_count`]) are done: those
/// of features that do not fire in a cell once the clean pass has found them (they need no pass), the
/// others after each batch of edited tail passes.
pub fn output_effects_with_progress(
    encoder: &dyn Encoder,
    forward: &dyn Forward,
    setup: &EffectsSetup,
    features: &[u32],
    tokens: &[Vec<u32>],
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<EffectObservation>, EngineError> {
    let d = encoder.dims().d_model;
    if setup.source_sae.d_in != d {
        return Err(EngineError::InvalidStart(format!(
            "the source SAE reads width {}, the model has {d}",
            setup.source_sae.d_in
        )));
    }
    if let Some(r) = &setup.panel_readout {
        let vocab = encoder.dims().vocab_size;
        if r.tokens.len() != r.weights.len() || r.tokens.is_empty() {
            return Err(EngineError::InvalidStart(
                "the panel readout needs one weight per panel token".into(),
            ));
        }
        if let Some(t) = r.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidStart(format!(
                "panel token {t} is outside the model's vocabulary ({vocab} tokens)"
            )));
        }
    }
    let panel = setup.panel_readout.as_ref();
    if setup.direction.as_ref().is_some_and(|w| w.len() != d) {
        return Err(EngineError::InvalidStart(format!(
            "the readout direction must have {d} values"
        )));
    }
    let direction = setup.direction.as_deref();
    let source_hook = HookPoint::ResidPost(setup.source_layer);
    let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
    let mut clean = Vec::with_capacity(tokens.len());
    for group in crate::batching::group_by_token_budget(&lengths, setup.max_batch_tokens) {
        let batch = PackedBatch::from_cells(&tokens[group.clone()])?;
        let out = forward.run(
            encoder,
            &batch,
            &HookPlan::new().capture(source_hook),
            Start::Embed,
            false,
        )?;
        let own = own_token_logits(encoder, &out.final_state, &batch)?;
        let positions: Vec<Vec<usize>> = group
            .clone()
            .map(|c| {
                (0..tokens[c].len())
                    .filter(|&p| !setup.special_ids.contains(&tokens[c][p]))
                    .collect()
            })
            .collect();
        let position_refs: Vec<&[usize]> = positions.iter().map(Vec::as_slice).collect();
        let panel_clean = panel_readouts(encoder, &out.final_state, &batch, &position_refs, panel)?;
        let source = out
            .captures
            .get(source_hook)
            .ok_or_else(|| EngineError::InvalidStart("source not captured".into()))?;
        for ((i, c), gene_positions) in group.enumerate().zip(positions) {
            let rows = batch.cell_range(i);
            let x: Vec<f32> = gene_positions
                .iter()
                .flat_map(|&p| source.row(rows.start + p).to_vec())
                .collect();
            let (logits, projections) =
                readouts(&own, &out.final_state, &batch, i, &gene_positions, direction);
            clean.push(CleanCell {
                tokens: tokens[c].clone(),
                source_state: source.slice_rows(rows.start, rows.end),
                codes: setup.source_sae.encode(&x),
                gene_positions,
                logits,
                projections,
                panel_readout: panel_clean[i],
            });
        }
    }

    // Every edit: (cell, feature, α, control, active (position index, value)).
    struct EditJob {
        cell: usize,
        feature: u32,
        alpha: f32,
        control: bool,
        active: Vec<(usize, f32)>,
    }
    let controls: &[bool] = if setup.control_seed.is_some() {
        &[false, true]
    } else {
        &[false]
    };
    let mut jobs = Vec::new();
    for (c, cell) in clean.iter().enumerate() {
        for &f in features {
            let active: Vec<(usize, f32)> = (0..cell.gene_positions.len())
                .filter_map(|p| {
                    let (idx, val) = cell.codes.row(p);
                    idx.iter()
                        .zip(val)
                        .find(|(&g, &v)| g == f && v > 0.0)
                        .map(|(_, &v)| (p, v))
                })
                .collect();
            if active.is_empty() {
                continue;
            }
            for &alpha in &setup.alphas {
                for &control in controls {
                    jobs.push(EditJob {
                        cell: c,
                        feature: f,
                        alpha,
                        control,
                        active: active.clone(),
                    });
                }
            }
        }
    }

    progress(edit_count(setup, features.len(), tokens.len()).saturating_sub(jobs.len() as u64));

    let mut out = Vec::with_capacity(jobs.len());
    let mut start = 0;
    while start < jobs.len() {
        let (mut end, mut used) = (start, 0);
        while end < jobs.len() {
            let len = clean[jobs[end].cell].tokens.len();
            if end > start && used + len > setup.max_batch_tokens {
                break;
            }
            used += len;
            end += 1;
        }
        let group = &jobs[start..end];
        let cells: Vec<&[u32]> = group.iter().map(|j| clean[j.cell].tokens.as_slice()).collect();
        let batch = PackedBatch::from_cells(&cells)?;
        let mut state = Matrix::zeros(batch.n_tokens(), d);
        for (i, job) in group.iter().enumerate() {
            let cell = &clean[job.cell];
            let rows = batch.cell_range(i);
            state.as_mut_slice()[rows.start * d..rows.end * d].copy_from_slice(cell.source_state.as_slice());
            let w = setup.source_sae.decoder_row(job.feature as usize);
            let w = if job.control {
                control_direction(w, setup.control_seed.unwrap_or(0), job.feature)
            } else {
                w.to_vec()
            };
            for &(p, v) in &job.active {
                let row = state.row_mut(rows.start + cell.gene_positions[p]);
                let scale = (job.alpha - 1.0) * v;
                row.iter_mut().zip(&w).for_each(|(x, wi)| *x += scale * wi);
            }
        }
        let result = forward.run(
            encoder,
            &batch,
            &HookPlan::new(),
            Start::BlockInput {
                layer: setup.source_layer + 1,
                state,
            },
            false,
        )?;
        let own = own_token_logits(encoder, &result.final_state, &batch)?;
        let position_refs: Vec<&[usize]> = group
            .iter()
            .map(|j| clean[j.cell].gene_positions.as_slice())
            .collect();
        let panel_edited = panel_readouts(encoder, &result.final_state, &batch, &position_refs, panel)?;
        for (i, job) in group.iter().enumerate() {
            let cell = &clean[job.cell];
            let (logits, projections) = readouts(
                &own,
                &result.final_state,
                &batch,
                i,
                &cell.gene_positions,
                direction,
            );
            let (mut t_sum, mut t_n, mut o_sum, mut o_n) = (0.0f64, 0usize, 0.0f64, 0usize);
            for (p, &pos) in cell.gene_positions.iter().enumerate() {
                let change = (logits[p] - cell.logits[p]) as f64;
                if setup.readout_tokens.contains(&cell.tokens[pos]) {
                    t_sum += change;
                    t_n += 1;
                } else {
                    o_sum += change;
                    o_n += 1;
                }
            }
            let n = cell.gene_positions.len().max(1) as f64;
            let mean = |s: f64, n: usize| if n > 0 { s / n as f64 } else { f64::NAN };
            out.push(EffectObservation {
                feature: job.feature,
                alpha: job.alpha,
                control: job.control,
                cell: job.cell,
                target_logit_change: mean(t_sum, t_n),
                other_logit_change: mean(o_sum, o_n),
                direction_change: if direction.is_some() {
                    projections
                        .iter()
                        .zip(&cell.projections)
                        .map(|(a, b)| a - b)
                        .sum::<f64>()
                        / n
                } else {
                    f64::NAN
                },
                panel_readout_change: panel_edited[i] - cell.panel_readout,
            });
        }
        progress((end - start) as u64);
        start = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::run;
    use crate::hooks::Edit;
    use crate::test_model::tiny_encoder;

    /// Progress comes per batch of edits (it jumped from 0 to the whole count at the end of a chunk of
    /// cells) and adds up to the edit count; the results are those of the call without progress.
    #[test]
    fn progress_advances_per_batch_of_edits() {
        let enc = tiny_encoder(3, 64, 2, 128, 50, 21);
        let sae = crate::sae::tests::random_sae(64, 48, 4, 22);
        let setup = EffectsSetup {
            source_layer: 0,
            source_sae: &sae,
            alphas: vec![0.0, 3.0],
            readout_tokens: (1..25).collect(),
            direction: None,
            control_seed: Some(5),
            panel_readout: None,
            special_ids: vec![0],
            max_batch_tokens: 40,
        };
        let cells: Vec<Vec<u32>> = vec![
            std::iter::once(0).chain(1..14).collect(),
            std::iter::once(0).chain(20..40).collect(),
        ];
        let features: Vec<u32> = (0..48).collect();
        let mut steps = Vec::new();
        let obs = output_effects_with_progress(&enc, &CpuForward, &setup, &features, &cells, &mut |n| {
            steps.push(n)
        })
        .unwrap();
        assert_eq!(edit_count(&setup, 48, 2), 2 * 48 * 2 * 2);
        assert_eq!(steps.iter().sum::<u64>(), edit_count(&setup, 48, 2));
        assert!(steps.len() > 10, "{steps:?}");
        let plain = output_effects(&enc, &setup, &features, &cells).unwrap();
        assert_eq!(format!("{obs:?}"), format!("{plain:?}"));
    }

    /// The batched tail replay equals a hooked full forward with the head, per (feature, α, cell),
    /// for the feature's direction and for its random control; α = 1 changes nothing.
    #[test]
    fn batched_effects_equal_the_naive_loop() {
        let enc = tiny_encoder(3, 64, 2, 128, 50, 21);
        let sae = crate::sae::tests::random_sae(64, 48, 4, 22);
        let readout: HashSet<u32> = (1..25).collect();
        let direction: Vec<f32> = (0..64).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
        // Panel genes both inside and outside the cells, with weights of both signs.
        let panel = PanelReadout {
            tokens: vec![3, 8, 21, 33, 45],
            weights: vec![1.0, -0.5, 2.0, 0.25, -1.5],
        };
        // Σ v_g · mean over the gene positions of log-softmax over the panel columns, from the full head.
        let naive_panel = |head: &Matrix, genes: &[usize]| -> f64 {
            let mut total = 0.0;
            for &p in genes {
                let row: Vec<f64> = panel
                    .tokens
                    .iter()
                    .map(|&t| head.row(p)[t as usize] as f64)
                    .collect();
                let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
                total += row
                    .iter()
                    .zip(&panel.weights)
                    .map(|(x, v)| (x - lse) * v)
                    .sum::<f64>();
            }
            total / genes.len() as f64
        };
        let setup = EffectsSetup {
            source_layer: 0,
            source_sae: &sae,
            alphas: vec![0.0, 1.0, 3.0],
            readout_tokens: readout.clone(),
            direction: Some(direction.clone()),
            control_seed: Some(5),
            panel_readout: Some(panel.clone()),
            special_ids: vec![0],
            max_batch_tokens: 40,
        };
        let cells: Vec<Vec<u32>> = vec![
            std::iter::once(0).chain(1..14).collect(),
            std::iter::once(0).chain(20..40).collect(),
            std::iter::once(0).chain((5..30).step_by(2)).collect(),
        ];
        let features: Vec<u32> = (0..48).collect();
        let obs = output_effects(&enc, &setup, &features, &cells).unwrap();
        assert!(!obs.is_empty());
        let (mut checked, mut panel_moved) = (0, false);
        for o in obs.iter().filter(|o| o.feature % 5 == 0) {
            let cell = &cells[o.cell];
            let batch = PackedBatch::from_cells(&[cell.as_slice()]).unwrap();
            let hook = HookPoint::ResidPost(0);
            let clean = run(&enc, &batch, &HookPlan::new().capture(hook), Start::Embed, true).unwrap();
            let src = clean.captures.get(hook).unwrap();
            let genes: Vec<usize> = (1..cell.len()).collect();
            let x: Vec<f32> = genes.iter().flat_map(|&p| src.row(p).to_vec()).collect();
            let codes = sae.encode(&x);
            let (mut rows, mut scales) = (Vec::new(), Vec::new());
            for (i, &p) in genes.iter().enumerate() {
                let (idx, val) = codes.row(i);
                if let Some((_, &v)) = idx.iter().zip(val).find(|(&g, &v)| g == o.feature && v > 0.0) {
                    rows.push(p);
                    scales.push((o.alpha - 1.0) * v);
                }
            }
            let w = sae.decoder_row(o.feature as usize);
            let w = if o.control {
                control_direction(w, 5, o.feature)
            } else {
                w.to_vec()
            };
            let plan = HookPlan::new().edit(
                hook,
                Edit::AddDirection {
                    rows,
                    direction: w,
                    scales,
                },
            );
            let edited = run(&enc, &batch, &plan, Start::Embed, true).unwrap();
            let (h0, h1) = (clean.head.as_ref().unwrap(), edited.head.as_ref().unwrap());
            let (mut t, mut tn, mut other, mut on, mut proj) = (0.0f64, 0, 0.0f64, 0, 0.0f64);
            for &p in &genes {
                let change = (h1.row(p)[cell[p] as usize] - h0.row(p)[cell[p] as usize]) as f64;
                if readout.contains(&cell[p]) {
                    t += change;
                    tn += 1;
                } else {
                    other += change;
                    on += 1;
                }
                proj += dot64(edited.final_state.row(p), &direction)
                    - dot64(clean.final_state.row(p), &direction);
            }
            let close =
                |a: f64, b: f64| (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-4 * b.abs().max(1.0);
            let want_t = if tn > 0 { t / tn as f64 } else { f64::NAN };
            let want_o = if on > 0 { other / on as f64 } else { f64::NAN };
            assert!(close(o.target_logit_change, want_t), "{o:?} vs {want_t}");
            assert!(close(o.other_logit_change, want_o), "{o:?} vs {want_o}");
            assert!(close(o.direction_change, proj / genes.len() as f64), "{o:?}");
            let want_panel = naive_panel(h1, &genes) - naive_panel(h0, &genes);
            assert!(close(o.panel_readout_change, want_panel), "{o:?} vs {want_panel}");
            if o.alpha != 1.0 {
                panel_moved |= o.panel_readout_change.abs() > 1e-6;
            }
            if o.alpha == 1.0 {
                assert_eq!(
                    (
                        o.target_logit_change.abs().max(0.0),
                        o.direction_change,
                        o.panel_readout_change
                    ),
                    (0.0, 0.0, 0.0)
                );
            }
            checked += 1;
        }
        assert!(checked > 10, "{checked}");
        assert!(panel_moved, "no edit moved the panel readout");
        // The control direction has the feature direction's norm and is seeded.
        let w = sae.decoder_row(3);
        let r = control_direction(w, 5, 3);
        assert!((norm(&r) - norm(w)).abs() < 1e-5 && r == control_direction(w, 5, 3));
    }
}
