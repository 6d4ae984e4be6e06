//! Kernels compiled at build time and embedded in the binary.
//!
//! The build script (`kernels/build.rs`) runs NVRTC when it can load it (`SCINTERP_NVRTC_LIB`, see
//! `.ci/run`), writes one sm_90 CUBIN and one compute_90 PTX per registry kernel to `OUT_DIR`, and
//! generates the table below with `include_bytes!`. Without NVRTC the table is empty and
//! [`crate::gpu`] compiles at run time.

use crate::registry::{source_hash, Kernel};

/// One kernel's build-time artefacts.
#[derive(Debug, Clone, Copy)]
pub struct Embedded {
    pub name: &'static str,
    /// [`source_hash`] of the source the artefacts were built from.
    pub source_hash: u64,
    pub cubin: &'static [u8],
    /// NUL-free PTX text.
    pub ptx: &'static str,
    /// ISA from the PTX's `.version` line.
    pub ptx_isa: (u32, u32),
}

// Defines `NVRTC_AT_BUILD: Option<(i32, i32)>` and `EMBEDDED: &[Embedded]`.
include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// The embedded artefacts of `kernel`, when present and built from its current source.
pub fn artefacts(kernel: &Kernel) -> Option<&'static Embedded> {
    EMBEDDED
        .iter()
        .find(|e| e.name == kernel.name && e.source_hash == source_hash(kernel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{CUBIN_ARCH, MAX_PTX_ISA};
    use crate::KERNELS;

    /// A build with NVRTC (CI) must embed every kernel, current and loadable on driver 580.
    #[test]
    fn a_build_with_nvrtc_embeds_every_kernel() {
        let Some((major, minor)) = NVRTC_AT_BUILD else {
            assert!(EMBEDDED.is_empty());
            return crate::compile::skip_without_nvrtc(
                "a_build_with_nvrtc_embeds_every_kernel",
                &"built without NVRTC and CUDA headers, nothing embedded (kernels compile at run time)",
            );
        };
        println!("embedded by NVRTC {major}.{minor}");
        assert_eq!(EMBEDDED.len(), KERNELS.len());
        for k in KERNELS {
            let e = artefacts(k).unwrap_or_else(|| panic!("{} is not embedded or is stale", k.name));
            assert_eq!(&e.cubin[..4], b"\x7fELF", "{}: CUBIN is not ELF", k.name);
            assert!(e.ptx.contains(&format!(".target {CUBIN_ARCH}")), "{}", k.name);
            assert!(e.ptx_isa <= MAX_PTX_ISA, "{}: PTX ISA {:?}", k.name, e.ptx_isa);
            for entry in k.entry_points {
                assert!(e.ptx.contains(&format!(".entry {entry}(")), "{}: {entry}", k.name);
            }
        }
    }
}
