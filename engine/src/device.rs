//! `--device auto|cpu|cuda`: which backend runs, decided without panicking on machines without CUDA.

use std::fmt;
use std::str::FromStr;

use scinterp_kernels::GpuAbsence;

use crate::cuda::{CudaForward, GpuPrecision};
use crate::{CpuForward, Encoder, EngineError, Forward};

/// Whether the CUDA forward pass ([`crate::cuda`]) may be chosen by `auto`. It is built and `--device
/// cuda` runs it, but it has not yet been validated against the CPU path on a GPU (issue 8), so `auto`
/// keeps to the CPU until a GPU run has shown agreement.
pub const CUDA_BACKEND_VALIDATED: bool = false;

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA when a driver and a GPU are present (and the CUDA path is validated), else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// The backend that will run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Cuda,
}

/// A resolved choice and a one-line reason, for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceResolution {
    pub backend: Backend,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected auto, cpu or cuda")]
    Unknown(String),
    #[error("no CUDA driver/GPU found ({0}): run with --device cpu")]
    NoCuda(GpuAbsence),
    #[error("the CUDA backend is not available for this command: run with --device cpu")]
    CudaBackendMissing,
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            _ => Err(DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        })
    }
}

impl DeviceChoice {
    /// Resolve against this machine (probes the CUDA driver only for `auto` and `cuda`).
    pub fn resolve(self) -> Result<DeviceResolution, DeviceError> {
        self.resolve_with(scinterp_kernels::detect_cuda, CUDA_BACKEND_VALIDATED)
    }

    /// Resolve with an injected probe, so every branch is testable without a GPU. `auto_may_pick_cuda`
    /// is [`CUDA_BACKEND_VALIDATED`] in real use.
    pub fn resolve_with(
        self,
        probe: impl FnOnce() -> Result<usize, GpuAbsence>,
        auto_may_pick_cuda: bool,
    ) -> Result<DeviceResolution, DeviceError> {
        let cpu = |reason: String| {
            Ok(DeviceResolution {
                backend: Backend::Cpu,
                reason,
            })
        };
        match self {
            DeviceChoice::Cpu => cpu("cpu (requested)".into()),
            DeviceChoice::Cuda => {
                let n = probe().map_err(DeviceError::NoCuda)?;
                Ok(DeviceResolution {
                    backend: Backend::Cuda,
                    reason: format!("cuda (requested; {n} GPU(s))"),
                })
            }
            DeviceChoice::Auto => match probe() {
                Err(e) => cpu(format!("cpu (auto: {e})")),
                Ok(n) if !auto_may_pick_cuda => cpu(format!(
                    "cpu (auto: {n} GPU(s) found, but the CUDA path is not yet validated against the \
                     CPU; --device cuda runs it)"
                )),
                Ok(n) => Ok(DeviceResolution {
                    backend: Backend::Cuda,
                    reason: format!("cuda (auto: {n} GPU(s))"),
                }),
            },
        }
    }
}

/// What runs `encoder`'s blocks on a resolved backend: the CPU, or its blocks uploaded once to GPU 0 in
/// `precision` (ignored on the CPU).
pub fn forward_on(
    backend: Backend,
    encoder: &dyn Encoder,
    precision: GpuPrecision,
) -> Result<Box<dyn Forward>, EngineError> {
    Ok(match backend {
        Backend::Cpu => Box::new(CpuForward),
        Backend::Cuda => Box::new(CudaForward::new(encoder, 0, precision)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_three_choices() {
        for (s, d) in [
            ("auto", DeviceChoice::Auto),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda),
        ] {
            assert_eq!(s.parse::<DeviceChoice>().unwrap(), d);
            assert_eq!(d.to_string().parse::<DeviceChoice>().unwrap(), d);
        }
        assert_eq!(
            "tpu".parse::<DeviceChoice>(),
            Err(DeviceError::Unknown("tpu".into()))
        );
    }

    #[test]
    fn auto_falls_back_to_cpu_and_says_why() {
        let r = DeviceChoice::Auto
            .resolve_with(|| Err(GpuAbsence::NoDriverLibrary), true)
            .unwrap();
        assert_eq!(r.backend, Backend::Cpu);
        assert!(r.reason.contains("no CUDA driver library"), "{}", r.reason);
        let r = DeviceChoice::Auto.resolve_with(|| Ok(1), false).unwrap();
        assert_eq!(r.backend, Backend::Cpu);
        let r = DeviceChoice::Auto.resolve_with(|| Ok(2), true).unwrap();
        assert_eq!(r.backend, Backend::Cuda);
    }

    #[test]
    fn cuda_without_a_gpu_is_a_clear_error() {
        let e = DeviceChoice::Cuda
            .resolve_with(|| Err(GpuAbsence::NoDevice), true)
            .unwrap_err();
        assert!(e.to_string().contains("no CUDA driver/GPU found"), "{e}");
        assert!(e.to_string().ends_with("run with --device cpu"), "{e}");
        // Explicit cuda runs the GPU path even before it is validated (auto does not).
        assert_eq!(
            DeviceChoice::Cuda.resolve_with(|| Ok(1), false).unwrap().backend,
            Backend::Cuda
        );
        assert_eq!(
            DeviceChoice::Cpu
                .resolve_with(|| panic!("cpu must not probe"), true)
                .unwrap()
                .backend,
            Backend::Cpu
        );
    }

    #[test]
    fn resolves_on_this_machine_without_panicking() {
        let r = DeviceChoice::Auto.resolve().unwrap();
        println!("--device auto → {}", r.reason);
        if scinterp_kernels::cuda_available().is_err() {
            assert_eq!(r.backend, Backend::Cpu);
            assert!(matches!(
                DeviceChoice::Cuda.resolve(),
                Err(DeviceError::NoCuda(_))
            ));
        }
    }
}
