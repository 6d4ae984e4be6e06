//! The Snakemake workflow (workflow/) on a real Slurm cluster: the demo config run through
//! `--profile workflow/profiles/slurm` gives the same files as through `--profile workflow/profiles/local`,
//! and a job cancelled mid-way (`scancel` of a trace shard after its first checkpoint) is
//! resubmitted, resumes from the checkpoint and completes. Also the job graph of the
//! full-size config (18 layers, 4,608 features) by `snakemake -n`.
//!
//! Needs snakemake ≥ 8 with snakemake-executor-plugin-slurm (found as SCINTERP_SNAKEMAKE, on PATH, or in
//! /tmp/venv-flow) and a Slurm cluster answering `sinfo` (.ci/slurm-up starts a single-node one on
//! localhost; .ci/run installs everything). Without them the tests fail under CI=true and skip with a
//! message elsewhere.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo_root, required_in_ci};

/// Fails under CI=true, otherwise prints why the test skips; returns None for the caller to return.
fn missing<T>(what: &str) -> Option<T> {
    required_in_ci(&format!(
        "{what} (run .ci/run, or install slurm-wlm and munge, start .ci/slurm-up, and pip install \
         snakemake snakemake-executor-plugin-slurm into /tmp/venv-flow or set SCINTERP_SNAKEMAKE)"
    ))
}

fn snakemake() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SCINTERP_SNAKEMAKE") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/tmp/venv-flow/bin")])
        .map(|d| d.join("snakemake"))
        .find(|p| p.is_file());
    match found {
        Some(p) => Some(p),
        None => missing("snakemake not found"),
    }
}

/// A Slurm cluster that answers and has a usable node.
fn slurm_up() -> Option<()> {
    for tool in ["sbatch", "squeue", "scancel", "sinfo"] {
        let found = Command::new("which").arg(tool).stdout(Stdio::null()).status();
        if !found.is_ok_and(|s| s.success()) {
            return missing(&format!("{tool} not found"));
        }
    }
    let out = Command::new("sinfo").args(["-h", "-o", "%T"]).output();
    match out {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout).contains("idle")
                || String::from_utf8_lossy(&o.stdout).contains("mix")
                || String::from_utf8_lossy(&o.stdout).contains("alloc") =>
        {
            Some(())
        }
        _ => missing("no Slurm cluster answers `sinfo` with a usable node (start it with .ci/slurm-up)"),
    }
}

/// `snakemake` over the demo config in `work`, with the profile and extra arguments.
fn workflow(snakemake: &Path, work: &Path, profile: &str, extra: &[&str]) -> Command {
    let root = repo_root();
    let mut cmd = Command::new(snakemake);
    cmd.current_dir(work)
        .arg("--snakefile")
        .arg(root.join("workflow/Snakefile"))
        .arg("--profile")
        .arg(root.join("workflow/profiles").join(profile))
        .arg("--configfile")
        .arg(root.join("workflow/demo.yaml"))
        .args([
            "--config",
            &format!("scinterp={}", env!("CARGO_BIN_EXE_scinterp")),
        ])
        .args(extra);
    // Snakemake's own files (and the plugin's Slurm logs) stay in the work folder.
    cmd.env("XDG_CACHE_HOME", work.join(".cache"));
    cmd
}

fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().expect("run snakemake");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// Every file under `dir` (relative path → bytes), without logs, work folders and Snakemake's
/// timestamps.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let name = rel.to_string_lossy();
            if name.starts_with("logs") || name.starts_with(".work") || name.ends_with(".snakemake_timestamp")
            {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// JSON keys that hold wall-clock measurements (seconds, rates): the only content allowed to differ
/// between two runs of the same commands.
const TIMING_KEYS: [&str; 5] = [
    "seconds",
    "train_seconds",
    "tokens_per_second",
    "ablations_per_second",
    "edits_per_second",
];

/// A file's content as JSON without timings: `.json` files, and the atlas's data scripts (which carry
/// the summaries they were built from).
fn comparable(path: &Path, bytes: &[u8]) -> Option<serde_json::Value> {
    let mut value = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_slice(bytes).ok()?,
        Some("js") => scinterp_export::atlas::read_script(std::str::from_utf8(bytes).ok()?)?.1,
        _ => return None,
    };
    without_timings(&mut value);
    Some(value)
}

fn without_timings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !TIMING_KEYS.contains(&k.as_str()));
            map.values_mut().for_each(without_timings);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_timings),
        _ => {}
    }
}

/// `(squeue id, comment, state)` of every job the cluster still knows.
fn jobs() -> Vec<(String, String, String)> {
    let out = Command::new("squeue")
        .args(["-h", "--states=all", "-o", "%i|%k|%T"])
        .output()
        .expect("squeue");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.trim().split('|');
            Some((
                parts.next()?.to_string(),
                parts.next()?.to_string(),
                parts.next()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn slurm_run_equals_the_local_run_and_survives_a_cancelled_job() {
    let Some(snakemake) = snakemake() else { return };
    let Some(()) = slurm_up() else { return };
    // Under /tmp: the single-node cluster shares it; the checkout's models/ and workflow/ are linked in so
    // the demo config's relative paths resolve (manifests record the resolved paths, the same in both runs).
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    for linked in ["models", "workflow"] {
        std::os::unix::fs::symlink(repo_root().join(linked), work.join(linked)).unwrap();
    }

    // One machine.
    let local_started = Instant::now();
    let log = run_ok(
        workflow(&snakemake, work, "local", &["--cores", "2"]),
        "the local run",
    );
    assert!(log.contains("18 of 18 steps (100%) done"), "{log}");
    let local_seconds = local_started.elapsed().as_secs_f64();
    std::fs::rename(work.join("results"), work.join("results-local")).unwrap();
    std::fs::remove_dir_all(work.join(".snakemake")).unwrap();

    // Slurm: the same workflow as sbatch jobs; job status by squeue (this cluster has no accounting
    // database), checked often so that the short demo jobs are seen quickly.
    let before: Vec<String> = jobs().into_iter().map(|j| j.0).collect();
    let mut cmd = workflow(
        &snakemake,
        work,
        "slurm",
        &[
            "--slurm-status-command",
            "squeue",
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--default-resources",
            "slurm_partition=cpu",
            "mem_mb=1000",
            "runtime=20",
        ],
    );
    let log_path = work.join("slurm-run.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    cmd.stdout(log_file.try_clone().unwrap()).stderr(log_file);
    let mut child = cmd.spawn().expect("start snakemake");

    // Cancel a trace shard mid-way, as a preemption or an operator would: once its first chunks are
    // checkpointed (`shard_i.checkpoint` beside its output), while its job is running.
    let started = Instant::now();
    let mut cancelled: Option<(String, String, usize)> = None;
    while cancelled.is_none() && started.elapsed() < Duration::from_secs(300) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the Slurm run ended ({status}) before a job could be cancelled:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        let checkpointed = (0..2).find(|i| work.join(format!("results/trace/shard_{i}.checkpoint")).exists());
        let running = checkpointed.and_then(|i| {
            let rule = format!("rule_trace_shard_wildcards_{i}");
            jobs()
                .into_iter()
                .find(|(id, comment, state)| !before.contains(id) && *comment == rule && state == "RUNNING")
                .map(|(id, comment, _)| (id, comment, i))
        });
        if let Some((id, comment, i)) = running {
            let status = Command::new("scancel").arg(&id).status().unwrap();
            assert!(status.success(), "scancel {id}");
            cancelled = Some((id, comment, i));
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let Some((cancelled_id, comment, shard)) = cancelled else {
        let _ = child.kill();
        panic!("no trace shard was seen running with a checkpoint within 5 minutes");
    };
    let status = child.wait().unwrap();
    let slurm_seconds = started.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "the Slurm run failed:\n{log}");
    assert!(log.contains("18 of 18 steps (100%) done"), "{log}");

    // The cancelled job is CANCELLED, and the same job was submitted again and COMPLETED.
    let after = jobs();
    let state_of = |id: &str| after.iter().find(|j| j.0 == id).map(|j| j.2.clone());
    assert_eq!(state_of(&cancelled_id).as_deref(), Some("CANCELLED"), "{after:?}");
    let reruns: Vec<_> = after
        .iter()
        .filter(|(id, c, _)| *c == comment && *id != cancelled_id && !before.contains(id))
        .collect();
    assert!(
        reruns.iter().any(|j| j.2 == "COMPLETED"),
        "job `{comment}` ({cancelled_id}) was not resubmitted to completion: {after:?}\n{log}"
    );
    // The resubmitted shard continued from the cancelled one's checkpoint.
    let shard_log =
        std::fs::read_to_string(work.join(format!("results/logs/trace_shard_{shard}.log"))).unwrap();
    assert!(shard_log.contains("resuming from"), "{shard_log}");
    // Every job of the run went through Slurm.
    let submitted = after.iter().filter(|j| !before.contains(&j.0)).count();
    assert!(
        submitted >= 18,
        "{submitted} Slurm jobs for 17 steps + a resubmission: {after:?}"
    );

    // The same files as the local run: byte for byte, except wall-clock timings in JSON summaries.
    let local = files(&work.join("results-local"));
    let slurm = files(&work.join("results"));
    assert_eq!(
        local.keys().collect::<Vec<_>>(),
        slurm.keys().collect::<Vec<_>>(),
        "the two runs wrote different files"
    );
    assert!(local.len() > 40, "only {} files: {:?}", local.len(), local.keys());
    let mut timing_only = Vec::new();
    for (path, bytes) in &local {
        if slurm[path] == *bytes {
            continue;
        }
        let (a, b) = (comparable(path, bytes), comparable(path, &slurm[path]));
        assert!(
            a.is_some() && a == b,
            "{} differs between the local and the Slurm run (beyond wall-clock timings)",
            path.display()
        );
        timing_only.push(path.display().to_string());
    }
    eprintln!("wall clock: local profile {local_seconds:.0} s, Slurm profile {slurm_seconds:.0} s");
    eprintln!(
        "{} files equal; {} differ only in timings: {timing_only:?}",
        local.len() - timing_only.len(),
        timing_only.len()
    );
}

#[test]
fn full_size_config_dry_run_shows_the_job_graph() {
    let Some(snakemake) = snakemake() else { return };
    let root = repo_root();
    // The full config names cluster paths; a dry run needs only the cells file to exist.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(&snakemake)
        .current_dir(tmp.path())
        .env("XDG_CACHE_HOME", tmp.path().join(".cache"))
        .arg("--snakefile")
        .arg(root.join("workflow/Snakefile"))
        .arg("--configfile")
        .arg(root.join("workflow/config.yaml"))
        .arg("--config")
        .arg(format!(
            "cells={}",
            root.join("models/assets/cells/pbmc68k.h5ad.gz").display()
        ))
        .args(["--dry-run", "--quiet", "rules", "--cores", "1"])
        .output()
        .expect("run snakemake");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "snakemake -n failed:\n{text}");
    let count = |rule: &str| -> usize {
        text.lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(rule))
                    .then(|| parts.next()?.parse().ok())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no `{rule}` row in the job stats:\n{text}"))
    };
    // 18 layers: 32 extract shards + a merge, 18 SAEs, 18 catalogs, one annotate over all of them,
    // 48 trace shards (of the 4,608 layer-5 features) + a merge, effects, atlas.
    for (rule, n) in [
        ("tokenize", 1),
        ("extract_shard", 32),
        ("extract_merge", 1),
        ("sae", 18),
        ("analyze", 18),
        ("annotate", 1),
        ("trace_shard", 48),
        ("trace_merge", 1),
        ("effects", 1),
        ("atlas", 1),
        ("total", 123),
    ] {
        assert_eq!(count(rule), n, "{rule}:\n{text}");
    }
}
