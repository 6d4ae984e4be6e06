//! The atlas builder's errors: each names the file or flag at fault and what to do.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AtlasError {
    /// An input file is missing, unreadable or not what it should be.
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
    /// Two inputs do not belong together (e.g. edges of another SAE than the catalog).
    #[error("{0}")]
    Mismatch(String),
    /// The options given cannot work (nothing to build, an output folder that is not an atlas).
    #[error("{0}")]
    Usage(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl AtlasError {
    pub fn input(path: &Path, message: impl Into<String>) -> Self {
        AtlasError::Input {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        AtlasError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, AtlasError>;
