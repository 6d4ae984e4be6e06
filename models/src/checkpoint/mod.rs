//! Checkpoint readers: every format ends up as a [`Checkpoint`], a set of named tensor views over one
//! memory-mapped file. Nothing is copied until a model asks for a tensor as f32 ([`Checkpoint::to_f32`]).
//!
//! - `model.safetensors`: parsed with the `safetensors` crate (header only; data stays in the map).
//! - `pytorch_model.bin` / `best_model.pt` (PyTorch zip): `data.pkl` is decoded by [`pickle`], a reader
//!   that understands only what state dicts need and never executes code; storages are the zip's stored
//!   records, viewed in place (several tensors may share one storage, e.g. tied decoder weights).

pub mod pickle;
mod safetensors_file;
mod torch_zip;
mod write;

pub use write::{write_safetensors, TensorToWrite};

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

/// Element types a checkpoint tensor may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I16 => "i16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        };
        f.write_str(s)
    }
}

/// Where one tensor's elements live inside the mapped file.
///
/// `storage_start`/`storage_len` delimit the whole storage (in bytes, absolute in the file) so that a
/// view with an offset and strides can be bounds-checked; `offset` and `strides` are in elements, as
/// PyTorch records them. Safetensors tensors are always contiguous with offset 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
    pub storage_start: usize,
    pub storage_len: usize,
}

impl TensorEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Row-major strides for `shape`.
    pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
        let mut strides = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        strides
    }
}

/// Errors of the checkpoint readers. Each names the file and, where possible, what to do.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid checkpoint: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: no tensor named `{name}`")]
    NoSuchTensor { path: PathBuf, name: String },
}

/// A checkpoint file opened read-only and memory-mapped.
pub struct Checkpoint {
    path: PathBuf,
    map: Arc<Mmap>,
    tensors: BTreeMap<String, TensorEntry>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens a safetensors file or a PyTorch zip checkpoint, recognised by its first bytes (not by its
    /// name, so a renamed file still opens).
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let mut magic = [0u8; 8];
        let n = read_up_to(&mut file, &mut magic).map_err(io)?;
        // SAFETY: the file is opened read-only; scinterp never writes to checkpoints. A concurrent
        // external truncation could fault, which is the documented risk of every mmap reader.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let map = Arc::new(map);
        let tensors = if n >= 4 && &magic[..4] == b"PK\x03\x04" {
            torch_zip::read_tensors(path, &map)?
        } else if n >= 4 && is_legacy_torch(&magic) {
            return Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                reason: "this is a legacy (pre-1.6, non-zip) PyTorch file; re-save it with \
                         torch >= 1.6 (`torch.save(torch.load(f), g)`) or convert it to safetensors"
                    .into(),
            });
        } else {
            safetensors_file::read_tensors(path, &map)?
        };
        Ok(Checkpoint {
            path: path.to_path_buf(),
            map,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor converted to f32, row-major contiguous (strided PyTorch views are gathered).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, CheckpointError> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| CheckpointError::NoSuchTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        let bytes = &self.map[entry.storage_start..entry.storage_start + entry.storage_len];
        let esize = entry.dtype.size_in_bytes();
        let numel = entry.numel();
        let mut out = Vec::with_capacity(numel);
        let convert: fn(&[u8]) -> f32 = match entry.dtype {
            DType::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F16 => |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::BF16 => |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::F64 => |b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
            other => {
                return Err(CheckpointError::Unsupported {
                    path: self.path.clone(),
                    reason: format!("tensor `{name}` has dtype {other}, expected a float type"),
                })
            }
        };
        let contiguous = entry.strides == TensorEntry::contiguous_strides(&entry.shape);
        if contiguous {
            let start = entry.offset * esize;
            let data = &bytes[start..start + numel * esize];
            out.extend(data.chunks_exact(esize).map(convert));
        } else {
            // Walk the index space in row-major order, honouring the recorded strides.
            let mut index = vec![0usize; entry.shape.len()];
            for _ in 0..numel {
                let elem: usize = entry.offset
                    + index
                        .iter()
                        .zip(&entry.strides)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                out.push(convert(&bytes[elem * esize..(elem + 1) * esize]));
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < entry.shape[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
        }
        Ok(out)
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = file.read(&mut buf[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// Legacy torch files start with a pickled magic number (`PROTO 2`, `LONG1` of 10 bytes). As a
/// safetensors header length these bytes would exceed the format's 100 MB limit, so no clash.
fn is_legacy_torch(magic: &[u8; 8]) -> bool {
    magic[..4] == [0x80, 0x02, 0x8a, 0x0a]
}

/// A tensor view (offset, shape, strides) that does not fit its storage; the reader adds the file and
/// tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("shape and stride ranks differ")]
    Ranks,
    #[error("view size overflows")]
    Overflow,
    #[error("view starts at byte {offset} but its storage holds {storage}")]
    StartsPastStorage { offset: usize, storage: usize },
    #[error("view needs {end} bytes but its storage holds {storage}")]
    EndsPastStorage { end: usize, storage: usize },
}

/// Checks that a view (offset, shape, strides in elements) stays inside its storage, with checked
/// arithmetic throughout (shapes come from untrusted files). Shared by the readers.
pub(crate) fn check_view_bounds(entry: &TensorEntry) -> Result<(), ViewError> {
    let esize = entry.dtype.size_in_bytes();
    if entry.shape.len() != entry.strides.len() {
        return Err(ViewError::Ranks);
    }
    let overflow = || ViewError::Overflow;
    let offset_bytes = entry.offset.checked_mul(esize).ok_or_else(overflow)?;
    if offset_bytes > entry.storage_len {
        return Err(ViewError::StartsPastStorage {
            offset: offset_bytes,
            storage: entry.storage_len,
        });
    }
    let mut numel: usize = 1;
    let mut last: usize = 0;
    for (&n, &s) in entry.shape.iter().zip(&entry.strides) {
        numel = numel.checked_mul(n).ok_or_else(overflow)?;
        if n > 0 {
            last = (n - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(overflow)?;
        }
    }
    if numel == 0 {
        return Ok(());
    }
    let end_bytes = entry
        .offset
        .checked_add(last)
        .and_then(|x| x.checked_add(1))
        .and_then(|x| x.checked_mul(esize))
        .ok_or_else(overflow)?;
    if end_bytes > entry.storage_len {
        return Err(ViewError::EndsPastStorage {
            end: end_bytes,
            storage: entry.storage_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(shape: Vec<usize>, strides: Vec<usize>, offset: usize, storage_len: usize) -> TensorEntry {
        TensorEntry {
            dtype: DType::F32,
            shape,
            strides,
            offset,
            storage_start: 0,
            storage_len,
        }
    }

    #[test]
    fn safetensors_f32_f16_bf16_round_trip_to_f32() {
        let values = [0.0f32, 1.0, -2.5, 0.099_975_586, 65504.0, 3.0e-5];
        let f16: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
        let bf16: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let t = |name: &str, dtype, bytes| TensorToWrite {
            name: name.into(),
            dtype,
            shape: vec![2, 3],
            bytes,
        };
        write_safetensors(
            &path,
            &[
                t("a", safetensors::Dtype::F32, bytemuck::cast_slice(&values)),
                t("b", safetensors::Dtype::F16, bytemuck::cast_slice(&f16)),
                t("c", safetensors::Dtype::BF16, bytemuck::cast_slice(&bf16)),
            ],
            None,
        )
        .unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        assert_eq!(ckpt.len(), 3);
        assert_eq!(ckpt.entry("b").unwrap().dtype, DType::F16);
        assert_eq!(ckpt.to_f32("a").unwrap(), values.to_vec());
        let want_f16: Vec<f32> = f16.iter().map(|v| v.to_f32()).collect();
        let want_bf16: Vec<f32> = bf16.iter().map(|v| v.to_f32()).collect();
        assert_eq!(ckpt.to_f32("b").unwrap(), want_f16);
        assert_eq!(ckpt.to_f32("c").unwrap(), want_bf16);
        assert!(matches!(
            ckpt.to_f32("zz"),
            Err(CheckpointError::NoSuchTensor { .. })
        ));
        // No temporary file is left beside the output.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn view_errors_are_typed_and_say_what_is_wrong() {
        // Last element at 1 + 3 + 2 = 6: bytes up to 7 × 4 = 28 of a 24-byte storage.
        let e = check_view_bounds(&view(vec![2, 3], vec![3, 1], 1, 24)).unwrap_err();
        assert_eq!(e, ViewError::EndsPastStorage { end: 28, storage: 24 });
        assert_eq!(e.to_string(), "view needs 28 bytes but its storage holds 24");
        assert_eq!(
            check_view_bounds(&view(vec![2], vec![usize::MAX], 0, 24)),
            Err(ViewError::Overflow)
        );
        assert_eq!(
            check_view_bounds(&view(vec![2, 3], vec![1], 0, 24)),
            Err(ViewError::Ranks)
        );
    }

    #[test]
    fn view_bounds_are_checked_without_overflow() {
        assert!(check_view_bounds(&view(vec![2, 3], vec![3, 1], 0, 24)).is_ok());
        assert!(check_view_bounds(&view(vec![2, 3], vec![3, 1], 1, 24)).is_err());
        assert!(check_view_bounds(&view(vec![3, 2], vec![1, 3], 0, 24)).is_ok());
        assert!(
            check_view_bounds(&view(vec![0, 4], vec![4, 1], 7, 24)).is_err(),
            "empty view past the end"
        );
        assert!(check_view_bounds(&view(vec![usize::MAX, 2], vec![2, 1], 0, 24)).is_err());
        assert!(check_view_bounds(&view(vec![2], vec![usize::MAX], 0, 24)).is_err());
        assert!(check_view_bounds(&view(vec![1], vec![1], usize::MAX, 24)).is_err());
    }
}
