//! sae_topk (against `scinterp_engine::sae::top_k_rows`, exactly) and every entry point of sae_sparse
//! (decode against `TopKSae::decode` bit for bit; the backward pieces against the CPU trainer's formulas).

use crate::common::*;
use scinterp_engine::sae::{top_k_rows, SparseCodes, TopKSae};
use scinterp_kernels_emu::{Arg, Program};

const NO_INDEX: u32 = 0xFFFF_FFFF;

/// Rows with ties, ±0, NaNs, negative-only rows, subnormals and infinities.
fn topk_input(rows: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut g = Gen::new(seed);
    let mut pre = Vec::with_capacity(rows * n);
    for r in 0..rows {
        for i in 0..n {
            let v = match (r, g.below(10)) {
                (1, _) => -g.uniform(0.0, 1.0),      // all negative: ReLU gives 0
                (2, 0..=5) => f32::NAN,              // mostly NaN
                (_, 0) => (g.below(3) as f32) * 0.5, // ties (including +0)
                (_, 1) => -0.0,
                (_, 2) => f32::from_bits(1 + g.below(100) as u32), // subnormal
                (3, 3) if i % 50 == 0 => f32::INFINITY,
                _ => g.uniform(-1.0, 1.0),
            };
            pre.push(v);
        }
    }
    pre
}

fn run_topk(pre: &[f32], mask: Option<&[u8]>, rows: usize, n: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
    let sort_len = k.next_power_of_two();
    let mut p = Program::new();
    let pb = p.upload(pre);
    let ib = p.upload(&vec![0xABCD_u32; rows * k]);
    let vb = p.upload(&vec![f32::NAN; rows * k]);
    let threads = if n <= 8192 { 256 } else { 512 };
    let common = [
        Arg::I32(rows as i32),
        Arg::I32(n as i32),
        Arg::I32(k as i32),
        Arg::I32(sort_len as i32),
    ];
    match mask {
        None => {
            let mut args = vec![Arg::Buf(pb), Arg::Buf(ib), Arg::Buf(vb)];
            args.extend(common);
            p.launch(
                "sae_topk_f32",
                (rows as u32, 1, 1),
                (threads, 1, 1),
                sort_len * 8,
                &args,
            );
        }
        Some(m) => {
            let mb = p.upload(m);
            let mut args = vec![Arg::Buf(pb), Arg::Buf(mb), Arg::Buf(ib), Arg::Buf(vb)];
            args.extend(common);
            p.launch(
                "sae_topk_masked_f32",
                (rows as u32, 1, 1),
                (threads, 1, 1),
                sort_len * 8,
                &args,
            );
        }
    }
    let mem = p.run().unwrap();
    (mem.read::<u32>(ib), mem.read::<f32>(vb))
}

#[test]
fn sae_topk_selects_exactly_as_the_cpu() {
    let (rows, n) = (4usize, 600usize);
    let pre = topk_input(rows, n, 61);
    for k in [1usize, 7, 32, 100] {
        let (idx, val) = run_topk(&pre, None, rows, n, k);
        let want = top_k_rows(&pre, n, k);
        assert_eq!(idx, want.indices, "sae_topk_f32 k = {k}: indices");
        assert_bits_eq(&format!("sae_topk_f32 k = {k}: values"), &val, &want.values);
    }
}

#[test]
fn sae_topk_masked_is_the_top_k_of_the_eligible_latents() {
    let (rows, n) = (4usize, 300usize);
    let pre = topk_input(rows, n, 62);
    let mut g = Gen::new(63);
    let mask: Vec<u8> = (0..n).map(|_| u8::from(g.below(3) == 0)).collect();
    let eligible: Vec<usize> = (0..n).filter(|&i| mask[i] != 0).collect();
    for k in [1usize, 16, 40] {
        let (idx, val) = run_topk(&pre, Some(&mask), rows, n, k);
        let compact: Vec<f32> = (0..rows)
            .flat_map(|r| eligible.iter().map(move |&i| (r, i)))
            .map(|(r, i)| pre[r * n + i])
            .collect();
        let want = top_k_rows(&compact, eligible.len(), k);
        let want_idx: Vec<u32> = want
            .indices
            .iter()
            .map(|&j| eligible[j as usize] as u32)
            .collect();
        assert_eq!(idx, want_idx, "sae_topk_masked_f32 k = {k}: indices");
        assert_bits_eq(
            &format!("sae_topk_masked_f32 k = {k}: values"),
            &val,
            &want.values,
        );
    }
    // Fewer eligible latents than k: the remaining slots are empty (index 0xFFFFFFFF, value 0).
    let mut few = vec![0u8; n];
    few[10] = 1;
    few[200] = 1;
    let (idx, val) = run_topk(&pre, Some(&few), 1, n, 4);
    let mut order = [(pre[10], 10u32), (pre[200], 200u32)];
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    assert_eq!(idx, [order[0].1, order[1].1, NO_INDEX, NO_INDEX]);
    assert_eq!(val[2..], [0.0, 0.0]);
}

struct Sae {
    rows: usize,
    k: usize,
    d: usize,
    d_sae: usize,
    sae: TopKSae,
    codes: SparseCodes,
    x: Vec<f32>,
}

/// k codes per row with an empty slot, a zero value, and negative values (only v > 0 gates grad_pre).
fn sae_case(d: usize, seed: u64) -> Sae {
    let (rows, k, d_sae) = (5usize, 6usize, 20usize);
    let mut g = Gen::new(seed);
    let sae = TopKSae {
        d_in: d,
        d_sae,
        k,
        w_enc: g.vec(d_sae * d, -1.0, 1.0),
        b_enc: g.vec(d_sae, -0.1, 0.1),
        w_dec: g.vec(d_sae * d, -1.0, 1.0),
        b_dec: g.vec(d, -0.2, 0.2),
    };
    let mut indices = Vec::new();
    let mut values = Vec::new();
    for r in 0..rows {
        for j in 0..k {
            let (f, v) = match j {
                5 if r % 2 == 0 => (NO_INDEX, 0.0),
                4 => (g.below(d_sae) as u32, 0.0),
                3 => (g.below(d_sae) as u32, -0.5),
                _ => (g.below(d_sae) as u32, g.uniform(0.1, 2.0)),
            };
            indices.push(f);
            values.push(v);
        }
    }
    let x = g.vec(rows * d, -2.0, 2.0);
    Sae {
        rows,
        k,
        d,
        d_sae,
        sae,
        codes: SparseCodes { k, indices, values },
        x,
    }
}

fn row_threads(d: usize) -> u32 {
    (d.div_ceil(32).clamp(1, 8) * 32) as u32
}

#[test]
fn sae_decode_and_residuals_match_the_cpu_bit_for_bit() {
    let s = sae_case(45, 71);
    let (rows, k, d, d_sae) = (s.rows, s.k, s.d, s.d_sae);
    let w16 = to_bf16_bits(&s.sae.w_dec);
    let mut p = Program::new();
    let (ib, vb) = (p.upload(&s.codes.indices), p.upload(&s.codes.values));
    let (wb, w16b, bb, xb) = (
        p.upload(&s.sae.w_dec),
        p.upload(&w16),
        p.upload(&s.sae.b_dec),
        p.upload(&s.x),
    );
    let dec = p.zeros::<f32>(rows * d);
    let dec16 = p.zeros::<f32>(rows * d);
    let res = p.zeros::<f32>(rows * d);
    let aux = p.zeros::<f32>(rows * d);
    let dims = [
        Arg::I32(rows as i32),
        Arg::I32(k as i32),
        Arg::I32(d as i32),
        Arg::I32(d_sae as i32),
    ];
    let cfg = ((rows as u32, 1, 1), (row_threads(d), 1, 1), k * 8);
    let with = |head: &[Arg]| [head, &dims[..]].concat();
    p.launch(
        "sae_decode_f32",
        cfg.0,
        cfg.1,
        cfg.2,
        &with(&[
            Arg::Buf(ib),
            Arg::Buf(vb),
            Arg::Buf(wb),
            Arg::Buf(bb),
            Arg::Buf(dec),
        ]),
    );
    p.launch(
        "sae_decode_bf16",
        cfg.0,
        cfg.1,
        cfg.2,
        &with(&[
            Arg::Buf(ib),
            Arg::Buf(vb),
            Arg::Buf(w16b),
            Arg::Buf(bb),
            Arg::Buf(dec16),
        ]),
    );
    p.launch(
        "sae_residual_f32",
        cfg.0,
        cfg.1,
        cfg.2,
        &with(&[
            Arg::Buf(xb),
            Arg::Buf(bb),
            Arg::Buf(ib),
            Arg::Buf(vb),
            Arg::Buf(wb),
            Arg::Buf(res),
        ]),
    );
    // AuxK residual of the main residual with the same codes.
    p.launch(
        "sae_aux_residual_f32",
        cfg.0,
        cfg.1,
        cfg.2,
        &with(&[
            Arg::Buf(res),
            Arg::Buf(ib),
            Arg::Buf(vb),
            Arg::Buf(wb),
            Arg::Buf(aux),
        ]),
    );
    let mem = p.run().unwrap();

    assert_bits_eq("sae_decode_f32", &mem.read::<f32>(dec), &s.sae.decode(&s.codes));
    let mut sae16 = s.sae.clone();
    sae16.w_dec = bf16_round(&s.sae.w_dec);
    assert_bits_eq(
        "sae_decode_bf16",
        &mem.read::<f32>(dec16),
        &sae16.decode(&s.codes),
    );

    // e = x − b_dec − Σ v·W_dec[f] (slot order), then a = e − Σ v·W_dec[f].
    let sub = |base: &[f32], minus_b_dec: bool| -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * d);
        for r in 0..rows {
            for c in 0..d {
                let mut acc = base[r * d + c];
                if minus_b_dec {
                    acc -= s.sae.b_dec[c];
                }
                for j in 0..k {
                    let (f, v) = (s.codes.indices[r * k + j], s.codes.values[r * k + j]);
                    if (f as usize) < d_sae && v != 0.0 {
                        acc += (-v) * s.sae.w_dec[f as usize * d + c];
                    }
                }
                out.push(acc);
            }
        }
        out
    };
    let e = sub(&s.x, true);
    assert_bits_eq("sae_residual_f32", &mem.read::<f32>(res), &e);
    assert_bits_eq("sae_aux_residual_f32", &mem.read::<f32>(aux), &sub(&e, false));
}

#[test]
fn sae_backward_kernels_match_the_cpu_trainer() {
    // d = 48 takes the float4 atomics of sae_grad_scatter_f32, d = 45 the scalar ones.
    for d in [48usize, 45] {
        let s = sae_case(d, 72 + d as u64);
        let (rows, k, d_sae) = (s.rows, s.k, s.d_sae);
        let mut g = Gen::new(73);
        let t = g.vec(rows * d, -1.0, 1.0);
        let coef = -2.0 / (rows * d) as f32;
        let (stride, offset) = (k + 3, 2usize);

        let mut p = Program::new();
        let (ib, vb) = (p.upload(&s.codes.indices), p.upload(&s.codes.values));
        let (tb, wdb, web, bdb, xb) = (
            p.upload(&t),
            p.upload(&s.sae.w_dec),
            p.upload(&s.sae.w_enc),
            p.upload(&s.sae.b_dec),
            p.upload(&s.x),
        );
        let gp = p.upload(&vec![7.0f32; rows * stride]);
        let (gwd, gwe, gbe, gbd) = (
            p.zeros::<f32>(d_sae * d),
            p.zeros::<f32>(d_sae * d),
            p.zeros::<f32>(d_sae),
            p.zeros::<f32>(d),
        );
        let dims = [
            Arg::I32(rows as i32),
            Arg::I32(k as i32),
            Arg::I32(d as i32),
            Arg::I32(d_sae as i32),
        ];
        let mut args = vec![
            Arg::Buf(tb),
            Arg::Buf(ib),
            Arg::Buf(vb),
            Arg::Buf(wdb),
            Arg::F32(coef),
            Arg::Buf(gp),
        ];
        args.extend(dims);
        args.extend([Arg::I32(stride as i32), Arg::I32(offset as i32)]);
        p.launch(
            "sae_grad_pre_f32",
            (rows as u32, 1, 1),
            ((k.clamp(1, 8) * 32) as u32, 1, 1),
            0,
            &args,
        );
        let mut args = vec![
            Arg::Buf(ib),
            Arg::Buf(vb),
            Arg::Buf(gp),
            Arg::I32(stride as i32),
            Arg::I32(offset as i32),
            Arg::Buf(tb),
            Arg::F32(coef),
            Arg::Buf(xb),
            Arg::Buf(bdb),
            Arg::Buf(gwd),
            Arg::Buf(gwe),
            Arg::Buf(gbe),
        ];
        args.extend(dims);
        let vec_cols = if d % 4 == 0 { d / 4 } else { d };
        p.launch(
            "sae_grad_scatter_f32",
            (rows as u32, 1, 1),
            (row_threads(vec_cols), 1, 1),
            k * 12,
            &args,
        );
        p.launch(
            "sae_grad_b_dec_f32",
            (d.div_ceil(32) as u32, 1, 1),
            (32, 16, 1),
            0,
            &[
                Arg::Buf(tb),
                Arg::I32(rows as i32),
                Arg::I32(d as i32),
                Arg::F32(coef),
                Arg::Buf(gbe),
                Arg::Buf(web),
                Arg::I32(d_sae as i32),
                Arg::Buf(gbd),
            ],
        );
        let mem = p.run().unwrap();

        // grad_pre: coef · (t · W_dec[f]) where v > 0, else 0; columns outside [offset, offset + k) untouched.
        let mut want_gp = vec![7.0f32; rows * stride];
        for r in 0..rows {
            for j in 0..k {
                let (f, v) = (s.codes.indices[r * k + j], s.codes.values[r * k + j]);
                want_gp[r * stride + offset + j] = if (f as usize) < d_sae && v > 0.0 {
                    let dot: f64 = (0..d)
                        .map(|c| t[r * d + c] as f64 * s.sae.w_dec[f as usize * d + c] as f64)
                        .sum();
                    coef * dot as f32
                } else {
                    0.0
                };
            }
        }
        let got_gp = mem.read::<f32>(gp);
        assert_close("sae_grad_pre_f32", &got_gp, &want_gp, 1e-6, 1e-5);

        // Scatter from the kernel's own grad_pre (so that only the scatter is under test here).
        let (mut wd, mut we, mut be) = (
            vec![0.0f32; d_sae * d],
            vec![0.0f32; d_sae * d],
            vec![0.0f32; d_sae],
        );
        for r in 0..rows {
            for j in 0..k {
                let f = s.codes.indices[r * k + j] as usize;
                if f >= d_sae {
                    continue;
                }
                let a = coef * s.codes.values[r * k + j];
                let gpj = got_gp[r * stride + offset + j];
                if gpj != 0.0 {
                    be[f] += gpj;
                }
                for c in 0..d {
                    if a != 0.0 {
                        wd[f * d + c] += a * t[r * d + c];
                    }
                    if gpj != 0.0 {
                        we[f * d + c] += gpj * (s.x[r * d + c] - s.sae.b_dec[c]);
                    }
                }
            }
        }
        assert_close(
            &format!("sae_grad_scatter_f32 d {d}: W_dec"),
            &mem.read::<f32>(gwd),
            &wd,
            1e-7,
            1e-6,
        );
        assert_close(
            &format!("sae_grad_scatter_f32 d {d}: W_enc"),
            &mem.read::<f32>(gwe),
            &we,
            1e-7,
            1e-6,
        );
        assert_close(
            &format!("sae_grad_scatter_f32 d {d}: b_enc"),
            &mem.read::<f32>(gbe),
            &be,
            1e-7,
            1e-6,
        );

        let bd: Vec<f32> = (0..d)
            .map(|c| {
                let a: f64 = (0..rows).map(|r| (coef * t[r * d + c]) as f64).sum();
                let b: f64 = (0..d_sae)
                    .map(|f| be[f] as f64 * s.sae.w_enc[f * d + c] as f64)
                    .sum();
                (a - b) as f32
            })
            .collect();
        assert_close(
            &format!("sae_grad_b_dec_f32 d {d}"),
            &mem.read::<f32>(gbd),
            &bd,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn sae_decoder_constraints_and_dead_latents_match_the_cpu() {
    let mut g = Gen::new(81);
    let (d_sae, d) = (19usize, 70usize);
    let mut grad = g.vec(d_sae * d, -1.0, 1.0);
    grad[3 * d..4 * d].fill(0.0); // an untouched latent stays zero
    let mut w = g.vec(d_sae * d, -1.0, 1.0);
    w[5 * d..6 * d].fill(0.0); // a zero row is left as is by the renormalisation
    let tsf: Vec<u64> = (0..d_sae as u64).map(|f| f * 37).collect();
    let (rows, k) = (3usize, 4usize);
    let indices: Vec<u32> = vec![1, 4, NO_INDEX, 7, 4, 2, 9, 18, 0, 11, 12, 13];
    let values: Vec<f32> = vec![1.0, 0.5, 0.0, 0.0, 0.3, -1.0, 2.0, 0.1, 0.2, 0.0, 0.4, 0.5];
    let batch = 64u64;
    let threshold = 500u64;

    let mut p = Program::new();
    let (gb, wb) = (p.upload(&grad), p.upload(&w));
    let w2 = p.upload(&w);
    let tb = p.upload(&tsf);
    let (ib, vb) = (p.upload(&indices), p.upload(&values));
    let dead = p.upload(&vec![9u8; d_sae]);
    let n_dead = p.zeros::<u32>(1);
    let warp_rows = |n: usize| (n.div_ceil(8) as u32, 1, 1);
    p.launch(
        "sae_remove_parallel_grad_f32",
        warp_rows(d_sae),
        (256, 1, 1),
        0,
        &[
            Arg::Buf(gb),
            Arg::Buf(wb),
            Arg::I32(d_sae as i32),
            Arg::I32(d as i32),
        ],
    );
    p.launch(
        "sae_renormalise_rows_f32",
        warp_rows(d_sae),
        (256, 1, 1),
        0,
        &[Arg::Buf(w2), Arg::I32(d_sae as i32), Arg::I32(d as i32)],
    );
    let blocks = (d_sae.div_ceil(256) as u32, 1, 1);
    p.launch(
        "sae_fire_counters_add",
        blocks,
        (256, 1, 1),
        0,
        &[Arg::Buf(tb), Arg::I32(d_sae as i32), Arg::U64(batch)],
    );
    p.launch(
        "sae_fire_counters_reset",
        (1, 1, 1),
        (256, 1, 1),
        0,
        &[
            Arg::Buf(ib),
            Arg::Buf(vb),
            Arg::I64((rows * k) as i64),
            Arg::Buf(tb),
            Arg::I32(d_sae as i32),
        ],
    );
    p.launch(
        "sae_dead_mask",
        blocks,
        (256, 1, 1),
        0,
        &[
            Arg::Buf(tb),
            Arg::I32(d_sae as i32),
            Arg::U64(threshold),
            Arg::Buf(dead),
            Arg::Buf(n_dead),
        ],
    );
    let mem = p.run().unwrap();

    let mut want_g = grad.clone();
    let mut want_w = w.clone();
    for f in 0..d_sae {
        let (gr, wr) = (&mut want_g[f * d..(f + 1) * d], &w[f * d..(f + 1) * d]);
        let along: f32 = gr.iter().zip(wr).map(|(a, b)| a * b).sum();
        if along != 0.0 {
            gr.iter_mut().zip(wr).for_each(|(a, b)| *a += -along * b);
        }
        let row = &mut want_w[f * d..(f + 1) * d];
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    assert_close(
        "sae_remove_parallel_grad_f32",
        &mem.read::<f32>(gb),
        &want_g,
        1e-6,
        1e-5,
    );
    assert_close(
        "sae_renormalise_rows_f32",
        &mem.read::<f32>(w2),
        &want_w,
        1e-7,
        1e-6,
    );

    let mut want_t: Vec<u64> = tsf.iter().map(|t| t + batch).collect();
    for (&f, &v) in indices.iter().zip(&values) {
        if (f as usize) < d_sae && v > 0.0 {
            want_t[f as usize] = 0;
        }
    }
    assert_eq!(mem.read::<u64>(tb), want_t, "fire counters");
    let want_dead: Vec<u8> = want_t.iter().map(|&t| u8::from(t >= threshold)).collect();
    assert_eq!(mem.read::<u8>(dead), want_dead, "sae_dead_mask");
    assert_eq!(
        mem.read::<u32>(n_dead),
        [want_dead.iter().map(|&x| x as u32).sum::<u32>()],
        "dead count"
    );
}
