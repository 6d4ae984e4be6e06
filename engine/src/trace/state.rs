//! Checkpoint and shard files of a trace, in the one checkpoint format of `formats::checkpoint` (the
//! payload is the accumulator; `done` counts cells). A checkpoint (`SCICHECK`) lets a killed run resume
//! where it stopped; a shard file (`SCISHARD`) holds one `--shard i/n` run's accumulator for `trace merge`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::TraceAccumulator;
use crate::formats::checkpoint::{read_checkpoint, write_checkpoint};

pub use crate::formats::checkpoint::CheckpointError as StateError;

pub const CHECKPOINT_MAGIC: &[u8; 8] = b"SCICHECK";
pub const SHARD_MAGIC: &[u8; 8] = b"SCISHARD";
/// What a damaged trace file is said not to be.
const WHAT: &str = "a scinterp trace file";

/// Writes a state file (the accumulator is the checkpoint's payload; `done` counts cells).
pub fn write_state<S: Serialize>(
    path: &Path,
    magic: &[u8; 8],
    settings: &S,
    cells_done: usize,
    acc: &TraceAccumulator,
) -> Result<(), StateError> {
    write_checkpoint(path, magic, settings, cells_done as u64, &acc.to_bytes())
}

/// A state file's settings, as raw JSON (compared or typed by the caller), its cells done and its
/// accumulator; `None` when the file does not exist.
pub fn read_state(
    path: &Path,
    magic: &[u8; 8],
) -> Result<Option<(serde_json::Value, usize, TraceAccumulator)>, StateError> {
    let Some(c) = read_checkpoint(path, magic, WHAT)? else {
        return Ok(None);
    };
    let damaged = || StateError::Damaged {
        path: path.to_path_buf(),
        what: WHAT,
    };
    let cells_done = usize::try_from(c.done).map_err(|_| damaged())?;
    let acc = TraceAccumulator::from_bytes(&c.payload).ok_or_else(damaged)?;
    Ok(Some((c.settings, cells_done, acc)))
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
            Err(StateError::Damaged { .. })
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
