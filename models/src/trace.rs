//! `trace run` from folders: loads the model, the token store's cells and what runs the blocks
//! ([`ModelOnCells`]), then traces with [`scinterp_engine::trace::run`].

use std::path::Path;

use scinterp_engine::cuda::GpuPrecision;
use scinterp_engine::device::Backend;
use scinterp_engine::formats::absolute;
use scinterp_engine::trace::{TraceConfig, TraceError, TraceInputs, TraceOutcome, TraceProgress};

use crate::input::{ModelOnCells, ModelOnCellsError};

/// The folders a trace reads.
#[derive(Clone, Copy, Debug)]
pub struct TraceFiles<'a> {
    /// Model folder (Geneformer or scGPT).
    pub model: &'a Path,
    /// Token store of the cells.
    pub input: &'a Path,
    /// Folder of SAE folders, one per hook.
    pub saes: &'a Path,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceRunError {
    #[error(transparent)]
    Load(#[from] ModelOnCellsError),
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// Traces the edges of `config` on the cells of `files.input`: writes the edge table and its summary
/// (or, with a shard, the shard's accumulator) and returns the outcome.
pub fn run(
    files: &TraceFiles,
    config: &TraceConfig,
    backend: Backend,
    precision: GpuPrecision,
    progress: &mut dyn FnMut(TraceProgress),
) -> Result<TraceOutcome, TraceRunError> {
    let loaded = ModelOnCells::open(files.model, files.input, false, backend, precision)?;
    let inputs = TraceInputs {
        cells: loaded.view(),
        saes: files.saes,
        model_path: absolute(files.model),
        input_path: absolute(files.input),
    };
    Ok(scinterp_engine::trace::run(config, &inputs, progress)?)
}
