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
    NvrtcNotFound(String),
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
    /// NVRTC's log (warnings) of the CUBIN compilation; empty when clean.
    pub log: String,
}

impl Compiled {
    /// Whether driver 580 (CUDA 13.0) can JIT this PTX.
    pub fn ptx_loads_on_cuda_13_0(&self) -> bool {
        self.ptx_isa <= MAX_PTX_ISA
    }
}

/// NVRTC, loaded once; `Err` (never a panic) when it cannot be found.
pub fn nvrtc() -> Result<Nvrtc, CompileError> {
    static LOADED: OnceLock<Result<Nvrtc, String>> = OnceLock::new();
    LOADED
        .get_or_init(load_nvrtc)
        .clone()
        .map_err(CompileError::NvrtcNotFound)
}

fn load_nvrtc() -> Result<Nvrtc, String> {
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
        return Err(
            "libnvrtc not loadable: set SCINTERP_NVRTC_LIB to the folder holding libnvrtc.so.13, or \
                    add it to LD_LIBRARY_PATH"
                .to_string(),
        );
    }
    let (mut major, mut minor) = (0 as c_int, 0 as c_int);
    // SAFETY: the library is present; nvrtcVersion writes two ints.
    let code = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if code != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {code:?}"));
    }
    Ok(Nvrtc { major, minor })
}

/// dlopen by full path with RTLD_GLOBAL, kept open for the life of the process.
fn dlopen_global(path: &Path) -> Result<(), String> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
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
        return Err(format!(
            "cannot load {} (SCINTERP_NVRTC_LIB): {why}",
            path.display()
        ));
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
    let (cubin, log) = run_nvrtc(kernel, CUBIN_ARCH, Output::Cubin)?;
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
    })
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

fn options(arch: &str) -> Vec<String> {
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".into(),
        "--fmad=true".into(),
    ];
    if let Some(dir) = cuda_include_dir() {
        opts.push(format!("--include-path={}", dir.display()));
    }
    opts
}

/// `SCINTERP_CUDA_INCLUDE`, else the wheel layout's `include` beside `SCINTERP_NVRTC_LIB`.
pub fn cuda_include_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SCINTERP_CUDA_INCLUDE") {
        return Some(PathBuf::from(dir));
    }
    let lib = PathBuf::from(std::env::var_os("SCINTERP_NVRTC_LIB")?);
    let include = lib.parent()?.join("include");
    include.join("cuda_fp16.h").is_file().then_some(include)
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
    let opts: Vec<CString> = options(arch)
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

    /// CI runs this with the NVRTC 13.0 wheel (see `.ci/run`); elsewhere it says it skipped.
    #[test]
    fn every_kernel_compiles_with_nvrtc_for_sm_90() {
        let nv = match nvrtc() {
            Ok(nv) => nv,
            Err(e) => {
                println!("skipped: {e}");
                return;
            }
        };
        println!("NVRTC {}.{}", nv.major, nv.minor);
        let compiled = compile_all().unwrap_or_else(|e| panic!("{e}"));
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
}
