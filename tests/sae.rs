//! End-to-end tests of `scinterp sae train|eval` on synthetic stores: settings refused with the flag
//! named (before anything is allocated), non-finite rows and weights refused where they enter, the
//! save as one unit, per-hook seeds, the defaults' warnings, and resume after a kill byte for byte.
//! (Training quality, SAELens files, encode and the spliced loss: tests/extract_sae.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{assert_fails_with, scinterp};

const HOOK: &str = "blocks.0.hook_resid_post";

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scinterp failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A synthetic store of `rows` rows of width `d` under `hook`.
fn synth(dir: &Path, d: usize, rows: usize, hook: &str) -> PathBuf {
    let out = dir.join(format!("acts-{hook}-{rows}"));
    ok(&scinterp(&[
        "sae",
        "synth",
        "--d-in",
        &d.to_string(),
        "--rows",
        &rows.to_string(),
        "--hook",
        hook,
        "--seed",
        "3",
        "--out",
        s(&out),
    ]));
    out
}

/// `sae train` on `acts` with small settings; `extra` adds flags or replaces the small defaults.
fn train(acts: &Path, hook: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "sae",
        "train",
        "--acts",
        s(acts),
        "--hook",
        hook,
        "--out",
        s(out),
        "--json",
    ];
    for (flag, value) in [
        ("--d-sae", "64"),
        ("--k", "4"),
        ("--batch-size", "256"),
        ("--tokens", "20000"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    scinterp(&args)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn bad_settings_are_refused_naming_the_flag_before_any_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = synth(tmp.path(), 16, 2000, HOOK);
    let out = tmp.path().join("sae");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--batch-size", "0"], &["--batch-size 0", "at least 1"]),
        (&["--d-sae", "4000000000"], &["--d-sae 4000000000"]),
        // Fits in int32 but not in memory: refused before allocating, naming what to lower.
        (&["--d-sae", "2000000000"], &["memory", "--d-sae"]),
        (&["--lr", "nan"], &["--lr NaN", "finite"]),
        (
            &["--lr", "1e30"],
            &["--lr 1000000000000000000000000000000", "(0, 1]"],
        ),
        (&["--k", "0"], &["--k 0"]),
        (&["--k", "65"], &["--k 65", "--d-sae 64"]),
        (&["--holdout", "nan"], &["--holdout NaN"]),
        (&["--tokens", "0"], &["--tokens 0"]),
        (&["--aux-coef", "inf"], &["--aux-coef inf"]),
    ];
    for (extra, needles) in cases {
        let result = train(&acts, HOOK, &out, extra);
        assert_fails_with(&result, needles);
        assert!(!out.exists(), "{extra:?} left an output behind");
    }
    assert_eq!(names_in(tmp.path()).len(), 1, "{:?}", names_in(tmp.path()));
}

/// Sets column `column` of row `row` of a synthetic (f32) store's hook array to `value`.
fn poison(acts: &Path, hook: &str, row: usize, column: usize, value: f32) {
    let path = acts.join(format!("{hook}.npy"));
    let (header, _) = scinterp_engine::npy::read_npy_bytes(&path).unwrap();
    let d = header.shape[1];
    let mut bytes = std::fs::read(&path).unwrap();
    let offset = bytes.len() - header.shape[0] * d * 4 + (row * d + column) * 4;
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn a_nonfinite_row_is_refused_naming_file_and_row_unless_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = synth(tmp.path(), 16, 3000, HOOK);
    poison(&acts, HOOK, 1234, 5, f32::INFINITY);
    poison(&acts, HOOK, 2001, 0, f32::NAN);
    let out = tmp.path().join("sae");
    assert_fails_with(
        &train(&acts, HOOK, &out, &[]),
        &[
            &format!("{HOOK}.npy"),
            "row 1234",
            "column 5",
            "--skip-nonfinite-rows",
        ],
    );
    assert!(!out.exists());
    let report: serde_json::Value =
        serde_json::from_str(&ok(&train(&acts, HOOK, &out, &["--skip-nonfinite-rows"]))).unwrap();
    assert_eq!(report["skipped_nonfinite_rows"], 2);
    assert!(report["heldout"]["fvu"].as_f64().unwrap().is_finite());
    let folder = scinterp_engine::sae::io::load(&out).unwrap();
    assert!(folder.sae.w_dec.iter().all(|v| v.is_finite()));
    // Encoding or evaluating the damaged store names the row too.
    assert_fails_with(
        &scinterp(&["sae", "eval", "--sae", s(&out), "--acts", s(&acts)]),
        &["row 1234"],
    );
    assert_fails_with(
        &scinterp(&[
            "sae",
            "encode",
            "--sae",
            s(&out),
            "--acts",
            s(&acts),
            "--out",
            s(&tmp.path().join("codes")),
        ]),
        &["row 1234"],
    );
}

#[test]
fn a_nan_in_the_loaded_weights_is_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = synth(tmp.path(), 16, 2000, HOOK);
    let out = tmp.path().join("sae");
    ok(&train(&acts, HOOK, &out, &[]));
    let mut folder = scinterp_engine::sae::io::load(&out).unwrap();
    // Latent 7's encoder vector, input 3: SAELens' W_enc[3, 7].
    folder.sae.w_enc[7 * 16 + 3] = f32::NAN;
    scinterp_engine::sae::io::save(&out, &folder.sae, &folder.metadata).unwrap();
    assert_fails_with(
        &scinterp(&["sae", "eval", "--sae", s(&out), "--acts", s(&acts)]),
        &[
            "sae_weights.safetensors",
            "W_enc",
            "non-finite",
            &format!("index {}", 3 * 64 + 7),
        ],
    );
}

#[test]
fn the_save_replaces_the_folder_as_one_unit_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = synth(tmp.path(), 16, 2000, HOOK);
    let parent = tmp.path().join("saes");
    let out = parent.join(HOOK);
    ok(&train(&acts, HOOK, &out, &[]));
    let first = std::fs::read(out.join("sae_weights.safetensors")).unwrap();
    // A stale staging folder of a killed save is cleaned, not read as an SAE.
    let stale = parent.join(format!(".{HOOK}.partial"));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("cfg.json"), "{}").unwrap();
    ok(&train(
        &acts,
        HOOK,
        &out,
        &["--overwrite", "--seed", "9", "--holdout", "0.3"],
    ));
    let second = std::fs::read(out.join("sae_weights.safetensors")).unwrap();
    assert_ne!(first, second);
    assert_eq!(
        names_in(&out),
        ["cfg.json", "heldout_cells.npy", "sae_weights.safetensors"]
    );
    assert_eq!(names_in(&parent), [HOOK]);
    // The cfg.json beside the weights is the new run's.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["metadata"]["scinterp"]["holdout"]["seed"], 9);
    // A read-only parent: one clear error, the old SAE untouched.
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = ro.join("probe");
    let writable = std::fs::create_dir(&probe).is_ok(); // root ignores permissions
    if !writable {
        assert_fails_with(&train(&acts, HOOK, &ro.join("sae"), &[]), &["ro"]);
    } else {
        eprintln!("skipped the read-only check: running as root");
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn each_hook_gets_its_own_seed_from_the_run_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let other = "blocks.1.hook_resid_post";
    // The same rows under two hook names, trained with one --seed.
    let a = synth(tmp.path(), 16, 2000, HOOK);
    let b = synth(tmp.path(), 16, 2000, other);
    ok(&train(&a, HOOK, &tmp.path().join("sa"), &["--seed", "5"]));
    ok(&train(&b, other, &tmp.path().join("sb"), &["--seed", "5"]));
    let wa = scinterp_engine::sae::io::load(&tmp.path().join("sa")).unwrap();
    let wb = scinterp_engine::sae::io::load(&tmp.path().join("sb")).unwrap();
    assert_ne!(wa.sae.w_dec, wb.sae.w_dec);
    let seed = |f: &scinterp_engine::sae::io::SaeFolder| f.metadata["scinterp"]["training"]["seed"].clone();
    assert_ne!(seed(&wa), seed(&wb));
    assert_eq!(
        seed(&wa).as_u64(),
        Some(scinterp_engine::sae::train::hook_seed(5, HOOK))
    );
    // The held-out split is the run's: the same cells for both hooks.
    let cells = |d: &str| std::fs::read(tmp.path().join(d).join("heldout_cells.npy")).unwrap();
    assert_eq!(cells("sa"), cells("sb"));
}

#[test]
fn defaults_scale_with_the_store_and_short_runs_are_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = synth(tmp.path(), 16, 4000, HOOK);
    let out = tmp.path().join("short");
    let report: serde_json::Value = serde_json::from_str(&ok(&train(&acts, HOOK, &out, &[]))).unwrap();
    let warnings = report["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("too few to converge")),
        "{warnings:?}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cfg.json")).unwrap()).unwrap();
    let training = &cfg["metadata"]["scinterp"]["training"];
    // A tenth of the 20,000-token run, at least 4 batches of 256.
    assert_eq!(training["dead_after_tokens"], 2000);
    assert_eq!(training["warmup_steps"], 3);
    // Held-out dead latents are reported (latents that never fired on held-out rows).
    assert!(report["heldout"]["dead_latents"].is_u64());

    // Without --tokens: 5 passes at least, 1,000 steps where the store allows (here 100 passes).
    let out = tmp.path().join("default");
    let result = scinterp(&[
        "sae",
        "train",
        "--acts",
        s(&acts),
        "--hook",
        HOOK,
        "--d-sae",
        "32",
        "--k",
        "2",
        "--out",
        s(&out),
        "--batch-size",
        "64",
        "--splice-cells",
        "0",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&ok(&result)).unwrap();
    let train_rows = report["train_rows"].as_u64().unwrap();
    assert_eq!(
        report["tokens_trained"].as_u64().unwrap(),
        64_000.min(100 * train_rows).max(5 * train_rows)
    );
    assert_eq!(report["warnings"].as_array().unwrap().len(), 0, "{report}");
}

#[test]
fn training_resumes_after_a_kill_to_the_same_weights_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let acts = synth(tmp.path(), 16, 3000, HOOK);
    // Small shuffle buffers so that the stop falls between refills and inside one.
    let common = ["--checkpoint-every", "4", "--shuffle-buffer-rows", "512"];
    let whole = tmp.path().join("whole");
    ok(&train(&acts, HOOK, &whole, &common));
    let reference = std::fs::read(whole.join("sae_weights.safetensors")).unwrap();
    for stop in ["1", "6", "40"] {
        let out = tmp.path().join(format!("killed-{stop}"));
        let stopped = train(
            &acts,
            HOOK,
            &out,
            &[&common[..], &["--stop-after-steps", stop]].concat(),
        );
        assert_fails_with(&stopped, &[&format!("stopped after {stop} steps"), "rerun"]);
        assert!(!out.exists(), "a half-trained SAE was written");
        let report: serde_json::Value =
            serde_json::from_str(&ok(&train(&acts, HOOK, &out, &common))).unwrap();
        assert_eq!(report["resumed_at_step"].as_u64(), Some(stop.parse().unwrap()));
        let resumed = std::fs::read(out.join("sae_weights.safetensors")).unwrap();
        assert!(resumed == reference, "stop at {stop}: the resumed weights differ");
        assert_eq!(
            names_in(tmp.path()).iter().filter(|n| n.starts_with('.')).count(),
            0,
            "a staging folder was left behind"
        );
    }
    // A checkpoint of other settings is not resumed: the run starts afresh.
    let out = tmp.path().join("other");
    assert_fails_with(
        &train(
            &acts,
            HOOK,
            &out,
            &[&common[..], &["--stop-after-steps", "6"]].concat(),
        ),
        &["stopped after 6 steps"],
    );
    let report: serde_json::Value = serde_json::from_str(&ok(&train(
        &acts,
        HOOK,
        &out,
        &[&common[..], &["--seed", "1"]].concat(),
    )))
    .unwrap();
    assert!(report["resumed_at_step"].is_null(), "{report}");
}
