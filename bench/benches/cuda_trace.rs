//! Criterion benchmarks of the hook-edit and tracing kernels at Geneformer V2-316M shapes (d 1,152, SAE
//! width 4,608), reported as bytes moved per second (all three are memory-bound; compare with the H200's
//! ~4.8 TB/s).
//! Run on a GPU host: `cargo bench -p scinterp-bench --bench cuda_trace` (with SCINTERP_NVRTC_LIB set, see
//! `.ci/run`). Without a GPU or NVRTC it prints why and measures nothing.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scinterp_kernels::gpu::{sign_flip_hash, AblationList, EditList, TraceStats};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit() * 2.0 - 1.0).collect()
    }
}

fn bench_trace(c: &mut Criterion) {
    let (_ctx, stream, kernels) = match scinterp_kernels::gpu::open_default() {
        Ok(gpu) => gpu,
        Err(why) => {
            scinterp_kernels::print_skip("cuda_trace", &why);
            return;
        }
    };
    let mut rng = Rng(0x0be7c4);
    let mut g = c.benchmark_group("cuda_trace");
    let d = 1152usize;

    // Hook edits: 16 cells of 2,048 tokens, 4,096 records of all four kinds (1,024 each) in one launch.
    let tokens = 16 * 2048usize;
    let mut list = EditList::new(tokens, d).unwrap();
    let rows = |rng: &mut Rng, n: usize| -> Vec<usize> { (0..n).map(|_| rng.below(tokens)).collect() };
    for _ in 0..4 {
        let r = rows(&mut rng, 256);
        let scales = rng.values(256);
        list.add_direction(&r, &rng.values(d), &scales).unwrap();
        list.zero(&rows(&mut rng, 256)).unwrap();
        let r = rows(&mut rng, 256);
        list.replace(&r, &rng.values(256 * d)).unwrap();
        list.mean_ablate(&rows(&mut rng, 256), &rng.values(d)).unwrap();
    }
    assert_eq!(list.len(), 4096);
    let dev = list.upload(&stream).unwrap();
    let mut x = stream.alloc_zeros::<f32>(tokens * d).unwrap();
    let mut xb = stream.alloc_zeros::<half::bf16>(tokens * d).unwrap();
    // Per edited row: read and write the row, read its pool vector (replacements; directions and
    // means are shared and stay in L2): ≤ 12 B per element in f32, ≤ 8 B in bf16.
    let edited = dev.rows_edited();
    g.throughput(Throughput::Bytes((12 * edited * d) as u64));
    g.bench_function(format!("hook_edits_f32/{tokens}x{d}/4096_records"), |b| {
        b.iter(|| {
            kernels.hook_edits(&stream, &mut x, (tokens, d), &dev).unwrap();
            stream.synchronize().unwrap();
        })
    });
    g.throughput(Throughput::Bytes((8 * edited * d) as u64));
    g.bench_function(format!("hook_edits_bf16/{tokens}x{d}/4096_records"), |b| {
        b.iter(|| {
            kernels
                .hook_edits_bf16(&stream, &mut xb, (tokens, d), &dev)
                .unwrap();
            stream.synchronize().unwrap();
        })
    });
    drop((x, xb));

    // Replicated ablation: 64 copies of a 2,048-token batch, each ablating one of 4,608 source features
    // at ~10 % of the rows.
    let (tokens, n_features, copies) = (2048usize, 4608usize, 64usize);
    let clean = stream.clone_htod(&rng.values(tokens * d)).unwrap();
    let w_dec = stream.clone_htod(&rng.values(n_features * d)).unwrap();
    let mut abl = AblationList::new(tokens, n_features).unwrap();
    for _ in 0..copies {
        let rows: Vec<usize> = (0..tokens).filter(|_| rng.below(10) == 0).collect();
        let acts: Vec<f32> = rows.iter().map(|_| rng.unit()).collect();
        abl.push(rng.below(n_features) as u32, &rows, &acts).unwrap();
    }
    let dev = abl.upload(&stream).unwrap();
    let mut out = stream.alloc_zeros::<f32>(copies * tokens * d).unwrap();
    // Writes every copy (4 B per element); the clean batch is read once per copy, mostly from L2.
    g.throughput(Throughput::Bytes((8 * copies * tokens * d) as u64));
    g.bench_function(format!("trace_ablate_f32/{copies}x{tokens}x{d}"), |b| {
        b.iter(|| {
            kernels
                .trace_ablate(&stream, &clean, (tokens, d), &w_dec, &dev, &mut out)
                .unwrap();
            stream.synchronize().unwrap();
        })
    });
    drop(out);

    // Reduction: 64 source slots × 16 cells × 4,608 target latents, without and with 100 sign flips;
    // ~1 % of the observations are non-zero.
    let (copies, cells, targets) = (64usize, 16usize, 4608usize);
    let n = copies * cells * targets;
    let clean_sum: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
    let ablated_sum: Vec<f32> = clean_sum
        .iter()
        .map(|&v| {
            if rng.below(100) == 0 {
                v + rng.unit() - 0.5
            } else {
                v
            }
        })
        .collect();
    let n_active: Vec<u32> = (0..copies * cells).map(|_| rng.below(8) as u32).collect();
    let hashes: Vec<u64> = (0..copies * cells)
        .map(|i| sign_flip_hash(7, i as u32, &[1, 2, 3]))
        .collect();
    let (dc, da) = (
        stream.clone_htod(&clean_sum).unwrap(),
        stream.clone_htod(&ablated_sum).unwrap(),
    );
    let (dn, dh) = (
        stream.clone_htod(&n_active).unwrap(),
        stream.clone_htod(&hashes).unwrap(),
    );
    let features: Vec<u32> = (0..copies as u32).collect();
    for perms in [0usize, 100] {
        let mut stats = TraceStats::new(&stream, &features, targets, perms).unwrap();
        // Reads both sums (8 B per (slot, cell, latent)); the state is read and written once per launch.
        g.throughput(Throughput::Bytes((8 * n + 24 * copies * targets) as u64));
        g.bench_function(
            format!("trace_reduce/{copies}x{cells}x{targets}/{perms}_flips"),
            |b| {
                b.iter(|| {
                    kernels
                        .trace_reduce(&stream, &mut stats, &dc, &da, &dn, &dh, cells, None)
                        .unwrap();
                    stream.synchronize().unwrap();
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_trace);
criterion_main!(benches);
