//! sae_topk (against `scinterp_engine::sae::top_k_rows`, exactly) and every entry point of sae_sparse
//! (decode against `TopKSae::decode` bit for bit; the backward pieces against the CPU trainer's formulas;
//! the dense weight gradients — scatter, column sum and the cuBLASLt GEMM arguments replayed on the CPU —
//! against the CPU training step's own gradients, `train::step_gradients`).

use crate::common::*;
use scinterp_engine::sae::{top_k_rows, SparseCodes, TopKSae};
use scinterp_kernels_emu::{Arg, Buf, Program};

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
    // d = 48 and a ragged d = 45.
    for d in [48usize, 45] {
        let s = sae_case(d, 72 + d as u64);
        let (rows, k, d_sae) = (s.rows, s.k, s.d_sae);
        let mut g = Gen::new(73);
        let t = g.vec(rows * d, -1.0, 1.0);
        let coef = -2.0 / (rows * d) as f32;
        let (stride, offset) = (k + 3, 2usize);

        let mut p = Program::new();
        let (ib, vb) = (p.upload(&s.codes.indices), p.upload(&s.codes.values));
        let (tb, wdb, web) = (p.upload(&t), p.upload(&s.sae.w_dec), p.upload(&s.sae.w_enc));
        let gp = p.upload(&vec![7.0f32; rows * stride]);
        // A b_enc gradient with zeros (skipped latents) among non-zeros.
        let be: Vec<f32> = (0..d_sae)
            .map(|f| if f % 3 == 0 { 0.0 } else { g.uniform(-0.5, 0.5) })
            .collect();
        let (gbe, gbd) = (p.upload(&be), p.zeros::<f32>(d));
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

/// One code set of a `sae_dense_scatter_*` launch: (indices, weights, k, stride, offset, coef).
pub type ScatterSet = (Buf, Buf, usize, usize, usize, f32);

/// Launches `entry` (`sae_dense_scatter_f32`/`_bf16`) as `Kernels::sae_dense_scatter` does: one block of
/// 256 threads per row, no dynamic shared memory; without a second set, k_b = 0 and set a's buffers.
pub fn launch_dense_scatter(
    p: &mut Program,
    entry: &str,
    a: ScatterSet,
    b: Option<ScatterSet>,
    out: Buf,
    (rows, d_sae): (usize, usize),
) {
    let b = b.unwrap_or((a.0, a.1, 0, 1, 0, 0.0));
    let mut args = Vec::new();
    for (idx, w, k, stride, offset, coef) in [a, b] {
        args.extend([
            Arg::Buf(idx),
            Arg::Buf(w),
            Arg::I32(k as i32),
            Arg::I32(stride as i32),
            Arg::I32(offset as i32),
            Arg::F32(coef),
        ]);
    }
    args.extend([Arg::Buf(out), Arg::I32(rows as i32), Arg::I32(d_sae as i32)]);
    p.launch(entry, (rows as u32, 1, 1), (256, 1, 1), 0, &args);
}

/// Launches `entry` (`sae_col_sum_f32`/`_bf16`) as `Kernels::sae_col_sum` does: block (32, 16).
pub fn launch_col_sum(p: &mut Program, entry: &str, m: Buf, (rows, n): (usize, usize), out: Buf) {
    p.launch(
        entry,
        (n.div_ceil(32) as u32, 1, 1),
        (32, 16, 1),
        0,
        &[
            Arg::Buf(m),
            Arg::I32(rows as i32),
            Arg::I32(n as i32),
            Arg::Buf(out),
        ],
    );
}

/// `k` distinct latents per row (top-k output never repeats one), with some slots replaced by
/// `replace` (an empty slot or an index past d_sae).
fn distinct_indices(g: &mut Gen, rows: usize, k: usize, d_sae: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(rows * k);
    for _ in 0..rows {
        let mut row: Vec<u32> = Vec::with_capacity(k);
        while row.len() < k {
            let f = g.below(d_sae) as u32;
            if !row.contains(&f) {
                row.push(f);
            }
        }
        out.extend(row);
    }
    out
}

/// The definitions, element for element: every element written (the output starts as NaN), set a's
/// products, set b's added to them (the same latent in both sets of a row), empty slots and indices
/// past d_sae skipped; bf16 rounded once per write. Column sums in the kernel's order, bit for bit.
#[test]
fn sae_dense_scatter_and_col_sum_match_their_definitions() {
    for d_sae in [20usize, 300] {
        let mut g = Gen::new(90 + d_sae as u64);
        let (rows, k_a, k_b) = (5usize, 6usize, 4usize);
        let (stride_a, offset_a, coef_a) = (9usize, 2usize, -0.37f32);
        let (coef_b, stride_b) = (1.5f32, k_b);
        let mut idx_a = distinct_indices(&mut g, rows, k_a, d_sae);
        idx_a[2] = NO_INDEX;
        idx_a[k_a + 4] = d_sae as u32 + 3;
        // Set b shares two latents with set a in every row.
        let mut idx_b = distinct_indices(&mut g, rows, k_b, d_sae);
        for r in 0..rows {
            for j in 0..2 {
                let shared = idx_a[r * k_a + j];
                if !idx_b[r * k_b..(r + 1) * k_b].contains(&shared) {
                    idx_b[r * k_b + j] = shared;
                }
            }
        }
        let w_a = g.vec(rows * stride_a, -2.0, 2.0);
        let w_b = g.vec(rows * stride_b, -2.0, 2.0);

        let mut p = Program::new();
        let (ia, wa, ib, wb) = (p.upload(&idx_a), p.upload(&w_a), p.upload(&idx_b), p.upload(&w_b));
        let n = rows * d_sae;
        let (o32, o16) = (p.upload(&vec![f32::NAN; n]), p.upload(&vec![0xFFFFu16; n]));
        let (one32, one16) = (p.upload(&vec![f32::NAN; n]), p.upload(&vec![0xFFFFu16; n]));
        let a = (ia, wa, k_a, stride_a, offset_a, coef_a);
        let b = (ib, wb, k_b, stride_b, 0, coef_b);
        let dims = (rows, d_sae);
        launch_dense_scatter(&mut p, "sae_dense_scatter_f32", a, Some(b), o32, dims);
        launch_dense_scatter(&mut p, "sae_dense_scatter_bf16", a, Some(b), o16, dims);
        launch_dense_scatter(&mut p, "sae_dense_scatter_f32", a, None, one32, dims);
        launch_dense_scatter(&mut p, "sae_dense_scatter_bf16", a, None, one16, dims);
        // Column sums of a ragged matrix (rows not a multiple of 16, columns not of 32).
        let (cr, cn) = (37usize, 45usize);
        let m = g.vec(cr * cn, -3.0, 3.0);
        let m16 = to_bf16_bits(&m);
        let (mb, m16b) = (p.upload(&m), p.upload(&m16));
        let (s32, s16) = (p.upload(&vec![f32::NAN; cn]), p.upload(&vec![f32::NAN; cn]));
        launch_col_sum(&mut p, "sae_col_sum_f32", mb, (cr, cn), s32);
        launch_col_sum(&mut p, "sae_col_sum_bf16", m16b, (cr, cn), s16);
        let mem = p.run().unwrap();

        let bf = |v: f32| half::bf16::from_f32(v).to_f32();
        let expect = |with_b: bool, round: &dyn Fn(f32) -> f32| -> Vec<f32> {
            let mut out = vec![0.0f32; n];
            for r in 0..rows {
                for j in 0..k_a {
                    let f = idx_a[r * k_a + j] as usize;
                    if f < d_sae {
                        out[r * d_sae + f] = round(coef_a * w_a[r * stride_a + offset_a + j]);
                    }
                }
                for j in 0..if with_b { k_b } else { 0 } {
                    let f = idx_b[r * k_b + j] as usize;
                    let at = r * d_sae + f;
                    out[at] = round(out[at] + coef_b * w_b[r * stride_b + j]);
                }
            }
            out
        };
        let exact = |v: f32| v;
        let tag = |what: &str| format!("{what} (d_sae {d_sae})");
        assert_bits_eq(
            &tag("sae_dense_scatter_f32, two sets"),
            &mem.read::<f32>(o32),
            &expect(true, &exact),
        );
        assert_bits_eq(
            &tag("sae_dense_scatter_f32, one set"),
            &mem.read::<f32>(one32),
            &expect(false, &exact),
        );
        assert_bits_eq(
            &tag("sae_dense_scatter_bf16, two sets"),
            &from_bf16_bits(&mem.read::<u16>(o16)),
            &expect(true, &bf),
        );
        assert_bits_eq(
            &tag("sae_dense_scatter_bf16, one set"),
            &from_bf16_bits(&mem.read::<u16>(one16)),
            &expect(false, &bf),
        );

        // Warp y sums rows y, y + 16, …; then the 16 partials in order.
        let col_sums = |m: &[f32]| -> Vec<f32> {
            (0..cn)
                .map(|c| {
                    let mut partial = [0.0f32; 16];
                    for (y, p) in partial.iter_mut().enumerate() {
                        for r in (y..cr).step_by(16) {
                            *p += m[r * cn + c];
                        }
                    }
                    partial.iter().fold(0.0f32, |s, v| s + v)
                })
                .collect()
        };
        assert_bits_eq(&tag("sae_col_sum_f32"), &mem.read::<f32>(s32), &col_sums(&m));
        assert_bits_eq(
            &tag("sae_col_sum_bf16"),
            &mem.read::<f32>(s16),
            &col_sums(&from_bf16_bits(&m16)),
        );
    }
}

/// max |got − want| / max |want|.
fn scaled_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(want).fold(0.0f32, |m, (a, b)| {
        if a.is_nan() {
            f32::INFINITY
        } else {
            m.max((a - b).abs())
        }
    });
    diff / scale
}

/// The whole GPU weight-gradient path of a training step with AuxK active — the real kernels (centring,
/// residuals, ∂L/∂pre, the dense scatters, the column sum, the b_dec gradient, the decoder projection)
/// in the emulator, and the cuBLASLt GEMMs replayed on the CPU from the very arguments the wrapper
/// hands cuBLASLt (`Orientation::WeightGrad.operands`, A = the residual or xc, B = the dense matrix) —
/// against the CPU trainer's own gradients for the same step (`train::step_gradients`). f32 and bf16
/// operands, at ragged sizes (d 21, 13 rows). Only cuBLASLt's execution is not covered.
#[test]
fn sae_weight_grads_match_the_cpu_training_step() {
    use scinterp_engine::sae::train::{step_gradients, TrainConfig};
    use scinterp_kernels::gpu::gemm::{LinearShape, Orientation};

    let (rows, d, d_sae, k) = (13usize, 21usize, 40usize, 4usize);
    let mut g = Gen::new(91);
    let mut w_dec = g.vec(d_sae * d, -1.0, 1.0);
    for row in w_dec.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let sae = TopKSae {
        d_in: d,
        d_sae,
        k,
        w_enc: g.vec(d_sae * d, -0.5, 0.5),
        b_enc: g.vec(d_sae, -0.1, 0.1),
        w_dec,
        b_dec: g.vec(d, -0.2, 0.2),
    };
    let x = g.vec(rows * d, -1.0, 1.0);
    let mut cfg = TrainConfig::new(d, d_sae, k, 10_000);
    cfg.aux_k = 6;
    cfg.aux_coef = 1.0 / 32.0;
    cfg.dead_after_tokens = 100;
    // Every third latent dead: AuxK picks 6 of those 14 per row.
    let since: Vec<u64> = (0..d_sae).map(|f| if f % 3 == 0 { 500 } else { 0 }).collect();
    let want = step_gradients(&sae, &x, &cfg, 0.8, &since);
    let aux = want.aux_codes.clone().expect("dead latents: AuxK is active");
    let (codes, ka) = (&want.codes, aux.k);
    assert!(ka > 0 && want.grad_aux != 0.0);
    let slots = k + ka;

    let mut p = Program::new();
    let (xb, bdb, wdb, web) = (
        p.upload(&x),
        p.upload(&sae.b_dec),
        p.upload(&sae.w_dec),
        p.upload(&sae.w_enc),
    );
    let (ib, vb) = (p.upload(&codes.indices), p.upload(&codes.values));
    let (aib, avb) = (p.upload(&aux.indices), p.upload(&aux.values));
    let (xc, e, a) = (
        p.zeros::<f32>(rows * d),
        p.zeros::<f32>(rows * d),
        p.zeros::<f32>(rows * d),
    );
    let gp = p.upload(&vec![f32::NAN; rows * slots]);
    p.launch(
        "sub_row_vector_f32",
        (1, 1, 1),
        (64, 1, 1),
        0,
        &[
            Arg::Buf(xb),
            Arg::Buf(bdb),
            Arg::Buf(xc),
            Arg::U64(rows as u64),
            Arg::I32(d as i32),
        ],
    );
    let dims = |kk: usize| {
        [
            Arg::I32(rows as i32),
            Arg::I32(kk as i32),
            Arg::I32(d as i32),
            Arg::I32(d_sae as i32),
        ]
    };
    let row_cfg = |kk: usize| ((rows as u32, 1, 1), (row_threads(d), 1, 1), kk * 8);
    let (gr, bl, sm) = row_cfg(k);
    p.launch(
        "sae_residual_f32",
        gr,
        bl,
        sm,
        &[
            &[
                Arg::Buf(xb),
                Arg::Buf(bdb),
                Arg::Buf(ib),
                Arg::Buf(vb),
                Arg::Buf(wdb),
                Arg::Buf(e),
            ][..],
            &dims(k),
        ]
        .concat(),
    );
    let (gr, bl, sm) = row_cfg(ka);
    p.launch(
        "sae_aux_residual_f32",
        gr,
        bl,
        sm,
        &[
            &[
                Arg::Buf(e),
                Arg::Buf(aib),
                Arg::Buf(avb),
                Arg::Buf(wdb),
                Arg::Buf(a),
            ][..],
            &dims(ka),
        ]
        .concat(),
    );
    for (t, ci, cv, kk, coef, offset) in [
        (e, ib, vb, k, want.grad_main, 0),
        (a, aib, avb, ka, want.grad_aux, k),
    ] {
        p.launch(
            "sae_grad_pre_f32",
            (rows as u32, 1, 1),
            ((kk.clamp(1, 8) * 32) as u32, 1, 1),
            0,
            &[
                &[
                    Arg::Buf(t),
                    Arg::Buf(ci),
                    Arg::Buf(cv),
                    Arg::Buf(wdb),
                    Arg::F32(coef),
                    Arg::Buf(gp),
                ][..],
                &dims(kk),
                &[Arg::I32(slots as i32), Arg::I32(offset as i32)],
            ]
            .concat(),
        );
    }
    // As `Kernels::sae_weight_grads`: G (both sets' ∂L/∂pre) and its column sums, C_main, C_aux; in
    // f32 and in bf16. (The wrapper reuses one buffer in turn; separate ones here.)
    let n = rows * d_sae;
    let mut dense = Vec::new();
    for (entry, col_sum) in [
        ("sae_dense_scatter_f32", "sae_col_sum_f32"),
        ("sae_dense_scatter_bf16", "sae_col_sum_bf16"),
    ] {
        let bytes = if entry.ends_with("f32") { 4 } else { 2 };
        let fresh = |p: &mut Program| p.upload(&vec![0xFFu8; n * bytes]);
        let (gm, c_main, c_aux) = (fresh(&mut p), fresh(&mut p), fresh(&mut p));
        let gbe = p.upload(&vec![f32::NAN; d_sae]);
        launch_dense_scatter(
            &mut p,
            entry,
            (ib, gp, k, slots, 0, 1.0),
            Some((aib, gp, ka, slots, k, 1.0)),
            gm,
            (rows, d_sae),
        );
        launch_col_sum(&mut p, col_sum, gm, (rows, d_sae), gbe);
        launch_dense_scatter(
            &mut p,
            entry,
            (ib, vb, k, k, 0, want.grad_main),
            None,
            c_main,
            (rows, d_sae),
        );
        launch_dense_scatter(
            &mut p,
            entry,
            (aib, avb, ka, ka, 0, want.grad_aux),
            None,
            c_aux,
            (rows, d_sae),
        );
        dense.push((gm, c_main, c_aux, gbe));
    }
    let gbd = p.upload(&vec![f32::NAN; d]);
    p.launch(
        "sae_grad_b_dec_f32",
        (d.div_ceil(32) as u32, 1, 1),
        (32, 16, 1),
        0,
        &[
            Arg::Buf(e),
            Arg::I32(rows as i32),
            Arg::I32(d as i32),
            Arg::F32(want.grad_main),
            Arg::Buf(dense[0].3),
            Arg::Buf(web),
            Arg::I32(d_sae as i32),
            Arg::Buf(gbd),
        ],
    );
    let mem = p.run().unwrap();

    // The GEMMs, from the wrapper's own cuBLASLt arguments: dW[d_sae, d] = Gᵀ·H over the rows.
    let ops = Orientation::WeightGrad.operands(LinearShape {
        m: d_sae,
        n: d,
        k: rows,
    });
    let (xc_v, e_v, a_v) = (mem.read::<f32>(xc), mem.read::<f32>(e), mem.read::<f32>(a));
    for (i, (gm, c_main, c_aux, gbe)) in dense.iter().enumerate() {
        let bf16 = i == 1;
        // The dense matrices as the GEMM reads them, and the residuals / xc in its operand type.
        let read = |b: Buf| {
            if bf16 {
                from_bf16_bits(&mem.read::<u16>(b))
            } else {
                mem.read::<f32>(b)
            }
        };
        let op = |v: &[f32]| if bf16 { bf16_round(v) } else { v.to_vec() };
        let mut gwe = vec![f32::NAN; d_sae * d];
        lt_matmul(&ops, &op(&xc_v), &read(*gm), 0.0, &mut gwe).unwrap();
        let mut gwd = vec![f32::NAN; d_sae * d];
        lt_matmul(&ops, &op(&e_v), &read(*c_main), 0.0, &mut gwd).unwrap();
        lt_matmul(&ops, &op(&a_v), &read(*c_aux), 1.0, &mut gwd).unwrap();
        // The decoder projection, by its kernel, as the stepper runs it next.
        let mut q = Program::new();
        let (gwdb, wq) = (q.upload(&gwd), q.upload(&sae.w_dec));
        q.launch(
            "sae_remove_parallel_grad_f32",
            (d_sae.div_ceil(8) as u32, 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::Buf(gwdb),
                Arg::Buf(wq),
                Arg::I32(d_sae as i32),
                Arg::I32(d as i32),
            ],
        );
        let gwd = q.run().unwrap().read::<f32>(gwdb);
        // f32: the CPU's sums in another order (and f64 here). bf16: operands rounded to 8 bits.
        let tol = if bf16 { 1e-2 } else { 1e-5 };
        for (what, got, reference) in [
            ("W_enc", gwe, &want.w_enc),
            ("W_dec", gwd, &want.w_dec),
            ("b_enc", mem.read::<f32>(*gbe), &want.b_enc),
        ] {
            let err = scaled_err(&got, reference);
            eprintln!(
                "dense weight gradients ({}): {what} scaled error {err:.1e}",
                if bf16 { "bf16" } else { "f32" }
            );
            assert!(
                err < tol,
                "{what} ({}): scaled error {err:e} ≥ {tol:e}",
                if bf16 { "bf16" } else { "f32" }
            );
        }
    }
    let err = scaled_err(&mem.read::<f32>(gbd), &want.b_dec);
    assert!(err < 1e-5, "b_dec: scaled error {err:e}");
}
