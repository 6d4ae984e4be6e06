//! add_layer_norm, bias_relu, convert, sae_optim and embed_bert against the engine's CPU arithmetic.

use crate::common::*;
use half::{bf16, f16};
use scinterp_engine::encoder::LayerNormWeights;
use scinterp_engine::Matrix;
use scinterp_kernels_emu::{Arg, Program};

#[test]
fn add_layer_norm_matches_layer_norm_of_sum() {
    let mut g = Gen::new(21);
    // Widths: under a warp, not a multiple of 32, several columns per thread (the wrapper's threads).
    for dim in [1usize, 33, 100, 1200] {
        let rows = 3;
        let a = g.vec(rows * dim, -2.0, 2.0);
        let b = g.vec(rows * dim, -2.0, 2.0);
        let gamma = g.vec(dim, 0.5, 1.5);
        let beta = g.vec(dim, -0.2, 0.2);
        let eps = 1e-5f32;
        let mut p = Program::new();
        let bufs = [
            p.upload(&a),
            p.upload(&b),
            p.upload(&gamma),
            p.upload(&beta),
            p.zeros::<f32>(rows * dim),
        ];
        let threads = (dim.div_ceil(32).clamp(1, 32) * 32) as u32;
        p.launch(
            "add_layer_norm_f32",
            (rows as u32, 1, 1),
            (threads, 1, 1),
            0,
            &[
                Arg::Buf(bufs[0]),
                Arg::Buf(bufs[1]),
                Arg::Buf(bufs[2]),
                Arg::Buf(bufs[3]),
                Arg::Buf(bufs[4]),
                Arg::I32(rows as i32),
                Arg::I32(dim as i32),
                Arg::F32(eps),
            ],
        );
        let got = p.run().unwrap().read::<f32>(bufs[4]);
        let ln = LayerNormWeights::new(gamma, beta, eps as f64).unwrap();
        let want = scinterp_engine::cpu::layer_norm_of_sum(
            &Matrix::from_vec(rows, dim, a),
            &Matrix::from_vec(rows, dim, b),
            &ln,
        );
        // f32 statistics against the CPU's f64 ones (the kernel's stated ~1e-6 relative).
        assert_close(
            &format!("add_layer_norm dim {dim}"),
            &got,
            want.as_slice(),
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn bias_relu_is_exact() {
    let mut g = Gen::new(22);
    let (rows, cols) = (7, 93);
    let x = g.vec(rows * cols, -1.0, 1.0);
    let bias = g.vec(cols, -0.5, 0.5);
    let mut p = Program::new();
    let xb = p.upload(&x);
    let bb = p.upload(&bias);
    let yb = p.zeros::<f32>(rows * cols);
    // Fewer threads than elements: the grid-stride loop runs several rounds.
    p.launch(
        "bias_relu_f32",
        (2, 1, 1),
        (128, 1, 1),
        0,
        &[
            Arg::Buf(xb),
            Arg::Buf(bb),
            Arg::Buf(yb),
            Arg::I32(rows as i32),
            Arg::I32(cols as i32),
        ],
    );
    let got = p.run().unwrap().read::<f32>(yb);
    let want: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| (v + bias[i % cols]).max(0.0))
        .collect();
    assert_bits_eq("bias_relu_f32", &got, &want);
}

/// Values that exercise rounding: halfway cases, subnormals of f16 and f32, overflow, infinities, NaN.
fn conversion_inputs() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::from_bits(0x3f80_8000), // bf16 halfway, even below
        f32::from_bits(0x3f81_8000), // bf16 halfway, odd below
        f32::from_bits(0x3f80_8001),
        65504.0,
        65519.99,
        65520.0,
        1e9,
        -1e9,
        5.96e-8, // f16 smallest subnormal
        2.98e-8, // half of it
        2.99e-8,
        6.1e-5,  // near the smallest f16 normal
        1.0e-40, // f32 subnormal
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN_POSITIVE,
    ];
    let mut g = Gen::new(23);
    v.extend((0..300).map(|_| f32::from_bits(g.next_u64() as u32)));
    v.extend(g.vec(200, -70000.0, 70000.0));
    v.extend(g.vec(200, -1e-4, 1e-4));
    v
}

#[test]
fn conversions_are_bit_exact_round_to_nearest_even() {
    let x = conversion_inputs();
    let n = x.len() as u64;
    let mut p = Program::new();
    let src = p.upload(&x);
    let bf = p.zeros::<u16>(x.len());
    let hf = p.zeros::<u16>(x.len());
    let bf_back = p.zeros::<f32>(x.len());
    let hf_back = p.zeros::<f32>(x.len());
    let cfg = ((2, 1, 1), (256, 1, 1));
    p.launch(
        "f32_to_bf16",
        cfg.0,
        cfg.1,
        0,
        &[Arg::Buf(src), Arg::Buf(bf), Arg::U64(n)],
    );
    p.launch(
        "f32_to_f16",
        cfg.0,
        cfg.1,
        0,
        &[Arg::Buf(src), Arg::Buf(hf), Arg::U64(n)],
    );
    p.launch(
        "bf16_to_f32",
        cfg.0,
        cfg.1,
        0,
        &[Arg::Buf(bf), Arg::Buf(bf_back), Arg::U64(n)],
    );
    p.launch(
        "f16_to_f32",
        cfg.0,
        cfg.1,
        0,
        &[Arg::Buf(hf), Arg::Buf(hf_back), Arg::U64(n)],
    );
    let m = p.run().unwrap();
    let want_bf: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    let want_hf: Vec<f32> = x.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    assert_bits_eq("f32_to_bf16", &from_bf16_bits(&m.read::<u16>(bf)), &want_bf);
    assert_bits_eq("f32_to_f16", &from_f16_bits(&m.read::<u16>(hf)), &want_hf);
    assert_bits_eq("bf16_to_f32", &m.read::<f32>(bf_back), &want_bf);
    assert_bits_eq("f16_to_f32", &m.read::<f32>(hf_back), &want_hf);
}

#[test]
fn sae_optim_kernels_match_the_cpu_trainer_arithmetic() {
    let mut g = Gen::new(24);
    let (rows, cols) = (5usize, 37usize);
    let x = g.vec(rows * cols, -1.0, 1.0);
    let v = g.vec(cols, -0.3, 0.3);
    let n = 1000usize;
    let (p0, m0, v0, grad) = (
        g.vec(n, -1.0, 1.0),
        g.vec(n, -0.1, 0.1),
        g.vec(n, 0.0, 0.01),
        g.vec(n, -1.0, 1.0),
    );
    let (lr, b1, b2, eps, t) = (1e-3f32, 0.9f32, 0.999f32, 1e-8f32, 3);
    let c1 = 1.0 / (1.0 - 0.9f64.powi(t)) as f32;
    let c2 = 1.0 / (1.0 - 0.999f64.powi(t)) as f32;

    let mut p = Program::new();
    let (xb, vb, ob) = (p.upload(&x), p.upload(&v), p.zeros::<f32>(rows * cols));
    let (pb, mb, sb, gb) = (p.upload(&p0), p.upload(&m0), p.upload(&v0), p.upload(&grad));
    let blocks = 3u32;
    let partial = p.zeros::<f64>(blocks as usize);
    p.launch(
        "sub_row_vector_f32",
        (1, 1, 1),
        (64, 1, 1),
        0,
        &[
            Arg::Buf(xb),
            Arg::Buf(vb),
            Arg::Buf(ob),
            Arg::U64(rows as u64),
            Arg::I32(cols as i32),
        ],
    );
    p.launch(
        "adam_f32",
        (2, 1, 1),
        (256, 1, 1),
        0,
        &[
            Arg::Buf(pb),
            Arg::Buf(mb),
            Arg::Buf(sb),
            Arg::Buf(gb),
            Arg::U64(n as u64),
            Arg::F32(lr),
            Arg::F32(b1),
            Arg::F32(b2),
            Arg::F32(c1),
            Arg::F32(c2),
            Arg::F32(eps),
        ],
    );
    p.launch(
        "sum_squares_f64",
        (blocks, 1, 1),
        (256, 1, 1),
        0,
        &[Arg::Buf(gb), Arg::U64(n as u64), Arg::Buf(partial)],
    );
    let mem = p.run().unwrap();

    let want: Vec<f32> = x.iter().enumerate().map(|(i, a)| a - v[i % cols]).collect();
    assert_bits_eq("sub_row_vector_f32", &mem.read::<f32>(ob), &want);

    // TrainState::adam, element by element.
    let (mut pw, mut mw, mut vw) = (p0.clone(), m0.clone(), v0.clone());
    for i in 0..n {
        mw[i] = b1 * mw[i] + (1.0 - b1) * grad[i];
        vw[i] = b2 * vw[i] + (1.0 - b2) * grad[i] * grad[i];
        pw[i] -= lr * (mw[i] * c1) / ((vw[i] * c2).sqrt() + eps);
    }
    assert_bits_eq("adam_f32 m", &mem.read::<f32>(mb), &mw);
    assert_bits_eq("adam_f32 v", &mem.read::<f32>(sb), &vw);
    assert_bits_eq("adam_f32 p", &mem.read::<f32>(pb), &pw);

    let total: f64 = mem.read::<f64>(partial).iter().sum();
    let want: f64 = grad.iter().map(|&x| (x as f64) * (x as f64)).sum();
    assert!(
        (total - want).abs() <= 1e-12 * want,
        "sum_squares_f64: {total} vs {want}"
    );
}

#[test]
fn embed_bert_gather_is_exact() {
    let mut g = Gen::new(25);
    let (vocab, max_pos, d, rows) = (11usize, 9usize, 40usize, 6usize);
    let word = g.vec(vocab * d, -1.0, 1.0);
    let position = g.vec(max_pos * d, -1.0, 1.0);
    let token_type = g.vec(d, -1.0, 1.0);
    let tokens: Vec<u32> = (0..rows).map(|_| g.below(vocab) as u32).collect();
    let positions: Vec<u32> = (0..rows).map(|i| (i % max_pos) as u32).collect();
    let mut p = Program::new();
    let (tb, pb) = (p.upload(&tokens), p.upload(&positions));
    let (wb, posb, ttb) = (p.upload(&word), p.upload(&position), p.upload(&token_type));
    let out = p.zeros::<f32>(rows * d);
    p.launch(
        "embed_bert_gather_f32",
        (rows as u32, 1, 1),
        ((d.div_ceil(32).clamp(1, 8) * 32) as u32, 1, 1),
        0,
        &[
            Arg::Buf(tb),
            Arg::Buf(pb),
            Arg::Buf(wb),
            Arg::Buf(posb),
            Arg::Buf(ttb),
            Arg::Buf(out),
            Arg::I32(rows as i32),
            Arg::I32(d as i32),
        ],
    );
    let got = p.run().unwrap().read::<f32>(out);
    let mut want = Vec::new();
    for r in 0..rows {
        for i in 0..d {
            want.push(
                (word[tokens[r] as usize * d + i] + token_type[i]) + position[positions[r] as usize * d + i],
            );
        }
    }
    assert_bits_eq("embed_bert_gather_f32", &got, &want);
}
