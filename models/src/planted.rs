//! The planted-program model of `scinterp demo --planted` (the fast test fixture): a small
//! Geneformer-V2-shaped BERT with seeded synthetic weights ([`crate::synthetic`]) in whose gene
//! embeddings known gene programs are planted, and the seeded cells that express them. The programs are
//! the known answer the pipeline (SAE → analyze → annotate → trace) must recover.

use std::path::Path;

use serde_json::json;

use crate::checkpoint::CheckpointError;
use crate::synthetic::{splitmix64, tensor_values, write_f32_tensors, SyntheticSpec};

/// Width, depth, heads and FFN width (small), with the real V2 vocabulary size and special tokens.
pub const HIDDEN: usize = 128;
pub const LAYERS: usize = 4;
pub const HEADS: usize = 2;
pub const FFN: usize = 512;
pub const VOCAB: usize = 20_275;
pub const MAX_POS: usize = 512;
pub const CLS: u32 = 2;
pub const EOS: u32 = 3;
/// Gene programs planted in the embeddings (see [`programs`]).
pub const PROGRAMS: usize = 12;
pub const PROGRAM_SIZE: usize = 20;
/// The programs are the first genes of a pool of `POOL` gene tokens starting at `POOL_START`.
pub const POOL_START: u32 = 4;
pub const POOL: usize = 800;
/// Norm of the direction added to the embedding of every gene of a program.
pub const PROGRAM_STRENGTH: f32 = 0.5;

#[derive(Debug, thiserror::Error)]
pub enum PlantedError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// Writes `config.json` and `model.safetensors` of the planted model into `dir` (created).
pub fn write_model(dir: &Path, seed: u64) -> Result<(), PlantedError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PlantedError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config = json!({
        "architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_act": "relu",
        "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "intermediate_size": FFN, "max_position_embeddings": MAX_POS, "vocab_size": VOCAB,
        "layer_norm_eps": 1e-12, "type_vocab_size": 2, "position_embedding_type": "absolute",
        "pad_token_id": 0, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    });
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).expect("a JSON literal serialises");
    std::fs::write(&config_path, text).map_err(io(&config_path))?;

    let (names, shapes) = bert_tensors();
    // LayerNorm gains near 1; query/key weights large enough that attention is peaked, not uniform.
    let qk_scale = 1.4 * 3f64.sqrt() / (HIDDEN as f64).sqrt();
    let (centers, scales) = names
        .iter()
        .map(|n| {
            if n.ends_with("LayerNorm.weight") {
                (1.0, 0.1)
            } else if n.ends_with("LayerNorm.bias") {
                (0.0, 0.1)
            } else if n.ends_with("query.weight") || n.ends_with("key.weight") {
                (0.0, qk_scale)
            } else {
                (0.0, 0.05)
            }
        })
        .unzip();
    let spec = SyntheticSpec {
        seed,
        names,
        shapes,
        centers,
        scales,
    };
    // Plant the gene programs: every gene of program p gets the same unit direction added to its
    // embedding, so the residual stream carries the program and SAE features can find it.
    let mut tensors = spec.generate();
    let embeddings = &mut tensors[0].2;
    for (p, genes) in programs().iter().enumerate() {
        let direction = unit_direction(seed ^ (0x9E0 + p as u64), HIDDEN);
        for &g in genes {
            let row = &mut embeddings[g as usize * HIDDEN..(g as usize + 1) * HIDDEN];
            row.iter_mut()
                .zip(&direction)
                .for_each(|(e, d)| *e += PROGRAM_STRENGTH * d);
        }
    }
    write_f32_tensors(&dir.join("model.safetensors"), &tensors)?;
    Ok(())
}

/// The tensors of a `BertForMaskedLM` of this shape, by Hugging Face name, word embeddings first.
fn bert_tensors() -> (Vec<String>, Vec<Vec<usize>>) {
    let mut names = Vec::new();
    let mut shapes = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| {
        names.push(name);
        shapes.push(shape);
    };
    add(
        "bert.embeddings.word_embeddings.weight".into(),
        vec![VOCAB, HIDDEN],
    );
    add(
        "bert.embeddings.position_embeddings.weight".into(),
        vec![MAX_POS, HIDDEN],
    );
    add(
        "bert.embeddings.token_type_embeddings.weight".into(),
        vec![2, HIDDEN],
    );
    add("bert.embeddings.LayerNorm.weight".into(), vec![HIDDEN]);
    add("bert.embeddings.LayerNorm.bias".into(), vec![HIDDEN]);
    for l in 0..LAYERS {
        let p = format!("bert.encoder.layer.{l}");
        for (part, out_f, in_f) in [
            ("attention.self.query", HIDDEN, HIDDEN),
            ("attention.self.key", HIDDEN, HIDDEN),
            ("attention.self.value", HIDDEN, HIDDEN),
            ("attention.output.dense", HIDDEN, HIDDEN),
            ("intermediate.dense", FFN, HIDDEN),
            ("output.dense", HIDDEN, FFN),
        ] {
            add(format!("{p}.{part}.weight"), vec![out_f, in_f]);
            add(format!("{p}.{part}.bias"), vec![out_f]);
        }
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(format!("{p}.{ln}.weight"), vec![HIDDEN]);
            add(format!("{p}.{ln}.bias"), vec![HIDDEN]);
        }
    }
    add(
        "cls.predictions.transform.dense.weight".into(),
        vec![HIDDEN, HIDDEN],
    );
    add("cls.predictions.transform.dense.bias".into(), vec![HIDDEN]);
    add("cls.predictions.transform.LayerNorm.weight".into(), vec![HIDDEN]);
    add("cls.predictions.transform.LayerNorm.bias".into(), vec![HIDDEN]);
    add("cls.predictions.bias".into(), vec![VOCAB]);
    (names, shapes)
}

/// The planted programs: `PROGRAMS` disjoint sets of `PROGRAM_SIZE` genes from the start of the pool.
pub fn programs() -> Vec<Vec<u32>> {
    (0..PROGRAMS)
        .map(|p| {
            (0..PROGRAM_SIZE)
                .map(|i| POOL_START + (p * PROGRAM_SIZE + i) as u32)
                .collect()
        })
        .collect()
}

/// A seeded stream of u64s.
fn stream(seed: u64) -> impl FnMut() -> u64 {
    let mut state = splitmix64(seed);
    move || {
        state = splitmix64(state);
        state
    }
}

/// `n` cells in V2 form that each express three programs in full plus random other genes of the pool
/// (so every gene is seen often enough to rank), in a seeded order (rank order is not informative).
pub fn program_cells(seed: u64, n: usize) -> Vec<Vec<u32>> {
    let programs = programs();
    let mut next = stream(seed ^ 0x9E11);
    (0..n)
        .map(|_| {
            let mut genes: Vec<u32> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            while genes.len() < 3 * PROGRAM_SIZE {
                let p = (next() % PROGRAMS as u64) as usize;
                if seen.insert(programs[p][0]) {
                    genes.extend(&programs[p]);
                    seen.extend(&programs[p]);
                }
            }
            let extra = 40 + (next() % 160) as usize;
            while genes.len() < 3 * PROGRAM_SIZE + extra {
                let g = POOL_START + (next() % POOL as u64) as u32;
                if seen.insert(g) {
                    genes.push(g);
                }
            }
            for i in (1..genes.len()).rev() {
                genes.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            std::iter::once(CLS)
                .chain(genes)
                .chain(std::iter::once(EOS))
                .collect()
        })
        .collect()
}

/// `n` cells of seeded lengths in V2 form: `<cls>`, distinct gene tokens (ids ≥ 4), `<eos>`.
pub fn random_cells(seed: u64, n: usize) -> Vec<Vec<u32>> {
    let mut next = stream(seed ^ 0xCE11);
    (0..n)
        .map(|_| {
            let genes = 40 + (next() % 300) as usize;
            let mut cell = vec![CLS];
            let mut seen = std::collections::HashSet::new();
            while cell.len() <= genes {
                let id = 4 + (next() % (VOCAB as u64 - 4)) as u32;
                if seen.insert(id) {
                    cell.push(id);
                }
            }
            cell.push(EOS);
            cell
        })
        .collect()
}

/// A seeded unit vector of `width` values.
pub fn unit_direction(seed: u64, width: usize) -> Vec<f32> {
    let v = tensor_values(seed ^ 0xD1, 0, width, 0.0, 1.0);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_cells_hold_three_whole_programs_and_distinct_genes() {
        let programs = programs();
        for cell in program_cells(7, 20) {
            assert_eq!((cell[0], *cell.last().unwrap()), (CLS, EOS));
            let genes = &cell[1..cell.len() - 1];
            let distinct: std::collections::HashSet<_> = genes.iter().collect();
            assert_eq!(distinct.len(), genes.len());
            let whole = programs
                .iter()
                .filter(|p| p.iter().all(|g| distinct.contains(g)))
                .count();
            assert!(whole >= 3, "{whole} whole programs");
        }
        assert_eq!(program_cells(7, 3), program_cells(7, 3));
        assert_ne!(program_cells(7, 3), program_cells(8, 3));
    }

    #[test]
    fn the_written_model_loads_with_the_planted_shape() {
        let dir = std::env::temp_dir().join(format!("scinterp-planted-{}", std::process::id()));
        write_model(&dir, 3).unwrap();
        let model = crate::load(&dir, true).unwrap();
        assert_eq!(model.encoder.dims().d_model, HIDDEN);
        assert_eq!(model.encoder.dims().n_layers, LAYERS);
        assert_eq!(model.encoder.dims().vocab_size, VOCAB);
        let direction = unit_direction(3 ^ 0x9E0, HIDDEN);
        let norm: f32 = direction.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
