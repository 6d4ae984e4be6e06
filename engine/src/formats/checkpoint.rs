//! One checkpoint file format for long jobs that resume after a kill (trace checkpoints and shards, the
//! export's attention pass): `[magic][u64 len][settings JSON][u64 done][payload][blake3 of everything
//! before]` (little-endian), written atomically. The settings say which run the file belongs to (a
//! resume compares them with the new run's); `done` counts the work units finished; the payload is the
//! job's accumulated state. The checksum catches a flipped bit anywhere (a damaged disk or copy) that
//! would otherwise resume into a silently different result.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{atomic_write, FileError};

/// A checkpoint file that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot read {}: {io}", path.display())]
    Read { path: PathBuf, io: std::io::Error },
    #[error("{}: damaged or not {what}; remove it and rerun", path.display())]
    Damaged { path: PathBuf, what: &'static str },
    #[error(
        "{}: its checksum does not match its contents (damaged, or written by a scinterp before checksums); \
         remove it and rerun the run that wrote it",
        .0.display()
    )]
    Checksum(PathBuf),
    #[error("cannot serialise the settings of {}: {reason}", path.display())]
    Serialise { path: PathBuf, reason: String },
}

/// What a checkpoint file holds: its settings (raw JSON, compared or typed by the caller), the work
/// units done and the payload.
#[derive(Debug)]
pub struct Checkpoint {
    pub settings: serde_json::Value,
    pub done: u64,
    pub payload: Vec<u8>,
}

/// Writes a checkpoint atomically. The settings go through a `serde_json::Value` so that their keys are
/// sorted (the byte layout of trace files written before they were typed).
pub fn write_checkpoint<S: Serialize>(
    path: &Path,
    magic: &[u8; 8],
    settings: &S,
    done: u64,
    payload: &[u8],
) -> Result<(), CheckpointError> {
    let text = serde_json::to_value(settings)
        .and_then(|v| serde_json::to_vec(&v))
        .map_err(|e| CheckpointError::Serialise {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mut bytes = Vec::with_capacity(text.len() + payload.len() + 64);
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&text);
    bytes.extend_from_slice(&done.to_le_bytes());
    bytes.extend_from_slice(payload);
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(sum.as_bytes());
    Ok(atomic_write(path, &bytes)?)
}

/// Reads a checkpoint written with `magic`; `None` when the file does not exist. `what` names the kind
/// of file in the message for a damaged one ("a scinterp trace file").
pub fn read_checkpoint(
    path: &Path,
    magic: &[u8; 8],
    what: &'static str,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(io) => {
            return Err(CheckpointError::Read {
                path: path.to_path_buf(),
                io,
            })
        }
    };
    let damaged = || CheckpointError::Damaged {
        path: path.to_path_buf(),
        what,
    };
    if bytes.get(..8) != Some(&magic[..]) {
        return Err(damaged());
    }
    let body_len = bytes.len().checked_sub(32).ok_or_else(damaged)?;
    if blake3::hash(&bytes[..body_len]).as_bytes() != &bytes[body_len..] {
        return Err(CheckpointError::Checksum(path.to_path_buf()));
    }
    bytes.truncate(body_len);
    let u64_at = |at: usize| -> Result<u64, CheckpointError> {
        let b: [u8; 8] = bytes
            .get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(damaged)?;
        Ok(u64::from_le_bytes(b))
    };
    let len = usize::try_from(u64_at(8)?).map_err(|_| damaged())?;
    let end = 16usize.checked_add(len).ok_or_else(damaged)?;
    let settings: serde_json::Value =
        serde_json::from_slice(bytes.get(16..end).ok_or_else(damaged)?).map_err(|_| damaged())?;
    let done = u64_at(end)?;
    let payload = bytes.split_off(end + 8);
    Ok(Some(Checkpoint {
        settings,
        done,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_refuse_damage_and_other_magic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.checkpoint");
        assert!(read_checkpoint(&path, b"SCITESTS", "a test file")
            .unwrap()
            .is_none());
        let settings = serde_json::json!({"b": 2, "a": [1, 2]});
        write_checkpoint(&path, b"SCITESTS", &settings, 7, &[1, 2, 3, 250]).unwrap();
        let c = read_checkpoint(&path, b"SCITESTS", "a test file")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.settings.clone(), c.done, c.payload.clone()),
            (settings, 7, vec![1, 2, 3, 250])
        );
        assert_eq!(
            serde_json::from_value::<std::collections::BTreeMap<String, serde_json::Value>>(
                c.settings.clone()
            )
            .unwrap()
            .len(),
            2
        );
        let e = read_checkpoint(&path, b"SCIOTHER", "a test file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("damaged or not a test file"), "{e}");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 40;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_checkpoint(&path, b"SCITESTS", "a test file").unwrap_err();
        assert!(matches!(e, CheckpointError::Checksum(_)), "{e}");
    }
}
