//! Compiles every registry kernel with NVRTC 13.0 and embeds the sm_90 CUBIN and compute_90 PTX.
//!
//! Uses the library's own `registry` and `compile` modules, so build time and run time compile the same
//! way. NVRTC is found as at run time (`SCINTERP_NVRTC_LIB`, else the system loader). Without it the build
//! embeds nothing and says so; with it, a kernel that does not compile fails the build with NVRTC's log.

#[allow(dead_code)]
#[path = "src/registry.rs"]
mod registry;

#[allow(dead_code)]
#[path = "src/compile.rs"]
mod compile;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The table of a build that embeds nothing (kernels then compile at run time).
const EMPTY_TABLE: &str =
    "pub const NVRTC_AT_BUILD: Option<(i32, i32)> = None;\npub const EMBEDDED: &[Embedded] = &[];\n";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/registry.rs");
    println!("cargo:rerun-if-changed=src/compile.rs");
    for entry in std::fs::read_dir("src").expect("kernels/src") {
        let path = entry.expect("kernels/src entry").path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    for var in [
        "SCINTERP_NVRTC_LIB",
        "SCINTERP_CUDA_INCLUDE",
        "LD_LIBRARY_PATH",
        "CUDA_HOME",
        "CUDA_PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let table = match compile::nvrtc() {
        Ok(nv) if compile::cuda_include_dir().is_some() => embed_all(&out, (nv.major, nv.minor)),
        Ok(nv) => {
            // NVRTC alone (e.g. PyTorch's wheel on LD_LIBRARY_PATH) cannot compile kernels that include
            // cuda_bf16.h / mma.h: build without embedded kernels rather than fail, and say why.
            println!(
                "cargo:warning=kernels not embedded: NVRTC {}.{} found ({}) but no CUDA headers \
                 (cuda_bf16.h) in any of: {}; set SCINTERP_CUDA_INCLUDE",
                nv.major,
                nv.minor,
                compile::loaded_nvrtc_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "path unknown".into()),
                compile::include_candidates()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            EMPTY_TABLE.to_string()
        }
        Err(e) => {
            if std::env::var_os("SCINTERP_NVRTC_LIB").is_some() {
                // Asked for and missing: say so loudly, but still build (the run-time path remains).
                println!("cargo:warning=kernels not embedded: {e}");
            }
            EMPTY_TABLE.to_string()
        }
    };
    std::fs::write(out.join("embedded.rs"), table).expect("write embedded.rs");
}

/// Compile every kernel (two threads: one CUBIN and one PTX program each) and return the table source.
fn embed_all(out: &Path, nvrtc: (i32, i32)) -> String {
    let compiled: Vec<compile::Compiled> = std::thread::scope(|s| {
        let jobs: Vec<_> = registry::KERNELS
            .iter()
            .map(|k| s.spawn(move || compile::compile(k)))
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join()
                    .expect("NVRTC thread panicked")
                    .unwrap_or_else(|e| panic!("CUDA kernel compilation failed: {e}"))
            })
            .collect()
    });
    let mut table = format!(
        "pub const NVRTC_AT_BUILD: Option<(i32, i32)> = Some(({}, {}));\npub const EMBEDDED: &[Embedded] = &[\n",
        nvrtc.0, nvrtc.1
    );
    for c in &compiled {
        let k = c.kernel;
        if !c.ptx_loads_on_cuda_13_0() {
            panic!(
                "{}: NVRTC {}.{} emits PTX ISA {}.{}, which driver 580 (CUDA 13.0) rejects; use \
                 nvidia-cuda-nvrtc==13.0.*",
                k.name, nvrtc.0, nvrtc.1, c.ptx_isa.0, c.ptx_isa.1
            );
        }
        if !c.log.is_empty() {
            println!("cargo:warning={}: {}", k.name, c.log.replace('\n', " | "));
        }
        let cubin = out.join(format!("{}.{}.cubin", k.name, compile::CUBIN_ARCH));
        let ptx = out.join(format!("{}.{}.ptx", k.name, compile::PTX_ARCH));
        std::fs::write(&cubin, &c.cubin).expect("write CUBIN");
        std::fs::write(&ptx, &c.ptx).expect("write PTX");
        writeln!(
            table,
            "    Embedded {{ name: {:?}, source_hash: {:#x}, cubin: include_bytes!({:?}), \
             ptx: include_str!({:?}), ptx_isa: ({}, {}) }},",
            k.name,
            registry::source_hash(k),
            cubin.display().to_string(),
            ptx.display().to_string(),
            c.ptx_isa.0,
            c.ptx_isa.1
        )
        .unwrap();
    }
    table.push_str("];\n");
    table
}
