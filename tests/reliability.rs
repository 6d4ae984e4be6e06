//! Reliability of tokenize, extract and effects under kills and damage (issue 21): a killed
//! `tokenize --overwrite` never loses the earlier store, killed runs' temporary folders are cleaned by
//! the next run, a damaged resume chunk is discarded by name and redone, an extraction killed before
//! its first manifest is started over, and effects logs its progress per batch of edits.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::{
    as_strs, files, fixture, fixtures, names, ok_stderr, pbmc68k_tokenize_args, s, scinterp_command,
    scinterp_env, tiny_v2_token_store,
};
use scinterp_models::token_store::TokenStore;

/// `scinterp` with `args`, logging at info level.
fn run(args: &[&str]) -> Output {
    scinterp_env(args, &[("SCINTERP_LOG", "info")])
}

/// A Geneformer tokenize of the embedded pbmc68k cells (700 cells) into `out`.
fn tokenize(out: &Path, extra: &[&str]) -> Output {
    run(&as_strs(&pbmc68k_tokenize_args(out, extra)))
}

/// The id of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A resume chunk with one flipped bit is found by its checksum, named, discarded and tokenized again:
/// the store equals an uninterrupted run's.
#[test]
fn tokenize_discards_a_damaged_resume_chunk_by_name_and_redoes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    ok_stderr(&tokenize(&reference, &["--max-len", "128"]));
    let store = tmp.path().join("store");
    let chunked = [
        "--max-len",
        "128",
        "--chunk-cells",
        "100",
        "--checkpoint-secs",
        "0",
    ];
    let stopped = tokenize(&store, &[&chunked[..], &["--stop-after-chunks", "3"]].concat());
    assert!(!stopped.status.success());
    let chunk = tmp.path().join("store.partial/chunk-000000000100.bin");
    let mut bytes = std::fs::read(&chunk).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x04;
    std::fs::write(&chunk, &bytes).unwrap();

    let stderr = ok_stderr(&tokenize(&store, &chunked));
    assert!(
        stderr.contains("chunk-000000000100.bin")
            && stderr.contains("checksum")
            && stderr.contains("discarded"),
        "the damaged chunk is not named:\n{stderr}"
    );
    assert!(stderr.contains("2 of 7 chunks"), "{stderr}");
    assert_eq!(files(&store), files(&reference), "the resumed store differs");
    assert!(!tmp.path().join("store.partial").exists());
}

/// Temporary folders of killed runs for the same --out are removed by the next run; a live run's and
/// another output's are not.
#[test]
fn tokenize_removes_the_temporary_folders_of_killed_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    let killed = tmp.path().join(format!(".store.tmp-{}", dead_pid()));
    let mut live = Command::new("sleep").arg("60").spawn().unwrap();
    let running = tmp.path().join(format!(".store.tmp-{}", live.id()));
    let other = tmp.path().join(format!(".other.tmp-{}", dead_pid()));
    for d in [&killed, &running, &other] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("tokens.npy"), vec![0u8; 4096]).unwrap();
    }
    let result = tokenize(&out, &["--max-len", "64"]);
    let _ = live.kill();
    let _ = live.wait();
    let stderr = ok_stderr(&result);
    assert!(!killed.exists(), "a killed run's folder is left:\n{stderr}");
    assert!(stderr.contains("killed run"), "{stderr}");
    assert!(running.join("tokens.npy").is_file() && other.join("tokens.npy").is_file());
    assert!(TokenStore::read(&out).is_ok());
}

/// `tokenize --overwrite` killed at any moment leaves a whole store at --out: the earlier one or the
/// new one, never none and never a mix; the next run leaves nothing else beside it.
#[test]
fn a_killed_tokenize_overwrite_keeps_a_whole_store() {
    let tmp = tempfile::tempdir().unwrap();
    let old_ref = tmp.path().join("old");
    let new_ref = tmp.path().join("new");
    ok_stderr(&tokenize(&old_ref, &["--max-len", "64"]));
    let started = Instant::now();
    ok_stderr(&tokenize(&new_ref, &["--max-len", "96"]));
    let length = started.elapsed();
    let (old_files, new_files) = (files(&old_ref), files(&new_ref));
    let out = tmp.path().join("out");
    ok_stderr(&tokenize(&out, &["--max-len", "64"]));
    // Kill times spread over a whole run, the last ones past its end.
    let steps = 12u32;
    let mut outcomes = BTreeMap::new();
    for i in 0..=steps {
        let wait = length.mul_f64(f64::from(i) * 1.2 / f64::from(steps));
        let args = pbmc68k_tokenize_args(&out, &["--max-len", "96", "--overwrite"]);
        let mut child = scinterp_command()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(wait);
        let _ = child.kill();
        let _ = child.wait();
        // A kill between the two renames of a swap without atomic exchange leaves the earlier store
        // aside; any next run puts it back first. Here: the refusal of a run without --overwrite.
        let now = if out.exists() {
            files(&out)
        } else {
            let refused = tokenize(&out, &["--max-len", "64"]);
            assert!(!refused.status.success());
            files(&out)
        };
        let which = if now == old_files {
            "old"
        } else if now == new_files {
            "new"
        } else {
            panic!("killed after {wait:?}: --out holds neither store whole")
        };
        *outcomes.entry(which).or_insert(0) += 1;
        // Back to the earlier store for the next kill.
        if which == "new" {
            ok_stderr(&tokenize(&out, &["--max-len", "64", "--overwrite"]));
        }
    }
    println!("outcomes over {} kills: {outcomes:?}", steps + 1);
    // A last run cleans every leftover of the killed ones.
    ok_stderr(&tokenize(&out, &["--max-len", "96", "--overwrite"]));
    assert_eq!(files(&out), new_files);
    let left: Vec<String> = names(tmp.path())
        .into_iter()
        .filter(|n| n.starts_with(".out"))
        .collect();
    assert!(left.is_empty(), "left beside the store: {left:?}");
}

/// `extract` killed between creating its folder and writing the first manifest left rows.npy and hook
/// files without manifest.json, which the rerun refused ("not an activation store"). Now the rerun
/// starts over there and writes what an uninterrupted run writes, byte for byte.
#[test]
fn extract_killed_before_its_first_manifest_is_started_over() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    tiny_v2_token_store(&tokens, 3);
    let model = fixture("tiny_v2");
    let extract = |out: &Path| {
        run(&[
            "extract",
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--hooks",
            "hook_embed,blocks.1.hook_resid_post",
            "--max-batch-tokens",
            "64",
            "--out",
            s(out),
        ])
    };
    let reference = tmp.path().join("reference");
    ok_stderr(&extract(&reference));
    // What a kill after the hook files' creation and before the manifest leaves: the row index, one
    // hook file whole and one only begun.
    let killed = tmp.path().join("killed");
    std::fs::create_dir(&killed).unwrap();
    for name in ["rows.npy", "hook_embed.npy"] {
        std::fs::copy(reference.join(name), killed.join(name)).unwrap();
    }
    std::fs::write(killed.join("blocks.1.hook_resid_post.npy"), b"\x93NUMPY\x01\x00").unwrap();
    ok_stderr(&extract(&killed));
    assert_eq!(files(&killed), files(&reference));
    // A folder with anything else is still refused and left alone.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::copy(reference.join("rows.npy"), foreign.join("rows.npy")).unwrap();
    std::fs::write(foreign.join("notes.txt"), "keep").unwrap();
    let refused = extract(&foreign);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not an activation store"));
    assert_eq!(names(&foreign), ["notes.txt", "rows.npy"]);
}

/// With stderr not a terminal, effects logs plain progress lines counted in edits (cell × feature ×
/// α × control), ending with the full count.
#[test]
fn effects_logs_progress_in_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("effects.tsv");
    let fx = fixtures().join("trace");
    let result = scinterp_env(
        &[
            "effects",
            "--model",
            s(&fixture("tiny_v2")),
            "--input",
            s(&fx.join("tokens")),
            "--saes",
            s(&fx.join("saes")),
            "--source",
            "blocks.0.hook_resid_post",
            "--features",
            "0,1,2,3,4,5,6,7",
            "--cells",
            "8",
            "--alphas",
            "0,2",
            "--readout-tokens",
            "5,6,7",
            "--max-batch-tokens",
            "64",
            "--out",
            s(&out),
        ],
        &[("SCINTERP_PROGRESS_SECS", "0")],
    );
    let stderr = ok_stderr(&result);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("effects ")).collect();
    // 8 cells × 8 features × 2 scales × (feature, control).
    let total = 8 * 8 * 2 * 2;
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.contains(" edits (") && l.contains("ETA")),
        "{stderr}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with(&format!("effects {total}/{total} edits (100 %")),
        "{stderr}"
    );
    assert!(!stderr.contains('\r') && !stderr.contains('\u{1b}'));
    assert!(out.is_file());
}
