//! CUDA kernels against their CPU references. Runs only where a GPU, its driver and NVRTC are present
//! (kernels embedded at build time, or NVRTC at run time); elsewhere each test prints that it skipped.

use scinterp_engine::cpu::{bias_relu_in_place, layer_norm_of_sum};
use scinterp_engine::{LayerNormWeights, Matrix};
use scinterp_kernels::gpu::open_or_skip as gpu;

/// Deterministic values in [-scale, scale) (xorshift), so failures reproduce.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn add_layer_norm_kernel_matches_the_cpu_reference() {
    let Some((stream, kernels)) = gpu("add_layer_norm") else {
        return;
    };
    // Geneformer-like widths, a width that is not a multiple of 32, and one above 1024 threads' worth.
    for (rows, dim) in [(7, 512), (33, 1152), (5, 100), (3, 2049)] {
        let a = values(rows * dim, 1 + dim as u64, 3.0);
        let b = values(rows * dim, 2 + dim as u64, 3.0);
        let gamma = values(dim, 3, 1.0);
        let beta = values(dim, 4, 0.5);
        let eps = 1e-12_f32;
        let ln = LayerNormWeights::new(gamma.clone(), beta.clone(), eps as f64).unwrap();
        let want = layer_norm_of_sum(
            &Matrix::from_vec(rows, dim, a.clone()),
            &Matrix::from_vec(rows, dim, b.clone()),
            &ln,
        );
        let (da, db) = (stream.clone_htod(&a).unwrap(), stream.clone_htod(&b).unwrap());
        let (dg, dbeta) = (
            stream.clone_htod(&gamma).unwrap(),
            stream.clone_htod(&beta).unwrap(),
        );
        let mut out = stream.alloc_zeros::<f32>(rows * dim).unwrap();
        kernels
            .add_layer_norm(&stream, &da, &db, &dg, &dbeta, &mut out, (rows, dim), eps)
            .unwrap();
        let got = stream.clone_dtoh(&out).unwrap();
        let err = max_abs_diff(&got, want.as_slice());
        println!("add_layer_norm rows={rows} dim={dim}: max |gpu − cpu| = {err:.2e}");
        assert!(err < 1e-4, "rows={rows} dim={dim}: max abs diff {err}");
    }
}

#[test]
fn bias_relu_kernel_matches_the_cpu_reference() {
    let Some((stream, kernels)) = gpu("bias_relu") else {
        return;
    };
    for (rows, cols) in [(1, 1), (9, 3072), (1000, 4096), (17, 33)] {
        let x = values(rows * cols, 5 + cols as u64, 2.0);
        let bias = values(cols, 6, 1.0);
        let mut want = x.clone();
        bias_relu_in_place(&mut want, &bias);
        let (dx, dbias) = (stream.clone_htod(&x).unwrap(), stream.clone_htod(&bias).unwrap());
        let mut dy = stream.alloc_zeros::<f32>(rows * cols).unwrap();
        kernels
            .bias_relu(&stream, &dx, &dbias, &mut dy, (rows, cols))
            .unwrap();
        let got = stream.clone_dtoh(&dy).unwrap();
        // One f32 add and a max: bit-identical to the CPU.
        assert_eq!(max_abs_diff(&got, &want), 0.0, "rows={rows} cols={cols}");
    }
    // Short buffers are an Err, not a launch that reads out of bounds.
    let dx = stream.alloc_zeros::<f32>(4).unwrap();
    let dbias = stream.alloc_zeros::<f32>(2).unwrap();
    let mut dy = stream.alloc_zeros::<f32>(4).unwrap();
    assert!(kernels.bias_relu(&stream, &dx, &dbias, &mut dy, (3, 2)).is_err());
}
