//! Loading the compiled kernels into a CUDA context and launching them with checked arguments.
//!
//! Call only after [`crate::cuda_available`] returned `Ok`: cudarc panics when libcuda is missing.
//! Modules load from the sm_90 CUBIN first (no JIT); the compute_90 PTX is the fallback for a GPU the
//! CUBIN does not fit or a driver that refuses it.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use thiserror::Error;

use crate::compile::{self, CompileError, Compiled};

#[derive(Debug, Error)]
pub enum GpuError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("CUDA: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("{kernel}: neither the CUBIN ({cubin}) nor the PTX ({ptx}) loads")]
    Load {
        kernel: &'static str,
        cubin: String,
        ptx: String,
    },
    #[error("{kernel}: {reason}")]
    BadArgs { kernel: &'static str, reason: String },
}

/// Which artefact a module was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleFormat {
    Cubin,
    Ptx,
}

/// Load one compiled kernel: CUBIN, else PTX.
pub fn load_module(
    ctx: &Arc<CudaContext>,
    compiled: &Compiled,
) -> Result<(Arc<CudaModule>, ModuleFormat), GpuError> {
    let cubin_err = match ctx.load_module(Ptx::from_binary(compiled.cubin.clone())) {
        Ok(m) => return Ok((m, ModuleFormat::Cubin)),
        Err(e) => e.to_string(),
    };
    // cudarc unwraps a CString of the PTX: make sure that cannot fail.
    if compiled.ptx.contains('\0') {
        return Err(GpuError::Load {
            kernel: compiled.kernel.name,
            cubin: cubin_err,
            ptx: "NUL in PTX".into(),
        });
    }
    match ctx.load_module(Ptx::from_src(compiled.ptx.clone())) {
        Ok(m) => Ok((m, ModuleFormat::Ptx)),
        Err(e) => Err(GpuError::Load {
            kernel: compiled.kernel.name,
            cubin: cubin_err,
            ptx: e.to_string(),
        }),
    }
}

/// The kernels of scinterp, loaded into one context.
pub struct Kernels {
    add_layer_norm_f32: CudaFunction,
    bias_relu_f32: CudaFunction,
    /// Where each module came from, in registry order.
    pub formats: Vec<(&'static str, ModuleFormat)>,
}

impl Kernels {
    /// Compile (NVRTC) and load every kernel into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self, GpuError> {
        let mut formats = Vec::new();
        let mut function = |name: &'static str, entry: &str| -> Result<CudaFunction, GpuError> {
            let kernel = crate::kernel(name).ok_or_else(|| GpuError::BadArgs {
                kernel: "registry",
                reason: format!("no kernel {name}"),
            })?;
            let (module, format) = load_module(ctx, &compile::compile(kernel)?)?;
            formats.push((name, format));
            Ok(module.load_function(entry)?)
        };
        let add_layer_norm_f32 = function("add_layer_norm", "add_layer_norm_f32")?;
        let bias_relu_f32 = function("bias_relu", "bias_relu_f32")?;
        Ok(Kernels {
            add_layer_norm_f32,
            bias_relu_f32,
            formats,
        })
    }

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
        check_len("a", a.len(), n).map_err(bad)?;
        check_len("b", b.len(), n).map_err(bad)?;
        check_len("out", out.len(), n).map_err(bad)?;
        check_len("gamma", gamma.len(), dim).map_err(bad)?;
        check_len("beta", beta.len(), dim).map_err(bad)?;
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
        let mut launch = stream.launch_builder(&self.add_layer_norm_f32);
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
        check_len("x", x.len(), n).map_err(bad)?;
        check_len("y", y.len(), n).map_err(bad)?;
        check_len("bias", bias.len(), cols).map_err(bad)?;
        let rows_i = i32::try_from(rows).map_err(|_| bad(format!("{rows} rows exceed i32")))?;
        let cols_i = i32::try_from(cols).map_err(|_| bad(format!("{cols} cols exceed i32")))?;
        // Grid-stride loop: enough blocks to fill an H200 (132 SMs) several times over, no more.
        let blocks = n.div_ceil(256).min(132 * 16) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&self.bias_relu_f32);
        launch.arg(x).arg(bias).arg(y).arg(&rows_i).arg(&cols_i);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got < want {
        Err(format!("{what} holds {got} values, needs {want}"))
    } else {
        Ok(())
    }
}
