//! Checkpoint and shard files of a trace: `[magic][u64 len][settings JSON][u64 cells_done][accumulator]
//! [blake3 of everything before]` (little-endian), written atomically. The checksum catches a flipped bit
//! anywhere (a damaged disk or copy) that would otherwise resume or merge into a silently different table. A checkpoint (`SCICHECK`) lets a killed run resume where it
//! stopped; a shard file (`SCISHARD`) holds one `--shard i/n` run's accumulator for `trace merge`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::TraceAccumulator;
use crate::formats::{atomic_write, FileError};

pub const CHECKPOINT_MAGIC: &[u8; 8] = b"SCICHECK";
pub const SHARD_MAGIC: &[u8; 8] = b"SCISHARD";

/// A checkpoint or shard file that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot read {}: {io}", path.display())]
    Read { path: PathBuf, io: std::io::Error },
    #[error("{}: damaged or not a scinterp trace file; remove it and rerun", .0.display())]
    Damaged(PathBuf),
    #[error(
        "{}: its checksum does not match its contents (damaged, or written by a scinterp before checksums); \
         remove it and rerun the run that wrote it",
        .0.display()
    )]
    Checksum(PathBuf),
    #[error("cannot serialise the settings of {}: {reason}", path.display())]
    Serialise { path: PathBuf, reason: String },
}

/// Writes a state file. The settings go through a `serde_json::Value` so that their keys are sorted
/// (the byte layout of the files written before they were typed).
pub fn write_state<S: Serialize>(
    path: &Path,
    magic: &[u8; 8],
    settings: &S,
    cells_done: usize,
    acc: &TraceAccumulator,
) -> Result<(), StateError> {
    let text = serde_json::to_value(settings)
        .and_then(|v| serde_json::to_vec(&v))
        .map_err(|e| StateError::Serialise {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mut bytes = Vec::with_capacity(text.len() + 64);
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&text);
    bytes.extend_from_slice(&(cells_done as u64).to_le_bytes());
    bytes.extend_from_slice(&acc.to_bytes());
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(sum.as_bytes());
    Ok(atomic_write(path, &bytes)?)
}

/// A state file's settings, as raw JSON (compared or typed by the caller), its cells done and its
/// accumulator; `None` when the file does not exist.
pub fn read_state(
    path: &Path,
    magic: &[u8; 8],
) -> Result<Option<(serde_json::Value, usize, TraceAccumulator)>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(io) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                io,
            })
        }
    };
    let damaged = || StateError::Damaged(path.to_path_buf());
    if bytes.get(..8) != Some(&magic[..]) {
        return Err(damaged());
    }
    let body_len = bytes.len().checked_sub(32).ok_or_else(damaged)?;
    let (bytes, sum) = bytes.split_at(body_len);
    if blake3::hash(bytes).as_bytes() != sum {
        return Err(StateError::Checksum(path.to_path_buf()));
    }
    let u64_at = |at: usize| -> Result<u64, StateError> {
        let b: [u8; 8] = bytes
            .get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(damaged)?;
        Ok(u64::from_le_bytes(b))
    };
    if bytes.get(..8) != Some(&magic[..]) {
        return Err(damaged());
    }
    let len = usize::try_from(u64_at(8)?).map_err(|_| damaged())?;
    let end = 16usize.checked_add(len).ok_or_else(damaged)?;
    let settings: serde_json::Value =
        serde_json::from_slice(bytes.get(16..end).ok_or_else(damaged)?).map_err(|_| damaged())?;
    let cells_done = usize::try_from(u64_at(end)?).map_err(|_| damaged())?;
    let acc = TraceAccumulator::from_bytes(&bytes[end + 8..]).ok_or_else(damaged)?;
    Ok(Some((settings, cells_done, acc)))
}

/// The settings JSON as `T`, or `None` if it has another shape.
pub fn typed<T: DeserializeOwned>(settings: serde_json::Value) -> Option<T> {
    serde_json::from_value(settings).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_round_trip_and_refuse_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.checkpoint");
        assert!(read_state(&path, CHECKPOINT_MAGIC).unwrap().is_none());
        let acc = TraceAccumulator {
            ablations: 7,
            ..Default::default()
        };
        write_state(
            &path,
            CHECKPOINT_MAGIC,
            &serde_json::json!({"b": 1, "a": [2]}),
            5,
            &acc,
        )
        .unwrap();
        let (settings, done, back) = read_state(&path, CHECKPOINT_MAGIC).unwrap().unwrap();
        assert_eq!(settings, serde_json::json!({"a": [2], "b": 1}));
        assert_eq!((done, back.ablations), (5, 7));
        // The other magic, or a truncated file, is refused with the file's name.
        let e = read_state(&path, SHARD_MAGIC).unwrap_err().to_string();
        assert!(e.contains("x.checkpoint") && e.contains("damaged"), "{e}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        assert!(matches!(
            read_state(&path, CHECKPOINT_MAGIC),
            Err(StateError::Checksum(_))
        ));
        std::fs::write(&path, &bytes[..6]).unwrap();
        assert!(matches!(
            read_state(&path, CHECKPOINT_MAGIC),
            Err(StateError::Damaged(_))
        ));
    }

    /// One flipped bit anywhere (settings, counters, accumulator, checksum) is refused by name, never
    /// read as a different state.
    #[test]
    fn every_single_bit_flip_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.shard");
        let mut acc = TraceAccumulator {
            ablations: 3,
            ..Default::default()
        };
        acc.cells_active.insert(4, 2);
        write_state(
            &path,
            SHARD_MAGIC,
            &serde_json::json!({"features": [1, 2]}),
            2,
            &acc,
        )
        .unwrap();
        let good = std::fs::read(&path).unwrap();
        for byte in 0..good.len() {
            for bit in [0u8, 3, 7] {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                std::fs::write(&path, &bad).unwrap();
                let e = read_state(&path, SHARD_MAGIC).expect_err("a flipped bit was accepted");
                assert!(e.to_string().contains("s.shard"), "{e}");
            }
        }
    }
}
