//! Loading the compiled kernels into a CUDA context and launching them with checked arguments.
//!
//! Call only after [`crate::cuda_available`] returned `Ok`: cudarc panics when libcuda is missing.
//! Modules load from the sm_90 CUBIN first (no JIT); the compute_90 PTX is the fallback for a GPU the
//! CUBIN does not fit or a driver that refuses it. Each kernel's launch wrapper (argument checks, grid)
//! is a method of [`Kernels`] in the submodule named after its source.

pub mod attention;
pub mod embed;
mod epilogue;
pub mod gemm;
mod gemm_bf16;
mod hook_edits;
mod norm;
mod trace;

pub use hook_edits::{DeviceEditList, EditList, EditListError, EditOp, EditRecord};
pub use trace::{
    sign_flip_hash, sign_flip_is_positive, AblationList, CodeSegments, DeviceAblationList, EdgeStatsHost,
    ReduceSlots, TraceStats, TraceStatsHost,
};
pub mod sae;
pub mod sae_optim;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream};

use cudarc::nvrtc::Ptx;
pub use gemm_bf16::InHouseOutput;
use thiserror::Error;

use crate::compile::{self, CompileError, Compiled};
use crate::{embedded, KERNELS};

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
    #[error(
        "{kernel}: not embedded in this binary (built without NVRTC) and run-time compilation failed: \
         {why}; rebuild with SCINTERP_NVRTC_LIB set (see .ci/run) or set it now"
    )]
    NotEmbedded { kernel: &'static str, why: String },
    #[error(
        "libcublasLt (.so.13 or .so.12) could not be loaded (it is not part of the driver): install the \
         CUDA cuBLAS libraries (or put a folder holding one on LD_LIBRARY_PATH), or use the in-house GEMM"
    )]
    NoCublasLt,
    /// An error cudarc could only record, in a `Drop` (freeing a slice, an event or a stream guard),
    /// surfaced at the end of the work it happened in.
    #[error("CUDA error recorded while releasing GPU resources: {0}")]
    RecordedInDrop(cudarc::driver::DriverError),
    #[error("cuBLASLt {call} failed: {status}")]
    Cublas { call: &'static str, status: String },
    #[error("{kernel}: {reason}")]
    BadArgs { kernel: &'static str, reason: String },
    #[error("no GPU ({0})")]
    NoGpu(#[from] crate::GpuAbsence),
    #[error("CUDA context on device 0: {0}")]
    Context(cudarc::driver::DriverError),
}

/// A launch argument that does not fit its kernel; launch wrappers report it as [`GpuError::BadArgs`]
/// with the kernel's name.
#[derive(Debug, Error)]
pub enum ArgError {
    #[error("{what} holds {got} values, needs {want}")]
    TooShort { what: String, got: usize, want: usize },
    #[error("{what} = {value} exceeds i32")]
    ExceedsI32 { what: &'static str, value: usize },
    #[error("{0} rows exceed the grid")]
    ExceedsGrid(usize),
    #[error("{0} overflows")]
    Overflow(&'static str),
    #[error("d_sae is 0")]
    NoLatents,
    #[error("k = {k} needs {bytes} B of shared memory (max 48 KiB)")]
    SharedMemory { k: usize, bytes: usize },
    #[error("slot columns {offset}..{end} exceed the stride {stride}")]
    SlotColumns {
        offset: usize,
        end: usize,
        stride: usize,
    },
    #[error("query tile of 0 rows")]
    EmptyQueryTile,
    #[error("offsets are empty (need n_cells + 1 values, starting at 0)")]
    NoOffsets,
    #[error("offsets start at {0}, not 0")]
    OffsetsStart(usize),
    #[error("offsets decrease at cell {cell}: {from} then {to}")]
    OffsetsDecrease { cell: usize, from: usize, to: usize },
    #[error("{0} tokens exceed i32")]
    TooManyTokens(usize),
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

/// Device 0, its default stream and every kernel loaded, or why not (no GPU; kernels neither embedded nor
/// compilable). For tests and benches, which skip on `Err`.
pub fn open_default() -> Result<(Arc<CudaContext>, Arc<CudaStream>, Kernels), GpuError> {
    crate::cuda_available()?;
    let ctx = CudaContext::new(0).map_err(GpuError::Context)?;
    let kernels = Kernels::load(&ctx)?;
    let stream = ctx.default_stream();
    Ok((ctx, stream, kernels))
}

/// [`open_default`] for tests and benches: the stream and kernels, or `None` after printing
/// `SKIPPED <test>: <why>` ([`crate::print_skip`]; `what` names a bench), so a run without a GPU says
/// so instead of passing silently.
pub fn open_or_skip(what: &str) -> Option<(Arc<CudaStream>, Kernels)> {
    match open_default() {
        Ok((_ctx, stream, kernels)) => {
            println!("{what}: modules loaded from {:?}", kernels.formats);
            Some((stream, kernels))
        }
        Err(why) => {
            crate::print_skip(what, &why);
            None
        }
    }
}

/// Every kernel of the registry, loaded into one context; launch wrappers live in the submodules.
pub struct Kernels {
    functions: HashMap<&'static str, CudaFunction>,
    /// Where each module came from, in registry order.
    pub formats: Vec<(&'static str, ModuleFormat)>,
    /// One zero, passed where a kernel takes a bias pointer it will not read (no bias epilogue):
    /// allocated once here instead of once per launch.
    zero_bias: CudaSlice<f32>,
}

impl Kernels {
    /// Load every registry kernel into `ctx`: the embedded CUBIN (else its PTX), or, for a binary built
    /// without NVRTC, a run-time NVRTC compilation.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self, GpuError> {
        let mut functions = HashMap::new();
        let mut formats = Vec::new();
        for kernel in KERNELS {
            let compiled = match embedded::artefacts(kernel) {
                Some(e) => Compiled {
                    kernel,
                    cubin: e.cubin.to_vec(),
                    ptx: e.ptx.to_string(),
                    ptx_isa: e.ptx_isa,
                    log: String::new(),
                    resources: Vec::new(),
                },
                None => compile::compile(kernel).map_err(|e| GpuError::NotEmbedded {
                    kernel: kernel.name,
                    why: e.to_string(),
                })?,
            };
            let (module, format) = load_module(ctx, &compiled)?;
            formats.push((kernel.name, format));
            for entry in kernel.entry_points {
                functions.insert(*entry, module.load_function(entry)?);
            }
        }
        let zero_bias = ctx.default_stream().alloc_zeros::<f32>(1)?;
        Ok(Kernels {
            functions,
            formats,
            zero_bias,
        })
    }

    /// The loaded entry point `entry` (an `extern "C"` name of the registry).
    pub fn function(&self, entry: &'static str) -> Result<&CudaFunction, GpuError> {
        self.functions.get(entry).ok_or(GpuError::BadArgs {
            kernel: entry,
            reason: "not an entry point of the registry".into(),
        })
    }
}

/// Errors cudarc met where it could not return them (the `Drop` of slices, events and stream guards)
/// are stored in the context; call this at the end of each unit of work so they are not lost.
pub fn take_recorded_error(ctx: &CudaContext) -> Result<(), GpuError> {
    ctx.check_err().map_err(GpuError::RecordedInDrop)
}

pub(crate) fn check_len(what: &str, got: usize, want: usize) -> Result<(), ArgError> {
    if got < want {
        Err(ArgError::TooShort {
            what: what.to_string(),
            got,
            want,
        })
    } else {
        Ok(())
    }
}
