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
    // V1-10M FFN-in and V2-316M FFN-in shapes over one 2,048-token cell.
    for &(tokens, d_in, d_out) in &[(2048usize, 256usize, 512usize), (2048, 1152, 4608)] {
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
    for &(len, heads) in &[(2048usize, 4usize), (4096, 2)] {
        let qkv = filled(len, 3 * heads * 64, 3);
        g.throughput(Throughput::Elements((4 * len * len * heads * 64) as u64));
        g.bench_function(format!("len{len}_heads{heads}"), |b| {
            b.iter(|| cpu::attention_varlen(&qkv, &[0, len], heads, 64, 0.125))
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
