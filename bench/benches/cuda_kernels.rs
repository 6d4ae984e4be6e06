//! Criterion benchmarks of the CUDA kernels at Geneformer V2-316M shapes, reported as bytes moved per
//! second (both kernels are memory-bound; compare with the H200's ~4.8 TB/s).
//! Run on a GPU host: `cargo bench -p scinterp-bench --bench cuda_kernels` (with SCINTERP_NVRTC_LIB set,
//! see `.ci/run`). Without a GPU or NVRTC it prints why and measures nothing.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench_kernels(c: &mut Criterion) {
    let (_ctx, stream, kernels) = match scinterp_kernels::gpu::open_default() {
        Ok(gpu) => gpu,
        Err(why) => {
            println!("cuda_kernels skipped: {why}");
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
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
