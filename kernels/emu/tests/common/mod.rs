//! Helpers shared by the emulator tests: deterministic inputs and comparisons.
#![allow(dead_code)]

use half::{bf16, f16};

/// A small deterministic generator (splitmix64).
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

pub fn to_bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect()
}

pub fn bf16_round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

pub fn from_bf16_bits(x: &[u16]) -> Vec<f32> {
    x.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
}

pub fn from_f16_bits(x: &[u16]) -> Vec<f32> {
    x.iter().map(|&b| f16::from_bits(b).to_f32()).collect()
}

/// Asserts equal bits, NaN equal to any NaN.
pub fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}: element {i}: emulated {g:e} ({:#010x}), reference {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// Largest |got − want| / (abs + rel·|want|) (≤ 1 passes); NaN anywhere fails.
pub fn worst(got: &[f32], want: &[f32], abs: f32, rel: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "length");
    let mut w = 0.0f32;
    for (g, r) in got.iter().zip(want) {
        if g.is_nan() || r.is_nan() {
            if !(g.is_nan() && r.is_nan()) {
                return f32::INFINITY;
            }
            continue;
        }
        w = w.max((g - r).abs() / (abs + rel * r.abs()));
    }
    w
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    let w = worst(got, want, abs, rel);
    if w > 1.0 {
        let (i, g, r) = got
            .iter()
            .zip(want)
            .enumerate()
            .map(|(i, (g, r))| (i, *g, *r))
            .max_by(|a, b| {
                let ea = (a.1 - a.2).abs() / (abs + rel * a.2.abs());
                let eb = (b.1 - b.2).abs() / (abs + rel * b.2.abs());
                ea.partial_cmp(&eb).unwrap_or(std::cmp::Ordering::Greater)
            })
            .unwrap();
        panic!("{what}: off by {w:.2}× the tolerance (abs {abs:e}, rel {rel:e}); e.g. element {i}: {g:e} vs {r:e}");
    }
}

/// cuBLASLt's `D = op(A)·op(B) + β·D` in column-major storage, written from cuBLASLt's documented
/// semantics (`cublasLtMatrixLayoutCreate(rows, cols, ld)`: element (i, j) at `i + j·ld`; TRANSA/TRANSB
/// transpose the stored matrix), not from how scinterp means to use it: the GEMM arguments a call
/// builds ([`scinterp_kernels::gpu::gemm::Orientation::operands`]) run through here exactly as cuBLASLt
/// would read them; with β = 0 the old D is not read. `Err` where cuBLASLt would refuse the call (inconsistent dimensions, ld < rows) or
/// read out of bounds. f64 accumulation.
pub fn lt_matmul(
    ops: &scinterp_kernels::gpu::gemm::LtOperands,
    a: &[f32],
    b: &[f32],
    beta: f32,
    d: &mut [f32],
) -> Result<(), String> {
    use scinterp_kernels::gpu::gemm::LtLayout;
    let check = |what: &str, l: &LtLayout, len: usize| -> Result<(), String> {
        if l.ld < l.rows as i64 || l.rows == 0 || l.cols == 0 {
            return Err(format!("{what}: {l:?} is not a valid layout"));
        }
        let need = l.ld as u64 * (l.cols - 1) + l.rows;
        if need as usize > len {
            return Err(format!(
                "{what}: layout needs {need} values, the buffer has {len}"
            ));
        }
        Ok(())
    };
    check("A", &ops.a, a.len())?;
    check("B", &ops.b, b.len())?;
    check("D", &ops.d, d.len())?;
    // op(X) dimensions: (rows, cols) of the stored matrix, swapped when transposed.
    let dims = |l: &LtLayout, t: bool| if t { (l.cols, l.rows) } else { (l.rows, l.cols) };
    let (m, ka) = dims(&ops.a, ops.trans_a);
    let (kb, n) = dims(&ops.b, ops.trans_b);
    if ka != kb {
        return Err(format!("op(A) has {ka} columns, op(B) {kb} rows"));
    }
    if (ops.d.rows, ops.d.cols) != (m, n) {
        return Err(format!("D is {:?}, op(A)·op(B) is {m} × {n}", ops.d));
    }
    let at = |l: &LtLayout, t: bool, i: u64, j: u64| -> usize {
        // Element (i, j) of op(X) is (j, i) of the stored matrix when transposed.
        let (r, c) = if t { (j, i) } else { (i, j) };
        (r + c * l.ld as u64) as usize
    };
    for j in 0..n {
        for i in 0..m {
            let mut acc = 0.0f64;
            for l in 0..ka {
                acc += a[at(&ops.a, ops.trans_a, i, l)] as f64 * b[at(&ops.b, ops.trans_b, l, j)] as f64;
            }
            let o = at(&ops.d, false, i, j);
            // β = 0: D's old contents are not read (cuBLAS: C need not hold valid values then).
            let old = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * d[o] as f64
            };
            d[o] = (acc + old) as f32;
        }
    }
    Ok(())
}
