//! Superposition against the principal axes (methods.md §4.3 and A12).
//!
//! The top right singular vectors of the centred activations are the top eigenvectors of their
//! covariance, so they come from a `[d, d]` f64 eigendecomposition of `XᵀX` over a seeded row sample
//! (d ≤ a few thousand; the sample can be any size). Each feature's unit decoder direction w is then
//! compared with them two ways: the largest |cos| with one axis (the published statistic, at both the
//! published 0.5 and the paper's 0.7), and the projection fraction ‖P·w‖ = √Σ cos² onto the whole
//! subspace, which also catches directions that lie inside it without matching one axis. The null for
//! the projection is that of random unit directions (E‖P·w‖² = n_axes/d), sampled with the same seed.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par, Side};

use crate::rng::Rng;

/// The top principal axes of a row sample.
#[derive(Clone, Debug)]
pub struct PrincipalAxes {
    pub d: usize,
    /// `[n_axes, d]` row-major unit vectors, largest variance first.
    pub axes: Vec<f64>,
    /// Variance along each axis (eigenvalues of the covariance).
    pub variances: Vec<f64>,
    /// Total variance (trace of the covariance).
    pub total_variance: f64,
    pub sample_rows: usize,
}

/// Why principal axes could not be fitted.
#[derive(Debug, thiserror::Error)]
pub enum SvdError {
    #[error("{0} rows: at least 2 are needed for a covariance")]
    TooFewRows(usize),
    #[error("the eigendecomposition failed: {0}")]
    Eigen(String),
}

impl PrincipalAxes {
    pub fn n_axes(&self) -> usize {
        self.variances.len()
    }

    /// Fraction of the sample's variance on the axes.
    pub fn variance_explained(&self) -> f64 {
        self.variances.iter().sum::<f64>() / self.total_variance
    }

    /// Fraction of the sample's variance on the first `rank` axes (all of them if fewer): what a linear
    /// code of `rank` numbers per row keeps.
    pub fn variance_explained_at(&self, rank: usize) -> f64 {
        self.variances.iter().take(rank).sum::<f64>() / self.total_variance
    }

    /// The first `n` axes.
    pub fn top(&self, n: usize) -> PrincipalAxes {
        let n = n.min(self.n_axes());
        PrincipalAxes {
            d: self.d,
            axes: self.axes[..n * self.d].to_vec(),
            variances: self.variances[..n].to_vec(),
            total_variance: self.total_variance,
            sample_rows: self.sample_rows,
        }
    }

    /// The covariance's top `n_axes` eigenvectors, from `rows` (`[n, d]` row-major, f32).
    pub fn fit(rows: &[f32], d: usize, n_axes: usize) -> Result<Self, SvdError> {
        let n = rows.len() / d;
        if n < 2 {
            return Err(SvdError::TooFewRows(n));
        }
        let n_axes = n_axes.min(d);
        let mut mean = vec![0.0f64; d];
        for row in rows.chunks_exact(d) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        // XᵀX block by block, so the f64 copy of the sample never exists whole.
        let mut cov = Mat::<f64>::zeros(d, d);
        for block in rows.chunks(4096 * d) {
            let m = block.len() / d;
            let centred = Mat::<f64>::from_fn(m, d, |r, c| block[r * d + c] as f64 - mean[c]);
            matmul(
                cov.as_mut(),
                Accum::Add,
                centred.transpose(),
                centred.as_ref(),
                1.0 / (n - 1) as f64,
                Par::rayon(0),
            );
        }
        let total_variance = (0..d).map(|i| cov[(i, i)]).sum::<f64>();
        let eig = cov
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| SvdError::Eigen(format!("{e:?}")))?;
        let (u, s) = (eig.U(), eig.S().column_vector());
        // Eigenvalues come in ascending order: take the last n_axes, largest first.
        let mut axes = Vec::with_capacity(n_axes * d);
        let mut variances = Vec::with_capacity(n_axes);
        for a in 0..n_axes {
            let col = d - 1 - a;
            variances.push(s[col].max(0.0));
            axes.extend((0..d).map(|i| u[(i, col)]));
        }
        Ok(PrincipalAxes {
            d,
            axes,
            variances,
            total_variance,
            sample_rows: n,
        })
    }

    /// (max |cos| with one axis, projection fraction ‖P·w‖) of a direction (normalised here).
    pub fn alignment(&self, direction: &[f32]) -> (f64, f64) {
        let norm = direction.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        if norm == 0.0 {
            return (0.0, 0.0);
        }
        let (mut max_cos, mut sum_sq) = (0.0f64, 0.0f64);
        for axis in self.axes.chunks_exact(self.d) {
            let cos = axis
                .iter()
                .zip(direction)
                .map(|(&a, &w)| a * w as f64)
                .sum::<f64>()
                / norm;
            max_cos = max_cos.max(cos.abs());
            sum_sq += cos * cos;
        }
        (max_cos, sum_sq.sqrt())
    }

    /// Projection fractions of `n` random unit directions (Gaussian, seeded): the null of ‖P·w‖.
    pub fn random_projection_null(&self, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed, 0x5F0D);
        let mut out: Vec<f64> = (0..n)
            .map(|_| {
                let w: Vec<f32> = (0..self.d).map(|_| rng.normal() as f32).collect();
                self.alignment(&w).1
            })
            .collect();
        out.sort_by(f64::total_cmp);
        out
    }
}

/// The thresholds of the projected-norm fraction ‖P·w‖² that the catalog counts features at.
pub const PROJECTED_NORM_SQ_THRESHOLDS: [f64; 4] = [0.25, 0.5, 0.75, 0.9];

/// The q-quantile of sorted values (nearest rank).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_planted_axes_and_their_variance() {
        // Rows = 5·a·e0 + 2·b·e1 + small noise in 6 dimensions: the axes are ±e0, ±e1.
        let (d, n) = (6, 4000);
        let mut rng = Rng::new(1, 2);
        let mut rows = Vec::with_capacity(n * d);
        for _ in 0..n {
            let (a, b) = (rng.normal(), rng.normal());
            for i in 0..d {
                let noise = 0.01 * rng.normal();
                let v = match i {
                    0 => 5.0 * a + 3.0,
                    1 => 2.0 * b,
                    _ => 0.0,
                } + noise;
                rows.push(v as f32);
            }
        }
        let axes = PrincipalAxes::fit(&rows, d, 2).unwrap();
        assert!((axes.axes[0].abs() - 1.0).abs() < 1e-4, "{:?}", &axes.axes[..d]);
        assert!((axes.axes[d + 1].abs() - 1.0).abs() < 1e-4);
        assert!((axes.variances[0] / 25.0 - 1.0).abs() < 0.1);
        assert!(axes.variance_explained() > 0.999);
        let (max_cos, proj) = axes.alignment(&[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(
            (max_cos - 0.5f64.sqrt()).abs() < 2e-2 && (proj - 1.0).abs() < 1e-3,
            "{max_cos} {proj}"
        );
        let (max_cos, proj) = axes.alignment(&[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        assert!(max_cos < 1e-2 && proj < 1e-2);
        // Random directions in 6-d: E‖P·w‖² = 2/6.
        // The first axis alone, and the variance at a rank.
        let first = axes.top(1);
        assert_eq!((first.n_axes(), first.axes.len()), (1, d));
        assert!((axes.variance_explained_at(1) - axes.variances[0] / axes.total_variance).abs() < 1e-15);
        assert!(
            axes.variance_explained_at(1) > 0.8 && axes.variance_explained_at(9) == axes.variance_explained()
        );
        let null = axes.random_projection_null(4000, 7);
        let mean_sq = null.iter().map(|x| x * x).sum::<f64>() / null.len() as f64;
        assert!((mean_sq - 1.0 / 3.0).abs() < 0.02, "{mean_sq}");
        assert!(quantile_sorted(&null, 0.99) > quantile_sorted(&null, 0.5));
    }
}
