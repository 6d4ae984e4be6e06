//! End-to-end tests of the `scinterp` binary: `forward` output layout and values, bad input (one clear
//! error, non-zero exit, no panic), and the demo.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{
    as_strs, assert_fails_with, assets, f32_tensor, files, fixture, fixtures, ok, real_rows, relative_error,
    s, scinterp, scinterp_env, shared_data, shared_data_all, shared_data_for_part, write_token_store,
    ExpectedFile,
};
use safetensors::SafeTensors;

#[test]
fn forward_writes_every_hook_lengths_and_logits_matching_transformers() {
    let dir = fixture("tiny_v2");
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("out.safetensors");
    let out = scinterp(&[
        "forward",
        "--model",
        s(&dir),
        "--input",
        s(&dir.join("tokens.json")),
        "--hooks",
        "all",
        "--logits",
        "--out",
        s(&out_path),
        "--json",
        "--threads",
        "2",
    ]);
    ok(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(summary["cells"], 3);
    assert_eq!(summary["tokens"], 64 + 20 + 7);

    let expected = ExpectedFile::open(&dir.join("expected.safetensors"));
    let bytes = std::fs::read(&out_path).unwrap();
    let written = SafeTensors::deserialize(&bytes).unwrap();
    let lengths: Vec<usize> = vec![64, 20, 7];
    let l = written.tensor("lengths").unwrap();
    assert_eq!(l.dtype(), safetensors::Dtype::I64);
    let got_lengths: Vec<i64> = l
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(got_lengths, vec![64, 20, 7]);

    // 1 + 4·4 hooks + lengths + logits.
    assert_eq!(written.len(), 17 + 2);
    for name in written.names() {
        if name == "lengths" {
            continue;
        }
        let t = written.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let width = if name == "logits" { 96 } else { 128 };
        assert_eq!(t.shape(), &[3, 64, width], "{name}");
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        // Zeros after each cell's length.
        for (c, &len) in lengths.iter().enumerate() {
            let pad = &values[(c * 64 + len) * width..(c + 1) * 64 * width];
            assert!(
                pad.iter().all(|&v| v == 0.0),
                "{name}: padding of cell {c} is not zero"
            );
        }
        let want = real_rows(expected.get(name), &lengths);
        let got: Vec<f32> = lengths
            .iter()
            .enumerate()
            .flat_map(|(c, &len)| values[c * 64 * width..(c * 64 + len) * width].to_vec())
            .collect();
        let err = relative_error(&got, &want);
        assert!(err <= 1e-4, "{name}: {err:e}");
    }
}

#[test]
fn forward_with_selected_hooks_writes_only_those() {
    let dir = fixture("tiny_v2");
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("o.safetensors");
    let out = scinterp(&[
        "forward",
        "--model",
        s(&dir),
        "--input",
        s(&dir.join("tokens.json")),
        "--hooks",
        "blocks.3.hook_resid_post,hook_embed",
        "--out",
        s(&out_path),
    ]);
    ok(&out);
    let bytes = std::fs::read(&out_path).unwrap();
    let written = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<&str> = written.names();
    names.sort();
    assert_eq!(names, vec!["blocks.3.hook_resid_post", "hook_embed", "lengths"]);
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn forward_err(model: &Path, input: &str, hooks: &str) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.safetensors");
    let o = scinterp(&[
        "forward",
        "--model",
        s(model),
        "--input",
        input,
        "--hooks",
        hooks,
        "--out",
        s(&out),
    ]);
    assert!(!out.exists(), "a failed run must not leave an output file");
    o
}

#[test]
fn bad_inputs_get_one_clear_error_and_no_panic() {
    let model = fixture("tiny_v2");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    let too_big = write(t, "big.json", r#"{"input_ids": [[2, 5, 3], [2, 96, 3]]}"#);
    assert_fails_with(
        &forward_err(&model, &too_big, "all"),
        &["cell 1 position 1", "token id 96", "vocabulary"],
    );

    let long: Vec<String> = (0..65).map(|i| (4 + i % 90).to_string()).collect();
    let too_long = write(
        t,
        "long.json",
        &format!(r#"{{"input_ids": [[{}]]}}"#, long.join(",")),
    );
    assert_fails_with(
        &forward_err(&model, &too_long, "all"),
        &["65 tokens", "at most 64"],
    );

    let empty = write(t, "empty.json", r#"{"input_ids": [[2, 3], []]}"#);
    assert_fails_with(
        &forward_err(&model, &empty, "all"),
        &["empty.json", "cell 1 is empty"],
    );

    let good = write(t, "good.json", r#"{"input_ids": [[2, 5, 3]]}"#);
    assert_fails_with(
        &forward_err(&model, &good, "blocks.4.hook_resid_post"),
        &["layer 4", "4 layers"],
    );
    assert_fails_with(
        &forward_err(&model, &good, "blocks.1.hook_resid"),
        &["unknown hook point"],
    );
    assert_fails_with(&forward_err(&model, &good, ""), &["nothing to write"]);

    // A model folder without weights.
    let no_weights = t.join("noweights");
    std::fs::create_dir(&no_weights).unwrap();
    std::fs::copy(model.join("config.json"), no_weights.join("config.json")).unwrap();
    assert_fails_with(
        &forward_err(&no_weights, &good, "all"),
        &["holds no weights", "model.safetensors"],
    );

    // A corrupt (truncated) checkpoint.
    let corrupt = t.join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::copy(model.join("config.json"), corrupt.join("config.json")).unwrap();
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::write(corrupt.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_with(
        &forward_err(&corrupt, &good, "all"),
        &["model.safetensors", "not a valid checkpoint"],
    );

    // Weights that do not match the config: every problem listed in one error.
    let mismatch = t.join("mismatch");
    std::fs::create_dir(&mismatch).unwrap();
    std::fs::copy(
        model.join("model.safetensors"),
        mismatch.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(model.join("config.json"))
        .unwrap()
        .replace("\"num_hidden_layers\": 4", "\"num_hidden_layers\": 5")
        .replace("\"intermediate_size\": 256", "\"intermediate_size\": 512");
    std::fs::write(mismatch.join("config.json"), config).unwrap();
    let o = forward_err(&mismatch, &good, "all");
    assert_fails_with(
        &o,
        &[
            "does not match its config",
            "missing tensor `bert.encoder.layer.4.",
            "bert.encoder.layer.0.intermediate.dense.weight` has shape [256, 128], expected [512, 128]",
        ],
    );

    // Not a folder, and a missing input file.
    assert_fails_with(
        &forward_err(&model.join("config.json"), &good, "all"),
        &["not a folder"],
    );
    assert_fails_with(
        &forward_err(&model, "/nonexistent/tokens.json", "all"),
        &["/nonexistent/tokens.json"],
    );
}

#[test]
fn planted_demo_runs_end_to_end_and_reports_what_it_did() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("demo");
    // With the reference data, the demo also runs real cells through the whole pipeline.
    let data = shared_data_for_part("the real-cells step", "");
    let mut args = vec!["demo", "--planted", "--out", s(&out_dir)];
    if let Some(d) = &data {
        args.extend(["--data", s(d)]);
    }
    let out = scinterp(&args);
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("forward") && stdout.contains("replay"),
        "{stdout}"
    );
    for f in [
        "model/config.json",
        "model/model.safetensors",
        "cells.json",
        "forward.safetensors",
        "summary.json",
    ] {
        assert!(out_dir.join(f).is_file(), "demo did not write {f}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["tail_replay_max_abs_diff"].as_f64(), Some(0.0));
    // The catalogue and annotation of the planted programs: most programs come back as best terms, and
    // far more features pick a program than a decoy set.
    let ann = &summary["analyze"]["annotation"];
    let recovered = ann["programs_recovered"].as_u64().unwrap();
    assert!(
        recovered >= 6,
        "only {recovered} of 12 planted programs recovered"
    );
    assert!(
        ann["features_with_a_program"].as_u64().unwrap() > 5 * ann["features_with_a_decoy"].as_u64().unwrap()
    );
    for f in [
        "catalog/features.parquet",
        "catalog/top_genes.parquet",
        "catalog/modules.parquet",
        "layers/matches.parquet",
    ] {
        assert!(out_dir.join(f).is_file(), "demo did not write {f}");
    }
    if data.is_some() {
        let real = &summary["real_cells"];
        assert_eq!(real["catalog"]["n_cells"].as_u64(), Some(2730));
        assert!(real["annotation"]["catalogs"][0]["m"].as_u64().unwrap() > 1_000_000);
        assert!(out_dir.join("real/annotation/annotate.json").is_file());
    }
    for effect in summary["edit_effects"].as_array().unwrap() {
        assert!(
            effect["cell0"].as_f64().unwrap() > 1e-3,
            "the edit must change the edited cell"
        );
        assert_eq!(
            effect["cell1"].as_f64(),
            Some(0.0),
            "cells must not leak into each other"
        );
    }
}

/// The default demo: the embedded models trained on real cells, each beside its random-weight control.
#[test]
fn demo_on_the_embedded_models_shows_what_training_added() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("demo");
    let out = scinterp(&["demo", "--out", s(&out_dir)]);
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("What came back") && stdout.contains("consensus"),
        "{stdout}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    let arms = summary["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 4);
    let arm = |model: &str, weights: &str| {
        arms.iter()
            .find(|a| a["model"] == model && a["weights"] == weights)
            .unwrap_or_else(|| panic!("no arm {model}-{weights}"))
    };
    // Geneformer trained on real PBMCs has far more cell-type features than its control at every layer.
    let (trained, random) = (arm("geneformer", "trained"), arm("geneformer", "random"));
    for (t, r) in trained["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(random["layers"].as_array().unwrap())
    {
        let (t, r) = (
            t["cell_type_features"].as_u64().unwrap(),
            r["cell_type_features"].as_u64().unwrap(),
        );
        assert!(
            t >= 20 && t > 3 * r,
            "{} : trained {t} vs control {r}",
            summary["arms"]
        );
    }
    // The control's model folder holds the same files but other weights.
    let control = out_dir.join("models/geneformer-random");
    assert!(control.join("config.json").is_file() && control.join("model.safetensors").is_file());
    // Ablating the trained model's best cell-type feature lowers its own genes' logits.
    let ablation = trained["effects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["alpha"].as_f64() == Some(0.0))
        .expect("an ablation row");
    assert!(
        ablation["target_minus_other"].as_f64().unwrap() < 0.0,
        "{ablation}"
    );
    // The pseudotime tool orders the held-out erythroid stages (0.81 when measured), and each Geneformer
    // arm's steering has one row per (feature, α) with finite shifts read through it.
    let spearman = summary["pseudotime_tool"]["heldout_stage_spearman"]
        .as_f64()
        .unwrap();
    assert!(spearman > 0.5, "{spearman}");
    assert!(out_dir.join("pseudotime-tool/tool.onnx").is_file());
    for arm in arms.iter().filter(|a| a["model"] == "geneformer") {
        let rows = arm["steering"].as_array().unwrap();
        // 8 features × α {0, 4}; a feature that fires in none of the 100 cells has no row.
        assert!(
            !rows.is_empty() && rows.len() <= 16 && rows.len() % 2 == 0,
            "{arm}"
        );
        for r in rows {
            for k in ["pseudotime_shift", "control_shift", "vs_control", "vs_control_q"] {
                assert!(r[k].as_f64().is_some_and(f64::is_finite), "{k}: {r}");
            }
        }
        let weights = arm["weights"].as_str().unwrap();
        assert!(out_dir
            .join(format!("geneformer-{weights}/steering.tsv"))
            .is_file());
    }
    for arm in arms {
        let name = format!(
            "{}-{}",
            arm["model"].as_str().unwrap(),
            arm["weights"].as_str().unwrap()
        );
        for f in [
            "trace.tsv",
            "annotation/annotate.json",
            "annotation/cell_types.tsv",
        ] {
            assert!(out_dir.join(&name).join(f).is_file(), "{name}/{f} missing");
        }
        assert!(arm["trace"]["edges"].as_u64().unwrap() > 0);
    }
    for w in ["trained", "random"] {
        let p = summary["consensus"][w]["p_value"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0);
        assert!(out_dir.join("consensus").join(w).join("consensus.json").is_file());
    }
}

#[test]
fn tokenize_h5ad_for_geneformer_then_forward_from_the_store() {
    let Some(dicts) = shared_data("geneformer/v2") else {
        return;
    };
    let input = fixtures().join("cells/csr_gzip.h5ad");
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = scinterp(&[
        "tokenize",
        "--input",
        s(&input),
        "--model",
        "geneformer-v2",
        "--dictionaries",
        s(&dicts),
        "--obs-columns",
        "cell_type",
        "--out",
        s(&store),
        "--json",
    ]);
    ok(&out);
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(manifest["tokenizer"], "geneformer");
    assert_eq!(
        manifest["options"]["n_counts_computed"], false,
        "n_counts comes from obs"
    );
    let n_cells = manifest["n_cells"].as_u64().unwrap() as usize;
    assert!(n_cells > 0);
    let header = std::fs::read_to_string(store.join("cells.tsv")).unwrap();
    assert!(header.starts_with("cell\tcell_type"), "{header}");
    // Every V2 cell is <cls> genes… <eos>.
    let bytes = std::fs::read(store.join("tokens.npy")).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");

    // An existing store is not overwritten without --overwrite.
    let again = scinterp(&[
        "tokenize",
        "--input",
        s(&input),
        "--model",
        "geneformer-v2",
        "--dictionaries",
        s(&dicts),
        "--out",
        s(&store),
    ]);
    assert_fails_with(&again, &["already exists", "--overwrite"]);

    // The store feeds the forward pass of a V2-shaped model (the demo's: real V2 vocabulary size).
    let demo = tmp.path().join("demo");
    assert!(scinterp(&["demo", "--planted", "--out", s(&demo)])
        .status
        .success());
    let fwd = tmp.path().join("f.safetensors");
    let o = scinterp(&[
        "forward",
        "--model",
        s(&demo.join("model")),
        "--input",
        s(&store),
        "--hooks",
        "blocks.0.hook_resid_post",
        "--out",
        s(&fwd),
        "--json",
    ]);
    ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["cells"].as_u64().unwrap() as usize, n_cells);
}

#[test]
fn tokenize_refuses_log_normalised_matrices_and_writes_nothing() {
    let Some([dicts, pbmc]) = shared_data_all(["geneformer/v2", "cells/pbmc68k_reduced.h5ad"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = scinterp(&[
        "tokenize",
        "--input",
        s(&pbmc),
        "--use-raw",
        "--model",
        "geneformer-v2",
        "--gene-ids",
        "symbol",
        "--dictionaries",
        s(&dicts),
        "--out",
        s(&store),
    ]);
    assert_fails_with(&out, &["raw counts", "log-normalised"]);
    assert!(!store.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "no temporary folder left"
    );
}

#[test]
fn tokenize_10x_for_scgpt_writes_binned_values() {
    let Some([vocab, tenx]) = shared_data_all(["scgpt/whole-human", "cells/10x_chr21_v3"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = scinterp(&[
        "tokenize",
        "--input",
        s(&tenx),
        "--model",
        "scgpt",
        "--vocab",
        s(&vocab),
        "--seed",
        "3",
        "--out",
        s(&store),
        "--json",
    ]);
    ok(&out);
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(manifest["has_values"], true);
    assert_eq!(manifest["options"]["cls_value"], -2.0);
    assert_eq!(
        manifest["n_cells"].as_u64().unwrap() + manifest["n_cells_dropped"].as_u64().unwrap(),
        1107
    );
    let (header, bytes) = scinterp_engine::npy::read_npy_bytes(&store.join("values.npy")).unwrap();
    assert_eq!(header.dtype, scinterp_engine::npy::NpyDtype::F32);
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(values
        .iter()
        .all(|&v| v == -2.0 || (1.0..=50.0).contains(&v) && v.fract() == 0.0));
}

#[test]
fn tokenize_mouse_h5ad_gz_through_the_ortholog_table() {
    let Some([dicts, paul15, table]) = shared_data_all([
        "geneformer/v2",
        "cells/paul15.h5ad.gz",
        "orthologs/Ensembl105_Human2Mouse_Genes.csv",
    ]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = scinterp(&[
        "tokenize",
        "--input",
        s(&paul15),
        "--model-kind",
        "geneformer-v2",
        "--orthologs",
        s(&table),
        "--dictionaries",
        s(&dicts),
        "--obs-columns",
        "paul15_clusters",
        "--out",
        s(&store),
        "--json",
    ]);
    ok(&out);
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mapped = manifest["options"]["genes_mapped"].as_u64().unwrap();
    assert!(
        mapped >= 2_800,
        "only {mapped} paul15 genes map to Geneformer V2 tokens"
    );
    assert_eq!(
        manifest["n_cells"].as_u64().unwrap() + manifest["n_cells_dropped"].as_u64().unwrap(),
        2_730
    );
    let cells = std::fs::read_to_string(store.join("cells.tsv")).unwrap();
    assert!(cells.starts_with("cell\tpaul15_clusters\n"), "{}", &cells[..40]);
}

/// Checks an scGPT forward output against the torch fixture at real positions, and zeros past them.
fn check_scgpt_output(out_path: &Path, expected: &ExpectedFile, lengths: &[usize]) -> usize {
    let bytes = std::fs::read(out_path).unwrap();
    let written = SafeTensors::deserialize(&bytes).unwrap();
    let mut compared = 0;
    for name in written.names() {
        if name == "lengths" || !expected.has(name) {
            continue;
        }
        let (shape, got) = f32_tensor(&written, name);
        let want = expected.get(name);
        assert_eq!(shape, want.shape, "{name}");
        if name == "cell_embedding" {
            assert!(relative_error(&got, &want.values) <= 1e-4, "{name}");
        } else {
            let width = shape.get(2).copied().unwrap_or(1);
            let max_len = shape[1];
            let (mut real, mut want_real) = (Vec::new(), Vec::new());
            for (c, &len) in lengths.iter().enumerate() {
                let cell = c * max_len * width;
                real.extend_from_slice(&got[cell..cell + len * width]);
                want_real.extend_from_slice(&want.values[cell..cell + len * width]);
                assert!(
                    got[cell + len * width..cell + max_len * width]
                        .iter()
                        .all(|&v| v == 0.0),
                    "{name}: cell {c} is not zero past its length"
                );
            }
            let err = relative_error(&real, &want_real);
            assert!(err <= 1e-4, "{name} differs from torch by {err:e}");
        }
        compared += 1;
    }
    compared
}

#[test]
fn forward_runs_scgpt_folders_from_json_and_from_a_token_store() {
    let dir = common::scgpt_fixture("tiny");
    let expected = ExpectedFile::open(&dir.join("expected.safetensors"));
    let lengths: Vec<usize> = expected
        .get("lengths")
        .values
        .iter()
        .map(|&v| v as usize)
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("out.safetensors");
    let run = |input: &Path| {
        scinterp(&[
            "forward",
            "--model",
            s(&dir),
            "--input",
            s(input),
            "--hooks",
            "all",
            "--head",
            "--out",
            s(&out_path),
            "--overwrite",
            "--json",
        ])
    };
    let out = run(&dir.join("input.json"));
    ok(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["outputs"],
        serde_json::json!(["cell_embedding", "expr_pred", "mvc_pred"])
    );
    // 1 + 4·2 hooks, the cell embedding, two heads.
    assert_eq!(check_scgpt_output(&out_path, &expected, &lengths), 12);

    // The same cells as an scGPT token store (what `scinterp tokenize --model-kind scgpt` writes).
    let input: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("input.json")).unwrap()).unwrap();
    let lists = |key: &str| -> Vec<Vec<f64>> {
        input[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                c.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let cells: Vec<Vec<u32>> = lists("gene_ids")
        .iter()
        .map(|c| c.iter().map(|&v| v as u32).collect())
        .collect();
    let values: Vec<Vec<f32>> = lists("values")
        .iter()
        .map(|c| c.iter().map(|&v| v as f32).collect())
        .collect();
    let store_dir = tmp.path().join("store");
    write_token_store(&store_dir, "scgpt", "whole-human", &cells, Some(values));
    let out = run(&store_dir);
    ok(&out);
    assert_eq!(check_scgpt_output(&out_path, &expected, &lengths), 12);
}

#[test]
fn forward_refuses_inputs_made_for_the_other_model() {
    let scgpt = common::scgpt_fixture("tiny");
    let geneformer = fixture("tiny_v2");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ids_only = write(t, "ids.json", r#"{"input_ids": [[2, 5, 3]]}"#);
    assert_fails_with(
        &forward_err(&scgpt, &ids_only, "all"),
        &["ids.json", "scGPT needs an expression value"],
    );
    let with_values = write(
        t,
        "vals.json",
        r#"{"gene_ids": [[2, 5, 3]], "values": [[-2, 1, 4]]}"#,
    );
    assert_fails_with(
        &forward_err(&geneformer, &with_values, "all"),
        &["vals.json", "Geneformer"],
    );
    let unknown = write(
        t,
        "unknown.json",
        r#"{"gene_ids": [[2, 99999]], "values": [[-2, 1]]}"#,
    );
    assert_fails_with(
        &forward_err(&scgpt, &unknown, "all"),
        &["cell 0 position 1", "gene id 99999", "vocab.json"],
    );
}

/// Real cells end to end: the 10x chr21 matrix tokenized with the real vocabulary, then run through the
/// real-width fixture model (which has the real 60,697-token vocabulary).
#[test]
fn tokenize_10x_for_scgpt_then_forward_at_the_real_width() {
    let Some([whole_human, tenx]) = shared_data_all(["scgpt/whole-human", "cells/10x_chr21_v3"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = scinterp(&[
        "tokenize",
        "--input",
        s(&tenx),
        "--model-kind",
        "scgpt",
        "--vocab",
        s(&whole_human),
        "--out",
        s(&store),
    ]);
    ok(&out);

    let src = common::scgpt_fixture("width512");
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(src.join("args.json"), model.join("args.json")).unwrap();
    std::fs::copy(whole_human.join("vocab.json"), model.join("vocab.json")).unwrap();
    let gz = std::fs::File::open(src.join("best_model.pt.gz")).unwrap();
    let mut weights = std::fs::File::create(model.join("best_model.pt")).unwrap();
    std::io::copy(&mut flate2::read::GzDecoder::new(gz), &mut weights).unwrap();

    let fwd = tmp.path().join("f.safetensors");
    let o = scinterp(&[
        "forward",
        "--model",
        s(&model),
        "--input",
        s(&store),
        "--hooks",
        "blocks.1.hook_resid_post",
        "--out",
        s(&fwd),
        "--json",
    ]);
    ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let stored = scinterp_models::token_store::TokenStore::read(&store).unwrap();
    assert_eq!(summary["cells"].as_u64().unwrap() as usize, stored.cells.len());
    let bytes = std::fs::read(&fwd).unwrap();
    let written = SafeTensors::deserialize(&bytes).unwrap();
    let (shape, emb) = f32_tensor(&written, "cell_embedding");
    assert_eq!(shape, vec![stored.cells.len(), 512]);
    // The cell embedding is the final state at <cls>, position 0 of every cell.
    let (_, last) = f32_tensor(&written, "blocks.1.hook_resid_post");
    let max_len = stored.manifest.max_len;
    for c in [0, stored.cells.len() - 1] {
        assert_eq!(
            &emb[c * 512..(c + 1) * 512],
            &last[c * max_len * 512..c * max_len * 512 + 512]
        );
    }
    assert!(emb.iter().all(|v| v.is_finite()));
}

/// Runs `scinterp tokenize` with `args`, logging at info level (for resume messages).
fn tokenize_info(args: &[&str]) -> Output {
    scinterp_env(&[&["tokenize"], args].concat(), &[("SCINTERP_LOG", "info")])
}

#[test]
fn tokenize_refuses_a_gene_column_that_maps_nothing_and_names_the_one_to_use() {
    let Some([dicts, vocab]) = shared_data_all(["geneformer/v2", "scgpt/whole-human"]) else {
        return;
    };
    // Index = symbols (2 of them unknown), var["gene_ids"] = the Ensembl ids, var["feature_types"] = a
    // constant (tests/reference/make_cells_fixtures.py).
    let input = fixtures().join("cells/symbol_index.h5ad");
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = scinterp(&[
        "tokenize",
        "--input",
        s(&input),
        "--model-kind",
        "geneformer-v2",
        "--dictionaries",
        s(&dicts),
        "--gene-id-column",
        "feature_types",
        "--out",
        s(&store),
    ]);
    assert_fails_with(
        &out,
        &[
            "symbol_index.h5ad",
            "only 0 of 12 genes map to the Geneformer V2 vocabulary",
            "var column `gene_ids` maps 12",
            "the var index as Ensembl ids: 10",
            "pass --gene-id-column gene_ids --gene-ids ensembl",
        ],
    );
    assert!(!store.exists());

    // scGPT reads symbols: the Ensembl column maps nothing, the index does.
    let out = scinterp(&[
        "tokenize",
        "--input",
        s(&input),
        "--model-kind",
        "scgpt",
        "--vocab",
        s(&vocab),
        "--gene-id-column",
        "gene_ids",
        "--out",
        s(&store),
    ]);
    assert_fails_with(
        &out,
        &[
            "only 0 of 12 genes map to the scGPT vocabulary with var column `gene_ids`",
            "the var index maps 10",
            "drop --gene-id-column",
        ],
    );
    assert!(!store.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn tokenize_counts_and_skips_cells_without_tokens() {
    let Some(dicts) = shared_data("geneformer/v2") else {
        return;
    };
    // 6 cells; cell2 has no count at all.
    let input = fixtures().join("cells/symbol_index.h5ad");
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = scinterp(&[
        "tokenize",
        "--input",
        s(&input),
        "--model-kind",
        "geneformer-v2",
        "--dictionaries",
        s(&dicts),
        "--gene-id-column",
        "gene_ids",
        "--out",
        s(&store),
        "--json",
    ]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 of 6 cells") && stderr.contains("skipped") && stderr.contains("cell2"),
        "the skipped cell is reported: {stderr}"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(manifest["n_cells"], 5);
    assert_eq!(manifest["n_cells_dropped"], 1);
    assert_eq!(manifest["options"]["genes_mapped"], 12);
    let cells = std::fs::read_to_string(store.join("cells.tsv")).unwrap();
    assert_eq!(cells, "cell\ncell0\ncell1\ncell3\ncell4\ncell5\n");
    let (h, _) = scinterp_engine::npy::read_npy_bytes(&store.join("offsets.npy")).unwrap();
    assert_eq!(h.shape, vec![6], "offsets hold the 5 kept cells");
}

#[test]
fn tokenize_resumes_an_interrupted_run_to_the_same_bytes() {
    let Some([dicts, vocab, tenx]) =
        shared_data_all(["geneformer/v2", "scgpt/whole-human", "cells/10x_chr21_v3"])
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (model, dict_flag, dict) in [
        ("geneformer-v2", "--dictionaries", &dicts),
        ("scgpt", "--vocab", &vocab),
    ] {
        let common = |out: &Path| -> Vec<String> {
            [
                "--input",
                s(&tenx),
                "--model-kind",
                model,
                dict_flag,
                s(dict),
                "--out",
                s(out),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let run = |out: &Path, extra: &[&str]| {
            let mut args = common(out);
            args.extend(extra.iter().map(|s| s.to_string()));
            tokenize_info(&as_strs(&args))
        };
        // Uninterrupted, default chunking.
        let reference = tmp.path().join(format!("{model}-reference"));
        let o = run(&reference, &[]);
        ok(&o);

        // Killed after 3 chunks of 100 cells (1,107 cells: 12 chunks), with checkpoints from the start.
        let store = tmp.path().join(format!("{model}-store"));
        let partial = tmp.path().join(format!("{model}-store.partial"));
        let chunked = ["--chunk-cells", "100", "--checkpoint-secs", "0"];
        let mut stop = chunked.to_vec();
        stop.extend(["--stop-after-chunks", "3"]);
        let o = run(&store, &stop);
        assert_fails_with(&o, &["stopped after 3 chunks", "resume"]);
        assert!(!store.exists(), "no store from a killed run");
        let saved = std::fs::read_dir(&partial)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("chunk-")
            })
            .count();
        assert_eq!(saved, 3);

        // The same command resumes and ends with the bytes of the uninterrupted run.
        let o = run(&store, &chunked);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert!(
            stderr.contains("resuming") && stderr.contains("3 of 12 chunks"),
            "{stderr}"
        );
        assert_eq!(files(&store), files(&reference), "{model}: resumed store differs");
        assert!(
            !partial.exists(),
            "checkpoints are removed once the store is written"
        );

        // Checkpoints of a run with other options are not reused.
        let o = run(&store, &{
            let mut s = stop.clone();
            s.push("--overwrite");
            s
        });
        assert!(!o.status.success());
        let o = run(
            &store,
            &["--chunk-cells", "100", "--max-len", "64", "--overwrite"],
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert!(
            stderr.contains("starting over") && !stderr.contains("resuming"),
            "{stderr}"
        );
        let fresh = tmp.path().join(format!("{model}-max64"));
        assert!(run(&fresh, &["--max-len", "64"]).status.success());
        assert_eq!(files(&store), files(&fresh));
        assert_ne!(files(&store), files(&reference));
        assert!(!partial.exists());
    }
}

#[test]
fn tokenize_reads_chunked_csr_in_blocks_to_the_tokens_of_a_whole_read() {
    let Some(dicts) = shared_data("geneformer/v2") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cells = fixtures().join("cells");
    let run = |file: &str, out: &str, extra: &[&str]| {
        let (input, out) = (cells.join(file), tmp.path().join(out));
        let mut args = vec![
            "--input",
            s(&input),
            "--model-kind",
            "geneformer-v2",
            "--dictionaries",
            s(&dicts),
            "--obs-columns",
            "cell_type",
            "--out",
            s(&out),
        ];
        args.extend(extra);
        (tokenize_info(&args), out)
    };
    // Everything but the manifest (which names the input and its hash).
    let tokens = |dir: &Path| {
        let mut files = files(dir);
        files.remove("manifest.json");
        files
    };
    // The same counts compressed (read whole) and uncompressed (read in blocks; one file with rows out of
    // order, explicit zeros and duplicate entries).
    let (o, whole) = run("csr_lzf.h5ad", "whole", &[]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("read 30 cells"));
    for file in ["csr_plain.h5ad", "csr_unsorted.h5ad"] {
        for chunk in ["1", "7", "1000"] {
            let (o, store) = run(file, &format!("{file}-{chunk}"), &["--chunk-cells", chunk]);
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{stderr}");
            assert!(stderr.contains("to be read in blocks"), "{stderr}");
            assert_eq!(tokens(&store), tokens(&whole), "{file}, chunks of {chunk} cells");
        }
        // Killed after 2 chunks, then resumed: the bytes of the uninterrupted run.
        let chunked = ["--chunk-cells", "4", "--checkpoint-secs", "0"];
        let stop = [&chunked[..], &["--stop-after-chunks", "2"]].concat();
        let (o, store) = run(file, &format!("{file}-resumed"), &stop);
        assert_fails_with(&o, &["stopped after 2 chunks"]);
        let (o, _) = run(file, &format!("{file}-resumed"), &chunked);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && stderr.contains("2 of 8 chunks"), "{stderr}");
        assert_eq!(tokens(&store), tokens(&whole), "{file} resumed");
    }
    // Gzipped as downloaded: its decompressed copy is kept while the blocks are read from it.
    let gz = tmp.path().join("plain.h5ad.gz");
    let mut e = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), Default::default());
    std::io::Write::write_all(&mut e, &std::fs::read(cells.join("csr_plain.h5ad")).unwrap()).unwrap();
    e.finish().unwrap();
    let (o, store) = run(s(&gz), "gz", &["--chunk-cells", "7"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && stderr.contains("to be read in blocks"),
        "{stderr}"
    );
    assert_eq!(tokens(&store), tokens(&whole), "gzipped");
}

#[test]
fn device_flag_resolves_without_panicking_and_cuda_errors_clearly_without_a_gpu() {
    let model = fixture("tiny_v2");
    let tmp = tempfile::tempdir().unwrap();
    let cells = write(tmp.path(), "cells.json", r#"{"input_ids": [[2, 5, 3]]}"#);
    let out = tmp.path().join("out.safetensors");
    let run = |device: &str| {
        scinterp(&[
            "forward",
            "--model",
            s(&model),
            "--input",
            &cells,
            "--hooks",
            "hook_embed",
            "--out",
            s(&out),
            "--overwrite",
            "--device",
            device,
        ])
    };
    for device in ["cpu", "auto"] {
        let o = run(device);
        assert!(
            o.status.success(),
            "--device {device}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_fails_with(&run("tpu"), &["unknown device `tpu`", "auto, cpu or cuda"]);
    // No GPU path exists yet: `cuda` is an error everywhere; without a GPU it says so.
    let no_gpu = scinterp_engine::device::DeviceChoice::Cuda.resolve().is_err();
    let needles: &[&str] = if no_gpu {
        &["no CUDA driver/GPU found", "run with --device cpu"]
    } else {
        &["run with --device cpu"]
    };
    assert_fails_with(&run("cuda"), needles);
}

/// When stderr is not a terminal (batch jobs, Slurm logs), long commands log plain progress lines with
/// counts, rate and ETA, ending with the final count; `--quiet` silences them.
#[test]
fn progress_is_logged_as_lines_when_stderr_is_not_a_terminal() {
    let assets = assets();
    let tmp = tempfile::tempdir().unwrap();
    let run = |quiet: bool, out: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_scinterp"));
        if quiet {
            cmd.arg("--quiet");
        }
        cmd.args(["tokenize", "--input"])
            .arg(assets.join("cells/pbmc68k.h5ad.gz"))
            .args([
                "--model-kind",
                "geneformer-v2",
                "--gene-ids",
                "symbol",
                "--max-len",
                "256",
            ])
            .arg("--dictionaries")
            .arg(assets.join("geneformer"))
            .arg("--out")
            .arg(tmp.path().join(out))
            .env("SCINTERP_PROGRESS_SECS", "0")
            .output()
            .unwrap()
    };
    let out = run(false, "logged");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("tokenizing ")).collect();
    assert!(!lines.is_empty(), "no progress lines in:\n{stderr}");
    assert!(
        lines.iter().all(|l| l.contains(" cells (") && l.contains("ETA")),
        "{stderr}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("tokenizing 700/700 cells (100 %"),
        "the log does not end with the final count:\n{stderr}"
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "terminal control characters in a log"
    );
    assert!(stderr.lines().any(|l| l.starts_with("reading ")), "{stderr}");

    let quiet = run(true, "quiet");
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(quiet.status.success(), "{stderr}");
    assert!(!stderr.contains("tokenizing "), "{stderr}");
}
