//! Multi-head self-attention over packed variable-length cells.
//!
//! Each cell attends only within itself, so no mask is needed and no pad token is ever computed.
//! Work is split into (cell, block of query rows) jobs on the rayon pool. A job owns its rows of the
//! output, and for each head does two sequential faer GEMMs over strided views of the fused QKV matrix:
//! `S = Q·Kᵀ·scale`, then `exp(S - max)·V`, which is divided by the softmax sums on its way into the
//! job's rows of the output (head_dim values per row instead of one per score). Score
//! blocks hold at most [`SCORE_BLOCK_FLOATS`] values, so memory stays bounded at 4,096-token cells, and
//! each worker reuses one score buffer for all its jobs.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::softmax::exp_rows_in_place;
use crate::matrix::Matrix;

/// Most scores one job holds at once (4 MiB of f32).
const SCORE_BLOCK_FLOATS: usize = 1 << 20;
/// Query rows per job (fewer for cells so long that the scores would exceed SCORE_BLOCK_FLOATS).
const QUERY_BLOCK: usize = 128;

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
    let n_cells = offsets.len().saturating_sub(1);
    if tokens == 0 || n_cells == 0 {
        return ctx;
    }

    // Jobs: (cell start, cell end, first query row, end query row), in row order. The blocks of a
    // cell depend on its length alone, never on the other cells of the batch, so a cell's result is
    // the same bit for bit whichever cells are packed with it.
    let mut jobs = Vec::new();
    for cell in offsets.windows(2) {
        let (start, end) = (cell[0], cell[1]);
        let len = end - start;
        let block = QUERY_BLOCK.min(SCORE_BLOCK_FLOATS / len.max(1)).max(1);
        let mut q = start;
        while q < end {
            let q_end = (q + block).min(end);
            jobs.push((start, end, q, q_end));
            q = q_end;
        }
    }
    // Each job's rows of the output, as disjoint mutable slices.
    let mut outputs = Vec::with_capacity(jobs.len());
    let mut rest = ctx.as_mut_slice();
    for &(_, _, q0, q1) in &jobs {
        let (mine, tail) = rest.split_at_mut((q1 - q0) * hidden);
        outputs.push(mine);
        rest = tail;
    }

    let stride = 3 * hidden;
    let data = qkv.as_slice();
    jobs.par_iter().zip(outputs).for_each_init(
        || (Vec::<f32>::new(), Vec::<f32>::new(), Vec::<f32>::new()),
        |(scores, inv_sums, head_out), (&(start, end, q0, q1), out)| {
            let len = end - start;
            let rows = q1 - q0;
            scores.resize(rows * len, 0.0);
            inv_sums.resize(rows, 0.0);
            head_out.resize(rows * head_dim, 0.0);
            let view = |row: usize, col: usize, nrows: usize| {
                MatRef::from_row_major_slice_with_stride(&data[row * stride + col..], nrows, head_dim, stride)
            };
            for head in 0..n_heads {
                let q = view(q0, head * head_dim, rows);
                let k = view(start, hidden + head * head_dim, len);
                let v = view(start, 2 * hidden + head * head_dim, len);
                let s = MatMut::from_row_major_slice_mut(&mut scores[..rows * len], rows, len);
                faer::linalg::matmul::matmul(s, Accum::Replace, q, k.transpose(), scale, Par::Seq);
                exp_rows_in_place(&mut scores[..rows * len], len, &mut inv_sums[..rows]);

                // Into a contiguous buffer, not straight into the strided rows of `out`: faer's kernels
                // may store whole SIMD tiles past a narrow destination's last column (seen with
                // head_dim 8), which would overwrite the neighbouring head.
                let p = MatRef::from_row_major_slice(&scores[..rows * len], rows, len);
                let o = MatMut::from_row_major_slice_mut(&mut head_out[..rows * head_dim], rows, head_dim);
                faer::linalg::matmul::matmul(o, Accum::Replace, p, v, 1.0f32, Par::Seq);
                let columns = head * head_dim..(head + 1) * head_dim;
                for ((row, src), inv) in out
                    .chunks_exact_mut(hidden)
                    .zip(head_out.chunks_exact(head_dim))
                    .zip(inv_sums.iter())
                {
                    for (x, y) in row[columns.clone()].iter_mut().zip(src) {
                        *x = y * inv;
                    }
                }
            }
        },
    );
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
        let lens = [300usize, 1, 17, 1100];
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
