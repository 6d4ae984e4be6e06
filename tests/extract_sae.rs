//! End-to-end tests of `scinterp extract` (activation stores: values, resume after a kill, refusals)
//! and `scinterp sae` (training on planted dictionaries, SAELens files, encode, eval, width checks).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixture, relative_error, ExpectedFile};
use safetensors::SafeTensors;
use scinterp_engine::npy::{read_npy_bytes, NpyDtype};
use scinterp_engine::store::ActStore;
use scinterp_models::token_store::{TokenStore, TokenStoreManifest, FORMAT, FORMAT_VERSION};

fn scinterp_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scinterp"));
    cmd.args(args).env("SCINTERP_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run scinterp")
}

fn scinterp(args: &[&str]) -> Output {
    scinterp_env(args, &[])
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scinterp failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks `{n}`: {stderr}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes a token store of `cells` (and scGPT `values`) the way `scinterp tokenize` would.
fn write_token_store(
    dir: &Path,
    tokenizer: &str,
    version: &str,
    cells: &[Vec<u32>],
    values: Option<Vec<Vec<f32>>>,
) {
    TokenStore {
        manifest: TokenStoreManifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            tokenizer: tokenizer.into(),
            tokenizer_version: version.into(),
            options: serde_json::json!({}),
            hash_algorithm: "blake3".into(),
            dictionaries: Default::default(),
            source_path: "test".into(),
            source_hash: String::new(),
            n_cells: cells.len(),
            n_tokens: cells.iter().map(Vec::len).sum(),
            max_len: cells.iter().map(Vec::len).max().unwrap(),
            has_values: values.is_some(),
            n_cells_dropped: 0,
            scinterp_version: "test".into(),
        },
        cell_table: (
            vec!["cell".into()],
            (0..cells.len()).map(|c| vec![format!("c{c}")]).collect(),
        ),
        cells: cells.to_vec(),
        values,
    }
    .write(dir, false)
    .unwrap();
}

/// A V2 Geneformer token store of the tiny_v2 fixture's cells, repeated `copies` times.
fn token_store(dir: &Path, copies: usize) -> Vec<Vec<u32>> {
    let expected = ExpectedFile::open(&fixture("tiny_v2").join("expected.safetensors"));
    let base = expected.cells();
    // Copies after the first have their genes rotated: distinct cells, same vocabulary.
    let cells: Vec<Vec<u32>> = (0..copies)
        .flat_map(|copy| {
            base.iter().map(move |cell| {
                let mut cell = cell.clone();
                let genes = 1..cell.len() - 1;
                let len = genes.len();
                if len > 1 {
                    cell[genes].rotate_left(copy % len);
                }
                cell
            })
        })
        .collect();
    write_token_store(dir, "geneformer", "V2", &cells, None);
    cells
}

fn f32_tensor(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    (t.shape().to_vec(), bytemuck::pod_collect_to_vec(t.data()))
}

#[test]
fn extract_equals_forward_at_gene_positions_and_resumes_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    let cells = token_store(&tokens, 6);
    let model = fixture("tiny_v2");
    let hooks = "hook_embed,blocks.1.hook_resid_post";
    let extract = |out: &Path, dtype: &str, extra: &[&str]| {
        scinterp(
            &[
                &[
                    "extract",
                    "--model",
                    s(&model),
                    "--input",
                    s(&tokens),
                    "--hooks",
                    hooks,
                    "--out",
                    s(out),
                    "--dtype",
                    dtype,
                    "--max-batch-tokens",
                    "64",
                    "--json",
                ],
                extra,
            ]
            .concat(),
        )
    };

    // An uninterrupted run.
    let full = tmp.path().join("full");
    let summary: serde_json::Value = serde_json::from_str(&ok(&extract(&full, "f32", &[]))).unwrap();
    let store = ActStore::open(&full).unwrap();
    let rows = store.rows().unwrap();
    // Gene positions only: <cls> (2), <eos> (3) and <pad>/<mask> get no row.
    let genes: usize = cells.iter().flatten().filter(|&&t| t > 3).count();
    assert_eq!(rows.len(), genes);
    assert_eq!(summary["n_rows"], genes);
    assert!(rows
        .iter()
        .all(|r| r[2] > 3 && cells[r[0] as usize][r[1] as usize] == r[2] as u32));

    // The stored rows equal `scinterp forward` at those positions.
    let fwd = tmp.path().join("fwd.safetensors");
    ok(&scinterp(&[
        "forward",
        "--model",
        s(&model),
        "--input",
        s(&tokens),
        "--hooks",
        hooks,
        "--out",
        s(&fwd),
    ]));
    let bytes = std::fs::read(&fwd).unwrap();
    for hook in ["hook_embed", "blocks.1.hook_resid_post"] {
        let (shape, padded) = f32_tensor(&bytes, hook);
        let (max_len, d) = (shape[1], shape[2]);
        let array = store.hook(hook).unwrap();
        let mut got = vec![0.0f32; rows.len() * d];
        array.read_rows(0, &mut got);
        let want: Vec<f64> = rows
            .iter()
            .flat_map(|r| {
                let at = (r[0] as usize * max_len + r[1] as usize) * d;
                padded[at..at + d].iter().map(|&v| v as f64)
            })
            .collect();
        let err = relative_error(&got, &want);
        assert!(err < 1e-5, "{hook}: {err}");
    }

    // Killed after the second batch's rows were written but before its checkpoint, then rerun.
    let resumed = tmp.path().join("resumed");
    let killed = extract(&resumed, "f32", &["--stop-after-batches", "2"]);
    fails_with(&killed, &["stopped after 2 batches"]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(resumed.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], false);
    let done = manifest["cells_complete"].as_u64().unwrap();
    assert!(done > 0 && (done as usize) < cells.len(), "cells_complete {done}");
    assert!(
        ActStore::open(&resumed).is_err(),
        "an unfinished store must not open"
    );
    let rerun: serde_json::Value = serde_json::from_str(&ok(&extract(&resumed, "f32", &[]))).unwrap();
    assert_eq!(rerun["resumed_from_cell"], done);
    for name in [
        "rows.npy",
        "hook_embed.npy",
        "blocks.1.hook_resid_post.npy",
        "manifest.json",
    ] {
        assert!(
            std::fs::read(full.join(name)).unwrap() == std::fs::read(resumed.join(name)).unwrap(),
            "{name} differs after the resume"
        );
    }
    // Complete: a rerun does nothing; other settings are refused and change nothing.
    ok(&extract(&resumed, "f32", &[]));
    let before = std::fs::read(resumed.join("hook_embed.npy")).unwrap();
    fails_with(&extract(&resumed, "f16", &[]), &["other settings", "dtype"]);
    assert!(before == std::fs::read(resumed.join("hook_embed.npy")).unwrap());

    // f16 by default, readable as numpy's <f2.
    let half = tmp.path().join("half");
    ok(&scinterp(&[
        "extract",
        "--model",
        s(&model),
        "--input",
        s(&tokens),
        "--hooks",
        "blocks.1.hook_resid_post",
        "--out",
        s(&half),
    ]));
    let (header, _) = read_npy_bytes(&half.join("blocks.1.hook_resid_post.npy")).unwrap();
    assert_eq!(header.dtype, NpyDtype::F16);
    assert_eq!(header.shape, vec![genes, 128]);
}

#[test]
fn extract_refuses_bad_inputs_with_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    token_store(&tokens, 1);
    let model = fixture("tiny_v2");
    let out = tmp.path().join("acts");
    let run = |input: &Path, hooks: &str, out: &Path| {
        scinterp(&[
            "extract",
            "--model",
            s(&model),
            "--input",
            s(input),
            "--hooks",
            hooks,
            "--out",
            s(out),
        ])
    };
    fails_with(&run(&tokens, "blocks.9.hook_resid_post", &out), &["layer 9"]);
    fails_with(
        &run(&tmp.path().join("nope"), "hook_embed", &out),
        &["not a token store"],
    );
    // A folder with other files is never written into.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "x").unwrap();
    fails_with(&run(&tokens, "hook_embed", &busy), &["not an activation store"]);
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    // A truncated hook file is found by the readers.
    ok(&run(&tokens, "hook_embed", &out));
    let path = out.join("hook_embed.npy");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let sae = tmp.path().join("sae");
    fails_with(
        &scinterp(&[
            "sae",
            "train",
            "--acts",
            s(&out),
            "--hook",
            "hook_embed",
            "--d-sae",
            "64",
            "--k",
            "4",
            "--out",
            s(&sae),
        ]),
        &["hook_embed.npy", "truncated"],
    );
    assert!(!sae.exists());
}

#[test]
fn sae_train_recovers_planted_atoms_and_encode_eval_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = tmp.path().join("acts");
    ok(&scinterp(&[
        "sae",
        "synth",
        "--d-in",
        "32",
        "--atoms",
        "128",
        "--rows",
        "60000",
        "--active",
        "3",
        "--seed",
        "7",
        "--out",
        s(&acts),
    ]));
    let sae = tmp.path().join("sae");
    let report: serde_json::Value = serde_json::from_str(&ok(&scinterp(&[
        "sae",
        "train",
        "--acts",
        s(&acts),
        "--hook",
        "blocks.0.hook_resid_post",
        "--d-sae",
        "256",
        "--k",
        "3",
        "--out",
        s(&sae),
        "--tokens",
        "1500000",
        "--batch-size",
        "1024",
        "--dead-after-tokens",
        "50000",
        "--seed",
        "7",
        "--json",
    ])))
    .unwrap();
    let heldout_fvu = report["heldout"]["fvu"].as_f64().unwrap();
    assert!(heldout_fvu < 0.2, "held-out FVU {heldout_fvu}");
    assert_eq!(report["heldout"]["l0"].as_f64().unwrap(), 3.0);
    assert!(report["heldout_cells"].as_u64().unwrap() > 0);

    // SAELens layout and keys.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sae.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "topk");
    assert_eq!(
        (cfg["d_in"].as_u64(), cfg["d_sae"].as_u64(), cfg["k"].as_u64()),
        (Some(32), Some(256), Some(3))
    );
    assert_eq!(cfg["apply_b_dec_to_input"], true);
    assert_eq!(cfg["normalize_activations"], "none");
    assert_eq!(cfg["metadata"]["hook_name"], "blocks.0.hook_resid_post");
    let weights = std::fs::read(sae.join("sae_weights.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&weights).unwrap();
    assert_eq!(st.tensor("W_enc").unwrap().shape(), &[32, 256]);
    assert_eq!(st.tensor("W_dec").unwrap().shape(), &[256, 32]);
    // Decoder rows stay unit norm on disk (the input scale is folded into the biases).
    let w_dec: Vec<f32> = bytemuck::pod_collect_to_vec(st.tensor("W_dec").unwrap().data());
    for row in w_dec.chunks(32) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "decoder row norm {norm}");
    }
    assert!(cfg["metadata"]["sae_lens_version"].is_string());

    // Eval on the held-out cells, with the planted dictionary.
    let eval: serde_json::Value = serde_json::from_str(&ok(&scinterp(&[
        "sae",
        "eval",
        "--sae",
        s(&sae),
        "--acts",
        s(&acts),
        "--rows",
        "heldout",
        "--truth",
        s(&acts.join("dictionary.npy")),
        "--json",
    ])))
    .unwrap();
    let recovered = eval["recovery"]["recovered_fraction"].as_f64().unwrap();
    assert!(recovered >= 0.9, "recovered {recovered}");
    assert!((eval["rows"]["fvu"].as_f64().unwrap() - heldout_fvu).abs() < 1e-9);

    // Encode: int16 indices and f16 values [rows, k], equal to the engine's encode of the same rows.
    let codes = tmp.path().join("codes");
    ok(&scinterp(&[
        "sae",
        "encode",
        "--sae",
        s(&sae),
        "--acts",
        s(&acts),
        "--out",
        s(&codes),
    ]));
    let (ih, ib) = read_npy_bytes(&codes.join("indices.npy")).unwrap();
    let (vh, vb) = read_npy_bytes(&codes.join("values.npy")).unwrap();
    assert_eq!((ih.dtype, ih.shape.clone()), (NpyDtype::I16, vec![60000, 3]));
    assert_eq!((vh.dtype, vh.shape.clone()), (NpyDtype::F16, vec![60000, 3]));
    let indices: Vec<i16> = bytemuck::pod_collect_to_vec(&ib);
    let values: Vec<half::f16> = bytemuck::pod_collect_to_vec(&vb);
    let folder = scinterp_engine::sae::io::load(&sae).unwrap();
    let store = ActStore::open(&acts).unwrap();
    let array = store.hook("blocks.0.hook_resid_post").unwrap();
    let mut x = vec![0.0f32; 500 * 32];
    array.read_rows(1000, &mut x);
    let want = folder.sae.encode(&x);
    for j in 0..want.indices.len() {
        assert_eq!(indices[1000 * 3 + j] as u32, want.indices[j]);
        assert_eq!(values[1000 * 3 + j], half::f16::from_f32(want.values[j]));
    }

    // An SAE of another width is refused, naming both files.
    let narrow = tmp.path().join("narrow");
    ok(&scinterp(&[
        "sae",
        "synth",
        "--d-in",
        "16",
        "--rows",
        "500",
        "--out",
        s(&narrow),
    ]));
    fails_with(
        &scinterp(&[
            "sae",
            "encode",
            "--sae",
            s(&sae),
            "--acts",
            s(&narrow),
            "--out",
            s(&tmp.path().join("c2")),
        ]),
        &["d_in = 32", "width 16", s(&narrow)],
    );
    // An existing SAE is not overwritten by accident.
    fails_with(
        &scinterp(&[
            "sae",
            "train",
            "--acts",
            s(&acts),
            "--hook",
            "blocks.0.hook_resid_post",
            "--d-sae",
            "64",
            "--k",
            "3",
            "--out",
            s(&sae),
        ]),
        &["already holds an SAE", "--overwrite"],
    );
}

#[test]
fn sae_training_is_reproducible_for_a_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = tmp.path().join("acts");
    ok(&scinterp(&[
        "sae",
        "synth",
        "--d-in",
        "16",
        "--rows",
        "8000",
        "--out",
        s(&acts),
    ]));
    let train = |out: &Path, seed: &str| {
        ok(&scinterp(&[
            "sae",
            "train",
            "--acts",
            s(&acts),
            "--hook",
            "blocks.0.hook_resid_post",
            "--d-sae",
            "64",
            "--k",
            "4",
            "--out",
            s(out),
            "--batch-size",
            "512",
            "--seed",
            seed,
        ]));
        std::fs::read(out.join("sae_weights.safetensors")).unwrap()
    };
    let a = train(&tmp.path().join("a"), "3");
    let b = train(&tmp.path().join("b"), "3");
    let c = train(&tmp.path().join("c"), "4");
    assert!(a == b, "same seed, different weights");
    assert!(a != c, "another seed gave the same weights");
}

/// A disk too small for the store: one clear error before any work, and no half-made store. Needs a
/// small tmpfs; skipped (with a message) where mounting one is not allowed.
#[test]
fn extract_reports_a_full_disk_before_working_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    token_store(&tokens, 40);
    let small = tmp.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs", s(&small)])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let out = small.join("acts");
    let result = scinterp(&[
        "extract",
        "--model",
        s(&fixture("tiny_v2")),
        "--input",
        s(&tokens),
        "--hooks",
        "all",
        "--out",
        s(&out),
        "--dtype",
        "f32",
    ]);
    let leftover = out.exists();
    let _ = Command::new("umount").arg(s(&small)).output();
    fails_with(&result, &["free", "choose another --out"]);
    assert!(!leftover, "a half-made store was left behind");
}

/// `scinterp trace` end to end on the tiny model: an edge table whose statistics are recomputable from
/// its own columns, a summary that accounts for every feature, and clear refusals.
/// A token store, an activation store and SAEs at blocks.0 and blocks.2 of the tiny model.
fn trace_fixture(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let tokens = tmp.join("tokens");
    token_store(&tokens, 4);
    let model = fixture("tiny_v2");
    let acts = tmp.join("acts");
    let (src, tgt) = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post");
    ok(&scinterp(&[
        "extract",
        "--model",
        s(&model),
        "--input",
        s(&tokens),
        "--hooks",
        &format!("{src},{tgt}"),
        "--out",
        s(&acts),
    ]));
    let saes = tmp.join("saes");
    for hook in [src, tgt] {
        ok(&scinterp(&[
            "sae",
            "train",
            "--acts",
            s(&acts),
            "--hook",
            hook,
            "--d-sae",
            "64",
            "--k",
            "4",
            "--out",
            s(&saes.join(hook)),
            "--tokens",
            "20000",
            "--batch-size",
            "256",
            "--splice-cells",
            "0",
        ]));
    }
    (model, tokens, saes)
}

#[test]
fn trace_writes_edges_with_recomputable_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tokens, saes) = trace_fixture(tmp.path());
    let (src, tgt) = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post");
    let edges = tmp.path().join("edges.tsv");
    let trace_to = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "trace",
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--saes",
            s(&saes),
            "--source",
            src,
            "--targets",
            tgt,
            "--out",
            s(out),
            "--json",
        ];
        a.extend_from_slice(extra);
        scinterp(&a)
    };
    let summary: serde_json::Value = serde_json::from_str(&ok(&trace_to(&edges, &["--max-q", "1"]))).unwrap();
    // A finished table is not replaced without --overwrite; the later runs below replace it.
    let first = std::fs::read(&edges).unwrap();
    fails_with(
        &trace_to(&edges, &["--max-q", "0.5"]),
        &["edges.tsv", "already holds a trace table", "--overwrite"],
    );
    assert_eq!(std::fs::read(&edges).unwrap(), first);
    let trace = |extra: &[&str]| {
        let mut a = extra.to_vec();
        a.push("--overwrite");
        trace_to(&edges, &a)
    };
    let requested = summary["features_requested"].as_u64().unwrap();
    assert_eq!(requested, 64);
    assert_eq!(
        summary["features_traced"].as_u64().unwrap()
            + summary["features_skipped_never_fired"].as_u64().unwrap(),
        requested
    );
    let text = std::fs::read_to_string(&edges).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len() as u64, summary["edges_written"].as_u64().unwrap());
    assert!(!rows.is_empty());
    for r in &rows {
        let num = |name: &str| r[col(name)].parse::<f64>().unwrap();
        let (n, mean, sd) = (num("n_cells"), num("mean_change"), num("sd_change"));
        let t = mean / (sd / n.sqrt());
        assert!(
            (t - num("t")).abs() <= 1e-9 * t.abs().max(1.0),
            "t {t} vs {}",
            num("t")
        );
        let p = scinterp_engine::stats::student_t_two_sided(t, n - 1.0);
        assert!(
            (p - num("p")).abs() <= 1e-9 * p.max(1e-300),
            "p {p} vs {}",
            num("p")
        );
        assert!(num("q") >= num("p") && num("q") <= 1.0);
        assert!((num("cohens_d") - mean / sd).abs() <= 1e-9 * (mean / sd).abs().max(1.0));
    }
    // The same table as Parquet.
    let pq = tmp.path().join("edges.parquet");
    let pq_summary: serde_json::Value = serde_json::from_str(&ok(&trace_to(&pq, &["--max-q", "1"]))).unwrap();
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(&pq).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows() as usize, rows.len());
    assert_eq!(pq_summary["edges_written"], summary["edges_written"]);
    // top:N takes the N features that fire in most cells.
    let top: serde_json::Value = serde_json::from_str(&ok(&trace(&["--features", "top:3"]))).unwrap();
    assert_eq!(
        (
            top["features_requested"].as_u64(),
            top["features_traced"].as_u64()
        ),
        (Some(3), Some(3))
    );
    // A stricter q keeps a subset.
    let strict: serde_json::Value = serde_json::from_str(&ok(&trace(&["--max-q", "0.05"]))).unwrap();
    assert!(strict["edges_written"].as_u64().unwrap() <= rows.len() as u64);
    // The sign-flip null leaves the table as it is and reports the rule's empirical FDR.
    let plain_table = std::fs::read_to_string(&edges).unwrap();
    let with_null: serde_json::Value = serde_json::from_str(&ok(&trace(&[
        "--max-q",
        "0.05",
        "--null-permutations",
        "30",
        "--seed",
        "4",
    ])))
    .unwrap();
    assert_eq!(std::fs::read_to_string(&edges).unwrap(), plain_table);
    let null = &with_null["null"];
    let counts: Vec<f64> = null["null_edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(counts.len(), 30);
    let mean = counts.iter().sum::<f64>() / 30.0;
    assert!((null["null_edges_mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    let written = with_null["edges_written"].as_f64().unwrap();
    let pi0 = null["pi0"].as_f64().unwrap();
    assert!(pi0 > 0.0 && pi0 <= 1.0, "{pi0}");
    let want = if written > 0.0 {
        (pi0 * mean / written).min(1.0)
    } else {
        0.0
    };
    assert!((null["empirical_fdr"].as_f64().unwrap() - want).abs() < 1e-12);
    // The fixed rule: the largest p among the edges written, so at most --max-q (q >= p).
    let p_threshold = null["p_threshold"].as_f64();
    assert_eq!(p_threshold.is_some(), written > 0.0);
    assert!(p_threshold.is_none_or(|p| p <= 0.001), "{p_threshold:?}");
    assert!(
        mean < written,
        "the fixture's edges are real: {mean} null vs {written} observed"
    );

    fails_with(
        &scinterp(&[
            "trace",
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--saes",
            s(&saes),
            "--source",
            "blocks.0.hook_mlp_out",
            "--targets",
            tgt,
            "--out",
            s(&tmp.path().join("refused.tsv")),
        ]),
        &["hook_resid_post"],
    );
    fails_with(
        &scinterp(&[
            "trace",
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--saes",
            s(&saes),
            "--source",
            src,
            "--targets",
            "blocks.3.hook_resid_post",
            "--out",
            s(&tmp.path().join("refused.tsv")),
        ]),
        &["no SAE for blocks.3.hook_resid_post"],
    );
}

/// Killed after a checkpoint and rerun, a trace writes the same table; shards merged equal one run.
#[test]
fn trace_resumes_after_a_kill_and_shards_merge_to_the_same_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tokens, saes) = trace_fixture(tmp.path());
    // `scinterp trace …` (the old spelling) and `scinterp trace run …` are the same command.
    let run_as = |command: &[&str], out: &Path, extra: &[&str]| {
        let mut a = command.to_vec();
        a.extend_from_slice(&[
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--saes",
            s(&saes),
            "--source",
            "blocks.0.hook_resid_post",
            "--targets",
            "blocks.2.hook_resid_post",
            "--out",
            s(out),
            "--max-q",
            "1",
            "--chunk-cells",
            "3",
            "--null-permutations",
            "5",
        ]);
        a.extend_from_slice(extra);
        scinterp(&a)
    };
    let run = |out: &Path, extra: &[&str]| run_as(&["trace"], out, extra);
    let full = tmp.path().join("full.tsv");
    ok(&run(&full, &[]));
    let resumed = tmp.path().join("resumed.tsv");
    // The hidden test flag stops the run right after the second chunk's checkpoint, as a kill would.
    let killed = run(&resumed, &["--stop-after-chunks", "2"]);
    assert!(!killed.status.success());
    assert!(
        String::from_utf8_lossy(&killed.stderr).contains("stopped after 2 chunks"),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    assert!(!resumed.exists() && resumed.with_extension("checkpoint").exists());
    ok(&run(&resumed, &[]));
    assert!(
        std::fs::read(&full).unwrap() == std::fs::read(&resumed).unwrap(),
        "resumed table differs"
    );
    assert!(!resumed.with_extension("checkpoint").exists());

    let shards: Vec<std::path::PathBuf> = (0..3).map(|i| tmp.path().join(format!("shard{i}.bin"))).collect();
    for (i, shard) in shards.iter().enumerate() {
        ok(&run_as(&["trace", "run"], shard, &["--shard", &format!("{i}/3")]));
    }
    let merged = tmp.path().join("merged.tsv");
    let list = shards.iter().map(|p| s(p)).collect::<Vec<_>>().join(",");
    ok(&scinterp(&[
        "trace",
        "merge",
        "--shards",
        &list,
        "--out",
        s(&merged),
        "--max-q",
        "1",
    ]));
    assert!(
        std::fs::read(&full).unwrap() == std::fs::read(&merged).unwrap(),
        "merged table differs"
    );
    let two = format!("{},{}", s(&shards[0]), s(&shards[1]));
    fails_with(
        &scinterp(&["trace", "merge", "--shards", &two, "--out", s(&merged)]),
        &["once each"],
    );
}

/// scGPT: a token store with values extracts gene positions only (not <cls>), equal to `forward`, and
/// an SAE trained on it reports the model's expression loss with the SAE spliced in.
#[test]
fn scgpt_extract_and_sae_with_the_spliced_expression_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::scgpt_fixture("tiny");
    let input: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("input.json")).unwrap()).unwrap();
    let as_u32 = |c: &serde_json::Value| -> Vec<u32> {
        c.as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let as_f32 = |c: &serde_json::Value| -> Vec<f32> {
        c.as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    // The fixture's cells, three times (values rotated with their genes to make the copies distinct).
    let mut cells = Vec::new();
    let mut values = Vec::new();
    for copy in 0..3 {
        for (g, v) in input["gene_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(input["values"].as_array().unwrap())
        {
            let (mut g, mut v) = (as_u32(g), as_f32(v));
            let n = g.len() - 1;
            g[1..].rotate_left(copy % n);
            v[1..].rotate_left(copy % n);
            cells.push(g);
            values.push(v);
        }
    }
    let tokens = tmp.path().join("tokens");
    write_token_store(&tokens, "scgpt", "whole-human", &cells, Some(values));
    let acts = tmp.path().join("acts");
    let hook = "blocks.1.hook_resid_post";
    ok(&scinterp(&[
        "extract",
        "--model",
        s(&dir),
        "--input",
        s(&tokens),
        "--hooks",
        hook,
        "--out",
        s(&acts),
        "--dtype",
        "f32",
    ]));
    let store = ActStore::open(&acts).unwrap();
    let rows = store.rows().unwrap();
    let genes: usize = cells.iter().map(|c| c.len() - 1).sum();
    assert_eq!(rows.len(), genes);
    assert!(
        rows.iter().all(|r| r[1] > 0 && r[2] != 41),
        "<cls> must get no row"
    );
    let fwd = tmp.path().join("fwd.safetensors");
    ok(&scinterp(&[
        "forward",
        "--model",
        s(&dir),
        "--input",
        s(&tokens),
        "--hooks",
        hook,
        "--out",
        s(&fwd),
    ]));
    let bytes = std::fs::read(&fwd).unwrap();
    let (shape, padded) = f32_tensor(&bytes, hook);
    let (max_len, d) = (shape[1], shape[2]);
    let mut got = vec![0.0f32; rows.len() * d];
    store.hook(hook).unwrap().read_rows(0, &mut got);
    let want: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            let at = (r[0] as usize * max_len + r[1] as usize) * d;
            padded[at..at + d].iter().map(|&v| v as f64)
        })
        .collect();
    assert!(relative_error(&got, &want) < 1e-5);

    let sae = tmp.path().join("sae");
    let report: serde_json::Value = serde_json::from_str(&ok(&scinterp(&[
        "sae",
        "train",
        "--acts",
        s(&acts),
        "--hook",
        hook,
        "--d-sae",
        "128",
        "--k",
        "8",
        "--out",
        s(&sae),
        "--tokens",
        "20000",
        "--batch-size",
        "128",
        "--holdout",
        "0.3",
        "--splice-cells",
        "4",
        "--json",
    ])))
    .unwrap();
    let spliced = &report["spliced"];
    let (clean, with_sae, zero) = (
        spliced["clean"].as_f64().unwrap(),
        spliced["spliced"].as_f64().unwrap(),
        spliced["zero_ablated"].as_f64().unwrap(),
    );
    assert!(
        clean.is_finite() && with_sae.is_finite() && zero.is_finite(),
        "{spliced}"
    );
    assert!(clean >= 0.0 && with_sae >= 0.0);
}

/// The masked-LM spliced loss (issue 18): the SAE is spliced only where the store has rows and the
/// gene is still there (never at a `<mask>` position, which no store holds), beside zero- and
/// mean-ablation floors.
#[test]
fn geneformer_spliced_loss_skips_masked_positions_and_has_a_mean_floor() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    token_store(&tokens, 6);
    let acts = tmp.path().join("acts");
    let hook = "blocks.1.hook_resid_post";
    ok(&scinterp(&[
        "extract",
        "--model",
        s(&fixture("tiny_v2")),
        "--input",
        s(&tokens),
        "--hooks",
        hook,
        "--out",
        s(&acts),
    ]));
    let sae = tmp.path().join("sae");
    let report: serde_json::Value = serde_json::from_str(&ok(&scinterp(&[
        "sae",
        "train",
        "--acts",
        s(&acts),
        "--hook",
        hook,
        "--d-sae",
        "64",
        "--k",
        "8",
        "--out",
        s(&sae),
        "--tokens",
        "20000",
        "--batch-size",
        "128",
        "--holdout",
        "0.4",
        "--splice-cells",
        "4",
        "--json",
    ])))
    .unwrap();
    let spliced = &report["spliced"];
    // Rows of the first 4 held-out cells: every gene position; 15 % of them are masked.
    let (_, bytes) = read_npy_bytes(&sae.join("heldout_cells.npy")).unwrap();
    let held: Vec<i64> = bytemuck::pod_collect_to_vec(&bytes);
    let rows = ActStore::open(&acts).unwrap().rows().unwrap();
    let gene_rows = rows
        .iter()
        .filter(|r| held[..4.min(held.len())].contains(&(r[0] as i64)))
        .count();
    let n = spliced["rows_spliced"].as_u64().unwrap() as usize;
    assert!(
        n > 0 && n < gene_rows,
        "spliced at {n} of {gene_rows} gene positions"
    );
    for key in [
        "clean",
        "spliced",
        "zero_ablated",
        "mean_ablated",
        "loss_recovered_vs_mean",
    ] {
        assert!(spliced[key].as_f64().unwrap().is_finite(), "{key}: {spliced}");
    }
}

/// A TSV table as rows of (column → text).
fn read_tsv(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split('\t').map(String::from).collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split('\t').map(String::from))
                .collect()
        })
        .collect()
}

/// |a − b| / |b| (0 when equal).
fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        ((a - b) / b).abs()
    }
}

fn num(row: &std::collections::HashMap<String, String>, col: &str) -> f64 {
    row[col]
        .parse()
        .unwrap_or_else(|_| panic!("{col} = {}", row[col]))
}

#[test]
fn analyze_catalog_equals_an_independent_recount_and_layers_match_the_decoders() {
    use std::collections::HashMap;
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, saes) = trace_fixture(tmp.path());
    let acts = tmp.path().join("acts");
    let hook = "blocks.0.hook_resid_post";
    let sae_dir = saes.join(hook);
    let store = ActStore::open(&acts).unwrap();
    let rows = store.rows().unwrap();
    let genes = tmp.path().join("genes.tsv");
    let mut names = String::from("token\tgene_id\tsymbol\n");
    for t in 0..25_000 {
        names.push_str(&format!("{t}\tENSG{t:011}\tG{t}\n"));
    }
    std::fs::write(&genes, names).unwrap();
    let cat = tmp.path().join("catalog");
    let analyze = |extra: &[&str]| {
        let mut args = vec![
            "analyze",
            "--acts",
            s(&acts),
            "--sae",
            s(&sae_dir),
            "--out",
            s(&cat),
            "--format",
            "tsv",
            "--genes",
            s(&genes),
            "--min-support",
            "2",
            "--top-genes",
            "5",
            "--coact-min-cocount",
            "3",
        ];
        args.extend_from_slice(extra);
        scinterp(&args)
    };
    ok(&analyze(&[]));

    // The recount: encode every row with the SAE and count in the plainest way.
    let sae = scinterp_engine::sae::io::load(&sae_dir).unwrap().sae;
    let array = store.hook(hook).unwrap();
    let mut x = vec![0.0f32; rows.len() * array.d()];
    array.read_rows(0, &mut x);
    let codes = sae.encode(&x);
    let d_sae = sae.d_sae;
    let mut fire = vec![0u64; d_sae];
    let mut sum = vec![0.0f64; d_sae];
    let mut cells_fired: Vec<std::collections::HashSet<i32>> = vec![Default::default(); d_sae];
    let mut per_gene: HashMap<(usize, i32), (u64, f64)> = HashMap::new();
    let mut positions: HashMap<i32, u64> = HashMap::new();
    let mut active_rows: Vec<Vec<usize>> = Vec::new();
    for (r, meta) in rows.iter().enumerate() {
        *positions.entry(meta[2]).or_default() += 1;
        let (idx, val) = codes.row(r);
        let mut act = Vec::new();
        for (&f, &v) in idx.iter().zip(val) {
            if v > 0.0 {
                let f = f as usize;
                fire[f] += 1;
                sum[f] += v as f64;
                cells_fired[f].insert(meta[0]);
                let e = per_gene.entry((f, meta[2])).or_default();
                e.0 += 1;
                e.1 += v as f64;
                act.push(f);
            }
        }
        active_rows.push(act);
    }
    let features = read_tsv(&cat.join("features.tsv"));
    assert_eq!(features.len(), d_sae);
    for row in &features {
        let f = num(row, "feature") as usize;
        assert_eq!(num(row, "fire_count") as u64, fire[f], "feature {f}");
        assert_eq!(
            num(row, "cells_fired") as usize,
            cells_fired[f].len(),
            "feature {f}"
        );
        assert_eq!(num(row, "alive") == 1.0, fire[f] > 0);
        if fire[f] > 0 {
            let mean = sum[f] / fire[f] as f64;
            assert!(rel(num(row, "mean_when_active"), mean) < 1e-9, "feature {f}");
            let norm = sae.decoder_row(f).iter().map(|x| x * x).sum::<f32>().sqrt() as f64;
            assert!((num(row, "decoder_norm") - norm).abs() < 1e-6);
        }
    }
    let gene_rows = read_tsv(&cat.join("genes.tsv"));
    assert_eq!(gene_rows.len(), positions.len());
    for g in &gene_rows {
        let t = num(g, "token") as i32;
        assert_eq!(num(g, "n_positions") as u64, positions[&t]);
        assert_eq!(g["gene_id"], format!("ENSG{t:011}"));
        assert_eq!(g["symbol"], format!("G{t}"));
    }
    // Top genes by mass and by conditional mean (support ≥ 2), ties broken by token.
    let top = read_tsv(&cat.join("top_genes.tsv"));
    for f in (0..d_sae).filter(|&f| fire[f] > 0) {
        let mut genes: Vec<(i32, u64, f64)> = per_gene
            .iter()
            .filter(|((g, _), _)| *g == f)
            .map(|(&(_, t), &(n, s))| (t, n, s))
            .collect();
        genes.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        let want_mass: Vec<i32> = genes.iter().take(5).map(|g| g.0).collect();
        genes.retain(|g| g.1 >= 2);
        genes.sort_by(|a, b| {
            (b.2 / b.1 as f64)
                .total_cmp(&(a.2 / a.1 as f64))
                .then(a.0.cmp(&b.0))
        });
        let want_mean: Vec<i32> = genes.iter().take(5).map(|g| g.0).collect();
        for (ranking, want) in [("mass", want_mass), ("conditional_mean", want_mean)] {
            let got: Vec<i32> = top
                .iter()
                .filter(|r| num(r, "feature") as usize == f && r["ranking"] == ranking)
                .map(|r| num(r, "token") as i32)
                .collect();
            assert_eq!(got, want, "feature {f} by {ranking}");
        }
    }
    for r in &top {
        let (n, s) = per_gene[&(num(r, "feature") as usize, num(r, "token") as i32)];
        assert_eq!(num(r, "n_fired") as u64, n);
        assert!(rel(num(r, "mean_when_fired"), s / n as f64) < 1e-9);
    }
    // Co-activation edges: co-counts and expected co-counts recounted per cell.
    let edges = read_tsv(&cat.join("coactivation.tsv"));
    assert!(!edges.is_empty(), "the fixture has co-activating features");
    for e in &edges {
        let (a, b) = (num(e, "feature_a") as usize, num(e, "feature_b") as usize);
        let (mut o, mut expected) = (0u64, 0.0f64);
        let mut per_cell: HashMap<i32, (f64, f64, f64)> = HashMap::new();
        for (r, act) in active_rows.iter().enumerate() {
            let c = per_cell.entry(rows[r][0]).or_default();
            c.0 += 1.0;
            c.1 += act.contains(&a) as u8 as f64;
            c.2 += act.contains(&b) as u8 as f64;
            o += (act.contains(&a) && act.contains(&b)) as u64;
        }
        for (n, ca, cb) in per_cell.values() {
            expected += ca * cb / n;
        }
        assert_eq!(num(e, "cocount") as u64, o, "{a}-{b}");
        assert!(rel(num(e, "expected_cocount"), expected) < 1e-9, "{a}-{b}");
        assert!(num(e, "q_value") <= 0.05 && num(e, "pmi") >= 1.0 && o >= 3);
        // The row alone gives z (and p = norm.sf(z), checked against scipy in the engine's fixture test).
        let z = (o as f64 - num(e, "expected_cocount") - 0.5) / num(e, "null_variance").sqrt();
        assert!((z - num(e, "z")).abs() < 1e-9 * z.abs().max(1.0), "{a}-{b}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cat.join("catalog.json")).unwrap()).unwrap();
    let alive = fire.iter().filter(|&&n| n > 0).count();
    assert_eq!(summary["alive"].as_u64(), Some(alive as u64));
    assert_eq!(summary["n_rows"].as_u64(), Some(rows.len() as u64));
    let explained = summary["svd"]["variance_explained"].as_f64().unwrap();
    assert!(explained > 0.0 && explained <= 1.0 + 1e-9, "{explained}");
    // The SVD comparison re-derived from the features table and the codes: projected-norm fraction
    // counts, the published "invisible" count, and the matched-L0 rank.
    let svd = &summary["svd"];
    let alive_rows: Vec<_> = features.iter().filter(|r| num(r, "alive") == 1.0).collect();
    for t in ["0.25", "0.5", "0.75", "0.9"] {
        let want = alive_rows
            .iter()
            .filter(|r| num(r, "svd_projection").powi(2) >= t.parse::<f64>().unwrap())
            .count();
        // svd_projection is written rounded to f64 text; allow a feature at the threshold either way.
        let got = svd["projected_norm_sq_at_least"][t].as_u64().unwrap() as usize;
        assert!(got.abs_diff(want) <= 1, "{t}: {got} vs {want}");
    }
    let invisible = alive_rows
        .iter()
        .filter(|r| num(r, "svd_max_abs_cos") <= 0.5)
        .count();
    assert_eq!(svd["invisible_published_rule"].as_u64(), Some(invisible as u64));
    let l0 = active_rows.iter().map(Vec::len).sum::<usize>() as f64 / rows.len() as f64;
    assert!(rel(svd["sae_mean_l0"].as_f64().unwrap(), l0) < 1e-12, "{svd}");
    assert_eq!(svd["matched_rank"].as_u64(), Some((l0.round() as u64).max(1)));
    let at_rank = svd["svd_variance_explained_at_matched_rank"].as_f64().unwrap();
    assert!(at_rank > 0.0 && at_rank <= 1.0 + 1e-9, "{at_rank}");

    // Refusals: an existing catalog, a genes file of the wrong shape.
    fails_with(&analyze(&[]), &["already holds a catalog", "--overwrite"]);
    let bad = tmp.path().join("bad.tsv");
    std::fs::write(&bad, "id\tname\n1\tA\n").unwrap();
    fails_with(
        &scinterp(&[
            "analyze",
            "--acts",
            s(&acts),
            "--sae",
            s(&sae_dir),
            "--out",
            s(&tmp.path().join("c2")),
            "--genes",
            s(&bad),
        ]),
        &["bad.tsv", "token<TAB>gene_id"],
    );

    // Layers: every alive feature's best |cos| against the other SAE's alive decoders.
    let layers = tmp.path().join("layers");
    let other = saes.join("blocks.2.hook_resid_post");
    ok(&scinterp(&[
        "layers",
        "--acts",
        s(&acts),
        "--saes",
        &format!("{},{}", s(&sae_dir), s(&other)),
        "--out",
        s(&layers),
        "--format",
        "tsv",
        "--highway-min-fires",
        "5",
        "--highway-min-cocount",
        "3",
    ]));
    let sae_b = scinterp_engine::sae::io::load(&other).unwrap().sae;
    let mut x_b = vec![0.0f32; rows.len() * array.d()];
    store
        .hook("blocks.2.hook_resid_post")
        .unwrap()
        .read_rows(0, &mut x_b);
    let codes_b = sae_b.encode(&x_b);
    let alive_b: Vec<bool> = (0..sae_b.d_sae)
        .map(|f| {
            codes_b
                .indices
                .iter()
                .zip(&codes_b.values)
                .any(|(&i, &v)| i as usize == f && v > 0.0)
        })
        .collect();
    let unit = |w: &[f32]| -> Vec<f64> {
        let n = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        w.iter().map(|&x| x as f64 / n).collect()
    };
    let matches = read_tsv(&layers.join("matches.tsv"));
    assert_eq!(matches.len(), alive);
    for m in &matches {
        let f = num(m, "feature") as usize;
        let wa = unit(sae.decoder_row(f));
        let best = (0..sae_b.d_sae)
            .filter(|&g| alive_b[g])
            .map(|g| {
                unit(sae_b.decoder_row(g))
                    .iter()
                    .zip(&wa)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    .abs()
            })
            .fold(0.0f64, f64::max);
        assert!(
            (num(m, "abs_cos") - best).abs() < 1e-5,
            "feature {f}: {} vs {best}",
            num(m, "abs_cos")
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(layers.join("layers.json")).unwrap()).unwrap();
    assert_eq!(
        summary["matching"]["pairs"][0]["alive_from"].as_u64(),
        Some(alive as u64)
    );
    assert!(
        summary["highways"]["pairs"][0]["eligible_sources"]
            .as_u64()
            .unwrap()
            > 0
    );
}

/// `scinterp layers --control-saes`: without a control layers.json and the log say none was run; a
/// control trained with another `--seed` is compared with its primary (the reproduced count recounted
/// here from the decoders); a control that is the primary with permuted, sign-flipped features
/// reproduces every feature and keeps every cross-layer match; bad controls are refused.
#[test]
fn layers_reports_a_different_seed_control() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, saes) = trace_fixture(tmp.path());
    let acts = tmp.path().join("acts");
    let (h0, h2) = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post");
    let (primary, next) = (saes.join(h0), saes.join(h2));
    let out = tmp.path().join("layers");
    let layers = |controls: &[&Path]| {
        let mut args = vec![
            "layers".to_string(),
            "--acts".into(),
            s(&acts).into(),
            "--saes".into(),
            format!("{},{}", s(&primary), s(&next)),
            "--out".into(),
            s(&out).into(),
            "--format".into(),
            "tsv".into(),
            "--overwrite".into(),
            "--json".into(),
        ];
        if !controls.is_empty() {
            args.push("--control-saes".into());
            args.push(controls.iter().map(|p| s(p)).collect::<Vec<_>>().join(","));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        scinterp(&args)
    };
    let json = |out: &Output| -> serde_json::Value {
        ok(out);
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join("layers/layers.json")).unwrap())
                .unwrap();
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(file["seed_control"], printed["seed_control"]);
        file
    };

    let none = layers(&[]);
    let summary = json(&none);
    assert!(summary["seed_control"].is_null());
    let warning = summary["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("no different-seed control was run"),
        "{warning}"
    );
    assert!(String::from_utf8_lossy(&none.stderr).contains("no different-seed control was run"));
    // `sae train` gives each hook its own seed: no shared-initialisation warning.
    let seed_of =
        |hook: &str, seed: u64| serde_json::json!(scinterp_engine::sae::train::hook_seed(seed, hook));
    assert_eq!(
        summary["training_seeds"],
        serde_json::json!([seed_of(h0, 0), seed_of(h2, 0)])
    );
    assert!(
        !summary["warnings"].to_string().contains("same seed"),
        "{}",
        summary["warnings"]
    );
    let primary_matches = summary["matching"]["pairs"][0]["matches"].as_u64().unwrap();

    // A control trained from another seed.
    let trained = tmp.path().join("control-seed7");
    ok(&scinterp(&[
        "sae",
        "train",
        "--acts",
        s(&acts),
        "--hook",
        h0,
        "--d-sae",
        "64",
        "--k",
        "4",
        "--out",
        s(&trained),
        "--tokens",
        "20000",
        "--batch-size",
        "256",
        "--splice-cells",
        "0",
        "--seed",
        "7",
        // Seed 7 holds out none of the 12 cells.
        "--holdout",
        "0",
    ]));
    let run = layers(&[&trained]);
    let summary = json(&run);
    let control = &summary["seed_control"];
    let h = &control["hooks"][0];
    assert_eq!(h["hook"], h0);
    assert_eq!(
        (&h["primary_seed"], &h["control_seed"]),
        (&seed_of(h0, 0), &seed_of(h0, 7))
    );
    assert!(!summary["warnings"]
        .to_string()
        .contains("no different-seed control"));
    // Recount: alive features from the codes, best |cos| of unit decoders.
    let store = ActStore::open(&acts).unwrap();
    let array = store.hook(h0).unwrap();
    let mut x = vec![0.0f32; store.rows().unwrap().len() * array.d()];
    array.read_rows(0, &mut x);
    let alive = |sae: &scinterp_engine::sae::TopKSae| -> Vec<bool> {
        let codes = sae.encode(&x);
        let mut a = vec![false; sae.d_sae];
        for (&i, &v) in codes.indices.iter().zip(&codes.values) {
            a[i as usize] |= v > 0.0;
        }
        a
    };
    let unit = |w: &[f32]| -> Vec<f64> {
        let n = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        w.iter().map(|&x| x as f64 / n).collect()
    };
    let pa = scinterp_engine::sae::io::load(&primary).unwrap().sae;
    let ca = scinterp_engine::sae::io::load(&trained).unwrap().sae;
    let (alive_p, alive_c) = (alive(&pa), alive(&ca));
    let (mut reproduced, mut strong, mut n_alive) = (0, 0, 0);
    for f in (0..pa.d_sae).filter(|&f| alive_p[f]) {
        n_alive += 1;
        let wf = unit(pa.decoder_row(f));
        let best = (0..ca.d_sae)
            .filter(|&g| alive_c[g])
            .map(|g| {
                unit(ca.decoder_row(g))
                    .iter()
                    .zip(&wf)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    .abs()
            })
            .fold(0.0f64, f64::max);
        // A feature within rounding of a threshold could go either way.
        assert!((best - 0.7).abs() > 1e-5 && (best - 0.9).abs() > 1e-5);
        reproduced += (best >= 0.7) as u64;
        strong += (best >= 0.9) as u64;
    }
    assert_eq!(h["alive_primary"], n_alive);
    assert_eq!(
        (h["reproduced"].as_u64(), h["strong_reproduced"].as_u64()),
        (Some(reproduced), Some(strong))
    );
    let fraction = h["reproduced_fraction"].as_f64().unwrap();
    assert!((fraction - reproduced as f64 / n_alive as f64).abs() < 1e-12);
    let pair = &control["pairs"][0];
    assert_eq!(
        (&pair["from_sae"], &pair["to_sae"]),
        (&"control".into(), &"primary".into())
    );
    assert_eq!(pair["primary_matches"], primary_matches);
    let table = read_tsv(&out.join("seed_control_matches.tsv"));
    let same_hook: Vec<_> = table.iter().filter(|r| r["comparison"] == "same_hook").collect();
    assert_eq!(same_hook.len() as u64, n_alive);
    assert_eq!(
        same_hook.iter().filter(|r| num(r, "abs_cos") >= 0.7).count() as u64,
        reproduced
    );

    // A planted control: the primary's features reversed, odd decoders sign-flipped, another seed.
    let folder = scinterp_engine::sae::io::load(&primary).unwrap();
    let mut sae = folder.sae.clone();
    let d = sae.d_in;
    for f in 0..sae.d_sae {
        let g = sae.d_sae - 1 - f;
        let sign = if f % 2 == 1 { -1.0 } else { 1.0 };
        sae.w_enc[g * d..(g + 1) * d].copy_from_slice(folder.sae.encoder_row(f));
        sae.b_enc[g] = folder.sae.b_enc[f];
        for (o, i) in sae.w_dec[g * d..(g + 1) * d]
            .iter_mut()
            .zip(folder.sae.decoder_row(f))
        {
            *o = sign * i;
        }
    }
    let mut metadata = folder.metadata.clone();
    metadata["scinterp"]["training"]["seed"] = 12345.into();
    let planted = tmp.path().join("control-planted");
    scinterp_engine::sae::io::save(&planted, &sae, &metadata).unwrap();
    let summary = json(&layers(&[&planted]));
    let h = &summary["seed_control"]["hooks"][0];
    assert_eq!(h["reproduced"], n_alive);
    assert_eq!(h["reproduced_fraction"], 1.0);
    assert_eq!(summary["seed_control"]["pairs"][0]["matches"], primary_matches);
    let spans = &summary["seed_control"]["lifespans"][0];
    assert_eq!(spans["mean_lifespan"], spans["primary_mean_lifespan"]);

    // Refusals: two controls of one hook; a control of a hook not compared.
    let err = layers(&[&trained, &planted]);
    fails_with(&err, &["--control-saes", "at most one control per hook"]);
    fails_with(&layers(&[&next, &saes.join("nope")]), &["nope"]);
    let only_first = tmp.path().join("layers-one");
    fails_with(
        &scinterp(&[
            "layers",
            "--acts",
            s(&acts),
            "--saes",
            &format!("{},{}", s(&primary), s(&primary)),
            "--control-saes",
            s(&next),
            "--out",
            s(&only_first),
        ]),
        &[
            "--control-saes",
            "blocks.2.hook_resid_post, which no SAE of --saes is on",
        ],
    );
}

/// `scinterp effects`: α = 1 changes nothing; ablation and steering rows for every feature that fired,
/// with the control columns; a malformed readout set is refused.
#[test]
fn effects_ablate_and_steer_with_a_random_direction_control() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tokens, saes) = trace_fixture(tmp.path());
    let out = tmp.path().join("effects.tsv");
    let run = |readout: &str| {
        scinterp(&[
            "effects",
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--saes",
            s(&saes),
            "--source",
            "blocks.0.hook_resid_post",
            "--features",
            "all",
            "--alphas",
            "0,1,3",
            "--readout-tokens",
            readout,
            "--out",
            s(&out),
            "--json",
        ])
    };
    let summary: serde_json::Value = serde_json::from_str(&ok(&run("5,6,7,8,9,10,11,12,13,14,15"))).unwrap();
    let rows = read_tsv(&out);
    let fired = summary["features_fired"].as_u64().unwrap() as usize;
    assert!(fired > 0);
    assert_eq!(rows.len(), 3 * fired);
    for r in &rows {
        assert!(num(r, "n_cells") >= 1.0);
        if num(r, "alpha") == 1.0 {
            assert_eq!(num(r, "other_logit_change"), 0.0, "α = 1 is the identity edit");
            assert_eq!(num(r, "control_target_minus_other"), 0.0);
        }
        let (p, q) = (num(r, "vs_control_p"), num(r, "vs_control_q"));
        assert!(p.is_nan() || (q >= p && q <= 1.0));
    }
    assert!(
        rows.iter()
            .any(|r| num(r, "alpha") == 0.0 && num(r, "other_logit_change") != 0.0),
        "ablation changes the logits"
    );
    fails_with(&run("5,x"), &["--readout-tokens", "`x` is not a token id"]);
    let table = std::fs::read(&out).unwrap();
    fails_with(
        &run("5,6"),
        &["effects.tsv", "already holds an effects table", "--overwrite"],
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        table,
        "a refused run leaves the table as it was"
    );
}
