//! The CUDA forward pass against the CPU path on real-format models: every hook, tail replay and hook
//! edits, in the f32 parity mode (tight) and in bf16 (the 2e-2). Runs only where a GPU is usable;
//! elsewhere each test prints that it skipped. The per-layer errors are printed for the record.

mod common;

use common::{fixture, formula_model_dir, scgpt_fixture, scgpt_width512_dir, skip, ExpectedFile};
use scinterp_engine::cuda::{CudaForward, GpuPrecision};
use scinterp_engine::device::{Backend, DeviceChoice};
use scinterp_engine::{
    run, Edit, Encoder, Forward, HookPlan, HookPoint, Matrix, PackedBatch, RunOutput, Start,
};
use scinterp_models::geneformer::{Geneformer, LoadOptions};
use scinterp_models::scgpt::{Scgpt, ScgptLoadOptions};

/// Whether a GPU is usable; if not, prints the skip line (with the reason) for the caller to return.
fn gpu_available() -> bool {
    match DeviceChoice::Cuda.resolve() {
        Ok(r) if r.backend == Backend::Cuda => true,
        Ok(_) => unreachable!("--device cuda resolves to CUDA or fails"),
        Err(e) => {
            skip(&e.to_string());
            false
        }
    }
}

/// max |a − b| / max(1, max |b|).
fn scaled_error(got: &Matrix, want: &Matrix) -> f32 {
    let scale = want.as_slice().iter().fold(1.0f32, |m, v| m.max(v.abs()));
    got.max_abs_diff(want) / scale
}

/// Runs `plan` from `start` on the CPU and on the GPU in both precisions, and compares every captured
/// hook and the final state.
fn compare(label: &str, encoder: &dyn Encoder, batch: &PackedBatch, plan: &HookPlan, start: Start) {
    let cpu = run(encoder, batch, plan, start.clone(), false).unwrap_or_else(|e| panic!("{label}: {e}"));
    for (precision, tolerance) in [(GpuPrecision::F32, 1e-4f32), (GpuPrecision::Bf16, 2e-2)] {
        let gpu_forward = CudaForward::new(encoder, 0, precision).unwrap_or_else(|e| panic!("{label}: {e}"));
        let gpu: RunOutput = gpu_forward
            .run(encoder, batch, plan, start.clone(), false)
            .unwrap_or_else(|e| panic!("{label} {precision:?}: {e}"));
        let mut worst = 0.0f32;
        for (hook, want) in cpu.captures.iter() {
            let got = gpu
                .captures
                .get(hook)
                .unwrap_or_else(|| panic!("{label}: {hook} not captured"));
            let err = scaled_error(got, want);
            println!(
                "{label} {precision:?} ({}): {hook} error {err:.2e}",
                gpu_forward.name()
            );
            worst = worst.max(err);
        }
        let err = scaled_error(&gpu.final_state, &cpu.final_state);
        println!("{label} {precision:?}: final state error {err:.2e}");
        worst = worst.max(err);
        assert!(
            worst <= tolerance,
            "{label} {precision:?}: worst error {worst:e} > {tolerance:e}"
        );
    }
}

fn all_hooks(encoder: &dyn Encoder) -> HookPlan {
    HookPlan::new().capture_many(HookPoint::all(encoder.dims().n_layers))
}

fn check_model(label: &str, encoder: &dyn Encoder, batch: &PackedBatch) {
    compare(label, encoder, batch, &all_hooks(encoder), Start::Embed);
    // Tail replay from the middle, and an edit the GPU must apply before the layers after it.
    let layers = encoder.dims().n_layers;
    let d = encoder.dims().d_model;
    let mid = layers / 2;
    let clean = run(encoder, batch, &all_hooks(encoder), Start::Embed, false).unwrap();
    let state = if mid == 0 {
        clean.captures.get(HookPoint::Embed).unwrap().clone()
    } else {
        clean.captures.get(HookPoint::ResidPost(mid - 1)).unwrap().clone()
    };
    let tail = HookPlan::new().capture_many((mid..layers).map(HookPoint::ResidPost));
    compare(
        &format!("{label} tail from {mid}"),
        encoder,
        batch,
        &tail,
        Start::BlockInput { layer: mid, state },
    );
    let direction: Vec<f32> = (0..d).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
    let edited = all_hooks(encoder)
        .edit(
            HookPoint::ResidMid(mid),
            Edit::add_direction(vec![0, 1, batch.n_tokens() - 1], direction, -2.0),
        )
        .edit(HookPoint::MlpOut(layers - 1), Edit::Zero { rows: vec![2] });
    compare(&format!("{label} edited"), encoder, batch, &edited, Start::Embed);
}

#[test]
fn geneformer_gpu_forward_matches_the_cpu() {
    if !gpu_available() {
        return;
    }
    for name in ["tiny_v2", "v1_10m_full", "ragged_v1"] {
        let dir = fixture(name);
        let folder;
        let model_dir = if dir.join("model.safetensors").exists() {
            dir.clone()
        } else {
            folder = formula_model_dir(&dir);
            folder.path().to_path_buf()
        };
        let model = Geneformer::load(&model_dir, LoadOptions { with_head: false }).unwrap();
        let cells = ExpectedFile::open(&dir.join("expected.safetensors")).cells();
        let batch = PackedBatch::from_cells(&cells).unwrap();
        check_model(name, &model, &batch);
    }
}

#[test]
fn scgpt_gpu_forward_matches_the_cpu() {
    if !gpu_available() {
        return;
    }
    // The real-width fixture: head_dim 64, the one the attention kernel takes (the `tiny` fixture's 16
    // is refused up front, see `CudaForward::new`).
    let dir = scgpt_width512_dir();
    let model = Scgpt::load(dir.path(), ScgptLoadOptions { with_head: false }).unwrap();
    let expected = ExpectedFile::open(&scgpt_fixture("width512").join("expected.safetensors"));
    let ids = expected.get("gene_ids");
    let values = expected.get("values");
    let max_len = ids.shape[1];
    let (mut tokens, mut vals) = (Vec::new(), Vec::new());
    for (c, &len) in expected.get("lengths").values.iter().enumerate() {
        let r = c * max_len..c * max_len + len as usize;
        tokens.push(
            ids.values[r.clone()]
                .iter()
                .map(|&v| v as u32)
                .collect::<Vec<u32>>(),
        );
        vals.push(values.values[r].iter().map(|&v| v as f32).collect::<Vec<f32>>());
    }
    let batch = PackedBatch::from_cells(&tokens)
        .unwrap()
        .with_values(vals.concat())
        .unwrap();
    check_model("scgpt width512", &model, &batch);
}

#[test]
fn gpu_forward_refuses_another_models_batch() {
    if !gpu_available() {
        return;
    }
    let tiny = Geneformer::load(&fixture("tiny_v2"), LoadOptions { with_head: false }).unwrap();
    let other_dir = formula_model_dir(&fixture("v1_10m_full"));
    let other = Geneformer::load(other_dir.path(), LoadOptions { with_head: false }).unwrap();
    let gpu = CudaForward::new(&tiny, 0, GpuPrecision::Bf16).unwrap();
    let batch = PackedBatch::from_cells(&[vec![2u32, 5, 6, 3]]).unwrap();
    let err = gpu
        .run(&other, &batch, &HookPlan::new(), Start::Embed, false)
        .unwrap_err();
    assert!(err.to_string().contains("GPU holds a model"), "{err}");
}

/// The scinterp binary: `SCINTERP_BIN` (set by bench/gpu/run.sh, where the build path does not exist),
/// else the one cargo built.
fn scinterp_bin() -> std::path::PathBuf {
    std::env::var_os("SCINTERP_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_scinterp").into())
}

/// (source feature, target feature) → Cohen's d, from an edge table.
fn edge_d(path: &std::path::Path) -> std::collections::BTreeMap<(u32, u32), f64> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (s, t, d) = (col("source_feature"), col("target_feature"), col("cohens_d"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                (f[s].parse().unwrap(), f[t].parse().unwrap()),
                f[d].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn gpu_trace_finds_the_cpu_edges() {
    if !gpu_available() {
        return;
    }
    let fx = common::fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let trace = |name: &str, device: &[&str]| {
        let out = tmp.path().join(name);
        let res = std::process::Command::new(scinterp_bin())
            .arg("trace")
            .arg("--model")
            .arg(fx.join("geneformer/tiny_v2"))
            .arg("--input")
            .arg(fx.join("trace/tokens"))
            .arg("--saes")
            .arg(fx.join("trace/saes"))
            .args([
                "--source",
                "blocks.0.hook_resid_post",
                "--targets",
                "blocks.2.hook_resid_post",
            ])
            .args(["--features", "all", "--out"])
            .arg(&out)
            .args(device)
            .output()
            .unwrap();
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        edge_d(&out)
    };
    let cpu = trace("cpu.tsv", &["--device", "cpu"]);
    assert!(
        !cpu.is_empty(),
        "the fixture must give edges at the default thresholds"
    );
    for precision in ["f32", "bf16"] {
        let gpu = trace(
            &format!("gpu_{precision}.tsv"),
            &["--device", "cuda", "--gpu-precision", precision],
        );
        let both = cpu.keys().filter(|k| gpu.contains_key(k)).count();
        let union = cpu.len() + gpu.len() - both;
        let jaccard = both as f64 / union.max(1) as f64;
        let worst_d = cpu
            .iter()
            .filter_map(|(k, d)| gpu.get(k).map(|g| (g - d).abs()))
            .fold(0.0f64, f64::max);
        println!(
            "trace {precision}: {} CPU edges, {} GPU edges, Jaccard {jaccard:.4}, max |Δd| {worst_d:.2e}",
            cpu.len(),
            gpu.len()
        );
        assert!(jaccard >= 0.98, "{precision}: edge-set Jaccard {jaccard}");
        assert!(worst_d <= 1e-2, "{precision}: max |Δd| {worst_d}");
    }
}

/// The GPU forward with the resident tracer hidden: `trace_cells` then runs its host loop (tail passes
/// through `Forward::run`, encodes and statistics on the CPU) on the GPU forward.
struct HostLoop<'a>(&'a CudaForward);

impl Forward for HostLoop<'_> {
    fn run(
        &self,
        encoder: &dyn Encoder,
        batch: &PackedBatch,
        plan: &HookPlan,
        start: Start,
        with_head: bool,
    ) -> Result<RunOutput, scinterp_engine::EngineError> {
        self.0.run(encoder, batch, plan, start, with_head)
    }

    fn name(&self) -> String {
        format!("{} (host loop)", self.0.name())
    }
}

/// The resident tracer (ablation → tail → target encode → code sums → edge reduction on the GPU) against
/// the host loop on the same GPU forward and against the CPU: the same edges (cells, sign counts) and
/// means within rounding in f32; timings printed for the record, not asserted.
#[test]
fn resident_trace_equals_the_host_loop_and_the_cpu() {
    use scinterp_engine::sae::io::find_sae;
    use scinterp_engine::trace::{trace_cells, SignFlipNull, TraceAccumulator, TraceSetup};
    if !gpu_available() {
        return;
    }
    let fx = common::fixtures();
    let model = scinterp_models::load(&fx.join("geneformer/tiny_v2"), false).unwrap();
    let encoder = model.encoder.as_ref();
    let cells = scinterp_models::input::read_cells(&fx.join("trace/tokens"), &model).unwrap();
    let special_ids = scinterp_models::extract::special_token_ids(&fx.join("trace/tokens"), &model).unwrap();
    let saes = fx.join("trace/saes");
    let source = find_sae(&saes, "blocks.0.hook_resid_post").unwrap();
    let target = find_sae(&saes, "blocks.2.hook_resid_post").unwrap();
    let setup = TraceSetup {
        source_layer: 0,
        source_sae: &source.sae,
        targets: vec![(HookPoint::ResidPost(2), &target.sae)],
        special_ids,
        max_batch_tokens: 4096,
        null: SignFlipNull {
            permutations: 5,
            seed: 9,
        },
    };
    let features: Vec<u32> = (0..source.sae.d_sae as u32).collect();
    let trace = |forward: &dyn Forward| {
        let mut acc = TraceAccumulator::default();
        let start = std::time::Instant::now();
        trace_cells(
            (encoder, forward),
            &setup,
            &features,
            &cells.tokens,
            cells.values.as_deref(),
            &mut acc,
            &mut |_| {},
        )
        .unwrap_or_else(|e| panic!("{}: {e}", forward.name()));
        println!(
            "{}: {} ablations, {} edges in {:.3} s",
            forward.name(),
            acc.ablations,
            acc.edges.len(),
            start.elapsed().as_secs_f64()
        );
        acc
    };
    let cpu = trace(&scinterp_engine::CpuForward);
    let gpu = CudaForward::new(encoder, 0, GpuPrecision::F32).unwrap();
    assert!(
        gpu.traces_resident(),
        "cuBLASLt is needed for the resident tracer"
    );
    let host_loop = trace(&HostLoop(&gpu));
    let resident = trace(&gpu);
    for (label, other) in [("host loop", &host_loop), ("CPU", &cpu)] {
        assert_eq!(resident.ablations, other.ablations, "{label}");
        assert_eq!(resident.cells_active, other.cells_active, "{label}");
        let common = resident
            .edges
            .keys()
            .filter(|k| other.edges.contains_key(k))
            .count();
        let union = resident.edges.len() + other.edges.len() - common;
        let jaccard = common as f64 / union.max(1) as f64;
        let worst = resident
            .edges
            .iter()
            .filter_map(|(k, e)| other.edges.get(k).map(|o| (e, o)))
            .map(|(e, o)| {
                let (a, b) = (e.nonzero.mean(), o.nonzero.mean());
                (a - b).abs() / b.abs().max(1e-3)
            })
            .fold(0.0f64, f64::max);
        println!("resident vs {label}: edge-set Jaccard {jaccard:.4}, max relative |Δmean| {worst:.2e}");
        assert!(jaccard >= 0.98, "{label}: Jaccard {jaccard}");
        assert!(worst <= 1e-3, "{label}: relative mean difference {worst}");
    }
}
