//! Every exported `.onnx` runs in tract (and, when a Python with onnxruntime is at hand, in onnxruntime
//! through `tests/check_onnx.py`) and gives scinterp's own evaluation (`Tool::evaluate`) to within
//! 1e-5 relative: `max|a − b| ≤ 1e-5 · max|b|` per output. Tools come from synthetic weights and from
//! real exports of the embedded models on the embedded cells (every construction, a pool, a drift map, a
//! surrogate, both adaptors and the shuffled-weight control); `scinterp apply`'s folded path is checked
//! against the same evaluation.

use std::path::{Path, PathBuf};

use scinterp_export::apply::{apply, ApplyConfig};
use scinterp_export::cells::{CellInput, PanelChoice, PanelGene};
use scinterp_export::files::{self, read_tool, Card};
use scinterp_export::operator::{Construction, Dense, OperatorSvd};
use scinterp_export::pipeline::{export_tool, ExportConfig, Quiet};
use scinterp_export::tool::{AdaptorKind, Outputs, Stage, Tool};
use scinterp_models::cells::OpenOptions;
use tract_onnx::prelude::*;

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/assets")
}

/// Deterministic pseudo-random values in [-s, s).
fn values(n: usize, seed: u64, s: f32) -> Vec<f32> {
    let mut rng = scinterp_engine::rng::Rng::new(seed, 1);
    (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) as f32) * s).collect()
}

fn dense(rows: usize, cols: usize, seed: u64, s: f32) -> Dense {
    Dense {
        rows,
        cols,
        data: values(rows * cols, seed, s),
    }
}

/// Expression-like input: log1p of sparse counts.
fn expression(n: usize, g: usize, seed: u64) -> Vec<f32> {
    values(n * g, seed, 1.0)
        .into_iter()
        .map(|u| if u > 0.3 { (1.0 + 20.0 * u).ln() } else { 0.0 })
        .collect()
}

fn run_tract(path: &Path, x: &[f32], n: usize, g: usize) -> Outputs {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .with_input_fact(0, f32::fact([n, g]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = Tensor::from_shape(&[n, g], x).unwrap();
    let out = model.run(tvec!(input.into_tvalue())).unwrap();
    let flat = |i: usize| {
        out[i]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<f32>>()
    };
    Outputs {
        n,
        latent: flat(0),
        pseudotime: flat(1),
        probabilities: flat(2),
    }
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        diff <= 1e-5 * scale,
        "{what}: max diff {diff} vs max |value| {scale}"
    );
}

fn assert_outputs_close(a: &Outputs, b: &Outputs, what: &str) {
    assert_close(&a.latent, &b.latent, &format!("{what} latent"));
    assert_close(&a.pseudotime, &b.pseudotime, &format!("{what} pseudotime"));
    assert_close(
        &a.probabilities,
        &b.probabilities,
        &format!("{what} probabilities"),
    );
}

/// The Python that has onnxruntime: `SCINTERP_ONNX_PYTHON`, else `python3` if it imports onnxruntime.
fn onnx_python() -> Option<String> {
    let candidates = std::env::var("SCINTERP_ONNX_PYTHON")
        .into_iter()
        .chain(["python3".to_string()]);
    candidates.into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import onnxruntime, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Checks a tool in onnxruntime against `expected` on `x`, when that Python is available.
fn check_onnxruntime(tool_dir: &Path, x: &[f32], n: usize, g: usize, expected: &Outputs) {
    let Some(python) = onnx_python() else {
        println!("skipped the onnxruntime check: no Python with onnxruntime (set SCINTERP_ONNX_PYTHON)");
        return;
    };
    let case = tool_dir.with_extension("case.json");
    let json = serde_json::json!({
        "n": n, "n_genes": g, "expression": x,
        "latent": expected.latent, "pseudotime": expected.pseudotime, "class_probabilities": expected.probabilities,
    });
    std::fs::write(&case, json.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_onnx.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(tool_dir)
        .arg(&case)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onnxruntime check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

fn card_for(n: usize, d: usize, c: usize) -> Card {
    Card {
        format: files::FORMAT.into(),
        format_version: files::FORMAT_VERSION,
        panel: (0..n)
            .map(|i| PanelGene {
                id: format!("G{i}"),
                symbol: Some(format!("G{i}")),
                ensembl_id: None,
                token: i as u32,
            })
            .collect(),
        preprocessing: files::PREPROCESSING.into(),
        outputs: Default::default(),
        labels: (0..c).map(|k| format!("type{k}")).collect(),
        label_column: "labels".into(),
        d_latent: d,
        operator: serde_json::Value::Null,
        adaptor: serde_json::Value::Null,
        pseudotime: serde_json::Value::Null,
        metrics: serde_json::Value::Null,
        provenance: serde_json::Value::Null,
        files: Default::default(),
    }
}

fn synthetic_tool(stage: Stage, d: usize, c: usize) -> Tool {
    let m = stage.n_features();
    Tool {
        stage,
        adaptor: dense(m, d, 3, 0.2),
        adaptor_bias: values(d, 4, 1.0),
        pseudotime: dense(d, 1, 5, 0.5),
        pseudotime_bias: 0.25,
        classes: dense(d, c, 6, 1.0),
        classes_bias: values(c, 7, 0.5),
    }
}

#[test]
fn synthetic_tools_agree_in_tract_onnxruntime_and_scinterp() {
    let dir = tempfile::tempdir().unwrap();
    let (g, d, c, n) = (40, 6, 5, 17);
    let op = dense(g, 2 * g, 1, 0.3);
    let svd = OperatorSvd::new(&op).unwrap();
    for (name, stage) in [
        ("full", Stage::Operator(op.clone())),
        ("rank8", Stage::Surrogate(svd.surrogate(8))),
    ] {
        let tool = synthetic_tool(stage, d, c);
        let out = dir.path().join(name);
        files::write_tool(&out, &tool, &mut card_for(g, d, c), &[], false).unwrap();
        let x = expression(n, g, 11);
        let ours = tool.evaluate(&x, n);
        let theirs = run_tract(&out.join(files::ONNX), &x, n, g);
        assert_outputs_close(&theirs, &ours, name);
        // The tool read back from disk evaluates the same, and its probabilities sum to one.
        let back = read_tool(&out).unwrap();
        assert_outputs_close(&back.tool.evaluate(&x, n), &ours, "read back");
        for row in ours.probabilities.chunks(c) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        check_onnxruntime(&out, &x, n, g, &ours);
    }
}

#[test]
fn broken_tool_folders_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let (g, d, c) = (10, 3, 2);
    let tool = synthetic_tool(Stage::Operator(dense(g, g, 1, 0.3)), d, c);
    let out = dir.path().join("t");
    files::write_tool(&out, &tool, &mut card_for(g, d, c), &[], false).unwrap();
    // An existing folder is not replaced without overwrite, and nothing is staged beside it.
    let e = files::write_tool(&out, &tool, &mut card_for(g, d, c), &[], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exists"), "{e}");
    let weights = out.join(files::WEIGHTS);
    let bytes = std::fs::read(&weights).unwrap();
    // Truncated weights.
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let e = read_tool(&out).err().unwrap().to_string();
    assert!(e.contains("tool.safetensors") && e.contains("truncated"), "{e}");
    // Weights of another tool under this card.
    let other = synthetic_tool(Stage::Operator(dense(g, g, 9, 0.3)), d, c);
    std::fs::write(&weights, files::safetensors_bytes(&other).unwrap()).unwrap();
    let e = read_tool(&out).err().unwrap().to_string();
    assert!(e.contains("does not belong"), "{e}");
    // A card whose panel does not match the weights (hashes removed so the shape check speaks).
    std::fs::write(&weights, &bytes).unwrap();
    let card_path = out.join(files::CARD);
    let mut card: Card = serde_json::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    card.panel.pop();
    std::fs::write(&card_path, serde_json::to_string(&card).unwrap()).unwrap();
    let e = read_tool(&out).err().unwrap().to_string();
    assert!(e.contains("card.json") && e.contains("panel genes"), "{e}");
    let e = read_tool(&dir.path().join("nope")).err().unwrap().to_string();
    assert!(e.contains("card.json"), "{e}");
    // A NaN weight (hashes and all consistent) is refused, naming the tensor and the index.
    let mut nan_tool = synthetic_tool(Stage::Operator(dense(g, g, 1, 0.3)), d, c);
    nan_tool.adaptor_bias[1] = f32::NAN;
    let nan_dir = dir.path().join("nan");
    files::write_tool(&nan_dir, &nan_tool, &mut card_for(g, d, c), &[], false).unwrap();
    let e = read_tool(&nan_dir).err().unwrap().to_string();
    assert!(
        e.contains("tool.safetensors") && e.contains("adaptor_bias") && e.contains("value 1"),
        "{e}"
    );
}

fn pbmc(model: &str, out: &Path) -> ExportConfig {
    ExportConfig {
        model: assets().join(model),
        dictionaries: None,
        cells: CellInput {
            path: assets().join("cells/pbmc68k.h5ad.gz"),
            open: OpenOptions::default(),
            orthologs: None,
        },
        label_column: "bulk_labels".into(),
        panel: PanelChoice::Hvg(120),
        construction: Construction::Attention,
        heads: None,
        drift: None,
        rank: None,
        d_latent: 10,
        adaptor: AdaptorKind::Unsupervised,
        root: "0".into(),
        stage_order: None,
        heldout: 0.2,
        seed: 5,
        knn: 10,
        max_len: Some(128),
        max_reference_cells: 60,
        shuffled_control: None,
        out: out.to_path_buf(),
        overwrite: false,
        stop_after_batches: None,
    }
}

/// The held-out cells' panel expression of an exported tool, from the same file.
fn reference_expression(card: &Card, n_max: usize) -> (Vec<f32>, usize) {
    let input = CellInput {
        path: assets().join("cells/pbmc68k.h5ad.gz"),
        open: OpenOptions::default(),
        orthologs: None,
    };
    let m = scinterp_export::cells::read_cells(&input).unwrap();
    let cols = scinterp_export::cells::match_panel(&m, &card.panel);
    let n = m.n_cells.min(n_max);
    (scinterp_export::cells::panel_expression(&m, &cols, 0..n), n)
}

#[test]
fn real_exports_agree_in_tract_and_apply() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, ExportConfig)> = vec![
        ("scgpt_attention_pool", pbmc("scgpt", &dir.path().join("a"))),
        (
            "scgpt_qk_head_rank16",
            ExportConfig {
                construction: Construction::WeightsQk,
                heads: Some("1.0".into()),
                rank: Some(16),
                ..pbmc("scgpt", &dir.path().join("b"))
            },
        ),
        (
            "geneformer_ov_drift_supervised",
            ExportConfig {
                construction: Construction::WeightsOv,
                drift: Some("auto".into()),
                adaptor: AdaptorKind::Supervised,
                ..pbmc("geneformer", &dir.path().join("c"))
            },
        ),
        (
            "geneformer_attention_control",
            ExportConfig {
                shuffled_control: Some(3),
                heads: Some("2.0,2.1".into()),
                ..pbmc("geneformer", &dir.path().join("d"))
            },
        ),
    ];
    for (name, config) in cases {
        let report = export_tool(&config, &Quiet).unwrap_or_else(|e| panic!("{name}: {e}"));
        let loaded = read_tool(&config.out).unwrap();
        // (floats in the card go through JSON text: compare the exact fields)
        assert_eq!(
            (&loaded.card.panel, &loaded.card.labels, &loaded.card.files),
            (&report.card.panel, &report.card.labels, &report.card.files)
        );
        let g = loaded.tool.n_genes();
        assert!(g >= 100, "{name}: {g} panel genes");
        let (x, n) = reference_expression(&loaded.card, 64);
        let ours = loaded.tool.evaluate(&x, n);
        let theirs = run_tract(&config.out.join(files::ONNX), &x, n, g);
        assert_outputs_close(&theirs, &ours, name);
        check_onnxruntime(&config.out, &x, n, g, &ours);
        // `scinterp apply`'s folded sparse path gives the same calls (folding reorders the sums: 1e-4).
        let calls = dir.path().join(format!("{name}.tsv"));
        let r = apply(&ApplyConfig {
            tool: config.out.clone(),
            cells: CellInput {
                path: assets().join("cells/pbmc68k.h5ad.gz"),
                open: OpenOptions::default(),
                orthologs: None,
            },
            out: calls.clone(),
            min_panel_fraction: 0.5,
            overwrite: false,
        })
        .unwrap();
        assert!(r.missing_genes.is_empty(), "{:?}", r.missing_genes);
        let text = std::fs::read_to_string(&calls).unwrap();
        let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split('\t').collect()).collect();
        assert_eq!(rows.len(), 700);
        let pt_scale = ours.pseudotime.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, row) in rows.iter().enumerate().take(n) {
            let pt: f32 = row[1].parse().unwrap();
            assert!(
                (pt - ours.pseudotime[i]).abs() <= 1e-4 * pt_scale.max(1e-6),
                "{name} cell {i}: {pt} vs {}",
                ours.pseudotime[i]
            );
        }
        let m = &report.card.metrics;
        println!(
            "{name}: {g} genes, held-out accuracy {:.3}, balanced {:.3}, pseudotime rho {:.3}",
            m["cell_type"]["accuracy"],
            m["cell_type"]["balanced_accuracy"],
            m["pseudotime"]["spearman_with_ordering"]
        );
        assert!(m["cell_type"]["accuracy"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn bad_requests_get_one_clear_error_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tool");
    let e = export_tool(
        &ExportConfig {
            heads: Some("7.0".into()),
            ..pbmc("scgpt", &out)
        },
        &Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("head 7.0 does not exist") && e.contains("3 layers × 2 heads"),
        "{e}"
    );
    let e = export_tool(
        &ExportConfig {
            panel: PanelChoice::Given(vec!["CD3E".into(), "NOT_A_GENE_X".into()]),
            ..pbmc("scgpt", &out)
        },
        &Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("NOT_A_GENE_X"), "{e}");
    let e = export_tool(
        &ExportConfig {
            root: "nobody".into(),
            ..pbmc("scgpt", &out)
        },
        &Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--root"), "{e}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing staged or half-written"
    );

    // A tool applied to cells that lack most of its panel: paul15's mouse symbols without --orthologs.
    let tool = dir.path().join("t");
    export_tool(
        &ExportConfig {
            construction: Construction::WeightsQk,
            ..pbmc("scgpt", &tool)
        },
        &Quiet,
    )
    .unwrap();
    let calls = dir.path().join("calls.tsv");
    let e = apply(&ApplyConfig {
        tool: tool.clone(),
        cells: CellInput {
            path: assets().join("cells/paul15.h5ad.gz"),
            open: OpenOptions::default(),
            orthologs: None,
        },
        out: calls.clone(),
        min_panel_fraction: 0.5,
        overwrite: false,
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("paul15.h5ad.gz")
            && e.contains("panel genes are in these cells")
            && e.contains("--orthologs"),
        "{e}"
    );
    assert!(!calls.exists());
}

/// A tool read as the pseudotime readout of `scinterp effects`: its panel tokens and its pseudotime
/// gradient, which predicts the tool's own pseudotime change; a tool of another model kind is refused.
#[test]
fn a_tool_reads_as_a_pseudotime_readout_of_its_own_model_only() {
    use scinterp_export::steering::pseudotime_readout;
    let dir = tempfile::tempdir().unwrap();
    let tool_dir = dir.path().join("gf");
    export_tool(
        &ExportConfig {
            construction: Construction::WeightsQk,
            adaptor: AdaptorKind::Supervised,
            ..pbmc("geneformer", &tool_dir)
        },
        &Quiet,
    )
    .unwrap();
    let geneformer = scinterp_models::load(&assets().join("geneformer"), true).unwrap();
    let readout = pseudotime_readout(&tool_dir, &geneformer).unwrap();
    let loaded = read_tool(&tool_dir).unwrap();
    let tokens: Vec<u32> = loaded.card.panel.iter().map(|g| g.token).collect();
    assert_eq!(readout.readout.tokens, tokens);
    assert_eq!(readout.panel_genes, tokens.len());
    assert!(readout.same_weights);
    // The gradient predicts the tool's pseudotime change between two expression profiles.
    let (x, n) = reference_expression(&loaded.card, 2);
    assert_eq!(n, 2);
    let g = tokens.len();
    let outputs = loaded.tool.evaluate(&x, 2);
    let predicted: f64 = (0..g)
        .map(|i| (x[g + i] - x[i]) as f64 * readout.readout.weights[i])
        .sum();
    let change = (outputs.pseudotime[1] - outputs.pseudotime[0]) as f64;
    // The evaluation runs in f32: its rounding scales with the pseudotimes, not with their difference.
    let scale = outputs.pseudotime.iter().fold(1e-2f32, |m, t| m.max(t.abs())) as f64;
    assert!(
        (change - predicted).abs() <= 2e-5 * scale && change.abs() > 1e-3,
        "{change} vs {predicted} (pseudotimes {:?})",
        outputs.pseudotime
    );

    // The same tool refused for scGPT: its panel tokens index Geneformer's vocabulary.
    let scgpt = scinterp_models::load(&assets().join("scgpt"), true).unwrap();
    let e = pseudotime_readout(&tool_dir, &scgpt).unwrap_err().to_string();
    assert!(
        e.contains("--pseudotime-tool") && e.contains("geneformer") && e.contains("scgpt"),
        "{e}"
    );
}

/// A killed attention pass resumes from its checkpoint to the same tool bytes as an uninterrupted run; a
/// damaged checkpoint, or one of another export, is refused by name and never resumed. (Here rather than
/// in a test file of its own: every export test binary links tract.)
#[test]
fn an_interrupted_export_resumes_to_the_same_tool() {
    use scinterp_export::error::ExportError;
    use scinterp_export::pipeline::checkpoint_path;
    let dir = tempfile::tempdir().unwrap();
    // 150 reference cells: batches of 64, 64 and 22.
    let config = |out: &Path| ExportConfig {
        max_reference_cells: 150,
        heads: Some("1.0,2.1".into()),
        ..pbmc("scgpt", out)
    };
    let whole = dir.path().join("whole");
    export_tool(&config(&whole), &Quiet).unwrap();
    assert!(
        !checkpoint_path(&whole).exists(),
        "a finished export leaves no checkpoint"
    );

    let cut = dir.path().join("cut");
    let checkpoint = checkpoint_path(&cut);
    let stop_after_one = |out: &Path| ExportConfig {
        stop_after_batches: Some(1),
        ..config(out)
    };
    let e = export_tool(&stop_after_one(&cut), &Quiet).unwrap_err();
    assert!(matches!(e, ExportError::Stopped { batches: 1, .. }), "{e}");
    assert!(
        checkpoint.exists() && !cut.exists(),
        "a stopped export keeps its checkpoint, writes no tool"
    );

    // A flipped byte is caught by the checksum; another export's settings are refused.
    let good = std::fs::read(&checkpoint).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 4;
    std::fs::write(&checkpoint, &bad).unwrap();
    let e = export_tool(&config(&cut), &Quiet).unwrap_err().to_string();
    assert!(e.contains("cut.checkpoint") && e.contains("checksum"), "{e}");
    std::fs::write(&checkpoint, &good).unwrap();
    let other = ExportConfig {
        heads: Some("1.0".into()),
        ..config(&cut)
    };
    let e = export_tool(&other, &Quiet).unwrap_err().to_string();
    assert!(
        e.contains("cut.checkpoint") && e.contains("another export"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&checkpoint).unwrap(),
        good,
        "a refused checkpoint is left as it was"
    );

    // Resumed: one more batch and a stop, then the rest.
    let e = export_tool(&stop_after_one(&cut), &Quiet).unwrap_err();
    assert!(matches!(e, ExportError::Stopped { batches: 1, .. }), "{e}");
    assert_ne!(
        std::fs::read(&checkpoint).unwrap(),
        good,
        "the second stop saved two batches"
    );
    export_tool(&config(&cut), &Quiet).unwrap();
    assert!(!checkpoint.exists());
    for file in ["tool.safetensors", "tool.onnx"] {
        assert_eq!(
            std::fs::read(whole.join(file)).unwrap(),
            std::fs::read(cut.join(file)).unwrap(),
            "{file} of the resumed export"
        );
    }
}

/// The root cell anchors the ordering: even when the seeded split would hold it out, it is fitted on and
/// never scored.
#[test]
fn the_root_cell_is_never_held_out() {
    use scinterp_export::cells::{labels, read_cells};
    let dir = tempfile::tempdir().unwrap();
    let config = ExportConfig {
        heldout: 0.9,
        construction: Construction::WeightsQk,
        heads: Some("0.0".into()),
        ..pbmc("scgpt", &dir.path().join("t"))
    };
    let m = read_cells(&CellInput {
        open: OpenOptions {
            obs_columns: vec![config.label_column.clone()],
            ..Default::default()
        },
        ..config.cells.clone()
    })
    .unwrap();
    let text = labels(&m, &config.label_column, &config.cells.path).unwrap();
    let mut classes = text.clone();
    classes.sort();
    classes.dedup();
    let y: Vec<usize> = text.iter().map(|l| classes.binary_search(l).unwrap()).collect();
    let (_, held) = scinterp_export::tool::split(&y, classes.len(), config.heldout, config.seed);
    assert!(
        held.contains(&0),
        "the test needs a split that would hold the root (cell 0) out"
    );
    export_tool(&config, &Quiet).unwrap();
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("t/card.json")).unwrap()).unwrap();
    let names: Vec<&str> = card["metrics"]["heldout_cell_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), held.len() - 1);
    assert!(!names.contains(&m.cell_names[0].as_str()), "the root was scored");
}
