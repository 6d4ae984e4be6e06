//! The random-weight control of a model: the same folder (configs, vocabularies, dictionaries) with
//! every weight tensor redrawn from a seeded initialisation. Running a pipeline on it beside the trained
//! model shows what training added; anything the control also finds comes from the architecture, the
//! tokenizer or the cells, not from learning.
//!
//! The draw, per tensor, by role (the initialisation transformers uses for BERT, `initializer_range`
//! 0.02, applied by name so it covers both families): normalisation weights (a 1-D `*.weight` whose name
//! contains `norm`, any case) are 1; biases (a name ending in `bias`, including scGPT's
//! `in_proj_bias` and the MLM `cls.predictions.bias`) are 0; every other tensor is N(0, 0.02²).
//! Tensor `t` (in the checkpoint's name order) draws from `Rng::new(seed, t)`, so a tensor's values do not
//! depend on the other tensors.

use std::path::{Path, PathBuf};

use scinterp_engine::rng::Rng;

use crate::checkpoint::Checkpoint;
use crate::synthetic::write_f32_tensors;
use crate::ModelError;

/// Standard deviation of the drawn matrices (BERT's `initializer_range`).
pub const INIT_STD: f64 = 0.02;

/// What [`write_random_control`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RandomControl {
    pub dir: PathBuf,
    /// The registry's name of the model (`geneformer`, `scgpt`).
    pub model: &'static str,
    pub seed: u64,
    pub tensors: usize,
    pub parameters: usize,
    /// Files copied unchanged from the trained model's folder.
    pub copied: Vec<String>,
}

/// How a tensor is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    NormWeight,
    Bias,
    Matrix,
}

fn role(name: &str, rank: usize) -> Role {
    if name.ends_with("bias") {
        Role::Bias
    } else if rank == 1 && name.ends_with("weight") && name.to_ascii_lowercase().contains("norm") {
        Role::NormWeight
    } else {
        Role::Matrix
    }
}

/// Values of tensor number `index` of the control.
fn draw(name: &str, shape: &[usize], seed: u64, index: u64) -> Vec<f32> {
    let numel = shape.iter().product();
    match role(name, shape.len()) {
        Role::NormWeight => vec![1.0; numel],
        Role::Bias => vec![0.0; numel],
        Role::Matrix => {
            let mut rng = Rng::new(seed, index);
            (0..numel).map(|_| (INIT_STD * rng.normal()) as f32).collect()
        }
    }
}

fn is_weights_file(name: &str) -> bool {
    [".safetensors", ".bin", ".pt", ".pth", ".ckpt"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Writes the random-weight control of the model folder `model_dir` into `out` (created; an existing
/// non-empty `out` is refused) and loads it back to check that it is a model of the same shape.
pub fn write_random_control(model_dir: &Path, out: &Path, seed: u64) -> Result<RandomControl, ModelError> {
    let trained = crate::load(model_dir, false)?;
    let checkpoint = Checkpoint::open(&trained.weights)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(ModelError::Config {
            path: out.to_path_buf(),
            reason: "the control's folder exists and is not empty; remove it or choose another".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(io(out))?;

    let mut copied = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(model_dir)
        .map_err(io(model_dir))?
        .collect::<Result<_, _>>()
        .map_err(io(model_dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.path().is_file() || is_weights_file(&name) {
            continue;
        }
        std::fs::copy(entry.path(), out.join(&name)).map_err(io(&entry.path()))?;
        copied.push(name);
    }

    let mut entries: Vec<(&str, &[usize])> = checkpoint
        .names()
        .filter_map(|n| checkpoint.entry(n).map(|e| (n, e.shape.as_slice())))
        .collect();
    entries.sort();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = entries
        .iter()
        .enumerate()
        .map(|(t, &(name, shape))| {
            (
                name.to_string(),
                shape.to_vec(),
                draw(name, shape, seed, t as u64),
            )
        })
        .collect();
    let parameters = tensors.iter().map(|(_, _, v)| v.len()).sum();
    write_f32_tensors(&out.join("model.safetensors"), &tensors)?;
    let control = crate::load(out, false)?;
    Ok(RandomControl {
        dir: out.to_path_buf(),
        model: control.name,
        seed,
        tensors: tensors.len(),
        parameters,
        copied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_names() {
        assert_eq!(role("bert.embeddings.LayerNorm.weight", 1), Role::NormWeight);
        assert_eq!(
            role("transformer_encoder.layers.0.norm1.weight", 1),
            Role::NormWeight
        );
        assert_eq!(
            role("transformer_encoder.layers.0.self_attn.in_proj_bias", 1),
            Role::Bias
        );
        assert_eq!(role("cls.predictions.bias", 1), Role::Bias);
        assert_eq!(
            role("bert.encoder.layer.0.attention.self.query.weight", 2),
            Role::Matrix
        );
        assert_eq!(role("mvc_decoder.W.weight", 2), Role::Matrix);
    }

    #[test]
    fn draws_are_seeded_and_scaled() {
        let a = draw("w", &[200, 50], 7, 3);
        assert_eq!(a, draw("w", &[200, 50], 7, 3));
        assert_ne!(a, draw("w", &[200, 50], 8, 3));
        assert_ne!(a, draw("w", &[200, 50], 7, 4));
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let sd = (a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.002 && (sd - INIT_STD).abs() < 0.001, "{mean} {sd}");
    }

    fn assets() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
    }

    #[test]
    fn the_control_of_each_embedded_model_has_its_shape_and_none_of_its_weights() {
        for model in ["geneformer", "scgpt"] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("control");
            let control = write_random_control(&assets().join(model), &out, 5).unwrap();
            assert_eq!(control.model, model);
            assert!(control.copied.iter().all(|f| !is_weights_file(f)));
            assert!(!control.copied.contains(&"expected.safetensors".to_string()));
            let trained = Checkpoint::open(&assets().join(model).join("model.safetensors")).unwrap();
            let random = Checkpoint::open(&out.join("model.safetensors")).unwrap();
            assert_eq!(trained.len(), random.len());
            for name in trained.names() {
                assert_eq!(
                    trained.entry(name).unwrap().shape,
                    random.entry(name).unwrap().shape,
                    "{name}"
                );
            }
            let name = trained
                .names()
                .find(|n| role(n, 2) == Role::Matrix)
                .unwrap()
                .to_owned();
            assert_ne!(trained.to_f32(&name).unwrap(), random.to_f32(&name).unwrap());
            // Refuses to write into a folder that already holds something.
            let err = write_random_control(&assets().join(model), &out, 5)
                .unwrap_err()
                .to_string();
            assert!(err.contains("not empty"), "{err}");
        }
    }
}
