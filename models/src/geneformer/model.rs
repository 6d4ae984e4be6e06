//! Geneformer as an [`Encoder`]: BERT embeddings (word + token type 0 + absolute position, then LN),
//! post-LN blocks, and the optional tied MLM head.

use std::path::{Path, PathBuf};

use scinterp_engine::cpu;
use scinterp_engine::{
    Activation, BertEmbedding, Encoder, EncoderDims, EngineError, LayerNormWeights, LinearWeights, Matrix,
    PackedBatch, PostLnBlock, WeightShapeError,
};

use super::config::BertConfig;
use crate::checkpoint::Checkpoint;
use crate::error::ModelError;
use crate::weights::{IgnoredKeys, WeightReader};

/// Keys the forward pass does not read: buffers, tied copies of the word embeddings (read only with the
/// head), and the heads of other BERT tasks (with a warning).
const GENEFORMER_IGNORED_KEYS: IgnoredKeys<'static> = IgnoredKeys {
    silently: &[
        "bert.embeddings.position_ids",
        "bert.embeddings.token_type_ids",
        "cls.predictions.decoder.weight",
        "cls.predictions.decoder.bias",
    ],
    with_warning: &[
        ("bert.pooler.", "not part of BertForMaskedLM"),
        ("cls.seq_relationship.", "not part of BertForMaskedLM"),
    ],
};

/// What to load besides the encoder.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Load the MLM head (needed for logits; costs one more `[vocab, hidden]` matrix in memory).
    pub with_head: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { with_head: true }
    }
}

/// The MLM head: `logits = LN(relu(h·W_tᵀ + b_t))·W_decᵀ + b_dec`.
struct MlmHead {
    transform: LinearWeights,
    ln: LayerNormWeights,
    decoder: LinearWeights,
}

/// A loaded Geneformer model (f32, CPU).
pub struct Geneformer {
    config: BertConfig,
    dims: EncoderDims,
    weights_path: PathBuf,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    token_type_0: Vec<f32>,
    ln_embed: LayerNormWeights,
    blocks: Vec<PostLnBlock>,
    head: Option<MlmHead>,
}

impl std::fmt::Debug for Geneformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Geneformer")
            .field("dims", &self.dims)
            .field("weights_path", &self.weights_path)
            .field("head", &self.head.is_some())
            .finish()
    }
}

impl Geneformer {
    /// Loads `dir/config.json` and `dir/model.safetensors` (or, if absent, `dir/pytorch_model.bin`).
    pub fn load(dir: &Path, options: LoadOptions) -> Result<Self, ModelError> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let weights = ["model.safetensors", "pytorch_model.bin"]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file());
        let Some(weights) = weights else {
            if dir.join("model.safetensors.index.json").is_file() {
                return Err(ModelError::Config {
                    path: dir.join("model.safetensors.index.json"),
                    reason: "sharded checkpoints are not supported yet; merge the shards into one \
                             model.safetensors (no Geneformer release is sharded)"
                        .into(),
                });
            }
            return Err(ModelError::NoWeights {
                dir: dir.to_path_buf(),
                expected: "model.safetensors or pytorch_model.bin next to config.json",
            });
        };
        let checkpoint = Checkpoint::open(&weights)?;
        Self::from_checkpoint(config, &checkpoint, options)
    }

    /// Builds the model from an opened checkpoint, checking every tensor against the config.
    pub fn from_checkpoint(
        config: BertConfig,
        checkpoint: &Checkpoint,
        options: LoadOptions,
    ) -> Result<Self, ModelError> {
        let (h, v, p, i) = (
            config.hidden_size,
            config.vocab_size,
            config.max_position_embeddings,
            config.intermediate_size,
        );
        let eps = config.layer_norm_eps;
        let mut w = WeightReader::new(checkpoint, GENEFORMER_IGNORED_KEYS);

        let word_embeddings = w.take("bert.embeddings.word_embeddings.weight", &[v, h]);
        let position_embeddings = w.take("bert.embeddings.position_embeddings.weight", &[p, h]);
        let token_types = w.take(
            "bert.embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        );
        let token_type_0 = token_types.get(..h).map(<[f32]>::to_vec).unwrap_or_default();
        let ln_embed = w.layer_norm("bert.embeddings.LayerNorm", h, eps);

        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let prefix = format!("bert.encoder.layer.{l}");
            let q = w.linear(&format!("{prefix}.attention.self.query"), h, h);
            let k = w.linear(&format!("{prefix}.attention.self.key"), h, h);
            let vv = w.linear(&format!("{prefix}.attention.self.value"), h, h);
            let qkv =
                q.and_then(|q| k.and_then(|k| vv.and_then(|v| LinearWeights::concat_outputs(&[q, k, v]))));
            blocks.push((
                qkv,
                w.linear(&format!("{prefix}.attention.output.dense"), h, h),
                w.layer_norm(&format!("{prefix}.attention.output.LayerNorm"), h, eps),
                w.linear(&format!("{prefix}.intermediate.dense"), i, h),
                w.linear(&format!("{prefix}.output.dense"), h, i),
                w.layer_norm(&format!("{prefix}.output.LayerNorm"), h, eps),
            ));
        }

        let head = if options.with_head {
            let transform = w.linear("cls.predictions.transform.dense", h, h);
            let ln = w.layer_norm("cls.predictions.transform.LayerNorm", h, eps);
            // The decoder is tied to the word embeddings; old .bin files store it as a view.
            let decoder_weight = if checkpoint.entry("cls.predictions.decoder.weight").is_some() {
                w.take("cls.predictions.decoder.weight", &[v, h])
            } else {
                word_embeddings.clone()
            };
            let decoder_bias = if checkpoint.entry("cls.predictions.decoder.bias").is_some() {
                w.mark_used("cls.predictions.bias");
                w.take("cls.predictions.decoder.bias", &[v])
            } else {
                w.take("cls.predictions.bias", &[v])
            };
            Some((transform, ln, decoder_weight, decoder_bias))
        } else {
            w.mark_used_prefix("cls.predictions.");
            None
        };

        w.finish()?;

        // Every shape was checked above, so the constructors below cannot fail; map any residual
        // inconsistency to the same error type rather than panicking.
        let path = checkpoint.path().to_path_buf();
        let shape_err = |e: WeightShapeError| ModelError::Weights {
            path: path.clone(),
            problems: vec![e.to_string()],
        };
        let ln_embed = ln_embed.map_err(shape_err)?;
        let mut built = Vec::with_capacity(blocks.len());
        for (qkv, attn_out, ln_attn, ffn_in, ffn_out, ln_out) in blocks {
            let block = PostLnBlock {
                n_heads: config.num_attention_heads,
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
        let head = match head {
            Some((transform, ln, dec_w, dec_b)) => Some(MlmHead {
                transform: transform.map_err(shape_err)?,
                ln: ln.map_err(shape_err)?,
                decoder: LinearWeights::new(dec_w, Some(dec_b), v, h).map_err(shape_err)?,
            }),
            None => None,
        };

        let dims = EncoderDims {
            n_layers: config.num_hidden_layers,
            d_model: h,
            n_heads: config.num_attention_heads,
            head_dim: config.head_dim(),
            d_ff: i,
            vocab_size: v,
            max_len: Some(p),
        };
        Ok(Geneformer {
            config,
            dims,
            weights_path: path,
            word_embeddings,
            position_embeddings,
            token_type_0,
            ln_embed,
            blocks: built,
            head,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn weights_path(&self) -> &Path {
        &self.weights_path
    }

    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }
}

impl Encoder for Geneformer {
    fn dims(&self) -> &EncoderDims {
        &self.dims
    }

    fn embed(&self, batch: &PackedBatch) -> Result<Matrix, EngineError> {
        let h = self.dims.d_model;
        let max_len = self.config.max_position_embeddings;
        for c in 0..batch.n_cells() {
            if batch.cell_len(c) > max_len {
                return Err(EngineError::InvalidBatch(format!(
                    "cell {c} has {} tokens but the model accepts at most {max_len} \
                     (max_position_embeddings); tokenize with --max-len {max_len}",
                    batch.cell_len(c)
                )));
            }
        }
        if let Some((i, &t)) = batch
            .tokens()
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.dims.vocab_size)
        {
            let cell = batch.offsets().partition_point(|&o| o <= i) - 1;
            return Err(EngineError::InvalidBatch(format!(
                "cell {cell} position {}: token id {t} is outside the vocabulary (size {}); \
                 were the cells tokenized with this model's dictionary?",
                i - batch.offsets()[cell],
                self.dims.vocab_size
            )));
        }
        let mut x = Matrix::zeros(batch.n_tokens(), h);
        for (row, (&token, position)) in batch.tokens().iter().zip(batch.positions()).enumerate() {
            let word = &self.word_embeddings[token as usize * h..(token as usize + 1) * h];
            let pos = &self.position_embeddings[position * h..(position + 1) * h];
            // Same association as HF: (word + token_type) + position.
            for (((o, w), t), p) in x
                .row_mut(row)
                .iter_mut()
                .zip(word)
                .zip(&self.token_type_0)
                .zip(pos)
            {
                *o = (w + t) + p;
            }
        }
        Ok(cpu::layer_norm(&x, &self.ln_embed))
    }

    fn bert_embedding(&self) -> Option<BertEmbedding<'_>> {
        Some(BertEmbedding {
            word: &self.word_embeddings,
            position: &self.position_embeddings,
            token_type: &self.token_type_0,
            ln: &self.ln_embed,
        })
    }

    fn block(&self, layer: usize) -> &PostLnBlock {
        &self.blocks[layer]
    }

    fn head(&self, final_state: &Matrix, _batch: &PackedBatch) -> Option<Matrix> {
        let head = self.head.as_ref()?;
        let mut t = cpu::linear(final_state, &head.transform);
        cpu::relu_in_place(t.as_mut_slice());
        let t = cpu::layer_norm(&t, &head.ln);
        Some(cpu::linear(&t, &head.decoder))
    }

    fn head_outputs(&self) -> Vec<(&'static str, usize)> {
        vec![("logits", self.dims.vocab_size)]
    }

    fn head_logit_columns(
        &self,
        final_state: &Matrix,
        _batch: &PackedBatch,
        columns: &[u32],
    ) -> Option<Matrix> {
        let head = self.head.as_ref()?;
        let mut t = cpu::linear(final_state, &head.transform);
        cpu::relu_in_place(t.as_mut_slice());
        let t = cpu::layer_norm(&t, &head.ln);
        // Only the decoder rows of `columns`: a gene panel is a few hundred of the ~20k tokens.
        let (w, d) = (head.decoder.weight(), head.decoder.in_features());
        let weight: Vec<f32> = columns
            .iter()
            .flat_map(|&c| w[c as usize * d..(c as usize + 1) * d].iter().copied())
            .collect();
        let bias = head
            .decoder
            .bias()
            .map(|b| columns.iter().map(|&c| b[c as usize]).collect());
        let picked = LinearWeights::new(weight, bias, columns.len(), d).ok()?;
        Some(cpu::linear(&t, &picked))
    }

    fn head_columns(&self, final_state: &Matrix, _batch: &PackedBatch, columns: &[u32]) -> Option<Vec<f32>> {
        let head = self.head.as_ref()?;
        let mut t = cpu::linear(final_state, &head.transform);
        cpu::relu_in_place(t.as_mut_slice());
        let t = cpu::layer_norm(&t, &head.ln);
        let (w, d) = (head.decoder.weight(), head.decoder.in_features());
        let bias = head.decoder.bias();
        Some(
            columns
                .iter()
                .enumerate()
                .map(|(r, &c)| {
                    let c = c as usize;
                    let row = &w[c * d..(c + 1) * d];
                    let dot: f32 = t.row(r).iter().zip(row).map(|(a, b)| a * b).sum();
                    dot + bias.map_or(0.0, |b| b[c])
                })
                .collect(),
        )
    }
}
