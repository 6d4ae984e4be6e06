//! Parity of `scinterp tokenize` with an independent numpy reference on real data.
//!
//! The expected stores under `tests/fixtures/real_tokens/<case>/` are written by
//! `tests/reference/make_real_token_fixtures.py` (Geneformer's `TranscriptomeTokenizer` and scGPT's binning
//! re-implemented in numpy; the scGPT random draws follow scinterp's documented splitmix64 rule, so the
//! comparison is exact). Each test runs the binary on the same real input and compares tokens, offsets and
//! (scGPT) values exactly. The inputs live in `../shared/data`; without it the tests print `SKIPPED …`.

mod common;

use std::path::{Path, PathBuf};

use common::{scinterp_command, shared_data, shared_data_all};
use scinterp_engine::npy::{read_npy_bytes, NpyDtype};

fn fixtures() -> PathBuf {
    common::fixtures().join("real_tokens")
}

/// Reads an integer or float `.npy` array as f64 (every dtype used here converts exactly).
fn read_npy(path: &Path) -> Vec<f64> {
    let (header, bytes) = read_npy_bytes(path).unwrap_or_else(|e| panic!("{e}"));
    match header.dtype {
        NpyDtype::U16 => bytes
            .chunks_exact(2)
            .map(|b| f64::from(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        NpyDtype::I16 => bytes
            .chunks_exact(2)
            .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])))
            .collect(),
        NpyDtype::I32 => bytes
            .chunks_exact(4)
            .map(|b| f64::from(i32::from_le_bytes(b.try_into().unwrap())))
            .collect(),
        NpyDtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
            .collect(),
        NpyDtype::I64 => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("{}: unexpected dtype {other:?}", path.display()),
    }
}

struct Case {
    name: &'static str,
    input: PathBuf,
    args: Vec<String>,
    scgpt: bool,
}

fn case(name: &str) -> Option<Case> {
    let data = shared_data("")?;
    if name.starts_with("10x") {
        shared_data("cells/10x_chr21_v3")?;
    }
    shared_data_all(["geneformer", "scgpt/whole-human"])?;
    let tenx = data.join("cells/10x_chr21_v3");
    let pbmc = fixtures().join("pbmc68k_counts.h5ad");
    let gf = |v: &str, kind: &str| {
        vec![
            "--model".to_string(),
            format!("geneformer-{v}"),
            "--dictionaries".into(),
            data.join("geneformer").join(v).display().to_string(),
            "--gene-ids".into(),
            kind.into(),
        ]
    };
    let scgpt = vec![
        "--model".to_string(),
        "scgpt".into(),
        "--vocab".into(),
        data.join("scgpt/whole-human").display().to_string(),
        "--gene-ids".into(),
        "symbol".into(),
        "--seed".into(),
        "0".into(),
    ];
    let (input, args, is_scgpt, name) = match name {
        "10x_chr21_gf_v1" => (tenx, gf("v1", "ensembl"), false, "10x_chr21_gf_v1"),
        "10x_chr21_gf_v2" => (tenx, gf("v2", "ensembl"), false, "10x_chr21_gf_v2"),
        "10x_chr21_scgpt" => (tenx, scgpt, true, "10x_chr21_scgpt"),
        "pbmc68k_gf_v1" => (pbmc, gf("v1", "symbol"), false, "pbmc68k_gf_v1"),
        "pbmc68k_gf_v2" => (pbmc, gf("v2", "symbol"), false, "pbmc68k_gf_v2"),
        "pbmc68k_scgpt" => (pbmc, scgpt, true, "pbmc68k_scgpt"),
        _ => unreachable!(),
    };
    Some(Case {
        name,
        input,
        args,
        scgpt: is_scgpt,
    })
}

fn check(name: &str) {
    let Some(c) = case(name) else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = scinterp_command()
        .arg("tokenize")
        .arg("--input")
        .arg(&c.input)
        .args(&c.args)
        .arg("--out")
        .arg(&store)
        .arg("-q")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: scinterp tokenize failed: {}",
        c.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let want_dir = fixtures().join(c.name);
    let offsets = read_npy(&store.join("offsets.npy"));
    let want_offsets = read_npy(&want_dir.join("offsets.npy"));
    let kept = read_npy(&want_dir.join("kept.npy"));
    assert_eq!(offsets.len(), kept.len() + 1, "{}: number of kept cells", c.name);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["n_cells"].as_u64(),
        Some(kept.len() as u64),
        "{}: manifest n_cells",
        c.name
    );

    let mut arrays = vec!["tokens.npy"];
    if c.scgpt {
        arrays.push("values.npy");
    }
    for file in arrays {
        let got = read_npy(&store.join(file));
        let want = read_npy(&want_dir.join(file));
        // Count the cells whose slice differs (offsets first, so that the slices are comparable).
        let mut differing = Vec::new();
        for i in 0..kept.len() {
            let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
            let (wa, wb) = (want_offsets[i] as usize, want_offsets[i + 1] as usize);
            if got.get(a..b) != want.get(wa..wb) {
                differing.push(i);
            }
        }
        assert!(
            differing.is_empty(),
            "{}: {file} differs in {} of {} cells (first kept-cell positions {:?})",
            c.name,
            differing.len(),
            kept.len(),
            &differing[..differing.len().min(10)]
        );
        assert_eq!(got, want, "{}: {file}", c.name);
    }
    assert_eq!(offsets, want_offsets, "{}: offsets", c.name);
}

#[test]
fn tenx_chr21_geneformer_v1() {
    check("10x_chr21_gf_v1");
}

#[test]
fn tenx_chr21_geneformer_v2() {
    check("10x_chr21_gf_v2");
}

#[test]
fn tenx_chr21_scgpt() {
    check("10x_chr21_scgpt");
}

#[test]
fn pbmc68k_geneformer_v1() {
    check("pbmc68k_gf_v1");
}

#[test]
fn pbmc68k_geneformer_v2() {
    check("pbmc68k_gf_v2");
}

#[test]
fn pbmc68k_scgpt() {
    check("pbmc68k_scgpt");
}
