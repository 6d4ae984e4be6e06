//! Every kernel of the registry, run by the CPU emulator (kernels/emu/cpp) from its real source at small
//! shapes, against the engine's CPU references; and planted kernel bugs that must fail.

// References index several arrays by the same position; loops over indices read closest to the kernels.
#![allow(clippy::needless_range_loop)]

mod common;

#[path = "emulated/attention.rs"]
mod attention;
#[path = "emulated/coverage.rs"]
mod coverage;
#[path = "emulated/elementwise.rs"]
mod elementwise;
#[path = "emulated/gemm.rs"]
mod gemm;
#[path = "emulated/hook_edits.rs"]
mod hook_edits;
#[path = "emulated/planted.rs"]
mod planted;
#[path = "emulated/sae.rs"]
mod sae;
#[path = "emulated/trace.rs"]
mod trace;
