//! End-to-end tests of `scinterp extract`: activation stores equal `forward` at gene positions (Geneformer
//! and scGPT), resume after a kill byte for byte, refusals (bad hooks, foreign folders, a truncated hook
//! file, a full disk), and `extract --shard i/n` + `extract merge` equal to one unsharded run on real
//! cells. (Training SAEs on these stores: tests/sae.rs; trace, analyze, layers, effects:
//! tests/trace_analyze.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    as_strs, assert_fails_with, assets, extract_tiny_v2, f32_tensor, fixture, ok, ok_json,
    pbmc68k_tokenize_args, relative_error, s, scinterp, skip, tiny_v2_token_store, write_token_store,
};
use safetensors::SafeTensors;
use scinterp_engine::npy::{read_npy_bytes, NpyDtype};
use scinterp_engine::store::ActStore;

/// The rows of a padded `[cells, max_len, d]` forward output at an activation store's (cell, position)
/// rows, in the store's order.
fn forward_at_rows(shape: &[usize], padded: &[f32], rows: &[[i32; 3]]) -> Vec<f64> {
    let (max_len, d) = (shape[1], shape[2]);
    rows.iter()
        .flat_map(|r| {
            let at = (r[0] as usize * max_len + r[1] as usize) * d;
            padded[at..at + d].iter().map(|&v| v as f64)
        })
        .collect()
}

#[test]
fn extract_equals_forward_at_gene_positions_and_resumes_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    let cells = tiny_v2_token_store(&tokens, 6);
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
    let summary = ok_json(&extract(&full, "f32", &[]));
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
    let file = SafeTensors::deserialize(&bytes).unwrap();
    for hook in ["hook_embed", "blocks.1.hook_resid_post"] {
        let (shape, padded) = f32_tensor(&file, hook);
        let array = store.hook(hook).unwrap();
        let mut got = vec![0.0f32; rows.len() * shape[2]];
        array.read_rows(0, &mut got);
        let want = forward_at_rows(&shape, &padded, &rows);
        let err = relative_error(&got, &want);
        assert!(err < 1e-5, "{hook}: {err}");
    }

    // Killed after the second batch's rows were written but before its checkpoint, then rerun.
    let resumed = tmp.path().join("resumed");
    let killed = extract(&resumed, "f32", &["--stop-after-batches", "2"]);
    assert_fails_with(&killed, &["stopped after 2 batches"]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(resumed.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], false);
    let done = manifest["cells_complete"].as_u64().unwrap();
    assert!(done > 0 && (done as usize) < cells.len(), "cells_complete {done}");
    assert!(
        ActStore::open(&resumed).is_err(),
        "an unfinished store must not open"
    );
    let rerun = ok_json(&extract(&resumed, "f32", &[]));
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
    assert_fails_with(&extract(&resumed, "f16", &[]), &["other settings", "dtype"]);
    assert!(before == std::fs::read(resumed.join("hook_embed.npy")).unwrap());

    // f16 by default, readable as numpy's <f2.
    let half = tmp.path().join("half");
    extract_tiny_v2(&tokens, "blocks.1.hook_resid_post", &half);
    let (header, _) = read_npy_bytes(&half.join("blocks.1.hook_resid_post.npy")).unwrap();
    assert_eq!(header.dtype, NpyDtype::F16);
    assert_eq!(header.shape, vec![genes, 128]);
}

#[test]
fn extract_refuses_bad_inputs_with_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    tiny_v2_token_store(&tokens, 1);
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
    assert_fails_with(&run(&tokens, "blocks.9.hook_resid_post", &out), &["layer 9"]);
    assert_fails_with(
        &run(&tmp.path().join("nope"), "hook_embed", &out),
        &["not a token store"],
    );
    // A folder with other files is never written into.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "x").unwrap();
    assert_fails_with(&run(&tokens, "hook_embed", &busy), &["not an activation store"]);
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    // A truncated hook file is found by the readers.
    ok(&run(&tokens, "hook_embed", &out));
    let path = out.join("hook_embed.npy");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let sae = tmp.path().join("sae");
    assert_fails_with(
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

/// A disk too small for the store: one clear error before any work, and no half-made store. Needs a
/// small tmpfs; skipped (with a message) where mounting one is not allowed.
#[test]
fn extract_reports_a_full_disk_before_working_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    tiny_v2_token_store(&tokens, 40);
    let small = tmp.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs", s(&small)])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        skip("cannot mount a small tmpfs here (needs root)");
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
    assert_fails_with(&result, &["free", "choose another --out"]);
    assert!(!leftover, "a half-made store was left behind");
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
    let (shape, padded) = f32_tensor(&SafeTensors::deserialize(&bytes).unwrap(), hook);
    let mut got = vec![0.0f32; rows.len() * shape[2]];
    store.hook(hook).unwrap().read_rows(0, &mut got);
    let want = forward_at_rows(&shape, &padded, &rows);
    assert!(relative_error(&got, &want) < 1e-5);

    let sae = tmp.path().join("sae");
    let report = ok_json(&scinterp(&[
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
    ]));
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

const STORE_FILES: [&str; 5] = [
    "manifest.json",
    "rows.npy",
    "hook_embed.npy",
    "blocks.0.hook_resid_post.npy",
    "blocks.2.hook_resid_post.npy",
];

/// The embedded pbmc68k cells tokenized for Geneformer V2 (256 tokens a cell).
fn tokens(tmp: &Path) -> PathBuf {
    let out = tmp.join("tokens");
    ok(&scinterp(&as_strs(&pbmc68k_tokenize_args(
        &out,
        &["--max-len", "256"],
    ))));
    out
}

#[test]
fn sharded_extract_merges_to_the_unsharded_store_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tokens(tmp.path());
    let model = assets().join("geneformer");
    let extract = |out: &Path, extra: &[&str]| {
        scinterp(
            &[
                &[
                    "--threads",
                    "2",
                    "extract",
                    "--model",
                    s(&model),
                    "--input",
                    s(&tokens),
                    "--hooks",
                    "hook_embed,blocks.0.hook_resid_post,blocks.2.hook_resid_post",
                    "--max-batch-tokens",
                    "8192",
                    "--device",
                    "cpu",
                    "--json",
                    "--out",
                    s(out),
                ],
                extra,
            ]
            .concat(),
        )
    };
    let full = tmp.path().join("full");
    let summary = ok_json(&extract(&full, &[]));
    let n_cells = summary["n_cells"].as_u64().unwrap();
    assert_eq!(n_cells, 700);

    // Three shards, extracted out of order; each holds a run of cells, together all of them.
    let shards: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("shard{i}"))).collect();
    let mut cells = 0;
    for i in [2, 0, 1] {
        let out = ok_json(&extract(&shards[i], &["--shard", &format!("{i}/3")]));
        let n = out["n_cells"].as_u64().unwrap();
        assert!(n > 0 && n < n_cells, "shard {i} has {n} cells");
        cells += n;
    }
    assert_eq!(cells, n_cells);
    let list = shards.iter().map(|p| s(p)).collect::<Vec<_>>().join(",");
    let merged = tmp.path().join("merged");
    ok(&scinterp(&[
        "extract",
        "merge",
        "--shards",
        &list,
        "--out",
        s(&merged),
    ]));
    for name in STORE_FILES {
        assert!(
            std::fs::read(full.join(name)).unwrap() == std::fs::read(merged.join(name)).unwrap(),
            "{name} of the merged store differs from the unsharded run"
        );
    }
    // A merge that was interrupted after the first shard (its manifest says so) finishes the same.
    let resumed = tmp.path().join("resumed");
    ok(&scinterp(&[
        "extract",
        "merge",
        "--shards",
        &list,
        "--out",
        s(&resumed),
    ]));
    let path = resumed.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let shard0: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shards[0].join("manifest.json")).unwrap()).unwrap();
    m["cells_complete"] = shard0["n_cells"].clone();
    m["rows_complete"] = shard0["n_rows"].clone();
    m["complete"] = false.into();
    std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    // Damage what is after the first shard, so only a real rewrite restores it.
    let hook = resumed.join("blocks.2.hook_resid_post.npy");
    let mut bytes = std::fs::read(&hook).unwrap();
    let len = bytes.len();
    bytes[len - 64..].fill(0x55);
    std::fs::write(&hook, bytes).unwrap();
    let out = ok_json(&scinterp(&[
        "extract",
        "merge",
        "--shards",
        &list,
        "--out",
        s(&resumed),
        "--json",
    ]));
    assert_eq!(out["resumed_from_cell"], shard0["n_cells"]);
    for name in STORE_FILES {
        assert!(
            std::fs::read(full.join(name)).unwrap() == std::fs::read(resumed.join(name)).unwrap(),
            "{name} differs after a resumed merge"
        );
    }

    // Refusals: a shard missing, a shard given twice, an unsharded store, too many shards.
    let two = format!("{},{}", s(&shards[0]), s(&shards[1]));
    assert_fails_with(
        &scinterp(&[
            "extract",
            "merge",
            "--shards",
            &two,
            "--out",
            s(&tmp.path().join("x")),
        ]),
        &["exactly once"],
    );
    let twice = format!("{},{},{}", s(&shards[0]), s(&shards[1]), s(&shards[1]));
    assert_fails_with(
        &scinterp(&[
            "extract",
            "merge",
            "--shards",
            &twice,
            "--out",
            s(&tmp.path().join("x")),
        ]),
        &["exactly once"],
    );
    let with_full = format!("{},{}", s(&shards[0]), s(&full));
    assert_fails_with(
        &scinterp(&[
            "extract",
            "merge",
            "--shards",
            &with_full,
            "--out",
            s(&tmp.path().join("x")),
        ]),
        &["not a shard store", "--shard i/n"],
    );
    assert!(
        !tmp.path().join("x").exists(),
        "a refused merge must write nothing"
    );
    assert_fails_with(
        &extract(&tmp.path().join("y"), &["--shard", "0/100000"]),
        &["--shard 0/100000", "batches"],
    );
    assert_fails_with(
        &extract(&tmp.path().join("y"), &["--shard", "3/3"]),
        &["--shard", "0 ≤ i < n"],
    );
}

/// `--overwrite` on the commands whose output already exists: `forward` (refused without it),
/// `extract` and `extract merge` (which otherwise resume or keep a complete store) start afresh and give
/// the same bytes; a folder that is not an activation store is never deleted.
#[test]
fn overwrite_starts_afresh_and_deletes_only_an_activation_store() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    tiny_v2_token_store(&tokens, 4);
    let model = fixture("tiny_v2");
    let hooks = "blocks.1.hook_resid_post";

    let fwd = tmp.path().join("fwd.safetensors");
    let forward = |extra: &[&str]| {
        let base = [
            "forward",
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--hooks",
            hooks,
            "--out",
            s(&fwd),
        ];
        scinterp(&[&base[..], extra].concat())
    };
    ok(&forward(&[]));
    let first = std::fs::read(&fwd).unwrap();
    assert_fails_with(&forward(&[]), &[s(&fwd), "--overwrite"]);
    assert_eq!(
        std::fs::read(&fwd).unwrap(),
        first,
        "a refused run must leave the file"
    );
    ok(&forward(&["--overwrite"]));
    assert_eq!(std::fs::read(&fwd).unwrap(), first);

    let extract = |out: &Path, extra: &[&str]| {
        let base = [
            "extract",
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--hooks",
            hooks,
            "--out",
            s(out),
            "--max-batch-tokens",
            "64",
            "--json",
        ];
        scinterp(&[&base[..], extra].concat())
    };
    let full = tmp.path().join("full");
    ok_json(&extract(&full, &[]));
    let want = common::files(&full);
    // A partial store: without --overwrite a rerun resumes it; with it the run starts at cell 0.
    let partial = tmp.path().join("partial");
    assert_fails_with(
        &extract(&partial, &["--stop-after-batches", "1"]),
        &["stopped after 1 batches"],
    );
    let fresh = ok_json(&extract(&partial, &["--overwrite"]));
    assert_eq!(fresh["resumed_from_cell"], 0);
    assert_eq!(common::files(&partial), want);
    // A complete store is extracted again.
    let again = ok_json(&extract(&full, &["--overwrite"]));
    assert_eq!(again["resumed_from_cell"], 0);
    assert_eq!(common::files(&full), want);
    // Not an activation store: refused, its file kept.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "keep me").unwrap();
    assert_fails_with(&extract(&foreign, &["--overwrite"]), &[s(&foreign), "not one"]);
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "keep me"
    );

    // Shards merged, then merged again with --overwrite: the unsharded store's bytes both times.
    let shards: Vec<PathBuf> = (0..2).map(|i| tmp.path().join(format!("shard{i}"))).collect();
    for (i, dir) in shards.iter().enumerate() {
        ok_json(&extract(dir, &["--shard", &format!("{i}/2")]));
    }
    let list = format!("{},{}", s(&shards[0]), s(&shards[1]));
    let merged = tmp.path().join("merged");
    let merge = |extra: &[&str]| {
        let base = ["extract", "merge", "--shards", &list, "--out", s(&merged)];
        scinterp(&[&base[..], extra].concat())
    };
    ok(&merge(&[]));
    assert_eq!(common::files(&merged), want);
    ok(&merge(&["--overwrite"]));
    assert_eq!(common::files(&merged), want);
    assert_fails_with(
        &scinterp(&[
            "extract",
            "merge",
            "--shards",
            &list,
            "--out",
            s(&foreign),
            "--overwrite",
        ]),
        &[s(&foreign), "not one"],
    );
    assert!(foreign.join("notes.txt").is_file());
}
