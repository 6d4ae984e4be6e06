//! Errors of model loading: each names the file, what is wrong and what to do.

use std::path::PathBuf;

use crate::checkpoint::CheckpointError;

/// Why a document's content (a config, a vocabulary, a matrix) is refused; the caller that knows the
/// file adds its path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(reason: String) -> Self {
        Invalid(reason)
    }
}

impl From<&str> for Invalid {
    fn from(reason: &str) -> Self {
        Invalid(reason.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{dir}: {reason}; a model folder is one of: {looked_for}")]
    NotAModelFolder {
        dir: PathBuf,
        reason: &'static str,
        looked_for: String,
    },
    #[error("{dir} holds no weights: expected {expected}")]
    NoWeights { dir: PathBuf, expected: &'static str },
    #[error("{path} does not match its config ({count} problem{s}):\n  {list}\nCheck that the config next to it (config.json or args.json) belongs to these weights.",
        count = problems.len(), s = if problems.len() == 1 { "" } else { "s" }, list = problems.join("\n  "))]
    Weights { path: PathBuf, problems: Vec<String> },
}
