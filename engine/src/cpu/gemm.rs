//! Linear layers `y = x·Wᵀ + b` with PyTorch-layout weights `W: [out, in]`, through faer's GEMM.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::encoder::LinearWeights;
use crate::matrix::Matrix;

/// `x·Wᵀ + b` as a new `[x.rows, out]` matrix.
pub fn linear(x: &Matrix, w: &LinearWeights) -> Matrix {
    let mut out = Matrix::zeros(x.rows(), w.out_features());
    linear_into(x, w, &mut out);
    out
}

/// Writes `x·Wᵀ + b` into `out` (`[x.rows, out_features]`), overwriting it.
pub fn linear_into(x: &Matrix, w: &LinearWeights, out: &mut Matrix) {
    assert_eq!(x.cols(), w.in_features(), "linear: input width mismatch");
    assert_eq!(out.rows(), x.rows(), "linear: output rows mismatch");
    assert_eq!(out.cols(), w.out_features(), "linear: output width mismatch");
    if x.rows() == 0 {
        return;
    }
    // Start from the broadcast bias and let the GEMM accumulate onto it: one pass fewer over `out`.
    let accum = match w.bias() {
        Some(b) => {
            for r in 0..out.rows() {
                out.row_mut(r).copy_from_slice(b);
            }
            Accum::Add
        }
        None => Accum::Replace,
    };
    // W is [out, in] row-major, so Wᵀ is the same buffer seen as an [in, out] column-major matrix.
    let wt = MatRef::from_row_major_slice(w.weight(), w.out_features(), w.in_features()).transpose();
    let threads = rayon::current_num_threads();
    if w.out_features() >= ROW_SPLIT_MAX_OUT || x.rows() < 64 * threads || threads == 1 {
        faer::linalg::matmul::matmul(out.as_faer_mut(), accum, x.as_faer(), wt, 1.0f32, Par::rayon(0));
        return;
    }
    // Narrow outputs (scGPT's 512-wide projections): one single-threaded GEMM per thread over its own
    // rows beats faer's own split (measured: 4,800×512→512 in 14.9 ms instead of 17.9 ms on 2 cores).
    let (cols_in, cols_out) = (x.cols(), out.cols());
    let rows_per = x.rows().div_ceil(threads);
    out.as_mut_slice()
        .par_chunks_mut(rows_per * cols_out)
        .zip(x.as_slice().par_chunks(rows_per * cols_in))
        .for_each(|(o, xi)| {
            let rows = xi.len() / cols_in;
            let o = MatMut::from_row_major_slice_mut(o, rows, cols_out);
            let xi = MatRef::from_row_major_slice(xi, rows, cols_in);
            faer::linalg::matmul::matmul(o, accum, xi, wt, 1.0f32, Par::Seq);
        });
}

/// Output widths from which faer's own parallel GEMM is used instead of a split by rows.
const ROW_SPLIT_MAX_OUT: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &Matrix, w: &[f32], b: &[f32], out_f: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; x.rows() * out_f];
        for r in 0..x.rows() {
            for o in 0..out_f {
                let mut acc = b[o] as f64;
                for i in 0..x.cols() {
                    acc += x.row(r)[i] as f64 * w[o * x.cols() + i] as f64;
                }
                y[r * out_f + o] = acc as f32;
            }
        }
        y
    }

    #[test]
    fn matches_naive_reference() {
        let (rows, inf, outf) = (37, 29, 41);
        let x = Matrix::from_vec(
            rows,
            inf,
            (0..rows * inf)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect(),
        );
        let w: Vec<f32> = (0..outf * inf)
            .map(|i| ((i * 11 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let b: Vec<f32> = (0..outf).map(|i| i as f32 / 10.0).collect();
        let lw = LinearWeights::new(w.clone(), Some(b.clone()), outf, inf).unwrap();
        let y = linear(&x, &lw);
        let expect = naive(&x, &w, &b, outf);
        for (a, e) in y.as_slice().iter().zip(&expect) {
            assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "{a} vs {e}");
        }
        let nobias = LinearWeights::new(w.clone(), None, outf, inf).unwrap();
        let y0 = linear(&x, &nobias);
        let expect0 = naive(&x, &w, &vec![0.0; outf], outf);
        for (a, e) in y0.as_slice().iter().zip(&expect0) {
            assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()));
        }
    }
}
