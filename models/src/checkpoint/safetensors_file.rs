//! `model.safetensors`: the `safetensors` crate validates the header (offsets tile the data region, no
//! overlaps, sizes match shapes); we only record where each tensor lives inside the map.

use std::collections::BTreeMap;
use std::path::Path;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::{CheckpointError, DType, TensorEntry};

pub(crate) fn read_tensors(
    path: &Path,
    map: &Mmap,
) -> Result<BTreeMap<String, TensorEntry>, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file = SafeTensors::deserialize(map).map_err(|e| {
        corrupt(format!(
            "{e} (expected a safetensors file or a PyTorch zip; re-download or re-export the weights)"
        ))
    })?;
    let base = map.as_ptr() as usize;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let dtype = match view.dtype() {
            Dtype::F64 => DType::F64,
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::I64 => DType::I64,
            Dtype::I32 => DType::I32,
            Dtype::I16 => DType::I16,
            Dtype::I8 => DType::I8,
            Dtype::U8 => DType::U8,
            Dtype::BOOL => DType::Bool,
            other => {
                return Err(CheckpointError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!("tensor `{name}` has dtype {other:?}, which scinterp does not read"),
                })
            }
        };
        let data = view.data();
        let shape = view.shape().to_vec();
        tensors.insert(
            name,
            TensorEntry {
                dtype,
                strides: TensorEntry::contiguous_strides(&shape),
                shape,
                offset: 0,
                // The view borrows from the map, so its address minus the map's is its file offset.
                storage_start: data.as_ptr() as usize - base,
                storage_len: data.len(),
            },
        );
    }
    Ok(tensors)
}
