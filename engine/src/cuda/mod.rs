//! The CUDA backend: the forward pass ([`CudaForward`]), the resident tracer (`CudaForward`'s
//! `trace_resident`, used by `trace::trace_cells`) and TopK SAE training ([`GpuSaeStepper`]) on a GPU, built from the kernels of `scinterp-kernels` and checked against the CPU path by the GPU tests
//! (`tests/cuda_forward.rs`, `engine/tests/cuda_*.rs`). Construct them only after
//! [`scinterp_kernels::cuda_available`] returned `Ok` (or `--device` resolved to CUDA): cudarc panics
//! where the driver is missing.

mod forward;
mod sae;
mod trace;

pub use forward::CudaForward;
pub use sae::{GpuSaeEncoder, GpuSaeError, GpuSaeStepper};

use scinterp_kernels::gpu::GpuError;

use crate::error::EngineError;

/// Storage and arithmetic precision of the GPU GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuPrecision {
    /// bf16 operands, f32 accumulation; everything else f32.
    Bf16,
    /// Exact f32 (`CUBLAS_COMPUTE_32F`, never TF32): the parity mode.
    F32,
}

fn gpu_error(e: GpuError) -> EngineError {
    EngineError::Gpu(e.to_string())
}

fn driver_error(e: scinterp_kernels::cudarc::driver::DriverError) -> EngineError {
    EngineError::Gpu(format!("CUDA: {e}"))
}
