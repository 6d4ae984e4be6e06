//! `scinterp trace` against the naive published computation (a hooked Hugging Face full forward per
//! (feature, cell), SAE encodes in torch, statistics by scipy): `tests/reference/trace_reference.py`,
//! fixtures written by `tests/reference/make_trace_fixtures.py` (see tests/reference/README.md).
//!
//! Fixture: `tests/fixtures/geneformer/tiny_v2` (4 layers, d 128, vocab 96), a 16-cell V2 token store,
//! TopK SAEs (d_sae 64, k 4) at blocks.0 (source) and blocks.2 (target), and `expected_edges.tsv`, every
//! tested edge (`--max-q 1`), computed in float64 from the f32 weights.
//!
//! Every column is compared with max|a − b| / max(1, max|b|) ≤ 1e-4 over the edges both tables hold;
//! the edge sets must be equal except for edges whose |mean change| is below 1e-6 in both.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{fixtures, scinterp_command};

const COLUMNS: [&str; 13] = [
    "source_hook",
    "source_feature",
    "target_hook",
    "target_feature",
    "n_cells",
    "mean_change",
    "sd_change",
    "cohens_d",
    "hedges_g",
    "sign_consistency",
    "t",
    "p",
    "q",
];
const TOL: f64 = 1e-4;
const TINY_MEAN: f64 = 1e-6;

type Key = (String, u32, String, u32);

/// Edge key → the numeric columns n_cells..q, by hand (no csv dependency).
fn read_edges(path: &Path) -> BTreeMap<Key, Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("empty edge table").split('\t').collect();
    // scinterp's table has more columns after these (the direction fractions, checked below).
    assert_eq!(
        header[..COLUMNS.len().min(header.len())],
        COLUMNS,
        "{}: header",
        path.display()
    );
    let mut edges = BTreeMap::new();
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), header.len(), "{} line {}: {line}", path.display(), i + 2);
        let key = (
            f[0].to_string(),
            f[1].parse().unwrap(),
            f[2].to_string(),
            f[3].parse().unwrap(),
        );
        let values: Vec<f64> = f[4..COLUMNS.len()]
            .iter()
            .map(|s| {
                s.parse::<f64>()
                    .unwrap_or_else(|e| panic!("{} line {}: `{s}`: {e}", path.display(), i + 2))
            })
            .collect();
        assert!(
            edges.insert(key.clone(), values).is_none(),
            "{}: edge {key:?} twice",
            path.display()
        );
    }
    edges
}

fn run_trace(out: &Path, extra: &[&str]) {
    let fx = fixtures();
    let trace = fx.join("trace");
    let mut cmd = scinterp_command();
    cmd.arg("trace")
        .arg("--model")
        .arg(fx.join("geneformer/tiny_v2"))
        .arg("--input")
        .arg(trace.join("tokens"))
        .arg("--saes")
        .arg(trace.join("saes"))
        .args(["--source", "blocks.0.hook_resid_post"])
        .args(["--targets", "blocks.2.hook_resid_post"])
        .args(["--features", "all", "--threads", "2"])
        .arg("--out")
        .arg(out)
        .args(extra);
    let res = cmd.output().expect("run scinterp");
    assert!(
        res.status.success(),
        "scinterp trace failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[test]
fn trace_statistics_equal_the_naive_hooked_forward_reference() {
    let expected = read_edges(&fixtures().join("trace/expected_edges.tsv"));
    assert!(expected.len() > 1000, "fixture has only {} edges", expected.len());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("edges.tsv");
    run_trace(&out, &["--max-q", "1"]);
    let got = read_edges(&out);
    // The direction fractions: `source_raises_target_fraction` counts cells where ablation lowered the
    // target (change < 0), `source_lowers_target_fraction` cells where it raised it; the consistency is
    // the larger of the two (zeros count for neither, so they sum to at most 1).
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (raises, lowers, cons) = (
        col("source_raises_target_fraction"),
        col("source_lowers_target_fraction"),
        col("sign_consistency"),
    );
    for line in lines {
        let f: Vec<f64> = line.split('\t').map(|x| x.parse().unwrap_or(f64::NAN)).collect();
        assert!((f[raises].max(f[lowers]) - f[cons]).abs() < 1e-12, "{line}");
        assert!(f[raises] + f[lowers] <= 1.0 + 1e-12, "{line}");
    }
    let mean_col = 1; // index of mean_change among the numeric columns

    // Edge sets: equal, except edges with a negligible mean on both sides.
    let mut missing = Vec::new();
    for (k, v) in &expected {
        if !got.contains_key(k) && v[mean_col].abs() >= TINY_MEAN {
            missing.push((k.clone(), v[mean_col]));
        }
    }
    let mut extra = Vec::new();
    for (k, v) in &got {
        if !expected.contains_key(k) && v[mean_col].abs() >= TINY_MEAN {
            extra.push((k.clone(), v[mean_col]));
        }
    }
    assert!(
        missing.is_empty() && extra.is_empty(),
        "edge sets differ: {} missing (first {:?}), {} extra (first {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );

    // Every numeric column within max|a − b| / max(1, max|b|).
    let common: Vec<&Key> = expected.keys().filter(|k| got.contains_key(*k)).collect();
    let mut failures = Vec::new();
    for (c, name) in COLUMNS[4..].iter().enumerate() {
        let scale = common
            .iter()
            .map(|k| expected[*k][c].abs())
            .filter(|x| x.is_finite())
            .fold(1.0f64, f64::max);
        let mut worst = (0.0f64, None);
        for k in &common {
            let (a, b) = (got[*k][c], expected[*k][c]);
            let err = if a.is_finite() && b.is_finite() {
                (a - b).abs() / scale
            } else if a.is_nan() && b.is_nan() || a == b {
                0.0
            } else {
                f64::INFINITY
            };
            if err > worst.0 || worst.1.is_none() {
                worst = (err, Some((*k, a, b)));
            }
        }
        let (err, at) = worst;
        eprintln!("{name:>16}: worst {err:.3e} (scale {scale:.4}) at {at:?}");
        if err > TOL {
            failures.push(format!("{name}: {err:.3e} at {at:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "columns off by more than {TOL}: {failures:#?}"
    );
}

/// The default filter (q ≤ 0.05) and the |d| / consistency filters keep exactly the rows of the full
/// table that pass them.
#[test]
fn trace_filters_select_rows_of_the_full_table() {
    let tmp = tempfile::tempdir().unwrap();
    let all_path = tmp.path().join("all.tsv");
    run_trace(&all_path, &["--max-q", "1"]);
    let all = read_edges(&all_path);
    let filtered_path = tmp.path().join("filtered.tsv");
    run_trace(
        &filtered_path,
        &[
            "--max-q",
            "0.05",
            "--min-abs-d",
            "0.5",
            "--min-consistency",
            "0.7",
        ],
    );
    let filtered = read_edges(&filtered_path);
    // n_cells mean sd d g consistency t p q → d = 3, consistency = 5, q = 8.
    let want: Vec<&Key> = all
        .iter()
        .filter(|(_, v)| v[8] <= 0.05 && v[3].abs() >= 0.5 && v[5] >= 0.7)
        .map(|(k, _)| k)
        .collect();
    assert!(!want.is_empty(), "no edge passes the filters on the fixture");
    assert_eq!(filtered.keys().collect::<Vec<_>>(), want);
    for (k, v) in &filtered {
        assert_eq!(v, &all[k], "{k:?}: a filtered row differs from the full table's");
    }
    // The summary beside it.
    let summary = std::fs::read_to_string(tmp.path().join("filtered.summary.json")).unwrap();
    assert!(
        summary.contains(&format!("\"edges_written\": {}", want.len())),
        "{summary}"
    );
}
