//! The GPU SAE trainer and encoder against the CPU ones on the same planted-dictionary rows: FVU after
//! the same tokens within 0.5 percentage points, and top-k sets of the GPU encoder ≥ 99 % identical to
//! the CPU's on the same SAE. Runs only where a GPU is usable; elsewhere each test says it skipped.

use scinterp_engine::cuda::{GpuPrecision, GpuSaeEncoder, GpuSaeStepper};
use scinterp_engine::sae::synth::SynthSpec;
use scinterp_engine::sae::train::{
    evaluate, train, train_with, MemoryRows, Stepper, StepperError, TrainConfig,
};
use scinterp_engine::sae::TopKSae;

fn gpu_available(test: &str) -> bool {
    match scinterp_kernels::cuda_available() {
        Ok(()) => true,
        Err(e) => {
            scinterp_kernels::print_skip(test, &format!("no GPU ({e})"));
            false
        }
    }
}

/// 48k planted rows (d 64, 256 atoms, 6 active), the first 40k for training.
fn rows() -> MemoryRows {
    let spec = SynthSpec {
        d: 64,
        atoms: 256,
        active: 6,
        noise: 0.05,
        seed: 3,
    };
    let dict = spec.dictionary();
    let mut data = vec![0.0f32; 48_000 * spec.d];
    spec.rows(&dict, 0, &mut data);
    MemoryRows { d: spec.d, data }
}

/// The training and held-out row ranges (two pieces each, as a store split by cell gives).
const TRAIN: [std::ops::Range<usize>; 2] = [0..20_000, 20_000..40_000];
const HELDOUT: [std::ops::Range<usize>; 2] = [40_000..44_000, 44_000..48_000];

fn config() -> TrainConfig {
    let mut cfg = TrainConfig::new(64, 512, 8, 400_000);
    cfg.batch_size = 1024;
    cfg.shuffle_buffer_rows = 8192;
    cfg.init_sample_rows = 4096;
    cfg.dead_after_tokens = 20_000;
    cfg.seed = 5;
    cfg
}

/// Share of (row, slot) pairs whose latent is in the other code set of the same row.
fn topk_agreement(a: &scinterp_engine::sae::SparseCodes, b: &scinterp_engine::sae::SparseCodes) -> f64 {
    let k = a.k;
    let mut same = 0usize;
    for (ra, rb) in a.indices.chunks(k).zip(b.indices.chunks(k)) {
        same += ra.iter().filter(|f| rb.contains(f)).count();
    }
    same as f64 / a.indices.len() as f64
}

#[test]
fn gpu_training_reaches_the_cpu_fvu() {
    if !gpu_available("gpu_training") {
        return;
    }
    let source = rows();
    let (train_rows, heldout) = (TRAIN.to_vec(), HELDOUT.to_vec());
    let cfg = config();
    let (cpu_sae, cpu_summary) = train(&source, &train_rows, &cfg, &mut |_, _, _| {}).unwrap();
    let cpu_fvu = evaluate(&cpu_sae, &source, &heldout).fvu;
    println!(
        "CPU: held-out FVU {cpu_fvu:.4}, {:.0} tokens/s",
        cpu_summary.tokens_per_second
    );
    for precision in [GpuPrecision::F32, GpuPrecision::Bf16] {
        let make = |sae: TopKSae| -> Result<Box<dyn Stepper>, StepperError> {
            Ok(Box::new(GpuSaeStepper::new(sae, &cfg, precision)?))
        };
        let (gpu_sae, summary) = train_with(&source, &train_rows, &cfg, &make, &mut |_, _, _| {}).unwrap();
        let gpu_fvu = evaluate(&gpu_sae, &source, &heldout).fvu;
        println!(
            "GPU {precision:?}: held-out FVU {gpu_fvu:.4} (CPU {cpu_fvu:.4}), {:.0} tokens/s, dead at end {} (CPU {})",
            summary.tokens_per_second, summary.dead_latents_at_end, cpu_summary.dead_latents_at_end
        );
        assert_eq!(summary.tokens_trained, cpu_summary.tokens_trained);
        assert!(
            (gpu_fvu - cpu_fvu).abs() <= 0.005,
            "{precision:?}: FVU {gpu_fvu} vs CPU {cpu_fvu}"
        );
        gpu_sae.validate().unwrap();
        // Unit-norm decoder rows, as on the CPU.
        for row in gpu_sae.w_dec.chunks(gpu_sae.d_in) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-4 || norm == 0.0,
                "decoder row norm {norm}"
            );
        }
    }
}

#[test]
fn gpu_encoding_picks_the_cpu_latents() {
    if !gpu_available("gpu_encoding") {
        return;
    }
    let source = rows();
    let cfg = config();
    let (sae, _) = train(&source, &TRAIN, &cfg, &mut |_, _, _| {}).unwrap();
    let x = &source.data[40_000 * 64..];
    let cpu = sae.encode(x);
    for (precision, floor) in [(GpuPrecision::F32, 0.999), (GpuPrecision::Bf16, 0.99)] {
        let gpu = GpuSaeEncoder::new(&sae, precision).unwrap().encode(x).unwrap();
        let agree = topk_agreement(&gpu, &cpu);
        let max_value_diff = gpu
            .values
            .iter()
            .zip(&cpu.values)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("GPU encode {precision:?}: top-k agreement {agree:.5}, max |Δvalue| {max_value_diff:.2e}");
        assert!(agree >= floor, "{precision:?}: top-k agreement {agree}");
    }
    // Bad input is an error, not a panic.
    let encoder = GpuSaeEncoder::new(&sae, GpuPrecision::F32).unwrap();
    assert!(encoder.encode(&x[..63]).is_err());
    assert!(encoder.encode(&[]).is_err());
}
