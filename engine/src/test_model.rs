//! A small random encoder for the engine's own tests (token embedding + post-LN blocks, no head).

use crate::encoder::{Activation, Encoder, EncoderDims, LayerNormWeights, LinearWeights, PostLnBlock};
use crate::error::EngineError;
use crate::matrix::Matrix;
use crate::packed::PackedBatch;
use crate::rng::Rng;

pub struct TinyEncoder {
    dims: EncoderDims,
    embedding: Vec<f32>,
    blocks: Vec<PostLnBlock>,
    /// A linear MLM-style head `[vocab, d]` (logits = state · Wᵀ), when present.
    head: Option<Vec<f32>>,
}

/// `layers` blocks of width `d` with `heads` heads, FFN `ff`, vocabulary `vocab`, seeded weights.
pub fn tiny_encoder(
    layers: usize,
    d: usize,
    heads: usize,
    ff: usize,
    vocab: usize,
    seed: u64,
) -> TinyEncoder {
    let mut rng = Rng::new(seed, 0xE4C);
    let mut draw = |n: usize, s: f64| (0..n).map(|_| (rng.normal() * s) as f32).collect::<Vec<_>>();
    let linear = |draw: &mut dyn FnMut(usize, f64) -> Vec<f32>, out: usize, inp: usize| {
        LinearWeights::new(
            draw(out * inp, 1.0 / (inp as f64).sqrt()),
            Some(draw(out, 0.02)),
            out,
            inp,
        )
        .unwrap()
    };
    let ln = |draw: &mut dyn FnMut(usize, f64) -> Vec<f32>| {
        let gamma = draw(d, 0.1).into_iter().map(|g| 1.0 + g).collect();
        LayerNormWeights::new(gamma, draw(d, 0.1), 1e-12).unwrap()
    };
    let embedding = draw(vocab * d, 1.0);
    let blocks = (0..layers)
        .map(|_| PostLnBlock {
            n_heads: heads,
            head_dim: d / heads,
            qkv: linear(&mut draw, 3 * d, d),
            attn_out: linear(&mut draw, d, d),
            ln_attn: ln(&mut draw),
            ffn_in: linear(&mut draw, ff, d),
            ffn_out: linear(&mut draw, d, ff),
            ln_out: ln(&mut draw),
            activation: Activation::Relu,
        })
        .collect();
    // Drawn after everything else, so the other weights do not depend on it.
    let head = Some(draw(vocab * d, 1.0 / (d as f64).sqrt()));
    TinyEncoder {
        head,
        dims: EncoderDims {
            n_layers: layers,
            d_model: d,
            n_heads: heads,
            head_dim: d / heads,
            d_ff: ff,
            vocab_size: vocab,
            max_len: None,
        },
        embedding,
        blocks,
    }
}

impl Encoder for TinyEncoder {
    fn dims(&self) -> &EncoderDims {
        &self.dims
    }

    fn embed(&self, batch: &PackedBatch) -> Result<Matrix, EngineError> {
        let d = self.dims.d_model;
        let mut x = Matrix::zeros(batch.n_tokens(), d);
        for (r, &t) in batch.tokens().iter().enumerate() {
            let t = t as usize;
            if t >= self.dims.vocab_size {
                return Err(EngineError::InvalidBatch(format!("token {t} out of range")));
            }
            x.row_mut(r).copy_from_slice(&self.embedding[t * d..(t + 1) * d]);
        }
        Ok(x)
    }

    fn block(&self, layer: usize) -> &PostLnBlock {
        &self.blocks[layer]
    }

    fn head(&self, final_state: &Matrix, _batch: &PackedBatch) -> Option<Matrix> {
        let w = self.head.as_ref()?;
        let (d, vocab) = (self.dims.d_model, self.dims.vocab_size);
        let mut logits = Vec::with_capacity(final_state.rows() * vocab);
        for r in 0..final_state.rows() {
            let x = final_state.row(r);
            logits.extend((0..vocab).map(|t| {
                w[t * d..(t + 1) * d]
                    .iter()
                    .zip(x)
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
            }));
        }
        Some(Matrix::from_vec(final_state.rows(), vocab, logits))
    }

    fn head_outputs(&self) -> Vec<(&'static str, usize)> {
        match self.head {
            Some(_) => vec![("logits", self.dims.vocab_size)],
            None => Vec::new(),
        }
    }
}

/// Planted circuit (width 16, 2 blocks, one head): tokens `4·m + i` (i < 4, m < 6) carry direction
/// e_i with strength 2 + m/4; the other tokens carry none. Block 0 is the identity on normalised states
/// (zero attention and FFN outputs, unit LayerNorms); block 1's FFN writes `6·ReLU(x_i − 0.5)` along
/// e_{4+σ(i)}, and attention moves nothing between positions. So source direction i drives target
/// direction 4 + σ(i) and nothing else. Tokens 24.. are fillers (an anchor and a variable direction).
pub fn planted_circuit_encoder(sigma: [usize; 4]) -> TinyEncoder {
    let d = 16;
    let vocab = 34;
    let e = |i: usize| (0..d).map(move |k| if k == i { 1.0f32 } else { 0.0 });
    let mut embedding = Vec::with_capacity(vocab * d);
    for t in 0..vocab {
        let mut row = vec![0.0f32; d];
        row[15] = 1.0;
        if t < 24 {
            let (m, i) = (t / 4, t % 4);
            row[i] = 2.0 + m as f32 / 4.0;
            row[8 + m] += 0.3;
        } else {
            row[8 + t % 6] += 0.5;
        }
        embedding.extend(row);
    }
    let zeros = |out: usize, inp: usize| {
        LinearWeights::new(vec![0.0; out * inp], Some(vec![0.0; out]), out, inp).unwrap()
    };
    let unit_ln = || LayerNormWeights::new(vec![1.0; d], vec![0.0; d], 1e-12).unwrap();
    let block = |ffn_in: LinearWeights, ffn_out: LinearWeights| PostLnBlock {
        n_heads: 1,
        head_dim: d,
        qkv: zeros(3 * d, d),
        attn_out: zeros(d, d),
        ln_attn: unit_ln(),
        ffn_in,
        ffn_out,
        ln_out: unit_ln(),
        activation: Activation::Relu,
    };
    let ff = 4;
    let ffn_in = LinearWeights::new((0..ff).flat_map(e).collect(), Some(vec![-0.5; ff]), ff, d).unwrap();
    // ffn_out is [d, ff]: column i writes 6·e_{4+σ(i)}.
    let mut w_out = vec![0.0f32; d * ff];
    for (i, &s) in sigma.iter().enumerate() {
        w_out[(4 + s) * ff + i] = 6.0;
    }
    let ffn_out = LinearWeights::new(w_out, Some(vec![0.0; d]), d, ff).unwrap();
    TinyEncoder {
        head: None,
        dims: EncoderDims {
            n_layers: 2,
            d_model: d,
            n_heads: 1,
            head_dim: d,
            d_ff: ff,
            vocab_size: vocab,
            max_len: None,
        },
        embedding,
        blocks: vec![block(zeros(ff, d), zeros(d, ff)), block(ffn_in, ffn_out)],
    }
}
