//! TopK sparse autoencoders (Gao et al. 2024) in SAELens' conventions:
//!
//! ```text
//! pre  = (x − b_dec)·W_enc + b_enc          [d_sae]
//! code = ReLU(top-k(pre))                    k values, the rest 0
//! x̂    = code·W_dec + b_dec                  [d_in]
//! ```
//!
//! The sparse form (k indices and values per row) is the normal form: decoding gathers k decoder rows,
//! never a dense `[rows, d_sae]` matrix. Internally the encoder is kept as `[d_sae, d_in]` (one row per
//! latent, SAELens' `W_enc` transposed) so that the sparse backward touches contiguous rows.

pub mod error;
pub mod io;
pub mod pipeline;
pub mod splice;
pub mod synth;
pub mod train;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

pub use error::{FlagError, SaeError, SaeShapeError};

/// A TopK SAE's parameters (f32).
#[derive(Clone, Debug, PartialEq)]
pub struct TopKSae {
    pub d_in: usize,
    pub d_sae: usize,
    pub k: usize,
    /// Encoder, `[d_sae, d_in]` row-major: row f is latent f's encoder vector (SAELens `W_enc[:, f]`).
    pub w_enc: Vec<f32>,
    pub b_enc: Vec<f32>,
    /// Decoder, `[d_sae, d_in]` row-major: row f is latent f's direction.
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
}

/// k active latents per row: `indices[r·k + j]`, `values[r·k + j]`, sorted by value (descending, ties
/// by index ascending). Values are after the ReLU, so some may be 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SparseCodes {
    pub k: usize,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseCodes {
    pub fn n_rows(&self) -> usize {
        self.indices.len().checked_div(self.k).unwrap_or(0)
    }

    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let span = r * self.k..(r + 1) * self.k;
        (&self.indices[span.clone()], &self.values[span])
    }
}

impl TopKSae {
    /// Checks that every array has the size the dimensions say and holds only finite values (a NaN in
    /// `W_enc` would otherwise only show as a latent that never fires).
    pub fn validate(&self) -> Result<(), SaeShapeError> {
        let arrays: [(&'static str, &[f32], usize); 4] = [
            ("W_enc", &self.w_enc, self.d_sae * self.d_in),
            ("b_enc", &self.b_enc, self.d_sae),
            ("W_dec", &self.w_dec, self.d_sae * self.d_in),
            ("b_dec", &self.b_dec, self.d_in),
        ];
        for (tensor, values, want) in arrays {
            if values.len() != want {
                return Err(SaeShapeError::Length {
                    tensor,
                    got: values.len(),
                    want,
                });
            }
        }
        if self.k == 0 || self.k > self.d_sae {
            return Err(SaeShapeError::K {
                k: self.k,
                d_sae: self.d_sae,
            });
        }
        for (tensor, values, _) in arrays {
            if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                let value = values[index];
                // W_enc is kept transposed; report the index SAELens' [d_in, d_sae] layout has.
                let index = if tensor == "W_enc" {
                    let (f, i) = (index / self.d_in, index % self.d_in);
                    i * self.d_sae + f
                } else {
                    index
                };
                return Err(SaeShapeError::NonFinite { tensor, index, value });
            }
        }
        Ok(())
    }

    /// Pre-activations `(x − b_dec)·W_enc + b_enc` of `rows` inputs, `[rows, d_sae]` row-major.
    pub fn pre_activations(&self, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / self.d_in;
        let mut centred = x.to_vec();
        centred.par_chunks_mut(self.d_in).for_each(|row| {
            for (v, b) in row.iter_mut().zip(&self.b_dec) {
                *v -= b;
            }
        });
        let mut pre = vec![0.0f32; rows * self.d_sae];
        pre.par_chunks_mut(self.d_sae)
            .for_each(|row| row.copy_from_slice(&self.b_enc));
        gemm_rows_by_latents(&centred, &self.w_enc, self.d_in, &mut pre, self.d_sae, Accum::Add);
        pre
    }

    /// The k active latents of each row of `x` (`[rows, d_in]`).
    pub fn encode(&self, x: &[f32]) -> SparseCodes {
        let pre = self.pre_activations(x);
        top_k_rows(&pre, self.d_sae, self.k)
    }

    /// `x̂ = code·W_dec + b_dec` for sparse codes, `[rows, d_in]`.
    pub fn decode(&self, codes: &SparseCodes) -> Vec<f32> {
        let mut out = vec![0.0f32; codes.n_rows() * self.d_in];
        out.par_chunks_mut(self.d_in).enumerate().for_each(|(r, row)| {
            row.copy_from_slice(&self.b_dec);
            let (idx, val) = codes.row(r);
            for (&f, &v) in idx.iter().zip(val) {
                if v != 0.0 {
                    axpy(row, v, self.decoder_row(f as usize));
                }
            }
        });
        out
    }

    pub fn decoder_row(&self, f: usize) -> &[f32] {
        &self.w_dec[f * self.d_in..(f + 1) * self.d_in]
    }

    pub fn encoder_row(&self, f: usize) -> &[f32] {
        &self.w_enc[f * self.d_in..(f + 1) * self.d_in]
    }
}

/// `out[rows, n] (+)= a[rows, d] · bᵀ` for `b` given as `[n, d]` row-major (faer, all threads).
pub(crate) fn gemm_rows_by_latents(a: &[f32], b: &[f32], d: usize, out: &mut [f32], n: usize, accum: Accum) {
    let rows = a.len() / d;
    let a = MatRef::from_row_major_slice(a, rows, d);
    let bt = MatRef::from_row_major_slice(b, n, d).transpose();
    let out = MatMut::from_row_major_slice_mut(out, rows, n);
    matmul(out, accum, a, bt, 1.0f32, Par::rayon(0));
}

/// `y += a·x`.
#[inline]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: vectorises and keeps the rounding independent of the thread count.
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Per row of `pre` (`[rows, n]`), the k largest values (ties to the lower index), ReLU applied.
pub fn top_k_rows(pre: &[f32], n: usize, k: usize) -> SparseCodes {
    let rows = pre.len() / n;
    let mut indices = vec![0u32; rows * k];
    let mut values = vec![0.0f32; rows * k];
    indices
        .par_chunks_mut(k)
        .zip(values.par_chunks_mut(k))
        .enumerate()
        .for_each(|(r, (idx, val))| {
            top_k_of_row(&pre[r * n..(r + 1) * n], idx, val);
            for v in val.iter_mut() {
                *v = v.max(0.0);
            }
        });
    SparseCodes { k, indices, values }
}

/// The `idx.len()` largest entries of `row` into `idx`/`val`, sorted descending (ties: lower index
/// first). One pass with a sorted buffer: after the first k entries, most values fail the threshold
/// test, so the cost is about one comparison per entry.
pub(crate) fn top_k_of_row(row: &[f32], idx: &mut [u32], val: &mut [f32]) {
    let k = idx.len();
    let mut filled = 0usize;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() || (filled == k && v <= val[k - 1]) {
            continue;
        }
        // Insert keeping descending order; equal values keep arrival (index) order.
        let mut pos = filled.min(k - 1);
        if filled < k {
            filled += 1;
        }
        while pos > 0 && val[pos - 1] < v {
            val[pos] = val[pos - 1];
            idx[pos] = idx[pos - 1];
            pos -= 1;
        }
        val[pos] = v;
        idx[pos] = i as u32;
    }
    // Rows with fewer than k finite values (NaNs): pad with zero values at the lowest unused indices,
    // so that a row never names a latent twice.
    let mut next = 0u32;
    for j in filled..k {
        while idx[..j].contains(&next) {
            next += 1;
        }
        val[j] = 0.0;
        idx[j] = next;
        next += 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rng::Rng;

    pub(crate) fn random_sae(d_in: usize, d_sae: usize, k: usize, seed: u64) -> TopKSae {
        let mut rng = Rng::new(seed, 0);
        let mut draw = |n: usize, s: f64| (0..n).map(|_| (rng.normal() * s) as f32).collect::<Vec<_>>();
        TopKSae {
            d_in,
            d_sae,
            k,
            w_enc: draw(d_sae * d_in, 0.3),
            b_enc: draw(d_sae, 0.1),
            w_dec: draw(d_sae * d_in, 0.3),
            b_dec: draw(d_in, 0.1),
        }
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let mut rng = Rng::new(5, 0);
        for &(n, k) in &[(10usize, 3usize), (64, 64), (300, 7), (5, 1)] {
            // Values on a coarse grid: many ties.
            let row: Vec<f32> = (0..n).map(|_| (rng.below(9) as f32) - 4.0).collect();
            let mut idx = vec![0u32; k];
            let mut val = vec![0.0f32; k];
            top_k_of_row(&row, &mut idx, &mut val);
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
            let want: Vec<u32> = order[..k].iter().map(|&i| i as u32).collect();
            assert_eq!(idx, want, "n {n} k {k}");
            assert_eq!(val, order[..k].iter().map(|&i| row[i]).collect::<Vec<_>>());
        }
    }

    #[test]
    fn nan_rows_never_repeat_a_latent() {
        let row = [f32::NAN, 2.0, f32::NAN, f32::NAN];
        let (mut idx, mut val) = ([9u32; 3], [9.0f32; 3]);
        top_k_of_row(&row, &mut idx, &mut val);
        assert_eq!(idx, [1, 0, 2]);
        assert_eq!(val, [2.0, 0.0, 0.0]);
    }

    #[test]
    fn encode_and_decode_equal_the_dense_formulas() {
        let sae = random_sae(12, 40, 5, 1);
        let mut rng = Rng::new(2, 0);
        let x: Vec<f32> = (0..7 * 12).map(|_| rng.normal() as f32).collect();
        let codes = sae.encode(&x);
        let recon = sae.decode(&codes);
        for r in 0..7 {
            let xr = &x[r * 12..(r + 1) * 12];
            // Dense pre-activations, in f64.
            let pre: Vec<f64> = (0..40)
                .map(|f| {
                    sae.b_enc[f] as f64
                        + (0..12)
                            .map(|i| (xr[i] - sae.b_dec[i]) as f64 * sae.encoder_row(f)[i] as f64)
                            .sum::<f64>()
                })
                .collect();
            let mut order: Vec<usize> = (0..40).collect();
            order.sort_by(|&a, &b| pre[b].partial_cmp(&pre[a]).unwrap());
            let (idx, val) = codes.row(r);
            assert_eq!(
                idx,
                order[..5]
                    .iter()
                    .map(|&i| i as u32)
                    .collect::<Vec<_>>()
                    .as_slice()
            );
            for j in 0..5 {
                assert!((val[j] as f64 - pre[order[j]].max(0.0)).abs() < 1e-5);
            }
            for i in 0..12 {
                let want = sae.b_dec[i] as f64
                    + (0..5)
                        .map(|j| pre[order[j]].max(0.0) * sae.decoder_row(order[j])[i] as f64)
                        .sum::<f64>();
                assert!((recon[r * 12 + i] as f64 - want).abs() < 1e-4);
            }
        }
    }
}
