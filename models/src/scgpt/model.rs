//! scGPT whole-human as an [`Encoder`]: gene embedding + LayerNorm plus the continuous value encoder,
//! 12 post-norm `nn.TransformerEncoderLayer`s, and the expression (ExprDecoder) and MVC heads.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use scinterp_engine::cpu;
use scinterp_engine::{
    Activation, Encoder, EncoderDims, EngineError, LayerNormWeights, LinearWeights, Matrix, PackedBatch,
    PostLnBlock, WeightShapeError,
};

use super::config::{ScgptConfig, SCGPT_LAYER_NORM_EPS, SCGPT_MAX_VALUE};
use crate::checkpoint::Checkpoint;
use crate::error::ModelError;
use crate::tokenize::scgpt::ScgptVocab;
use crate::weights::{IgnoredKeys, WeightReader};

/// Keys of the published checkpoint that inference does not use.
/// `flag_encoder.weight` (the generative-training flag embedding) is in every whole-human checkpoint, so
/// it is dropped without a word; a classifier head is not, so it gets a warning.
const SCGPT_IGNORED_KEYS: IgnoredKeys<'static> = IgnoredKeys {
    silently: &["flag_encoder.weight"],
    with_warning: &[(
        "cls_decoder.",
        "a cell-type classifier head, not part of the pretrained model",
    )],
};

/// Weight files, in the order they are looked for.
const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "best_model.pt"];

/// What to load besides the encoder.
#[derive(Clone, Copy, Debug)]
pub struct ScgptLoadOptions {
    /// Load the expression and MVC decoders (needed for `expr_pred` / `mvc_pred`).
    pub with_head: bool,
}

impl Default for ScgptLoadOptions {
    fn default() -> Self {
        ScgptLoadOptions { with_head: true }
    }
}

/// `v = LN(W2·relu(w1·min(x, 512) + b1) + b2)` per token, where `x` is the token's value.
struct ValueEncoder {
    /// `linear1`: `[d_model, 1]`, stored as its one column.
    w1: Vec<f32>,
    b1: Vec<f32>,
    linear2: LinearWeights,
    norm: LayerNormWeights,
}

/// `ExprDecoder` (Linear–LeakyReLU–Linear–LeakyReLU–Linear to 1) and the inner-product `MVCDecoder`
/// (`pred = W·sigmoid(gene2query(g)) · cell_emb`, with `g` the gene-encoder output).
struct Heads {
    expr_fc0: LinearWeights,
    expr_fc2: LinearWeights,
    expr_fc4: LinearWeights,
    mvc_gene2query: LinearWeights,
    mvc_w: LinearWeights,
}

/// A loaded scGPT model (f32, CPU).
pub struct Scgpt {
    config: ScgptConfig,
    dims: EncoderDims,
    weights_path: PathBuf,
    pad_id: u32,
    cls_id: u32,
    gene_embeddings: Vec<f32>,
    gene_norm: LayerNormWeights,
    value_encoder: ValueEncoder,
    blocks: Vec<PostLnBlock>,
    heads: Option<Heads>,
}

impl std::fmt::Debug for Scgpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scgpt")
            .field("dims", &self.dims)
            .field("weights_path", &self.weights_path)
            .field("heads", &self.heads.is_some())
            .finish()
    }
}

/// True when `dir` looks like an scGPT model folder (it has `args.json`).
pub fn is_scgpt_dir(dir: &Path) -> bool {
    dir.join("args.json").is_file()
}

impl Scgpt {
    /// Loads a model folder as users have it: `args.json`, `vocab.json`, and `model.safetensors` or
    /// `best_model.pt`.
    pub fn load(dir: &Path, options: ScgptLoadOptions) -> Result<Self, ModelError> {
        let config = ScgptConfig::from_file(&dir.join("args.json"))?;
        let vocab_path = dir.join("vocab.json");
        if !vocab_path.is_file() {
            return Err(ModelError::Config {
                path: vocab_path,
                reason: "missing; an scGPT model folder holds args.json, vocab.json and best_model.pt \
                         (copy vocab.json from the model's download)"
                    .into(),
            });
        }
        let vocab = ScgptVocab::load(&vocab_path).map_err(|e| ModelError::Config {
            path: vocab_path.clone(),
            reason: e.to_string(),
        })?;
        let present: Vec<PathBuf> = WEIGHT_FILES
            .iter()
            .map(|name| dir.join(name))
            .filter(|p| p.is_file())
            .collect();
        let Some(weights) = present.first() else {
            return Err(ModelError::NoWeights {
                dir: dir.to_path_buf(),
                expected: "best_model.pt (or model.safetensors) next to args.json and vocab.json",
            });
        };
        if present.len() > 1 {
            tracing::info!(
                "{}: using {} (also present: {})",
                dir.display(),
                WEIGHT_FILES[0],
                WEIGHT_FILES[1]
            );
        }
        let checkpoint = Checkpoint::open(weights)?;
        Self::from_checkpoint(config, &vocab, &vocab_path, &checkpoint, options)
    }

    /// Builds the model from an opened checkpoint, checking every tensor against the config and vocab.
    pub fn from_checkpoint(
        config: ScgptConfig,
        vocab: &ScgptVocab,
        vocab_path: &Path,
        checkpoint: &Checkpoint,
        options: ScgptLoadOptions,
    ) -> Result<Self, ModelError> {
        let (h, f) = (config.d_model, config.d_ff);
        let eps = SCGPT_LAYER_NORM_EPS;
        let n_vocab = vocab
            .tokens
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        let pad_id = *vocab
            .tokens
            .get(&config.pad_token)
            .ok_or_else(|| ModelError::Config {
                path: vocab_path.to_path_buf(),
                reason: format!(
                    "has no entry for the pad token `{}` named in args.json",
                    config.pad_token
                ),
            })?;
        let mut w = WeightReader::new(checkpoint, SCGPT_IGNORED_KEYS);

        let gene_embeddings = w.take("encoder.embedding.weight", &[n_vocab, h]);
        let gene_norm = w.layer_norm("encoder.enc_norm", h, eps);
        let w1 = w.take("value_encoder.linear1.weight", &[h, 1]);
        let b1 = w.take("value_encoder.linear1.bias", &[h]);
        let linear2 = w.linear("value_encoder.linear2", h, h);
        let value_norm = w.layer_norm("value_encoder.norm", h, eps);

        let mut blocks = Vec::with_capacity(config.n_layers);
        for l in 0..config.n_layers {
            let p = format!("transformer_encoder.layers.{l}");
            // The published checkpoint uses flash-attention names; scGPT's own loader renames them to
            // torch's. Both spellings hold the same fused [q; k; v] layout.
            let qkv_weight = w.take_any(
                &[
                    format!("{p}.self_attn.Wqkv.weight"),
                    format!("{p}.self_attn.in_proj_weight"),
                    format!("{p}.self_attn._impl.Wqkv.weight"),
                ],
                &[3 * h, h],
            );
            let qkv_bias = w.take_any(
                &[
                    format!("{p}.self_attn.Wqkv.bias"),
                    format!("{p}.self_attn.in_proj_bias"),
                    format!("{p}.self_attn._impl.Wqkv.bias"),
                ],
                &[3 * h],
            );
            let out_prefix = if w.has(&format!("{p}.self_attn._impl.out_proj.weight")) {
                format!("{p}.self_attn._impl.out_proj")
            } else {
                format!("{p}.self_attn.out_proj")
            };
            blocks.push((
                LinearWeights::new(qkv_weight, Some(qkv_bias), 3 * h, h),
                w.linear(&out_prefix, h, h),
                w.layer_norm(&format!("{p}.norm1"), h, eps),
                w.linear(&format!("{p}.linear1"), f, h),
                w.linear(&format!("{p}.linear2"), h, f),
                w.layer_norm(&format!("{p}.norm2"), h, eps),
            ));
        }

        let heads = if options.with_head {
            Some((
                w.linear("decoder.fc.0", h, h),
                w.linear("decoder.fc.2", h, h),
                w.linear("decoder.fc.4", 1, h),
                w.linear("mvc_decoder.gene2query", h, h),
                w.linear_no_bias("mvc_decoder.W", h, h),
            ))
        } else {
            w.mark_used_prefix("decoder.");
            w.mark_used_prefix("mvc_decoder.");
            None
        };
        w.finish()?;

        // Every shape was checked above; map any residual inconsistency to the same error, never a panic.
        let path = checkpoint.path().to_path_buf();
        let shape_err = |e: WeightShapeError| ModelError::Weights {
            path: path.clone(),
            problems: vec![e.to_string()],
        };
        let gene_norm = gene_norm.map_err(shape_err)?;
        let value_encoder = ValueEncoder {
            w1,
            b1,
            linear2: linear2.map_err(shape_err)?,
            norm: value_norm.map_err(shape_err)?,
        };
        let mut built = Vec::with_capacity(blocks.len());
        for (qkv, attn_out, ln_attn, ffn_in, ffn_out, ln_out) in blocks {
            let block = PostLnBlock {
                n_heads: config.n_heads,
                head_dim: config.head_dim(),
                qkv: qkv.map_err(shape_err)?,
                attn_out: attn_out.map_err(shape_err)?,
                ln_attn: ln_attn.map_err(shape_err)?,
                ffn_in: ffn_in.map_err(shape_err)?,
                ffn_out: ffn_out.map_err(shape_err)?,
                ln_out: ln_out.map_err(shape_err)?,
                activation: Activation::Relu,
            };
            block.validate(h).map_err(shape_err)?;
            built.push(block);
        }
        let heads = match heads {
            Some((fc0, fc2, fc4, g2q, mvc_w)) => Some(Heads {
                expr_fc0: fc0.map_err(shape_err)?,
                expr_fc2: fc2.map_err(shape_err)?,
                expr_fc4: fc4.map_err(shape_err)?,
                mvc_gene2query: g2q.map_err(shape_err)?,
                mvc_w: mvc_w.map_err(shape_err)?,
            }),
            None => None,
        };
        let dims = EncoderDims {
            n_layers: config.n_layers,
            d_model: h,
            n_heads: config.n_heads,
            head_dim: config.head_dim(),
            d_ff: f,
            vocab_size: n_vocab,
            max_len: None,
        };
        Ok(Scgpt {
            dims,
            weights_path: path,
            pad_id,
            cls_id: vocab.cls,
            gene_embeddings,
            gene_norm,
            value_encoder,
            blocks: built,
            heads,
            config,
        })
    }

    pub fn config(&self) -> &ScgptConfig {
        &self.config
    }

    pub fn weights_path(&self) -> &Path {
        &self.weights_path
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn cls_id(&self) -> u32 {
        self.cls_id
    }

    pub fn has_head(&self) -> bool {
        self.heads.is_some()
    }

    /// The gene encoder's output `g = LN(W_gene[token])`, `[tokens, d_model]`.
    fn gene_encoder(&self, batch: &PackedBatch) -> Matrix {
        let h = self.dims.d_model;
        let mut x = Matrix::zeros(batch.n_tokens(), h);
        x.as_mut_slice()
            .par_chunks_mut(h)
            .zip(batch.tokens().par_iter())
            .for_each(|(row, &t)| {
                let t = t as usize;
                row.copy_from_slice(&self.gene_embeddings[t * h..(t + 1) * h]);
            });
        cpu::layer_norm(&x, &self.gene_norm)
    }

    /// The continuous value encoder over every token's value, `[tokens, d_model]`.
    fn value_encoder(&self, values: &[f32]) -> Matrix {
        let h = self.dims.d_model;
        let enc = &self.value_encoder;
        let mut hidden = Matrix::zeros(values.len(), h);
        hidden
            .as_mut_slice()
            .par_chunks_mut(h)
            .zip(values.par_iter())
            .for_each(|(row, &x)| {
                // torch.clamp(max=512) only: pad (−2) and mask (−1) values pass through unchanged.
                let x = x.min(SCGPT_MAX_VALUE);
                for ((o, &w), &b) in row.iter_mut().zip(&enc.w1).zip(&enc.b1) {
                    *o = (x * w + b).max(0.0);
                }
            });
        let out = cpu::linear(&hidden, &enc.linear2);
        cpu::layer_norm(&out, &enc.norm)
    }

    fn check_batch<'b>(&self, batch: &'b PackedBatch) -> Result<&'b [f32], EngineError> {
        let values = batch.values().ok_or_else(|| {
            EngineError::InvalidBatch(
                "scGPT needs an expression value for every token (input {\"gene_ids\": …, \"values\": …} or \
                 an scGPT token store)"
                    .into(),
            )
        })?;
        if let Some((i, &t)) = batch
            .tokens()
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.dims.vocab_size)
        {
            let cell = batch.offsets().partition_point(|&o| o <= i) - 1;
            return Err(EngineError::InvalidBatch(format!(
                "cell {cell} position {}: gene id {t} is outside the vocabulary (size {}); were the cells \
                 tokenized with this model's vocab.json?",
                i - batch.offsets()[cell],
                self.dims.vocab_size
            )));
        }
        if let Some(i) = values.iter().position(|v| v.is_nan()) {
            let cell = batch.offsets().partition_point(|&o| o <= i) - 1;
            return Err(EngineError::InvalidBatch(format!(
                "cell {cell} position {}: the value is NaN",
                i - batch.offsets()[cell]
            )));
        }
        Ok(values)
    }
}

impl Encoder for Scgpt {
    fn dims(&self) -> &EncoderDims {
        &self.dims
    }

    fn embed(&self, batch: &PackedBatch) -> Result<Matrix, EngineError> {
        let values = self.check_batch(batch)?;
        let mut x = self.gene_encoder(batch);
        let v = self.value_encoder(values);
        for (a, b) in x.as_mut_slice().iter_mut().zip(v.as_slice()) {
            *a += b;
        }
        Ok(x)
    }

    fn block(&self, layer: usize) -> &PostLnBlock {
        &self.blocks[layer]
    }

    fn head(&self, final_state: &Matrix, batch: &PackedBatch) -> Option<Matrix> {
        let heads = self.heads.as_ref()?;
        let leaky = |m: &mut Matrix| {
            m.as_mut_slice().par_iter_mut().for_each(|v| {
                if *v < 0.0 {
                    *v *= 0.01;
                }
            })
        };
        let mut t = cpu::linear(final_state, &heads.expr_fc0);
        leaky(&mut t);
        let mut t = cpu::linear(&t, &heads.expr_fc2);
        leaky(&mut t);
        let expr = cpu::linear(&t, &heads.expr_fc4);

        let mut query = cpu::linear(&self.gene_encoder(batch), &heads.mvc_gene2query);
        query
            .as_mut_slice()
            .par_iter_mut()
            .for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
        let projected = cpu::linear(&query, &heads.mvc_w);

        let mut out = Matrix::zeros(batch.n_tokens(), 2);
        for c in 0..batch.n_cells() {
            let rows = batch.cell_range(c);
            let cell_emb = final_state.row(rows.start);
            for r in rows {
                let mvc: f32 = projected.row(r).iter().zip(cell_emb).map(|(a, b)| a * b).sum();
                out.row_mut(r).copy_from_slice(&[expr.row(r)[0], mvc]);
            }
        }
        Some(out)
    }

    fn head_outputs(&self) -> Vec<(&'static str, usize)> {
        vec![("expr_pred", 1), ("mvc_pred", 1)]
    }

    fn cell_embedding(&self, final_state: &Matrix, batch: &PackedBatch) -> Option<Matrix> {
        let h = self.dims.d_model;
        let mut out = Matrix::zeros(batch.n_cells(), h);
        for c in 0..batch.n_cells() {
            out.row_mut(c)
                .copy_from_slice(final_state.row(batch.offsets()[c]));
        }
        Some(out)
    }
}
