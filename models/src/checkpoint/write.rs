//! Writing safetensors files atomically: write a temporary file beside the target, fsync, rename.
//! A killed run leaves either the old file or the new one, never a half-written one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::CheckpointError;

/// One tensor to write: little-endian bytes of a row-major array.
pub struct TensorToWrite<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

/// Writes `tensors` to `path` as safetensors (with optional `__metadata__`), atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorToWrite<'_>],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        let view =
            TensorView::new(t.dtype, t.shape.clone(), t.bytes).map_err(|e| CheckpointError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("tensor `{}` cannot be written: {e}", t.name),
            })?;
        views.push((t.name.clone(), view));
    }
    let tmp = temporary_sibling(path);
    let result = safetensors::serialize_to_file(views, metadata, &tmp)
        .map_err(|e| CheckpointError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
        .and_then(|()| {
            std::fs::File::open(&tmp)
                .and_then(|f| {
                    // The serializer creates the file owner-only; outputs are ordinary data files.
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::PermissionsExt;
                        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
                    }
                    f.sync_all()
                })
                .map_err(io)
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `dir/.name.tmp-<pid>`: same directory (so the rename is atomic), hidden, unique per process.
pub(crate) fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
