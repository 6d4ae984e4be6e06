//! TopK SAE training steps on a GPU: the CPU trainer's step ([`crate::sae::train`]) kernel by kernel,
//! with every parameter, Adam moment, gradient and dead-latent counter resident on the device.
//!
//! Per step: upload the batch (pinned staging), centre it, the dense encoder GEMM (cuBLASLt: exact f32,
//! or bf16 operands with f32 accumulation and an f32 output), top-k, the dead mask and AuxK top-k, the
//! residuals, the gradients at the active pre-activations, the weight gradients as dense GEMMs (the codes
//! scattered into a `[rows, d_sae]` matrix, then `dW = Gᵀ·H` through cuBLASLt, and a column sum for
//! `b_enc`), the `b_dec` gradient, the removal of the decoder-parallel gradient, the firing counters, Adam
//! on all four arrays and the decoder renormalisation. Two small reads come back per step: the dead-latent
//! count (AuxK's k) and the loss sums. No kernel adds floats with atomics, so a run gives the same bits
//! every time on the same GPU model (cuBLASLt's own guarantee for a fixed algorithm and one stream).
//!
//! Differences from the CPU, by design: GEMM summation orders differ from the CPU's, and in bf16 mode
//! every GEMM (the encoder and the three weight-gradient GEMMs) rounds its operands to bf16 (f32
//! accumulation). Agreement is therefore statistical (FVU after the same tokens;
//! `engine/tests/cuda_sae_train.rs`).

use std::sync::Arc;

use half::bf16;
use scinterp_kernels::cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, DriverError, PinnedHostSlice,
};
use scinterp_kernels::gpu::gemm::{CublasLt, Epilogue, LinearShape};
use scinterp_kernels::gpu::sae::{GpuCodes, GradSet, SaeShape, SlotColumns};
use scinterp_kernels::gpu::sae_optim::{AdamStep, SUM_BLOCKS};
use scinterp_kernels::gpu::{take_recorded_error, GpuError, Kernels};

use super::GpuPrecision;
use crate::sae::train::{adam_bias_corrections, Stepper, StepperError, TrainConfig};
use crate::sae::{SaeShapeError, SparseCodes, TopKSae};

/// The four parameter arrays (or their moments, or gradients) on the device.
struct DeviceParams {
    w_enc: CudaSlice<f32>,
    b_enc: CudaSlice<f32>,
    w_dec: CudaSlice<f32>,
    b_dec: CudaSlice<f32>,
}

impl DeviceParams {
    fn upload(stream: &Arc<CudaStream>, sae: &TopKSae) -> Result<Self, GpuError> {
        Ok(DeviceParams {
            w_enc: stream.clone_htod(&sae.w_enc)?,
            b_enc: stream.clone_htod(&sae.b_enc)?,
            w_dec: stream.clone_htod(&sae.w_dec)?,
            b_dec: stream.clone_htod(&sae.b_dec)?,
        })
    }

    fn zeros(stream: &Arc<CudaStream>, sae: &TopKSae) -> Result<Self, GpuError> {
        Ok(DeviceParams {
            w_enc: stream.alloc_zeros(sae.w_enc.len())?,
            b_enc: stream.alloc_zeros(sae.b_enc.len())?,
            w_dec: stream.alloc_zeros(sae.w_dec.len())?,
            b_dec: stream.alloc_zeros(sae.b_dec.len())?,
        })
    }
}

/// Per-step buffers, sized for the largest batch.
struct StepBuffers {
    x: CudaSlice<f32>,
    xc: CudaSlice<f32>,
    xc16: Option<CudaSlice<bf16>>,
    pre: CudaSlice<f32>,
    idx: CudaSlice<u32>,
    val: CudaSlice<f32>,
    aux_idx: CudaSlice<u32>,
    aux_val: CudaSlice<f32>,
    e: CudaSlice<f32>,
    aux_e: CudaSlice<f32>,
    grad_pre: CudaSlice<f32>,
    /// bf16 mode: the weight-gradient GEMM operands — the dense `[B, d_sae]` code matrix (in f32 mode
    /// `pre` serves, no longer needed once the top-k sets are chosen) and the two residuals.
    dense16: Option<CudaSlice<bf16>>,
    e16: Option<CudaSlice<bf16>>,
    aux_e16: Option<CudaSlice<bf16>>,
    dead: CudaSlice<u8>,
    n_dead: CudaSlice<u32>,
    partial: CudaSlice<f64>,
    /// Host staging of the batch in page-locked memory (full-speed, DMA-able copies).
    staging: PinnedHostSlice<f32>,
    /// Recorded right after the last upload from `staging`; waited on before `staging` is rewritten.
    staging_uploaded: Option<CudaEvent>,
}

/// The main and AuxK code sets of a step (codes, ∂L/∂pre columns, decoder coefficient), before their
/// residuals are chosen in the GEMM operand type.
struct WeightGradSets<'a> {
    main: (GpuCodes<'a>, SlotColumns, f32),
    aux: Option<(GpuCodes<'a>, SlotColumns, f32)>,
}

impl<'a> WeightGradSets<'a> {
    fn with_targets<T>(
        &self,
        e: &'a CudaSlice<T>,
        aux_e: &'a CudaSlice<T>,
    ) -> (GradSet<'a, T>, Option<GradSet<'a, T>>) {
        let set = |(codes, cols, coef): (GpuCodes<'a>, SlotColumns, f32), target| GradSet {
            codes,
            cols,
            coef,
            target,
        };
        (set(self.main, e), self.aux.map(|a| set(a, aux_e)))
    }
}

/// A [`Stepper`] on GPU 0.
pub struct GpuSaeStepper {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    lt: CublasLt,
    /// Shape constants of the SAE (the weights live on the device).
    d_in: usize,
    d_sae: usize,
    k: usize,
    aux_k: usize,
    params: DeviceParams,
    m: DeviceParams,
    v: DeviceParams,
    g: DeviceParams,
    /// bf16 copy of `W_enc` for the bf16 encoder GEMM, refreshed after every Adam step.
    w_enc16: Option<CudaSlice<bf16>>,
    tokens_since_fired: CudaSlice<u64>,
    buffers: StepBuffers,
    step: u64,
}

/// Why the GPU SAE trainer or encoder could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum GpuSaeError {
    #[error("GPU: {0}")]
    Absent(#[from] scinterp_kernels::GpuAbsence),
    #[error("GPU: {0}")]
    Driver(#[from] DriverError),
    #[error("GPU: {0}")]
    Kernel(#[from] GpuError),
    #[error(transparent)]
    Shape(#[from] SaeShapeError),
    #[error("{got} values are not whole rows of {d}")]
    Rows { got: usize, d: usize },
}

/// A device failure at the [`Stepper`] boundary.
fn device(e: impl std::fmt::Display) -> StepperError {
    StepperError::Device(format!("GPU: {e}"))
}

impl GpuSaeStepper {
    /// Uploads `sae` and allocates everything a step of `cfg.batch_size` rows needs. Needs cuBLASLt
    /// (the encoder GEMM).
    pub fn new(sae: TopKSae, cfg: &TrainConfig, precision: GpuPrecision) -> Result<Self, GpuSaeError> {
        scinterp_kernels::cuda_available()?;
        let ctx = CudaContext::new(0)?;
        let stream = ctx.default_stream();
        let kernels = Kernels::load(&ctx)?;
        let lt = CublasLt::new(&stream)?;
        let (d, f, b) = (sae.d_in, sae.d_sae, cfg.batch_size);
        let aux_k = cfg.aux_k.min(f);
        let slots = sae.k + aux_k;
        let params = DeviceParams::upload(&stream, &sae)?;
        let m = DeviceParams::zeros(&stream, &sae)?;
        let v = DeviceParams::zeros(&stream, &sae)?;
        let g = DeviceParams::zeros(&stream, &sae)?;
        let w_enc16 = match precision {
            GpuPrecision::Bf16 => {
                let mut w = stream.alloc_zeros::<bf16>(f * d)?;
                kernels.f32_to_bf16(&stream, &params.w_enc, &mut w)?;
                Some(w)
            }
            GpuPrecision::F32 => None,
        };
        let alloc = |n: usize| stream.alloc_zeros::<f32>(n.max(1)).map_err(GpuSaeError::from);
        let alloc16 = |n: usize| -> Result<Option<CudaSlice<bf16>>, GpuSaeError> {
            Ok(match precision {
                GpuPrecision::Bf16 => Some(stream.alloc_zeros::<bf16>(n.max(1))?),
                GpuPrecision::F32 => None,
            })
        };
        // Memory of the dense weight gradients: one [B, d_sae] matrix — `pre` itself in f32 mode, a
        // bf16 matrix of half `pre`'s bytes in bf16 mode (plus two bf16 [B, d] residuals) — so at most
        // 1.5× what `pre` takes already, and no chunking (B 8,192, F 4,608: pre 151 MB, bf16 75 MB).
        let buffers = StepBuffers {
            x: alloc(b * d)?,
            xc: alloc(b * d)?,
            xc16: match precision {
                GpuPrecision::Bf16 => Some(stream.alloc_zeros::<bf16>(b * d)?),
                GpuPrecision::F32 => None,
            },
            pre: alloc(b * f)?,
            idx: stream.alloc_zeros::<u32>(b * sae.k)?,
            val: alloc(b * sae.k)?,
            aux_idx: stream.alloc_zeros::<u32>((b * aux_k).max(1))?,
            aux_val: alloc(b * aux_k)?,
            e: alloc(b * d)?,
            aux_e: alloc(b * d)?,
            grad_pre: alloc(b * slots)?,
            dense16: alloc16(b * f)?,
            e16: alloc16(b * d)?,
            aux_e16: alloc16(b * d)?,
            dead: stream.alloc_zeros::<u8>(f)?,
            n_dead: stream.alloc_zeros::<u32>(1)?,
            partial: stream.alloc_zeros::<f64>(SUM_BLOCKS)?,
            // SAFETY: page-locked host memory, written by us before every copy and read by no kernel.
            staging: unsafe { ctx.alloc_pinned::<f32>(b * d) }?,
            staging_uploaded: None,
        };
        let tokens_since_fired = stream.alloc_zeros::<u64>(f)?;
        Ok(GpuSaeStepper {
            ctx,
            stream,
            kernels,
            lt,
            d_in: d,
            d_sae: f,
            k: sae.k,
            aux_k,
            params,
            m,
            v,
            g,
            w_enc16,
            tokens_since_fired,
            buffers,
            step: 0,
        })
    }

    fn try_step(
        &mut self,
        x: &[f32],
        cfg: &TrainConfig,
        lr: f64,
        data_variance: f64,
    ) -> Result<(f64, f64), GpuError> {
        let (d, f, k) = (self.d_in, self.d_sae, self.k);
        let rows = x.len() / d;
        let shape = SaeShape {
            rows,
            d_in: d,
            d_sae: f,
        };
        let norm = 1.0 / (rows * d) as f32;
        let grad_main = -2.0 * norm;
        let (s, kn) = (&self.stream, &self.kernels);
        let buf = &mut self.buffers;

        // Batch in: pinned staging, then one DMA copy. The copy from pinned memory is asynchronous, and
        // cudarc records the slice's own event only when it manages several streams, so
        // `as_mut_slice` alone would not wait for it: wait on our event from the previous upload before
        // overwriting the bytes it may still be reading (a no-op when a blocking read since then has
        // synchronised the stream).
        if let Some(uploaded) = buf.staging_uploaded.take() {
            uploaded.synchronize()?;
        }
        buf.staging.as_mut_slice()?[..x.len()].copy_from_slice(x);
        s.memcpy_htod(&buf.staging, &mut buf.x)?;
        buf.staging_uploaded = Some(s.record_event(None)?);

        // Forward: xc = x − b_dec; pre = xc · W_encᵀ + b_enc; top-k.
        kn.sub_row_vector(s, &buf.x, &self.params.b_dec, &mut buf.xc, rows)?;
        let gemm = LinearShape { m: rows, n: f, k: d };
        match (&mut buf.xc16, &self.w_enc16) {
            (Some(xc16), Some(w16)) => {
                kn.f32_to_bf16(s, &buf.xc, xc16)?;
                self.lt.linear(
                    xc16,
                    w16,
                    Some(&self.params.b_enc),
                    &mut buf.pre,
                    gemm,
                    Epilogue::Bias,
                )?;
            }
            _ => self.lt.linear(
                &buf.xc,
                &self.params.w_enc,
                Some(&self.params.b_enc),
                &mut buf.pre,
                gemm,
                Epilogue::Bias,
            )?,
        }
        kn.sae_topk(s, &buf.pre, None, &mut buf.idx, &mut buf.val, (rows, f), k)?;

        // AuxK over the latents dead before this step (the count decides k_aux, as on the CPU).
        kn.sae_dead_mask(
            s,
            &self.tokens_since_fired,
            cfg.dead_after_tokens,
            &mut buf.dead,
            &mut buf.n_dead,
            f,
        )?;
        let n_dead = s.clone_dtoh(&buf.n_dead)?[0] as usize;
        let k_aux = self.aux_k.min(n_dead);
        if k_aux > 0 {
            kn.sae_topk(
                s,
                &buf.pre,
                Some(&buf.dead),
                &mut buf.aux_idx,
                &mut buf.aux_val,
                (rows, f),
                k_aux,
            )?;
        }
        let codes = GpuCodes {
            indices: &buf.idx,
            values: &buf.val,
            k,
        };
        let aux_codes = GpuCodes {
            indices: &buf.aux_idx,
            values: &buf.aux_val,
            k: k_aux,
        };
        let slots = k + k_aux;

        // Residuals and the gradients at the active pre-activations.
        kn.sae_residual(
            s,
            &buf.x,
            &self.params.b_dec,
            codes,
            &self.params.w_dec,
            &mut buf.e,
            shape,
        )?;
        let main_cols = SlotColumns {
            stride: slots,
            offset: 0,
        };
        let aux_cols = SlotColumns {
            stride: slots,
            offset: k,
        };
        kn.sae_grad_pre(
            s,
            &buf.e,
            codes,
            &self.params.w_dec,
            grad_main,
            &mut buf.grad_pre,
            main_cols,
            shape,
        )?;
        let g = &mut self.g;
        // Only b_enc's gradient needs zeroing (for the spread below); the weight-gradient GEMMs and
        // the column sum overwrite the rest.
        s.memset_zeros(&mut g.b_enc)?;
        // AuxK normalised as the CPU does (`TrainState::step`): by the residual's spread over the
        // batch, Σ‖e‖² − ‖Σ_rows e‖²/B. The column sums come from the b_dec-gradient kernel with
        // coefficient 1 while the b_enc gradient is still zero (its real call below overwrites them).
        let err = kn.sum_squares(s, &buf.e, rows * d, &mut buf.partial)?;
        let mut aux_factor = 0.0f64;
        if k_aux > 0 {
            kn.sae_grad_b_dec(s, &buf.e, 1.0, &g.b_enc, &self.params.w_enc, &mut g.b_dec, shape)?;
            let col: Vec<f32> = s.clone_dtoh(&g.b_dec)?;
            let spread = err - col.iter().map(|&c| (c as f64).powi(2)).sum::<f64>() / rows as f64;
            if spread > 0.0 && spread.is_finite() {
                aux_factor = cfg.aux_coef as f64 * data_variance / spread;
            }
        }
        let grad_aux = (-2.0 * aux_factor) as f32;
        let spread_inv = if aux_factor > 0.0 {
            aux_factor / (cfg.aux_coef as f64 * data_variance)
        } else {
            0.0
        };
        if k_aux > 0 {
            kn.sae_aux_residual(s, &buf.e, aux_codes, &self.params.w_dec, &mut buf.aux_e, shape)?;
            kn.sae_grad_pre(
                s,
                &buf.aux_e,
                aux_codes,
                &self.params.w_dec,
                grad_aux,
                &mut buf.grad_pre,
                aux_cols,
                shape,
            )?;
        }

        // Weight gradients of the active latents (dense GEMMs, in the step's precision), then b_dec's,
        // then the decoder-parallel part removed.
        let sets = WeightGradSets {
            main: (codes, main_cols, grad_main),
            aux: (k_aux > 0).then_some((aux_codes, aux_cols, grad_aux)),
        };
        let outputs = (&mut g.w_dec, &mut g.w_enc, &mut g.b_enc);
        match (&mut buf.dense16, &mut buf.e16, &mut buf.aux_e16, &buf.xc16) {
            (Some(dense16), Some(e16), Some(aux_e16), Some(xc16)) => {
                kn.f32_to_bf16(s, &buf.e, e16)?;
                if k_aux > 0 {
                    kn.f32_to_bf16(s, &buf.aux_e, aux_e16)?;
                }
                let (main, aux) = sets.with_targets(e16, aux_e16);
                kn.sae_weight_grads(
                    s,
                    &self.lt,
                    main,
                    aux,
                    (&buf.grad_pre, xc16),
                    dense16,
                    outputs,
                    shape,
                )?;
            }
            _ => {
                let (main, aux) = sets.with_targets(&buf.e, &buf.aux_e);
                kn.sae_weight_grads(
                    s,
                    &self.lt,
                    main,
                    aux,
                    (&buf.grad_pre, &buf.xc),
                    &mut buf.pre,
                    outputs,
                    shape,
                )?
            }
        }
        kn.sae_grad_b_dec(
            s,
            &buf.e,
            grad_main,
            &g.b_enc,
            &self.params.w_enc,
            &mut g.b_dec,
            shape,
        )?;
        kn.sae_remove_parallel_grad(s, &mut g.w_dec, &self.params.w_dec, (f, d))?;
        kn.sae_update_fire_counters(s, codes, rows, &mut self.tokens_since_fired, f)?;

        // Losses of this step's forward pass (before the update), as the CPU reports them.
        let energy = kn.sum_squares(s, &buf.x, rows * d, &mut buf.partial)?;
        let aux_loss = if k_aux > 0 {
            kn.sum_squares(s, &buf.aux_e, rows * d, &mut buf.partial)? * spread_inv
        } else {
            0.0
        };

        // Adam, then unit-norm decoder rows, then the bf16 copy of the encoder.
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = adam_bias_corrections(cfg, t);
        let adam = AdamStep {
            lr: lr as f32,
            beta1: cfg.beta1 as f32,
            beta2: cfg.beta2 as f32,
            c1,
            c2,
            eps: cfg.adam_eps as f32,
        };
        let (p, m, v) = (&mut self.params, &mut self.m, &mut self.v);
        kn.adam(s, &mut p.w_enc, (&mut m.w_enc, &mut v.w_enc), &g.w_enc, adam)?;
        kn.adam(s, &mut p.b_enc, (&mut m.b_enc, &mut v.b_enc), &g.b_enc, adam)?;
        kn.adam(s, &mut p.w_dec, (&mut m.w_dec, &mut v.w_dec), &g.w_dec, adam)?;
        kn.adam(s, &mut p.b_dec, (&mut m.b_dec, &mut v.b_dec), &g.b_dec, adam)?;
        kn.sae_renormalise_rows(s, &mut p.w_dec, (f, d))?;
        if let Some(w16) = &mut self.w_enc16 {
            kn.f32_to_bf16(s, &p.w_enc, w16)?;
        }
        take_recorded_error(&self.ctx)?;
        Ok((err / energy.max(1e-30), aux_loss))
    }
}

impl Stepper for GpuSaeStepper {
    fn step(
        &mut self,
        x: &[f32],
        cfg: &TrainConfig,
        lr: f64,
        data_variance: f64,
    ) -> Result<(f64, f64), StepperError> {
        let rows = x.len() / self.d_in.max(1);
        if rows == 0 || rows * self.d_in != x.len() || x.len() > self.buffers.x.len() {
            return Err(StepperError::Device(format!(
                "GPU SAE step: {} values are not 1..={} rows of {}",
                x.len(),
                self.buffers.x.len() / self.d_in.max(1),
                self.d_in
            )));
        }
        self.try_step(x, cfg, lr, data_variance).map_err(device)
    }

    fn finish(self: Box<Self>, cfg: &TrainConfig) -> Result<(TopKSae, usize), StepperError> {
        let s = &self.stream;
        let sae = TopKSae {
            d_in: self.d_in,
            d_sae: self.d_sae,
            k: self.k,
            w_enc: s.clone_dtoh(&self.params.w_enc).map_err(device)?,
            b_enc: s.clone_dtoh(&self.params.b_enc).map_err(device)?,
            w_dec: s.clone_dtoh(&self.params.w_dec).map_err(device)?,
            b_dec: s.clone_dtoh(&self.params.b_dec).map_err(device)?,
        };
        let counters = s.clone_dtoh(&self.tokens_since_fired).map_err(device)?;
        let dead = counters.iter().filter(|&&t| t >= cfg.dead_after_tokens).count();
        Ok((sae, dead))
    }
}

/// A TopK SAE's encoder on the device: centring, the encoder GEMM (exact f32 or bf16 operands, f32
/// accumulation) and the top-k kernel, from a device input to device codes. Used by [`GpuSaeEncoder`]
/// and by the resident tracer (`cuda::trace`), which encodes the tail's captures where they are.
pub(super) struct DeviceSaeEncoder {
    pub(super) d_in: usize,
    pub(super) d_sae: usize,
    pub(super) k: usize,
    b_dec: CudaSlice<f32>,
    b_enc: CudaSlice<f32>,
    /// `W_enc` in f32 (exact mode) or its bf16 copy.
    w_enc: Option<CudaSlice<f32>>,
    w_enc16: Option<CudaSlice<bf16>>,
}

impl DeviceSaeEncoder {
    pub(super) fn upload(
        stream: &Arc<CudaStream>,
        kernels: &Kernels,
        sae: &TopKSae,
        precision: GpuPrecision,
    ) -> Result<Self, GpuError> {
        let w = stream.clone_htod(&sae.w_enc)?;
        let (w_enc, w_enc16) = match precision {
            GpuPrecision::F32 => (Some(w), None),
            GpuPrecision::Bf16 => {
                let mut w16 = stream.alloc_zeros::<bf16>(w.len())?;
                kernels.f32_to_bf16(stream, &w, &mut w16)?;
                (None, Some(w16))
            }
        };
        Ok(DeviceSaeEncoder {
            d_in: sae.d_in,
            d_sae: sae.d_sae,
            k: sae.k,
            b_dec: stream.clone_htod(&sae.b_dec)?,
            b_enc: stream.clone_htod(&sae.b_enc)?,
            w_enc,
            w_enc16,
        })
    }

    /// The k active latents (indices, values; `[rows, k]`) of each row of `x` (`[rows, d_in]`, on the
    /// device).
    pub(super) fn encode(
        &self,
        (stream, kernels, lt): (&Arc<CudaStream>, &Kernels, &CublasLt),
        x: &CudaSlice<f32>,
        rows: usize,
    ) -> Result<(CudaSlice<u32>, CudaSlice<f32>), GpuError> {
        let (d, f, s) = (self.d_in, self.d_sae, stream);
        let mut xc = s.alloc_zeros::<f32>(rows * d)?;
        kernels.sub_row_vector(s, x, &self.b_dec, &mut xc, rows)?;
        let mut pre = s.alloc_zeros::<f32>(rows * f)?;
        let gemm = LinearShape { m: rows, n: f, k: d };
        match (&self.w_enc, &self.w_enc16) {
            (Some(w), _) => lt.linear(&xc, w, Some(&self.b_enc), &mut pre, gemm, Epilogue::Bias)?,
            (None, Some(w16)) => {
                let mut xc16 = s.alloc_zeros::<bf16>(rows * d)?;
                kernels.f32_to_bf16(s, &xc, &mut xc16)?;
                lt.linear(&xc16, w16, Some(&self.b_enc), &mut pre, gemm, Epilogue::Bias)?;
            }
            (None, None) => unreachable!("one encoder copy is always uploaded"),
        }
        drop(xc);
        let mut idx = s.alloc_zeros::<u32>(rows * self.k)?;
        let mut val = s.alloc_zeros::<f32>(rows * self.k)?;
        kernels.sae_topk(s, &pre, None, &mut idx, &mut val, (rows, f), self.k)?;
        Ok((idx, val))
    }
}

/// `TopKSae::encode` on GPU 0, with the SAE's weights uploaded once ([`DeviceSaeEncoder`]). Codes equal
/// the CPU's up to GEMM rounding (top-k sets differ only where two pre-activations are within it of each
/// other).
pub struct GpuSaeEncoder {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    lt: CublasLt,
    sae: DeviceSaeEncoder,
}

impl GpuSaeEncoder {
    pub fn new(sae: &TopKSae, precision: GpuPrecision) -> Result<Self, GpuSaeError> {
        sae.validate()?;
        scinterp_kernels::cuda_available()?;
        let ctx = CudaContext::new(0)?;
        let stream = ctx.default_stream();
        let kernels = Kernels::load(&ctx)?;
        let lt = CublasLt::new(&stream)?;
        let sae = DeviceSaeEncoder::upload(&stream, &kernels, sae, precision)?;
        Ok(GpuSaeEncoder {
            ctx,
            stream,
            kernels,
            lt,
            sae,
        })
    }

    /// The k active latents of each row of `x` (`[rows, d_in]`).
    pub fn encode(&self, x: &[f32]) -> Result<SparseCodes, GpuSaeError> {
        let d = self.sae.d_in;
        if x.is_empty() || !x.len().is_multiple_of(d) {
            return Err(GpuSaeError::Rows { got: x.len(), d });
        }
        let rows = x.len() / d;
        let s = &self.stream;
        let run = || -> Result<SparseCodes, GpuError> {
            let dx = s.clone_htod(x)?;
            let (idx, val) = self.sae.encode((s, &self.kernels, &self.lt), &dx, rows)?;
            let codes = SparseCodes {
                k: self.sae.k,
                indices: s.clone_dtoh(&idx)?,
                values: s.clone_dtoh(&val)?,
            };
            drop((dx, idx, val));
            take_recorded_error(&self.ctx)?;
            Ok(codes)
        };
        Ok(run()?)
    }
}
