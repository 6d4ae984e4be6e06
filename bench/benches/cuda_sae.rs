//! Criterion benchmarks of the TopK SAE CUDA kernels at the Geneformer V2-316M SAE shape: d 1,152,
//! F 4,608, k 32, 8,192 rows per batch (AuxK k_aux 576 for the masked top-k). Throughput is rows/s.
//! Run on a GPU host: `cargo bench -p scinterp-bench --bench cuda_sae` (with SCINTERP_NVRTC_LIB set, see
//! `.ci/run`). Without a GPU or NVRTC it prints why and measures nothing.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scinterp_kernels::gpu::sae::{GpuCodes, GradSet, SaeShape, SlotColumns};

/// Deterministic pseudo-normal-ish values in [-scale, scale) (xorshift).
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

fn bench_sae(c: &mut Criterion) {
    let (_ctx, stream, kernels) = match scinterp_kernels::gpu::open_default() {
        Ok(gpu) => gpu,
        Err(why) => {
            scinterp_kernels::print_skip("cuda_sae", &why);
            return;
        }
    };
    let (rows, d, f, k, k_aux) = (8192usize, 1152usize, 4608usize, 32usize, 576usize);
    let shape = SaeShape {
        rows,
        d_in: d,
        d_sae: f,
    };
    let mut g = c.benchmark_group("cuda_sae");
    g.throughput(Throughput::Elements(rows as u64));

    // Top-k over f32 pre-activations (random: every row continuous, as an encoder output).
    let pre = stream.clone_htod(&values(rows * f, 1, 4.0)).unwrap();
    let mut idx = stream.alloc_zeros::<u32>(rows * k).unwrap();
    let mut val = stream.alloc_zeros::<f32>(rows * k).unwrap();
    g.bench_function(format!("topk/{rows}x{f}/k{k}"), |b| {
        b.iter(|| {
            kernels
                .sae_topk(&stream, &pre, None, &mut idx, &mut val, (rows, f), k)
                .unwrap();
            stream.synchronize().unwrap();
        })
    });
    // AuxK: a quarter of the latents dead.
    let mask: Vec<u8> = (0..f).map(|i| (i % 4 == 0) as u8).collect();
    let dmask = stream.clone_htod(&mask).unwrap();
    let mut aidx = stream.alloc_zeros::<u32>(rows * k_aux).unwrap();
    let mut aval = stream.alloc_zeros::<f32>(rows * k_aux).unwrap();
    g.bench_function(format!("topk_masked/{rows}x{f}/k{k_aux}"), |b| {
        b.iter(|| {
            kernels
                .sae_topk(
                    &stream,
                    &pre,
                    Some(&dmask),
                    &mut aidx,
                    &mut aval,
                    (rows, f),
                    k_aux,
                )
                .unwrap();
            stream.synchronize().unwrap();
        })
    });
    // Codes for the decode and backward: the top-k just computed.
    kernels
        .sae_topk(&stream, &pre, None, &mut idx, &mut val, (rows, f), k)
        .unwrap();
    let codes = GpuCodes {
        indices: &idx,
        values: &val,
        k,
    };
    let w_dec = stream.clone_htod(&values(f * d, 2, 0.05)).unwrap();
    let w_dec16 = stream
        .clone_htod(
            &values(f * d, 2, 0.05)
                .iter()
                .map(|&v| half::bf16::from_f32(v))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let w_enc = stream.clone_htod(&values(f * d, 3, 0.05)).unwrap();
    let b_dec = stream.clone_htod(&values(d, 4, 0.1)).unwrap();
    let x = stream.clone_htod(&values(rows * d, 5, 1.0)).unwrap();
    let mut out = stream.alloc_zeros::<f32>(rows * d).unwrap();
    g.bench_function(format!("decode_f32/{rows}x{d}/k{k}"), |b| {
        b.iter(|| {
            kernels
                .sae_decode(&stream, codes, &w_dec, &b_dec, &mut out, shape)
                .unwrap();
            stream.synchronize().unwrap();
        })
    });
    g.bench_function(format!("decode_bf16/{rows}x{d}/k{k}"), |b| {
        b.iter(|| {
            kernels
                .sae_decode_bf16(&stream, codes, &w_dec16, &b_dec, &mut out, shape)
                .unwrap();
            stream.synchronize().unwrap();
        })
    });

    // Backward of the main loss (no AuxK): residual, ∂L/∂pre, the weight gradients as dense GEMMs (bf16
    // operands, as the bf16 training mode), projection of the decoder gradient, b_dec gradient.
    let lt = match scinterp_kernels::gpu::gemm::CublasLt::new(&stream) {
        Ok(lt) => lt,
        Err(e) => {
            scinterp_kernels::print_skip("cuda_sae (backward)", &e);
            g.finish();
            return;
        }
    };
    let coef = -2.0 / (rows * d) as f32;
    let mut e = stream.alloc_zeros::<f32>(rows * d).unwrap();
    let mut e16 = stream.alloc_zeros::<half::bf16>(rows * d).unwrap();
    let mut xc16 = stream.alloc_zeros::<half::bf16>(rows * d).unwrap();
    kernels.f32_to_bf16(&stream, &x, &mut xc16).unwrap();
    let mut dense16 = stream.alloc_zeros::<half::bf16>(rows * f).unwrap();
    let mut gp = stream.alloc_zeros::<f32>(rows * k).unwrap();
    let mut gwd = stream.alloc_zeros::<f32>(f * d).unwrap();
    let mut gwe = stream.alloc_zeros::<f32>(f * d).unwrap();
    let mut gbe = stream.alloc_zeros::<f32>(f).unwrap();
    let mut gbd = stream.alloc_zeros::<f32>(d).unwrap();
    let cols = SlotColumns { stride: k, offset: 0 };
    kernels
        .sae_residual(&stream, &x, &b_dec, codes, &w_dec, &mut e, shape)
        .unwrap();
    kernels.f32_to_bf16(&stream, &e, &mut e16).unwrap();
    kernels
        .sae_grad_pre(&stream, &e, codes, &w_dec, coef, &mut gp, cols, shape)
        .unwrap();
    g.bench_function(format!("backward/{rows}x{d}x{f}/k{k}"), |b| {
        b.iter(|| {
            kernels
                .sae_residual(&stream, &x, &b_dec, codes, &w_dec, &mut e, shape)
                .unwrap();
            kernels
                .sae_grad_pre(&stream, &e, codes, &w_dec, coef, &mut gp, cols, shape)
                .unwrap();
            kernels.f32_to_bf16(&stream, &e, &mut e16).unwrap();
            kernels
                .sae_weight_grads(
                    &stream,
                    &lt,
                    GradSet {
                        codes,
                        cols,
                        coef,
                        target: &e16,
                    },
                    None,
                    (&gp, &xc16),
                    &mut dense16,
                    (&mut gwd, &mut gwe, &mut gbe),
                    shape,
                )
                .unwrap();
            kernels
                .sae_remove_parallel_grad(&stream, &mut gwd, &w_dec, (f, d))
                .unwrap();
            kernels
                .sae_grad_b_dec(&stream, &e, coef, &gbe, &w_enc, &mut gbd, shape)
                .unwrap();
            stream.synchronize().unwrap();
        })
    });
    // The weight gradients alone (two dense scatters, the column sum and two bf16 GEMMs).
    g.bench_function(format!("weight_grads_bf16/{rows}x{d}x{f}/k{k}"), |b| {
        b.iter(|| {
            kernels
                .sae_weight_grads(
                    &stream,
                    &lt,
                    GradSet {
                        codes,
                        cols,
                        coef,
                        target: &e16,
                    },
                    None,
                    (&gp, &xc16),
                    &mut dense16,
                    (&mut gwd, &mut gwe, &mut gbe),
                    shape,
                )
                .unwrap();
            stream.synchronize().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench_sae);
criterion_main!(benches);
