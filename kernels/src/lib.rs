//! CUDA kernels of scinterp and their registry.
//!
//! This crate is deliberately empty for now: the CUDA backend (kernels compiled through NVRTC for sm_90,
//! loaded with cudarc) arrives with the "CUDA backend I" issue. The CPU path in `scinterp-engine` is
//! complete without it.
