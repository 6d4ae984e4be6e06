//! The files scinterp writes and reads, in one place: tables (Parquet/TSV), atomic writes, and the
//! typed JSON summaries (feature catalog, trace edges, SAE metadata…).
//!
//! JSON summaries are written through [`to_json_pretty`] / [`to_json`], which go through a
//! `serde_json::Value` so that keys come out sorted: the files keep the byte layout they had when they
//! were built as untyped `json!` maps, whatever the field order of the structs.

pub mod annotation;
pub mod atomic;
pub mod catalog;
pub mod checkpoint;
pub mod consensus;
pub mod effects;
pub mod layers;
pub mod sae;
pub mod staged;
pub mod table;
pub mod trace;

pub use atomic::{atomic_write, AtomicFile, FileError};
pub use staged::{check_file_output, OutputError, StagedDir};
pub use table::{Column, Table, TableError, TableFormat};

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A JSON summary that cannot be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}: cannot read: {io}", path.display())]
    Read { path: PathBuf, io: std::io::Error },
    #[error("{}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("cannot serialise {what}: {reason}")]
    Serialise { what: &'static str, reason: String },
}

/// Pretty JSON with sorted keys (see the module documentation).
pub fn to_json_pretty<T: Serialize>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&serde_json::to_value(value)?)
}

/// Compact JSON with sorted keys.
pub fn to_json<T: Serialize>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string(&serde_json::to_value(value)?)
}

/// Writes `value` as pretty JSON with sorted keys, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), JsonFileError> {
    let text = to_json_pretty(value).map_err(|e| JsonFileError::Serialise {
        what: "a summary",
        reason: e.to_string(),
    })?;
    Ok(atomic_write(path, text.as_bytes())?)
}

/// Reads a JSON file into `T`; errors name the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, JsonFileError> {
    let text = std::fs::read_to_string(path).map_err(|io| JsonFileError::Read {
        path: path.to_path_buf(),
        io,
    })?;
    serde_json::from_str(&text).map_err(|e| JsonFileError::Parse {
        path: path.to_path_buf(),
        reason: format!("not valid JSON of the expected shape: {e}"),
    })
}

/// The canonical path as text, as manifests and summaries record inputs (the path as given when it
/// cannot be resolved).
pub fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
