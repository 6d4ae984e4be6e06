//! LayerNorm with a biased variance, statistics accumulated in f64 (then applied in f32).

use rayon::prelude::*;

use crate::encoder::LayerNormWeights;
use crate::matrix::Matrix;

/// `LN(x)` row by row.
pub fn layer_norm(x: &Matrix, ln: &LayerNormWeights) -> Matrix {
    let mut out = x.clone();
    let d = x.cols();
    out.as_mut_slice()
        .par_chunks_mut(d.max(1))
        .for_each(|row| normalize_row(row, ln));
    out
}

/// `LN(a + b)` row by row: the post-LN residual step.
pub fn layer_norm_of_sum(a: &Matrix, b: &Matrix, ln: &LayerNormWeights) -> Matrix {
    assert_eq!(
        (a.rows(), a.cols()),
        (b.rows(), b.cols()),
        "layer_norm_of_sum: shapes differ"
    );
    let mut out = a.clone();
    let d = a.cols();
    out.as_mut_slice()
        .par_chunks_mut(d.max(1))
        .zip(b.as_slice().par_chunks(d.max(1)))
        .for_each(|(row, add)| {
            for (o, v) in row.iter_mut().zip(add) {
                *o += v;
            }
            normalize_row(row, ln);
        });
    out
}

fn normalize_row(row: &mut [f32], ln: &LayerNormWeights) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| {
            let c = v as f64 - mean;
            c * c
        })
        .sum::<f64>()
        / n;
    let rstd = 1.0 / (var + ln.eps()).sqrt();
    let (mean, rstd) = (mean as f32, rstd as f32);
    for ((v, g), b) in row.iter_mut().zip(ln.gamma()).zip(ln.beta()) {
        *v = (*v - mean) * rstd * g + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_to_zero_mean_unit_variance_then_affine() {
        let x = Matrix::from_vec(2, 4, vec![1.0, 2.0, 3.0, 4.0, -1.0, -1.0, -1.0, 5.0]);
        let ln = LayerNormWeights::new(vec![1.0; 4], vec![0.0; 4], 1e-12).unwrap();
        let y = layer_norm(&x, &ln);
        for r in 0..2 {
            let row = y.row(r);
            let mean: f32 = row.iter().sum::<f32>() / 4.0;
            let var: f32 = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4.0;
            assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
        }
        let ln2 = LayerNormWeights::new(vec![2.0; 4], vec![0.5; 4], 1e-12).unwrap();
        let z = layer_norm_of_sum(&x, &Matrix::zeros(2, 4), &ln2);
        for (a, b) in z.as_slice().iter().zip(y.as_slice()) {
            assert!((a - (2.0 * b + 0.5)).abs() < 1e-6);
        }
    }
}
