//! Tracing kernels (`trace.cu`: replicated ablation and the per-edge reduction) against the CPU tracer's
//! math (`scinterp_engine::trace`). The host builders, the Rust emulation of the reduction and the
//! sign-flip hashes are tested everywhere; the kernels only where a GPU is present (elsewhere each GPU
//! test prints that it skipped).

use std::collections::HashMap;

use scinterp_engine::stats::RunningStats;
use scinterp_engine::trace::{EdgeSums, FlipSums, SignFlipNull, TraceAccumulator};
use scinterp_engine::{Edit, HookPoint, Matrix};
use scinterp_kernels::gpu::open_or_skip as gpu;
use scinterp_kernels::gpu::{
    sign_flip_hash, sign_flip_is_positive, AblationList, TraceStats, TraceStatsHost,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| (self.unit() * 2.0 - 1.0) * scale).collect()
    }
}

// ---------------------------------------------------------------------------------------------------
// Replicated ablation
// ---------------------------------------------------------------------------------------------------

/// One ablation as the tracer holds it: the feature and (packed row, a_f(row)) in the tracer's order.
type Ablation = (u32, Vec<(usize, f32)>);

fn random_ablations(rng: &mut Rng, tokens: usize, n_features: usize, copies: usize) -> Vec<Ablation> {
    (0..copies)
        .map(|b| {
            let f = rng.below(n_features) as u32;
            let n = if b == 0 { 0 } else { rng.below(tokens.min(12)) + 1 };
            let mut rows: Vec<usize> = (0..n).map(|_| rng.below(tokens)).collect();
            if b == 1 && n > 1 {
                rows[n - 1] = rows[0]; // a repeated row: applied twice, in order
            }
            (
                f,
                rows.into_iter().map(|r| (r, 0.05 + 3.0 * rng.unit())).collect(),
            )
        })
        .collect()
}

fn ablation_list(ablations: &[Ablation], tokens: usize, n_features: usize) -> AblationList {
    let mut list = AblationList::new(tokens, n_features).unwrap();
    for (f, active) in ablations {
        let rows: Vec<usize> = active.iter().map(|&(r, _)| r).collect();
        let acts: Vec<f32> = active.iter().map(|&(_, a)| a).collect();
        list.push(*f, &rows, &acts).unwrap();
    }
    list
}

/// The CPU tracer's rule (trace.rs: `*x -= v * w` at the active rows) on a copy of the clean batch.
fn tracer_copies(clean: &[f32], d: usize, w_dec: &[f32], ablations: &[Ablation]) -> Vec<f32> {
    let mut out = Vec::new();
    for (f, active) in ablations {
        let mut state = clean.to_vec();
        let w = &w_dec[*f as usize * d..(*f as usize + 1) * d];
        for &(row, v) in active {
            for (x, wc) in state[row * d..(row + 1) * d].iter_mut().zip(w) {
                *x -= v * wc;
            }
        }
        out.extend(state);
    }
    out
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn ablation_copies_on_the_cpu_equal_the_tracer_and_add_direction_edits() {
    let mut rng = Rng(0x00ab_1a7e);
    let (tokens, d, n_features) = (37, 48, 20);
    let clean = rng.values(tokens * d, 3.0);
    let w_dec = rng.values(n_features * d, 0.3);
    let ablations = random_ablations(&mut rng, tokens, n_features, 9);
    let list = ablation_list(&ablations, tokens, n_features);
    assert_eq!(list.copies(), 9);
    let got = list.apply_host(&clean, d, &w_dec).unwrap();
    let want = tracer_copies(&clean, d, &w_dec, &ablations);
    assert_eq!(bits(&got), bits(&want));
    // The same as Edit::AddDirection with direction W_dec[f] and scales −a_f(row) (the engine's ablation).
    for (b, (f, active)) in ablations.iter().enumerate() {
        let mut m = Matrix::from_vec(tokens, d, clean.clone());
        let edit = Edit::AddDirection {
            rows: active.iter().map(|&(r, _)| r).collect(),
            direction: w_dec[*f as usize * d..(*f as usize + 1) * d].to_vec(),
            scales: active.iter().map(|&(_, a)| -a).collect(),
        };
        edit.validate(HookPoint::ResidPost(0), tokens, d).unwrap();
        edit.apply(&mut m);
        assert_eq!(
            bits(m.as_slice()),
            bits(&got[b * tokens * d..(b + 1) * tokens * d]),
            "copy {b}"
        );
    }
    // Copy 0 has no rows: the clean batch.
    assert_eq!(&got[..tokens * d], clean.as_slice());
}

#[test]
fn ablation_list_rejects_bad_ablations() {
    let mut list = AblationList::new(10, 5).unwrap();
    list.push(1, &[0, 9], &[1.0, 2.0]).unwrap();
    let before = list.clone();
    assert!(list.push(5, &[0], &[1.0]).is_err(), "feature outside the SAE");
    assert!(list.push(u32::MAX, &[0], &[1.0]).is_err());
    assert!(list.push(0, &[10], &[1.0]).is_err(), "row outside the batch");
    assert!(list.push(0, &[usize::MAX], &[1.0]).is_err());
    assert!(
        list.push(0, &[0, 1], &[1.0]).is_err(),
        "activations for other rows"
    );
    assert_eq!(list, before);
    assert!(AblationList::new(1 << 31, 5).is_err());
    assert!(list.apply_host(&[0.0; 39], 4, &[0.0; 20]).is_err(), "short clean");
    assert!(list.apply_host(&[0.0; 40], 4, &[0.0; 19]).is_err(), "short W_dec");
    assert_eq!(list.apply_host(&[0.0; 40], 4, &[0.0; 20]).unwrap().len(), 40);
}

// ---------------------------------------------------------------------------------------------------
// Reduction
// ---------------------------------------------------------------------------------------------------

/// Inputs of one reduction and the engine's accumulator over the same (feature, cell) observations.
struct Case {
    features: Vec<u32>,
    cells: usize,
    n_targets: usize,
    permutations: usize,
    clean_sum: Vec<f32>,
    ablated_sum: Vec<f32>,
    n_active: Vec<u32>,
    sign_hash: Vec<u64>,
    reference: TraceAccumulator,
}

/// `TraceAccumulator::add_cell` (private to the engine), restated with its public types.
fn add_cell(acc: &mut TraceAccumulator, feature: u32, changes: &HashMap<u32, f64>, signs: &[f64]) {
    for (&g, &x) in changes {
        if x == 0.0 {
            continue;
        }
        let e = acc.edges.entry((feature, 0, g)).or_default();
        e.nonzero.push(x);
        if x > 0.0 {
            e.positive += 1;
        } else {
            e.negative += 1;
        }
        if !signs.is_empty() {
            let flips = acc
                .null
                .entry((feature, 0, g))
                .or_insert_with(|| vec![FlipSums::default(); signs.len()]);
            for (fl, &s) in flips.iter_mut().zip(signs) {
                fl.sum += s * x;
                if s * x > 0.0 {
                    fl.positive += 1;
                } else {
                    fl.negative += 1;
                }
            }
        }
    }
}

/// Random top-k codes of clean and ablated runs at each ablation's active positions. The reference
/// forms each cell's change as `trace_cells` does (an f64 map, −clean then +ablated per position, divided
/// by n); the GPU inputs are the dense f32 sums over the positions.
fn random_case(
    seed: u64,
    copies: usize,
    cells: usize,
    n_targets: usize,
    permutations: usize,
    max_n: usize,
) -> Case {
    let mut rng = Rng(seed);
    let features: Vec<u32> = (0..copies as u32).map(|k| 3 + 7 * k).collect();
    let null = SignFlipNull {
        permutations,
        seed: seed ^ 0x77,
    };
    let cell_tokens: Vec<Vec<u32>> = (0..cells)
        .map(|_| (0..6).map(|_| rng.below(1000) as u32).collect())
        .collect();
    let top_k = 4;
    let kcf = copies * cells * n_targets;
    let mut case = Case {
        features: features.clone(),
        cells,
        n_targets,
        permutations,
        clean_sum: vec![0.0; kcf],
        ablated_sum: vec![0.0; kcf],
        n_active: vec![0; copies * cells],
        sign_hash: vec![0; copies * cells],
        reference: TraceAccumulator::default(),
    };
    // The tracer's order: cells in order, the features of a cell in order.
    for (c, tokens) in cell_tokens.iter().enumerate() {
        for (k, &f) in features.iter().enumerate() {
            let kc = k * cells + c;
            let n = if rng.below(4) == 0 {
                0
            } else {
                1 + rng.below(max_n)
            };
            case.n_active[kc] = n as u32;
            case.sign_hash[kc] = sign_flip_hash(null.seed, f, tokens);
            if n == 0 {
                continue;
            }
            *case.reference.cells_active.entry(f).or_default() += 1;
            case.reference.ablations += 1;
            let mut changes: HashMap<u32, f64> = HashMap::new();
            for _ in 0..n {
                let mut clean: Vec<(u32, f32)> = Vec::new();
                while clean.len() < top_k {
                    let g = rng.below(n_targets) as u32;
                    if clean.iter().all(|&(h, _)| h != g) {
                        clean.push((g, 0.05 + 3.0 * rng.unit()));
                    }
                }
                let mut ablated = clean.clone();
                for slot in ablated.iter_mut() {
                    match rng.below(4) {
                        0 => slot.1 *= 0.5 + rng.unit(),
                        1 => {
                            let g = rng.below(n_targets) as u32;
                            if clean.iter().all(|&(h, _)| h != g) {
                                *slot = (g, 0.05 + 3.0 * rng.unit());
                            }
                        }
                        _ => {} // unchanged
                    }
                }
                for &(g, v) in &clean {
                    *changes.entry(g).or_default() -= v as f64;
                    case.clean_sum[kc * n_targets + g as usize] += v;
                }
                for &(g, v) in &ablated {
                    *changes.entry(g).or_default() += v as f64;
                    case.ablated_sum[kc * n_targets + g as usize] += v;
                }
            }
            changes.values_mut().for_each(|v| *v /= n as f64);
            let signs = null.signs(f, tokens);
            add_cell(&mut case.reference, f, &changes, &signs);
        }
    }
    case
}

/// The inputs of cells `from..to` only (for accumulation over several launches).
fn cells_of(case: &Case, from: usize, to: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>, Vec<u64>) {
    let (f, copies) = (case.n_targets, case.features.len());
    let mut out = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for k in 0..copies {
        let (a, b) = (k * case.cells + from, k * case.cells + to);
        out.0.extend_from_slice(&case.clean_sum[a * f..b * f]);
        out.1.extend_from_slice(&case.ablated_sum[a * f..b * f]);
        out.2.extend_from_slice(&case.n_active[a..b]);
        out.3.extend_from_slice(&case.sign_hash[a..b]);
    }
    out
}

/// Largest differences of (mean, Cohen's d, flipped d) between `got` and the engine's accumulator;
/// panics on any count that differs or an edge present on one side only.
fn compare(got: &TraceStatsHost, case: &Case) -> (f64, f64, f64) {
    let reference = &case.reference;
    let (mut d_mean, mut d_d, mut d_null) = (0.0f64, 0.0f64, 0.0f64);
    let mut edges = 0;
    for (k, &f) in case.features.iter().enumerate() {
        let n = reference.cells_active.get(&f).copied().unwrap_or(0);
        assert_eq!(got.cells_active[k], n, "cells active of feature {f}");
        for g in 0..case.n_targets {
            let e = got.edge(k, g);
            let Some(want) = reference.edges.get(&(f, 0, g as u32)) else {
                assert_eq!(e.count, 0, "edge ({f}, {g}) only on the GPU side");
                continue;
            };
            edges += 1;
            assert_eq!(e.count, want.nonzero.count(), "({f}, {g})");
            assert_eq!(
                (e.positive, e.negative),
                (want.positive, want.negative),
                "({f}, {g})"
            );
            let sums = EdgeSums {
                nonzero: RunningStats::from_parts(e.count, e.mean, e.m2),
                positive: e.positive,
                negative: e.negative,
            };
            let (a, b) = (sums.stats(n), want.stats(n));
            d_mean = d_mean.max((a.mean - b.mean).abs());
            if a.cohens_d.is_finite() || b.cohens_d.is_finite() {
                d_d = d_d.max((a.cohens_d - b.cohens_d).abs());
            }
            if case.permutations > 0 {
                let flips = &reference.null[&(f, 0, g as u32)];
                for (p, want_flip) in flips.iter().enumerate() {
                    let (sum, pos, neg) = got.flip(k, p, g);
                    assert_eq!(
                        (pos, neg),
                        (want_flip.positive, want_flip.negative),
                        "({f}, {g}) flip {p}"
                    );
                    let flip = FlipSums {
                        sum,
                        positive: pos,
                        negative: neg,
                    };
                    let (fa, fb) = (sums.flipped_stats(n, &flip), want.flipped_stats(n, want_flip));
                    if fa.cohens_d.is_finite() || fb.cohens_d.is_finite() {
                        d_null = d_null.max((fa.cohens_d - fb.cohens_d).abs());
                    }
                    d_null = d_null.max((sum - want_flip.sum).abs());
                }
            }
        }
    }
    assert_eq!(edges, reference.edges.len(), "edges missing on the GPU side");
    assert!(edges > 0);
    (d_mean, d_d, d_null)
}

#[test]
fn sign_flip_hashes_reproduce_the_engine_signs() {
    let null = SignFlipNull {
        permutations: 257,
        seed: 0xdead_beef,
    };
    for (f, cell) in [
        (0u32, vec![]),
        (7, vec![5, 6, 7]),
        (4095, vec![1, 2, 3, 4, 5, 6, 7, 8]),
    ] {
        let h = sign_flip_hash(null.seed, f, &cell);
        let mine: Vec<f64> = (0..null.permutations as u64)
            .map(|p| if sign_flip_is_positive(h, p) { 1.0 } else { -1.0 })
            .collect();
        assert_eq!(mine, null.signs(f, &cell));
    }
}

/// The emulation of `trace_reduce` (same operations, same order) against the engine's Welford and
/// sign-flip sums: within 1e-2 on d by a wide margin.
#[test]
fn reduction_emulation_matches_the_engine_accumulator() {
    for (seed, copies, cells, targets, perms) in [(1, 3, 20, 40, 0), (2, 5, 33, 64, 16), (3, 2, 200, 8, 5)] {
        let case = random_case(seed, copies, cells, targets, perms, 4);
        let mut got = TraceStatsHost::new(&case.features, targets, perms);
        got.accumulate(
            &case.clean_sum,
            &case.ablated_sum,
            &case.n_active,
            &case.sign_hash,
            cells,
            None,
        )
        .unwrap();
        let (dm, dd, dn) = compare(&got, &case);
        println!("seed {seed}: max |Δmean| {dm:.1e}, |Δd| {dd:.1e}, |Δnull| {dn:.1e}");
        assert!(dm < 1e-6 && dd < 1e-4 && dn < 1e-4, "{dm} {dd} {dn}");
    }
}

/// With one active position per ablation the observations are the same f64 numbers on both sides,
/// and the emulated (= kernel) Welford is the engine's bit for bit.
#[test]
fn reduction_emulation_is_the_engine_welford_bit_for_bit_on_equal_observations() {
    let case = random_case(9, 4, 60, 32, 3, 1);
    let mut got = TraceStatsHost::new(&case.features, 32, 3);
    got.accumulate(
        &case.clean_sum,
        &case.ablated_sum,
        &case.n_active,
        &case.sign_hash,
        60,
        None,
    )
    .unwrap();
    for (k, &f) in case.features.iter().enumerate() {
        for g in 0..32 {
            if let Some(want) = case.reference.edges.get(&(f, 0, g as u32)) {
                let e = got.edge(k, g);
                assert_eq!((e.count, e.mean, e.m2), want.nonzero.parts(), "({f}, {g})");
                for (p, fl) in case.reference.null[&(f, 0, g as u32)].iter().enumerate() {
                    assert_eq!(got.flip(k, p, g), (fl.sum, fl.positive, fl.negative));
                }
            }
        }
    }
    compare(&got, &case);
}

#[test]
fn reduction_accumulates_over_launches_in_cell_order() {
    let case = random_case(5, 3, 41, 16, 4, 3);
    let mut once = TraceStatsHost::new(&case.features, 16, 4);
    once.accumulate(
        &case.clean_sum,
        &case.ablated_sum,
        &case.n_active,
        &case.sign_hash,
        41,
        None,
    )
    .unwrap();
    let mut chunked = TraceStatsHost::new(&case.features, 16, 4);
    for (from, to) in [(0, 10), (10, 11), (11, 41)] {
        let (c, a, n, h) = cells_of(&case, from, to);
        chunked.accumulate(&c, &a, &n, &h, to - from, None).unwrap();
    }
    assert_eq!(once, chunked);
    // Short inputs are an Err.
    assert!(once
        .accumulate(
            &case.clean_sum[1..],
            &case.ablated_sum,
            &case.n_active,
            &case.sign_hash,
            41,
            None
        )
        .is_err());
    assert!(once
        .accumulate(&case.clean_sum, &case.ablated_sum, &case.n_active, &[], 41, None)
        .is_err());
    let mut no_null = TraceStatsHost::new(&case.features, 16, 0);
    no_null
        .accumulate(&case.clean_sum, &case.ablated_sum, &case.n_active, &[], 41, None)
        .unwrap();
}

// ---------------------------------------------------------------------------------------------------
// GPU
// ---------------------------------------------------------------------------------------------------

#[test]
fn trace_ablate_kernel_matches_the_tracer() {
    let Some((stream, kernels)) = gpu("trace_ablate") else {
        return;
    };
    let mut rng = Rng(0x7ace);
    for (tokens, d, n_features, copies) in [
        (1, 1, 1, 1),
        (37, 48, 20, 9),
        (512, 1152, 300, 64),
        (100, 2049, 7, 3),
    ] {
        let clean = rng.values(tokens * d, 3.0);
        let w_dec = rng.values(n_features * d, 0.3);
        let ablations = random_ablations(&mut rng, tokens, n_features, copies);
        let list = ablation_list(&ablations, tokens, n_features);
        let want = tracer_copies(&clean, d, &w_dec, &ablations);
        let dev = list.upload(&stream).unwrap();
        let dclean = stream.clone_htod(&clean).unwrap();
        let dw = stream.clone_htod(&w_dec).unwrap();
        let mut out = stream.alloc_zeros::<f32>(copies * tokens * d).unwrap();
        kernels
            .trace_ablate(&stream, &dclean, (tokens, d), &dw, &dev, &mut out)
            .unwrap();
        let got = stream.clone_dtoh(&out).unwrap();
        assert_eq!(bits(&got), bits(&want), "tokens={tokens} d={d} copies={copies}");
        println!("trace_ablate tokens={tokens} d={d} copies={copies}: exact");
    }
}

#[test]
fn trace_ablate_rejects_bad_arguments() {
    let Some((stream, kernels)) = gpu("trace_ablate bad arguments") else {
        return;
    };
    let (tokens, d, n_features) = (8, 4, 3);
    let mut list = AblationList::new(tokens, n_features).unwrap();
    list.push(2, &[7], &[1.0]).unwrap();
    list.push(0, &[], &[]).unwrap();
    let dev = list.upload(&stream).unwrap();
    let clean = stream.alloc_zeros::<f32>(tokens * d).unwrap();
    let w = stream.alloc_zeros::<f32>(n_features * d).unwrap();
    let short_w = stream.alloc_zeros::<f32>(n_features * d - 1).unwrap();
    let short_clean = stream.alloc_zeros::<f32>(tokens * d - 1).unwrap();
    let mut out = stream.alloc_zeros::<f32>(2 * tokens * d).unwrap();
    let mut short_out = stream.alloc_zeros::<f32>(2 * tokens * d - 1).unwrap();
    assert!(kernels
        .trace_ablate(&stream, &clean, (tokens, d), &short_w, &dev, &mut out)
        .is_err());
    assert!(kernels
        .trace_ablate(&stream, &short_clean, (tokens, d), &w, &dev, &mut out)
        .is_err());
    assert!(kernels
        .trace_ablate(&stream, &clean, (tokens, d), &w, &dev, &mut short_out)
        .is_err());
    assert!(kernels
        .trace_ablate(&stream, &clean, (tokens - 1, d), &w, &dev, &mut out)
        .is_err());
    assert!(kernels
        .trace_ablate(&stream, &clean, (tokens, d), &w, &dev, &mut out)
        .is_ok());
}

#[test]
fn trace_reduce_kernel_matches_the_emulation_and_the_engine() {
    let Some((stream, kernels)) = gpu("trace_reduce") else {
        return;
    };
    for (seed, copies, cells, targets, perms) in [
        (1, 3, 20, 40, 0),
        (2, 5, 33, 300, 16),
        (3, 2, 200, 8, 5),
        (4, 64, 8, 4608, 2),
    ] {
        let case = random_case(seed, copies, cells, targets, perms, 4);
        let mut want = TraceStatsHost::new(&case.features, targets, perms);
        let mut stats = TraceStats::new(&stream, &case.features, targets, perms).unwrap();
        // Two launches: cells [0, half) then [half, cells).
        let half = cells / 2;
        for (from, to) in [(0, half), (half, cells)] {
            let (c, a, n, mut h) = cells_of(&case, from, to);
            want.accumulate(&c, &a, &n, &h, to - from, None).unwrap();
            h.push(0); // never an empty buffer
            let (dc, da) = (stream.clone_htod(&c).unwrap(), stream.clone_htod(&a).unwrap());
            let (dn, dh) = (stream.clone_htod(&n).unwrap(), stream.clone_htod(&h).unwrap());
            kernels
                .trace_reduce(&stream, &mut stats, &dc, &da, &dn, &dh, to - from, None)
                .unwrap();
        }
        let got = stats.download(&stream).unwrap();
        // Same operations in the same order as the emulation: bit-identical.
        assert_eq!(got, want, "seed {seed}");
        let (dm, dd, dn) = compare(&got, &case);
        println!("trace_reduce seed {seed} ({copies}×{cells}×{targets}, {perms} flips): |Δmean| {dm:.1e}, |Δd| {dd:.1e}, |Δnull| {dn:.1e}");
        assert!(dd < 1e-2 && dn < 1e-2);
    }
}

#[test]
fn trace_reduce_rejects_bad_arguments() {
    let Some((stream, kernels)) = gpu("trace_reduce bad arguments") else {
        return;
    };
    assert!(TraceStats::new(&stream, &[], 4, 0).is_err());
    assert!(TraceStats::new(&stream, &[1], 0, 0).is_err());
    let (copies, cells, f) = (2, 3, 4);
    let mut stats = TraceStats::new(&stream, &[1, 2], f, 2).unwrap();
    let sums = stream.alloc_zeros::<f32>(copies * cells * f).unwrap();
    let short = stream.alloc_zeros::<f32>(copies * cells * f - 1).unwrap();
    let n = stream.alloc_zeros::<u32>(copies * cells).unwrap();
    let short_n = stream.alloc_zeros::<u32>(copies * cells - 1).unwrap();
    let h = stream.alloc_zeros::<u64>(copies * cells).unwrap();
    let short_h = stream.alloc_zeros::<u64>(1).unwrap();
    assert!(kernels
        .trace_reduce(&stream, &mut stats, &short, &sums, &n, &h, cells, None)
        .is_err());
    assert!(kernels
        .trace_reduce(&stream, &mut stats, &sums, &short, &n, &h, cells, None)
        .is_err());
    assert!(kernels
        .trace_reduce(&stream, &mut stats, &sums, &sums, &short_n, &h, cells, None)
        .is_err());
    assert!(kernels
        .trace_reduce(&stream, &mut stats, &sums, &sums, &n, &short_h, cells, None)
        .is_err());
    assert!(kernels
        .trace_reduce(&stream, &mut stats, &sums, &sums, &n, &h, cells + 1, None)
        .is_err());
    kernels
        .trace_reduce(&stream, &mut stats, &sums, &sums, &n, &h, cells, None)
        .unwrap();
    let got = stats.download(&stream).unwrap();
    assert_eq!(
        got,
        TraceStatsHost::new(&[1, 2], f, 2),
        "no active cell: nothing counted"
    );
}
