//! attention_varlen_bf16 (mma.sync) and attention_varlen_f32 against `scinterp_engine::cpu::attention_varlen`
//! (no key mask) and an f64 reference of the masked softmax (with a key mask).

use crate::common::*;
use scinterp_engine::Matrix;
use scinterp_kernels_emu::{Arg, EmuError, Program};
use std::path::Path;

const HEAD_DIM: usize = 64;
pub const THREADS: u32 = 128;

/// Cell lengths covering: a single token, partial tiles, exactly one tile, one past it, three key tiles.
pub const LENS: &[usize] = &[1, 7, 64, 65, 130, 5];
pub const HEADS: usize = 2;

pub struct Case {
    pub offsets: Vec<usize>,
    pub qkv: Vec<f32>,
    pub tokens: usize,
}

pub fn case(seed: u64) -> Case {
    let mut offsets = vec![0usize];
    for l in LENS {
        offsets.push(offsets.last().unwrap() + l);
    }
    let tokens = *offsets.last().unwrap();
    let mut g = Gen::new(seed);
    // bf16-representable values, so that both kernels and the references see the same inputs.
    let qkv = bf16_round(&g.vec(tokens * 3 * HEADS * HEAD_DIM, -2.0, 2.0));
    Case { offsets, qkv, tokens }
}

/// {first query row, cell start, cell end} per block, query tiles of `tile` rows (the wrapper's layout).
fn tiles(offsets: &[usize], tile: usize) -> Vec<i32> {
    let mut t = Vec::new();
    for c in offsets.windows(2) {
        let mut q = c[0];
        while q < c[1] {
            t.extend([q as i32, c[0] as i32, c[1] as i32]);
            q += tile;
        }
    }
    t
}

/// Runs one precision of the kernel in `runner`; returns ctx as f32.
pub fn run(c: &Case, bf16: bool, mask: Option<&[u8]>, runner: Option<&Path>) -> Result<Vec<f32>, EmuError> {
    let hidden = HEADS * HEAD_DIM;
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let t = tiles(&c.offsets, if bf16 { 64 } else { 32 });
    let mut p = Program::new();
    let qkv = if bf16 {
        p.upload(&to_bf16_bits(&c.qkv))
    } else {
        p.upload(&c.qkv)
    };
    let tiles_b = p.upload(&t);
    let mask_arg = match mask {
        Some(m) => Arg::Buf(p.upload(m)),
        None => Arg::Null,
    };
    let ctx = if bf16 {
        p.upload(&vec![0xFFFFu16; c.tokens * hidden])
    } else {
        p.upload(&vec![f32::NAN; c.tokens * hidden])
    };
    p.launch(
        if bf16 {
            "attention_varlen_bf16"
        } else {
            "attention_varlen_f32"
        },
        ((t.len() / 3) as u32, HEADS as u32, 1),
        (THREADS, 1, 1),
        0,
        &[
            Arg::Buf(qkv),
            Arg::Buf(tiles_b),
            mask_arg,
            Arg::Buf(ctx),
            Arg::I32(HEADS as i32),
            Arg::F32(scale),
        ],
    );
    let m = match runner {
        Some(r) => p.run_with(r)?,
        None => p.run()?,
    };
    Ok(if bf16 {
        from_bf16_bits(&m.read::<u16>(ctx))
    } else {
        m.read::<f32>(ctx)
    })
}

pub fn cpu(c: &Case) -> Vec<f32> {
    let hidden = HEADS * HEAD_DIM;
    let qkv = Matrix::from_vec(c.tokens, 3 * hidden, c.qkv.clone());
    scinterp_engine::cpu::attention_varlen(&qkv, &c.offsets, HEADS, HEAD_DIM, 1.0 / (HEAD_DIM as f32).sqrt())
        .into_vec()
}

/// f64 softmax attention with left-out keys; a query with no key kept gets zeros (the kernels' rule).
fn masked_reference(c: &Case, mask: &[u8]) -> Vec<f32> {
    let hidden = HEADS * HEAD_DIM;
    let stride = 3 * hidden;
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let mut out = vec![0.0f32; c.tokens * hidden];
    for cell in c.offsets.windows(2) {
        for h in 0..HEADS {
            for i in cell[0]..cell[1] {
                let keys: Vec<usize> = (cell[0]..cell[1]).filter(|&j| mask[j] != 0).collect();
                if keys.is_empty() {
                    continue;
                }
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        (0..HEAD_DIM)
                            .map(|d| {
                                c.qkv[i * stride + h * HEAD_DIM + d] as f64
                                    * c.qkv[j * stride + hidden + h * HEAD_DIM + d] as f64
                            })
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..HEAD_DIM {
                    let acc: f64 = keys
                        .iter()
                        .zip(&e)
                        .map(|(&j, w)| w * c.qkv[j * stride + 2 * hidden + h * HEAD_DIM + d] as f64)
                        .sum();
                    out[i * hidden + h * HEAD_DIM + d] = (acc / z) as f32;
                }
            }
        }
    }
    out
}

/// Every 5th token left out, cell 1 entirely, and cell 4's first 67 keys (a key tile with none kept);
/// left-out tokens' K and V rows are NaN, which must not leak.
fn masked_case(c: &mut Case) -> Vec<u8> {
    let hidden = HEADS * HEAD_DIM;
    let mut mask = vec![1u8; c.tokens];
    for (cell, w) in c.offsets.windows(2).enumerate() {
        for j in w[0]..w[1] {
            if j % 5 == 3 || cell == 1 || (cell == 4 && j - w[0] < 67) {
                mask[j] = 0;
            }
        }
    }
    for j in 0..c.tokens {
        if mask[j] == 0 {
            for col in hidden..3 * hidden {
                c.qkv[j * 3 * hidden + col] = f32::NAN;
            }
        }
    }
    mask
}

/// bf16 operands and P rounded to bf16: |error| within 1e-2 + 1e-2·|ref| (typical max error ~4e-3 at
/// values up to ~2; the ctx output itself is rounded to bf16, 2⁻⁸ relative).
pub const BF16_TOL: (f32, f32) = (1e-2, 1e-2);
/// f32: only summation order and exp differ from the CPU.
pub const F32_TOL: (f32, f32) = (2e-5, 1e-5);

#[test]
fn attention_bf16_matches_the_cpu() {
    let c = case(1);
    let got = run(&c, true, None, None).unwrap();
    let want = cpu(&c);
    eprintln!(
        "attention_varlen_bf16: {:.3}× the tolerance",
        worst(&got, &want, BF16_TOL.0, BF16_TOL.1)
    );
    assert_close("attention_varlen_bf16", &got, &want, BF16_TOL.0, BF16_TOL.1);
}

#[test]
fn attention_f32_matches_the_cpu() {
    let c = case(2);
    let got = run(&c, false, None, None).unwrap();
    let want = cpu(&c);
    eprintln!(
        "attention_varlen_f32: {:.3}× the tolerance",
        worst(&got, &want, F32_TOL.0, F32_TOL.1)
    );
    assert_close("attention_varlen_f32", &got, &want, F32_TOL.0, F32_TOL.1);
}

#[test]
fn attention_with_a_key_mask_matches_the_masked_reference_in_both_precisions() {
    let mut c = case(3);
    let mask = masked_case(&mut c);
    let want = masked_reference(&c, &mask);
    let got = run(&c, false, Some(&mask), None).unwrap();
    assert_close("attention_varlen_f32, masked", &got, &want, F32_TOL.0, F32_TOL.1);
    let got = run(&c, true, Some(&mask), None).unwrap();
    assert_close(
        "attention_varlen_bf16, masked",
        &got,
        &want,
        BF16_TOL.0,
        BF16_TOL.1,
    );
}
