//! gemm_bf16 (WMMA 16x16x16) against `scinterp_engine::cpu::linear` on the same bf16-rounded operands.

use crate::common::*;
use scinterp_engine::encoder::LinearWeights;
use scinterp_engine::Matrix;
use scinterp_kernels_emu::{Arg, Program};

#[test]
fn linear_bf16_matches_the_cpu_linear_with_every_epilogue() {
    let mut g = Gen::new(31);
    // Edges in every dimension: M and N not multiples of 64, K not a multiple of 32; two tiles in M.
    let (m, n, k) = (70usize, 45usize, 50usize);
    let x = bf16_round(&g.vec(m * k, -1.0, 1.0));
    let w = bf16_round(&g.vec(n * k, -1.0, 1.0));
    let bias = g.vec(n, -0.5, 0.5);
    for epilogue in 0..3 {
        let mut p = Program::new();
        let (xb, wb, bb) = (
            p.upload(&to_bf16_bits(&x)),
            p.upload(&to_bf16_bits(&w)),
            p.upload(&bias),
        );
        let y32 = p.upload(&vec![f32::NAN; m * n]);
        let y16 = p.upload(&vec![0xFFFFu16; m * n]);
        let grid = (n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1);
        let args = |y| {
            [
                Arg::Buf(xb),
                Arg::Buf(wb),
                Arg::Buf(bb),
                Arg::Buf(y),
                Arg::I32(m as i32),
                Arg::I32(n as i32),
                Arg::I32(k as i32),
                Arg::I32(epilogue),
            ]
        };
        p.launch("linear_bf16_f32out", grid, (128, 1, 1), 0, &args(y32));
        p.launch("linear_bf16_bf16out", grid, (128, 1, 1), 0, &args(y16));
        let mem = p.run().unwrap();

        let lw = LinearWeights::new(w.clone(), (epilogue >= 1).then(|| bias.clone()), n, k).unwrap();
        let mut want = scinterp_engine::cpu::linear(&Matrix::from_vec(m, k, x.clone()), &lw).into_vec();
        if epilogue == 2 {
            want.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        // Exact products, f32 sums in a different order: a few ulps of the row's magnitude (|y| ≲ 10).
        assert_close(
            &format!("linear_bf16_f32out epilogue {epilogue}"),
            &mem.read::<f32>(y32),
            &want,
            2e-5,
            2e-6,
        );
        // bf16 output: the f32 result rounded once (one bf16 ulp where the f32 results straddle a tie).
        assert_close(
            &format!("linear_bf16_bf16out epilogue {epilogue}"),
            &from_bf16_bits(&mem.read::<u16>(y16)),
            &bf16_round(&want),
            1e-6,
            1.0 / 128.0,
        );
    }
}

/// The cuBLASLt arguments of both GEMM orientations, replayed through cuBLASLt's column-major semantics
/// ([`lt_matmul`]), give the row-major products they stand for, at ragged shapes (1s, primes, K = 1).
/// cuBLASLt itself cannot run here; this checks everything handed to it (transposes, layouts, leading
/// dimensions, which buffer is A and which B, β = 1 accumulation).
/// `y[r, c] = Σ_l term(r, c, l)` over `[m, n]` row-major, summed in f64.
fn product((m, n, k): (usize, usize, usize), term: impl Fn(usize, usize, usize) -> f64) -> Vec<f32> {
    (0..m * n)
        .map(|i| (0..k).map(|l| term(i / n, i % n, l)).sum::<f64>() as f32)
        .collect()
}

#[test]
fn cublaslt_operands_compute_the_row_major_products() {
    use scinterp_kernels::gpu::gemm::{LinearShape, Orientation};
    let mut g = Gen::new(41);
    for (m, n, k) in [
        (7usize, 5usize, 3usize),
        (1, 13, 4),
        (9, 1, 6),
        (4, 6, 1),
        (20, 16, 11),
    ] {
        let shape = LinearShape { m, n, k };
        // Linear: y[M,N] = x[M,K]·w[N,K]ᵀ (cuBLASLt's A = the right operand w, B = the left x).
        let (x, w) = (g.vec(m * k, -1.0, 1.0), g.vec(n * k, -1.0, 1.0));
        let mut y = vec![0.0f32; m * n];
        lt_matmul(&Orientation::Linear.operands(shape), &w, &x, 0.0, &mut y).unwrap();
        let want = product((m, n, k), |r, c, l| x[r * k + l] as f64 * w[c * k + l] as f64);
        assert_close(&format!("linear {shape:?}"), &y, &want, 1e-6, 1e-6);
        // WeightGrad: y[M,N] = g[K,M]ᵀ·h[K,N] (A = h, B = g), then y += gᵀ·h with β = 1.
        let (gm, h) = (g.vec(k * m, -1.0, 1.0), g.vec(k * n, -1.0, 1.0));
        let ops = Orientation::WeightGrad.operands(shape);
        let mut y = vec![f32::NAN; m * n];
        lt_matmul(&ops, &h, &gm, 0.0, &mut y).unwrap();
        let want = product((m, n, k), |r, c, l| gm[l * m + r] as f64 * h[l * n + c] as f64);
        assert_close(&format!("weight_grad {shape:?}"), &y, &want, 1e-6, 1e-6);
        lt_matmul(&ops, &h, &gm, 1.0, &mut y).unwrap();
        let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
        assert_close(&format!("weight_grad += {shape:?}"), &y, &twice, 1e-6, 1e-6);
        // The replay can fail: the linear operands on the weight-gradient buffers are refused or
        // give other numbers (at shapes where no two of m, n, k are equal and k > 1: with k = 1 both
        // orientations are the same outer product).
        if m != n && m != k && n != k && k > 1 {
            let mut y = vec![0.0f32; m * n];
            if lt_matmul(&Orientation::Linear.operands(shape), &h, &gm, 0.0, &mut y).is_ok() {
                assert!(
                    worst(&y, &want, 1e-6, 1e-6) > 1.0,
                    "{shape:?}: the swapped orientation passed"
                );
            }
        }
    }
}
