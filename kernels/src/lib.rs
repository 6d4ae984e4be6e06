//! CUDA kernels of scinterp and their registry.
//!
//! Every kernel is CUDA C++ under `kernels/src/*.cu`, listed in [`registry`]. The build script compiles
//! each through NVRTC 13.0 ([`compile`]) to an sm_90 CUBIN plus a compute_90 PTX fallback and embeds both
//! in the binary ([`embedded`]), so a GPU host needs only the driver. A build without NVRTC embeds nothing
//! and compiles at run time instead. The CPU path in `scinterp-engine` is complete without any of this;
//! [`cuda_available`] says, without panicking, whether a GPU can be used.

pub mod compile;
pub mod embedded;
pub mod gpu;
mod guard;
pub mod registry;

/// cudarc, re-exported so that callers use the same version and features.
pub use cudarc;

pub use guard::{cuda_available, detect_cuda, print_skip, GpuAbsence};
pub use registry::{kernel, Kernel, HEADERS, KERNELS};

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
                let owners = KERNELS.iter().filter(|o| o.entry_points.contains(e)).count();
                assert_eq!(owners, 1, "entry point {e} is registered {owners} times");
            }
        }
        assert!(kernel("bias_relu").is_some());
        assert!(kernel("nope").is_none());
    }
}
