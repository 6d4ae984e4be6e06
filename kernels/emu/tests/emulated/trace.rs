//! trace_ablate_f32 (the tracer's `*x -= v * w`, bit for bit) and trace_reduce (`RunningStats::push`
//! per edge in cell order and the sign-flip null, bit for bit).

use crate::common::*;
use scinterp_engine::rng::splitmix64;
use scinterp_engine::stats::welford::RunningStats;
use scinterp_kernels_emu::{Arg, Program};

#[test]
fn trace_ablate_subtracts_each_rows_activations_in_order() {
    let mut g = Gen::new(51);
    let (tokens, d, n_features) = (6usize, 45usize, 5usize);
    let clean = g.vec(tokens * d, -2.0, 2.0);
    let w_dec = g.vec(n_features * d, -1.0, 1.0);
    // Ablation 0: rows 1, 3, 3 (a repeated row keeps its order), 5; ablation 1: none (a clean copy);
    // ablation 2: row 0.
    let features = [2u32, 4, 0];
    let entries: [&[(u32, f32)]; 3] = [&[(1, 0.5), (3, 1.5), (3, -0.25), (5, 2.0)], &[], &[(0, 0.75)]];
    let mut starts = vec![0u32];
    let (mut rows, mut acts) = (Vec::new(), Vec::new());
    for e in entries {
        for &(r, a) in e {
            rows.push(r);
            acts.push(a);
        }
        starts.push(rows.len() as u32);
    }
    let copies = features.len();
    let mut p = Program::new();
    let (cb, wb, fb, sb) = (
        p.upload(&clean),
        p.upload(&w_dec),
        p.upload(&features),
        p.upload(&starts),
    );
    let (rb, ab) = (p.upload(&rows), p.upload(&acts));
    let out = p.upload(&vec![f32::NAN; copies * tokens * d]);
    p.launch(
        "trace_ablate_f32",
        (tokens as u32, copies as u32, 1),
        ((d.div_ceil(32).clamp(1, 8) * 32) as u32, 1, 1),
        0,
        &[
            Arg::Buf(cb),
            Arg::I32(tokens as i32),
            Arg::I32(d as i32),
            Arg::Buf(wb),
            Arg::I32(n_features as i32),
            Arg::Buf(fb),
            Arg::Buf(sb),
            Arg::Buf(rb),
            Arg::Buf(ab),
            Arg::I32(copies as i32),
            Arg::Buf(out),
        ],
    );
    let got = p.run().unwrap().read::<f32>(out);
    let mut want = Vec::new();
    for (b, e) in entries.iter().enumerate() {
        let w = &w_dec[features[b] as usize * d..(features[b] as usize + 1) * d];
        let mut x = clean.clone();
        for &(r, a) in *e {
            for c in 0..d {
                x[r as usize * d + c] -= a * w[c];
            }
        }
        want.extend(x);
    }
    assert_bits_eq("trace_ablate_f32", &got, &want);
}

#[test]
fn trace_reduce_is_welford_in_cell_order_with_the_sign_flip_null() {
    let mut g = Gen::new(52);
    let (copies, cells, n_targets, perms) = (2usize, 7usize, 150usize, 3usize);
    let clean = g.vec(copies * cells * n_targets, 0.0, 1.0);
    let mut ablated = clean.clone();
    for (i, v) in ablated.iter_mut().enumerate() {
        match i % 4 {
            0 => {} // x = 0: not pushed
            _ => *v += g.uniform(-0.5, 0.5),
        }
    }
    let n_active: Vec<u32> = (0..copies * cells)
        .map(|i| if i % 3 == 1 { 0 } else { 1 + (i % 4) as u32 })
        .collect();
    let hash: Vec<u64> = (0..copies * cells).map(|_| g.next_u64()).collect();
    // A prior state (as after an earlier launch).
    let (n0, mean0, m20) = (3u32, 0.01f64, 0.2f64);
    let edges = copies * n_targets;
    let mut p = Program::new();
    let (cb, ab, nb, hb) = (
        p.upload(&clean),
        p.upload(&ablated),
        p.upload(&n_active),
        p.upload(&hash),
    );
    let mean = p.upload(&vec![mean0; edges]);
    let m2 = p.upload(&vec![m20; edges]);
    let pos = p.upload(&vec![n0; edges]);
    let neg = p.upload(&vec![0u32; edges]);
    let null_sum = p.zeros::<f64>(copies * perms * n_targets);
    let null_pos = p.zeros::<u32>(copies * perms * n_targets);
    let null_neg = p.zeros::<u32>(copies * perms * n_targets);
    let active = p.zeros::<u32>(copies);
    p.launch(
        "trace_reduce",
        (n_targets.div_ceil(128) as u32, copies as u32, 1),
        (128, 1, 1),
        0,
        &[
            Arg::Buf(cb),
            Arg::Buf(ab),
            Arg::Buf(nb),
            Arg::Buf(hb),
            Arg::I32(copies as i32),
            Arg::I32(cells as i32),
            Arg::I32(n_targets as i32),
            Arg::I32(perms as i32),
            Arg::Buf(mean),
            Arg::Buf(m2),
            Arg::Buf(pos),
            Arg::Buf(neg),
            Arg::Buf(null_sum),
            Arg::Buf(null_pos),
            Arg::Buf(null_neg),
            Arg::Buf(active),
        ],
    );
    let mem = p.run().unwrap();
    let (g_mean, g_m2) = (mem.read::<f64>(mean), mem.read::<f64>(m2));
    let (g_pos, g_neg) = (mem.read::<u32>(pos), mem.read::<u32>(neg));
    let (g_ns, g_np, g_nn) = (
        mem.read::<f64>(null_sum),
        mem.read::<u32>(null_pos),
        mem.read::<u32>(null_neg),
    );
    let g_active = mem.read::<u32>(active);
    for k in 0..copies {
        let mut cells_active = 0;
        for t in 0..n_targets {
            let mut stats = RunningStats::from_parts(n0 as u64, mean0, m20);
            let (mut pp, mut nn) = (n0, 0u32);
            let mut null = vec![(0.0f64, 0u32, 0u32); perms];
            for c in 0..cells {
                let kc = k * cells + c;
                if n_active[kc] == 0 {
                    continue;
                }
                if t == 0 {
                    cells_active += 1;
                }
                let x = (ablated[kc * n_targets + t] as f64 - clean[kc * n_targets + t] as f64)
                    / n_active[kc] as f64;
                if x == 0.0 {
                    continue;
                }
                stats.push(x);
                if x > 0.0 {
                    pp += 1;
                } else {
                    nn += 1;
                }
                for (q, s) in null.iter_mut().enumerate() {
                    let plus =
                        splitmix64(hash[kc] ^ (q as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 63 == 0;
                    let sx = if plus { x } else { -x };
                    s.0 += sx;
                    if sx > 0.0 {
                        s.1 += 1;
                    } else {
                        s.2 += 1;
                    }
                }
            }
            let e = k * n_targets + t;
            let (_, mu, ss) = stats.parts();
            assert_eq!(
                (g_mean[e].to_bits(), g_m2[e].to_bits()),
                (mu.to_bits(), ss.to_bits()),
                "edge ({k}, {t}): Welford state"
            );
            assert_eq!((g_pos[e], g_neg[e]), (pp, nn), "edge ({k}, {t}): sign counts");
            for (q, s) in null.iter().enumerate() {
                let at = (k * perms + q) * n_targets + t;
                assert_eq!(
                    (g_ns[at].to_bits(), g_np[at], g_nn[at]),
                    (s.0.to_bits(), s.1, s.2),
                    "edge ({k}, {t}) permutation {q}"
                );
            }
        }
        assert_eq!(g_active[k], cells_active, "copy {k}: active cells");
    }
}
