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
