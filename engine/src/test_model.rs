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
    TinyEncoder {
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

    fn head(&self, _final_state: &Matrix, _batch: &PackedBatch) -> Option<Matrix> {
        None
    }

    fn head_outputs(&self) -> Vec<(&'static str, usize)> {
        Vec::new()
    }
}
