//! Seeded synthetic weights from a counter-based generator, reproducible bit for bit in Python.
//!
//! Used by `scinterp demo` (a small model made by our own seeded code) and by tests whose reference
//! outputs were computed by Hugging Face transformers on the same weights: the fixtures then hold only
//! the expected outputs and `weights.json` (seed, names, shapes, centre and scale per tensor), never
//! tens of megabytes of random floats. The Python twin is in `tests/reference/make_geneformer_fixtures.py`.
//!
//! Rule: tensor number `t` (in the listed order), element `i` (row-major):
//! `key = (seed << 48) ^ (t << 32) ^ i` (u64, wrapping), `u = (splitmix64(key) >> 40) / 2^24`,
//! `value = f32(center + scale · (2u − 1))` computed in f64.

use std::path::Path;

use serde::Deserialize;

use crate::checkpoint::{write_safetensors, CheckpointError, TensorToWrite};

pub use scinterp_engine::rng::splitmix64;

/// Element values of tensor number `index` of a synthetic model.
pub fn tensor_values(seed: u64, index: u64, numel: usize, center: f64, scale: f64) -> Vec<f32> {
    let base = (seed << 48) ^ (index << 32);
    (0..numel as u64)
        .map(|i| {
            let u = (splitmix64(base ^ i) >> 40) as f64 / (1u64 << 24) as f64;
            (center + scale * (2.0 * u - 1.0)) as f32
        })
        .collect()
}

/// The description of a synthetic model's weights (`weights.json` of the fixtures).
#[derive(Clone, Debug, Deserialize)]
pub struct SyntheticSpec {
    pub seed: u64,
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub centers: Vec<f64>,
    pub scales: Vec<f64>,
}

impl SyntheticSpec {
    pub fn from_file(path: &Path) -> Result<Self, crate::ModelError> {
        let refuse = |reason: String| crate::ModelError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| refuse(e.to_string()))?;
        let spec: SyntheticSpec = serde_json::from_str(&text).map_err(|e| refuse(e.to_string()))?;
        let n = spec.names.len();
        if spec.shapes.len() != n || spec.centers.len() != n || spec.scales.len() != n {
            return Err(refuse(
                "names, shapes, centers and scales differ in length".into(),
            ));
        }
        Ok(spec)
    }

    /// Generates every tensor, in order.
    pub fn generate(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.names
            .iter()
            .enumerate()
            .map(|(t, name)| {
                let shape = self.shapes[t].clone();
                let numel = shape.iter().product();
                let values = tensor_values(self.seed, t as u64, numel, self.centers[t], self.scales[t]);
                (name.clone(), shape, values)
            })
            .collect()
    }

    /// Writes the generated tensors as an f32 `model.safetensors`.
    pub fn write_safetensors(&self, path: &Path) -> Result<(), CheckpointError> {
        write_f32_tensors(path, &self.generate())
    }
}

/// Writes (name, shape, values) tensors as an f32 safetensors file.
pub fn write_f32_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), CheckpointError> {
    let to_write: Vec<TensorToWrite<'_>> = tensors
        .iter()
        .map(|(name, shape, values)| TensorToWrite {
            name: name.clone(),
            dtype: safetensors::Dtype::F32,
            shape: shape.clone(),
            bytes: bytemuck::cast_slice(values),
        })
        .collect();
    write_safetensors(path, &to_write, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_published_sequence() {
        // The first outputs of splitmix64 seeded with 0 (state advanced by the gamma before mixing).
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn values_stay_in_range_and_depend_on_every_input() {
        let a = tensor_values(7, 3, 1000, 1.0, 0.1);
        assert!(a.iter().all(|v| (0.9..=1.1).contains(v)));
        assert_ne!(a, tensor_values(8, 3, 1000, 1.0, 0.1));
        assert_ne!(a, tensor_values(7, 4, 1000, 1.0, 0.1));
        assert_eq!(a, tensor_values(7, 3, 1000, 1.0, 0.1));
    }
}
