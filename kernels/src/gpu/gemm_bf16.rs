//! Launch wrappers of `gemm_bf16.cu` (the in-house linear layer) and `convert.cu` (precision casts).
//! CPU references: `scinterp_engine::cpu::linear` on bf16-rounded inputs, and `half::bf16::from_f32`.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::gemm::{Epilogue, GemmScalar, LinearShape};
use super::{GpuError, Kernels};

/// Output element types of the in-house GEMM.
pub trait InHouseOutput: GemmScalar {
    const ENTRY: &'static str;
}

impl InHouseOutput for f32 {
    const ENTRY: &'static str = "linear_bf16_f32out";
}

impl InHouseOutput for half::bf16 {
    const ENTRY: &'static str = "linear_bf16_bf16out";
}

impl Kernels {
    /// `y = epilogue(x · Wᵀ + bias)` row-major with bf16 inputs, f32 accumulation and an f32 bias. For hosts without cuBLASLt; see [`super::gemm::CublasLt::linear`].
    #[allow(clippy::too_many_arguments)]
    pub fn linear_bf16<O: InHouseOutput>(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<half::bf16>,
        w: &CudaSlice<half::bf16>,
        bias: Option<&CudaSlice<f32>>,
        y: &mut CudaSlice<O>,
        shape: LinearShape,
        epilogue: Epilogue,
    ) -> Result<(), GpuError> {
        shape.check(O::ENTRY, (x.len(), w.len(), y.len()), bias.map(|b| b.len()))?;
        let code: i32 = match (epilogue, bias.is_some()) {
            (Epilogue::None, false) => 0,
            (Epilogue::Bias, true) => 1,
            (Epilogue::BiasRelu, true) => 2,
            (e, given) => {
                return Err(GpuError::BadArgs {
                    kernel: O::ENTRY,
                    reason: format!("epilogue {e:?} with bias given: {given}"),
                })
            }
        };
        let LinearShape { m, n, k } = shape;
        let grid = (n.div_ceil(64), m.div_ceil(64));
        let grid_y = u32::try_from(grid.1)
            .ok()
            .filter(|&g| g <= 65_535)
            .ok_or(GpuError::BadArgs {
                kernel: O::ENTRY,
                reason: format!("{m} rows need more than 65,535 row tiles; split the batch"),
            })?;
        let cfg = LaunchConfig {
            grid_dim: (grid.0 as u32, grid_y, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // The kernel reads the bias only when the epilogue adds it; the shared zero stands in otherwise.
        let bias = bias.unwrap_or(&self.zero_bias);
        let (m_i, n_i, k_i) = (m as i32, n as i32, k as i32);
        let mut launch = stream.launch_builder(self.function(O::ENTRY)?);
        launch
            .arg(x)
            .arg(w)
            .arg(bias)
            .arg(y)
            .arg(&m_i)
            .arg(&n_i)
            .arg(&k_i)
            .arg(&code);
        // SAFETY: argument types and order match the kernel; lengths checked against the shape.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `dst[i] = bf16(src[i])`, round to nearest even.
    pub fn f32_to_bf16(
        &self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<half::bf16>,
    ) -> Result<(), GpuError> {
        self.convert(stream, "f32_to_bf16", src, dst)
    }

    /// `dst[i] = f32(src[i])` (exact).
    pub fn bf16_to_f32(
        &self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<half::bf16>,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        self.convert(stream, "bf16_to_f32", src, dst)
    }

    /// `dst[i] = f16(src[i])`, round to nearest even.
    pub fn f32_to_f16(
        &self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<half::f16>,
    ) -> Result<(), GpuError> {
        self.convert(stream, "f32_to_f16", src, dst)
    }

    /// `dst[i] = f32(src[i])` (exact).
    pub fn f16_to_f32(
        &self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<half::f16>,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        self.convert(stream, "f16_to_f32", src, dst)
    }

    fn convert<S: GemmScalar, D: GemmScalar>(
        &self,
        stream: &Arc<CudaStream>,
        entry: &'static str,
        src: &CudaSlice<S>,
        dst: &mut CudaSlice<D>,
    ) -> Result<(), GpuError> {
        let n = src.len();
        super::check_len("dst", dst.len(), n).map_err(|e| GpuError::BadArgs {
            kernel: entry,
            reason: e.to_string(),
        })?;
        if n == 0 {
            return Ok(());
        }
        let n_u64 = n as u64;
        let blocks = n.div_ceil(256).min(132 * 16) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch.arg(src).arg(dst).arg(&n_u64);
        // SAFETY: (src, dst, n) match the kernel's signature; dst holds at least n elements.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}
