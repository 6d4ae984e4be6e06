//! Criterion benchmark of the varlen attention kernels (`kernels/src/attention_varlen.cu`) at the
//! Geneformer V2-316M shape: H = 1,152 = 18 heads of 64, bidirectional, packed cells.
//!
//! Throughput is reported in elements = attention FLOPs (criterion prints "elem/s"; read it as FLOP/s):
//! QKᵀ and PV cost 4·L·d flops per token of an L-token cell (d = H), i.e. 4·L²·d per cell — 9.66 GFLOP
//! for a 2,048-token cell and 38.7 GFLOP for a 4,096-token cell. Compare with the planning figure of
//! ~500 TFLOP/s at head_dim 64 (docs/gpu-and-performance.md §9) and the H200's 989 TFLOP/s dense bf16.
//! The f32 kernel is the SIMT parity kernel; its figure is for reference only.
//! Run on a GPU host: `cargo bench -p scinterp-bench --bench cuda_attention` (with SCINTERP_NVRTC_LIB
//! set, see `.ci/run`). Without a GPU or NVRTC it prints why and measures nothing.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const HEADS: usize = 18;
const HEAD_DIM: usize = 64;

/// Deterministic values in [-1, 1) (xorshift): realistic, non-constant scores.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn bench_attention(c: &mut Criterion) {
    let (_ctx, stream, kernels) = match scinterp_kernels::gpu::open_default() {
        Ok(gpu) => gpu,
        Err(why) => {
            scinterp_kernels::print_skip("cuda_attention", &why);
            return;
        }
    };
    let hidden = HEADS * HEAD_DIM;
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let mut g = c.benchmark_group("cuda_attention");
    g.sample_size(20);
    for (cells, len) in [(16usize, 2048usize), (8, 4096)] {
        let tokens = cells * len;
        let offsets: Vec<usize> = (0..=cells).map(|c| c * len).collect();
        let batch = kernels.attention_batch(&stream, &offsets).unwrap();
        let host = values(tokens * 3 * hidden, 7 + len as u64);
        let flops = (4 * len * len * hidden * cells) as u64;
        g.throughput(Throughput::Elements(flops));

        let bits: Vec<half::bf16> = host.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let qkv16 = stream.clone_htod(&bits).unwrap();
        let mut ctx16 = stream.alloc_zeros::<half::bf16>(tokens * hidden).unwrap();
        g.bench_function(format!("attention_varlen_bf16/{cells}x{len}/H{hidden}"), |b| {
            b.iter(|| {
                kernels
                    .attention_varlen_bf16(
                        &stream,
                        &qkv16,
                        &batch,
                        None,
                        &mut ctx16,
                        (HEADS, HEAD_DIM),
                        scale,
                    )
                    .unwrap();
                stream.synchronize().unwrap();
            })
        });
        drop((qkv16, ctx16));

        let qkv32 = stream.clone_htod(&host).unwrap();
        let mut ctx32 = stream.alloc_zeros::<f32>(tokens * hidden).unwrap();
        g.bench_function(format!("attention_varlen_f32/{cells}x{len}/H{hidden}"), |b| {
            b.iter(|| {
                kernels
                    .attention_varlen_f32(
                        &stream,
                        &qkv32,
                        &batch,
                        None,
                        &mut ctx32,
                        (HEADS, HEAD_DIM),
                        scale,
                    )
                    .unwrap();
                stream.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_attention);
criterion_main!(benches);
