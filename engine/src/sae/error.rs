//! Typed errors of SAE training, encoding and evaluation. Settings errors name the `scinterp sae`
//! flag to change; data errors name the file (and row, tensor or index) that is wrong.

use std::path::PathBuf;

use super::io::{SaeFileError, SaeOnStoreError};
use crate::formats::FileError;
use crate::store::StoreError;

/// A training or synthesis setting that cannot work, named by its command-line flag.
#[derive(Debug, thiserror::Error)]
#[error("--{flag} {value}: {reason}")]
pub struct FlagError {
    /// The flag without its dashes (`batch-size`).
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

impl FlagError {
    pub fn new(flag: &'static str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        FlagError {
            flag,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// An SAE's arrays that do not agree with its dimensions, or hold non-finite values.
#[derive(Debug, thiserror::Error)]
pub enum SaeShapeError {
    #[error("{tensor} has {got} values, expected {want}")]
    Length {
        tensor: &'static str,
        got: usize,
        want: usize,
    },
    #[error("k = {k} must be in 1..={d_sae}")]
    K { k: usize, d_sae: usize },
    #[error("{tensor} holds a non-finite value ({value}) at index {index}")]
    NonFinite {
        tensor: &'static str,
        index: usize,
        value: f32,
    },
}

/// Why an SAE command stopped.
#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    SaeFile(#[from] SaeFileError),
    #[error(transparent)]
    OnStore(#[from] SaeOnStoreError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{} already holds an SAE; pass --overwrite or choose another --out", .0.display())]
    Exists(PathBuf),
    #[error("{} exists; pass --overwrite or choose another --out", .0.display())]
    OutputExists(PathBuf),
    #[error(transparent)]
    Output(#[from] crate::formats::OutputError),
    #[error("{}: no training rows (every cell was held out); lower --holdout", .0.display())]
    NoTrainingRows(PathBuf),
    #[error("{}: no cell was held out ({cells} cells); use more cells or --holdout 0", acts.display())]
    NoHeldoutCells { acts: PathBuf, cells: usize },
    #[error(
        "{}: row {row} (cell {cell}) holds a non-finite value ({value}) in column {column}; \
         re-extract the store, or pass --skip-nonfinite-rows to train without such rows",
        path.display()
    )]
    NonFiniteRow {
        path: PathBuf,
        row: usize,
        cell: i64,
        column: usize,
        value: f32,
    },
    #[error("{}: every training row holds a non-finite value", .0.display())]
    AllRowsNonFinite(PathBuf),
    #[error(
        "training needs about {} of memory ({what}) but {} is available; lower {flags}",
        crate::store::human_bytes(*needed),
        crate::store::human_bytes(*available)
    )]
    OutOfMemory {
        what: String,
        needed: u64,
        available: u64,
        flags: &'static str,
    },
    #[error(
        "{}: the SAE and its checkpoints need about {} but the disk has {} free; free some space or choose another --out",
        dir.display(),
        crate::store::human_bytes(*needed),
        crate::store::human_bytes(*free)
    )]
    DiskFull { dir: PathBuf, needed: u64, free: u64 },
    #[error("{}: training failed: {reason}", acts.display())]
    Training { acts: PathBuf, reason: String },
    #[error("{} ({tensor}): {source}", path.display())]
    Weights {
        path: PathBuf,
        tensor: &'static str,
        source: SaeShapeError,
    },
    #[error("{}: {reason}", path.display())]
    Npy { path: PathBuf, reason: String },
    #[error(transparent)]
    Step(#[from] crate::sae::train::StepperError),
    #[error("there are no training rows")]
    EmptyTraining,
    #[error("GPU: {0}")]
    Gpu(String),
    /// Its message already starts with "GPU: ".
    #[error(transparent)]
    GpuSae(#[from] crate::cuda::GpuSaeError),
    #[error("cannot serialise {0}")]
    Serialise(String),
    #[error("the spliced model loss: {0}")]
    Splice(super::pipeline::SpliceModelError),
    #[error("--rows {0}: expected `all` or `heldout`")]
    Rows(String),
    #[error("stopped after {steps} steps as asked (--stop-after-steps); rerun without it to resume from {}", checkpoint.display())]
    Stopped { steps: usize, checkpoint: PathBuf },
    #[error("{}: the training checkpoint is damaged ({reason}); delete it to start over", path.display())]
    Checkpoint { path: PathBuf, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::GpuSaeError;
    use crate::sae::train::StepperError;
    use scinterp_kernels::GpuAbsence;

    #[test]
    fn a_gpu_failure_says_gpu_once() {
        let start = SaeError::from(GpuSaeError::Absent(GpuAbsence::NoDevice)).to_string();
        assert_eq!(start, "GPU: the CUDA driver reports no GPU");
        let step = SaeError::from(StepperError::from(GpuSaeError::Absent(GpuAbsence::NoDevice)));
        assert_eq!(step.to_string(), start);
    }
}
