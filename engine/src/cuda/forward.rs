//! The forward pass on a CUDA GPU: the same blocks, hook points and [`RunOutput`] as the CPU
//! [`executor::run`](crate::executor::run), so extraction, tracing and steering can use either.
//!
//! Numerics ([`GpuPrecision`]):
//! - `Bf16`: weights converted to bf16 once at load; GEMM inputs and the attention operands in bf16,
//!   f32 accumulation; the residual stream, every hook tensor, biases of residual-bound GEMMs and the
//!   LayerNorm statistics stay f32.
//! - `F32`: every GEMM in exact f32 (`CUBLAS_COMPUTE_32F`, never TF32) and f32 attention: the parity
//!   mode, for checking the GPU path against the CPU at f32 precision.
//!
//! GEMMs go through cuBLASLt with cached plans when libcublasLt loads; otherwise through the in-house
//! WMMA kernel (bf16 only). BERT's embedding stage (Geneformer) runs on the GPU from the encoder's tables;
//! other embeddings (scGPT) and the optional output head run on the CPU through the [`Encoder`]. Hook
//! edits run on the GPU (all of a hook's edits in one launch); captured tensors are copied to the host.

use std::sync::{Arc, Mutex};

use half::bf16;
use scinterp_kernels::cudarc::driver::{
    result as driver_result, CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr, PinnedHostSlice,
};
use scinterp_kernels::gpu::attention::{VarlenBatch, ATTENTION_HEAD_DIM};
use scinterp_kernels::gpu::embed::DeviceBertTables;
use scinterp_kernels::gpu::gemm::{CublasLt, Epilogue, LinearShape};
use scinterp_kernels::gpu::{take_recorded_error, EditList, EditListError, GpuError, Kernels};

use crate::encoder::{Activation, Encoder, EncoderDims, LayerNormWeights, LinearWeights, PostLnBlock};
use crate::error::EngineError;
use crate::executor::{Forward, RunOutput, Start};
use crate::hooks::{Captures, Edit, HookPlan, HookPoint};
use crate::matrix::Matrix;
use crate::packed::PackedBatch;

use super::{driver_error, gpu_error, GpuPrecision};

/// A linear layer's weights on the device: `W[out, in]` in the GEMM input precision, the bias in f32
/// (and in bf16 for cuBLASLt GEMMs that write bf16, whose bias has the output type).
struct DeviceLinear {
    w_bf16: Option<CudaSlice<bf16>>,
    w_f32: Option<CudaSlice<f32>>,
    bias_f32: CudaSlice<f32>,
    bias_bf16: CudaSlice<bf16>,
    out_features: usize,
    in_features: usize,
}

struct DeviceLayerNorm {
    gamma: CudaSlice<f32>,
    beta: CudaSlice<f32>,
    eps: f32,
}

struct DeviceBlock {
    n_heads: usize,
    head_dim: usize,
    qkv: DeviceLinear,
    attn_out: DeviceLinear,
    ln_attn: DeviceLayerNorm,
    ffn_in: DeviceLinear,
    ffn_out: DeviceLinear,
    ln_out: DeviceLayerNorm,
}

/// Which GEMM implementation runs.
pub(super) enum Gemm {
    CublasLt(CublasLt),
    InHouse,
}

/// One encoder's blocks resident on a GPU, ready to run batches. Runs are serialised on one stream.
pub struct CudaForward {
    pub(super) state: Mutex<DeviceState>,
    pub(super) dims: EncoderDims,
    precision: GpuPrecision,
    /// Where the GEMMs run, for the user ("cuBLASLt" or "in-house WMMA").
    pub gemm_backend: &'static str,
}

/// BERT's embedding tables and LayerNorm, when the encoder has them (Geneformer).
struct DeviceEmbedding {
    tables: DeviceBertTables,
    ln: DeviceLayerNorm,
}

pub(super) struct DeviceState {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) kernels: Kernels,
    pub(super) gemm: Gemm,
    pub(super) precision: GpuPrecision,
    embedding: Option<DeviceEmbedding>,
    blocks: Vec<DeviceBlock>,
    /// Page-locked host buffers that captures are copied into, kept between runs (allocating
    /// page-locked memory costs far more than the copy).
    capture_buffers: Vec<PinnedHostSlice<f32>>,
}

/// Captures in flight during one run: each hook's tensor is copied asynchronously, on the run's stream,
/// into a page-locked buffer, so the host keeps launching instead of waiting for a synchronous pageable
/// copy at every hook; the copies are read back once, after the run's final synchronising read.
struct PendingCaptures {
    stream: Arc<CudaStream>,
    buffers: Vec<PinnedHostSlice<f32>>,
    /// (hook, shape, index into `buffers`), in capture order.
    pending: Vec<(HookPoint, (usize, usize), usize)>,
    /// Set for the resident tracer's tail: captures stay on the device (a device-to-device copy, since
    /// the captured tensor runs on into the next block) and nothing goes to the host.
    on_device: Option<Vec<(HookPoint, CudaSlice<f32>)>>,
}

impl Drop for PendingCaptures {
    /// A run that failed half-way may leave copies in flight: let them land before the buffers go.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let _ = self.stream.synchronize();
        }
    }
}

impl PendingCaptures {
    fn new(stream: &Arc<CudaStream>, buffers: Vec<PinnedHostSlice<f32>>) -> Self {
        PendingCaptures {
            stream: stream.clone(),
            buffers,
            pending: Vec::new(),
            on_device: None,
        }
    }

    /// Queues the copy of `x` (`shape`) for `hook` after the work already on `stream`.
    fn copy(
        &mut self,
        ctx: &Arc<CudaContext>,
        hook: HookPoint,
        x: &CudaSlice<f32>,
        shape: (usize, usize),
    ) -> Result<(), EngineError> {
        let n = shape.0 * shape.1;
        if x.len() < n {
            return Err(EngineError::Gpu(format!(
                "{hook}: {} values on the device, {n} expected",
                x.len()
            )));
        }
        if let Some(kept) = &mut self.on_device {
            kept.push((hook, self.stream.clone_dtod(x).map_err(driver_error)?));
            return Ok(());
        }
        let used = self.pending.len();
        let slot = match (used..self.buffers.len()).find(|&i| self.buffers[i].len() >= n) {
            Some(i) => i,
            None => {
                // Not write-combined (cudarc's default): the host reads these buffers back.
                // SAFETY: page-locked memory; only the first `n` values are read, after the copy wrote them.
                let buffer = unsafe { ctx.alloc_pinned_with_flags::<f32>(n, 0) }.map_err(driver_error)?;
                self.buffers.push(buffer);
                self.buffers.len() - 1
            }
        };
        self.buffers.swap(used, slot);
        let buffer = &mut self.buffers[used];
        // The buffer may be longer than this capture, and cudarc's memcpy_dtoh copies the whole
        // destination, so the copy of exactly `n` values is issued directly.
        let dst = &mut buffer.as_mut_slice().map_err(driver_error)?[..n];
        let (src, _record) = x.device_ptr(&self.stream);
        // SAFETY: `dst` is page-locked host memory of `n` values, not read or reused before `finish`
        // (or `drop`) synchronises the stream; `src` holds at least `n` values and is freed
        // stream-ordered, after this copy.
        unsafe { driver_result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(driver_error)?;
        self.pending.push((hook, shape, used));
        Ok(())
    }

    /// Waits for the copies and moves them into `captures`; returns the buffers for the next run.
    fn finish(mut self, captures: &mut Captures) -> Result<Vec<PinnedHostSlice<f32>>, EngineError> {
        self.stream.synchronize().map_err(driver_error)?;
        for (hook, (rows, d), slot) in std::mem::take(&mut self.pending) {
            let host = self.buffers[slot].as_slice().map_err(driver_error)?[..rows * d].to_vec();
            captures.insert(hook, Matrix::from_vec(rows, d, host));
        }
        Ok(std::mem::take(&mut self.buffers))
    }
}

impl CudaForward {
    /// Uploads every block of `encoder` to GPU `ordinal` in `precision`. Call only after
    /// [`scinterp_kernels::cuda_available`] returned `Ok`.
    pub fn new(encoder: &dyn Encoder, ordinal: usize, precision: GpuPrecision) -> Result<Self, EngineError> {
        // Before touching the driver: a model the attention kernel cannot run is refused on any host,
        // with the reason, instead of failing at its first launch.
        check_head_dims(encoder)?;
        let ctx = CudaContext::new(ordinal).map_err(driver_error)?;
        let stream = ctx.default_stream();
        let kernels = Kernels::load(&ctx).map_err(gpu_error)?;
        let (gemm, gemm_backend) = match CublasLt::new(&stream) {
            Ok(lt) => (Gemm::CublasLt(lt), "cuBLASLt"),
            Err(GpuError::NoCublasLt) if precision == GpuPrecision::Bf16 => (Gemm::InHouse, "in-house WMMA"),
            Err(e) => return Err(gpu_error(e)),
        };
        let dims = encoder.dims().clone();
        let mut blocks = Vec::with_capacity(dims.n_layers);
        for layer in 0..dims.n_layers {
            let b = encoder.block(layer);
            b.validate(dims.d_model)
                .map_err(|e| EngineError::Gpu(format!("block {layer}: {e}")))?;
            blocks.push(upload_block(&stream, &kernels, b, precision)?);
        }
        let embedding = match encoder.bert_embedding() {
            Some(e) => Some(DeviceEmbedding {
                tables: DeviceBertTables {
                    word: stream.clone_htod(e.word).map_err(driver_error)?,
                    position: stream.clone_htod(e.position).map_err(driver_error)?,
                    token_type: stream.clone_htod(e.token_type).map_err(driver_error)?,
                    d: dims.d_model,
                },
                ln: upload_layer_norm(&stream, e.ln)?,
            }),
            None => None,
        };
        stream.synchronize().map_err(driver_error)?;
        Ok(CudaForward {
            state: Mutex::new(DeviceState {
                ctx,
                stream,
                kernels,
                gemm,
                precision,
                embedding,
                blocks,
                capture_buffers: Vec::new(),
            }),
            dims,
            precision,
            gemm_backend,
        })
    }

    pub fn precision(&self) -> GpuPrecision {
        self.precision
    }
}

/// The attention kernels take head_dim 64 only ([`ATTENTION_HEAD_DIM`]); every block must have it.
pub fn check_head_dims(encoder: &dyn Encoder) -> Result<(), EngineError> {
    for layer in 0..encoder.dims().n_layers {
        let head_dim = encoder.block(layer).head_dim;
        if head_dim != ATTENTION_HEAD_DIM {
            return Err(EngineError::Gpu(format!(
                "block {layer} has head_dim {head_dim} (d_model {} over {} heads), but the GPU attention kernel \
                 takes head_dim {ATTENTION_HEAD_DIM} only: run this model with --device cpu",
                encoder.dims().d_model,
                encoder.block(layer).n_heads
            )));
        }
    }
    Ok(())
}

fn upload_block(
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    b: &PostLnBlock,
    precision: GpuPrecision,
) -> Result<DeviceBlock, EngineError> {
    match b.activation {
        Activation::Relu => {}
    }
    Ok(DeviceBlock {
        n_heads: b.n_heads,
        head_dim: b.head_dim,
        qkv: upload_linear(stream, kernels, &b.qkv, precision)?,
        attn_out: upload_linear(stream, kernels, &b.attn_out, precision)?,
        ln_attn: upload_layer_norm(stream, &b.ln_attn)?,
        ffn_in: upload_linear(stream, kernels, &b.ffn_in, precision)?,
        ffn_out: upload_linear(stream, kernels, &b.ffn_out, precision)?,
        ln_out: upload_layer_norm(stream, &b.ln_out)?,
    })
}

fn upload_linear(
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    l: &LinearWeights,
    precision: GpuPrecision,
) -> Result<DeviceLinear, EngineError> {
    let w = stream.clone_htod(l.weight()).map_err(driver_error)?;
    let bias: Vec<f32> = match l.bias() {
        Some(b) => b.to_vec(),
        None => vec![0.0; l.out_features()],
    };
    let bias_f32 = stream.clone_htod(&bias).map_err(driver_error)?;
    let mut bias_bf16 = stream.alloc_zeros::<bf16>(bias.len()).map_err(driver_error)?;
    kernels
        .f32_to_bf16(stream, &bias_f32, &mut bias_bf16)
        .map_err(gpu_error)?;
    let (w_bf16, w_f32) = match precision {
        GpuPrecision::Bf16 => {
            // Converted on the GPU, once; the f32 upload is freed when `w` drops.
            let mut w16 = stream.alloc_zeros::<bf16>(w.len()).map_err(driver_error)?;
            kernels.f32_to_bf16(stream, &w, &mut w16).map_err(gpu_error)?;
            (Some(w16), None)
        }
        GpuPrecision::F32 => (None, Some(w)),
    };
    Ok(DeviceLinear {
        w_bf16,
        w_f32,
        bias_f32,
        bias_bf16,
        out_features: l.out_features(),
        in_features: l.in_features(),
    })
}

fn upload_layer_norm(
    stream: &Arc<CudaStream>,
    ln: &LayerNormWeights,
) -> Result<DeviceLayerNorm, EngineError> {
    Ok(DeviceLayerNorm {
        gamma: stream.clone_htod(ln.gamma()).map_err(driver_error)?,
        beta: stream.clone_htod(ln.beta()).map_err(driver_error)?,
        eps: ln.eps() as f32,
    })
}

/// A GEMM input: the residual stream or an activation, in the GEMM input precision. In the f32 mode
/// the residual stream is read in place (`F32Ref`), not copied for every GEMM.
enum Act<'a> {
    Bf16(CudaSlice<bf16>),
    F32(CudaSlice<f32>),
    F32Ref(&'a CudaSlice<f32>),
}

impl Act<'_> {
    fn f32(&self) -> Option<&CudaSlice<f32>> {
        match self {
            Act::F32(x) => Some(x),
            Act::F32Ref(x) => Some(x),
            Act::Bf16(_) => None,
        }
    }
}

impl DeviceState {
    /// A device buffer of `n` values for a kernel or GEMM to write whole: left uninitialised, since a
    /// memset of every intermediate costs a pass over memory for nothing.
    pub(super) fn output<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>, EngineError> {
        // SAFETY: every caller hands the buffer, before any read, to a kernel or GEMM that writes all
        // `n` values (GEMMs with β = 0, attention, add + LayerNorm, conversion, the embedding gather);
        // the GPU tests compare every such output with the CPU.
        unsafe { self.stream.alloc::<T>(n) }.map_err(driver_error)
    }

    /// `y = epilogue(x · Wᵀ + b)` in f32: the GEMMs whose output joins the residual stream, and every
    /// GEMM of the f32 mode.
    fn linear_f32(
        &self,
        x: &Act,
        l: &DeviceLinear,
        rows: usize,
        epilogue: Epilogue,
    ) -> Result<CudaSlice<f32>, EngineError> {
        let shape = LinearShape {
            m: rows,
            n: l.out_features,
            k: l.in_features,
        };
        let mut y = self.output::<f32>(rows * l.out_features)?;
        let bias = Some(&l.bias_f32);
        match (x, x.f32(), &self.gemm, &l.w_bf16, &l.w_f32) {
            (Act::Bf16(x), _, Gemm::CublasLt(lt), Some(w), _) => {
                lt.linear(x, w, bias, &mut y, shape, epilogue)
            }
            (Act::Bf16(x), _, Gemm::InHouse, Some(w), _) => {
                self.kernels
                    .linear_bf16(&self.stream, x, w, bias, &mut y, shape, epilogue)
            }
            (_, Some(x), Gemm::CublasLt(lt), _, Some(w)) => lt.linear(x, w, bias, &mut y, shape, epilogue),
            _ => return Err(EngineError::Gpu("GEMM input and weight precisions differ".into())),
        }
        .map_err(gpu_error)?;
        Ok(y)
    }

    /// `y = epilogue(x · Wᵀ + b)` in the GEMM input precision: outputs that feed another GEMM or the
    /// attention kernel.
    fn linear_act(
        &self,
        x: &Act,
        l: &DeviceLinear,
        rows: usize,
        epilogue: Epilogue,
    ) -> Result<Act<'static>, EngineError> {
        let Act::Bf16(x16) = x else {
            return Ok(Act::F32(self.linear_f32(x, l, rows, epilogue)?));
        };
        let shape = LinearShape {
            m: rows,
            n: l.out_features,
            k: l.in_features,
        };
        let w = l
            .w_bf16
            .as_ref()
            .ok_or_else(|| EngineError::Gpu("GEMM input and weight precisions differ".into()))?;
        let mut y = self.output::<bf16>(rows * l.out_features)?;
        match &self.gemm {
            Gemm::CublasLt(lt) => lt.linear(x16, w, Some(&l.bias_bf16), &mut y, shape, epilogue),
            Gemm::InHouse => {
                self.kernels
                    .linear_bf16(&self.stream, x16, w, Some(&l.bias_f32), &mut y, shape, epilogue)
            }
        }
        .map_err(gpu_error)?;
        Ok(Act::Bf16(y))
    }

    /// The residual stream as a GEMM input.
    fn gemm_input<'a>(&self, x: &'a CudaSlice<f32>) -> Result<Act<'a>, EngineError> {
        match self.precision {
            GpuPrecision::F32 => Ok(Act::F32Ref(x)),
            GpuPrecision::Bf16 => {
                let mut y = self.output::<bf16>(x.len())?;
                self.kernels
                    .f32_to_bf16(&self.stream, x, &mut y)
                    .map_err(gpu_error)?;
                Ok(Act::Bf16(y))
            }
        }
    }

    fn attention(
        &self,
        qkv: &Act,
        cells: &VarlenBatch,
        block: &DeviceBlock,
        rows: usize,
    ) -> Result<Act<'static>, EngineError> {
        let hidden = block.n_heads * block.head_dim;
        let heads = (block.n_heads, block.head_dim);
        let scale = 1.0 / (block.head_dim as f32).sqrt();
        match (qkv, qkv.f32()) {
            (Act::Bf16(qkv), _) => {
                let mut ctx = self.output::<bf16>(rows * hidden)?;
                self.kernels
                    .attention_varlen_bf16(&self.stream, qkv, cells, None, &mut ctx, heads, scale)
                    .map_err(gpu_error)?;
                Ok(Act::Bf16(ctx))
            }
            (_, Some(qkv)) => {
                let mut ctx = self.output::<f32>(rows * hidden)?;
                self.kernels
                    .attention_varlen_f32(&self.stream, qkv, cells, None, &mut ctx, heads, scale)
                    .map_err(gpu_error)?;
                Ok(Act::F32(ctx))
            }
            (_, None) => unreachable!("an f32 activation always has its f32 view"),
        }
    }

    fn add_layer_norm(
        &self,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        ln: &DeviceLayerNorm,
        rows: usize,
        d: usize,
    ) -> Result<CudaSlice<f32>, EngineError> {
        let mut out = self.output::<f32>(rows * d)?;
        self.kernels
            .add_layer_norm(
                &self.stream,
                a,
                b,
                &ln.gamma,
                &ln.beta,
                &mut out,
                (rows, d),
                ln.eps,
            )
            .map_err(gpu_error)?;
        Ok(out)
    }

    /// Visits `hook`: its edits run on the GPU in one launch (`hook_edits.cu`), then a captured tensor
    /// is queued for copying to the host.
    fn visit(
        &self,
        plan: &HookPlan,
        hook: HookPoint,
        x: &mut CudaSlice<f32>,
        shape: (usize, usize),
        captures: &mut PendingCaptures,
    ) -> Result<(), EngineError> {
        if let Some(edits) = plan.edits_at(hook) {
            let list = edit_list(edits, shape).map_err(|e| EngineError::InvalidEdit {
                hook: hook.to_string(),
                reason: e.to_string(),
            })?;
            let device = list.upload(&self.stream).map_err(gpu_error)?;
            self.kernels
                .hook_edits(&self.stream, x, shape, &device)
                .map_err(gpu_error)?;
        }
        if plan.captures_hook(hook) {
            captures.copy(&self.ctx, hook, x, shape)?;
        }
        Ok(())
    }

    fn run_block(
        &self,
        block: &DeviceBlock,
        layer: usize,
        x: CudaSlice<f32>,
        cells: &VarlenBatch,
        plan: &HookPlan,
        captures: &mut PendingCaptures,
    ) -> Result<CudaSlice<f32>, EngineError> {
        let rows = cells.tokens();
        let d = block.n_heads * block.head_dim;
        let xin = self.gemm_input(&x)?;
        let qkv = self.linear_act(&xin, &block.qkv, rows, Epilogue::Bias)?;
        drop(xin);
        let attn_ctx = self.attention(&qkv, cells, block, rows)?;
        drop(qkv);
        let mut attn = self.linear_f32(&attn_ctx, &block.attn_out, rows, Epilogue::Bias)?;
        drop(attn_ctx);
        self.visit(plan, HookPoint::AttnOut(layer), &mut attn, (rows, d), captures)?;

        let mut mid = self.add_layer_norm(&x, &attn, &block.ln_attn, rows, d)?;
        drop((x, attn));
        self.visit(plan, HookPoint::ResidMid(layer), &mut mid, (rows, d), captures)?;

        let mid_in = self.gemm_input(&mid)?;
        let hidden = self.linear_act(&mid_in, &block.ffn_in, rows, Epilogue::BiasRelu)?;
        drop(mid_in);
        let mut mlp = self.linear_f32(&hidden, &block.ffn_out, rows, Epilogue::Bias)?;
        drop(hidden);
        self.visit(plan, HookPoint::MlpOut(layer), &mut mlp, (rows, d), captures)?;

        let mut out = self.add_layer_norm(&mid, &mlp, &block.ln_out, rows, d)?;
        self.visit(plan, HookPoint::ResidPost(layer), &mut out, (rows, d), captures)?;
        Ok(out)
    }
}

impl DeviceState {
    /// The resident tracer's tail: blocks `layers` on `x` (`[batch tokens, d]`, on the device; the
    /// blocks after the deepest captured hook need not run), returning the captures of `plan` on the
    /// device; nothing is copied to the host.
    pub(super) fn tail_on_device(
        &self,
        layers: std::ops::Range<usize>,
        mut x: CudaSlice<f32>,
        batch: &PackedBatch,
        plan: &HookPlan,
    ) -> Result<Vec<(HookPoint, CudaSlice<f32>)>, EngineError> {
        let cells = self
            .kernels
            .attention_batch(&self.stream, batch.offsets())
            .map_err(gpu_error)?;
        let mut pending = PendingCaptures::new(&self.stream, Vec::new());
        pending.on_device = Some(Vec::new());
        for layer in layers.start..layers.end.min(self.blocks.len()) {
            x = self.run_block(&self.blocks[layer], layer, x, &cells, plan, &mut pending)?;
        }
        Ok(pending.on_device.take().unwrap_or_default())
    }
}

/// The engine's edits of one hook as the kernel's edit list (same order, same arithmetic).
fn edit_list(edits: &[Edit], (tokens, d): (usize, usize)) -> Result<EditList, EditListError> {
    let mut list = EditList::new(tokens, d)?;
    for edit in edits {
        match edit {
            Edit::AddDirection {
                rows,
                direction,
                scales,
            } => list.add_direction(rows, direction, scales),
            Edit::Zero { rows } => list.zero(rows),
            Edit::Replace { rows, values } => list.replace(rows, values),
            Edit::MeanAblate { rows, mean } => list.mean_ablate(rows, mean),
        }?;
    }
    Ok(list)
}

impl DeviceState {
    /// BERT's embedding stage on the device: the gather, then LayerNorm (as `add_layer_norm` with a zero
    /// second operand, which adds exactly nothing). The batch is checked as the CPU's `embed` does.
    fn embed(
        &self,
        embedding: &DeviceEmbedding,
        batch: &PackedBatch,
        dims: &EncoderDims,
    ) -> Result<CudaSlice<f32>, EngineError> {
        if let Some(max_len) = dims.max_len {
            if let Some(c) = (0..batch.n_cells()).find(|&c| batch.cell_len(c) > max_len) {
                return Err(EngineError::InvalidBatch(format!(
                    "cell {c} has {} tokens but the model accepts at most {max_len} \
                     (max_position_embeddings); tokenize with --max-len {max_len}",
                    batch.cell_len(c)
                )));
            }
        }
        if let Some((i, &t)) = batch
            .tokens()
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= dims.vocab_size)
        {
            return Err(EngineError::InvalidBatch(format!(
                "token id {t} at packed row {i} is outside the vocabulary (size {}); were the cells \
                 tokenized with this model's dictionary?",
                dims.vocab_size
            )));
        }
        let (rows, d) = (batch.n_tokens(), dims.d_model);
        let positions: Vec<u32> = batch.positions().iter().map(|&p| p as u32).collect();
        let s = &self.stream;
        let tokens_dev = s.clone_htod(batch.tokens()).map_err(driver_error)?;
        let positions_dev = s.clone_htod(&positions).map_err(driver_error)?;
        let mut sum = self.output::<f32>(rows * d)?;
        self.kernels
            .embed_bert_gather(
                s,
                (&tokens_dev, batch.tokens()),
                (&positions_dev, &positions),
                &embedding.tables,
                &mut sum,
            )
            .map_err(gpu_error)?;
        let zero = s.alloc_zeros::<f32>(rows * d).map_err(driver_error)?;
        self.add_layer_norm(&sum, &zero, &embedding.ln, rows, d)
    }
}

impl Forward for CudaForward {
    fn run(
        &self,
        encoder: &dyn Encoder,
        batch: &PackedBatch,
        plan: &HookPlan,
        start: Start,
        with_head: bool,
    ) -> Result<RunOutput, EngineError> {
        if encoder.dims() != &self.dims {
            return Err(EngineError::Gpu(format!(
                "the GPU holds a model of {:?}, but the run is for {:?}",
                self.dims,
                encoder.dims()
            )));
        }
        let dims = &self.dims;
        let tokens = batch.n_tokens();
        plan.validate(dims, tokens)?;
        let mut guard = self
            .state
            .lock()
            .map_err(|_| EngineError::Gpu("an earlier GPU run panicked".into()))?;
        let mut captures = Captures::default();
        let buffers = std::mem::take(&mut guard.capture_buffers);
        let mut pending = PendingCaptures::new(&guard.stream, buffers);
        let state = &*guard;
        let (first_layer, mut x) = match start {
            Start::Embed => match &state.embedding {
                Some(embedding) => {
                    let mut x = state.embed(embedding, batch, dims)?;
                    state.visit(
                        plan,
                        HookPoint::Embed,
                        &mut x,
                        (tokens, dims.d_model),
                        &mut pending,
                    )?;
                    (0, x)
                }
                None => {
                    let mut x = encoder.embed(batch)?;
                    plan.visit(HookPoint::Embed, &mut x, &mut captures);
                    (0, state.stream.clone_htod(x.as_slice()).map_err(driver_error)?)
                }
            },
            Start::BlockInput { layer, state: input } => {
                crate::executor::check_block_input(dims, tokens, layer, &input)?;
                (
                    layer,
                    state.stream.clone_htod(input.as_slice()).map_err(driver_error)?,
                )
            }
        };
        // The cells' query tiles, uploaded once and shared by every layer's attention.
        let cells = state
            .kernels
            .attention_batch(&state.stream, batch.offsets())
            .map_err(gpu_error)?;
        for layer in first_layer..dims.n_layers {
            x = state.run_block(&state.blocks[layer], layer, x, &cells, plan, &mut pending)?;
        }
        let final_state = Matrix::from_vec(
            tokens,
            dims.d_model,
            state.stream.clone_dtoh(&x).map_err(driver_error)?,
        );
        drop(x);
        guard.capture_buffers = pending.finish(&mut captures)?;
        take_recorded_error(&guard.ctx).map_err(gpu_error)?;
        let head = if with_head {
            encoder.head(&final_state, batch)
        } else {
            None
        };
        Ok(RunOutput {
            captures,
            final_state,
            head,
        })
    }

    fn name(&self) -> String {
        format!("cuda ({:?}, GEMMs: {})", self.precision, self.gemm_backend)
    }

    fn as_cuda(&self) -> Option<&CudaForward> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_model::tiny_encoder;

    #[test]
    fn a_model_with_another_head_dim_is_refused_before_any_gpu_work() {
        // d 64 over 4 heads: head_dim 16, which the attention kernel does not take. The refusal must
        // come on a host with no driver too, so it cannot depend on a GPU.
        let encoder = tiny_encoder(2, 64, 4, 128, 50, 7);
        let err = CudaForward::new(&encoder, 0, GpuPrecision::Bf16)
            .err()
            .expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("head_dim 16") && msg.contains("--device cpu"),
            "{msg}"
        );
        assert!(check_head_dims(&tiny_encoder(1, 128, 2, 64, 50, 7)).is_ok());
    }
}
