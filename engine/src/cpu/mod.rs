//! The CPU backend: f32 compute, GEMMs through faer, threads through rayon (the global pool, shared
//! with faer). Each op is a plain function over row-major [`Matrix`](crate::Matrix) values.

mod attention;
mod gemm;
mod norm;
mod softmax;

pub use attention::attention_varlen;
pub use gemm::{linear, linear_into};
pub use norm::{layer_norm, layer_norm_of_sum};
pub use softmax::{exp_rows_in_place, softmax_in_place};

use rayon::prelude::*;

/// `x[r, c] = max(x[r, c] + bias[c], 0)` over rows of `bias.len()`: the CPU reference of the CUDA
/// bias + ReLU epilogue (`kernels/src/bias_relu.cu`). An empty bias leaves `x` as it is.
pub fn bias_relu_in_place(x: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    x.par_chunks_mut(bias.len()).for_each(|row| {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = (*v + b).max(0.0);
        }
    });
}

/// `x = max(x, 0)` elementwise.
pub fn relu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(|chunk| {
        for v in chunk {
            *v = v.max(0.0);
        }
    });
}
