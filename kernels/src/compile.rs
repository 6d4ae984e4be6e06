//! NVRTC compilation of the registry: an sm_90 CUBIN (H100/H200, no JIT at load) and a compute_90 PTX
//! fallback for every kernel.
//!
//! PTX ISA: we target the ISA NVRTC **13.0** emits, `.version 9.0`, because the GPU hosts run driver 580
//! (CUDA 13.0), which rejects newer PTX (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`, e.g. ISA 9.2 from NVRTC
//! 13.2). [`Compiled::ptx_isa`] is read from the PTX itself and checked against [`MAX_PTX_ISA`], so a
//! newer NVRTC is caught at compile time, not on the GPU. The CUBIN for sm_90 loads regardless.
//!
//! Library lookup: cudarc panics when it cannot load libnvrtc, so [`nvrtc`] checks first and returns
//! `Err`. `SCINTERP_NVRTC_LIB` names a folder holding `libnvrtc.so.13` (the `nvidia-cuda-nvrtc` wheel's
//! `nvidia/cu13/lib`); it is dlopened by full path, after which cudarc's own `dlopen("libnvrtc.so.13")`
//! finds it by soname. Without the variable, the system loader (LD_LIBRARY_PATH, ldconfig) decides.
//! `SCINTERP_CUDA_INCLUDE` names the CUDA headers folder (`cuda_bf16.h`, `mma.h`, …) of the
//! `nvidia-cuda-runtime` wheel; when unset, `$SCINTERP_NVRTC_LIB/../include` is used if it holds them.
//!
//! The build script compiles every kernel with this same module and embeds the results (see `embedded`);
//! the library calls it at run time only for a binary built without NVRTC.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::sys;
use thiserror::Error;

use crate::registry::{Kernel, HEADERS, KERNELS};

/// GPU architecture of the CUBIN (H100 and H200 are both sm_90).
pub const CUBIN_ARCH: &str = "sm_90";
/// Virtual architecture of the PTX fallback.
pub const PTX_ARCH: &str = "compute_90";
/// Newest PTX ISA that driver 580 (CUDA 13.0) loads.
pub const MAX_PTX_ISA: (u32, u32) = (9, 0);

#[derive(Debug, Error)]
pub enum CompileError {
    #[error("NVRTC not found ({0})")]
    NvrtcNotFound(#[from] NvrtcLoadError),
    #[error("NVRTC {call} failed for {kernel}: {code:?}")]
    Nvrtc {
        kernel: String,
        call: &'static str,
        code: sys::nvrtcResult,
    },
    #[error("{kernel} does not compile for {arch}:\n{log}")]
    Source {
        kernel: String,
        arch: String,
        log: String,
    },
    #[error("{kernel}: {what} contains a NUL byte")]
    Nul { kernel: String, what: &'static str },
    #[error("{kernel}: PTX has no `.version` line")]
    NoPtxVersion { kernel: String },
    #[error(
        "{kernel} includes CUDA headers (cuda_bf16.h, mma.h), but no CUDA include folder was found \
         (looked in: {looked}); set SCINTERP_CUDA_INCLUDE to a folder holding cuda_bf16.h, e.g. the \
         nvidia-cuda-runtime wheel's nvidia/cu13/include or /usr/local/cuda/include"
    )]
    NoCudaHeaders { kernel: String, looked: String },
}

/// Why libnvrtc could not be loaded (kept once per process, hence `Clone`).
#[derive(Debug, Clone, Error)]
pub enum NvrtcLoadError {
    #[error("{} contains a NUL byte", .0.display())]
    NulInPath(PathBuf),
    #[error("cannot load {} (SCINTERP_NVRTC_LIB): {why}", path.display())]
    Dlopen { path: PathBuf, why: String },
    #[error(
        "libnvrtc not loadable: set SCINTERP_NVRTC_LIB to the folder holding libnvrtc.so.13, or \
         add it to LD_LIBRARY_PATH"
    )]
    NotLoadable,
    #[error("nvrtcVersion failed: {0:?}")]
    Version(sys::nvrtcResult),
}

/// The loaded NVRTC and its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nvrtc {
    pub major: i32,
    pub minor: i32,
}

/// One kernel compiled for [`CUBIN_ARCH`] and [`PTX_ARCH`].
#[derive(Debug, Clone)]
pub struct Compiled {
    pub kernel: &'static Kernel,
    pub cubin: Vec<u8>,
    /// NUL-free PTX text.
    pub ptx: String,
    /// ISA from the PTX's `.version` line.
    pub ptx_isa: (u32, u32),
    /// NVRTC's log (warnings) of the CUBIN compilation, without ptxas' resource report; empty when clean.
    pub log: String,
    /// What ptxas reported for each entry point of the sm_90 CUBIN.
    pub resources: Vec<Resources>,
}

/// ptxas' resource report for one entry point (`--ptxas-options=-v`): what decides whether a launch
/// fits an SM (registers × threads ≤ 65,536, static shared memory ≤ 48 KiB) and whether it spills.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub entry: String,
    pub registers: u32,
    pub stack_frame_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    /// Static shared memory; launches may add dynamic shared memory on top.
    pub static_smem_bytes: u32,
}

/// Splits NVRTC's CUBIN log into ptxas' per-entry resource report and the rest (real warnings).
pub fn parse_ptxas_report(log: &str) -> (Vec<Resources>, String) {
    let mut entries: Vec<Resources> = Vec::new();
    let mut rest = Vec::new();
    // The number before `unit` in `text` ("0 bytes spill stores" → 0 for unit "bytes spill stores").
    fn number_before(text: &str, unit: &str) -> Option<u32> {
        let head = &text[..text.find(unit)?];
        head.split(|c: char| !c.is_ascii_digit())
            .rfind(|t| !t.is_empty())?
            .parse()
            .ok()
    }
    for line in log.lines() {
        let trimmed = line.trim();
        if !trimmed.starts_with("ptxas") {
            if !trimmed.is_empty() {
                rest.push(line);
            }
            continue;
        }
        if let Some(tail) = trimmed.split("Compiling entry function '").nth(1) {
            let name = tail.split('\'').next().unwrap_or_default();
            entries.push(Resources {
                entry: name.to_string(),
                ..Resources::default()
            });
        } else if let Some(current) = entries.last_mut() {
            if trimmed.contains("spill stores") {
                current.stack_frame_bytes = number_before(trimmed, "bytes stack frame").unwrap_or(0);
                current.spill_store_bytes = number_before(trimmed, "bytes spill stores").unwrap_or(0);
                current.spill_load_bytes = number_before(trimmed, "bytes spill loads").unwrap_or(0);
            } else if trimmed.contains("Used ") && trimmed.contains("registers") {
                current.registers = number_before(trimmed, "registers").unwrap_or(0);
                current.static_smem_bytes = number_before(trimmed, "bytes smem").unwrap_or(0);
            }
        }
    }
    (entries, rest.join("\n"))
}

impl Compiled {
    /// Whether driver 580 (CUDA 13.0) can JIT this PTX.
    pub fn ptx_loads_on_cuda_13_0(&self) -> bool {
        self.ptx_isa <= MAX_PTX_ISA
    }
}

/// NVRTC, loaded once; `Err` (never a panic) when it cannot be found.
pub fn nvrtc() -> Result<Nvrtc, CompileError> {
    static LOADED: OnceLock<Result<Nvrtc, NvrtcLoadError>> = OnceLock::new();
    Ok(LOADED.get_or_init(load_nvrtc).clone()?)
}

fn load_nvrtc() -> Result<Nvrtc, NvrtcLoadError> {
    if let Some(dir) = std::env::var_os("SCINTERP_NVRTC_LIB") {
        let dir = PathBuf::from(dir);
        // The builtins first: libnvrtc dlopens them by soname, which then resolves to this copy even
        // when the folder is not on LD_LIBRARY_PATH.
        for name in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
            dlopen_global(&dir.join(name))?;
        }
    }
    // SAFETY: only dlopen/dlclose of well-known library names.
    if !unsafe { sys::is_culib_present() } {
        return Err(NvrtcLoadError::NotLoadable);
    }
    let (mut major, mut minor) = (0 as c_int, 0 as c_int);
    // SAFETY: the library is present; nvrtcVersion writes two ints.
    let code = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if code != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(NvrtcLoadError::Version(code));
    }
    Ok(Nvrtc { major, minor })
}

/// dlopen by full path with RTLD_GLOBAL, kept open for the life of the process.
fn dlopen_global(path: &Path) -> Result<(), NvrtcLoadError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| NvrtcLoadError::NulInPath(path.to_path_buf()))?;
    // SAFETY: a NUL-terminated path; the handle is deliberately leaked so the library stays loaded.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local NUL-terminated string or null.
        let err = unsafe { libc::dlerror() };
        let why = if err.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-null, NUL-terminated, valid until the next dl* call on this thread.
            unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned()
        };
        return Err(NvrtcLoadError::Dlopen {
            path: path.to_path_buf(),
            why,
        });
    }
    Ok(())
}

/// Compile every registered kernel.
pub fn compile_all() -> Result<Vec<Compiled>, CompileError> {
    KERNELS.iter().map(compile).collect()
}

/// Compile one kernel to an sm_90 CUBIN and a compute_90 PTX.
pub fn compile(kernel: &'static Kernel) -> Result<Compiled, CompileError> {
    nvrtc()?;
    if needs_cuda_headers(kernel) && cuda_include_dir().is_none() {
        return Err(CompileError::NoCudaHeaders {
            kernel: kernel.name.into(),
            looked: include_candidates()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let (cubin, log) = run_nvrtc(kernel, CUBIN_ARCH, Output::Cubin)?;
    let (resources, log) = parse_ptxas_report(&log);
    let (ptx, _) = run_nvrtc(kernel, PTX_ARCH, Output::Ptx)?;
    let ptx = String::from_utf8_lossy(&ptx).trim_end_matches('\0').to_string();
    let ptx_isa = ptx_version(&ptx).ok_or_else(|| CompileError::NoPtxVersion {
        kernel: kernel.name.into(),
    })?;
    Ok(Compiled {
        kernel,
        cubin,
        ptx,
        ptx_isa,
        log,
        resources,
    })
}

/// Whether a kernel (or a header it includes) pulls in CUDA's own headers (`#include <…>`).
fn needs_cuda_headers(kernel: &Kernel) -> bool {
    std::iter::once(kernel.source)
        .chain(HEADERS.iter().map(|(_, text)| *text))
        .any(|text| text.lines().any(|l| l.trim_start().starts_with("#include <")))
}

/// `.version X.Y` of a PTX text.
pub fn ptx_version(ptx: &str) -> Option<(u32, u32)> {
    let line = ptx.lines().map(str::trim).find(|l| l.starts_with(".version"))?;
    let (major, minor) = line.strip_prefix(".version")?.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[derive(Clone, Copy)]
enum Output {
    Cubin,
    Ptx,
}

fn options(arch: &str, output: Output) -> Vec<String> {
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".into(),
        "--fmad=true".into(),
    ];
    if matches!(output, Output::Cubin) {
        // ptxas' per-entry registers, spills and shared memory, read back by `parse_ptxas_report`.
        opts.push("--ptxas-options=-v".into());
    }
    if let Some(dir) = cuda_include_dir() {
        opts.push(format!("--include-path={}", dir.display()));
    }
    opts
}

/// The CUDA headers folder: `SCINTERP_CUDA_INCLUDE` when set, else the first of
/// [`include_candidates`] that holds `cuda_bf16.h`.
pub fn cuda_include_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SCINTERP_CUDA_INCLUDE") {
        return Some(PathBuf::from(dir));
    }
    include_candidates()
        .into_iter()
        .find(|dir| dir.join("cuda_bf16.h").is_file())
}

/// Where CUDA headers are looked for, in order: `include` beside `SCINTERP_NVRTC_LIB` (the wheels'
/// `nvidia/cu13/{lib,include}` layout), beside the libnvrtc actually loaded (e.g. PyTorch's wheel found
/// through LD_LIBRARY_PATH, or a toolkit's `lib64`), then `$CUDA_HOME`, `$CUDA_PATH` and
/// `/usr/local/cuda`.
pub fn include_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut beside = |lib_dir: &Path| {
        if let Some(parent) = lib_dir.parent() {
            dirs.push(parent.join("include"));
        }
    };
    if let Some(lib) = std::env::var_os("SCINTERP_NVRTC_LIB") {
        beside(Path::new(&lib));
    }
    if let Some(lib) = loaded_nvrtc_path() {
        if let Some(lib_dir) = lib.parent() {
            beside(lib_dir);
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            dirs.push(PathBuf::from(root).join("include"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    dirs.dedup();
    dirs
}

/// The file of the libnvrtc this process has loaded, if any (dladdr of one of its symbols).
pub fn loaded_nvrtc_path() -> Option<PathBuf> {
    if nvrtc().is_err() {
        return None;
    }
    for soname in [c"libnvrtc.so.13", c"libnvrtc.so"] {
        // SAFETY: RTLD_NOLOAD only returns a handle to a library already loaded (nvrtc() loaded it);
        // dlsym/dladdr read the loader's tables; the extra reference is released right away.
        unsafe {
            let handle = libc::dlopen(soname.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
            if handle.is_null() {
                continue;
            }
            let symbol = libc::dlsym(handle, c"nvrtcVersion".as_ptr());
            let mut info: libc::Dl_info = std::mem::zeroed();
            let found =
                !symbol.is_null() && libc::dladdr(symbol, &mut info) != 0 && !info.dli_fname.is_null();
            let path =
                found.then(|| PathBuf::from(CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned()));
            libc::dlclose(handle);
            if path.is_some() {
                return path;
            }
        }
    }
    None
}

/// One NVRTC program → its CUBIN or PTX bytes, plus the log.
fn run_nvrtc(kernel: &Kernel, arch: &str, output: Output) -> Result<(Vec<u8>, String), CompileError> {
    let nul = |what| CompileError::Nul {
        kernel: kernel.name.into(),
        what,
    };
    let fail = |call, code| CompileError::Nvrtc {
        kernel: kernel.name.into(),
        call,
        code,
    };
    let src = CString::new(kernel.source).map_err(|_| nul("source"))?;
    let name = CString::new(format!("{}.cu", kernel.name)).map_err(|_| nul("name"))?;
    let headers: Vec<CString> = HEADERS
        .iter()
        .map(|(_, s)| CString::new(*s))
        .collect::<Result<_, _>>()
        .map_err(|_| nul("header"))?;
    let header_names: Vec<CString> = HEADERS
        .iter()
        .map(|(n, _)| CString::new(*n))
        .collect::<Result<_, _>>()
        .map_err(|_| nul("header"))?;
    let header_ptrs: Vec<*const c_char> = headers.iter().map(|h| h.as_ptr()).collect();
    let header_name_ptrs: Vec<*const c_char> = header_names.iter().map(|h| h.as_ptr()).collect();
    let opts: Vec<CString> = options(arch, output)
        .into_iter()
        .map(CString::new)
        .collect::<Result<_, _>>()
        .map_err(|_| nul("option"))?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is to a live NUL-terminated string; counts match the arrays.
    let code = unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            name.as_ptr(),
            header_ptrs.len() as c_int,
            header_ptrs.as_ptr(),
            header_name_ptrs.as_ptr(),
        )
    };
    if code != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(fail("nvrtcCreateProgram", code));
    }
    // Destroy the program on every path out of here.
    struct Program(sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: created above, destroyed once.
            unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
        }
    }
    let prog = Program(prog);

    // SAFETY: valid program; options are live NUL-terminated strings.
    let compiled = unsafe { sys::nvrtcCompileProgram(prog.0, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    let log = program_log(prog.0).map_err(|c| fail("nvrtcGetProgramLog", c))?;
    if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CompileError::Source {
            kernel: kernel.name.into(),
            arch: arch.into(),
            log,
        });
    }
    let mut size = 0usize;
    // SAFETY: valid, compiled program; writes one usize.
    let (code, call) = unsafe {
        match output {
            Output::Cubin => (sys::nvrtcGetCUBINSize(prog.0, &mut size), "nvrtcGetCUBINSize"),
            Output::Ptx => (sys::nvrtcGetPTXSize(prog.0, &mut size), "nvrtcGetPTXSize"),
        }
    };
    if code != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(fail(call, code));
    }
    let mut bytes = vec![0u8; size];
    // SAFETY: the buffer holds exactly the size NVRTC reported.
    let (code, call) = unsafe {
        match output {
            Output::Cubin => (
                sys::nvrtcGetCUBIN(prog.0, bytes.as_mut_ptr().cast()),
                "nvrtcGetCUBIN",
            ),
            Output::Ptx => (sys::nvrtcGetPTX(prog.0, bytes.as_mut_ptr().cast()), "nvrtcGetPTX"),
        }
    };
    if code != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(fail(call, code));
    }
    Ok((bytes, log.trim().to_string()))
}

fn program_log(prog: sys::nvrtcProgram) -> Result<String, sys::nvrtcResult> {
    let mut size = 0usize;
    // SAFETY: valid program; the buffer holds exactly the reported size.
    unsafe {
        let code = sys::nvrtcGetProgramLogSize(prog, &mut size);
        if code != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(code);
        }
        let mut buf = vec![0u8; size.max(1)];
        let code = sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr().cast());
        if code != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(code);
        }
        Ok(String::from_utf8_lossy(&buf).trim_end_matches('\0').to_string())
    }
}

/// For tests that need NVRTC: prints why they skipped, except under `CI=true`, where `.ci/run`
/// installs the NVRTC 13.0 wheels and a missing NVRTC or header folder is a failure.
#[cfg(test)]
pub(crate) fn skip_without_nvrtc(test: &str, why: &dyn std::fmt::Display) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: NVRTC is required under CI=true (.ci/run installs it): {why}");
    }
    crate::print_skip(test, why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptx_version_reads_the_header() {
        let ptx = "//\n// Generated by NVIDIA NVVM Compiler\n.version 9.0\n.target sm_90\n";
        assert_eq!(ptx_version(ptx), Some((9, 0)));
        assert_eq!(ptx_version(".target sm_90"), None);
        assert_eq!(ptx_version(".version nine"), None);
    }

    #[test]
    fn ptxas_report_is_split_from_the_log() {
        let log = "ptxas info    : 0 bytes gmem\n\
                   ptxas info    : Compiling entry function 'k_a' for 'sm_90'\n\
                   ptxas info    : Function properties for k_a\n\
                   ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
                   ptxas info    : Used 128 registers, used 1 barriers, 33024 bytes smem\n\
                   ptxas info    : Compile time = 895.223 ms\n\
                   a.cu(3): warning #177-D: variable \"x\" was declared but never referenced\n\
                   ptxas info    : Compiling entry function 'k_b' for 'sm_90'\n\
                   ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
                   ptxas info    : Used 24 registers, used 0 barriers\n";
        let (resources, rest) = parse_ptxas_report(log);
        assert_eq!(
            resources,
            vec![
                Resources {
                    entry: "k_a".into(),
                    registers: 128,
                    stack_frame_bytes: 8,
                    spill_store_bytes: 4,
                    spill_load_bytes: 12,
                    static_smem_bytes: 33024,
                },
                Resources {
                    entry: "k_b".into(),
                    registers: 24,
                    ..Resources::default()
                },
            ]
        );
        assert!(rest.starts_with("a.cu(3): warning #177-D"), "{rest}");
        assert!(!rest.contains("ptxas"), "{rest}");
    }

    #[test]
    fn the_include_lookup_ends_with_the_toolkit_default() {
        let candidates = include_candidates();
        assert_eq!(
            candidates.last().map(PathBuf::as_path),
            Some(Path::new("/usr/local/cuda/include"))
        );
        // Only real kernels that include CUDA headers need them.
        assert!(KERNELS.iter().any(needs_cuda_headers));
    }

    /// Register budgets recorded from ptxas (NVRTC 13.0, sm_90) and the most threads any launch wrapper
    /// in `gpu/` gives the entry point (1,024 where the block size depends on the shape). A kernel whose
    /// registers grow past its budget fails here, on the CPU, before a GPU launch fails with "too many
    /// resources requested"; raise a budget only after checking the launch still fits.
    const BUDGETS: &[(&str, u32, u32)] = &[
        ("add_layer_norm_f32", 24, 1024),
        ("attention_varlen_f32", 128, 128),
        ("attention_varlen_bf16", 112, 128),
        ("bias_relu_f32", 32, 256),
        ("f16_to_f32", 16, 256),
        ("f32_to_f16", 16, 256),
        ("bf16_to_f32", 16, 256),
        ("f32_to_bf16", 16, 256),
        ("embed_bert_gather_f32", 32, 256),
        ("linear_bf16_bf16out", 64, 256),
        ("linear_bf16_f32out", 64, 256),
        ("hook_edits_bf16", 40, 1024),
        ("hook_edits_f32", 40, 1024),
        ("sum_squares_f64", 24, 256),
        ("adam_f32", 32, 256),
        ("sub_row_vector_f32", 32, 256),
        ("sae_dead_mask", 16, 256),
        ("sae_fire_counters_reset", 32, 256),
        ("sae_fire_counters_add", 16, 256),
        ("sae_renormalise_rows_f32", 32, 1024),
        ("sae_remove_parallel_grad_f32", 32, 1024),
        ("sae_grad_b_dec_f32", 32, 512),
        ("sae_dense_scatter_f32", 24, 256),
        ("sae_dense_scatter_bf16", 24, 256),
        ("sae_col_sum_f32", 32, 512),
        ("sae_col_sum_bf16", 32, 512),
        ("sae_grad_pre_f32", 32, 1024),
        ("sae_aux_residual_f32", 40, 1024),
        ("sae_residual_f32", 40, 1024),
        ("sae_decode_bf16", 40, 1024),
        ("sae_decode_f32", 40, 1024),
        ("sae_topk_masked_f32", 32, 1024),
        ("sae_topk_f32", 32, 1024),
        ("trace_reduce", 48, 1024),
        ("trace_ablate_f32", 32, 1024),
        ("trace_gather_rows_f32", 24, 256),
        ("trace_code_sums", 24, 256),
    ];

    /// CI runs this with the NVRTC 13.0 wheels (see `.ci/run`), where a missing NVRTC fails;
    /// elsewhere it says it skipped.
    #[test]
    fn every_kernel_compiles_with_nvrtc_for_sm_90() {
        let nv = match nvrtc() {
            Ok(nv) => nv,
            Err(e) => return skip_without_nvrtc("every_kernel_compiles_with_nvrtc_for_sm_90", &e),
        };
        println!("NVRTC {}.{}", nv.major, nv.minor);
        let compiled = match compile_all() {
            Err(e @ CompileError::NoCudaHeaders { .. }) => {
                return skip_without_nvrtc("every_kernel_compiles_with_nvrtc_for_sm_90", &e)
            }
            other => other.unwrap_or_else(|e| panic!("{e}")),
        };
        assert_eq!(compiled.len(), KERNELS.len());
        for c in &compiled {
            // A CUBIN is an ELF file whose symbol table names every extern "C" kernel.
            assert_eq!(&c.cubin[..4], b"\x7fELF", "{}: CUBIN is not ELF", c.kernel.name);
            assert!(
                c.ptx.contains(&format!(".target {}", CUBIN_ARCH)),
                "{}: PTX target",
                c.kernel.name
            );
            for e in c.kernel.entry_points {
                assert!(
                    c.ptx.contains(&format!(".entry {e}(")),
                    "{}: no PTX entry {e}",
                    c.kernel.name
                );
                assert!(
                    c.cubin.windows(e.len()).any(|w| w == e.as_bytes()),
                    "{}: CUBIN lacks symbol {e}",
                    c.kernel.name
                );
            }
            assert!(
                c.ptx_loads_on_cuda_13_0(),
                "{}: PTX ISA {}.{} is newer than {}.{}, which driver 580 (CUDA 13.0) rejects; pin \
                 nvidia-cuda-nvrtc==13.0.*",
                c.kernel.name,
                c.ptx_isa.0,
                c.ptx_isa.1,
                MAX_PTX_ISA.0,
                MAX_PTX_ISA.1
            );
            check_resources(c);
            println!(
                "compiled {:<16} CUBIN {} {:>6} B, PTX {} ISA {}.{} {:>6} B, entry points {:?}{}",
                c.kernel.name,
                CUBIN_ARCH,
                c.cubin.len(),
                PTX_ARCH,
                c.ptx_isa.0,
                c.ptx_isa.1,
                c.ptx.len(),
                c.kernel.entry_points,
                if c.log.is_empty() {
                    String::new()
                } else {
                    format!("\n  log: {}", c.log)
                }
            );
        }
    }

    /// Every entry point: no spills, static shared memory within the 48 KiB a launch gets without
    /// opting in, registers within its recorded budget and, at the most threads it is launched with,
    /// within the SM's 65,536.
    fn check_resources(c: &Compiled) {
        let name = c.kernel.name;
        let mut reported: Vec<&str> = c.resources.iter().map(|r| r.entry.as_str()).collect();
        reported.sort_unstable();
        let mut expected: Vec<&str> = c.kernel.entry_points.to_vec();
        expected.sort_unstable();
        assert_eq!(reported, expected, "{name}: ptxas reported other entry points");
        for r in &c.resources {
            println!(
                "  {:<30} {:>3} registers, {:>5} B static smem, {} B stack, spills {}/{} B",
                r.entry,
                r.registers,
                r.static_smem_bytes,
                r.stack_frame_bytes,
                r.spill_store_bytes,
                r.spill_load_bytes
            );
            let (_, budget, threads) = BUDGETS
                .iter()
                .find(|(entry, _, _)| *entry == r.entry)
                .unwrap_or_else(|| panic!("{}: no register budget recorded in BUDGETS", r.entry));
            assert_eq!(
                (r.spill_store_bytes, r.spill_load_bytes),
                (0, 0),
                "{}: ptxas spills registers",
                r.entry
            );
            assert!(
                r.static_smem_bytes <= 48 * 1024,
                "{}: {} B static smem",
                r.entry,
                r.static_smem_bytes
            );
            assert!(
                r.registers <= *budget,
                "{}: {} registers > budget {budget}",
                r.entry,
                r.registers
            );
            assert!(
                r.registers * threads <= 65_536,
                "{}: {} registers × {threads} threads exceed the SM's register file",
                r.entry,
                r.registers
            );
        }
    }
}
