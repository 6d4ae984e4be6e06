//! Argument groups that several subcommands share, so that each flag has one spelling, one help text
//! and one default everywhere.

use anyhow::{Context, Result};
use clap::Args;
use scinterp_engine::cuda::GpuPrecision;
use scinterp_engine::device::{forward_on, Backend, DeviceChoice};
use scinterp_engine::{Encoder, Forward};

/// `--device` and `--gpu-precision`.
#[derive(Args, Clone, Copy, Debug)]
pub struct DeviceArgs {
    /// Where the model's blocks (or the SAE's steps) run: `auto` (the CPU until the CUDA path is
    /// validated on a GPU), `cpu`, or `cuda` (GPU 0; an error where no GPU is usable).
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// With `--device cuda`: `bf16` GEMMs with f32 accumulation and an f32 residual stream, or `f32`
    /// (exact f32 GEMMs: the parity mode, whose results match the CPU's).
    #[arg(long, value_enum, default_value_t = GpuPrecisionArg::Bf16)]
    pub gpu_precision: GpuPrecisionArg,
}

impl DeviceArgs {
    /// Resolves `--device` before any work (never panics without CUDA) and logs the choice.
    pub fn backend(&self) -> Result<Backend> {
        let resolved = self.device.resolve()?;
        tracing::info!("device: {}", resolved.reason);
        Ok(resolved.backend)
    }

    pub fn precision(&self) -> GpuPrecision {
        self.gpu_precision.into()
    }

    /// The backend that runs `encoder`'s blocks: the CPU, or its blocks uploaded to GPU 0.
    pub fn forward(&self, backend: Backend, encoder: &dyn Encoder) -> Result<Box<dyn Forward>> {
        let forward = forward_on(backend, encoder, self.precision())
            .context("uploading the model to the GPU (--device cpu avoids the GPU)")?;
        if backend == Backend::Cuda {
            tracing::info!("forward pass: {}", forward.name());
        }
        Ok(forward)
    }
}

/// `--gpu-precision`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GpuPrecisionArg {
    Bf16,
    F32,
}

impl From<GpuPrecisionArg> for GpuPrecision {
    fn from(p: GpuPrecisionArg) -> Self {
        match p {
            GpuPrecisionArg::Bf16 => GpuPrecision::Bf16,
            GpuPrecisionArg::F32 => GpuPrecision::F32,
        }
    }
}

/// `--shard i/n` (0-based), for extract and trace.
pub fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let (i, n) = text.split_once('/').ok_or("expected i/n, e.g. 0/4")?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| "i must be a number")?,
        n.trim().parse().map_err(|_| "n must be a number")?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 ≤ i < n"));
    }
    Ok((i, n))
}

/// Prints `value` as one line of JSON on stdout when the global `--json` was given.
/// (Compact, keys sorted: the same bytes for the same summary.)
pub fn print_json<T: serde::Serialize>(json: bool, value: &T) -> Result<()> {
    if json {
        println!("{}", scinterp_engine::formats::to_json(value)?);
    }
    Ok(())
}
