//! GPU linear layers (cuBLASLt plans and the in-house WMMA kernel) and precision casts against the CPU
//! `linear`. Runs only where a GPU is present; elsewhere each test prints that it skipped.

use half::{bf16, f16};
use scinterp_engine::cpu::linear;
use scinterp_engine::{LinearWeights, Matrix};
use scinterp_kernels::gpu::gemm::{CublasLt, Epilogue, LinearShape};
use scinterp_kernels::gpu::open_or_skip as gpu;
use scinterp_kernels::gpu::GpuError;

/// Deterministic values in [-scale, scale) (xorshift).
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

fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// The CPU answer on inputs already rounded to the GPU's input precision, so only accumulation order
/// (and the output rounding) differs.
fn cpu_linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, shape: LinearShape, relu: bool) -> Vec<f32> {
    let weights = LinearWeights::new(w.to_vec(), bias.map(<[f32]>::to_vec), shape.n, shape.k).unwrap();
    let mut y = linear(&Matrix::from_vec(shape.m, shape.k, x.to_vec()), &weights)
        .as_slice()
        .to_vec();
    if relu {
        y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    y
}

/// max |a − b| / max(1, max |b|): relative to the output's scale.
fn scaled_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale
}

const SHAPES: [LinearShape; 4] = [
    LinearShape {
        m: 37,
        n: 1152,
        k: 1152,
    },
    LinearShape {
        m: 64,
        n: 4608,
        k: 1152,
    },
    LinearShape {
        m: 130,
        n: 1152,
        k: 4608,
    },
    LinearShape { m: 5, n: 33, k: 70 },
];

#[test]
fn cublaslt_bf16_linear_matches_the_cpu() {
    let Some((stream, _)) = gpu("cublaslt_bf16_linear") else {
        return;
    };
    let lt = match CublasLt::new(&stream) {
        Ok(lt) => lt,
        Err(GpuError::NoCublasLt) => {
            scinterp_kernels::print_skip("cublaslt_bf16_linear", &"no libcublasLt on this GPU host");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    for (i, shape) in SHAPES.iter().copied().enumerate() {
        let x = round_bf16(&values(shape.m * shape.k, 11 + i as u64, 1.0));
        let w = round_bf16(&values(shape.n * shape.k, 21 + i as u64, 0.05));
        let bias = values(shape.n, 31 + i as u64, 0.5);
        let dx = stream
            .clone_htod(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>())
            .unwrap();
        let dw = stream
            .clone_htod(&w.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>())
            .unwrap();
        let dbias = stream.clone_htod(&bias).unwrap();
        for epilogue in [Epilogue::None, Epilogue::Bias, Epilogue::BiasRelu] {
            let b = (epilogue != Epilogue::None).then_some(&dbias);
            let mut dy = stream.alloc_zeros::<f32>(shape.m * shape.n).unwrap();
            lt.linear(&dx, &dw, b, &mut dy, shape, epilogue).unwrap();
            let got = stream.clone_dtoh(&dy).unwrap();
            let want = cpu_linear(
                &x,
                &w,
                b.map(|_| bias.as_slice()),
                shape,
                epilogue == Epilogue::BiasRelu,
            );
            let err = scaled_err(&got, &want);
            println!("cuBLASLt bf16→f32 {shape:?} {epilogue:?}: scaled max error {err:.2e}");
            assert!(err < 1e-3, "{shape:?} {epilogue:?}: {err}");
        }
        // bf16 output: one more rounding (2⁻⁸ relative).
        let bias16 = stream
            .clone_htod(&bias.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>())
            .unwrap();
        let mut dy16 = stream.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
        lt.linear(&dx, &dw, Some(&bias16), &mut dy16, shape, Epilogue::Bias)
            .unwrap();
        let got: Vec<f32> = stream
            .clone_dtoh(&dy16)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let want = cpu_linear(&x, &w, Some(&round_bf16(&bias)), shape, false);
        let err = scaled_err(&got, &want);
        println!("cuBLASLt bf16→bf16 {shape:?}: scaled max error {err:.2e}");
        assert!(err < 1e-2, "{shape:?} bf16 out: {err}");
    }
    // One plan per (shape, types, epilogue), reused on a repeat call.
    let plans = lt.cached_plans();
    assert_eq!(plans, SHAPES.len() * 4);
    let shape = SHAPES[3];
    let x = stream.alloc_zeros::<bf16>(shape.m * shape.k).unwrap();
    let w = stream.alloc_zeros::<bf16>(shape.n * shape.k).unwrap();
    let mut y = stream.alloc_zeros::<f32>(shape.m * shape.n).unwrap();
    lt.linear(&x, &w, None, &mut y, shape, Epilogue::None).unwrap();
    assert_eq!(lt.cached_plans(), plans);
    // Bad arguments are an Err, not an out-of-bounds GEMM.
    let short = stream.alloc_zeros::<bf16>(3).unwrap();
    assert!(lt
        .linear(&short, &w, None, &mut y, shape, Epilogue::None)
        .is_err());
    assert!(lt
        .linear::<bf16, f32>(&x, &w, None, &mut y, shape, Epilogue::Bias)
        .is_err());
}

#[test]
fn cublaslt_f16_and_exact_f32_linear_match_the_cpu() {
    let Some((stream, _)) = gpu("cublaslt_f16_f32_linear") else {
        return;
    };
    let Ok(lt) = CublasLt::new(&stream) else {
        scinterp_kernels::print_skip("cublaslt_f16_f32_linear", &"no libcublasLt on this GPU host");
        return;
    };
    let shape = SHAPES[0];
    let x = values(shape.m * shape.k, 41, 1.0);
    let w = values(shape.n * shape.k, 42, 0.05);
    let bias = values(shape.n, 43, 0.5);
    // f32 runs CUBLAS_COMPUTE_32F (not TF32): close to the CPU at f32 precision.
    let (dx, dw, db) = (
        stream.clone_htod(&x).unwrap(),
        stream.clone_htod(&w).unwrap(),
        stream.clone_htod(&bias).unwrap(),
    );
    let mut dy = stream.alloc_zeros::<f32>(shape.m * shape.n).unwrap();
    lt.linear(&dx, &dw, Some(&db), &mut dy, shape, Epilogue::BiasRelu)
        .unwrap();
    let err = scaled_err(
        &stream.clone_dtoh(&dy).unwrap(),
        &cpu_linear(&x, &w, Some(&bias), shape, true),
    );
    println!("cuBLASLt f32 {shape:?}: scaled max error {err:.2e}");
    assert!(err < 1e-5, "f32: {err}");
    // f16 inputs, f32 output.
    let round16 = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
    let (x16, w16) = (round16(&x), round16(&w));
    let (dx, dw) = (stream.clone_htod(&x16).unwrap(), stream.clone_htod(&w16).unwrap());
    lt.linear(&dx, &dw, Some(&db), &mut dy, shape, Epilogue::Bias)
        .unwrap();
    let back = |v: &[f16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
    let want = cpu_linear(&back(&x16), &back(&w16), Some(&bias), shape, false);
    let err = scaled_err(&stream.clone_dtoh(&dy).unwrap(), &want);
    println!("cuBLASLt f16→f32 {shape:?}: scaled max error {err:.2e}");
    assert!(err < 1e-3, "f16: {err}");
}

#[test]
fn in_house_bf16_linear_matches_the_cpu() {
    let Some((stream, kernels)) = gpu("in_house_bf16_linear") else {
        return;
    };
    for (i, shape) in SHAPES.iter().copied().enumerate() {
        let x = round_bf16(&values(shape.m * shape.k, 51 + i as u64, 1.0));
        let w = round_bf16(&values(shape.n * shape.k, 61 + i as u64, 0.05));
        let bias = values(shape.n, 71 + i as u64, 0.5);
        let dx = stream
            .clone_htod(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>())
            .unwrap();
        let dw = stream
            .clone_htod(&w.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>())
            .unwrap();
        let dbias = stream.clone_htod(&bias).unwrap();
        for epilogue in [Epilogue::None, Epilogue::Bias, Epilogue::BiasRelu] {
            let b = (epilogue != Epilogue::None).then_some(&dbias);
            let want = cpu_linear(
                &x,
                &w,
                b.map(|_| bias.as_slice()),
                shape,
                epilogue == Epilogue::BiasRelu,
            );
            let mut dy = stream.alloc_zeros::<f32>(shape.m * shape.n).unwrap();
            kernels
                .linear_bf16(&stream, &dx, &dw, b, &mut dy, shape, epilogue)
                .unwrap();
            let err = scaled_err(&stream.clone_dtoh(&dy).unwrap(), &want);
            println!("in-house bf16→f32 {shape:?} {epilogue:?}: scaled max error {err:.2e}");
            assert!(err < 1e-3, "{shape:?} {epilogue:?}: {err}");
            let mut dy16 = stream.alloc_zeros::<bf16>(shape.m * shape.n).unwrap();
            kernels
                .linear_bf16(&stream, &dx, &dw, b, &mut dy16, shape, epilogue)
                .unwrap();
            let got: Vec<f32> = stream
                .clone_dtoh(&dy16)
                .unwrap()
                .iter()
                .map(|v| v.to_f32())
                .collect();
            let err = scaled_err(&got, &want);
            assert!(err < 1e-2, "{shape:?} {epilogue:?} bf16 out: {err}");
        }
    }
    let shape = SHAPES[3];
    let x = stream.alloc_zeros::<bf16>(shape.m * shape.k).unwrap();
    let w = stream.alloc_zeros::<bf16>(shape.n * shape.k).unwrap();
    let mut y = stream.alloc_zeros::<f32>(shape.m * shape.n - 1).unwrap();
    assert!(kernels
        .linear_bf16(&stream, &x, &w, None, &mut y, shape, Epilogue::None)
        .is_err());
}

#[test]
fn precision_casts_round_like_the_half_crate() {
    let Some((stream, kernels)) = gpu("precision_casts") else {
        return;
    };
    let mut x = values(100_003, 81, 70_000.0);
    // Ties, subnormals, infinities and NaN.
    x.extend([
        1.0 + f32::EPSILON * 64.0,
        1e-40,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        7e4,
    ]);
    let dx = stream.clone_htod(&x).unwrap();
    let mut d16 = stream.alloc_zeros::<bf16>(x.len()).unwrap();
    kernels.f32_to_bf16(&stream, &dx, &mut d16).unwrap();
    let got = stream.clone_dtoh(&d16).unwrap();
    for (g, &v) in got.iter().zip(&x) {
        let want = bf16::from_f32(v);
        assert!(
            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
            "bf16({v}) = {g}, want {want}"
        );
    }
    let mut back = stream.alloc_zeros::<f32>(x.len()).unwrap();
    kernels.bf16_to_f32(&stream, &d16, &mut back).unwrap();
    for (b, g) in stream.clone_dtoh(&back).unwrap().iter().zip(&got) {
        assert!(b.to_bits() == g.to_f32().to_bits() || b.is_nan());
    }
    let mut dh = stream.alloc_zeros::<f16>(x.len()).unwrap();
    kernels.f32_to_f16(&stream, &dx, &mut dh).unwrap();
    let got = stream.clone_dtoh(&dh).unwrap();
    for (g, &v) in got.iter().zip(&x) {
        let want = f16::from_f32(v);
        assert!(
            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
            "f16({v}) = {g}, want {want}"
        );
    }
    kernels.f16_to_f32(&stream, &dh, &mut back).unwrap();
    for (b, g) in stream.clone_dtoh(&back).unwrap().iter().zip(&got) {
        assert!(b.to_bits() == g.to_f32().to_bits() || b.is_nan());
    }
    let mut short = stream.alloc_zeros::<bf16>(3).unwrap();
    assert!(kernels.f32_to_bf16(&stream, &dx, &mut short).is_err());
}
