//! GEMMs on the GPU through cuBLASLt, row-major throughout, in bf16 or f16 with f32 accumulation (or
//! exact f32):
//! - [`CublasLt::linear`]: `y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias) (ReLU)`, the PyTorch weight layout;
//! - [`CublasLt::weight_grad`]: `y[M,N] (+)= g[K,M]ᵀ · h[K,N]`, a weight gradient summed over K batch
//!   rows (the TopK SAE's `dW = Gᵀ·H`, with the weight layout `[M,N]` = one row per latent).
//!
//! cuBLASLt rebuilds its descriptors and reruns its algorithm heuristic on every call when used naively;
//! a forward pass calls the same few shapes thousands of times, so [`CublasLt`] keeps one [`Plan`]
//! (matmul descriptor, three layouts, the chosen algorithm) per (shape, orientation, types, epilogue) and
//! only rebinds the bias pointer per call.
//!
//! Column-major view (cuBLAS): a row-major `[R,C]` matrix is, byte for byte, the column-major `[C,R]`
//! matrix with leading dimension C, its transpose. So row-major `y = L·R` is column-major `yᵀ = Rᵀ·Lᵀ`:
//! cuBLASLt's A is always the right operand (`W`, `h`), its B the left one (`x`, `g`), and its D is `y`
//! seen as `[N,M]` with ld N; the bias (one value per output feature) is cuBLASLt's per-row bias of D.
//! [`Orientation::operands`] states the transposes and layouts of each kind; no copies or transposes
//! are made. The CPU emulator tests replay exactly those operands through a column-major reference GEMM
//! (kernels/emu/tests/emulated/gemm.rs and sae.rs), so everything but cuBLASLt itself is checked off-GPU.
//!
//! Reproducibility: cuBLAS documents bit-identical results run to run on the same architecture and SM
//! count for one active stream, and for `cublasLtMatmul` with a user-owned workspace, as here; the cached
//! plan fixes the algorithm per shape.
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

/// Which product a call computes, in row-major terms (see the module comment for the column-major view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Orientation {
    /// `y[M,N] = x[M,K] · w[N,K]ᵀ`: a linear layer ([`CublasLt::linear`]).
    Linear,
    /// `y[M,N] = g[K,M]ᵀ · h[K,N]`: a weight gradient over K rows ([`CublasLt::weight_grad`]).
    WeightGrad,
}

/// One column-major matrix as cuBLASLt's layout describes it (`cublasLtMatrixLayoutCreate`):
/// `rows × cols`, element `(i, j)` at `i + j·ld`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LtLayout {
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
}

/// Everything a call tells cuBLASLt about its operands: `D = op(A)·op(B)` (`+ β·D`), with `op` the
/// transpose where `trans_*` is set. A is the caller's right operand (`w` or `h`), B the left (`x` or
/// `g`), D the output `y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LtOperands {
    pub trans_a: bool,
    pub trans_b: bool,
    pub a: LtLayout,
    pub b: LtLayout,
    pub d: LtLayout,
}

impl Orientation {
    /// The transposes and layouts of a call of this orientation at `shape`.
    pub fn operands(self, shape: LinearShape) -> LtOperands {
        let LinearShape { m, n, k } = shape;
        let (m, n, k) = (m as u64, n as u64, k as u64);
        let layout = |rows: u64, cols: u64| LtLayout {
            rows,
            cols,
            ld: rows as i64,
        };
        // D = yᵀ: row-major y[M,N] is column-major [N,M], ld N.
        let d = layout(n, m);
        match self {
            // yᵀ = w·xᵀ. w[N,K] row-major is stored as column-major [K,N] (= wᵀ): transpose it back.
            // x[M,K] row-major is stored as column-major [K,M] = xᵀ, already what is needed.
            Orientation::Linear => LtOperands {
                trans_a: true,
                trans_b: false,
                a: layout(k, n),
                b: layout(k, m),
                d,
            },
            // yᵀ = hᵀ·g. h[K,N] row-major is stored as column-major [N,K] = hᵀ, as needed. g[K,M]
            // row-major is stored as column-major [M,K] = gᵀ: transpose it back to [K,M].
            Orientation::WeightGrad => LtOperands {
                trans_a: false,
                trans_b: true,
                a: layout(n, k),
                b: layout(m, k),
                d,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    shape: LinearShape,
    orientation: Orientation,
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
        let ops = key.orientation.operands(key.shape);
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
        // cublasOperation_t as an int32: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        let (trans_a, trans_b) = (i32::from(ops.trans_a), i32::from(ops.trans_b));
        let epilogue = key.epilogue.cublaslt();
        // SAFETY: live descriptor; each buffer pointer and size describe one value of the attribute type.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&trans_a as *const i32).cast(),
                size_of::<i32>(),
            )
            .map_err(cublas("TRANSA"))?;
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                (&trans_b as *const i32).cast(),
                size_of::<i32>(),
            )
            .map_err(cublas("TRANSB"))?;
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                (&epilogue as *const sys::cublasLtEpilogue_t).cast(),
                size_of::<sys::cublasLtEpilogue_t>(),
            )
            .map_err(cublas("EPILOGUE"))?;
        }
        let layout = |t: sys::cudaDataType, l: LtLayout, what: &'static str| {
            lt::create_matrix_layout(t, l.rows, l.cols, l.ld).map_err(cublas(what))
        };
        plan.a = layout(types.input, ops.a, "layout A")?;
        plan.b = layout(types.input, ops.b, "layout B")?;
        plan.d = layout(types.output, ops.d, "layout D")?;

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
        self.matmul(
            "cublasLt linear",
            Orientation::Linear,
            (x, w),
            bias,
            y,
            shape,
            epilogue,
            false,
        )
    }

    /// `y[M,N] = g[K,M]ᵀ · h[K,N]` (all row-major), or `y += gᵀ·h` when `accumulate` (β = 1): a weight
    /// gradient summed over K batch rows, e.g. the TopK SAE's `dW_dec = Cᵀ·e` (`g` = the dense code
    /// coefficients `[rows, d_sae]`, `h` = the residual `[rows, d_in]`, `y` = `[d_sae, d_in]`). Types as
    /// in [`CublasLt::linear`]; `shape` = `{ m: M, n: N, k: K }` (the buffer checks read `x` as `g` and
    /// `w` as `h`). Same bits on every run for a given shape (see the module comment).
    pub fn weight_grad<I: GemmScalar, O: GemmScalar>(
        &self,
        g: &CudaSlice<I>,
        h: &CudaSlice<I>,
        y: &mut CudaSlice<O>,
        shape: LinearShape,
        accumulate: bool,
    ) -> Result<(), GpuError> {
        self.matmul(
            "cublasLt weight_grad",
            Orientation::WeightGrad,
            (g, h),
            None,
            y,
            shape,
            Epilogue::None,
            accumulate,
        )
    }

    /// One cuBLASLt call: `y (+)= left ⊗ right` in `orientation`, through the cached plan.
    #[allow(clippy::too_many_arguments)]
    fn matmul<I: GemmScalar, O: GemmScalar>(
        &self,
        kernel: &'static str,
        orientation: Orientation,
        (left, right): (&CudaSlice<I>, &CudaSlice<I>),
        bias: Option<&CudaSlice<O>>,
        y: &mut CudaSlice<O>,
        shape: LinearShape,
        epilogue: Epilogue,
        accumulate: bool,
    ) -> Result<(), GpuError> {
        let bad = |reason: String| GpuError::BadArgs { kernel, reason };
        // Both orientations read m·k left values, n·k right values and write m·n.
        shape.check(kernel, (left.len(), right.len(), y.len()), bias.map(|b| b.len()))?;
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
            orientation,
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
        // cuBLASLt's A is the right operand, its B the left (see `Orientation::operands`).
        let (a_ptr, _a_guard) = right.device_ptr(stream);
        let (b_ptr, _b_guard) = left.device_ptr(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let (ws_ptr, _ws_guard) = self.workspace.device_ptr(stream);
        let (y_ptr, _y_guard) = y.device_ptr_mut(stream);
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
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
                a_ptr as *const c_void,
                plan.a,
                b_ptr as *const c_void,
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
