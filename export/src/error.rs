//! Errors of operator export and of tools. Each message names the file, flag or gene at fault and says
//! what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Model(#[from] scinterp_models::ModelError),
    #[error(transparent)]
    Cells(#[from] scinterp_models::cells::CellsError),
    #[error(transparent)]
    Engine(#[from] scinterp_engine::EngineError),
    #[error(transparent)]
    Input(#[from] scinterp_models::input::InputError),
    #[error(transparent)]
    TokenStore(#[from] scinterp_models::token_store::TokenStoreError),
    #[error(transparent)]
    ModelOnCells(#[from] scinterp_models::input::ModelOnCellsError),
    #[error(transparent)]
    Effects(#[from] scinterp_engine::effects::pipeline::EffectsError),
    #[error(transparent)]
    File(#[from] scinterp_engine::formats::FileError),
    #[error(transparent)]
    Checkpoint(#[from] scinterp_engine::formats::checkpoint::CheckpointError),
    #[error("tokenizing the reference cells: {0}")]
    Tokenize(String),
    #[error("{} {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// An option or argument refused (`what` names the flag).
    #[error("{what}: {reason}")]
    Option { what: String, reason: String },
    /// A file whose content is wrong.
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// `--stop-after-batches` (testing) reached: the checkpoint is saved; a rerun resumes from it.
    #[error("stopped after {batches} batches as asked (--stop-after-batches); rerun without it to resume from {}", checkpoint.display())]
    Stopped { batches: usize, checkpoint: PathBuf },
    /// A numerical step that failed.
    #[error("{0}")]
    Numeric(String),
}

impl ExportError {
    pub fn option(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ExportError::Option {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ExportError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, action: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ExportError::Io { path, action, source }
    }
}
