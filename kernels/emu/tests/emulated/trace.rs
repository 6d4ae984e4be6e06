//! trace_ablate_f32 (the tracer's `*x -= v * w`, bit for bit), trace_reduce (`RunningStats::push`
//! per edge in cell order and the sign-flip null, bit for bit; with slots, against the host reduction),
//! trace_gather_rows_f32 (a row copy) and trace_code_sums (`CodeSegments::sums_host`, bit for bit).

use crate::common::*;
use scinterp_engine::rng::splitmix64;
use scinterp_engine::stats::welford::RunningStats;
use scinterp_kernels::gpu::{CodeSegments, TraceStatsHost};
use scinterp_kernels_emu::{Arg, Buf, Program};

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

/// Queues one `trace_reduce` launch: inputs (clean sums, ablated sums, n_active, sign hashes), shape
/// (copies, cells, targets, permutations), state (mean, M2, positive, negative, null sums, null positive,
/// null negative, cells active) and the slots argument.
fn launch_reduce(
    p: &mut Program,
    [cb, ab, nb, hb]: [Buf; 4],
    (copies, cells, n_targets, perms): (usize, usize, usize, usize),
    state: [Buf; 8],
    slots: Arg,
) {
    let mut args = vec![
        Arg::Buf(cb),
        Arg::Buf(ab),
        Arg::Buf(nb),
        Arg::Buf(hb),
        Arg::I32(copies as i32),
        Arg::I32(cells as i32),
        Arg::I32(n_targets as i32),
        Arg::I32(perms as i32),
    ];
    args.extend(state.map(Arg::Buf));
    args.push(slots);
    p.launch(
        "trace_reduce",
        (n_targets.div_ceil(128) as u32, copies as u32, 1),
        (128, 1, 1),
        0,
        &args,
    );
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
    launch_reduce(
        &mut p,
        [cb, ab, nb, hb],
        (copies, cells, n_targets, perms),
        [mean, m2, pos, neg, null_sum, null_pos, null_neg, active],
        Arg::Null,
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

/// Input copies that update chosen slots (the features ablated in one cell) equal the host reduction
/// with the same slots, bit for bit; slots not named keep their state.
#[test]
fn trace_reduce_with_slots_updates_only_the_named_slots() {
    let mut g = Gen::new(53);
    let (slots_total, cells, n_targets, perms) = (5usize, 3usize, 70usize, 2usize);
    let slots = [3u32, 0, 4];
    let copies = slots.len();
    let clean = g.vec(copies * cells * n_targets, 0.0, 1.0);
    let ablated: Vec<f32> = clean
        .iter()
        .enumerate()
        .map(|(i, &v)| if i % 3 == 0 { v } else { v + g.uniform(-0.5, 0.5) })
        .collect();
    let n_active: Vec<u32> = (0..copies * cells).map(|i| (i % 3) as u32).collect();
    let hash: Vec<u64> = (0..copies * cells).map(|_| g.next_u64()).collect();
    let features: Vec<u32> = (0..slots_total as u32).map(|f| 10 + f).collect();
    let mut want = TraceStatsHost::new(&features, n_targets, perms);
    // A prior launch without slots, then the launch with slots.
    let first_clean = g.vec(slots_total * n_targets, 0.0, 1.0);
    let first_ablated = g.vec(slots_total * n_targets, 0.0, 1.0);
    let first_n = vec![2u32; slots_total];
    let first_hash: Vec<u64> = (0..slots_total).map(|_| g.next_u64()).collect();
    want.accumulate(&first_clean, &first_ablated, &first_n, &first_hash, 1, None)
        .unwrap();
    let prior = want.clone();
    want.accumulate(&clean, &ablated, &n_active, &hash, cells, Some(&slots))
        .unwrap();

    let edges = slots_total * n_targets;
    let null = edges * perms;
    let mut p = Program::new();
    let mean = p.upload(&prior.mean);
    let m2 = p.upload(&prior.m2);
    let pos = p.upload(&prior.positive);
    let neg = p.upload(&prior.negative);
    let null_sum = p.upload(&prior.null_sum);
    let null_pos = p.upload(&prior.null_positive);
    let null_neg = p.upload(&prior.null_negative);
    let active = p.upload(&prior.cells_active);
    let (cb, ab, nb, hb, sb) = (
        p.upload(&clean),
        p.upload(&ablated),
        p.upload(&n_active),
        p.upload(&hash),
        p.upload(&slots),
    );
    launch_reduce(
        &mut p,
        [cb, ab, nb, hb],
        (copies, cells, n_targets, perms),
        [mean, m2, pos, neg, null_sum, null_pos, null_neg, active],
        Arg::Buf(sb),
    );
    let mem = p.run().unwrap();
    let bits = |v: Vec<f64>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(mem.read::<f64>(mean)), bits(want.mean.clone()), "mean");
    assert_eq!(bits(mem.read::<f64>(m2)), bits(want.m2.clone()), "m2");
    assert_eq!(mem.read::<u32>(pos), want.positive, "positive");
    assert_eq!(mem.read::<u32>(neg), want.negative, "negative");
    assert_eq!(
        bits(mem.read::<f64>(null_sum))[..null],
        bits(want.null_sum.clone())[..],
        "null sums"
    );
    assert_eq!(mem.read::<u32>(null_pos), want.null_positive, "null positive");
    assert_eq!(mem.read::<u32>(null_neg), want.null_negative, "null negative");
    assert_eq!(mem.read::<u32>(active), want.cells_active, "cells active");
    // Slot 1 and 2 were not named: unchanged since the prior launch.
    for slot in [1usize, 2] {
        let e = slot * n_targets..(slot + 1) * n_targets;
        assert_eq!(want.mean[e.clone()], prior.mean[e.clone()]);
        assert_eq!(want.positive[e.clone()], prior.positive[e]);
    }
    // Repeated or out-of-range slots are refused on the host.
    let mut again = prior.clone();
    assert!(again
        .accumulate(&clean, &ablated, &n_active, &hash, cells, Some(&[3, 3, 4]))
        .is_err());
    assert!(again
        .accumulate(&clean, &ablated, &n_active, &hash, cells, Some(&[3, 0, 5]))
        .is_err());
}

#[test]
fn trace_gather_rows_copies_the_named_rows() {
    let mut g = Gen::new(54);
    let (src_rows, d) = (9usize, 70usize);
    let src = g.vec(src_rows * d, -3.0, 3.0);
    let rows = [4u32, 0, 8, 4, 2];
    let mut p = Program::new();
    let (sb, rb) = (p.upload(&src), p.upload(&rows));
    let out = p.upload(&vec![f32::NAN; rows.len() * d]);
    p.launch(
        "trace_gather_rows_f32",
        (rows.len() as u32, 1, 1),
        (64, 1, 1),
        0,
        &[
            Arg::Buf(sb),
            Arg::I32(src_rows as i32),
            Arg::I32(d as i32),
            Arg::Buf(rb),
            Arg::I32(rows.len() as i32),
            Arg::Buf(out),
        ],
    );
    let got = p.run().unwrap().read::<f32>(out);
    let want: Vec<f32> = rows
        .iter()
        .flat_map(|&r| src[r as usize * d..(r as usize + 1) * d].iter().copied())
        .collect();
    assert_bits_eq("trace_gather_rows_f32", &got, &want);
}

/// A program of one `trace_code_sums` launch over `starts.len() − 1` segments with `block` threads;
/// returns it and its output buffer (NaN-filled before the launch).
pub fn code_sums_program(
    (idx, val, k): (&[u32], &[f32], usize),
    starts: &[u32],
    n_targets: usize,
    block: u32,
) -> (Program, Buf) {
    let segments = starts.len() - 1;
    let mut p = Program::new();
    let (ib, vb, sb) = (p.upload(idx), p.upload(val), p.upload(starts));
    let out = p.upload(&vec![f32::NAN; segments * n_targets]);
    p.launch(
        "trace_code_sums",
        (segments as u32, 1, 1),
        (block, 1, 1),
        0,
        &[
            Arg::Buf(ib),
            Arg::Buf(vb),
            Arg::I32(k as i32),
            Arg::Buf(sb),
            Arg::I32(segments as i32),
            Arg::I32(n_targets as i32),
            Arg::Buf(out),
        ],
    );
    (p, out)
}

/// Dense per-segment sums of top-k codes, rows in order: the host reference bit for bit, with empty
/// segments, a latent shared by consecutive rows, k above the block size and a segment start > 0.
#[test]
fn trace_code_sums_adds_each_segments_codes_in_row_order() {
    let mut g = Gen::new(55);
    for (k, n_targets, block) in [(4usize, 37usize, 32u32), (300, 700, 256)] {
        let lengths = [3usize, 0, 5, 1, 0, 4];
        let first = 2usize;
        let rows = first + lengths.iter().sum::<usize>();
        let mut idx = Vec::with_capacity(rows * k);
        let mut val = Vec::with_capacity(rows * k);
        for r in 0..rows {
            // k distinct latents per row, overlapping between neighbouring rows.
            let offset = (r * 3) % n_targets;
            for j in 0..k {
                idx.push(((offset + j * 2) % n_targets) as u32);
                val.push(g.uniform(0.0, 4.0));
            }
        }
        let segments = CodeSegments::new(first, &lengths, n_targets).unwrap();
        let want = segments.sums_host(&idx, &val, k).unwrap();
        let (p, out) = code_sums_program((&idx, &val, k), segments.starts(), n_targets, block);
        let got = p.run().unwrap().read::<f32>(out);
        assert_bits_eq("trace_code_sums", &got, &want);
        // The empty segments are zeros, the others are not all zero.
        assert!(got[n_targets..2 * n_targets].iter().all(|&v| v == 0.0));
        assert!(got[..n_targets].iter().any(|&v| v > 0.0));
    }
}
