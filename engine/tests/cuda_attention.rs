//! The varlen attention kernels (`kernels/src/attention_varlen.cu`) against the CPU reference
//! `scinterp_engine::cpu::attention_varlen` and a naive masked reference written here.
//!
//! Two kinds of test:
//! - CPU-only (run everywhere): [`emulate`] replays the kernels' exact tiled online-softmax algorithm in
//!   Rust (query tiles of 64 or 32 rows, key tiles of 64, the same max / base / alpha / rescale order,
//!   the same -inf handling for left-out keys, bf16 rounding of inputs, of P and of the output for the
//!   bf16 kernel, the f32 kernel's 4-lane dot-product order) and is checked against both references.
//! - GPU (skip with a printed reason when no GPU): each kernel against the references and the emulation,
//!   masks, NaN-free all-masked rows, and bad arguments.

use std::sync::Arc;

use half::bf16;
use scinterp_engine::cpu::attention_varlen;
use scinterp_engine::Matrix;
use scinterp_kernels::cudarc::driver::CudaStream;
use scinterp_kernels::gpu::open_or_skip as gpu;
use scinterp_kernels::gpu::Kernels;

const HEAD_DIM: usize = 64;
/// Keys per tile of both kernels (`BF_BC`, `F_BC` in the source).
const KEY_TILE: usize = 64;
/// Query rows per block (`BF_BR`, `F_BR`).
const BF16_QUERY_TILE: usize = 64;
const F32_QUERY_TILE: usize = 32;

// ---------------------------------------------------------------------------------------------------
// Inputs and references
// ---------------------------------------------------------------------------------------------------

/// Deterministic values in [-scale, scale) (xorshift), so failures reproduce.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn offsets_of(lens: &[usize]) -> Vec<usize> {
    let mut offsets = vec![0];
    for l in lens {
        offsets.push(offsets.last().unwrap() + l);
    }
    offsets
}

/// A packed batch: `qkv` `[tokens, 3·H]` with values in ±`spread` (wider spread = peakier softmax).
fn batch(lens: &[usize], heads: usize, seed: u64, spread: f32) -> (Vec<usize>, Vec<f32>) {
    let offsets = offsets_of(lens);
    let tokens = *offsets.last().unwrap();
    (offsets, values(tokens * 3 * heads * HEAD_DIM, seed, spread))
}

fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

fn cpu_reference(qkv: &[f32], offsets: &[usize], heads: usize, scale: f32) -> Vec<f32> {
    let tokens = *offsets.last().unwrap();
    let m = Matrix::from_vec(tokens, 3 * heads * HEAD_DIM, qkv.to_vec());
    attention_varlen(&m, offsets, heads, HEAD_DIM, scale).into_vec()
}

/// Naive masked attention in f64: key j of a cell is used when `mask[j] != 0`; a query with no key
/// gets zeros.
fn naive_masked(qkv: &[f32], offsets: &[usize], heads: usize, mask: Option<&[u8]>, scale: f32) -> Vec<f32> {
    let h = heads * HEAD_DIM;
    let tokens = *offsets.last().unwrap();
    let mut out = vec![0.0f32; tokens * h];
    let at = |row: usize, col: usize| qkv[row * 3 * h + col] as f64;
    for cell in offsets.windows(2) {
        let keys: Vec<usize> = (cell[0]..cell[1])
            .filter(|&j| mask.is_none_or(|m| m[j] != 0))
            .collect();
        if keys.is_empty() {
            continue;
        }
        for head in 0..heads {
            let (qc, kc, vc) = (head * HEAD_DIM, h + head * HEAD_DIM, 2 * h + head * HEAD_DIM);
            for i in cell[0]..cell[1] {
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        (0..HEAD_DIM).map(|d| at(i, qc + d) * at(j, kc + d)).sum::<f64>() * scale as f64
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..HEAD_DIM {
                    let v: f64 = keys.iter().zip(&e).map(|(&j, w)| w * at(j, vc + d)).sum();
                    out[i * h + head * HEAD_DIM + d] = (v / z) as f32;
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Emulation of the kernels' algorithm
// ---------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// `attention_varlen_bf16`: bf16 inputs, exp2 with scale·log2(e) folded in, P rounded to bf16 and
    /// l summing the rounded weights, bf16 output.
    Bf16,
    /// `attention_varlen_f32`: f32 throughout, expf, the 4-lane strided dot product.
    F32,
}

impl Kind {
    fn query_tile(self) -> usize {
        match self {
            Kind::Bf16 => BF16_QUERY_TILE,
            Kind::F32 => F32_QUERY_TILE,
        }
    }
}

/// The kernels' tiled online softmax, one (cell, query tile, head) block at a time, in the kernels'
/// order of operations. bf16 inputs are rounded first for [`Kind::Bf16`]. Sums inside the tensor-core
/// MMAs have no documented order; they are plain f32 sums here (products of bf16 values are exact in
/// f32, so only the addition order differs).
fn emulate(
    qkv: &[f32],
    offsets: &[usize],
    heads: usize,
    mask: Option<&[u8]>,
    scale: f32,
    kind: Kind,
) -> Vec<f32> {
    let h = heads * HEAD_DIM;
    let stride = 3 * h;
    let tokens = *offsets.last().unwrap();
    let qkv: Vec<f32> = match kind {
        Kind::Bf16 => round_bf16(qkv),
        Kind::F32 => qkv.to_vec(),
    };
    let mut ctx = vec![0.0f32; tokens * h];
    let kept = |j: usize, end: usize| j < end && mask.is_none_or(|m| m[j] != 0);
    let scale_log2 = scale * std::f32::consts::LOG2_E;
    for cell in offsets.windows(2) {
        let (start, end) = (cell[0], cell[1]);
        let mut q0 = start;
        while q0 < end {
            let n_q = kind.query_tile().min(end - q0);
            for head in 0..heads {
                let (qc, kc, vc) = (head * HEAD_DIM, h + head * HEAD_DIM, 2 * h + head * HEAD_DIM);
                // Every row of the tile, as the block's threads do in parallel.
                for row in q0..q0 + n_q {
                    let q = &qkv[row * stride + qc..row * stride + qc + HEAD_DIM];
                    let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
                    let mut o = [0.0f32; HEAD_DIM];
                    let mut kv0 = start;
                    while kv0 < end {
                        // Left-out keys are zeros in shared memory (K and V).
                        let key_row = |j: usize, col: usize| -> [f32; HEAD_DIM] {
                            let mut r = [0.0f32; HEAD_DIM];
                            if kept(kv0 + j, end) {
                                let at = (kv0 + j) * stride + col;
                                r.copy_from_slice(&qkv[at..at + HEAD_DIM]);
                            }
                            r
                        };
                        let mut s = [0.0f32; KEY_TILE];
                        let mut mx = f32::NEG_INFINITY;
                        for (j, sj) in s.iter_mut().enumerate() {
                            let k = key_row(j, kc);
                            let dot = match kind {
                                Kind::Bf16 => q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>(),
                                Kind::F32 => {
                                    // Lane `part` sums dims part, part+4, … with fmaf; then the butterfly.
                                    let mut p = [0.0f32; 4];
                                    for (part, acc) in p.iter_mut().enumerate() {
                                        for i in 0..HEAD_DIM / 4 {
                                            *acc = q[part + 4 * i].mul_add(k[part + 4 * i], *acc);
                                        }
                                    }
                                    (p[0] + p[1]) + (p[2] + p[3])
                                }
                            };
                            *sj = if kept(kv0 + j, end) {
                                dot * match kind {
                                    Kind::Bf16 => scale_log2,
                                    Kind::F32 => scale,
                                }
                            } else {
                                f32::NEG_INFINITY
                            };
                            mx = mx.max(*sj);
                        }
                        let mn = m.max(mx);
                        let base = if mn == f32::NEG_INFINITY { 0.0 } else { mn };
                        let exp = |x: f32| match kind {
                            Kind::Bf16 => x.exp2(),
                            Kind::F32 => x.exp(),
                        };
                        let alpha = exp(m - base);
                        m = mn;
                        let mut sum = 0.0f32;
                        for sj in s.iter_mut() {
                            let mut p = exp(*sj - base);
                            if kind == Kind::Bf16 {
                                p = bf16::from_f32(p).to_f32();
                            }
                            *sj = p;
                            sum += p;
                        }
                        l = l * alpha + sum;
                        for x in o.iter_mut() {
                            *x *= alpha;
                        }
                        for (j, p) in s.iter().enumerate() {
                            let v = key_row(j, vc);
                            for (x, vd) in o.iter_mut().zip(&v) {
                                *x = p.mul_add(*vd, *x);
                            }
                        }
                        kv0 += KEY_TILE;
                    }
                    let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
                    let out = &mut ctx[row * h + qc..row * h + qc + HEAD_DIM];
                    for (y, x) in out.iter_mut().zip(&o) {
                        *y = match kind {
                            Kind::Bf16 => bf16::from_f32(x * inv).to_f32(),
                            Kind::F32 => x * inv,
                        };
                    }
                }
            }
            q0 += kind.query_tile();
        }
    }
    ctx
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) })
}

/// Pad-like key mask: every 5th token left out, plus all of the cells listed in `dead`; in the cells
/// listed in `late`, only keys from the second key tile on are kept (the first tiles of those rows see
/// no key: the running max stays -inf, then alpha must be 0); in `early`, only the first 10 keys.
fn key_mask(offsets: &[usize], dead: &[usize], late: &[usize], early: &[usize]) -> Vec<u8> {
    let tokens = *offsets.last().unwrap();
    let mut mask: Vec<u8> = (0..tokens).map(|i| u8::from(i % 5 != 3)).collect();
    for (c, cell) in offsets.windows(2).enumerate() {
        for (local, m) in mask[cell[0]..cell[1]].iter_mut().enumerate() {
            if dead.contains(&c)
                || (late.contains(&c) && local < KEY_TILE + 3)
                || (early.contains(&c) && local >= 10)
            {
                *m = 0;
            }
        }
    }
    mask
}

// ---------------------------------------------------------------------------------------------------
// CPU-only: the algorithm
// ---------------------------------------------------------------------------------------------------

const SCALE: f32 = 0.125; // 1/sqrt(64)

/// f32 tolerance for inputs in ±`spread`: scores grow as spread², and so do their rounding errors after
/// the exponential (measured on the CPU: 2e-7, 1e-6 and 2e-5 at spreads 1, 2 and 4).
fn f32_tol(spread: f32) -> f32 {
    2e-5 * spread * spread
}

#[test]
fn naive_reference_agrees_with_the_cpu_reference() {
    let heads = 2;
    let (offsets, qkv) = batch(&[1, 7, 65, 130], heads, 11, 2.0);
    let want = cpu_reference(&qkv, &offsets, heads, SCALE);
    let got = naive_masked(&qkv, &offsets, heads, None, SCALE);
    let err = max_abs_diff(&got, &want);
    assert!(err < 1e-5, "naive vs cpu: {err}");
}

#[test]
fn emulated_f32_kernel_matches_the_cpu_reference_on_ragged_cells() {
    let heads = 3;
    // Around the tile sizes (1, 31/32/33, 63/64/65, 128, …) and a long cell.
    for (spread, seed) in [(1.0f32, 1u64), (2.0, 2), (4.0, 3)] {
        let lens = [1, 7, 31, 32, 33, 63, 64, 65, 128, 300, 1000];
        let (offsets, qkv) = batch(&lens, heads, seed, spread);
        let want = cpu_reference(&qkv, &offsets, heads, SCALE);
        let got = emulate(&qkv, &offsets, heads, None, SCALE, Kind::F32);
        let err = max_abs_diff(&got, &want);
        println!("emulated f32, spread {spread}: max |emu − cpu| = {err:.2e}");
        assert!(err < f32_tol(spread), "spread {spread}: {err}");
    }
}

#[test]
fn emulated_bf16_kernel_matches_the_cpu_reference_within_bf16_tolerance() {
    let heads = 2;
    for (spread, seed) in [(1.0f32, 4u64), (2.0, 5), (4.0, 6)] {
        let lens = [1, 7, 64, 65, 300, 1000];
        let (offsets, qkv) = batch(&lens, heads, seed, spread);
        // Against the reference on the same bf16-rounded inputs: what is left is P's and the output's
        // rounding (2⁻⁹ relative each) and the accumulation order.
        let want = cpu_reference(&round_bf16(&qkv), &offsets, heads, SCALE);
        let got = emulate(&qkv, &offsets, heads, None, SCALE, Kind::Bf16);
        let err = max_abs_diff(&got, &want);
        // |v| ≤ spread, so outputs are within ±spread: 2e-2 relative to it.
        println!("emulated bf16, spread {spread}: max |emu − cpu(bf16 inputs)| = {err:.2e}");
        assert!(err < 2e-2 * spread, "spread {spread}: {err}");
        // And against the f32 inputs, the input rounding included (looser).
        let full = cpu_reference(&qkv, &offsets, heads, SCALE);
        let err_full = max_abs_diff(&got, &full);
        println!("emulated bf16, spread {spread}: max |emu − cpu(f32 inputs)| = {err_full:.2e}");
        assert!(err_full < 5e-2 * spread, "spread {spread}: {err_full}");
    }
}

#[test]
fn emulated_kernels_handle_key_masks_and_rows_with_no_key() {
    let heads = 2;
    let lens = [1, 7, 64, 65, 300, 200, 150, 5];
    let (offsets, mut qkv) = batch(&lens, heads, 7, 2.0);
    // Cell 1 and cell 7 fully masked, cell 4 only late keys, cell 5 only early keys.
    let mask = key_mask(&offsets, &[1, 7], &[4], &[5]);
    // NaN in the K and V of left-out keys must not leak into any output.
    let h = heads * HEAD_DIM;
    for (j, &keep) in mask.iter().enumerate() {
        if keep == 0 {
            qkv[j * 3 * h + h..(j + 1) * 3 * h].fill(f32::NAN);
        }
    }
    let want = naive_masked(&qkv, &offsets, heads, Some(&mask), SCALE);
    assert!(want.iter().all(|x| x.is_finite()));
    for kind in [Kind::F32, Kind::Bf16] {
        let got = emulate(&qkv, &offsets, heads, Some(&mask), SCALE, kind);
        assert!(got.iter().all(|x| x.is_finite()), "{kind:?}: NaN or inf");
        for dead in [1, 7] {
            assert!(got[offsets[dead] * h..offsets[dead + 1] * h]
                .iter()
                .all(|&x| x == 0.0));
        }
        let err = max_abs_diff(&got, &want);
        let tol = if kind == Kind::F32 { f32_tol(2.0) } else { 5e-2 };
        println!("emulated {kind:?} with key mask: max |emu − naive| = {err:.2e}");
        assert!(err < tol, "{kind:?}: {err}");
    }
}

#[test]
fn emulated_online_softmax_rescales_when_the_max_grows_across_key_tiles() {
    // Key rows scaled up along the cell: every key tile raises the row max, so alpha < 1 at every step;
    // then the reverse (the first tile holds the max, later tiles have alpha = 1).
    let heads = 1;
    let len = 5 * KEY_TILE + 17;
    for reverse in [false, true] {
        let (offsets, mut qkv) = batch(&[len], heads, 9, 1.0);
        let h = heads * HEAD_DIM;
        for j in 0..len {
            let f = 1.0 + 6.0 * (if reverse { len - 1 - j } else { j }) as f32 / len as f32;
            for q in &mut qkv[j * 3 * h..j * 3 * h + HEAD_DIM] {
                *q = q.abs();
            }
            for k in &mut qkv[j * 3 * h + h..j * 3 * h + h + HEAD_DIM] {
                *k = k.abs() * f;
            }
        }
        let want = naive_masked(&qkv, &offsets, heads, None, SCALE);
        for kind in [Kind::F32, Kind::Bf16] {
            let got = emulate(&qkv, &offsets, heads, None, SCALE, kind);
            let err = max_abs_diff(&got, &want);
            let tol = if kind == Kind::F32 { f32_tol(1.0) } else { 3e-2 };
            println!("emulated {kind:?}, growing max (reverse {reverse}): {err:.2e}");
            assert!(err < tol, "{kind:?} reverse {reverse}: {err}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// GPU
// ---------------------------------------------------------------------------------------------------

fn to_bf16_bits(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

fn from_bf16_bits(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|b| b.to_f32()).collect()
}

/// Run the f32 kernel; ctx starts as NaN so that any row the kernel fails to write shows.
fn run_f32(
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    qkv: &[f32],
    offsets: &[usize],
    heads: usize,
    mask: Option<&[u8]>,
) -> Vec<f32> {
    let tokens = *offsets.last().unwrap();
    let batch = kernels.attention_batch(stream, offsets).unwrap();
    let dqkv = stream.clone_htod(qkv).unwrap();
    let dmask = mask.map(|m| stream.clone_htod(m).unwrap());
    let mut ctx = stream
        .clone_htod(&vec![f32::NAN; tokens * heads * HEAD_DIM])
        .unwrap();
    kernels
        .attention_varlen_f32(
            stream,
            &dqkv,
            &batch,
            dmask.as_ref(),
            &mut ctx,
            (heads, HEAD_DIM),
            SCALE,
        )
        .unwrap();
    stream.clone_dtoh(&ctx).unwrap()
}

/// Run the bf16 kernel on `qkv` rounded to bf16; ctx starts as NaN (0xFFFF).
fn run_bf16(
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    qkv: &[f32],
    offsets: &[usize],
    heads: usize,
    mask: Option<&[u8]>,
) -> Vec<f32> {
    let tokens = *offsets.last().unwrap();
    let batch = kernels.attention_batch(stream, offsets).unwrap();
    let dqkv = stream.clone_htod(&to_bf16_bits(qkv)).unwrap();
    let dmask = mask.map(|m| stream.clone_htod(m).unwrap());
    let mut ctx = stream
        .clone_htod(&vec![bf16::from_bits(0xFFFF); tokens * heads * HEAD_DIM])
        .unwrap();
    kernels
        .attention_varlen_bf16(
            stream,
            &dqkv,
            &batch,
            dmask.as_ref(),
            &mut ctx,
            (heads, HEAD_DIM),
            SCALE,
        )
        .unwrap();
    from_bf16_bits(&stream.clone_dtoh(&ctx).unwrap())
}

const GPU_LENS: [usize; 8] = [1, 7, 64, 65, 300, 2048, 33, 129];

#[test]
fn f32_kernel_matches_the_cpu_reference_on_ragged_cells() {
    let Some((stream, kernels)) = gpu("attention_varlen_f32") else {
        return;
    };
    for (heads, spread, seed) in [(3usize, 1.0f32, 21u64), (5, 2.0, 22), (1, 4.0, 23)] {
        let (offsets, qkv) = batch(&GPU_LENS, heads, seed, spread);
        let want = cpu_reference(&qkv, &offsets, heads, SCALE);
        let got = run_f32(&stream, &kernels, &qkv, &offsets, heads, None);
        let err = max_abs_diff(&got, &want);
        println!("attention_varlen_f32 heads={heads} spread={spread}: max |gpu − cpu| = {err:.2e}");
        assert!(err < f32_tol(spread), "heads={heads} spread={spread}: {err}");
        let emu = emulate(&qkv, &offsets, heads, None, SCALE, Kind::F32);
        let err_emu = max_abs_diff(&got, &emu);
        println!("  max |gpu − emulation| = {err_emu:.2e}");
        assert!(err_emu < f32_tol(spread), "gpu vs emulation: {err_emu}");
    }
}

#[test]
fn bf16_kernel_matches_the_cpu_reference_within_bf16_tolerance() {
    let Some((stream, kernels)) = gpu("attention_varlen_bf16") else {
        return;
    };
    for (heads, spread, seed) in [(3usize, 1.0f32, 31u64), (5, 2.0, 32), (2, 4.0, 33)] {
        let (offsets, qkv) = batch(&GPU_LENS, heads, seed, spread);
        let got = run_bf16(&stream, &kernels, &qkv, &offsets, heads, None);
        // The reference on the bf16-rounded inputs: the tolerance covers P's and the output's rounding
        // (2⁻⁹ relative each) and the MMA accumulation order; outputs lie within ±spread.
        let want = cpu_reference(&round_bf16(&qkv), &offsets, heads, SCALE);
        let err = max_abs_diff(&got, &want);
        println!("attention_varlen_bf16 heads={heads} spread={spread}: max |gpu − cpu| = {err:.2e}");
        assert!(err < 2e-2 * spread, "heads={heads} spread={spread}: {err}");
        let emu = emulate(&qkv, &offsets, heads, None, SCALE, Kind::Bf16);
        let err_emu = max_abs_diff(&got, &emu);
        println!("  max |gpu − emulation| = {err_emu:.2e}");
        assert!(err_emu < 1e-2 * spread, "gpu vs emulation: {err_emu}");
    }
}

#[test]
fn key_mask_leaves_out_keys_and_rows_with_no_key_get_zeros() {
    let Some((stream, kernels)) = gpu("attention_varlen key mask") else {
        return;
    };
    let heads = 3;
    let lens = [1, 7, 64, 65, 300, 200, 150, 5, 2048];
    let (offsets, mut qkv) = batch(&lens, heads, 41, 2.0);
    let mask = key_mask(&offsets, &[1, 7], &[4, 8], &[5]);
    // NaN in the K and V of every left-out key: must not reach any output.
    let h = heads * HEAD_DIM;
    for (j, &keep) in mask.iter().enumerate() {
        if keep == 0 {
            qkv[j * 3 * h + h..(j + 1) * 3 * h].fill(f32::NAN);
        }
    }
    let want = naive_masked(&qkv, &offsets, heads, Some(&mask), SCALE);
    // bf16 reference: the same inputs rounded (NaN stays NaN).
    let want_bf16 = naive_masked(&round_bf16(&qkv), &offsets, heads, Some(&mask), SCALE);
    let got_f32 = run_f32(&stream, &kernels, &qkv, &offsets, heads, Some(&mask));
    let got_bf16 = run_bf16(&stream, &kernels, &qkv, &offsets, heads, Some(&mask));
    for (name, got, want, tol) in [
        ("f32", &got_f32, &want, f32_tol(2.0)),
        ("bf16", &got_bf16, &want_bf16, 4e-2),
    ] {
        assert!(
            got.iter().all(|x| x.is_finite()),
            "{name}: NaN or inf in the output"
        );
        for dead in [1, 7] {
            assert!(
                got[offsets[dead] * h..offsets[dead + 1] * h]
                    .iter()
                    .all(|&x| x == 0.0),
                "{name}: fully masked cell {dead} is not zero"
            );
        }
        let err = max_abs_diff(got, want);
        println!("attention_varlen_{name} with key mask: max |gpu − naive| = {err:.2e}");
        assert!(err < tol, "{name}: {err}");
    }
}

#[test]
fn a_cell_gives_the_same_bits_whatever_it_is_packed_with() {
    let Some((stream, kernels)) = gpu("attention_varlen packing") else {
        return;
    };
    let heads = 2;
    let h = heads * HEAD_DIM;
    let (offsets, qkv) = batch(&[100, 300, 77], heads, 51, 2.0);
    let cell = (offsets[1], offsets[2]);
    let alone = qkv[cell.0 * 3 * h..cell.1 * 3 * h].to_vec();
    let alone_offsets = [0, cell.1 - cell.0];
    let packed = run_f32(&stream, &kernels, &qkv, &offsets, heads, None);
    let single = run_f32(&stream, &kernels, &alone, &alone_offsets, heads, None);
    assert_eq!(&packed[cell.0 * h..cell.1 * h], &single[..]);
    let packed = run_bf16(&stream, &kernels, &qkv, &offsets, heads, None);
    let single = run_bf16(&stream, &kernels, &alone, &alone_offsets, heads, None);
    assert_eq!(&packed[cell.0 * h..cell.1 * h], &single[..]);
}

#[test]
fn bad_arguments_are_errors_not_launches() {
    let Some((stream, kernels)) = gpu("attention_varlen bad args") else {
        return;
    };
    // Offsets: empty, not from 0, decreasing.
    assert!(kernels.attention_batch(&stream, &[]).is_err());
    assert!(kernels.attention_batch(&stream, &[2, 10]).is_err());
    assert!(kernels.attention_batch(&stream, &[0, 10, 9]).is_err());

    let (heads, tokens) = (2usize, 10usize);
    let h = heads * HEAD_DIM;
    let batch = kernels.attention_batch(&stream, &[0, 4, 10]).unwrap();
    assert_eq!((batch.tokens(), batch.n_cells()), (tokens, 2));
    let qkv = stream.alloc_zeros::<f32>(tokens * 3 * h).unwrap();
    let short_qkv = stream.alloc_zeros::<f32>(tokens * 3 * h - 1).unwrap();
    let mut ctx = stream.alloc_zeros::<f32>(tokens * h).unwrap();
    let mut short_ctx = stream.alloc_zeros::<f32>(tokens * h - 1).unwrap();
    let mask = stream.alloc_zeros::<u8>(tokens).unwrap();
    let short_mask = stream.alloc_zeros::<u8>(tokens - 1).unwrap();
    let f = |qkv, mask, ctx: &mut _, dims| {
        kernels.attention_varlen_f32(&stream, qkv, &batch, mask, ctx, dims, SCALE)
    };
    assert!(f(&qkv, None, &mut ctx, (heads, HEAD_DIM)).is_ok());
    assert!(f(&qkv, Some(&mask), &mut ctx, (heads, HEAD_DIM)).is_ok());
    assert!(f(&short_qkv, None, &mut ctx, (heads, HEAD_DIM)).is_err());
    assert!(f(&qkv, None, &mut short_ctx, (heads, HEAD_DIM)).is_err());
    assert!(f(&qkv, Some(&short_mask), &mut ctx, (heads, HEAD_DIM)).is_err());
    assert!(f(&qkv, None, &mut ctx, (2 * heads, 32)).is_err(), "head_dim 32");
    assert!(f(&qkv, None, &mut ctx, (0, HEAD_DIM)).is_err(), "no heads");
    assert!(
        f(&qkv, None, &mut ctx, (heads + 1, HEAD_DIM)).is_err(),
        "H larger than the buffers"
    );

    let qkv16 = stream.alloc_zeros::<bf16>(tokens * 3 * h).unwrap();
    let mut ctx16 = stream.alloc_zeros::<bf16>(tokens * h).unwrap();
    let mut short_ctx16 = stream.alloc_zeros::<bf16>(tokens * h - 1).unwrap();
    let b =
        |ctx: &mut _, dims| kernels.attention_varlen_bf16(&stream, &qkv16, &batch, None, ctx, dims, SCALE);
    assert!(b(&mut ctx16, (heads, HEAD_DIM)).is_ok());
    assert!(b(&mut short_ctx16, (heads, HEAD_DIM)).is_err());
    assert!(b(&mut ctx16, (heads, 128)).is_err());
    stream.synchronize().unwrap();

    // The last launch that ran had an all-zero mask: every output is 0, never NaN.
    let got = stream.clone_dtoh(&ctx).unwrap();
    assert!(got.iter().all(|&x| x == 0.0));
}
