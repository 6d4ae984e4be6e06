//! How a test says it did not run (README, "Skipped tests"): one line on stderr,
//! `SKIPPED <test name>: <why>`, at the start of a line, so that
//! `cargo test -- --nocapture 2>&1 | grep -c '^SKIPPED'` counts them. A test that skips only one part
//! names the part: `SKIPPED <test name> (<part>): <why>`.

use std::path::PathBuf;

use super::repo_root;

/// The running test's name: libtest names each test's thread after the test.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string()
}

fn print_skip(line: String) {
    // The leading newline keeps the line countable when libtest runs one test at a time (it has then
    // printed `test name ... ` without a newline); one write keeps parallel tests' lines whole.
    let line = format!("\nSKIPPED {line}\n");
    eprint!("{line}");
}

/// Prints that the running test skipped, and why; the caller returns.
pub fn skip(why: &str) {
    print_skip(format!("{}: {why}", test_name()));
}

/// Prints that one part of the running test skipped, and why; the test goes on without it.
pub fn skip_part(part: &str, why: &str) {
    print_skip(format!("{} ({part}): {why}", test_name()));
}

/// The reference data folder, `../shared/data` beside the checkout (see its README). A clean clone, as
/// in CI, has none: tests that need it skip there.
pub fn shared_data_root() -> PathBuf {
    repo_root().join("../shared/data")
}

/// `../shared/data/<rel>` if it exists; otherwise prints `SKIPPED <test>: ../shared/data/<rel> not
/// found` and returns None, for the caller to return.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let p = shared_data_root().join(rel);
    if p.exists() {
        Some(p)
    } else {
        skip(&format!("{} not found", shown(rel)));
        None
    }
}

/// Every one of `rels` under `../shared/data`, or None after one skip line naming the first missing.
pub fn shared_data_all<const N: usize>(rels: [&str; N]) -> Option<[PathBuf; N]> {
    let root = shared_data_root();
    if let Some(missing) = rels.iter().find(|r| !root.join(r).exists()) {
        skip(&format!("{} not found", shown(missing)));
        return None;
    }
    Some(rels.map(|r| root.join(r)))
}

/// `../shared/data/<rel>` if it exists; otherwise prints that `part` of the test skipped.
pub fn shared_data_for_part(part: &str, rel: &str) -> Option<PathBuf> {
    let p = shared_data_root().join(rel);
    if p.exists() {
        Some(p)
    } else {
        skip_part(part, &format!("{} not found", shown(rel)));
        None
    }
}

fn shown(rel: &str) -> String {
    if rel.is_empty() {
        "../shared/data".into()
    } else {
        format!("../shared/data/{rel}")
    }
}

/// Whether this is a CI run (`CI=true`, as `.ci/run` and hosted CI set it).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// For a tool that CI installs (Chromium, Slurm, snakemake): fails under CI=true, elsewhere prints
/// the skip line; returns None for the caller to return.
pub fn required_in_ci<T>(why: &str) -> Option<T> {
    if ci() {
        panic!("{}: {why}", test_name());
    }
    skip(why);
    None
}
