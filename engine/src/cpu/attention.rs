//! Multi-head self-attention over packed variable-length cells.
//!
//! Each cell attends only within itself, so no mask is needed and no pad token is ever computed.
//! Work is split into (cell, head, block of queries) jobs run on the rayon pool; each job does two
//! sequential faer GEMMs (`S = Q·Kᵀ·scale`, `ctx = softmax(S)·V`) over strided views of the fused QKV
//! matrix. The score block is `QUERY_BLOCK × cell_len`, so memory stays bounded at 4,096-token cells.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::softmax::softmax_in_place;
use crate::matrix::Matrix;

const QUERY_BLOCK: usize = 256;

/// `qkv`: `[tokens, 3·H]` with columns `[q | k | v]`, head `h` at columns `h·head_dim..` of each part.
/// Returns the merged context `[tokens, H]` (heads concatenated), before the output projection.
pub fn attention_varlen(
    qkv: &Matrix,
    offsets: &[usize],
    n_heads: usize,
    head_dim: usize,
    scale: f32,
) -> Matrix {
    let hidden = n_heads * head_dim;
    assert_eq!(qkv.cols(), 3 * hidden, "attention: qkv width must be 3·H");
    let tokens = qkv.rows();
    let mut ctx = Matrix::zeros(tokens, hidden);

    let mut jobs = Vec::new();
    for cell in offsets.windows(2) {
        let (start, end) = (cell[0], cell[1]);
        for head in 0..n_heads {
            let mut q = start;
            while q < end {
                let q_end = (q + QUERY_BLOCK).min(end);
                jobs.push((start, end, head, q, q_end));
                q = q_end;
            }
        }
    }

    let stride = 3 * hidden;
    let data = qkv.as_slice();
    let results: Vec<Vec<f32>> = jobs
        .par_iter()
        .map(|&(start, end, head, q0, q1)| {
            let len = end - start;
            let rows = q1 - q0;
            let view = |row: usize, col: usize, nrows: usize| {
                MatRef::from_row_major_slice_with_stride(&data[row * stride + col..], nrows, head_dim, stride)
            };
            let q = view(q0, head * head_dim, rows);
            let k = view(start, hidden + head * head_dim, len);
            let v = view(start, 2 * hidden + head * head_dim, len);

            let mut scores = vec![0.0f32; rows * len];
            let s = MatMut::from_row_major_slice_mut(&mut scores, rows, len);
            faer::linalg::matmul::matmul(s, Accum::Replace, q, k.transpose(), scale, Par::Seq);
            softmax_in_place(&mut scores, len);

            let mut out = vec![0.0f32; rows * head_dim];
            let p = MatRef::from_row_major_slice(&scores, rows, len);
            let o = MatMut::from_row_major_slice_mut(&mut out, rows, head_dim);
            faer::linalg::matmul::matmul(o, Accum::Replace, p, v, 1.0f32, Par::Seq);
            out
        })
        .collect();

    for (&(_, _, head, q0, _), out) in jobs.iter().zip(&results) {
        for (i, chunk) in out.chunks_exact(head_dim).enumerate() {
            ctx.row_mut(q0 + i)[head * head_dim..(head + 1) * head_dim].copy_from_slice(chunk);
        }
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward f64 attention for one cell, as a reference.
    fn reference(qkv: &Matrix, start: usize, end: usize, heads: usize, dh: usize) -> Vec<f64> {
        let h = heads * dh;
        let n = end - start;
        let mut out = vec![0.0f64; n * h];
        for head in 0..heads {
            for i in 0..n {
                let q = &qkv.row(start + i)[head * dh..(head + 1) * dh];
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        let k = &qkv.row(start + j)[h + head * dh..h + (head + 1) * dh];
                        q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (dh as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, weight) in e.iter().enumerate() {
                    let v = &qkv.row(start + j)[2 * h + head * dh..2 * h + (head + 1) * dh];
                    for (d, value) in v.iter().enumerate() {
                        out[i * h + head * dh + d] += weight / z * *value as f64;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn packed_cells_attend_only_within_themselves() {
        let (heads, dh) = (3, 8);
        let lens = [300usize, 1, 17];
        let tokens: usize = lens.iter().sum();
        let mut offsets = vec![0];
        for l in lens {
            offsets.push(offsets.last().unwrap() + l);
        }
        let qkv = Matrix::from_vec(
            tokens,
            3 * heads * dh,
            (0..tokens * 3 * heads * dh)
                .map(|i| (((i * 2654435761) % 1000) as f32 / 500.0 - 1.0) * 1.5)
                .collect(),
        );
        let ctx = attention_varlen(&qkv, &offsets, heads, dh, 1.0 / (dh as f32).sqrt());
        for c in 0..lens.len() {
            let r = reference(&qkv, offsets[c], offsets[c + 1], heads, dh);
            for (i, want) in r.iter().enumerate() {
                let got = ctx.as_slice()[offsets[c] * heads * dh + i] as f64;
                assert!((got - want).abs() < 1e-5, "cell {c} elem {i}: {got} vs {want}");
            }
        }
    }
}
