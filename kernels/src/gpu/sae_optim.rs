//! Launch wrappers of `sae_optim.cu`: centring, Adam and f64 sums of squares for the GPU SAE trainer.
//! CPU references: `TrainState::step` and `TrainState::adam` in `scinterp_engine::sae::train`.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{check_len, GpuError, Kernels};

/// Blocks of the grid-stride launches (and partial sums of [`Kernels::sum_squares`]): an H200 (132
/// SMs) several times over.
pub const SUM_BLOCKS: usize = 132 * 4;

/// Adam's settings for one step; `c1 = 1/(1 − β₁ᵗ)` and `c2 = 1/(1 − β₂ᵗ)` are the bias corrections.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub c1: f32,
    pub c2: f32,
    pub eps: f32,
}

fn flat_launch(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, SUM_BLOCKS) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Kernels {
    /// `out[r] = x[r] − v` for `rows` rows of `v.len()` columns.
    pub fn sub_row_vector(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        rows: usize,
    ) -> Result<(), GpuError> {
        const ENTRY: &str = "sub_row_vector_f32";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: ENTRY,
            reason,
        };
        let cols = v.len();
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| bad("rows × cols overflows".into()))?;
        check_len("x", x.len(), n).map_err(|e| bad(e.to_string()))?;
        check_len("out", out.len(), n).map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        let cols_i = i32::try_from(cols).map_err(|_| bad(format!("{cols} columns exceed i32")))?;
        let rows_u = rows as u64;
        let mut launch = stream.launch_builder(self.function(ENTRY)?);
        launch.arg(x).arg(v).arg(out).arg(&rows_u).arg(&cols_i);
        // SAFETY: argument types and order match the kernel; lengths checked above.
        unsafe { launch.launch(flat_launch(n)) }?;
        Ok(())
    }

    /// One Adam step on `p` with moments `m`, `v` and gradient `g` (all of `p.len()` values).
    pub fn adam(
        &self,
        stream: &Arc<CudaStream>,
        p: &mut CudaSlice<f32>,
        (m, v): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
        g: &CudaSlice<f32>,
        s: AdamStep,
    ) -> Result<(), GpuError> {
        const ENTRY: &str = "adam_f32";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: ENTRY,
            reason,
        };
        let n = p.len();
        check_len("m", m.len(), n).map_err(|e| bad(e.to_string()))?;
        check_len("v", v.len(), n).map_err(|e| bad(e.to_string()))?;
        check_len("g", g.len(), n).map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        let n_u = n as u64;
        let mut launch = stream.launch_builder(self.function(ENTRY)?);
        launch
            .arg(p)
            .arg(m)
            .arg(v)
            .arg(g)
            .arg(&n_u)
            .arg(&s.lr)
            .arg(&s.beta1)
            .arg(&s.beta2)
            .arg(&s.c1)
            .arg(&s.c2)
            .arg(&s.eps);
        // SAFETY: argument types and order match the kernel; lengths checked above.
        unsafe { launch.launch(flat_launch(n)) }?;
        Ok(())
    }

    /// Σ x² in f64 over the first `n` values: per-block partials into `partial` (≥ [`SUM_BLOCKS`]
    /// values), summed here in block order after a copy to the host (synchronises the stream).
    pub fn sum_squares(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        n: usize,
        partial: &mut CudaSlice<f64>,
    ) -> Result<f64, GpuError> {
        const ENTRY: &str = "sum_squares_f64";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: ENTRY,
            reason,
        };
        check_len("x", x.len(), n).map_err(|e| bad(e.to_string()))?;
        check_len("partial", partial.len(), SUM_BLOCKS).map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            return Ok(0.0);
        }
        let cfg = flat_launch(n);
        let blocks = cfg.grid_dim.0 as usize;
        let n_u = n as u64;
        let mut launch = stream.launch_builder(self.function(ENTRY)?);
        launch.arg(x).arg(&n_u).arg(&mut *partial);
        // SAFETY: argument types and order match the kernel; `partial` holds one value per block.
        unsafe { launch.launch(cfg) }?;
        let host = stream.clone_dtoh(partial)?;
        Ok(host[..blocks].iter().sum())
    }
}
