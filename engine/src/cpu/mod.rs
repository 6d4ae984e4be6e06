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

/// `x = max(x, 0)` elementwise.
pub fn relu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(|chunk| {
        for v in chunk {
            *v = v.max(0.0);
        }
    });
}
