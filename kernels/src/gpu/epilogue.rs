//! Launch wrapper of `bias_relu.cu` (CPU reference: `scinterp_engine::cpu::bias_relu_in_place`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{GpuError, Kernels};

impl Kernels {
    /// `y = max(x + bias, 0)` over `rows` rows of `cols` (row-major f32, bias per column).
    pub fn bias_relu(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        (rows, cols): (usize, usize),
    ) -> Result<(), GpuError> {
        let bad = |reason: String| GpuError::BadArgs {
            kernel: "bias_relu_f32",
            reason,
        };
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| bad("rows × cols overflows".into()))?;
        if n == 0 {
            return Ok(());
        }
        super::check_len("x", x.len(), n).map_err(|e| bad(e.to_string()))?;
        super::check_len("y", y.len(), n).map_err(|e| bad(e.to_string()))?;
        super::check_len("bias", bias.len(), cols).map_err(|e| bad(e.to_string()))?;
        let rows_i = i32::try_from(rows).map_err(|_| bad(format!("{rows} rows exceed i32")))?;
        let cols_i = i32::try_from(cols).map_err(|_| bad(format!("{cols} cols exceed i32")))?;
        // Grid-stride loop: enough blocks to fill an H200 (132 SMs) several times over, no more.
        let blocks = n.div_ceil(256).min(132 * 16) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(self.function("bias_relu_f32")?);
        launch.arg(x).arg(bias).arg(y).arg(&rows_i).arg(&cols_i);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}
