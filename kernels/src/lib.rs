//! CUDA kernels of scinterp and their registry.
//!
//! Every kernel is CUDA C++ under `kernels/src/*.cu`, embedded here as source and compiled through NVRTC
//! ([`compile`]) to an sm_90 CUBIN plus a compute_90 PTX fallback. The CPU path in `scinterp-engine` is
//! complete without any of this; [`cuda_available`] says, without panicking, whether a GPU can be used.

pub mod compile;
pub mod gpu;
mod guard;

/// cudarc, re-exported so that callers use the same version and features.
pub use cudarc;

pub use guard::{cuda_available, detect_cuda, GpuAbsence};

/// One CUDA source file and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// Registry name (the file stem).
    pub name: &'static str,
    /// The CUDA C++ source.
    pub source: &'static str,
    /// `extern "C" __global__` entry points, unmangled.
    pub entry_points: &'static [&'static str],
}

/// Headers the sources include with `#include "…"`, handed to NVRTC in memory (no include path needed).
pub const HEADERS: &[(&str, &str)] = &[("common.cuh", include_str!("common.cuh"))];

/// Every kernel of scinterp.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "add_layer_norm",
        source: include_str!("add_layer_norm.cu"),
        entry_points: &["add_layer_norm_f32"],
    },
    Kernel {
        name: "bias_relu",
        source: include_str!("bias_relu.cu"),
        entry_points: &["bias_relu_f32"],
    },
];

/// The kernel registered under `name`.
pub fn kernel(name: &str) -> Option<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_entry_points_appear_in_their_sources() {
        for (i, k) in KERNELS.iter().enumerate() {
            assert!(
                KERNELS[..i].iter().all(|o| o.name != k.name),
                "duplicate kernel {}",
                k.name
            );
            assert!(!k.entry_points.is_empty(), "{} has no entry point", k.name);
            for e in k.entry_points {
                assert!(
                    k.source.contains(&format!("extern \"C\" __global__ void {e}(")),
                    "{}: entry point {e} is not an extern \"C\" kernel of its source",
                    k.name
                );
            }
        }
        assert!(kernel("bias_relu").is_some());
        assert!(kernel("nope").is_none());
    }
}
