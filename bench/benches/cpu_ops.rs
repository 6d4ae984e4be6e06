//! Criterion micro-benchmarks of the CPU ops at Geneformer shapes.
//! Run: `cargo bench -p scinterp-bench --bench cpu_ops`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scinterp_engine::cpu;
use scinterp_engine::{LayerNormWeights, LinearWeights, Matrix};

fn filled(rows: usize, cols: usize, seed: u64) -> Matrix {
    let mut s = seed;
    let data = (0..rows * cols)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    Matrix::from_vec(rows, cols, data)
}

fn bench_linear(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear");
    // V1-10M FFN-in and V2-316M FFN-in shapes over one 2,048-token cell; scGPT's QKV and FFN over four
    // 1,200-token cells.
    for &(tokens, d_in, d_out) in &[
        (2048usize, 256usize, 512usize),
        (2048, 1152, 4608),
        (4800, 512, 1536),
        (4800, 512, 512),
    ] {
        let x = filled(tokens, d_in, 1);
        let w = filled(d_out, d_in, 2);
        let lw = LinearWeights::new(w.into_vec(), Some(vec![0.1; d_out]), d_out, d_in).unwrap();
        g.throughput(Throughput::Elements((2 * tokens * d_in * d_out) as u64));
        g.bench_function(format!("{tokens}x{d_in}->{d_out}"), |b| {
            b.iter(|| cpu::linear(&x, &lw))
        });
    }
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_varlen");
    g.sample_size(10);
    // (cell length, heads, cells): Geneformer V2-104M / V1-like cells, and scGPT whole-human.
    for &(len, heads, cells) in &[(2048usize, 4usize, 1usize), (4096, 2, 1), (1200, 8, 4)] {
        let qkv = filled(len * cells, 3 * heads * 64, 3);
        let offsets: Vec<usize> = (0..=cells).map(|c| c * len).collect();
        g.throughput(Throughput::Elements((4 * len * len * heads * 64 * cells) as u64));
        g.bench_function(format!("len{len}_heads{heads}_cells{cells}"), |b| {
            b.iter(|| cpu::attention_varlen(&qkv, &offsets, heads, 64, 0.125))
        });
    }
    g.finish();
}

fn bench_layer_norm(c: &mut Criterion) {
    let x = filled(2048, 1152, 4);
    let y = filled(2048, 1152, 5);
    let ln = LayerNormWeights::new(vec![1.0; 1152], vec![0.0; 1152], 1e-12).unwrap();
    c.bench_function("layer_norm_of_sum_2048x1152", |b| {
        b.iter(|| cpu::layer_norm_of_sum(&x, &y, &ln))
    });
}

fn bench_softmax(c: &mut Criterion) {
    let x = filled(256, 4096, 6);
    let mut g = c.benchmark_group("softmax");
    g.throughput(Throughput::Elements((256 * 4096) as u64));
    g.bench_function("256x4096", |b| {
        b.iter_batched_ref(
            || x.clone(),
            |m| cpu::softmax_in_place(m.as_mut_slice(), 4096),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_linear,
    bench_attention,
    bench_layer_norm,
    bench_softmax
);
criterion_main!(benches);
