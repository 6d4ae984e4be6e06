//! Helpers shared by the end-to-end tests: running the binary and checking its outcome, fixture paths
//! and small fixtures written on the fly (files.rs), reading expected tensors, comparing, the tests' one
//! seeded generator, and the way a test says it skipped (skip.rs).
#![allow(dead_code)]

mod files;
mod skip;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use files::*;
#[allow(unused_imports)]
pub use skip::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;
use scinterp_engine::rng::Rng;
use scinterp_models::synthetic::SyntheticSpec;

/// The `scinterp` binary built for these tests, logging at warn level (callers may override
/// `SCINTERP_LOG`, spawn it, or pass arguments that are not UTF-8).
pub fn scinterp_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scinterp"));
    cmd.env("SCINTERP_LOG", "warn");
    cmd
}

/// Runs `scinterp` with `args` (log level warn).
pub fn scinterp(args: &[&str]) -> Output {
    scinterp_env(args, &[])
}

/// Runs `scinterp` with `args` and extra environment variables (these may set `SCINTERP_LOG`).
pub fn scinterp_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = scinterp_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run scinterp")
}

/// Asserts success and returns stdout (the `--json` report where one was asked for).
pub fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scinterp failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts success and returns stderr (the log).
pub fn ok_stderr(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "scinterp failed: {stderr}");
    stderr
}

/// Asserts success and parses stdout as the `--json` report.
pub fn ok_json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("--json prints JSON")
}

/// `scinterp extract` of `hooks` of the tiny_v2 fixture model over `tokens` into `out`, with the default
/// settings (f16); it must succeed.
pub fn extract_tiny_v2(tokens: &Path, hooks: &str, out: &Path) {
    ok(&scinterp(&[
        "extract",
        "--model",
        s(&fixture("tiny_v2")),
        "--input",
        s(tokens),
        "--hooks",
        hooks,
        "--out",
        s(out),
    ]));
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The tests' one seeded generator: the engine's splitmix64 stream (`stream` separates independent
/// draws from one seed), so a fixture drawn here is the same on every machine and run.
pub fn rng(seed: u64, stream: u64) -> Rng {
    Rng::new(seed, stream)
}

/// Asserts a clean failure: non-zero exit, an error line containing every `needles`, no panic.
pub fn assert_fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "panic instead of an error: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks `{n}`: {stderr}");
    }
}

/// The repository root: `SCINTERP_TEST_ROOT` when set (test binaries built here and run from another
/// checkout, e.g. by bench/gpu/run.sh on the GPU host), else this crate's folder.
pub fn repo_root() -> PathBuf {
    std::env::var_os("SCINTERP_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The committed fixtures (tests/fixtures).
pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join("geneformer").join(name)
}

pub fn scgpt_fixture(name: &str) -> PathBuf {
    fixtures().join("scgpt").join(name)
}

/// The embedded assets (models/assets): the small trained models and the compact real cells.
pub fn assets() -> PathBuf {
    repo_root().join("models/assets")
}

/// The real-width scGPT fixture (512 wide, 8 heads: head_dim 64, the one the GPU attention kernel takes)
/// ships gzip-compressed; unpack it into a model folder.
pub fn scgpt_width512_dir() -> tempfile::TempDir {
    let src = scgpt_fixture("width512");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("args.json"), dir.path().join("args.json")).unwrap();
    for name in ["best_model.pt", "vocab.json"] {
        let gz = std::fs::File::open(src.join(format!("{name}.gz"))).unwrap();
        let mut out = std::fs::File::create(dir.path().join(name)).unwrap();
        std::io::copy(&mut flate2::read::GzDecoder::new(gz), &mut out).unwrap();
    }
    dir
}

/// A tensor from an `expected.safetensors`, as f64 values plus its shape.
pub struct Expected {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

pub struct ExpectedFile {
    tensors: HashMap<String, Expected>,
}

impl ExpectedFile {
    pub fn open(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("unexpected dtype {other:?} for {name}"),
            };
            tensors.insert(
                name,
                Expected {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        ExpectedFile { tensors }
    }

    pub fn get(&self, name: &str) -> &Expected {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("expected tensor {name} missing"))
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The cells as token lists (from `input_ids` and `lengths`).
    pub fn cells(&self) -> Vec<Vec<u32>> {
        let ids = self.get("input_ids");
        let lengths = &self.get("lengths").values;
        let max_len = ids.shape[1];
        lengths
            .iter()
            .enumerate()
            .map(|(c, &len)| {
                ids.values[c * max_len..c * max_len + len as usize]
                    .iter()
                    .map(|&v| v as u32)
                    .collect()
            })
            .collect()
    }
}

/// Per-position rows of a padded `[n_cells, max_len]` tensor (e.g. scGPT's `expr_pred`), real positions
/// only, concatenated in cell order.
pub fn real_positions(t: &Expected, lengths: &[usize]) -> Vec<f64> {
    let max_len = t.shape[1];
    let mut out = Vec::new();
    for (c, &len) in lengths.iter().enumerate() {
        out.extend_from_slice(&t.values[c * max_len..c * max_len + len]);
    }
    out
}

/// The metric of the parity tests: max |a − b| / max(1, max |b|) over the given values.
pub fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let max_diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    let scale = want.iter().map(|b| b.abs()).fold(1.0, f64::max);
    max_diff / scale
}

/// Real (unpadded) rows of a padded `[n_cells, max_len, width]` tensor, concatenated in cell order.
pub fn real_rows(t: &Expected, lengths: &[usize]) -> Vec<f64> {
    let (max_len, width) = (t.shape[1], t.shape[2]);
    let mut out = Vec::new();
    for (c, &len) in lengths.iter().enumerate() {
        let start = c * max_len * width;
        out.extend_from_slice(&t.values[start..start + len * width]);
    }
    out
}

/// A model folder for a formula-weight fixture: config.json plus a generated model.safetensors.
pub fn formula_model_dir(fixture_dir: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_dir.join("config.json"), dir.path().join("config.json")).unwrap();
    let spec = SyntheticSpec::from_file(&fixture_dir.join("weights.json")).unwrap();
    spec.write_safetensors(&dir.path().join("model.safetensors"))
        .unwrap();
    dir
}
