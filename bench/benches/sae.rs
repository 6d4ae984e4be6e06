//! Criterion benchmarks of the TopK SAE at the Geneformer V2-316M shape (d 1,152 → F 4,608, k 32):
//! batched encode (GEMM + top-k), sparse decode, and training steps (throughput in rows = tokens).
//! Run: `cargo bench -p scinterp-bench --bench sae`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scinterp_engine::sae::synth::SynthSpec;
use scinterp_engine::sae::train::{train, MemoryRows, TrainConfig};
use scinterp_engine::sae::TopKSae;

const D: usize = 1152;
const F: usize = 4608;
const K: usize = 32;

fn rows(n: usize) -> Vec<f32> {
    let spec = SynthSpec {
        d: D,
        atoms: F,
        active: K,
        noise: 0.1,
        seed: 1,
    };
    let dict = spec.dictionary();
    let mut out = vec![0.0f32; n * D];
    spec.rows(&dict, 0, &mut out);
    out
}

fn trained_sae(data: &[f32]) -> TopKSae {
    let source = MemoryRows {
        d: D,
        data: data.to_vec(),
    };
    let cfg = TrainConfig::new(D, F, K, 4096);
    train(
        &source,
        std::slice::from_ref(&(0..data.len() / D)),
        &cfg,
        &mut |_, _, _| {},
    )
    .expect("training")
    .0
}

fn bench_sae(c: &mut Criterion) {
    let batch = 4096;
    let data = rows(batch);
    let sae = trained_sae(&data);
    let mut g = c.benchmark_group("sae");
    g.sample_size(10);
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function("encode 4096 rows", |b| b.iter(|| sae.encode(&data)));
    let codes = sae.encode(&data);
    g.bench_function("decode 4096 rows (sparse)", |b| b.iter(|| sae.decode(&codes)));
    // Four training steps of 4,096 rows each (the set-up: scale, geometric median, is included).
    let source = MemoryRows {
        d: D,
        data: rows(4 * batch),
    };
    let cfg = TrainConfig::new(D, F, K, 4 * batch as u64);
    g.throughput(Throughput::Elements(4 * batch as u64));
    g.bench_function("train 4 steps x 4096 rows", |b| {
        b.iter(|| {
            train(
                &source,
                std::slice::from_ref(&(0..4 * batch)),
                &cfg,
                &mut |_, _, _| {},
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench_sae);
criterion_main!(benches);
