//! Training a TopK SAE the way Gao et al. (2024) describe it, with a sparse backward:
//!
//! - `b_dec` starts at the geometric median of a sample; it is subtracted before encoding and added
//!   after decoding (so its gradient has both paths);
//! - decoder rows start as random unit vectors, the encoder as the decoder's transpose;
//! - decoder rows stay at unit norm: the gradient component along each row is removed before the
//!   Adam step and the rows are renormalised after it;
//! - AuxK: the residual is also fitted by the top-`k_aux` latents among the dead ones (no firing for
//!   `dead_after_tokens` tokens), weighted by `aux_coef`, which revives them;
//! - Adam with linear warm-up and a linear decay to zero over the last part of training;
//! - inputs scaled by one constant so that the mean row norm is √d_in, folded into the biases at the
//!   end (the SAE on disk reads raw activations and keeps unit-norm decoder rows).
//!
//! Only the encoder GEMM is dense (every pre-activation is needed to choose the top k). Decoding, the
//! latent gradients and the weight gradients touch only the k (+ k_aux) active latents of each row:
//! per step that is O(B·d·F) for the GEMM and O(B·(k + k_aux)·d) for the rest, against about five dense
//! GEMMs for a dense implementation.
//!
//! Rows stream from a [`RowSource`] (a memory-mapped store may exceed RAM): the training rows are cut
//! into pieces of consecutive rows, the pieces are visited in a seeded random order, loaded into a
//! shuffle buffer of bounded size, and the buffer's rows are shuffled before they are batched.

use std::ops::Range;
use std::time::Instant;

use faer::Accum;
use rayon::prelude::*;
use serde::Serialize;

use super::error::{FlagError, SaeError};
use super::{axpy, dot, gemm_rows_by_latents, top_k_rows, SparseCodes, TopKSae};
use crate::rng::{splitmix64, unit_f64, Rng};
use crate::store::HookArray;

/// Rows of activations, read by range.
pub trait RowSource: Sync {
    fn d(&self) -> usize;
    fn n_rows(&self) -> usize;
    /// Rows `start..start + out.len() / d` as f32.
    fn read(&self, start: usize, out: &mut [f32]);
}

impl RowSource for HookArray {
    fn d(&self) -> usize {
        HookArray::d(self)
    }
    fn n_rows(&self) -> usize {
        HookArray::n_rows(self)
    }
    fn read(&self, start: usize, out: &mut [f32]) {
        self.read_rows(start, out)
    }
}

/// Rows held in memory, `[n, d]` row-major.
pub struct MemoryRows {
    pub d: usize,
    pub data: Vec<f32>,
}

impl RowSource for MemoryRows {
    fn d(&self) -> usize {
        self.d
    }
    fn n_rows(&self) -> usize {
        self.data.len() / self.d
    }
    fn read(&self, start: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.data[start * self.d..start * self.d + out.len()]);
    }
}

/// Whether `cell` belongs to the held-out split: a seeded hash of the cell index, so that the split is
/// by cell (all of a cell's rows on one side) and the same for every hook and every rerun.
pub fn is_heldout(cell: u64, seed: u64, fraction: f64) -> bool {
    unit_f64(splitmix64(splitmix64(seed ^ 0x4845_4C44_4F55_54AA) ^ cell)) < fraction
}

/// Training settings. [`TrainConfig::new`] fills the defaults of Gao et al.
#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    pub d_sae: usize,
    pub k: usize,
    pub batch_size: usize,
    pub total_tokens: u64,
    /// Peak learning rate (default 2e-4 / √(d_sae / 2¹⁴)).
    pub lr: f64,
    pub warmup_steps: usize,
    /// Fraction of the steps, at the end, over which the learning rate falls linearly to 0.
    pub decay_fraction: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    pub aux_k: usize,
    pub aux_coef: f32,
    /// A latent that has not fired for this many training tokens is dead (and trained by AuxK).
    pub dead_after_tokens: u64,
    /// Scale inputs to a mean row norm of √d_in during training (folded into the saved weights).
    pub normalize: bool,
    pub shuffle_buffer_rows: usize,
    /// Rows used to estimate the input scale and the geometric median for `b_dec`.
    pub init_sample_rows: usize,
    pub seed: u64,
}

impl TrainConfig {
    pub fn new(d_in: usize, d_sae: usize, k: usize, total_tokens: u64) -> Self {
        let batch_size = 4096;
        let steps = total_tokens.div_ceil(batch_size as u64) as usize;
        TrainConfig {
            d_sae,
            k,
            batch_size,
            total_tokens,
            lr: 2e-4 / (d_sae as f64 / 16384.0).sqrt(),
            warmup_steps: (steps / 20).clamp(1, 1000),
            decay_fraction: 0.2,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            aux_k: (d_in / 2).max(1),
            aux_coef: 1.0 / 32.0,
            dead_after_tokens: default_dead_after_tokens(total_tokens, batch_size),
            normalize: true,
            shuffle_buffer_rows: 1 << 17,
            init_sample_rows: 1 << 15,
            seed: 0,
        }
    }

    pub fn steps(&self) -> usize {
        self.total_tokens.div_ceil(self.batch_size as u64) as usize
    }

    pub fn lr_at(&self, step: usize) -> f64 {
        let steps = self.steps().max(1);
        let warm = (step + 1) as f64 / self.warmup_steps.max(1) as f64;
        let decay_steps = (self.decay_fraction * steps as f64).max(1.0);
        let left = (steps - step) as f64 / decay_steps;
        self.lr * warm.min(1.0) * left.min(1.0)
    }

    /// Checks the settings before anything is allocated; errors name the flag to change.
    pub fn validate(&self, d_in: usize) -> Result<(), FlagError> {
        if self.d_sae == 0 || self.d_sae > MAX_D_SAE {
            return Err(FlagError::new(
                "d-sae",
                self.d_sae,
                format!("must be between 1 and {MAX_D_SAE} (latent indices are stored as int32)"),
            ));
        }
        if self.k == 0 || self.k > self.d_sae {
            return Err(FlagError::new(
                "k",
                self.k,
                format!("must be between 1 and --d-sae {}", self.d_sae),
            ));
        }
        if self.batch_size == 0 {
            return Err(FlagError::new("batch-size", 0, "must be at least 1"));
        }
        if self.total_tokens == 0 {
            return Err(FlagError::new("tokens", 0, "must be at least 1"));
        }
        if d_in == 0 {
            return Err(FlagError::new("hook", "", "the activations have width 0"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 1.0) {
            return Err(FlagError::new(
                "lr",
                self.lr,
                "must be a finite learning rate in (0, 1] (the default is 2e-4 / sqrt(d_sae / 2^14))",
            ));
        }
        if !(self.aux_coef.is_finite() && self.aux_coef >= 0.0) {
            return Err(FlagError::new(
                "aux-coef",
                self.aux_coef,
                "must be finite and ≥ 0",
            ));
        }
        if self.shuffle_buffer_rows < self.batch_size {
            return Err(FlagError::new(
                "shuffle-buffer-rows",
                self.shuffle_buffer_rows,
                format!("must hold at least one batch (--batch-size {})", self.batch_size),
            ));
        }
        Ok(())
    }

    /// Host memory a CPU training run needs (parameters with Adam moments and gradients, the step's
    /// buffers, the shuffle buffer), or `None` when the sizes overflow 64 bits.
    pub fn memory_needed(&self, d_in: usize) -> Option<u64> {
        let (d, f, b) = (d_in as u64, self.d_sae as u64, self.batch_size as u64);
        let params = f.checked_mul(d)?.checked_mul(2)?.checked_add(f + d)?;
        // Parameters, two Adam moments and the gradients.
        let model = params.checked_mul(4)?;
        // Pre-activations [B, F], five [B, d] buffers, the per-row gradient slots.
        let slots = self.k as u64 + self.aux_k.min(self.d_sae) as u64;
        let step = b
            .checked_mul(f)?
            .checked_add(b.checked_mul(d)?.checked_mul(5)?)?
            .checked_add(b.checked_mul(slots)?.checked_mul(3)?)?;
        // The shuffle buffer and its shuffled copy.
        let shuffle = (self.shuffle_buffer_rows as u64).checked_mul(d)?.checked_mul(2)?;
        model.checked_add(step)?.checked_add(shuffle)?.checked_mul(4)
    }
}

/// The largest `d_sae`: codes are written with int32 indices.
pub const MAX_D_SAE: usize = i32::MAX as usize;

/// Gao et al. call a latent dead after 10 M tokens without firing, in runs of billions of tokens. A
/// short run would never reach that window (AuxK would never act and "dead at end" would always be
/// 0), so the default window is a tenth of the run, at least 4 batches, at most 10 M tokens.
pub fn default_dead_after_tokens(total_tokens: u64, batch_size: usize) -> u64 {
    (total_tokens / 10).max(4 * batch_size as u64).min(10_000_000)
}

/// The default training budget for `train_rows` rows: at least 5 passes (the published runs) and,
/// where the store allows it, at least [`MIN_STEPS`] steps, but never more than 100 passes.
pub fn default_tokens(train_rows: usize, batch_size: usize) -> u64 {
    let rows = train_rows as u64;
    let by_steps = (MIN_STEPS as u64 * batch_size as u64).min(100 * rows);
    (5 * rows).max(by_steps).max(1)
}

/// Below this many steps a run is reported as probably too short to converge.
pub const MIN_STEPS: usize = 1000;

/// The seed of one hook's SAE (initialisation and data order), from the run's `--seed` and the hook
/// name: SAEs of different hooks trained with one `--seed` do not start from the same decoder (which
/// would make their features match across layers by construction).
pub fn hook_seed(seed: u64, hook: &str) -> u64 {
    // FNV-1a of the name, mixed with the seed.
    let name = hook.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    });
    splitmix64(seed ^ splitmix64(name))
}

/// What training did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub tokens_trained: u64,
    pub train_seconds: f64,
    pub tokens_per_second: f64,
    pub input_scale: f64,
    /// Latents that had not fired for `dead_after_tokens` tokens when training ended.
    pub dead_latents_at_end: usize,
    /// Mean normalised MSE (Σ‖x − x̂‖² / Σ‖x‖² on the scaled inputs) over the last 5 % of steps.
    pub final_train_nmse: f64,
    /// Mean AuxK loss over the last 5 % of steps, as the reference implementation defines it (without
    /// its coefficient): Σ‖e − ê‖² / Σ‖e − ē‖², the dead latents' reconstruction ê of the residual e
    /// against the residual's own variance over the batch (0 while no latent is dead).
    pub final_aux_loss: f64,
    /// Mean per-coordinate variance of the (scaled) training sample: the main loss is divided by it
    /// in the reference, so the AuxK term is multiplied by it here (the main loss is not normalised).
    pub data_variance: f64,
    /// Whether training continued from a checkpoint.
    pub resumed_at_step: Option<usize>,
    /// The mean training row in raw units (the mean-ablation floor of the spliced loss).
    #[serde(skip)]
    pub data_mean: Vec<f32>,
}

/// Trains an SAE on the rows `train` (ranges of `source` rows); `progress(step, steps, nmse)` is
/// called after every step.
pub fn train(
    source: &dyn RowSource,
    train: &[Range<usize>],
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<(TopKSae, TrainSummary), SaeError> {
    train_with(
        source,
        train,
        cfg,
        &|sae| Ok(Box::new(CpuStepper::new(sae))),
        progress,
    )
}

/// Why a stepper could not be built, step, finish or restore its state.
#[derive(Debug, thiserror::Error)]
pub enum StepperError {
    /// The device failed: its driver's or kernel's message.
    #[error("{0}")]
    Device(String),
    /// The GPU stepper could not start.
    #[error("{0}")]
    Gpu(#[from] crate::cuda::GpuSaeError),
    /// Saved optimiser state that does not fit this SAE.
    #[error(transparent)]
    State(#[from] StateError),
    #[error("this device cannot resume from a checkpoint")]
    CannotResume,
}

/// Saved bytes (a checkpoint's fields) that do not fit what reads them.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("ends early (needs {needed} bytes at offset {at})")]
    EndsEarly { needed: usize, at: usize },
    #[error("{0} bytes too many")]
    TooLong(usize),
    /// A field whose value cannot belong to this run (named in the message).
    #[error("{0}")]
    OutOfRange(String),
}

/// Where the optimiser steps run: the CPU ([`CpuStepper`]) or a GPU (`crate::cuda::GpuSaeStepper`).
/// Both implement the same step, so the loop around them (data, scaling, schedule, summary) is shared.
pub trait Stepper {
    /// One optimiser step on the rows `x` (already scaled) at learning rate `lr`; `data_variance` is
    /// the per-coordinate variance of the scaled data, which weighs the AuxK term. Returns
    /// (normalised MSE, AuxK loss) of the step's forward pass.
    fn step(
        &mut self,
        x: &[f32],
        cfg: &TrainConfig,
        lr: f64,
        data_variance: f64,
    ) -> Result<(f64, f64), StepperError>;
    /// The trained SAE and the number of latents dead (by `cfg.dead_after_tokens`) at the end.
    fn finish(self: Box<Self>, cfg: &TrainConfig) -> Result<(TopKSae, usize), StepperError>;
    /// The optimiser state (parameters, Adam moments, step, dead-latent counters) as bytes, for a
    /// checkpoint; `None` where the stepper cannot save it.
    fn save_state(&self) -> Option<Vec<u8>> {
        None
    }
    /// Restores what [`Stepper::save_state`] wrote.
    fn load_state(&mut self, _bytes: &[u8]) -> Result<(), StepperError> {
        Err(StepperError::CannotResume)
    }
}

/// The CPU stepper: [`TrainState`]'s sparse backward and Adam, in place on the SAE.
pub struct CpuStepper {
    sae: TopKSae,
    state: TrainState,
}

impl CpuStepper {
    pub fn new(sae: TopKSae) -> Self {
        let state = TrainState::new(&sae);
        CpuStepper { sae, state }
    }
}

impl Stepper for CpuStepper {
    fn step(
        &mut self,
        x: &[f32],
        cfg: &TrainConfig,
        lr: f64,
        data_variance: f64,
    ) -> Result<(f64, f64), StepperError> {
        Ok(self.state.step(&mut self.sae, x, cfg, lr, data_variance))
    }

    fn finish(self: Box<Self>, cfg: &TrainConfig) -> Result<(TopKSae, usize), StepperError> {
        let dead = self
            .state
            .tokens_since_fired
            .iter()
            .filter(|&&t| t >= cfg.dead_after_tokens)
            .count();
        Ok((self.sae, dead))
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.state.step.to_le_bytes());
        for p in [&self.sae.w_enc, &self.sae.b_enc, &self.sae.w_dec, &self.sae.b_dec] {
            out.extend_from_slice(bytemuck::cast_slice(p));
        }
        for params in [&self.state.m, &self.state.v] {
            for p in [&params.w_enc, &params.b_enc, &params.w_dec, &params.b_dec] {
                out.extend_from_slice(bytemuck::cast_slice(p));
            }
        }
        out.extend_from_slice(bytemuck::cast_slice(&self.state.tokens_since_fired));
        Some(out)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), StepperError> {
        let mut r = ByteReader { bytes, at: 0 };
        self.state.step = r.u64()?;
        let sae = &mut self.sae;
        for p in [&mut sae.w_enc, &mut sae.b_enc, &mut sae.w_dec, &mut sae.b_dec] {
            r.f32s(p)?;
        }
        for params in [&mut self.state.m, &mut self.state.v] {
            for p in [
                &mut params.w_enc,
                &mut params.b_enc,
                &mut params.w_dec,
                &mut params.b_dec,
            ] {
                r.f32s(p)?;
            }
        }
        let n = self.state.tokens_since_fired.len();
        let raw = r.take(n * 8)?;
        self.state.tokens_since_fired = bytemuck::pod_collect_to_vec(raw);
        Ok(r.end()?)
    }
}

/// Little-endian fields read back in order, with the length checked.
pub(crate) struct ByteReader<'a> {
    pub bytes: &'a [u8],
    pub at: usize,
}

impl<'a> ByteReader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(StateError::EndsEarly {
            needed: n,
            at: self.at,
        })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    pub fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub fn f64(&mut self) -> Result<f64, StateError> {
        Ok(f64::from_bits(self.u64()?))
    }

    pub fn f32s(&mut self, out: &mut [f32]) -> Result<(), StateError> {
        let raw = self.take(out.len() * 4)?;
        for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
            *o = f32::from_le_bytes(c.try_into().expect("4 bytes"));
        }
        Ok(())
    }

    pub fn end(&self) -> Result<(), StateError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(StateError::TooLong(self.bytes.len() - self.at))
        }
    }
}

/// Where and how often [`train_resumable`] saves its state.
pub struct Checkpointing<'a> {
    /// Saves a checkpoint (bytes) durably; called every `every_steps` steps.
    pub save: &'a mut dyn FnMut(&[u8]) -> Result<(), SaeError>,
    /// A checkpoint to continue from.
    pub resume: Option<Vec<u8>>,
    pub every_steps: usize,
    /// Testing: stop with [`SaeError::Stopped`] right after the checkpoint of this step (what a kill
    /// there leaves).
    pub stop_after_steps: Option<usize>,
    /// Named in [`SaeError::Stopped`].
    pub path: std::path::PathBuf,
}

/// [`train`] with the steps run by the stepper that `make_stepper` builds from the initial SAE.
pub fn train_with(
    source: &dyn RowSource,
    train: &[Range<usize>],
    cfg: &TrainConfig,
    make_stepper: &dyn Fn(TopKSae) -> Result<Box<dyn Stepper>, StepperError>,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<(TopKSae, TrainSummary), SaeError> {
    train_resumable(source, train, cfg, make_stepper, None, progress)
}

/// Version of the checkpoint layout (bumped when it changes; an older one is ignored).
const CHECKPOINT_MAGIC: &[u8; 8] = b"SCSAECK1";

/// [`train_with`] that saves its state every few steps and can continue from a saved state: the result
/// equals an uninterrupted run's bit for bit (the data order, the schedule and every accumulator are
/// restored; the sample that sets the scale and `b_dec` is drawn again identically).
pub fn train_resumable(
    source: &dyn RowSource,
    train: &[Range<usize>],
    cfg: &TrainConfig,
    make_stepper: &dyn Fn(TopKSae) -> Result<Box<dyn Stepper>, StepperError>,
    mut checkpointing: Option<Checkpointing>,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<(TopKSae, TrainSummary), SaeError> {
    let d = source.d();
    cfg.validate(d)?;
    let n_train: usize = train.iter().map(|r| r.len()).sum();
    if n_train == 0 {
        return Err(SaeError::EmptyTraining);
    }
    let mut loader = Loader::new(source, train, cfg);
    let sample = loader.sample(cfg.init_sample_rows.min(n_train));
    let n_sample = (sample.len() / d).max(1) as f64;
    let mut mean = vec![0.0f64; d];
    for r in sample.chunks(d) {
        mean.iter_mut()
            .zip(r)
            .for_each(|(m, &v)| *m += v as f64 / n_sample);
    }
    let scale = if cfg.normalize {
        let mean_norm = sample.chunks(d).map(|r| dot(r, r).sqrt() as f64).sum::<f64>() / n_sample;
        if mean_norm > 0.0 {
            (d as f64).sqrt() / mean_norm
        } else {
            1.0
        }
    } else {
        1.0
    };
    // Per-coordinate variance of the scaled sample (the reference's main-loss normaliser).
    let data_variance = sample
        .chunks(d)
        .map(|r| {
            r.iter()
                .zip(&mean)
                .map(|(&v, m)| ((v as f64 - m) * scale).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / (n_sample * d as f64);
    let scaled: Vec<f32> = sample.iter().map(|&v| (v as f64 * scale) as f32).collect();
    let b_dec = geometric_median(&scaled, d, 50);
    drop(scaled);
    let mut stepper = make_stepper(init_sae(d, cfg, b_dec)).map_err(SaeError::Step)?;
    let steps = cfg.steps();
    let started = Instant::now();
    let mut summary = TrainSummary {
        input_scale: scale,
        data_variance,
        data_mean: mean.iter().map(|&m| m as f32).collect(),
        ..Default::default()
    };
    let tail_from = steps - (steps / 20).max(1).min(steps);
    let (mut tail_nmse, mut tail_aux, mut tail_n) = (0.0f64, 0.0f64, 0usize);
    let mut first_step = 0usize;
    let mut seconds_before = 0.0f64;
    if let Some(bytes) = checkpointing.as_mut().and_then(|c| c.resume.take()) {
        let path = checkpointing.as_ref().map(|c| c.path.clone()).unwrap_or_default();
        let damaged = |reason: &dyn std::fmt::Display| SaeError::Checkpoint {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let mut r = ByteReader { bytes: &bytes, at: 0 };
        if r.take(8).map_err(|e| damaged(&e))? != CHECKPOINT_MAGIC {
            return Err(damaged(&"not an SAE training checkpoint"));
        }
        first_step = r.u64().map_err(|e| damaged(&e))? as usize;
        summary.tokens_trained = r.u64().map_err(|e| damaged(&e))?;
        tail_nmse = r.f64().map_err(|e| damaged(&e))?;
        tail_aux = r.f64().map_err(|e| damaged(&e))?;
        tail_n = r.u64().map_err(|e| damaged(&e))? as usize;
        seconds_before = r.f64().map_err(|e| damaged(&e))?;
        let loader_len = r.u64().map_err(|e| damaged(&e))? as usize;
        loader
            .restore(r.take(loader_len).map_err(|e| damaged(&e))?)
            .map_err(|e| damaged(&e))?;
        let rest = &bytes[r.at..];
        stepper.load_state(rest).map_err(|e| damaged(&e))?;
        if first_step > steps {
            return Err(damaged(&format!("{first_step} steps done of {steps}")));
        }
        summary.resumed_at_step = Some(first_step);
    }
    let mut batch = vec![0.0f32; cfg.batch_size * d];
    for step in first_step..steps {
        let rows = (cfg.total_tokens - summary.tokens_trained).min(cfg.batch_size as u64) as usize;
        let x = &mut batch[..rows * d];
        loader.next_batch(x);
        if scale != 1.0 {
            let s = scale as f32;
            x.par_iter_mut().for_each(|v| *v *= s);
        }
        let (nmse, aux) = stepper
            .step(x, cfg, cfg.lr_at(step), data_variance)
            .map_err(SaeError::Step)?;
        summary.tokens_trained += rows as u64;
        if step >= tail_from {
            tail_nmse += nmse;
            tail_aux += aux;
            tail_n += 1;
        }
        progress(step + 1, steps, nmse);
        if let Some(c) = checkpointing.as_mut() {
            let done = step + 1;
            let due = c.every_steps > 0 && done % c.every_steps == 0 && done < steps;
            if due || c.stop_after_steps == Some(done) {
                if let Some(state) = stepper.save_state() {
                    let mut out = Vec::with_capacity(state.len() + 1024);
                    out.extend_from_slice(CHECKPOINT_MAGIC);
                    out.extend_from_slice(&(done as u64).to_le_bytes());
                    out.extend_from_slice(&summary.tokens_trained.to_le_bytes());
                    out.extend_from_slice(&tail_nmse.to_bits().to_le_bytes());
                    out.extend_from_slice(&tail_aux.to_bits().to_le_bytes());
                    out.extend_from_slice(&(tail_n as u64).to_le_bytes());
                    let seconds = seconds_before + started.elapsed().as_secs_f64();
                    out.extend_from_slice(&seconds.to_bits().to_le_bytes());
                    let loader_state = loader.snapshot();
                    out.extend_from_slice(&(loader_state.len() as u64).to_le_bytes());
                    out.extend_from_slice(&loader_state);
                    out.extend_from_slice(&state);
                    (c.save)(&out)?;
                }
                if c.stop_after_steps == Some(done) {
                    return Err(SaeError::Stopped {
                        steps: done,
                        checkpoint: c.path.clone(),
                    });
                }
            }
        }
    }
    let (mut sae, dead) = stepper.finish(cfg).map_err(SaeError::Step)?;
    summary.steps = steps;
    summary.train_seconds = seconds_before + started.elapsed().as_secs_f64();
    summary.tokens_per_second = summary.tokens_trained as f64 / summary.train_seconds.max(1e-9);
    summary.dead_latents_at_end = dead;
    summary.final_train_nmse = tail_nmse / tail_n.max(1) as f64;
    summary.final_aux_loss = tail_aux / tail_n.max(1) as f64;
    fold_input_scale(&mut sae, scale);
    Ok((sae, summary))
}

/// Rewrites an SAE trained on `x·scale` to read raw `x`, exactly: with `b_enc/scale` and `b_dec/scale`,
/// every pre-activation is the trained one divided by `scale` (same top-k, ReLU commutes with a positive
/// factor), so codes come out in raw units and the decoder rows keep their unit norm.
fn fold_input_scale(sae: &mut TopKSae, scale: f64) {
    if scale == 1.0 {
        return;
    }
    let down = (1.0 / scale) as f32;
    sae.b_enc.iter_mut().for_each(|v| *v *= down);
    sae.b_dec.iter_mut().for_each(|v| *v *= down);
}

fn init_sae(d: usize, cfg: &TrainConfig, b_dec: Vec<f32>) -> TopKSae {
    let mut rng = Rng::new(cfg.seed, 0x5AE);
    let mut w_dec: Vec<f32> = (0..cfg.d_sae * d).map(|_| rng.normal() as f32).collect();
    w_dec.par_chunks_mut(d).for_each(normalise);
    TopKSae {
        d_in: d,
        d_sae: cfg.d_sae,
        k: cfg.k,
        w_enc: w_dec.clone(),
        b_enc: vec![0.0; cfg.d_sae],
        w_dec,
        b_dec,
    }
}

fn normalise(row: &mut [f32]) {
    let norm = dot(row, row).sqrt();
    if norm > 0.0 {
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// Weiszfeld iterations from the mean: the point minimising the sum of distances to the rows.
pub fn geometric_median(rows: &[f32], d: usize, iterations: usize) -> Vec<f32> {
    let n = rows.len() / d;
    let mut m: Vec<f64> = vec![0.0; d];
    for r in rows.chunks(d) {
        for (a, &v) in m.iter_mut().zip(r) {
            *a += v as f64 / n as f64;
        }
    }
    for _ in 0..iterations {
        // Partial sums over fixed blocks, added in order: the result does not depend on scheduling.
        let partials: Vec<(Vec<f64>, f64)> = rows
            .par_chunks(d * 256)
            .map(|block| {
                let mut num = vec![0.0f64; d];
                let mut den = 0.0f64;
                for r in block.chunks(d) {
                    let dist = r
                        .iter()
                        .zip(&m)
                        .map(|(&v, &c)| (v as f64 - c).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    let w = 1.0 / dist.max(1e-8);
                    num.iter_mut().zip(r).for_each(|(a, &v)| *a += v as f64 * w);
                    den += w;
                }
                (num, den)
            })
            .collect();
        let mut num = vec![0.0f64; d];
        let mut den = 0.0f64;
        for (n, w) in &partials {
            num.iter_mut().zip(n).for_each(|(a, b)| *a += b);
            den += w;
        }
        let next: Vec<f64> = num.iter().map(|v| v / den).collect();
        let moved = next
            .iter()
            .zip(&m)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        m = next;
        if moved < 1e-7 {
            break;
        }
    }
    m.into_iter().map(|v| v as f32).collect()
}

/// Streams shuffled training rows: pieces of consecutive rows in a seeded random order, through a
/// shuffle buffer.
struct Loader<'a> {
    source: &'a dyn RowSource,
    d: usize,
    pieces: Vec<Range<usize>>,
    order: Vec<usize>,
    next_piece: usize,
    buffer: Vec<f32>,
    buffer_rows: usize,
    cursor: usize,
    capacity: usize,
    rng: Rng,
    /// (order, next piece, generator) as they were when the current buffer was filled: refilling
    /// from them again gives the same buffer, so a checkpoint stores them instead of the rows.
    at_refill: Option<(Vec<usize>, usize, Rng)>,
}

const PIECE_ROWS: usize = 256;

impl<'a> Loader<'a> {
    fn new(source: &'a dyn RowSource, train: &[Range<usize>], cfg: &TrainConfig) -> Self {
        let mut pieces = Vec::new();
        for r in train {
            let mut s = r.start;
            while s < r.end {
                let e = (s + PIECE_ROWS).min(r.end);
                pieces.push(s..e);
                s = e;
            }
        }
        let n_rows: usize = pieces.iter().map(|p| p.len()).sum();
        let capacity = cfg.shuffle_buffer_rows.min(n_rows).max(1);
        Loader {
            source,
            d: source.d(),
            order: Vec::new(),
            next_piece: 0,
            pieces,
            buffer: Vec::new(),
            buffer_rows: 0,
            cursor: 0,
            capacity,
            rng: Rng::new(cfg.seed, 0x10AD),
            at_refill: None,
        }
    }

    /// The loader's position as bytes: the state before the last refill and the cursor in it.
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let (order, next, rng, filled) = match &self.at_refill {
            Some((o, n, r)) => (o, *n, r, 1u64),
            None => (&self.order, self.next_piece, &self.rng, 0u64),
        };
        let (key, counter) = rng.state();
        for v in [
            filled,
            next as u64,
            key,
            counter,
            self.cursor as u64,
            order.len() as u64,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for &o in order {
            out.extend_from_slice(&(o as u64).to_le_bytes());
        }
        out
    }

    /// Continues from [`Loader::snapshot`].
    fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let mut r = ByteReader { bytes, at: 0 };
        let filled = r.u64()?;
        let next = r.u64()? as usize;
        let (key, counter) = (r.u64()?, r.u64()?);
        let cursor = r.u64()? as usize;
        let n = r.u64()? as usize;
        if n != 0 && n != self.pieces.len() {
            return Err(StateError::OutOfRange(format!(
                "{n} pieces recorded, {} now",
                self.pieces.len()
            )));
        }
        let mut order = Vec::with_capacity(n);
        for _ in 0..n {
            let o = r.u64()? as usize;
            if o >= self.pieces.len() {
                return Err(StateError::OutOfRange(format!("piece {o} out of range")));
            }
            order.push(o);
        }
        r.end()?;
        if next > order.len() {
            return Err(StateError::OutOfRange(
                "the loader position is out of range".into(),
            ));
        }
        self.order = order;
        self.next_piece = next;
        self.rng = Rng::from_state(key, counter);
        if filled == 1 {
            self.refill();
            if cursor > self.buffer_rows {
                return Err(StateError::OutOfRange(
                    "the buffer position is out of range".into(),
                ));
            }
            self.cursor = cursor;
        }
        Ok(())
    }

    /// Up to `n` rows drawn from random pieces (for the initial statistics), without consuming the
    /// training stream.
    fn sample(&mut self, n: usize) -> Vec<f32> {
        let mut rng = self.rng.clone();
        let mut order: Vec<usize> = (0..self.pieces.len()).collect();
        rng.shuffle(&mut order);
        let mut out = Vec::with_capacity(n * self.d);
        for &p in &order {
            let piece = &self.pieces[p];
            let take = piece.len().min(n - out.len() / self.d);
            let at = out.len();
            out.resize(at + take * self.d, 0.0);
            self.source.read(piece.start, &mut out[at..]);
            if out.len() / self.d >= n {
                break;
            }
        }
        out
    }

    /// Refills the buffer with the next pieces (starting a new epoch when all were used) and shuffles
    /// its rows.
    fn refill(&mut self) {
        self.at_refill = Some((self.order.clone(), self.next_piece, self.rng.clone()));
        let d = self.d;
        self.buffer.resize(self.capacity * d, 0.0);
        let mut filled = 0usize;
        while filled < self.capacity {
            if self.next_piece == self.order.len() {
                self.order = (0..self.pieces.len()).collect();
                self.rng.shuffle(&mut self.order);
                self.next_piece = 0;
            }
            let piece = self.pieces[self.order[self.next_piece]].clone();
            if filled + piece.len() > self.capacity && filled > 0 {
                break; // the piece goes first into the next buffer
            }
            let take = piece.len().min(self.capacity - filled);
            self.source
                .read(piece.start, &mut self.buffer[filled * d..(filled + take) * d]);
            filled += take;
            self.next_piece += 1;
        }
        self.buffer_rows = filled;
        // Shuffle rows: a permutation applied by copying.
        let mut perm: Vec<usize> = (0..filled).collect();
        self.rng.shuffle(&mut perm);
        let mut shuffled = vec![0.0f32; filled * d];
        shuffled
            .par_chunks_mut(d)
            .zip(perm.par_iter())
            .for_each(|(dst, &src)| dst.copy_from_slice(&self.buffer[src * d..(src + 1) * d]));
        self.buffer = shuffled;
        self.cursor = 0;
    }

    fn next_batch(&mut self, out: &mut [f32]) {
        let d = self.d;
        let mut done = 0usize;
        let want = out.len() / d;
        while done < want {
            if self.cursor == self.buffer_rows {
                self.refill();
            }
            let take = (want - done).min(self.buffer_rows - self.cursor);
            out[done * d..(done + take) * d]
                .copy_from_slice(&self.buffer[self.cursor * d..(self.cursor + take) * d]);
            self.cursor += take;
            done += take;
        }
    }
}

/// Adam moments, gradients and dead-latent counters.
struct TrainState {
    step: u64,
    m: Params,
    v: Params,
    g: Params,
    tokens_since_fired: Vec<u64>,
    /// Per-step buffers, kept between steps so that their pages are not faulted in again every step.
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    xc: Vec<f32>,
    pre: Vec<f32>,
    residual: Vec<f32>,
    aux_residual: Vec<f32>,
    grad_pre: Vec<f32>,
}

/// One buffer per parameter array, in the same layout as [`TopKSae`].
#[derive(Clone)]
struct Params {
    w_enc: Vec<f32>,
    b_enc: Vec<f32>,
    w_dec: Vec<f32>,
    b_dec: Vec<f32>,
}

impl Params {
    fn zeros_like(sae: &TopKSae) -> Self {
        Params {
            w_enc: vec![0.0; sae.w_enc.len()],
            b_enc: vec![0.0; sae.b_enc.len()],
            w_dec: vec![0.0; sae.w_dec.len()],
            b_dec: vec![0.0; sae.b_dec.len()],
        }
    }
}

/// One (row, slot) contribution to a latent's gradients, for the per-latent pass.
#[derive(Clone, Copy, Default)]
struct Touch {
    row: u32,
    /// The latent's value (for the decoder gradient).
    value: f32,
    /// ∂L/∂pre (for the encoder gradient); 0 when the ReLU was closed.
    grad_pre: f32,
    /// Whether this came from the AuxK path (its decoder gradient uses the AuxK residual).
    aux: bool,
}

/// Rows per block of the fused per-row pass (partial sums are per block, added in order, so the
/// result does not depend on thread scheduling).
const ROW_BLOCK: usize = 64;

/// What [`TrainState::backward`] leaves besides the gradients.
struct Backward {
    /// Normalised MSE and AuxK loss of the step's forward pass.
    loss: f64,
    aux_loss: f64,
    codes: SparseCodes,
    aux_codes: Option<SparseCodes>,
    grad_main: f32,
    grad_aux: f32,
}

/// The gradients of one CPU training step ([`step_gradients`]), in [`TopKSae`]'s layouts, as Adam
/// receives them (the decoder gradient with its component along each decoder row removed), with what
/// the step chose on the way: the reference the GPU backward is checked against.
#[derive(Clone, Debug)]
pub struct StepGradients {
    pub w_enc: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
    /// The top-k codes of the rows, and the AuxK codes (over the dead latents) when there were any.
    pub codes: SparseCodes,
    pub aux_codes: Option<SparseCodes>,
    /// ∂L/∂x̂ per unit of residual for the main loss (−2/(B·d)) and for AuxK (0 without AuxK): the
    /// decoder gradient is Σ coef·value·residual.
    pub grad_main: f32,
    pub grad_aux: f32,
}

/// The gradients the CPU trainer computes in one step on the rows `x` (already scaled, `[B, d_in]`),
/// with `tokens_since_fired` (one counter per latent) deciding which latents are dead for AuxK.
/// Nothing is updated: this is the step's own code up to, not including, Adam.
pub fn step_gradients(
    sae: &TopKSae,
    x: &[f32],
    cfg: &TrainConfig,
    data_variance: f64,
    tokens_since_fired: &[u64],
) -> StepGradients {
    let mut state = TrainState::new(sae);
    state
        .tokens_since_fired
        .iter_mut()
        .zip(tokens_since_fired)
        .for_each(|(t, &v)| *t = v);
    let done = state.backward(sae, x, cfg, data_variance);
    StepGradients {
        w_enc: state.g.w_enc,
        b_enc: state.g.b_enc,
        w_dec: state.g.w_dec,
        b_dec: state.g.b_dec,
        codes: done.codes,
        aux_codes: done.aux_codes,
        grad_main: done.grad_main,
        grad_aux: done.grad_aux,
    }
}

impl TrainState {
    fn new(sae: &TopKSae) -> Self {
        TrainState {
            step: 0,
            m: Params::zeros_like(sae),
            v: Params::zeros_like(sae),
            g: Params::zeros_like(sae),
            tokens_since_fired: vec![0; sae.d_sae],
            scratch: Scratch::default(),
        }
    }

    /// One optimiser step on the rows `x` (already scaled). Returns (normalised MSE, AuxK loss).
    ///
    /// Losses: main `Σ‖e‖² / (B·d)`; AuxK as in the reference (OpenAI `sparse_autoencoder`): its
    /// loss is `aux_coef · Σ‖e − ê‖² / Σ‖e − ē‖²` (the residual's variance over the batch, treated as
    /// a constant) added to a main loss divided by the data's per-coordinate variance `v`; multiplied
    /// through by `v`, the AuxK term here is `aux_coef · v · Σ‖e − ê‖² / Σ‖e − ē‖²`.
    fn step(
        &mut self,
        sae: &mut TopKSae,
        x: &[f32],
        cfg: &TrainConfig,
        lr: f64,
        data_variance: f64,
    ) -> (f64, f64) {
        let done = self.backward(sae, x, cfg, data_variance);
        self.adam(sae, cfg, lr);
        sae.w_dec.par_chunks_mut(sae.d_in).for_each(normalise);
        (done.loss, done.aux_loss)
    }

    /// The forward and backward half of [`TrainState::step`]: fills `self.g` and updates the
    /// dead-latent counters; the parameters are not touched.
    fn backward(&mut self, sae: &TopKSae, x: &[f32], cfg: &TrainConfig, data_variance: f64) -> Backward {
        let d = sae.d_in;
        let f_count = sae.d_sae;
        let b = x.len() / d;
        let norm = 1.0 / (b * d) as f32;

        // Forward: centre, dense encoder GEMM, top-k.
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut xc = std::mem::take(&mut scratch.xc);
        xc.clear();
        xc.extend_from_slice(x);
        xc.par_chunks_mut(d).for_each(|r| {
            for (v, c) in r.iter_mut().zip(&sae.b_dec) {
                *v -= c;
            }
        });
        let mut pre = std::mem::take(&mut scratch.pre);
        pre.resize(b * f_count, 0.0);
        pre.par_chunks_mut(f_count)
            .for_each(|r| r.copy_from_slice(&sae.b_enc));
        gemm_rows_by_latents(&xc, &sae.w_enc, d, &mut pre, f_count, Accum::Add);
        let codes = top_k_rows(&pre, f_count, sae.k);

        // AuxK over the latents that are dead now.
        let dead: Vec<u32> = (0..f_count as u32)
            .filter(|&f| self.tokens_since_fired[f as usize] >= cfg.dead_after_tokens)
            .collect();
        let k_aux = cfg.aux_k.min(dead.len());
        let aux_codes = (k_aux > 0).then(|| {
            let mut dead_pre = vec![0.0f32; b * dead.len()];
            dead_pre
                .par_chunks_mut(dead.len())
                .enumerate()
                .for_each(|(r, out)| {
                    for (o, &f) in out.iter_mut().zip(&dead) {
                        *o = pre[r * f_count + f as usize];
                    }
                });
            let mut c = top_k_rows(&dead_pre, dead.len(), k_aux);
            c.indices.iter_mut().for_each(|i| *i = dead[*i as usize]);
            c
        });
        scratch.pre = pre;

        // Fused per-row pass (each row's k decoder rows are read from memory once and reused from
        // cache): x̂ = b_dec + Σ v·W_dec[f], e = x − x̂; AuxK residual r = e − Σ v_aux·W_dec[f_aux];
        // ∂L/∂pre = ∂L/∂x̂ · W_dec[f] through the ReLU (∂L/∂x̂ = −2e·norm, ∂L/∂ê = −2·aux_coef·r·norm);
        // and the decoder side of b_dec's gradient, Σ −2e·norm, summed per block. (Its encoder side,
        // −Σ_rows ∂L/∂xc = −Σ_f ∂L/∂b_enc[f]·W_enc[f], is added once per step after the latent pass,
        // instead of gathering k encoder rows for every row.)
        let grad_main = -2.0 * norm;
        // The AuxK slots get ∂/∂ê of Σ‖e − ê‖² here (−2r); the normalisation is applied once the
        // residual's batch variance is known (after this pass).
        let grad_aux_unit = -2.0f32;
        let k = sae.k;
        let slots = k + k_aux;
        let mut residual = std::mem::take(&mut scratch.residual);
        residual.resize(b * d, 0.0);
        let mut aux_residual = std::mem::take(&mut scratch.aux_residual);
        aux_residual.resize(b * d, 0.0);
        let mut grad_pre = std::mem::take(&mut scratch.grad_pre);
        grad_pre.clear();
        grad_pre.resize(b * slots, 0.0);
        let n_blocks = b.div_ceil(ROW_BLOCK);
        let mut block_sums = vec![(0.0f64, 0.0f64, 0.0f64, vec![0.0f32; d], vec![0.0f64; d]); n_blocks];
        residual
            .par_chunks_mut(ROW_BLOCK * d)
            .zip(aux_residual.par_chunks_mut(ROW_BLOCK * d))
            .zip(grad_pre.par_chunks_mut(ROW_BLOCK * slots))
            .zip(block_sums.par_iter_mut())
            .enumerate()
            .for_each(|(block, (((res, aux_res), gp), sums))| {
                let (err, aux_err, energy, bdec, e_sum) = sums;
                for (i, res_row) in res.chunks_mut(d).enumerate() {
                    let row = block * ROW_BLOCK + i;
                    let x_row = &x[row * d..(row + 1) * d];
                    let (idx, val) = codes.row(row);
                    // e = x − b_dec − Σ v·W_dec[f]
                    for ((e, &xv), &bd) in res_row.iter_mut().zip(x_row).zip(&sae.b_dec) {
                        *e = xv - bd;
                    }
                    for (&f, &v) in idx.iter().zip(val) {
                        if v != 0.0 {
                            axpy(res_row, -v, sae.decoder_row(f as usize));
                        }
                    }
                    *err += dot(res_row, res_row) as f64;
                    *energy += dot(x_row, x_row) as f64;
                    let gp_row = &mut gp[i * slots..(i + 1) * slots];
                    for (j, (&f, &v)) in idx.iter().zip(val).enumerate() {
                        if v > 0.0 {
                            gp_row[j] = grad_main * dot(res_row, sae.decoder_row(f as usize));
                        }
                    }
                    if let Some(aux) = &aux_codes {
                        let r_row = &mut aux_res[i * d..(i + 1) * d];
                        r_row.copy_from_slice(res_row);
                        let (aidx, aval) = aux.row(row);
                        for (&f, &v) in aidx.iter().zip(aval) {
                            if v != 0.0 {
                                axpy(r_row, -v, sae.decoder_row(f as usize));
                            }
                        }
                        *aux_err += dot(r_row, r_row) as f64;
                        for (j, (&f, &v)) in aidx.iter().zip(aval).enumerate() {
                            if v > 0.0 {
                                gp_row[k + j] = grad_aux_unit * dot(r_row, sae.decoder_row(f as usize));
                            }
                        }
                    }
                    for ((acc, s), &e) in bdec.iter_mut().zip(e_sum.iter_mut()).zip(res_row.iter()) {
                        *acc += grad_main * e;
                        *s += e as f64;
                    }
                }
            });
        let (mut err, mut aux_err, mut energy) = (0.0f64, 0.0f64, 0.0f64);
        let mut e_sum = vec![0.0f64; d];
        self.g.b_dec.fill(0.0);
        for (e, a, en, bdec, es) in &block_sums {
            err += e;
            aux_err += a;
            energy += en;
            self.g.b_dec.iter_mut().zip(bdec).for_each(|(g, v)| *g += v);
            e_sum.iter_mut().zip(es).for_each(|(s, v)| *s += v);
        }
        // Σ‖e − ē‖² over the batch; an all-zero residual leaves nothing for AuxK to fit (the reference
        // maps its 0/0 to 0).
        let e_spread = err - e_sum.iter().map(|s| s * s).sum::<f64>() / b as f64;
        let aux_factor = if aux_codes.is_some() && e_spread > 0.0 && e_spread.is_finite() {
            cfg.aux_coef as f64 * data_variance / e_spread
        } else {
            0.0
        };
        let aux_loss = if aux_factor > 0.0 { aux_err / e_spread } else { 0.0 };
        let grad_aux = grad_aux_unit * aux_factor as f32;
        if k_aux > 0 {
            let f = aux_factor as f32;
            grad_pre
                .par_chunks_mut(slots)
                .for_each(|gp| gp[k..].iter_mut().for_each(|g| *g *= f));
        }

        // Per-latent gradients: the touches of each latent, gathered by a counting sort.
        let slot_latent = |row: usize, j: usize| -> (u32, f32, bool) {
            if j < k {
                let (idx, val) = codes.row(row);
                (idx[j], val[j], false)
            } else {
                let (idx, val) = aux_codes.as_ref().map(|c| c.row(row)).unwrap_or((&[], &[]));
                (idx[j - k], val[j - k], true)
            }
        };
        let mut counts = vec![0usize; f_count + 1];
        for row in 0..b {
            for j in 0..slots {
                counts[slot_latent(row, j).0 as usize + 1] += 1;
            }
        }
        for f in 0..f_count {
            counts[f + 1] += counts[f];
        }
        let mut by_latent = vec![Touch::default(); counts[f_count]];
        let mut fill = counts.clone();
        for row in 0..b {
            for j in 0..slots {
                let (f, value, aux) = slot_latent(row, j);
                by_latent[fill[f as usize]] = Touch {
                    row: row as u32,
                    value,
                    grad_pre: grad_pre[row * slots + j],
                    aux,
                };
                fill[f as usize] += 1;
            }
        }
        let g = &mut self.g;
        g.w_dec
            .par_chunks_mut(d)
            .zip(g.w_enc.par_chunks_mut(d))
            .zip(g.b_enc.par_iter_mut())
            .enumerate()
            .for_each(|(f, ((gd, ge), gbe))| {
                gd.fill(0.0);
                ge.fill(0.0);
                *gbe = 0.0;
                let list = &by_latent[counts[f]..counts[f + 1]];
                for t in list {
                    let row = t.row as usize;
                    let (target, coef) = if t.aux {
                        (&aux_residual, grad_aux)
                    } else {
                        (&residual, grad_main)
                    };
                    if t.value != 0.0 {
                        axpy(gd, coef * t.value, &target[row * d..(row + 1) * d]);
                    }
                    if t.grad_pre != 0.0 {
                        axpy(ge, t.grad_pre, &xc[row * d..(row + 1) * d]);
                        *gbe += t.grad_pre;
                    }
                }
                // Keep the decoder row on the unit sphere: drop the gradient along it.
                if !list.is_empty() {
                    let w = &sae.w_dec[f * d..(f + 1) * d];
                    let along = dot(gd, w);
                    axpy(gd, -along, w);
                }
            });

        // The encoder side of b_dec's gradient: −Σ_f ∂L/∂b_enc[f]·W_enc[f] (latents in order).
        for (f, &gb) in self.g.b_enc.iter().enumerate() {
            if gb != 0.0 {
                axpy(&mut self.g.b_dec, -gb, sae.encoder_row(f));
            }
        }

        // Dead-latent counters.
        let mut fired = vec![false; f_count];
        for (&f, &v) in codes.indices.iter().zip(&codes.values) {
            if v > 0.0 {
                fired[f as usize] = true;
            }
        }
        for (t, &hit) in self.tokens_since_fired.iter_mut().zip(&fired) {
            *t = if hit { 0 } else { *t + b as u64 };
        }

        self.scratch = Scratch {
            xc,
            pre: scratch.pre,
            residual,
            aux_residual,
            grad_pre,
        };
        Backward {
            loss: err / energy.max(1e-30),
            aux_loss,
            codes,
            aux_codes,
            grad_main,
            grad_aux: if k_aux > 0 { grad_aux } else { 0.0 },
        }
    }

    fn adam(&mut self, sae: &mut TopKSae, cfg: &TrainConfig, lr: f64) {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
        let (c1, c2) = adam_bias_corrections(cfg, t);
        let (lr, eps) = (lr as f32, cfg.adam_eps as f32);
        let update = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            p.par_chunks_mut(4096)
                .zip(m.par_chunks_mut(4096))
                .zip(v.par_chunks_mut(4096))
                .zip(g.par_chunks(4096))
                .for_each(|(((p, m), v), g)| {
                    for i in 0..p.len() {
                        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                        p[i] -= lr * (m[i] * c1) / ((v[i] * c2).sqrt() + eps);
                    }
                });
        };
        update(
            &mut sae.w_enc,
            &mut self.m.w_enc,
            &mut self.v.w_enc,
            &self.g.w_enc,
        );
        update(
            &mut sae.b_enc,
            &mut self.m.b_enc,
            &mut self.v.b_enc,
            &self.g.b_enc,
        );
        update(
            &mut sae.w_dec,
            &mut self.m.w_dec,
            &mut self.v.w_dec,
            &self.g.w_dec,
        );
        update(
            &mut sae.b_dec,
            &mut self.m.b_dec,
            &mut self.v.b_dec,
            &self.g.b_dec,
        );
    }
}

/// Reconstruction quality of an SAE over rows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalStats {
    pub rows: usize,
    /// Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − x̄‖² (x̄ = the mean of these rows).
    pub fvu: f64,
    pub mse: f64,
    /// Mean number of latents with a value > 0 per row.
    pub l0: f64,
    /// Latents that never fired on these rows.
    pub dead_latents: usize,
    pub dead_fraction: f64,
    /// Rows on which each latent fired.
    #[serde(skip)]
    pub fire_counts: Vec<u64>,
    /// The mean of these rows (the mean-ablation floor of the spliced loss).
    #[serde(skip)]
    pub mean: Vec<f32>,
}

/// Encodes and decodes the rows `ranges` of `source` in chunks and measures the reconstruction.
pub fn evaluate(sae: &TopKSae, source: &dyn RowSource, ranges: &[Range<usize>]) -> EvalStats {
    let d = sae.d_in;
    let mut sum = vec![0.0f64; d];
    let (mut sum_sq, mut err, mut active, mut rows) = (0.0f64, 0.0f64, 0usize, 0usize);
    let mut fire_counts = vec![0u64; sae.d_sae];
    const CHUNK: usize = 4096;
    // Values per piece of the parallel error sum (a fixed split, so the sum is the same on every run).
    const ERR_PIECE: usize = 1 << 14;
    let mut x = vec![0.0f32; CHUNK * d];
    for range in ranges {
        let mut s = range.start;
        while s < range.end {
            let n = (range.end - s).min(CHUNK);
            let x = &mut x[..n * d];
            source.read(s, x);
            let codes = sae.encode(x);
            let recon = sae.decode(&codes);
            // Fixed-size pieces summed in order: a parallel `sum` would add in an order that depends on
            // work stealing, and the FVU written to cfg.json would differ between runs in its last bits.
            let pieces: Vec<f64> = x
                .par_chunks(ERR_PIECE)
                .zip(recon.par_chunks(ERR_PIECE))
                .map(|(a, b)| {
                    a.iter()
                        .zip(b)
                        .map(|(a, b)| ((a - b) as f64).powi(2))
                        .sum::<f64>()
                })
                .collect();
            err += pieces.iter().sum::<f64>();
            for r in x.chunks(d) {
                for (acc, &v) in sum.iter_mut().zip(r) {
                    *acc += v as f64;
                }
                sum_sq += r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
            }
            for (&f, &v) in codes.indices.iter().zip(&codes.values) {
                if v > 0.0 {
                    fire_counts[f as usize] += 1;
                    active += 1;
                }
            }
            rows += n;
            s += n;
        }
    }
    let n = rows.max(1) as f64;
    let total_var = sum_sq - sum.iter().map(|s| s * s).sum::<f64>() / n;
    let dead = fire_counts.iter().filter(|&&c| c == 0).count();
    EvalStats {
        rows,
        fvu: if total_var > 0.0 {
            err / total_var
        } else {
            f64::NAN
        },
        mse: err / (n * d as f64),
        l0: active as f64 / n,
        dead_latents: dead,
        dead_fraction: dead as f64 / sae.d_sae as f64,
        fire_counts,
        mean: sum.iter().map(|s| (s / n) as f32).collect(),
    }
}

/// Adam's bias corrections `c1 = 1/(1 − β₁ᵗ)`, `c2 = 1/(1 − β₂ᵗ)` at step `t` (1-based): βᵗ in f64, the
/// division in f32. The CPU and GPU steppers both take them from here, so they agree bit for bit
/// (dividing in f64 and rounding once differs in the last bit for about one (β, t) pair in ten).
pub fn adam_bias_corrections(cfg: &TrainConfig, t: i32) -> (f32, f32) {
    let correction = |beta: f64| 1.0f32 / (1.0 - beta.powi(t)) as f32;
    (correction(cfg.beta1), correction(cfg.beta2))
}

/// Training and held-out rows (as ranges of consecutive rows) by cell.
pub struct Split {
    pub train: Vec<Range<usize>>,
    pub heldout: Vec<Range<usize>>,
    pub train_rows: usize,
    pub heldout_cells: Vec<u64>,
}

/// Splits the rows of a store (`[cell, position, token]`, grouped by cell) into training and held-out
/// rows by [`is_heldout`] of each cell.
pub fn split_by_cell(rows: &[[i32; 3]], seed: u64, fraction: f64) -> Split {
    let mut split = Split {
        train: Vec::new(),
        heldout: Vec::new(),
        train_rows: 0,
        heldout_cells: Vec::new(),
    };
    let mut r = 0;
    while r < rows.len() {
        let cell = rows[r][0];
        let start = r;
        while r < rows.len() && rows[r][0] == cell {
            r += 1;
        }
        if is_heldout(cell as u64, seed, fraction) {
            if split.heldout_cells.last() != Some(&(cell as u64)) {
                split.heldout_cells.push(cell as u64);
            }
            push_range(&mut split.heldout, start..r);
        } else {
            split.train_rows += r - start;
            push_range(&mut split.train, start..r);
        }
    }
    split.heldout_cells.sort_unstable();
    split.heldout_cells.dedup();
    split
}

/// Appends `next` to `ranges`, merged into the last range when they touch.
pub fn push_range(ranges: &mut Vec<Range<usize>>, next: Range<usize>) {
    match ranges.last_mut() {
        Some(last) if last.end == next.start => last.end = next.end,
        _ => ranges.push(next),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn adam_bias_corrections_divide_in_f32_as_both_steppers_do() {
        let mut rounded_differently = 0;
        let mut pairs = 0;
        for beta in [0.9, 0.95, 0.99, 0.999, 0.9999] {
            for t in 1..200 {
                let cfg = TrainConfig {
                    beta1: beta,
                    beta2: beta,
                    ..TrainConfig::new(8, 16, 2, 100)
                };
                let (c1, c2) = adam_bias_corrections(&cfg, t);
                let want = 1.0f32 / (1.0 - beta.powi(t)) as f32;
                assert_eq!((c1.to_bits(), c2.to_bits()), (want.to_bits(), want.to_bits()));
                pairs += 1;
                rounded_differently += usize::from((1.0 / (1.0 - beta.powi(t))) as f32 != want);
            }
        }
        // The other rounding order really differs somewhere: one shared function is what keeps parity.
        assert!(
            rounded_differently > 0 && rounded_differently < pairs,
            "{rounded_differently} of {pairs}"
        );
    }

    use super::*;

    /// The held-out FVU written to cfg.json is the same number on every run and at every thread count
    /// (the parallel error sum has a fixed split).
    #[test]
    fn evaluation_gives_the_same_bits_at_any_thread_count() {
        let (d, f, k, n) = (64, 96, 8, 3000);
        let sae = crate::sae::tests::random_sae(d, f, k, 5);
        let mut rng = crate::rng::Rng::new(6, 0);
        let rows = MemoryRows {
            d,
            data: (0..n * d).map(|_| rng.normal() as f32).collect(),
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let stats = pool.install(|| evaluate(&sae, &rows, &[0..n / 2, n / 2..n]));
            (stats.fvu.to_bits(), stats.mse.to_bits())
        };
        let one = run(1);
        for threads in [2, 3, 8] {
            for _ in 0..3 {
                assert_eq!(run(threads), one, "{threads} threads");
            }
        }
    }

    /// The sparse backward equals finite differences of the loss.
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn gradients_match_finite_differences() {
        let (d, f, k, b) = (6usize, 16usize, 3usize, 5usize);
        let mut sae = crate::sae::tests::random_sae(d, f, k, 9);
        sae.w_dec.chunks_mut(d).for_each(normalise);
        let mut rng = Rng::new(11, 0);
        let x: Vec<f32> = (0..b * d).map(|_| rng.normal() as f32).collect();
        let mut cfg = TrainConfig::new(d, f, k, 100);
        cfg.aux_k = 2;
        cfg.aux_coef = 0.5;
        cfg.dead_after_tokens = 1;
        let mut state = TrainState::new(&sae);
        // Latents 0..8 are dead (never fired), so AuxK is active over them.
        for (i, t) in state.tokens_since_fired.iter_mut().enumerate() {
            *t = if i < 8 { 10 } else { 0 };
        }
        let dead: Vec<usize> = (0..8).collect();
        let residual = |s: &TopKSae| -> Vec<f64> {
            let recon = s.decode(&s.encode(&x));
            x.iter().zip(&recon).map(|(a, b)| (*a - *b) as f64).collect()
        };
        // The AuxK target is the main residual of the unperturbed SAE (detached, as in training).
        let e0 = residual(&sae);
        // The reference's AuxK normaliser: the residual's spread over the batch (a constant).
        let mut e_mean = vec![0.0f64; d];
        for r in e0.chunks(d) {
            e_mean.iter_mut().zip(r).for_each(|(m, v)| *m += v / b as f64);
        }
        let spread: f64 = e0
            .chunks(d)
            .map(|r| r.iter().zip(&e_mean).map(|(v, m)| (v - m).powi(2)).sum::<f64>())
            .sum();
        let variance = 0.7;
        let loss = |s: &TopKSae| -> f64 {
            let e = residual(s);
            let main: f64 = e.iter().map(|v| v * v).sum::<f64>() / (b * d) as f64;
            // AuxK: top-2 dead latents per row of the pre-activations, ReLU, decode without bias.
            let pre = s.pre_activations(&x);
            let mut aux = 0.0;
            for r in 0..b {
                let mut cand: Vec<(f32, usize)> = dead.iter().map(|&j| (pre[r * f + j], j)).collect();
                cand.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
                for i in 0..d {
                    let mut ehat = 0.0f64;
                    for &(v, j) in &cand[..2] {
                        ehat += v.max(0.0) as f64 * s.decoder_row(j)[i] as f64;
                    }
                    aux += (e0[r * d + i] - ehat).powi(2);
                }
            }
            main + 0.5 * variance * aux / spread
        };
        // Run the step with lr 0 to fill the gradients only.
        let mut probe = sae.clone();
        state.step(&mut probe, &x, &cfg, 0.0, variance);
        let eps = 1e-3f32;
        let checks: Vec<(&str, usize)> = vec![("b_dec", 2), ("b_enc", 9), ("w_enc", 9 * d + 1), ("b_enc", 3)];
        for (name, i) in checks {
            let mut plus = sae.clone();
            let mut minus = sae.clone();
            let (p, m, g) = match name {
                "b_dec" => (&mut plus.b_dec, &mut minus.b_dec, state.g.b_dec[i]),
                "b_enc" => (&mut plus.b_enc, &mut minus.b_enc, state.g.b_enc[i]),
                _ => (&mut plus.w_enc, &mut minus.w_enc, state.g.w_enc[i]),
            };
            p[i] += eps;
            m[i] -= eps;
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
            assert!(
                (numeric - g as f64).abs() < 2e-3 * (1.0 + numeric.abs()),
                "{name}[{i}]: numeric {numeric} vs {g}"
            );
        }
        // Decoder: the projected gradient is the numeric one minus its component along the row.
        let row = 10;
        let w = sae.decoder_row(row).to_vec();
        let mut numeric = vec![0.0f64; d];
        for i in 0..d {
            let mut plus = sae.clone();
            let mut minus = sae.clone();
            plus.w_dec[row * d + i] += eps;
            minus.w_dec[row * d + i] -= eps;
            numeric[i] = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
        }
        let along: f64 = numeric.iter().zip(&w).map(|(a, b)| a * *b as f64).sum();
        for i in 0..d {
            let want = numeric[i] - along * w[i] as f64;
            let got = state.g.w_dec[row * d + i] as f64;
            assert!(
                (want - got).abs() < 2e-3 * (1.0 + want.abs()),
                "W_dec[{row},{i}]: {want} vs {got}"
            );
        }
    }

    #[test]
    fn the_heldout_split_is_by_cell_and_seeded() {
        let picked: Vec<u64> = (0..1000).filter(|&c| is_heldout(c, 0, 0.1)).collect();
        assert!((60..140).contains(&picked.len()), "{}", picked.len());
        let again: Vec<u64> = (0..1000).filter(|&c| is_heldout(c, 0, 0.1)).collect();
        assert_eq!(picked, again);
        let other: Vec<u64> = (0..1000).filter(|&c| is_heldout(c, 1, 0.1)).collect();
        assert_ne!(picked, other);
    }

    #[test]
    fn splits_whole_cells_into_merged_ranges() {
        // 40 cells of 1–3 rows each.
        let rows: Vec<[i32; 3]> = (0..40)
            .flat_map(|c: i32| (0..1 + c % 3).map(move |p| [c, p, 0]))
            .collect();
        let split = split_by_cell(&rows, 7, 0.3);
        let count = |r: &[Range<usize>]| r.iter().map(|x| x.len()).sum::<usize>();
        assert_eq!(split.train_rows, count(&split.train));
        assert_eq!(count(&split.train) + count(&split.heldout), rows.len());
        assert!(!split.heldout_cells.is_empty() && split.train_rows > 0);
        for r in &split.heldout {
            for row in &rows[r.clone()] {
                assert!(split.heldout_cells.contains(&(row[0] as u64)));
                assert!(is_heldout(row[0] as u64, 7, 0.3));
            }
        }
        // Adjacent ranges are merged: no range ends where the next one starts.
        for w in split.train.windows(2) {
            assert!(w[0].end < w[1].start);
        }
        assert!(split_by_cell(&rows, 7, 0.0).heldout.is_empty());
    }
}
