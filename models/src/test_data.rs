//! Test-only: the reference data at `../shared/data` beside the checkout, and the line a test prints
//! when it is absent, the same as the root crate's tests print (README, "Skipped tests"):
//! `SKIPPED <test name>: ../shared/data/<rel> not found`, counted by
//! `cargo test -- --nocapture 2>&1 | grep -c '^SKIPPED'`.

use std::path::PathBuf;

/// `../shared/data/<rel>` if it exists; otherwise prints the skip line and returns None, for the caller
/// to return. A clean clone (as in CI) has no `../shared`: the tests skip there.
pub(crate) fn shared_data(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")).join(rel);
    if p.exists() {
        Some(p)
    } else {
        skip(&format!("../shared/data/{rel} not found"));
        None
    }
}

/// Prints that the running test (libtest names its thread after it) skipped, and why.
pub(crate) fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    // The leading newline keeps the line countable when tests run one at a time (libtest has then
    // printed `test name ... ` without a newline); one write keeps parallel tests' lines whole.
    let line = format!("\nSKIPPED {test}: {why}\n");
    eprint!("{line}");
}
