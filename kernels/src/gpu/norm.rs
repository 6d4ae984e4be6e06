//! Launch wrapper of `add_layer_norm.cu` (CPU reference: `scinterp_engine::cpu::layer_norm_of_sum`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{GpuError, Kernels};

impl Kernels {
    /// `out = LN(a + b) · gamma + beta` over `rows` rows of `dim` (row-major f32).
    #[allow(clippy::too_many_arguments)]
    pub fn add_layer_norm(
        &self,
        stream: &Arc<CudaStream>,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        (rows, dim): (usize, usize),
        eps: f32,
    ) -> Result<(), GpuError> {
        let bad = |reason: String| GpuError::BadArgs {
            kernel: "add_layer_norm_f32",
            reason,
        };
        let n = rows
            .checked_mul(dim)
            .ok_or_else(|| bad("rows × dim overflows".into()))?;
        if dim == 0 || rows == 0 {
            return Ok(());
        }
        super::check_len("a", a.len(), n).map_err(|e| bad(e.to_string()))?;
        super::check_len("b", b.len(), n).map_err(|e| bad(e.to_string()))?;
        super::check_len("out", out.len(), n).map_err(|e| bad(e.to_string()))?;
        super::check_len("gamma", gamma.len(), dim).map_err(|e| bad(e.to_string()))?;
        super::check_len("beta", beta.len(), dim).map_err(|e| bad(e.to_string()))?;
        let rows_i = i32::try_from(rows).map_err(|_| bad(format!("{rows} rows exceed i32")))?;
        let dim_i = i32::try_from(dim).map_err(|_| bad(format!("dim {dim} exceeds i32")))?;
        let grid = u32::try_from(rows).map_err(|_| bad(format!("{rows} rows exceed the grid")))?;
        // 32–1024 threads, a multiple of 32 (the block reduction assumes whole warps).
        let threads = dim.div_ceil(32).clamp(1, 32) as u32 * 32;
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(self.function("add_layer_norm_f32")?);
        launch
            .arg(a)
            .arg(b)
            .arg(gamma)
            .arg(beta)
            .arg(out)
            .arg(&rows_i)
            .arg(&dim_i)
            .arg(&eps);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}
