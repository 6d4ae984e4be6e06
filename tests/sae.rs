//! End-to-end tests of `scinterp sae synth|train|eval|encode`: training recovers planted atoms, SAELens
//! files, encode equal to the engine's, reproducibility for a seed, the spliced loss (masked positions
//! skipped, a mean-ablation floor); on synthetic stores: settings refused with the flag named (before
//! anything is allocated), non-finite rows and weights refused where they enter, the save as one unit,
//! per-hook seeds, the defaults' warnings, and resume after a kill byte for byte. (The scGPT spliced
//! expression loss: tests/extract.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{
    assert_fails_with, extract_tiny_v2, names, ok, ok_json, s, scinterp, skip_part, tiny_v2_token_store,
};
use safetensors::SafeTensors;
use scinterp_engine::npy::{read_npy_bytes, NpyDtype};
use scinterp_engine::store::ActStore;

const HOOK: &str = "blocks.0.hook_resid_post";

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
    let report = ok_json(&train(
        &acts,
        HOOK,
        &sae,
        &[
            "--d-sae",
            "256",
            "--k",
            "3",
            "--tokens",
            "1500000",
            "--batch-size",
            "1024",
            "--dead-after-tokens",
            "50000",
            "--seed",
            "7",
        ],
    ));
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
    let eval = ok_json(&scinterp(&[
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
    ]));
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
    assert_fails_with(
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
    assert_fails_with(
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
    let synth = |extra: &[&str]| {
        let base = [
            "sae",
            "synth",
            "--d-in",
            "16",
            "--rows",
            "8000",
            "--out",
            s(&acts),
        ];
        scinterp(&[&base[..], extra].concat())
    };
    ok(&synth(&[]));
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

    // `sae synth` over an existing store: refused without --overwrite (the store kept), replaced with it
    // by the same bytes for the same settings.
    let before = common::files(&acts);
    assert_fails_with(&synth(&[]), &[s(&acts), "--overwrite"]);
    assert_eq!(common::files(&acts), before);
    ok(&synth(&["--overwrite"]));
    assert_eq!(common::files(&acts), before);
}

/// The masked-LM spliced loss (issue 18): the SAE is spliced only where the store has rows and the
/// gene is still there (never at a `<mask>` position, which no store holds), beside zero- and
/// mean-ablation floors.
#[test]
fn geneformer_spliced_loss_skips_masked_positions_and_has_a_mean_floor() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    tiny_v2_token_store(&tokens, 6);
    let acts = tmp.path().join("acts");
    let hook = "blocks.1.hook_resid_post";
    extract_tiny_v2(&tokens, hook, &acts);
    let sae = tmp.path().join("sae");
    // --d-sae 64 and --tokens 20000: train's small defaults.
    let report = ok_json(&train(
        &acts,
        hook,
        &sae,
        &[
            "--k",
            "8",
            "--batch-size",
            "128",
            "--holdout",
            "0.4",
            "--splice-cells",
            "4",
        ],
    ));
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
    assert_eq!(names(tmp.path()).len(), 1, "{:?}", names(tmp.path()));
}

/// Sets column `column` of row `row` of a synthetic (f32) store's hook array to `value`.
fn poison(acts: &Path, hook: &str, row: usize, column: usize, value: f32) {
    let path = acts.join(format!("{hook}.npy"));
    let (header, _) = read_npy_bytes(&path).unwrap();
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
    let report = ok_json(&train(&acts, HOOK, &out, &["--skip-nonfinite-rows"]));
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
        names(&out),
        ["cfg.json", "heldout_cells.npy", "sae_weights.safetensors"]
    );
    assert_eq!(names(&parent), [HOOK]);
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
        skip_part("the read-only check", "running as root");
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
    let report = ok_json(&train(&acts, HOOK, &out, &[]));
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
    let report = ok_json(&result);
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
        let report = ok_json(&train(&acts, HOOK, &out, &common));
        assert_eq!(report["resumed_at_step"].as_u64(), Some(stop.parse().unwrap()));
        let resumed = std::fs::read(out.join("sae_weights.safetensors")).unwrap();
        assert!(resumed == reference, "stop at {stop}: the resumed weights differ");
        assert_eq!(
            names(tmp.path()).iter().filter(|n| n.starts_with('.')).count(),
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
    let report = ok_json(&train(
        &acts,
        HOOK,
        &out,
        &[&common[..], &["--seed", "1"]].concat(),
    ));
    assert!(report["resumed_at_step"].is_null(), "{report}");
}
