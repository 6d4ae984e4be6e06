//! Criterion benchmarks of the CUDA kernels at Geneformer V2-316M shapes: the memory-bound ones as bytes
//! moved per second (compare with the H200's ~4.8 TB/s), the GEMMs as flops per second ("elements" =
//! flops; compare with ~989 TFLOP/s dense bf16).
//! Run on a GPU host: `cargo bench -p scinterp-bench --bench cuda_kernels` (or the binary built by
//! `cargo bench --no-run`, see bench/gpu/run.sh). Without a GPU it prints why and measures nothing.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use scinterp_kernels::cudarc::driver::CudaStream;
use scinterp_kernels::gpu::gemm::{CublasLt, Epilogue, LinearShape};
use scinterp_kernels::gpu::Kernels;

fn bench_kernels(c: &mut Criterion) {
    let (_ctx, stream, kernels) = match scinterp_kernels::gpu::open_default() {
        Ok(gpu) => gpu,
        Err(why) => {
            scinterp_kernels::print_skip("cuda_kernels", &why);
            return;
        }
    };
    let mut g = c.benchmark_group("cuda");
    // 16 cells of 2,048 tokens; d_model 1,152 and the FFN width 4,608.
    let (rows, dim, ffn) = (16 * 2048usize, 1152usize, 4608usize);
    let a = stream.alloc_zeros::<f32>(rows * dim).unwrap();
    let b = stream.alloc_zeros::<f32>(rows * dim).unwrap();
    let gamma = stream.clone_htod(&vec![1.0f32; dim]).unwrap();
    let beta = stream.alloc_zeros::<f32>(dim).unwrap();
    let mut out = stream.alloc_zeros::<f32>(rows * dim).unwrap();
    // Reads a and b, writes out: 12 B per element.
    g.throughput(Throughput::Bytes((12 * rows * dim) as u64));
    g.bench_function(format!("add_layer_norm_f32/{rows}x{dim}"), |bch| {
        bch.iter(|| {
            kernels
                .add_layer_norm(&stream, &a, &b, &gamma, &beta, &mut out, (rows, dim), 1e-12)
                .unwrap();
            stream.synchronize().unwrap();
        })
    });
    let x = stream.alloc_zeros::<f32>(rows * ffn).unwrap();
    let bias = stream.alloc_zeros::<f32>(ffn).unwrap();
    let mut y = stream.alloc_zeros::<f32>(rows * ffn).unwrap();
    // Reads x, writes y: 8 B per element.
    g.throughput(Throughput::Bytes((8 * rows * ffn) as u64));
    g.bench_function(format!("bias_relu_f32/{rows}x{ffn}"), |bch| {
        bch.iter(|| {
            kernels
                .bias_relu(&stream, &x, &bias, &mut y, (rows, ffn))
                .unwrap();
            stream.synchronize().unwrap();
        })
    });
    g.finish();
    bench_gemms(c, &stream, &kernels);
}

/// The four linear layers of a V2-316M block on 16 × 2,048 tokens, bf16 in, f32 accumulate: cuBLASLt
/// (cached plans) and the in-house WMMA fallback.
fn bench_gemms(c: &mut Criterion, stream: &Arc<CudaStream>, kernels: &Kernels) {
    let rows = 16 * 2048usize;
    let layers = [
        ("qkv", 3 * 1152, 1152),
        ("out", 1152, 1152),
        ("ffn_in", 4608, 1152),
        ("ffn_out", 1152, 4608),
    ];
    let lt = CublasLt::new(stream)
        .map_err(|e| scinterp_kernels::print_skip("cuda_kernels (cuBLASLt GEMMs)", &e))
        .ok();
    let mut g = c.benchmark_group("cuda_gemm");
    g.sample_size(20);
    for (name, n, k) in layers {
        let shape = LinearShape { m: rows, n, k };
        let x = stream.alloc_zeros::<bf16>(rows * k).unwrap();
        let w = stream.alloc_zeros::<bf16>(n * k).unwrap();
        let bias = stream.alloc_zeros::<f32>(n).unwrap();
        let bias16 = stream.alloc_zeros::<bf16>(n).unwrap();
        let mut y = stream.alloc_zeros::<bf16>(rows * n).unwrap();
        g.throughput(Throughput::Elements((2 * rows * n * k) as u64));
        if let Some(lt) = &lt {
            g.bench_function(format!("cublaslt_bf16/{name}/{rows}x{n}x{k}"), |bch| {
                bch.iter(|| {
                    lt.linear(&x, &w, Some(&bias16), &mut y, shape, Epilogue::Bias)
                        .unwrap();
                    stream.synchronize().unwrap();
                })
            });
        }
        g.bench_function(format!("in_house_bf16/{name}/{rows}x{n}x{k}"), |bch| {
            bch.iter(|| {
                kernels
                    .linear_bf16(stream, &x, &w, Some(&bias), &mut y, shape, Epilogue::Bias)
                    .unwrap();
                stream.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
