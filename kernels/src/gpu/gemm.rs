//! Linear layers on the GPU: row-major `y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias) (ReLU)`, the PyTorch
//! weight layout, through cuBLASLt in bf16 or f16 with f32 accumulation.
//!
//! cuBLASLt rebuilds its descriptors and reruns its algorithm heuristic on every call when used naively;
//! a forward pass calls the same few shapes thousands of times, so [`CublasLt`] keeps one [`Plan`]
//! (matmul descriptor, three layouts, the chosen algorithm) per (shape, types, epilogue) and only
//! rebinds the bias pointer per call.
//!
//! Column-major view (cuBLAS): `Dᶜ[N,M] = op(A)·B` with `A = W` seen as `[K,N]` (ld K) transposed and
//! `B = x` seen as `[K,M]` (ld K); `Dᶜ` is `y` row-major, and the bias (one value per output feature) is
//! cuBLASLt's per-row bias of `Dᶜ`. No copies or transposes.
//!
//! Bound: compute for M ≥ a few hundred rows (2·M·N·K flops over (M·K + N·K + M·N)·2 bytes).
//!
//! libcublasLt is loaded dynamically; when it is absent (it is not part of the driver) [`CublasLt::new`]
//! returns [`GpuError::NoCublasLt`] and callers use the in-house kernel of `gemm_bf16.cu`
//! ([`super::Kernels::linear_bf16`]).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};

use super::GpuError;

/// cuBLASLt workspace: NVIDIA's recommendation for Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;

/// Element types of the GEMMs.
pub trait GemmScalar: DeviceRepr + ValidAsZeroBits + Copy {
    const CUDA_TYPE: sys::cudaDataType;
    const NAME: &'static str;
}

impl GemmScalar for half::bf16 {
    const CUDA_TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
    const NAME: &'static str = "bf16";
}

impl GemmScalar for half::f16 {
    const CUDA_TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16F;
    const NAME: &'static str = "f16";
}

impl GemmScalar for f32 {
    const CUDA_TYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
    const NAME: &'static str = "f32";
}

/// What the GEMM does to its output before storing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    None,
    Bias,
    /// Bias then ReLU: the FFN's first GEMM in Geneformer V2 and scGPT (both use ReLU, not GELU).
    BiasRelu,
}

impl Epilogue {
    fn has_bias(self) -> bool {
        !matches!(self, Epilogue::None)
    }

    fn cublaslt(self) -> sys::cublasLtEpilogue_t {
        match self {
            Epilogue::None => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::BiasRelu => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS,
        }
    }
}

/// Shape of one linear layer: `m` rows of input, `n` output features, `k` input features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinearShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl LinearShape {
    /// Checks the buffers against the shape; `Err` names the short one.
    pub fn check(
        &self,
        kernel: &'static str,
        (x, w, y): (usize, usize, usize),
        bias: Option<usize>,
    ) -> Result<(), GpuError> {
        let bad = |reason: String| GpuError::BadArgs { kernel, reason };
        let LinearShape { m, n, k } = *self;
        if m == 0 || n == 0 || k == 0 {
            return Err(bad(format!("empty shape m={m} n={n} k={k}")));
        }
        let need = |a: usize, b: usize| a.checked_mul(b).ok_or_else(|| bad("shape overflows".into()));
        super::check_len("x", x, need(m, k)?).map_err(|e| bad(e.to_string()))?;
        super::check_len("w", w, need(n, k)?).map_err(|e| bad(e.to_string()))?;
        super::check_len("y", y, need(m, n)?).map_err(|e| bad(e.to_string()))?;
        if let Some(b) = bias {
            super::check_len("bias", b, n).map_err(|e| bad(e.to_string()))?;
        }
        for (what, v) in [("m", m), ("n", n), ("k", k)] {
            if i32::try_from(v).is_err() {
                return Err(bad(format!("{what} = {v} exceeds i32")));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    shape: LinearShape,
    input: &'static str,
    output: &'static str,
    epilogue: Epilogue,
}

/// Descriptors and the heuristic's algorithm for one [`PlanKey`], destroyed on drop.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: the handles are plain cuBLASLt objects; the plan cache serialises their use under a Mutex.
unsafe impl Send for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created once by `Plan::new` and is destroyed once here. Errors at
        // teardown are ignored (nothing to do about them).
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.d);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

impl Plan {
    fn new(handle: sys::cublasLtHandle_t, key: &PlanKey, types: PlanTypes) -> Result<Plan, GpuError> {
        let LinearShape { m, n, k } = key.shape;
        let (m, n, k) = (m as u64, n as u64, k as u64);
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(cublas("cublasLtMatmulDescCreate"))?;
        // From here on, `plan` owns what exists and destroys it on an early return. The layouts are
        // null until created (destroying null is a no-op error that Drop ignores).
        let mut plan = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        let transpose: i32 = 1;
        let epilogue = key.epilogue.cublaslt();
        // SAFETY: live descriptor; each buffer pointer and size describe one value of the attribute type.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&transpose as *const i32).cast(),
                size_of::<i32>(),
            )
            .map_err(cublas("TRANSA"))?;
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                (&epilogue as *const sys::cublasLtEpilogue_t).cast(),
                size_of::<sys::cublasLtEpilogue_t>(),
            )
            .map_err(cublas("EPILOGUE"))?;
        }
        plan.a = lt::create_matrix_layout(types.input, k, n, k as i64).map_err(cublas("layout W"))?;
        plan.b = lt::create_matrix_layout(types.input, k, m, k as i64).map_err(cublas("layout x"))?;
        plan.d = lt::create_matrix_layout(types.output, n, m, n as i64).map_err(cublas("layout y"))?;

        let pref = lt::create_matmul_pref().map_err(cublas("cublasLtMatmulPreferenceCreate"))?;
        let workspace = WORKSPACE_BYTES;
        // SAFETY: live preference and descriptors; the preference is destroyed right after use.
        let heuristic = unsafe {
            let set = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace as *const usize).cast(),
                size_of::<usize>(),
            );
            let found = set.and_then(|()| {
                lt::get_matmul_algo_heuristic(handle, desc, plan.a, plan.b, plan.d, plan.d, pref)
            });
            let _ = lt::destroy_matmul_pref(pref);
            found.map_err(cublas("cublasLtMatmulAlgoGetHeuristic"))?
        };
        plan.algo = heuristic.algo;
        Ok(plan)
    }
}

#[derive(Clone, Copy)]
struct PlanTypes {
    input: sys::cudaDataType,
    output: sys::cudaDataType,
}

fn cublas(call: &'static str) -> impl Fn(lt::CublasError) -> GpuError {
    move |e| GpuError::Cublas {
        call,
        status: format!("{:?}", e.0),
    }
}

/// A cuBLASLt handle bound to one stream, its workspace, and the plan cache.
pub struct CublasLt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    plans: Mutex<HashMap<PlanKey, Plan>>,
}

// SAFETY: the handle is thread-safe per cuBLASLt's documentation for distinct calls; the plan cache and
// the shared descriptors are behind a Mutex held for the whole of each call.
unsafe impl Send for CublasLt {}
unsafe impl Sync for CublasLt {}

impl Drop for CublasLt {
    fn drop(&mut self) {
        self.plans.lock().map(|mut p| p.clear()).ok();
        // SAFETY: created once in `new`, destroyed once here.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

impl CublasLt {
    /// cuBLASLt on `stream`, or [`GpuError::NoCublasLt`] when libcublasLt cannot be loaded (checked first:
    /// cudarc would panic).
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self, GpuError> {
        // SAFETY: dlopen/dlclose of well-known library names only.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::NoCublasLt);
        }
        stream.context().bind_to_thread()?;
        let handle = lt::create_handle().map_err(cublas("cublasLtCreate"))?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        Ok(CublasLt {
            handle,
            workspace,
            stream: stream.clone(),
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// Number of cached plans (one per distinct shape, types and epilogue).
    pub fn cached_plans(&self) -> usize {
        self.plans.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// `y = epilogue(x · Wᵀ + bias)`, row-major, on this handle's stream. `I` is bf16 or f16 (f32 runs an
    /// exact f32 GEMM, `CUBLAS_COMPUTE_32F`, never TF32); `O` is `I` or f32; the bias has `O`'s type.
    pub fn linear<I: GemmScalar, O: GemmScalar>(
        &self,
        x: &CudaSlice<I>,
        w: &CudaSlice<I>,
        bias: Option<&CudaSlice<O>>,
        y: &mut CudaSlice<O>,
        shape: LinearShape,
        epilogue: Epilogue,
    ) -> Result<(), GpuError> {
        const KERNEL: &str = "cublasLt linear";
        let bad = |reason: String| GpuError::BadArgs {
            kernel: KERNEL,
            reason,
        };
        shape.check(KERNEL, (x.len(), w.len(), y.len()), bias.map(|b| b.len()))?;
        if epilogue.has_bias() != bias.is_some() {
            return Err(bad(format!(
                "epilogue {epilogue:?} with bias given: {}",
                bias.is_some()
            )));
        }
        if O::NAME != I::NAME && O::NAME != "f32" {
            return Err(bad(format!(
                "{} inputs cannot write {} outputs",
                I::NAME,
                O::NAME
            )));
        }
        let key = PlanKey {
            shape,
            input: I::NAME,
            output: O::NAME,
            epilogue,
        };
        let mut plans = self.plans.lock().map_err(|_| bad("plan cache poisoned".into()))?;
        let plan = match plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let types = PlanTypes {
                    input: I::CUDA_TYPE,
                    output: O::CUDA_TYPE,
                };
                e.insert(Plan::new(self.handle, &key, types)?)
            }
        };
        let stream = &self.stream;
        let (w_ptr, _w_guard) = w.device_ptr(stream);
        let (x_ptr, _x_guard) = x.device_ptr(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let (ws_ptr, _ws_guard) = self.workspace.device_ptr(stream);
        let (y_ptr, _y_guard) = y.device_ptr_mut(stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the plan's descriptors are live and used under the lock; every pointer is a live
        // device allocation whose length was checked against the shape; the workspace holds
        // WORKSPACE_BYTES, the limit the heuristic was given.
        unsafe {
            if let Some((bias_ptr, _)) = &bias_guard {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    (bias_ptr as *const u64).cast(),
                    size_of::<u64>(),
                )
                .map_err(cublas("BIAS_POINTER"))?;
            }
            lt::matmul(
                self.handle,
                plan.desc,
                (&alpha as *const f32).cast::<c_void>(),
                (&beta as *const f32).cast::<c_void>(),
                w_ptr as *const c_void,
                plan.a,
                x_ptr as *const c_void,
                plan.b,
                y_ptr as *const c_void,
                plan.d,
                y_ptr as *mut c_void,
                plan.d,
                &plan.algo,
                ws_ptr as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as sys::cudaStream_t,
            )
            .map_err(cublas("cublasLtMatmul"))?;
        }
        Ok(())
    }
}
