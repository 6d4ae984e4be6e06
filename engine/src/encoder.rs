//! The [`Encoder`] trait that models implement, and the weights of the post-LN block they share.
//!
//! The engine knows no model by name: Geneformer (BERT) and scGPT both reduce to an embedding stage,
//! a stack of post-LN blocks ([`PostLnBlock`]) and an optional output head.

use crate::error::EngineError;
use crate::matrix::Matrix;
use crate::packed::PackedBatch;

/// Weights whose shapes do not agree with each other or with the model's dimensions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightShapeError {
    #[error("weight has {got} values, expected {out}×{inp}")]
    WeightLength { got: usize, out: usize, inp: usize },
    #[error("bias has {got} values, expected {out}")]
    BiasLength { got: usize, out: usize },
    #[error("nothing to concatenate")]
    NothingToConcat,
    #[error("input widths differ")]
    InputWidthsDiffer,
    #[error("some parts have a bias and others do not")]
    MixedBias,
    #[error("LayerNorm weight has {gamma} values but bias has {beta}")]
    LayerNormLengths { gamma: usize, beta: usize },
    /// A layer of a block whose `[out, in]` is not what the block's width asks for.
    #[error("{what} is {}×{}, expected {}×{}", got.0, got.1, want.0, want.1)]
    Layer {
        what: &'static str,
        got: (usize, usize),
        want: (usize, usize),
    },
    #[error("{n_heads} heads × {head_dim} ≠ hidden size {hidden}")]
    Heads {
        n_heads: usize,
        head_dim: usize,
        hidden: usize,
    },
    #[error("LayerNorm width differs from the hidden size")]
    LayerNormWidth,
}

/// A linear layer in PyTorch layout: `weight` is `[out, in]` row-major, `y = x·Wᵀ + b`.
#[derive(Clone, Debug)]
pub struct LinearWeights {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    out_features: usize,
    in_features: usize,
}

impl LinearWeights {
    pub fn new(
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
        out_features: usize,
        in_features: usize,
    ) -> Result<Self, WeightShapeError> {
        if weight.len() != out_features * in_features {
            return Err(WeightShapeError::WeightLength {
                got: weight.len(),
                out: out_features,
                inp: in_features,
            });
        }
        if let Some(b) = &bias {
            if b.len() != out_features {
                return Err(WeightShapeError::BiasLength {
                    got: b.len(),
                    out: out_features,
                });
            }
        }
        Ok(LinearWeights {
            weight,
            bias,
            out_features,
            in_features,
        })
    }

    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Stacks layers with the same input width along the output axis (e.g. q, k, v into one QKV).
    pub fn concat_outputs(parts: &[LinearWeights]) -> Result<Self, WeightShapeError> {
        let in_features = parts
            .first()
            .ok_or(WeightShapeError::NothingToConcat)?
            .in_features;
        if parts.iter().any(|p| p.in_features != in_features) {
            return Err(WeightShapeError::InputWidthsDiffer);
        }
        let has_bias = parts[0].bias.is_some();
        if parts.iter().any(|p| p.bias.is_some() != has_bias) {
            return Err(WeightShapeError::MixedBias);
        }
        let weight = parts.iter().flat_map(|p| p.weight.iter().copied()).collect();
        let bias = has_bias.then(|| {
            parts
                .iter()
                .flat_map(|p| p.bias.as_ref().into_iter().flatten().copied())
                .collect()
        });
        let out = parts.iter().map(|p| p.out_features).sum();
        LinearWeights::new(weight, bias, out, in_features)
    }
}

/// LayerNorm affine parameters and epsilon (read from the model config: 1e-12 Geneformer, 1e-5 scGPT).
#[derive(Clone, Debug)]
pub struct LayerNormWeights {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f64,
}

impl LayerNormWeights {
    pub fn new(gamma: Vec<f32>, beta: Vec<f32>, eps: f64) -> Result<Self, WeightShapeError> {
        if gamma.len() != beta.len() {
            return Err(WeightShapeError::LayerNormLengths {
                gamma: gamma.len(),
                beta: beta.len(),
            });
        }
        Ok(LayerNormWeights { gamma, beta, eps })
    }

    pub fn gamma(&self) -> &[f32] {
        &self.gamma
    }

    pub fn beta(&self) -> &[f32] {
        &self.beta
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    pub fn width(&self) -> usize {
        self.gamma.len()
    }
}

/// FFN nonlinearity. Neither Geneformer nor scGPT uses GELU; a model with another activation is
/// rejected at load time rather than approximated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
}

/// One post-LN transformer block (BERT / `nn.TransformerEncoderLayer(norm_first=False)`):
///
/// ```text
/// a = Attn(x)·W_oᵀ + b_o          → hook_attn_out
/// u = LN_attn(x + a)              → hook_resid_mid
/// f = act(u·W_inᵀ + b_in)·W_outᵀ + b_out → hook_mlp_out
/// y = LN_out(u + f)               → hook_resid_post
/// ```
#[derive(Clone, Debug)]
pub struct PostLnBlock {
    pub n_heads: usize,
    pub head_dim: usize,
    /// Fused `[q; k; v]` projection, `[3·H, H]`; head `h` uses rows `h·head_dim..` of each third.
    pub qkv: LinearWeights,
    pub attn_out: LinearWeights,
    pub ln_attn: LayerNormWeights,
    pub ffn_in: LinearWeights,
    pub ffn_out: LinearWeights,
    pub ln_out: LayerNormWeights,
    pub activation: Activation,
}

impl PostLnBlock {
    /// Checks that every shape agrees with `d_model`, `n_heads × head_dim` and the FFN width.
    pub fn validate(&self, d_model: usize) -> Result<(), WeightShapeError> {
        let h = d_model;
        let checks = [
            ("qkv", self.qkv.out_features, self.qkv.in_features, 3 * h, h),
            (
                "attention output",
                self.attn_out.out_features,
                self.attn_out.in_features,
                h,
                h,
            ),
            (
                "ffn output",
                self.ffn_out.out_features,
                self.ffn_out.in_features,
                h,
                self.ffn_in.out_features,
            ),
            (
                "ffn input",
                self.ffn_in.out_features,
                self.ffn_in.in_features,
                self.ffn_in.out_features,
                h,
            ),
        ];
        for (what, o, i, eo, ei) in checks {
            if (o, i) != (eo, ei) {
                return Err(WeightShapeError::Layer {
                    what,
                    got: (o, i),
                    want: (eo, ei),
                });
            }
        }
        if self.n_heads * self.head_dim != h {
            return Err(WeightShapeError::Heads {
                n_heads: self.n_heads,
                head_dim: self.head_dim,
                hidden: h,
            });
        }
        if self.ln_attn.width() != h || self.ln_out.width() != h {
            return Err(WeightShapeError::LayerNormWidth);
        }
        Ok(())
    }
}

/// Shapes of an encoder, from its config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderDims {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    /// Longest cell the model accepts (position embeddings), if it has such a limit.
    pub max_len: Option<usize>,
}

/// The tables of a BERT embedding stage, `LN((word[token] + token_type) + position[pos])` (Geneformer), so
/// that a GPU backend can run it on the device. Each table is row-major with `d_model` columns.
#[derive(Clone, Copy, Debug)]
pub struct BertEmbedding<'a> {
    /// `[vocab, d_model]`.
    pub word: &'a [f32],
    /// `[max_len, d_model]`.
    pub position: &'a [f32],
    /// The token-type-0 row, `[d_model]`.
    pub token_type: &'a [f32],
    pub ln: &'a LayerNormWeights,
}

/// A transformer encoder over packed cells, as tracing, extraction and steering see it.
pub trait Encoder: Send + Sync {
    fn dims(&self) -> &EncoderDims;

    /// The embedding stage: the value of `hook_embed`, `[tokens, d_model]`. Implementations validate
    /// token ids and cell lengths and report bad input as an error.
    fn embed(&self, batch: &PackedBatch) -> Result<Matrix, EngineError>;

    /// The embedding tables when the embedding stage is BERT's (a GPU backend then embeds on the device);
    /// `None` (the default) keeps [`Encoder::embed`] on the CPU.
    fn bert_embedding(&self) -> Option<BertEmbedding<'_>> {
        None
    }
    /// Weights of block `layer` (0-based, `layer < dims().n_layers`).
    fn block(&self, layer: usize) -> &PostLnBlock;

    /// The output head on the final state, `[tokens, Σ widths of head_outputs()]` (Geneformer: MLM logits;
    /// scGPT: expression and MVC predictions side by side), or `None` when the model was loaded without one.
    fn head(&self, final_state: &Matrix, batch: &PackedBatch) -> Option<Matrix>;

    /// Names and widths of the head's outputs, in column order (e.g. `[("logits", vocab)]`). Outputs of
    /// width 1 are per-position scalars.
    fn head_outputs(&self) -> Vec<(&'static str, usize)>;

    /// One head output per row of the final state: column `columns[r]` of row r (e.g. the MLM logit of
    /// each position's own token), `[rows]`. The default computes the whole head and picks; models
    /// override it to compute only those columns (Geneformer: one decoder row per position instead of
    /// the whole vocabulary).
    fn head_columns(&self, final_state: &Matrix, batch: &PackedBatch, columns: &[u32]) -> Option<Vec<f32>> {
        let head = self.head(final_state, batch)?;
        Some(
            columns
                .iter()
                .enumerate()
                .map(|(r, &c)| head.row(r)[c as usize])
                .collect(),
        )
    }

    /// The head's first output (the MLM logits) at `columns` for every row of the final state,
    /// `[rows, columns.len()]`. The default computes the whole head and picks; Geneformer overrides it to
    /// compute only those decoder rows.
    fn head_logit_columns(
        &self,
        final_state: &Matrix,
        batch: &PackedBatch,
        columns: &[u32],
    ) -> Option<Matrix> {
        let head = self.head(final_state, batch)?;
        let mut out = Matrix::zeros(head.rows(), columns.len());
        for r in 0..head.rows() {
            let row = head.row(r);
            for (o, &c) in out.row_mut(r).iter_mut().zip(columns) {
                *o = row[c as usize];
            }
        }
        Some(out)
    }

    /// The model's own cell embedding from the final state, `[cells, d_model]`, when it defines one
    /// (scGPT: the `<cls>` position, raw, not L2-normalised). Geneformer defines none: its users pool
    /// gene positions at a layer of their choice.
    fn cell_embedding(&self, _final_state: &Matrix, _batch: &PackedBatch) -> Option<Matrix> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_errors_are_typed_and_say_what_is_wrong() {
        let e = LinearWeights::new(vec![0.0; 5], None, 2, 3).unwrap_err();
        assert_eq!(
            e,
            WeightShapeError::WeightLength {
                got: 5,
                out: 2,
                inp: 3
            }
        );
        assert_eq!(e.to_string(), "weight has 5 values, expected 2×3");
        assert_eq!(
            LinearWeights::concat_outputs(&[]).unwrap_err(),
            WeightShapeError::NothingToConcat
        );
        let with_bias = LinearWeights::new(vec![0.0; 6], Some(vec![0.0; 2]), 2, 3).unwrap();
        let without = LinearWeights::new(vec![0.0; 6], None, 2, 3).unwrap();
        assert_eq!(
            LinearWeights::concat_outputs(&[with_bias, without])
                .unwrap_err()
                .to_string(),
            "some parts have a bias and others do not"
        );
        assert_eq!(
            LayerNormWeights::new(vec![1.0; 3], vec![0.0; 2], 1e-5)
                .unwrap_err()
                .to_string(),
            "LayerNorm weight has 3 values but bias has 2"
        );
    }
}
