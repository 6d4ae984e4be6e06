//! Launch wrappers of the TopK SAE kernels, `sae_topk.cu` and `sae_sparse.cu`.
//!
//! CPU references (`scinterp_engine::sae`): [`Kernels::sae_topk`] ↔ `top_k_rows`; [`Kernels::sae_decode`]
//! ↔ `TopKSae::decode`; the residual, gradient, renormalisation and counter kernels ↔ the matching steps
//! of `train::TrainState::step` (see each method); the weight gradients ([`Kernels::sae_weight_grads`])
//! ↔ its per-latent pass, as a dense scatter, two or three cuBLASLt GEMMs and a column sum. Layouts are
//! the engine's: `W_enc` and `W_dec` are `[d_sae, d_in]` row-major (one row per latent), codes are `k`
//! (index, value) pairs per row. An index
//! `>= d_sae` (the top-k writes `u32::MAX` when fewer latents are eligible than asked for) marks an empty
//! slot and is skipped by every kernel.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::gemm::{CublasLt, GemmScalar, LinearShape};
use super::{check_len, ArgError, GpuError, Kernels};

/// Largest k the top-k kernel selects (its sort buffer, 8 B × next_pow2(k), is dynamic shared memory
/// and must stay within the default 48 KiB).
pub const SAE_TOPK_MAX_K: usize = 4096;

/// Index written to the top-k slots left empty (fewer eligible latents than k).
pub const SAE_NO_INDEX: u32 = u32::MAX;

/// Sparse codes on the device: `indices[r·k + j]`, `values[r·k + j]` (as `scinterp_engine::sae::SparseCodes`).
#[derive(Clone, Copy)]
pub struct GpuCodes<'a> {
    pub indices: &'a CudaSlice<u32>,
    pub values: &'a CudaSlice<f32>,
    pub k: usize,
}

/// Batch and SAE widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaeShape {
    pub rows: usize,
    pub d_in: usize,
    pub d_sae: usize,
}

/// Where a gradient-at-pre-activation buffer `[rows, stride]` holds a code set's slots: columns
/// `offset..offset + k` (the CPU trainer keeps the main slots at 0 and the AuxK slots at k).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotColumns {
    pub stride: usize,
    pub offset: usize,
}

/// Threads per block of the dense scatter (one block per row).
const DENSE_SCATTER_THREADS: u32 = 256;

/// Row lanes (`blockDim.y`) of the column-sum kernel.
const COL_SUM_ROWS: u32 = 16;

/// Element types of the dense gradient matrices (the GEMM operand type): f32 or bf16.
pub trait DenseScalar: GemmScalar {
    /// `sae_dense_scatter_*` entry point.
    const SCATTER: &'static str;
    /// `sae_col_sum_*` entry point.
    const COL_SUM: &'static str;
}

impl DenseScalar for f32 {
    const SCATTER: &'static str = "sae_dense_scatter_f32";
    const COL_SUM: &'static str = "sae_col_sum_f32";
}

impl DenseScalar for half::bf16 {
    const SCATTER: &'static str = "sae_dense_scatter_bf16";
    const COL_SUM: &'static str = "sae_col_sum_bf16";
}

/// One code set for [`Kernels::sae_dense_scatter`]: slot `j` of row `r` puts `coef · weights[r·stride +
/// offset + j]` at column `indices[r·k + j]`.
#[derive(Clone, Copy)]
pub struct DenseCodes<'a> {
    pub indices: &'a CudaSlice<u32>,
    pub k: usize,
    pub weights: &'a CudaSlice<f32>,
    pub cols: SlotColumns,
    pub coef: f32,
}

/// One code set's part of the weight gradients ([`Kernels::sae_weight_grads`]): its codes, where its
/// ∂L/∂pre slots are in `grad_pre`, its decoder coefficient (−2/(B·d) for the main codes, the AuxK
/// coefficient for AuxK) and the residual its decoder gradient multiplies (`e`, or the AuxK residual),
/// in the GEMM operand type.
#[derive(Clone, Copy)]
pub struct GradSet<'a, T> {
    pub codes: GpuCodes<'a>,
    pub cols: SlotColumns,
    pub coef: f32,
    pub target: &'a CudaSlice<T>,
}

fn to_i32(what: &'static str, v: usize) -> Result<i32, ArgError> {
    i32::try_from(v).map_err(|_| ArgError::ExceedsI32 { what, value: v })
}

fn grid(rows: usize) -> Result<u32, ArgError> {
    u32::try_from(rows).map_err(|_| ArgError::ExceedsGrid(rows))
}

/// Threads over a row of `d` columns: 32–256, whole warps.
fn row_threads(d: usize) -> u32 {
    (d.div_ceil(32).clamp(1, 8) * 32) as u32
}

struct Checked {
    rows: i32,
    d: i32,
    d_sae: i32,
    k: i32,
}

/// Common checks of a (shape, k) pair; `None` when there is nothing to do.
fn check_shape(shape: SaeShape, k: usize) -> Result<Option<Checked>, ArgError> {
    if shape.rows == 0 || k == 0 || shape.d_in == 0 {
        return Ok(None);
    }
    if shape.d_sae == 0 {
        return Err(ArgError::NoLatents);
    }
    shape
        .rows
        .checked_mul(shape.d_in.max(k).max(shape.d_sae))
        .and_then(|n| n.checked_mul(8))
        .ok_or(ArgError::Overflow("rows × width"))?;
    shape
        .d_sae
        .checked_mul(shape.d_in)
        .ok_or(ArgError::Overflow("d_sae × d_in"))?;
    Ok(Some(Checked {
        rows: to_i32("rows", shape.rows)?,
        d: to_i32("d_in", shape.d_in)?,
        d_sae: to_i32("d_sae", shape.d_sae)?,
        k: to_i32("k", k)?,
    }))
}

fn check_codes(codes: &GpuCodes<'_>, rows: usize, what: &str) -> Result<(), ArgError> {
    let n = rows * codes.k;
    super::check_len(&format!("{what} indices"), codes.indices.len(), n)?;
    super::check_len(&format!("{what} values"), codes.values.len(), n)
}

/// Dynamic shared memory of the kernels that stage a row's codes: `words` 4-byte arrays of k.
fn codes_smem(k: usize, words: usize) -> Result<u32, ArgError> {
    let bytes = k * 4 * words;
    if bytes > 48 * 1024 {
        return Err(ArgError::SharedMemory { k, bytes });
    }
    Ok(bytes as u32)
}

impl Kernels {
    /// Per row of `pre` (`[rows, d_sae]`, the encoder GEMM output with `b_enc` added), the `k` largest
    /// pre-activations: `indices`/`values` `[rows, k]`, sorted descending, ties to the lower index, ReLU
    /// applied — exactly `scinterp_engine::sae::top_k_rows` (NaN handling included). With `dead` (one
    /// byte per latent, non-zero = eligible) only those latents are candidates (AuxK; equal to the CPU's
    /// top-k over the dead latents compacted in order); slots beyond the eligible count get
    /// [`SAE_NO_INDEX`] and 0. `k` ≤ [`SAE_TOPK_MAX_K`] and ≤ `d_sae`.
    #[allow(clippy::too_many_arguments)]
    pub fn sae_topk(
        &self,
        stream: &Arc<CudaStream>,
        pre: &CudaSlice<f32>,
        dead: Option<&CudaSlice<u8>>,
        indices: &mut CudaSlice<u32>,
        values: &mut CudaSlice<f32>,
        (rows, d_sae): (usize, usize),
        k: usize,
    ) -> Result<(), GpuError> {
        let entry = if dead.is_some() {
            "sae_topk_masked_f32"
        } else {
            "sae_topk_f32"
        };
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        if rows == 0 || k == 0 {
            return Ok(());
        }
        if d_sae == 0 || k > d_sae {
            return Err(bad(format!("k = {k} must be in 1..=d_sae ({d_sae})")));
        }
        if k > SAE_TOPK_MAX_K {
            return Err(bad(format!("k = {k} exceeds {SAE_TOPK_MAX_K}")));
        }
        let n = rows
            .checked_mul(d_sae)
            .ok_or_else(|| bad("rows × d_sae overflows".into()))?;
        super::check_len("pre", pre.len(), n).map_err(|e| bad(e.to_string()))?;
        super::check_len("indices", indices.len(), rows * k).map_err(|e| bad(e.to_string()))?;
        super::check_len("values", values.len(), rows * k).map_err(|e| bad(e.to_string()))?;
        if let Some(m) = dead {
            super::check_len("dead mask", m.len(), d_sae).map_err(|e| bad(e.to_string()))?;
        }
        let rows_i = to_i32("rows", rows).map_err(|e| bad(e.to_string()))?;
        let n_i = to_i32("d_sae", d_sae).map_err(|e| bad(e.to_string()))?;
        let k_i = to_i32("k", k).map_err(|e| bad(e.to_string()))?;
        let sort_len = k.next_power_of_two();
        let sort_len_i = sort_len as i32;
        // 256 threads up to 8k latents, 512 for wider rows (fewer elements per thread per pass; 512
        // threads leave the compiler up to 128 registers per thread).
        let threads: u32 = if d_sae <= 8192 { 256 } else { 512 };
        let cfg = LaunchConfig {
            grid_dim: (grid(rows).map_err(|e| bad(e.to_string()))?, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: (sort_len * 8) as u32,
        };
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch.arg(pre);
        if let Some(m) = dead {
            launch.arg(m);
        }
        launch
            .arg(indices)
            .arg(values)
            .arg(&rows_i)
            .arg(&n_i)
            .arg(&k_i)
            .arg(&sort_len_i);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[r] = b_dec + Σ_j values[r, j] · W_dec[indices[r, j]]` (`[rows, d_in]` f32), as
    /// `TopKSae::decode`.
    pub fn sae_decode(
        &self,
        stream: &Arc<CudaStream>,
        codes: GpuCodes<'_>,
        w_dec: &CudaSlice<f32>,
        b_dec: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        shape: SaeShape,
    ) -> Result<(), GpuError> {
        self.decode_any(stream, "sae_decode_f32", codes, w_dec, b_dec, out, shape)
    }

    /// As [`Kernels::sae_decode`] with `W_dec` in bf16 (raw bits, `half::bf16::to_bits`); f32
    /// accumulation and output.
    pub fn sae_decode_bf16(
        &self,
        stream: &Arc<CudaStream>,
        codes: GpuCodes<'_>,
        w_dec_bf16: &CudaSlice<half::bf16>,
        b_dec: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        shape: SaeShape,
    ) -> Result<(), GpuError> {
        self.decode_any(stream, "sae_decode_bf16", codes, w_dec_bf16, b_dec, out, shape)
    }

    #[allow(clippy::too_many_arguments)]
    fn decode_any<W: cudarc::driver::DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        entry: &'static str,
        codes: GpuCodes<'_>,
        w_dec: &CudaSlice<W>,
        b_dec: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        shape: SaeShape,
    ) -> Result<(), GpuError> {
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        let Some(c) = check_shape(shape, codes.k).map_err(|e| bad(e.to_string()))? else {
            return Ok(());
        };
        check_codes(&codes, shape.rows, "codes").map_err(|e| bad(e.to_string()))?;
        super::check_len("W_dec", w_dec.len(), shape.d_sae * shape.d_in).map_err(|e| bad(e.to_string()))?;
        super::check_len("b_dec", b_dec.len(), shape.d_in).map_err(|e| bad(e.to_string()))?;
        super::check_len("out", out.len(), shape.rows * shape.d_in).map_err(|e| bad(e.to_string()))?;
        let cfg = LaunchConfig {
            grid_dim: (grid(shape.rows).map_err(|e| bad(e.to_string()))?, 1, 1),
            block_dim: (row_threads(shape.d_in), 1, 1),
            shared_mem_bytes: codes_smem(codes.k, 2).map_err(|e| bad(e.to_string()))?,
        };
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch
            .arg(codes.indices)
            .arg(codes.values)
            .arg(w_dec)
            .arg(b_dec)
            .arg(out)
            .arg(&c.rows)
            .arg(&c.k)
            .arg(&c.d)
            .arg(&c.d_sae);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// The training residual `e[r] = x[r] − b_dec − Σ_j v_j · W_dec[f_j]` (`e = x − x̂`, the CPU
    /// trainer's `residual` in `TrainState::step`).
    #[allow(clippy::too_many_arguments)]
    pub fn sae_residual(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        b_dec: &CudaSlice<f32>,
        codes: GpuCodes<'_>,
        w_dec: &CudaSlice<f32>,
        e: &mut CudaSlice<f32>,
        shape: SaeShape,
    ) -> Result<(), GpuError> {
        let entry = "sae_residual_f32";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        let Some(c) = check_shape(shape, codes.k).map_err(|e| bad(e.to_string()))? else {
            return Ok(());
        };
        check_codes(&codes, shape.rows, "codes").map_err(|e| bad(e.to_string()))?;
        super::check_len("x", x.len(), shape.rows * shape.d_in).map_err(|e| bad(e.to_string()))?;
        super::check_len("b_dec", b_dec.len(), shape.d_in).map_err(|e| bad(e.to_string()))?;
        super::check_len("W_dec", w_dec.len(), shape.d_sae * shape.d_in).map_err(|e| bad(e.to_string()))?;
        super::check_len("e", e.len(), shape.rows * shape.d_in).map_err(|e| bad(e.to_string()))?;
        let cfg = LaunchConfig {
            grid_dim: (grid(shape.rows).map_err(|e| bad(e.to_string()))?, 1, 1),
            block_dim: (row_threads(shape.d_in), 1, 1),
            shared_mem_bytes: codes_smem(codes.k, 2).map_err(|e| bad(e.to_string()))?,
        };
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch
            .arg(x)
            .arg(b_dec)
            .arg(codes.indices)
            .arg(codes.values)
            .arg(w_dec)
            .arg(e)
            .arg(&c.rows)
            .arg(&c.k)
            .arg(&c.d)
            .arg(&c.d_sae);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// The AuxK residual `a[r] = e[r] − Σ_j v_j · W_dec[f_j]` over the AuxK codes (the CPU trainer's
    /// `aux_residual`).
    pub fn sae_aux_residual(
        &self,
        stream: &Arc<CudaStream>,
        e: &CudaSlice<f32>,
        aux: GpuCodes<'_>,
        w_dec: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        shape: SaeShape,
    ) -> Result<(), GpuError> {
        let entry = "sae_aux_residual_f32";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        let Some(c) = check_shape(shape, aux.k).map_err(|e| bad(e.to_string()))? else {
            return Ok(());
        };
        check_codes(&aux, shape.rows, "AuxK codes").map_err(|e| bad(e.to_string()))?;
        super::check_len("e", e.len(), shape.rows * shape.d_in).map_err(|e| bad(e.to_string()))?;
        super::check_len("W_dec", w_dec.len(), shape.d_sae * shape.d_in).map_err(|e| bad(e.to_string()))?;
        super::check_len("out", out.len(), shape.rows * shape.d_in).map_err(|e| bad(e.to_string()))?;
        let cfg = LaunchConfig {
            grid_dim: (grid(shape.rows).map_err(|e| bad(e.to_string()))?, 1, 1),
            block_dim: (row_threads(shape.d_in), 1, 1),
            shared_mem_bytes: codes_smem(aux.k, 2).map_err(|e| bad(e.to_string()))?,
        };
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch
            .arg(e)
            .arg(aux.indices)
            .arg(aux.values)
            .arg(w_dec)
            .arg(out)
            .arg(&c.rows)
            .arg(&c.k)
            .arg(&c.d)
            .arg(&c.d_sae);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Gradient at the active pre-activations: `grad_pre[r, offset + j] = v_j > 0 ? coef · (t[r] ·
    /// W_dec[f_j]) : 0`, with `t` the residual (coef `−2/(B·d)`) or the AuxK residual (coef
    /// `−2·aux_coef/(B·d)`): the CPU trainer's `gp_row`. With `coef = 1` it is the plain ReLU-gated dot
    /// `e·W_dec[f_j]`. Columns outside `offset..offset + k` are not written.
    #[allow(clippy::too_many_arguments)]
    pub fn sae_grad_pre(
        &self,
        stream: &Arc<CudaStream>,
        t: &CudaSlice<f32>,
        codes: GpuCodes<'_>,
        w_dec: &CudaSlice<f32>,
        coef: f32,
        grad_pre: &mut CudaSlice<f32>,
        cols: SlotColumns,
        shape: SaeShape,
    ) -> Result<(), GpuError> {
        let entry = "sae_grad_pre_f32";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        let Some(c) = check_shape(shape, codes.k).map_err(|e| bad(e.to_string()))? else {
            return Ok(());
        };
        check_codes(&codes, shape.rows, "codes").map_err(|e| bad(e.to_string()))?;
        check_columns(cols, codes.k, shape.rows, grad_pre.len()).map_err(|e| bad(e.to_string()))?;
        super::check_len("t", t.len(), shape.rows * shape.d_in).map_err(|e| bad(e.to_string()))?;
        super::check_len("W_dec", w_dec.len(), shape.d_sae * shape.d_in).map_err(|e| bad(e.to_string()))?;
        let stride = to_i32("stride", cols.stride).map_err(|e| bad(e.to_string()))?;
        let offset = to_i32("offset", cols.offset).map_err(|e| bad(e.to_string()))?;
        // One warp per slot, up to 8 warps.
        let threads = (codes.k.clamp(1, 8) * 32) as u32;
        let cfg = LaunchConfig {
            grid_dim: (grid(shape.rows).map_err(|e| bad(e.to_string()))?, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch
            .arg(t)
            .arg(codes.indices)
            .arg(codes.values)
            .arg(w_dec)
            .arg(&coef)
            .arg(grad_pre)
            .arg(&c.rows)
            .arg(&c.k)
            .arg(&c.d)
            .arg(&c.d_sae)
            .arg(&stride)
            .arg(&offset);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Scatters up to two code sets into the dense row-major `[rows, d_sae]` matrix `out` (every
    /// element of the first `rows` rows written): zero, then `coef·weight` of each slot of `a` at its
    /// latent's column, then `b`'s added (the main and AuxK ∂L/∂pre of one latent in one row sum). An
    /// index `>= d_sae` is skipped; a row's indices within one set must be distinct (top-k output).
    /// `T` is f32 or bf16 (rounded once per element). Deterministic, no atomics.
    pub fn sae_dense_scatter<T: DenseScalar>(
        &self,
        stream: &Arc<CudaStream>,
        a: DenseCodes<'_>,
        b: Option<DenseCodes<'_>>,
        out: &mut CudaSlice<T>,
        (rows, d_sae): (usize, usize),
    ) -> Result<(), GpuError> {
        let entry = T::SCATTER;
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        if rows == 0 || d_sae == 0 {
            return Ok(());
        }
        let n = rows
            .checked_mul(d_sae)
            .ok_or_else(|| bad("rows × d_sae overflows".into()))?;
        super::check_len("out", out.len(), n).map_err(|e| bad(e.to_string()))?;
        let rows_i = to_i32("rows", rows).map_err(|e| bad(e.to_string()))?;
        let d_sae_i = to_i32("d_sae", d_sae).map_err(|e| bad(e.to_string()))?;
        let set = |c: &DenseCodes<'_>, what: &str| -> Result<[i32; 3], GpuError> {
            check_len(&format!("{what} indices"), c.indices.len(), rows * c.k)
                .map_err(|e| bad(e.to_string()))?;
            check_columns(c.cols, c.k, rows, c.weights.len()).map_err(|e| bad(format!("{what}: {e}")))?;
            Ok([
                to_i32("k", c.k).map_err(|e| bad(e.to_string()))?,
                to_i32("stride", c.cols.stride).map_err(|e| bad(e.to_string()))?,
                to_i32("offset", c.cols.offset).map_err(|e| bad(e.to_string()))?,
            ])
        };
        let [k_a, stride_a, offset_a] = set(&a, "set a")?;
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch
            .arg(a.indices)
            .arg(a.weights)
            .arg(&k_a)
            .arg(&stride_a)
            .arg(&offset_a)
            .arg(&a.coef);
        // No second set: k_b = 0 and the first set's buffers as (unread) pointers.
        let b_args = match &b {
            Some(b) => set(b, "set b")?,
            None => [0, 1, 0],
        };
        let (b_idx, b_w, b_coef) = match &b {
            Some(b) => (b.indices, b.weights, b.coef),
            None => (a.indices, a.weights, 0.0f32),
        };
        launch
            .arg(b_idx)
            .arg(b_w)
            .arg(&b_args[0])
            .arg(&b_args[1])
            .arg(&b_args[2])
            .arg(&b_coef)
            .arg(out)
            .arg(&rows_i)
            .arg(&d_sae_i);
        let cfg = LaunchConfig {
            grid_dim: (grid(rows).map_err(|e| bad(e.to_string()))?, 1, 1),
            block_dim: (DENSE_SCATTER_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[c] = Σ_r m[r, c]` over the first `rows` rows of the row-major `[rows, n]` matrix `m`
    /// (f32 or bf16), in f32, overwritten; deterministic (fixed summation order).
    pub fn sae_col_sum<T: DenseScalar>(
        &self,
        stream: &Arc<CudaStream>,
        m: &CudaSlice<T>,
        (rows, n): (usize, usize),
        out: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        let entry = T::COL_SUM;
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        if n == 0 {
            return Ok(());
        }
        let len = rows
            .checked_mul(n)
            .ok_or_else(|| bad("rows × n overflows".into()))?;
        super::check_len("m", m.len(), len).map_err(|e| bad(e.to_string()))?;
        super::check_len("out", out.len(), n).map_err(|e| bad(e.to_string()))?;
        let rows_i = to_i32("rows", rows).map_err(|e| bad(e.to_string()))?;
        let n_i = to_i32("n", n).map_err(|e| bad(e.to_string()))?;
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch.arg(m).arg(&rows_i).arg(&n_i).arg(out);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(32) as u32, 1, 1),
            block_dim: (32, COL_SUM_ROWS, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// The weight gradients of the active latents as dense GEMMs (the CPU trainer's per-latent pass in
    /// `TrainState::step`), overwriting the three outputs:
    ///
    /// 1. `G = scatter(main ∂L/∂pre, AuxK ∂L/∂pre)`; `g_b_enc = Σ_rows G`; `g_W_enc = Gᵀ·xc`;
    /// 2. `C = scatter(main_coef · main values)`; `g_W_dec = Cᵀ·main.target` (the residual e);
    /// 3. with AuxK: `C = scatter(aux_coef · AuxK values)`; `g_W_dec += Cᵀ·aux.target` (its residual).
    ///
    /// `G` and `C` are `[rows, d_sae]` in `dense` (reused in turn: the launches are ordered on
    /// `stream`, which must be `lt`'s), `xc` and the targets `[rows, d_in]`, `W` gradients
    /// `[d_sae, d_in]` — `W_enc`/`W_dec`'s own layout, so `dW = Gᵀ·H` is [`CublasLt::weight_grad`] with
    /// `m = d_sae`, `n = d_in`, `k = rows`. `T` = f32 (exact f32 GEMM) or bf16 (bf16 operands, f32
    /// accumulation and output). Deterministic for a given shape.
    ///
    /// Memory: `dense` holds `rows · d_sae` values (the size of the encoder's pre-activations, which the
    /// f32 trainer passes here once the top-k is taken; 75 MB in bf16 at 8,192 rows × 4,608 latents).
    /// Work: `2·rows·d_sae·d_in` flops per GEMM (two, three with AuxK), plus one write of `dense` per
    /// scatter and one read for the column sum.
    #[allow(clippy::too_many_arguments)]
    pub fn sae_weight_grads<'a, T: DenseScalar>(
        &self,
        stream: &Arc<CudaStream>,
        lt: &CublasLt,
        main: GradSet<'a, T>,
        aux: Option<GradSet<'a, T>>,
        (grad_pre, xc): (&'a CudaSlice<f32>, &CudaSlice<T>),
        dense: &mut CudaSlice<T>,
        (g_w_dec, g_w_enc, g_b_enc): (&mut CudaSlice<f32>, &mut CudaSlice<f32>, &mut CudaSlice<f32>),
        shape: SaeShape,
    ) -> Result<(), GpuError> {
        let SaeShape { rows, d_in, d_sae } = shape;
        if rows == 0 || d_in == 0 || d_sae == 0 {
            return Ok(());
        }
        let gemm = LinearShape {
            m: d_sae,
            n: d_in,
            k: rows,
        };
        let dims = (rows, d_sae);
        let gp = |s: GradSet<'a, T>| DenseCodes {
            indices: s.codes.indices,
            k: s.codes.k,
            weights: grad_pre,
            cols: s.cols,
            coef: 1.0,
        };
        let values = |s: GradSet<'a, T>| DenseCodes {
            indices: s.codes.indices,
            k: s.codes.k,
            weights: s.codes.values,
            cols: SlotColumns {
                stride: s.codes.k,
                offset: 0,
            },
            coef: s.coef,
        };
        self.sae_dense_scatter(stream, gp(main), aux.map(gp), dense, dims)?;
        self.sae_col_sum(stream, dense, dims, g_b_enc)?;
        lt.weight_grad(dense, xc, g_w_enc, gemm, false)?;
        self.sae_dense_scatter(stream, values(main), None, dense, dims)?;
        lt.weight_grad(dense, main.target, g_w_dec, gemm, false)?;
        if let Some(aux) = aux {
            self.sae_dense_scatter(stream, values(aux), None, dense, dims)?;
            lt.weight_grad(dense, aux.target, g_w_dec, gemm, true)?;
        }
        Ok(())
    }

    /// `g_b_dec = Σ_r coef·e[r] − Σ_f g_b_enc[f]·W_enc[f]` (overwritten; deterministic): the CPU
    /// trainer's decoder-side sum plus its encoder-side correction. `shape.rows` rows of `e`.
    #[allow(clippy::too_many_arguments)]
    pub fn sae_grad_b_dec(
        &self,
        stream: &Arc<CudaStream>,
        e: &CudaSlice<f32>,
        coef: f32,
        g_b_enc: &CudaSlice<f32>,
        w_enc: &CudaSlice<f32>,
        g_b_dec: &mut CudaSlice<f32>,
        shape: SaeShape,
    ) -> Result<(), GpuError> {
        let entry = "sae_grad_b_dec_f32";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        if shape.d_in == 0 {
            return Ok(());
        }
        let Some(c) = check_shape(
            SaeShape {
                rows: shape.rows.max(1),
                ..shape
            },
            1,
        )
        .map_err(|e| bad(e.to_string()))?
        else {
            return Ok(());
        };
        super::check_len("e", e.len(), shape.rows * shape.d_in).map_err(|e| bad(e.to_string()))?;
        super::check_len("g_b_enc", g_b_enc.len(), shape.d_sae).map_err(|e| bad(e.to_string()))?;
        super::check_len("W_enc", w_enc.len(), shape.d_sae * shape.d_in).map_err(|e| bad(e.to_string()))?;
        super::check_len("g_b_dec", g_b_dec.len(), shape.d_in).map_err(|e| bad(e.to_string()))?;
        let rows = to_i32("rows", shape.rows).map_err(|e| bad(e.to_string()))?;
        let cfg = LaunchConfig {
            grid_dim: (shape.d_in.div_ceil(32) as u32, 1, 1),
            block_dim: (32, 16, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch
            .arg(e)
            .arg(&rows)
            .arg(&c.d)
            .arg(&coef)
            .arg(g_b_enc)
            .arg(w_enc)
            .arg(&c.d_sae)
            .arg(g_b_dec);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `g[f] −= (g[f]·w[f])·w[f]` for every decoder row (`[d_sae, d_in]`): the CPU trainer's removal of
    /// the gradient component along each unit-norm decoder row.
    pub fn sae_remove_parallel_grad(
        &self,
        stream: &Arc<CudaStream>,
        g_w_dec: &mut CudaSlice<f32>,
        w_dec: &CudaSlice<f32>,
        (d_sae, d_in): (usize, usize),
    ) -> Result<(), GpuError> {
        let entry = "sae_remove_parallel_grad_f32";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        let n = d_sae
            .checked_mul(d_in)
            .ok_or_else(|| bad("d_sae × d_in overflows".into()))?;
        if n == 0 {
            return Ok(());
        }
        super::check_len("g_w_dec", g_w_dec.len(), n).map_err(|e| bad(e.to_string()))?;
        super::check_len("W_dec", w_dec.len(), n).map_err(|e| bad(e.to_string()))?;
        let (rows_i, d_i) = (
            to_i32("d_sae", d_sae).map_err(|e| bad(e.to_string()))?,
            to_i32("d_in", d_in).map_err(|e| bad(e.to_string()))?,
        );
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch.arg(g_w_dec).arg(w_dec).arg(&rows_i).arg(&d_i);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(warp_per_row(d_sae)) }?;
        Ok(())
    }

    /// Every row of `w` (`[n_rows, d]`) divided by its norm when that is > 0: the CPU trainer's
    /// `normalise` over `W_dec` after each Adam step.
    pub fn sae_renormalise_rows(
        &self,
        stream: &Arc<CudaStream>,
        w: &mut CudaSlice<f32>,
        (n_rows, d): (usize, usize),
    ) -> Result<(), GpuError> {
        let entry = "sae_renormalise_rows_f32";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        let n = n_rows
            .checked_mul(d)
            .ok_or_else(|| bad("rows × d overflows".into()))?;
        if n == 0 {
            return Ok(());
        }
        super::check_len("w", w.len(), n).map_err(|e| bad(e.to_string()))?;
        let (rows_i, d_i) = (
            to_i32("rows", n_rows).map_err(|e| bad(e.to_string()))?,
            to_i32("d", d).map_err(|e| bad(e.to_string()))?,
        );
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch.arg(w).arg(&rows_i).arg(&d_i);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(warp_per_row(n_rows)) }?;
        Ok(())
    }

    /// Dead-latent counters after a batch of `rows` rows with `codes` (main codes only, as the CPU):
    /// `tokens_since_fired[f] = fired ? 0 : tokens_since_fired[f] + rows`, fired = some slot of f has a
    /// value > 0. Two launches on `stream`.
    pub fn sae_update_fire_counters(
        &self,
        stream: &Arc<CudaStream>,
        codes: GpuCodes<'_>,
        rows: usize,
        tokens_since_fired: &mut CudaSlice<u64>,
        d_sae: usize,
    ) -> Result<(), GpuError> {
        let entry = "sae_fire_counters_reset";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        if d_sae == 0 {
            return Ok(());
        }
        let slots = rows
            .checked_mul(codes.k)
            .ok_or_else(|| bad("rows × k overflows".into()))?;
        check_codes(&codes, rows, "codes").map_err(|e| bad(e.to_string()))?;
        super::check_len("tokens_since_fired", tokens_since_fired.len(), d_sae)
            .map_err(|e| bad(e.to_string()))?;
        let d_i = to_i32("d_sae", d_sae).map_err(|e| bad(e.to_string()))?;
        let (b, n_slots) = (rows as u64, slots as i64);
        let mut launch = stream.launch_builder(self.function("sae_fire_counters_add")?);
        launch.arg(&mut *tokens_since_fired).arg(&d_i).arg(&b);
        let cfg = LaunchConfig {
            grid_dim: (d_sae.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        if slots == 0 {
            return Ok(());
        }
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch
            .arg(codes.indices)
            .arg(codes.values)
            .arg(&n_slots)
            .arg(tokens_since_fired)
            .arg(&d_i);
        let cfg = LaunchConfig {
            grid_dim: (slots.div_ceil(256).min(132 * 16) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// The AuxK mask: `dead[f] = tokens_since_fired[f] >= threshold` (1 or 0), and `n_dead[0]` set to
    /// the number of dead latents (the CPU's `dead` list and its length; k_aux = min(aux_k, n_dead)).
    pub fn sae_dead_mask(
        &self,
        stream: &Arc<CudaStream>,
        tokens_since_fired: &CudaSlice<u64>,
        threshold: u64,
        dead: &mut CudaSlice<u8>,
        n_dead: &mut CudaSlice<u32>,
        d_sae: usize,
    ) -> Result<(), GpuError> {
        let entry = "sae_dead_mask";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        super::check_len("tokens_since_fired", tokens_since_fired.len(), d_sae)
            .map_err(|e| bad(e.to_string()))?;
        super::check_len("dead", dead.len(), d_sae).map_err(|e| bad(e.to_string()))?;
        super::check_len("n_dead", n_dead.len(), 1).map_err(|e| bad(e.to_string()))?;
        let d_i = to_i32("d_sae", d_sae).map_err(|e| bad(e.to_string()))?;
        stream.memset_zeros(n_dead)?;
        if d_sae == 0 {
            return Ok(());
        }
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch
            .arg(tokens_since_fired)
            .arg(&d_i)
            .arg(&threshold)
            .arg(dead)
            .arg(n_dead);
        let cfg = LaunchConfig {
            grid_dim: (d_sae.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}

fn check_columns(cols: SlotColumns, k: usize, rows: usize, len: usize) -> Result<(), ArgError> {
    if cols.offset + k > cols.stride {
        return Err(ArgError::SlotColumns {
            offset: cols.offset,
            end: cols.offset + k,
            stride: cols.stride,
        });
    }
    super::check_len("grad_pre", len, rows * cols.stride)
}

/// One warp per row, 8 warps per block.
fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}
