//! The TopK SAE CUDA kernels (`kernels/src/sae_topk.cu`, `kernels/src/sae_sparse.cu`) against the CPU
//! SAE of `scinterp_engine::sae`.
//!
//! - GPU tests run only where a GPU, its driver and the kernels are present; elsewhere each prints that
//!   it skipped. References: `sae::top_k_rows` (top-k), `TopKSae::decode` (decode), and, for the
//!   backward, renormalisation and dead-latent counters, [`reference_step`] and friends below, which
//!   restate the math of `train::TrainState::step` (private to the engine) operation for operation.
//! - CPU-only tests (they run everywhere): the top-k kernel's algorithm (radix select with early exit,
//!   index-ordered tie gather, bitonic sort over (key, !index)) emulated in Rust and checked against
//!   `top_k_rows` on random, tie-heavy, signed-zero, infinite and NaN inputs, masked and not.

// Index loops mirror the kernels' and the trainer's loops on purpose.
#![allow(clippy::needless_range_loop)]

use scinterp_engine::rng::Rng;
use scinterp_engine::sae::{top_k_rows, SparseCodes, TopKSae};
use scinterp_kernels::gpu::gemm::CublasLt;
use scinterp_kernels::gpu::open_or_skip as gpu;
use scinterp_kernels::gpu::sae::{
    DenseCodes, GpuCodes, GradSet, SaeShape, SlotColumns, SAE_NO_INDEX, SAE_TOPK_MAX_K,
};

// ---------------------------------------------------------------------------------------------------
// Helpers

fn normals(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut rng = Rng::new(seed, 0);
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

fn random_sae(d_in: usize, d_sae: usize, k: usize, seed: u64) -> TopKSae {
    let mut w_dec = normals(d_sae * d_in, seed, 1.0);
    for row in w_dec.chunks_mut(d_in) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= n);
    }
    TopKSae {
        d_in,
        d_sae,
        k,
        w_enc: normals(d_sae * d_in, seed + 1, 0.3),
        b_enc: normals(d_sae, seed + 2, 0.1),
        w_dec,
        b_dec: normals(d_in, seed + 3, 0.1),
    }
}

/// max |got − want| / max |want| (0 when both are 0).
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0.0, f64::max);
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// The CPU's top-k over the latents with `mask[f] != 0` (the trainer's AuxK path: compact, select, map
/// back), padded like the kernel when fewer than k are eligible.
fn masked_top_k_cpu(pre: &[f32], n: usize, k: usize, mask: &[u8]) -> SparseCodes {
    let dead: Vec<u32> = (0..n as u32).filter(|&f| mask[f as usize] != 0).collect();
    let rows = pre.len() / n;
    let kk = k.min(dead.len());
    let mut indices = vec![SAE_NO_INDEX; rows * k];
    let mut values = vec![0.0f32; rows * k];
    if kk > 0 {
        let compact: Vec<f32> = (0..rows)
            .flat_map(|r| dead.iter().map(move |&f| (r, f)))
            .map(|(r, f)| pre[r * n + f as usize])
            .collect();
        let c = top_k_rows(&compact, dead.len(), kk);
        for r in 0..rows {
            for j in 0..kk {
                indices[r * k + j] = dead[c.indices[r * kk + j] as usize];
                values[r * k + j] = c.values[r * kk + j];
            }
        }
    }
    SparseCodes { k, indices, values }
}

// ---------------------------------------------------------------------------------------------------
// Rust emulation of the top-k kernel's algorithm (sae_topk.cu), step for step.

fn key_of(v: f32) -> u32 {
    let mut b = v.to_bits();
    if b & 0x7FFF_FFFF > 0x7F80_0000 {
        return 0;
    }
    if b & 0x7FFF_FFFF == 0 {
        b = 0;
    }
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

fn relu_value_of(key: u32) -> f32 {
    if key == 0 {
        return 0.0;
    }
    let b = if key & 0x8000_0000 != 0 {
        key ^ 0x8000_0000
    } else {
        !key
    };
    let v = f32::from_bits(b);
    if v > 0.0 {
        v
    } else {
        0.0
    }
}

/// One row through the kernel's algorithm with `nt` threads; returns (indices, values).
fn emulate_topk_row(row: &[f32], mask: Option<&[u8]>, k: usize, nt: usize) -> (Vec<u32>, Vec<f32>) {
    let n = row.len();
    let eligible = |i: usize| mask.is_none_or(|m| m[i] != 0);
    let (mut prefix, mut pmask, mut need, mut n_take) = (0u32, 0u32, k as u32, k as u32);
    for shift in [24u32, 16, 8, 0] {
        let mut hist = [0u32; 256];
        for (i, &v) in row.iter().enumerate() {
            if eligible(i) {
                let key = key_of(v);
                if key & pmask == prefix {
                    hist[((key >> shift) & 255) as usize] += 1;
                }
            }
        }
        // The warp scan: lane l owns digits 255 − 8l ..= 248 − 8l.
        let local: Vec<u32> = (0..32)
            .map(|l| (0..8).map(|t| hist[255 - 8 * l - t]).sum())
            .collect();
        let total: u32 = local.iter().sum();
        if total < need {
            need = total;
            n_take = total;
            prefix = 0;
            pmask = 0;
            break;
        }
        let mut found = None;
        let mut excl = 0u32;
        for (l, &loc) in local.iter().enumerate() {
            let incl = excl + loc;
            if excl < need && need <= incl {
                let mut cum = excl;
                for t in 0..8 {
                    let c = hist[255 - 8 * l - t];
                    if cum + c >= need {
                        found = Some(((255 - 8 * l - t) as u32, need - cum, c));
                        break;
                    }
                    cum += c;
                }
            }
            excl = incl;
        }
        let (digit, still, bucket) = found.expect("a crossing lane exists when total ≥ need");
        prefix |= digit << shift;
        pmask |= 255 << shift;
        need = still;
        if bucket == need {
            break;
        }
    }
    // Gather: "above" entries land in arbitrary slots (the kernel's atomics): fill them in reverse
    // arrival order to show the sort does not depend on it.
    let n_gt = n_take - need;
    let mut buf = vec![0u64; (k.next_power_of_two()).max(1)];
    let mut gt: Vec<u64> = Vec::new();
    let mut eq_before = 0u32;
    let mut base = 0;
    while base < n {
        let mut chunk_eq = Vec::new();
        for i in base..(base + nt).min(n) {
            if !eligible(i) {
                continue;
            }
            let key = key_of(row[i]);
            let entry = ((key as u64) << 32) | (!(i as u32)) as u64;
            let m = key & pmask;
            if m > prefix {
                gt.push(entry);
            } else if m == prefix {
                chunk_eq.push(entry);
            }
        }
        for (r, e) in chunk_eq.iter().enumerate() {
            let rank = eq_before + r as u32;
            if rank < need {
                buf[(n_gt + rank) as usize] = *e;
            }
        }
        eq_before += chunk_eq.len() as u32;
        base += nt;
        if eq_before >= need && gt.len() as u32 == n_gt {
            break;
        }
    }
    assert_eq!(gt.len() as u32, n_gt, "count above the threshold");
    for (slot, e) in gt.iter().rev().enumerate() {
        buf[slot] = *e;
    }
    bitonic_descending(&mut buf);
    let idx = buf[..k].iter().map(|e| !(*e as u32)).collect();
    let val = buf[..k]
        .iter()
        .map(|e| relu_value_of((*e >> 32) as u32))
        .collect();
    (idx, val)
}

/// The kernel's bitonic network (descending), sequentially.
fn bitonic_descending(buf: &mut [u64]) {
    let len = buf.len();
    assert!(len.is_power_of_two());
    let mut size = 2;
    while size <= len {
        let mut stride = size / 2;
        while stride > 0 {
            for i in 0..len {
                let j = i ^ stride;
                if j > i {
                    let (a, b) = (buf[i], buf[j]);
                    let descending = i & size == 0;
                    if (descending && a < b) || (!descending && a > b) {
                        buf.swap(i, j);
                    }
                }
            }
            stride /= 2;
        }
        size *= 2;
    }
}

/// Rows that stress the selection: continuous, a coarse grid (ties everywhere), ±0, ±inf, NaNs.
fn stress_rows(n: usize, rows: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed, 7);
    let mut out = Vec::with_capacity(n * rows);
    for r in 0..rows {
        for _ in 0..n {
            let v = match r % 6 {
                0 => rng.normal() as f32,
                1 => rng.below(9) as f32 - 4.0,
                2 => [0.0f32, -0.0, 1.0, -1.0][rng.below(4)],
                3 => match rng.below(10) {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => f32::NEG_INFINITY,
                    _ => rng.normal() as f32 * 1e-3,
                },
                4 => {
                    if rng.below(4) == 0 {
                        rng.normal() as f32
                    } else {
                        f32::NAN
                    }
                }
                _ => (rng.normal() * 1e-30) as f32, // denormals and tiny values
            };
            out.push(v);
        }
    }
    out
}

fn same_codes(got_idx: &[u32], got_val: &[f32], want: &SparseCodes, what: &str) {
    assert_eq!(got_idx, want.indices.as_slice(), "{what}: indices");
    for (j, (g, w)) in got_val.iter().zip(&want.values).enumerate() {
        assert!(
            g == w || (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{what}: value {j}: {g} vs {w}"
        );
    }
}

#[test]
fn emulated_topk_algorithm_matches_the_cpu_top_k() {
    for &(n, k, nt) in &[
        (10usize, 3usize, 32usize),
        (64, 64, 32),
        (300, 7, 256),
        (4608, 32, 256),
        (4608, 128, 256),
        (4608, 576, 256),
        (1000, 1000, 256),
        (20000, 100, 1024),
        (5, 1, 32),
    ] {
        let rows = 12;
        let pre = stress_rows(n, rows, (n * 31 + k) as u64);
        let want = top_k_rows(&pre, n, k);
        for r in 0..rows {
            let (idx, val) = emulate_topk_row(&pre[r * n..(r + 1) * n], None, k, nt);
            let w = SparseCodes {
                k,
                indices: want.row(r).0.to_vec(),
                values: want.row(r).1.to_vec(),
            };
            same_codes(&idx, &val, &w, &format!("n {n} k {k} row {r} (kind {})", r % 6));
        }
        // Masked (AuxK): a third of the latents eligible, and a mask with fewer than k eligible.
        for (m, mask) in [
            (0, (0..n).map(|i| (i % 3 == 1) as u8).collect::<Vec<u8>>()),
            (1, (0..n).map(|i| (i < k / 2) as u8).collect::<Vec<u8>>()),
        ] {
            let want = masked_top_k_cpu(&pre, n, k, &mask);
            for r in 0..rows {
                let (idx, val) = emulate_topk_row(&pre[r * n..(r + 1) * n], Some(&mask), k, nt);
                let w = SparseCodes {
                    k,
                    indices: want.row(r).0.to_vec(),
                    values: want.row(r).1.to_vec(),
                };
                same_codes(&idx, &val, &w, &format!("masked {m}: n {n} k {k} row {r}"));
            }
        }
    }
}

#[test]
fn emulated_key_map_orders_like_the_cpu() {
    let mut vals = stress_rows(256, 6, 3);
    vals.retain(|v| !v.is_nan());
    for a in &vals {
        for b in vals.iter().step_by(7) {
            let cpu = a.partial_cmp(b).unwrap();
            assert_eq!(key_of(*a).cmp(&key_of(*b)), cpu, "{a} vs {b}");
        }
        assert_eq!(relu_value_of(key_of(*a)), a.max(0.0), "{a}");
    }
    assert_eq!(key_of(f32::NAN), 0);
    assert!(key_of(f32::NEG_INFINITY) > 0);
}

// ---------------------------------------------------------------------------------------------------
// The CPU reference of the sparse backward: `TrainState::step` (engine/src/sae/train.rs) restated.

struct StepGrads {
    /// e = x − x̂ (`residual`).
    e: Vec<f32>,
    /// a = e − Σ aux (`aux_residual`).
    aux_r: Vec<f32>,
    /// [rows, k + k_aux] (`grad_pre`).
    grad_pre: Vec<f32>,
    g_w_dec: Vec<f32>,
    g_w_enc: Vec<f32>,
    g_b_enc: Vec<f32>,
    g_b_dec: Vec<f32>,
}

fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The gradients of one step (before the Adam update), as `TrainState::step` computes them: fused
/// per-row pass (residuals, ∂L/∂pre, decoder side of b_dec), per-latent pass in row order (W_dec, W_enc,
/// b_enc, removal of the component along each touched decoder row), encoder side of b_dec.
fn reference_step(
    sae: &TopKSae,
    x: &[f32],
    codes: &SparseCodes,
    aux: &SparseCodes,
    grad_main: f32,
    grad_aux: f32,
) -> StepGrads {
    let (d, f_count) = (sae.d_in, sae.d_sae);
    let b = x.len() / d;
    let (k, ka) = (codes.k, aux.k);
    let slots = k + ka;
    let mut e = vec![0.0f32; b * d];
    let mut aux_r = vec![0.0f32; b * d];
    let mut grad_pre = vec![0.0f32; b * slots];
    let mut g_b_dec = vec![0.0f32; d];
    for row in 0..b {
        let er = &mut e[row * d..(row + 1) * d];
        for i in 0..d {
            er[i] = x[row * d + i] - sae.b_dec[i];
        }
        let (idx, val) = codes.row(row);
        for (&f, &v) in idx.iter().zip(val) {
            if v != 0.0 {
                axpy(er, -v, sae.decoder_row(f as usize));
            }
        }
        for (j, (&f, &v)) in idx.iter().zip(val).enumerate() {
            if v > 0.0 {
                grad_pre[row * slots + j] = grad_main * dot(er, sae.decoder_row(f as usize));
            }
        }
        let ar = &mut aux_r[row * d..(row + 1) * d];
        ar.copy_from_slice(er);
        let (aidx, aval) = aux.row(row);
        for (&f, &v) in aidx.iter().zip(aval) {
            if v != 0.0 && (f as usize) < f_count {
                axpy(ar, -v, sae.decoder_row(f as usize));
            }
        }
        for (j, (&f, &v)) in aidx.iter().zip(aval).enumerate() {
            if v > 0.0 && (f as usize) < f_count {
                grad_pre[row * slots + k + j] = grad_aux * dot(ar, sae.decoder_row(f as usize));
            }
        }
        axpy(&mut g_b_dec, grad_main, er);
    }
    let mut g_w_dec = vec![0.0f32; f_count * d];
    let mut g_w_enc = vec![0.0f32; f_count * d];
    let mut g_b_enc = vec![0.0f32; f_count];
    let mut touched = vec![false; f_count];
    for row in 0..b {
        let xc: Vec<f32> = (0..d).map(|i| x[row * d + i] - sae.b_dec[i]).collect();
        for j in 0..slots {
            let (f, v, target, coef) = if j < k {
                (
                    codes.indices[row * k + j],
                    codes.values[row * k + j],
                    &e,
                    grad_main,
                )
            } else {
                let at = row * ka + j - k;
                (aux.indices[at], aux.values[at], &aux_r, grad_aux)
            };
            if f as usize >= f_count {
                continue;
            }
            let f = f as usize;
            touched[f] = true;
            if v != 0.0 {
                axpy(
                    &mut g_w_dec[f * d..(f + 1) * d],
                    coef * v,
                    &target[row * d..(row + 1) * d],
                );
            }
            let gp = grad_pre[row * slots + j];
            if gp != 0.0 {
                axpy(&mut g_w_enc[f * d..(f + 1) * d], gp, &xc);
                g_b_enc[f] += gp;
            }
        }
    }
    for f in 0..f_count {
        if touched[f] {
            let w = sae.decoder_row(f);
            let gd = &mut g_w_dec[f * d..(f + 1) * d];
            let along = dot(gd, w);
            axpy(gd, -along, w);
        }
    }
    for (f, &gb) in g_b_enc.iter().enumerate() {
        if gb != 0.0 {
            axpy(&mut g_b_dec, -gb, sae.encoder_row(f));
        }
    }
    StepGrads {
        e,
        aux_r,
        grad_pre,
        g_w_dec,
        g_w_enc,
        g_b_enc,
        g_b_dec,
    }
}

/// `normalise` of train.rs over every row.
fn reference_renormalise(w: &mut [f32], d: usize) {
    for row in w.chunks_mut(d) {
        let norm = dot(row, row).sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

/// The dead-latent counter update of `TrainState::step`.
fn reference_counters(t: &mut [u64], codes: &SparseCodes, rows: usize) {
    let mut fired = vec![false; t.len()];
    for (&f, &v) in codes.indices.iter().zip(&codes.values) {
        if v > 0.0 {
            fired[f as usize] = true;
        }
    }
    for (t, &hit) in t.iter_mut().zip(&fired) {
        *t = if hit { 0 } else { *t + rows as u64 };
    }
}

#[test]
fn reference_step_without_aux_is_consistent_with_the_engine_decode() {
    // CPU-only sanity check of the reference itself: e = x − decode(encode(x)).
    let sae = random_sae(24, 96, 5, 40);
    let x = normals(9 * 24, 41, 1.0);
    let codes = sae.encode(&x);
    let none = SparseCodes {
        k: 0,
        indices: vec![],
        values: vec![],
    };
    let g = reference_step(&sae, &x, &codes, &none, -2.0 / 216.0, 0.0);
    let recon = sae.decode(&codes);
    let want: Vec<f32> = x.iter().zip(&recon).map(|(a, b)| a - b).collect();
    assert!(rel_err(&g.e, &want) < 1e-5);
    assert_eq!(g.aux_r, g.e);
    // ∂L/∂b_enc[f] is the sum of ∂L/∂pre over the rows where f is active.
    let mut gbe = vec![0.0f32; 96];
    for r in 0..9 {
        for j in 0..5 {
            gbe[codes.indices[r * 5 + j] as usize] += g.grad_pre[r * 5 + j];
        }
    }
    assert!(rel_err(&g.g_b_enc, &gbe) < 1e-6);
}

// ---------------------------------------------------------------------------------------------------
// GPU tests

#[test]
fn topk_kernel_matches_the_cpu_top_k() {
    let Some((stream, kernels)) = gpu("sae_topk") else {
        return;
    };
    for &(n, k) in &[
        (4608usize, 32usize),
        (4608, 128),
        (300, 7),
        (64, 64),
        (20000, 64),
        (32768, 128),
        (4608, 1024),
    ] {
        let rows = 30;
        let mut pre = stress_rows(n, rows, n as u64 + k as u64);
        // Plus realistic rows: encoder outputs of a random SAE would be continuous; the stress rows
        // already cover kind 0 (normal). Append a row of all-equal values.
        pre.extend(std::iter::repeat_n(0.25f32, n));
        let rows = rows + 1;
        let want = top_k_rows(&pre, n, k);
        let dpre = stream.clone_htod(&pre).unwrap();
        let mut di = stream.alloc_zeros::<u32>(rows * k).unwrap();
        let mut dv = stream.alloc_zeros::<f32>(rows * k).unwrap();
        kernels
            .sae_topk(&stream, &dpre, None, &mut di, &mut dv, (rows, n), k)
            .unwrap();
        let (gi, gv) = (stream.clone_dtoh(&di).unwrap(), stream.clone_dtoh(&dv).unwrap());
        for r in 0..rows {
            let w = SparseCodes {
                k,
                indices: want.row(r).0.to_vec(),
                values: want.row(r).1.to_vec(),
            };
            same_codes(
                &gi[r * k..(r + 1) * k],
                &gv[r * k..(r + 1) * k],
                &w,
                &format!("n {n} k {k} row {r}"),
            );
        }
        // AuxK: a mask of a third of the latents, and one with fewer eligible latents than k.
        for mask in [
            (0..n).map(|i| (i % 3 == 1) as u8).collect::<Vec<u8>>(),
            (0..n).map(|i| (i < k / 2) as u8).collect::<Vec<u8>>(),
        ] {
            let want = masked_top_k_cpu(&pre, n, k, &mask);
            let dmask = stream.clone_htod(&mask).unwrap();
            kernels
                .sae_topk(&stream, &dpre, Some(&dmask), &mut di, &mut dv, (rows, n), k)
                .unwrap();
            let (gi, gv) = (stream.clone_dtoh(&di).unwrap(), stream.clone_dtoh(&dv).unwrap());
            same_codes(&gi, &gv, &want, &format!("masked n {n} k {k}"));
        }
    }
    println!("sae_topk: index sets and order identical to top_k_rows");
}

#[test]
fn topk_kernel_on_encoder_outputs() {
    let Some((stream, kernels)) = gpu("sae_topk encoder") else {
        return;
    };
    let sae = random_sae(128, 4608, 32, 50);
    let x = normals(64 * 128, 51, 1.0);
    let pre = sae.pre_activations(&x);
    let want = sae.encode(&x);
    let dpre = stream.clone_htod(&pre).unwrap();
    let mut di = stream.alloc_zeros::<u32>(64 * 32).unwrap();
    let mut dv = stream.alloc_zeros::<f32>(64 * 32).unwrap();
    kernels
        .sae_topk(&stream, &dpre, None, &mut di, &mut dv, (64, 4608), 32)
        .unwrap();
    same_codes(
        &stream.clone_dtoh(&di).unwrap(),
        &stream.clone_dtoh(&dv).unwrap(),
        &want,
        "encoder outputs",
    );
}

#[test]
fn decode_kernels_match_the_cpu_decode() {
    let Some((stream, kernels)) = gpu("sae_decode") else {
        return;
    };
    for &(d, f, k, rows) in &[
        (1152usize, 4608usize, 32usize, 50usize),
        (100, 300, 7, 9),
        (1151, 512, 64, 5),
    ] {
        let sae = random_sae(d, f, k, d as u64);
        let x = normals(rows * d, 3, 1.0);
        let mut codes = sae.encode(&x);
        // An empty slot (as the masked top-k writes) and a zero value are skipped.
        codes.indices[k - 1] = SAE_NO_INDEX;
        codes.values[k - 1] = 0.0;
        let mut cpu_codes = codes.clone();
        cpu_codes.indices[k - 1] = 0;
        let want = sae.decode(&cpu_codes);
        let shape = SaeShape {
            rows,
            d_in: d,
            d_sae: f,
        };
        let di = stream.clone_htod(&codes.indices).unwrap();
        let dv = stream.clone_htod(&codes.values).unwrap();
        let gc = GpuCodes {
            indices: &di,
            values: &dv,
            k,
        };
        let dw = stream.clone_htod(&sae.w_dec).unwrap();
        let db = stream.clone_htod(&sae.b_dec).unwrap();
        let mut out = stream.alloc_zeros::<f32>(rows * d).unwrap();
        kernels
            .sae_decode(&stream, gc, &dw, &db, &mut out, shape)
            .unwrap();
        let err = rel_err(&stream.clone_dtoh(&out).unwrap(), &want);
        println!("sae_decode_f32 d {d} F {f} k {k}: rel err {err:.2e}");
        assert!(err < 1e-5, "f32 decode: {err}");
        // bf16 W_dec: the reference decodes with the same rounded weights.
        let w16: Vec<half::bf16> = sae.w_dec.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let mut sae16 = sae.clone();
        sae16.w_dec = w16.iter().map(|b| b.to_f32()).collect();
        let want16 = sae16.decode(&cpu_codes);
        let dw16 = stream.clone_htod(&w16).unwrap();
        kernels
            .sae_decode_bf16(&stream, gc, &dw16, &db, &mut out, shape)
            .unwrap();
        let err = rel_err(&stream.clone_dtoh(&out).unwrap(), &want16);
        println!("sae_decode_bf16 d {d} F {f} k {k}: rel err {err:.2e}");
        assert!(err < 1e-5, "bf16 decode: {err}");
    }
}

#[test]
fn backward_kernels_match_the_cpu_trainer() {
    let Some((stream, kernels)) = gpu("sae backward") else {
        return;
    };
    let lt = match CublasLt::new(&stream) {
        Ok(lt) => lt,
        Err(e) => return scinterp_kernels::print_skip("sae backward", &e),
    };
    // The weight gradients as exact-f32 cuBLASLt GEMMs over the dense code matrices; d even and odd.
    for &(d, f, k, ka, rows) in &[
        (128usize, 512usize, 16usize, 24usize, 64usize),
        (61, 200, 5, 9, 33),
    ] {
        let sae = random_sae(d, f, k, 7 + d as u64);
        let x = normals(rows * d, 8, 1.0);
        let pre = sae.pre_activations(&x);
        let codes = top_k_rows(&pre, f, k);
        let mask: Vec<u8> = (0..f).map(|i| (i % 4 == 0) as u8).collect();
        let aux = masked_top_k_cpu(&pre, f, ka, &mask);
        let grad_main = -2.0 / (rows * d) as f32;
        let grad_aux = -2.0 * (1.0 / 32.0) / (rows * d) as f32;
        let want = reference_step(&sae, &x, &codes, &aux, grad_main, grad_aux);
        let shape = SaeShape {
            rows,
            d_in: d,
            d_sae: f,
        };
        let up = |v: &[f32]| stream.clone_htod(v).unwrap();
        let (dx, dbd, dwd, dwe) = (up(&x), up(&sae.b_dec), up(&sae.w_dec), up(&sae.w_enc));
        let (di, dv) = (stream.clone_htod(&codes.indices).unwrap(), up(&codes.values));
        let (dai, dav) = (stream.clone_htod(&aux.indices).unwrap(), up(&aux.values));
        let main = GpuCodes {
            indices: &di,
            values: &dv,
            k,
        };
        let auxc = GpuCodes {
            indices: &dai,
            values: &dav,
            k: ka,
        };
        let mut de = stream.alloc_zeros::<f32>(rows * d).unwrap();
        let mut da = stream.alloc_zeros::<f32>(rows * d).unwrap();
        let mut gp = stream.alloc_zeros::<f32>(rows * (k + ka)).unwrap();
        let mut gwd = stream.alloc_zeros::<f32>(f * d).unwrap();
        let mut gwe = stream.alloc_zeros::<f32>(f * d).unwrap();
        let mut gbe = stream.alloc_zeros::<f32>(f).unwrap();
        let mut gbd = stream.alloc_zeros::<f32>(d).unwrap();
        let stride = k + ka;
        kernels
            .sae_residual(&stream, &dx, &dbd, main, &dwd, &mut de, shape)
            .unwrap();
        kernels
            .sae_aux_residual(&stream, &de, auxc, &dwd, &mut da, shape)
            .unwrap();
        let cols_main = SlotColumns { stride, offset: 0 };
        let cols_aux = SlotColumns { stride, offset: k };
        kernels
            .sae_grad_pre(&stream, &de, main, &dwd, grad_main, &mut gp, cols_main, shape)
            .unwrap();
        kernels
            .sae_grad_pre(&stream, &da, auxc, &dwd, grad_aux, &mut gp, cols_aux, shape)
            .unwrap();
        let xc: Vec<f32> = x
            .chunks(d)
            .flat_map(|r| r.iter().zip(&sae.b_dec).map(|(a, b)| a - b))
            .collect();
        let dxc = up(&xc);
        let mut dense = stream.alloc_zeros::<f32>(rows * f).unwrap();
        kernels
            .sae_weight_grads(
                &stream,
                &lt,
                GradSet {
                    codes: main,
                    cols: cols_main,
                    coef: grad_main,
                    target: &de,
                },
                Some(GradSet {
                    codes: auxc,
                    cols: cols_aux,
                    coef: grad_aux,
                    target: &da,
                }),
                (&gp, &dxc),
                &mut dense,
                (&mut gwd, &mut gwe, &mut gbe),
                shape,
            )
            .unwrap();
        kernels
            .sae_remove_parallel_grad(&stream, &mut gwd, &dwd, (f, d))
            .unwrap();
        kernels
            .sae_grad_b_dec(&stream, &de, grad_main, &gbe, &dwe, &mut gbd, shape)
            .unwrap();
        let down = |s: &scinterp_kernels::cudarc::driver::CudaSlice<f32>| stream.clone_dtoh(s).unwrap();
        for (name, got, want, tol) in [
            ("e", down(&de), &want.e, 1e-5),
            ("aux residual", down(&da), &want.aux_r, 1e-5),
            ("grad_pre", down(&gp), &want.grad_pre, 1e-4),
            ("g_w_dec", down(&gwd), &want.g_w_dec, 1e-4),
            ("g_w_enc", down(&gwe), &want.g_w_enc, 1e-4),
            ("g_b_enc", down(&gbe), &want.g_b_enc, 1e-4),
            ("g_b_dec", down(&gbd), &want.g_b_dec, 1e-4),
        ] {
            let err = rel_err(&got, want);
            println!("backward d {d} F {f} k {k}+{ka}: {name} rel err {err:.2e}");
            assert!(err < tol, "{name}: rel err {err}");
        }
    }
}

#[test]
fn renormalise_and_counters_match_the_cpu_trainer() {
    let Some((stream, kernels)) = gpu("sae renorm/counters") else {
        return;
    };
    let (f, d) = (300usize, 1152usize);
    let mut w = normals(f * d, 60, 0.7);
    w[5 * d..6 * d].fill(0.0); // a zero row stays zero
    let mut dw = stream.clone_htod(&w).unwrap();
    kernels.sae_renormalise_rows(&stream, &mut dw, (f, d)).unwrap();
    reference_renormalise(&mut w, d);
    let got = stream.clone_dtoh(&dw).unwrap();
    let err = got
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err < 1e-6, "renorm: {err}");
    assert!(got[5 * d..6 * d].iter().all(|&v| v == 0.0));

    // Counters: some latents fire (value > 0), some appear with value 0 (do not count as fired).
    let rows = 40;
    let k = 8;
    let mut rng = Rng::new(61, 0);
    let indices: Vec<u32> = (0..rows * k).map(|_| rng.below(f) as u32).collect();
    let values: Vec<f32> = (0..rows * k)
        .map(|i| {
            if i % 5 == 0 {
                0.0
            } else {
                rng.uniform() as f32 + 0.01
            }
        })
        .collect();
    let codes = SparseCodes {
        k,
        indices: indices.clone(),
        values: values.clone(),
    };
    let mut t: Vec<u64> = (0..f as u64).map(|i| i * 1000).collect();
    let mut dt = stream.clone_htod(&t).unwrap();
    let (di, dv) = (
        stream.clone_htod(&indices).unwrap(),
        stream.clone_htod(&values).unwrap(),
    );
    let gc = GpuCodes {
        indices: &di,
        values: &dv,
        k,
    };
    kernels
        .sae_update_fire_counters(&stream, gc, rows, &mut dt, f)
        .unwrap();
    reference_counters(&mut t, &codes, rows);
    assert_eq!(stream.clone_dtoh(&dt).unwrap(), t);
    let threshold = 150_000u64;
    let mut dmask = stream.alloc_zeros::<u8>(f).unwrap();
    let mut dn = stream.alloc_zeros::<u32>(1).unwrap();
    kernels
        .sae_dead_mask(&stream, &dt, threshold, &mut dmask, &mut dn, f)
        .unwrap();
    let want: Vec<u8> = t.iter().map(|&v| (v >= threshold) as u8).collect();
    assert_eq!(stream.clone_dtoh(&dmask).unwrap(), want);
    assert_eq!(
        stream.clone_dtoh(&dn).unwrap()[0] as usize,
        want.iter().filter(|&&m| m == 1).count()
    );
}

#[test]
fn sae_kernels_reject_bad_arguments() {
    let Some((stream, kernels)) = gpu("sae bad args") else {
        return;
    };
    let pre = stream.alloc_zeros::<f32>(10 * 100).unwrap();
    let mut idx = stream.alloc_zeros::<u32>(10 * 8).unwrap();
    let mut val = stream.alloc_zeros::<f32>(10 * 8).unwrap();
    // k above d_sae, above the maximum, short outputs, short input, short mask.
    assert!(kernels
        .sae_topk(&stream, &pre, None, &mut idx, &mut val, (10, 100), 101)
        .is_err());
    let big = stream.alloc_zeros::<f32>(SAE_TOPK_MAX_K + 1).unwrap();
    let mut bi = stream.alloc_zeros::<u32>(SAE_TOPK_MAX_K + 1).unwrap();
    let mut bv = stream.alloc_zeros::<f32>(SAE_TOPK_MAX_K + 1).unwrap();
    assert!(kernels
        .sae_topk(
            &stream,
            &big,
            None,
            &mut bi,
            &mut bv,
            (1, SAE_TOPK_MAX_K + 1),
            SAE_TOPK_MAX_K + 1
        )
        .is_err());
    assert!(kernels
        .sae_topk(&stream, &pre, None, &mut idx, &mut val, (10, 100), 9)
        .is_err());
    assert!(kernels
        .sae_topk(&stream, &pre, None, &mut idx, &mut val, (11, 100), 8)
        .is_err());
    let short_mask = stream.alloc_zeros::<u8>(99).unwrap();
    assert!(kernels
        .sae_topk(&stream, &pre, Some(&short_mask), &mut idx, &mut val, (10, 100), 8)
        .is_err());
    // Decode / backward with short buffers.
    let shape = SaeShape {
        rows: 10,
        d_in: 16,
        d_sae: 100,
    };
    let codes = GpuCodes {
        indices: &idx,
        values: &val,
        k: 8,
    };
    let w = stream.alloc_zeros::<f32>(100 * 16).unwrap();
    let w_short = stream.alloc_zeros::<f32>(99 * 16).unwrap();
    let b = stream.alloc_zeros::<f32>(16).unwrap();
    let mut out = stream.alloc_zeros::<f32>(10 * 16).unwrap();
    assert!(kernels
        .sae_decode(&stream, codes, &w, &b, &mut out, shape)
        .is_ok());
    assert!(kernels
        .sae_decode(&stream, codes, &w_short, &b, &mut out, shape)
        .is_err());
    let w16 = stream.alloc_zeros::<half::bf16>(99 * 16).unwrap();
    assert!(kernels
        .sae_decode_bf16(&stream, codes, &w16, &b, &mut out, shape)
        .is_err());
    let long_codes = GpuCodes { k: 9, ..codes };
    assert!(kernels
        .sae_decode(&stream, long_codes, &w, &b, &mut out, shape)
        .is_err());
    let x = stream.alloc_zeros::<f32>(10 * 16).unwrap();
    let mut gp = stream.alloc_zeros::<f32>(10 * 8).unwrap();
    // Slot columns beyond the stride.
    assert!(kernels
        .sae_grad_pre(
            &stream,
            &x,
            codes,
            &w,
            1.0,
            &mut gp,
            SlotColumns { stride: 8, offset: 1 },
            shape
        )
        .is_err());
    // The dense scatter: an output shorter than rows × d_sae, and slot columns beyond grad_pre's stride.
    let dense_codes = |weights, cols| DenseCodes {
        indices: &idx,
        k: 8,
        weights,
        cols,
        coef: 1.0,
    };
    let mut dense_short = stream.alloc_zeros::<f32>(10 * 100 - 1).unwrap();
    assert!(kernels
        .sae_dense_scatter(
            &stream,
            dense_codes(&val, SlotColumns { stride: 8, offset: 0 }),
            None,
            &mut dense_short,
            (10, 100)
        )
        .is_err());
    let mut dense = stream.alloc_zeros::<f32>(10 * 100).unwrap();
    assert!(kernels
        .sae_dense_scatter(
            &stream,
            dense_codes(&val, SlotColumns { stride: 8, offset: 0 }),
            Some(dense_codes(&gp, SlotColumns { stride: 8, offset: 1 })),
            &mut dense,
            (10, 100)
        )
        .is_err());
    let mut gb = stream.alloc_zeros::<f32>(100).unwrap();
    assert!(kernels.sae_col_sum(&stream, &dense, (11, 100), &mut gb).is_err());
    let mut gw = stream.alloc_zeros::<f32>(100 * 16).unwrap();
    let mut short = stream.alloc_zeros::<f32>(15).unwrap();
    assert!(kernels
        .sae_grad_b_dec(&stream, &x, 1.0, &gb, &w, &mut short, shape)
        .is_err());
    assert!(kernels
        .sae_remove_parallel_grad(&stream, &mut gw, &w_short, (100, 16))
        .is_err());
    let mut w_short = w_short;
    assert!(kernels
        .sae_renormalise_rows(&stream, &mut w_short, (100, 16))
        .is_err());
    let mut t_short = stream.alloc_zeros::<u64>(99).unwrap();
    assert!(kernels
        .sae_update_fire_counters(&stream, codes, 10, &mut t_short, 100)
        .is_err());
}
