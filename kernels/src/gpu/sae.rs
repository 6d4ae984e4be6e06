//! Launch wrappers of the TopK SAE kernels, `sae_topk.cu` and `sae_sparse.cu`.
//!
//! CPU references (`scinterp_engine::sae`): [`Kernels::sae_topk`] ↔ `top_k_rows`; [`Kernels::sae_decode`]
//! ↔ `TopKSae::decode`; the residual, gradient, renormalisation and counter kernels ↔ the matching steps
//! of `train::TrainState::step` (see each method). Layouts are the engine's: `W_enc` and `W_dec` are
//! `[d_sae, d_in]` row-major (one row per latent), codes are `k` (index, value) pairs per row. An index
//! `>= d_sae` (the top-k writes `u32::MAX` when fewer latents are eligible than asked for) marks an empty
//! slot and is skipped by every kernel.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{ArgError, GpuError, Kernels};

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

    /// Weight gradients of the active latents by **atomic** index-add (not bit-reproducible): for every
    /// slot `(r, j)`, `g_w_dec[f] += coef·v_j·t[r]` (v ≠ 0), `g_w_enc[f] += gp·(x[r] − b_dec)` and
    /// `g_b_enc[f] += gp` (gp = `grad_pre[r, offset + j]` ≠ 0) — the CPU trainer's per-latent pass. The
    /// three outputs accumulate: zero them once per step, then call for the main codes (`t = e`) and
    /// for the AuxK codes (`t` = AuxK residual).
    #[allow(clippy::too_many_arguments)]
    pub fn sae_grad_scatter(
        &self,
        stream: &Arc<CudaStream>,
        codes: GpuCodes<'_>,
        grad_pre: &CudaSlice<f32>,
        cols: SlotColumns,
        (t, coef): (&CudaSlice<f32>, f32),
        (x, b_dec): (&CudaSlice<f32>, &CudaSlice<f32>),
        (g_w_dec, g_w_enc, g_b_enc): (&mut CudaSlice<f32>, &mut CudaSlice<f32>, &mut CudaSlice<f32>),
        shape: SaeShape,
    ) -> Result<(), GpuError> {
        let entry = "sae_grad_scatter_f32";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        let Some(c) = check_shape(shape, codes.k).map_err(|e| bad(e.to_string()))? else {
            return Ok(());
        };
        check_codes(&codes, shape.rows, "codes").map_err(|e| bad(e.to_string()))?;
        check_columns(cols, codes.k, shape.rows, grad_pre.len()).map_err(|e| bad(e.to_string()))?;
        let (nx, nw) = (shape.rows * shape.d_in, shape.d_sae * shape.d_in);
        super::check_len("t", t.len(), nx).map_err(|e| bad(e.to_string()))?;
        super::check_len("x", x.len(), nx).map_err(|e| bad(e.to_string()))?;
        super::check_len("b_dec", b_dec.len(), shape.d_in).map_err(|e| bad(e.to_string()))?;
        super::check_len("g_w_dec", g_w_dec.len(), nw).map_err(|e| bad(e.to_string()))?;
        super::check_len("g_w_enc", g_w_enc.len(), nw).map_err(|e| bad(e.to_string()))?;
        super::check_len("g_b_enc", g_b_enc.len(), shape.d_sae).map_err(|e| bad(e.to_string()))?;
        let stride = to_i32("stride", cols.stride).map_err(|e| bad(e.to_string()))?;
        let offset = to_i32("offset", cols.offset).map_err(|e| bad(e.to_string()))?;
        let vec_cols = if shape.d_in.is_multiple_of(4) {
            shape.d_in / 4
        } else {
            shape.d_in
        };
        let cfg = LaunchConfig {
            grid_dim: (grid(shape.rows).map_err(|e| bad(e.to_string()))?, 1, 1),
            block_dim: (row_threads(vec_cols), 1, 1),
            shared_mem_bytes: codes_smem(codes.k, 3).map_err(|e| bad(e.to_string()))?,
        };
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch
            .arg(codes.indices)
            .arg(codes.values)
            .arg(grad_pre)
            .arg(&stride)
            .arg(&offset)
            .arg(t)
            .arg(&coef)
            .arg(x)
            .arg(b_dec)
            .arg(g_w_dec)
            .arg(g_w_enc)
            .arg(g_b_enc)
            .arg(&c.rows)
            .arg(&c.k)
            .arg(&c.d)
            .arg(&c.d_sae);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
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
