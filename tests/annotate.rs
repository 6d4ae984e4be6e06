//! End-to-end tests of `scinterp annotate` on small synthetic catalogs written here (TSV, the layout of
//! `scinterp analyze`): a planted term is found, random genes are not annotated, every reported p and q
//! is recomputed independently with scipy and statsmodels over the full family
//! (`tests/reference/check_annotate.py`, skipped with a message when no Python with scipy and
//! statsmodels is found), bad input fails with one clear message, and a smoke test reads every real
//! gene-set file and both TRRUST files of `../shared/data`.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_fails_with, read_tsv, repo_root, rng, s, scinterp, shared_data_all, skip_part};
use scinterp_engine::rng::Rng;

/// Number of background genes of the synthetic catalogs.
const GENES: usize = 400;
const CELLS: usize = 300;
const LABELS: [&str; 4] = ["T", "B", "NK", "Mono"];

fn symbol(g: usize) -> String {
    format!("SYM{g}")
}

fn ensembl(g: usize) -> String {
    format!("ENSG{:011}", 1000 + g)
}

/// Distinct random genes of 0..GENES not in `avoid`.
fn draw(rng: &mut Rng, n: usize, avoid: &[usize]) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    while out.len() < n {
        let g = rng.below(GENES);
        if !out.contains(&g) && !avoid.contains(&g) {
            out.push(g);
        }
    }
    out
}

/// The synthetic inputs: two catalogs, two GMT libraries (MSigDB style with symbols; Enrichr style with
/// versioned Ensembl ids), a TRRUST file with a header, and a token store with cell labels.
struct Inputs {
    catalogs: Vec<PathBuf>,
    gmt_symbols: PathBuf,
    gmt_ensembl: PathBuf,
    trrust: PathBuf,
    /// STRING-like: space-separated with a header and scores; edges below 500 are dropped by the run.
    ppi: PathBuf,
    /// Feature 0's planted term, the TF whose targets feature 2 holds.
    planted_genes: Vec<usize>,
}

/// Feature ids: 0 planted term, 1 random genes, 2 a TRRUST module, 3 dead, 4 two genes only (untested),
/// 5–16 partly planted (4–9 genes of one term), 17.. random; feature 0's strongest cells are B cells.
fn write_inputs(dir: &Path) -> Inputs {
    let mut rng = rng(20_261_129, 0);
    let planted: Vec<usize> = (0..30).collect();
    // MSigDB style: name, URL, symbols; some names not in the background; one tiny and one huge term.
    let mut gmt = String::new();
    writeln!(
        gmt,
        "PLANTED_TERM\thttp://example/planted\t{}",
        planted.iter().map(|&g| symbol(g)).collect::<Vec<_>>().join("\t")
    )
    .unwrap();
    let mut term_genes = Vec::new();
    for t in 0..40 {
        let size = 5 + rng.below(50);
        let drawn = draw(&mut rng, size, &[]);
        let mut genes: Vec<String> = drawn.iter().copied().map(symbol).collect();
        term_genes.push(drawn);
        genes.push(format!("NOT_OBSERVED_{t}"));
        writeln!(gmt, "TERM_{t}\thttp://example/{t}\t{}", genes.join("\t")).unwrap();
    }
    writeln!(gmt, "TINY\thttp://x\t{}\t{}", symbol(1), symbol(2)).unwrap();
    let gmt_symbols = dir.join("msig_like.gmt");
    std::fs::write(&gmt_symbols, gmt).unwrap();
    // Enrichr style: empty description, Ensembl ids (some with a version), weights after a comma.
    let mut gmt = String::new();
    for t in 0..25 {
        let size = 5 + rng.below(40);
        let genes: Vec<String> = draw(&mut rng, size, &[])
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                if i % 3 == 0 {
                    format!("{}.7,1.0", ensembl(g))
                } else {
                    ensembl(g)
                }
            })
            .collect();
        writeln!(gmt, "Process {t} (GO:{t:07})\t\t{}", genes.join("\t")).unwrap();
    }
    let gmt_ensembl = dir.join("enrichr_like.gmt");
    std::fs::write(&gmt_ensembl, gmt).unwrap();
    // TRRUST with a header: TF SYM300 regulates SYM301..SYM312, which regulate each other in a chain,
    // plus random edges among genes 100..400 with similar degrees.
    let mut tr = String::from("Gene1\tGene2\tMode_of_Regulation\tPMID\n");
    for t in 301..313 {
        writeln!(tr, "SYM300\t{}\tActivation\t1", symbol(t)).unwrap();
        writeln!(tr, "{}\t{}\tRepression\t2", symbol(t), symbol(t + 1)).unwrap();
    }
    writeln!(tr, "SYM300\tSYM300\tActivation\t3").unwrap();
    for g in 100..400 {
        for _ in 0..2 {
            let t = 100 + rng.below(300);
            writeln!(tr, "{}\t{}\tUnknown\t4", symbol(g), symbol(t)).unwrap();
        }
    }
    let trrust = dir.join("trrust.tsv");
    std::fs::write(&trrust, tr).unwrap();
    // PPI: a clique among SYM320..SYM327 (feature 5.. do not hold it; feature 2 holds SYM300..SYM312, so a
    // second clique SYM303..SYM308 lands in it), random edges among 50..400, and low-score edges.
    let mut ppi = String::from("protein1 protein2 combined_score\n");
    for (lo, hi) in [(320, 328), (303, 309)] {
        for x in lo..hi {
            for y in x + 1..hi {
                writeln!(ppi, "{} {} {}", symbol(x), symbol(y), 700 + rng.below(300)).unwrap();
            }
        }
    }
    for g in 50..400 {
        for _ in 0..3 {
            let t = 50 + rng.below(350);
            let score = if rng.below(4) == 0 { 200 } else { 800 };
            writeln!(ppi, "{} {} {score}", symbol(g), symbol(t)).unwrap();
        }
    }
    let ppi_path = dir.join("ppi.txt");
    std::fs::write(&ppi_path, ppi).unwrap();

    // Token store: cells.tsv with a label column (some unlabelled).
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let mut cells = String::from("barcode\tcell_type\tbatch\n");
    let mut cell_label = Vec::new();
    for c in 0..CELLS {
        let label = match c % 13 {
            0 => "",
            1 => "nan",
            _ => LABELS[rng.below(LABELS.len())],
        };
        cell_label.push(label);
        writeln!(cells, "cell{c}\t{label}\tb{}", c % 2).unwrap();
    }
    std::fs::write(store.join("cells.tsv"), cells).unwrap();
    let b_cells: Vec<usize> = (0..CELLS).filter(|&c| cell_label[c] == "B").collect();

    let mut catalogs = Vec::new();
    for layer in [3usize, 7] {
        let cat = dir.join(format!("layer{layer}"));
        std::fs::create_dir_all(&cat).unwrap();
        std::fs::write(
            cat.join("catalog.json"),
            format!(
                r#"{{"format":"scinterp-catalog","format_version":1,"hook":"blocks.{layer}.hook_resid_post","token_store":"{}","table_format":"tsv","d_sae":64}}"#,
                s(&store)
            ),
        )
        .unwrap();
        let mut genes = String::from("token\tgene_id\tsymbol\tn_positions\tn_cells\n");
        for g in 0..GENES {
            writeln!(
                genes,
                "{}\t{}\t{}\t{}\t{}",
                10 + g,
                ensembl(g),
                symbol(g),
                50 + g,
                20 + g % 50
            )
            .unwrap();
        }
        std::fs::write(cat.join("genes.tsv"), genes).unwrap();
        let n_features = 30;
        let mut features = String::from("feature\talive\tfire_count\n");
        let mut top = String::from(
            "feature\tranking\trank\ttoken\tgene_id\tsymbol\tn_fired\tn_positions\tmean_when_fired\tmass\tfire_rate\n",
        );
        let mut fcells = String::from("feature\tcell\tn_active\tmean_when_active\n");
        for f in 0..n_features {
            let alive = usize::from(f != 3);
            writeln!(features, "{f}\t{alive}\t{}", 1000 * alive).unwrap();
            if alive == 0 {
                continue;
            }
            let genes: Vec<usize> = match f {
                0 => {
                    let mut g: Vec<usize> = planted[..14].to_vec();
                    g.extend(draw(&mut rng, 6, &planted));
                    g
                }
                2 => (300..313)
                    .chain(draw(&mut rng, 7, &(300..313).collect::<Vec<_>>()))
                    .collect(),
                4 => vec![5, 6],
                // Partly planted: 4 to 9 genes of one term, the rest random (a range of p and q values).
                5..=16 => {
                    let term = term_genes.get(f).expect("40 terms");
                    let k = (4 + f % 6).min(term.len());
                    let mut g: Vec<usize> = term[..k].to_vec();
                    g.extend(draw(&mut rng, 20 - k, term));
                    g
                }
                _ => draw(&mut rng, 20, &[]),
            };
            for (ranking, order) in [
                ("conditional_mean", genes.clone()),
                ("mass", genes.iter().rev().copied().collect()),
            ] {
                for (rank, &g) in order.iter().enumerate() {
                    let mean = 5.0 - rank as f64 * 0.1;
                    writeln!(
                        top,
                        "{f}\t{ranking}\t{rank}\t{}\t{}\t{}\t12\t{}\t{mean}\t{}\t0.5",
                        10 + g,
                        ensembl(g),
                        symbol(g),
                        50 + g,
                        mean * 0.5
                    )
                    .unwrap();
                }
            }
            // Cells: feature 0 is strongest on B cells; others random.
            let n_active = 40 + rng.below(40);
            let mut chosen: Vec<usize> = Vec::new();
            while chosen.len() < n_active {
                let c = rng.below(CELLS);
                if !chosen.contains(&c) {
                    chosen.push(c);
                }
            }
            for &c in &chosen {
                let strong = f == 0 && b_cells.contains(&c);
                let value = if strong {
                    10.0 + rng.uniform()
                } else {
                    rng.uniform()
                };
                writeln!(fcells, "{f}\t{c}\t{}\t{value}", 1 + rng.below(9)).unwrap();
            }
            if f == 0 {
                // Make sure it has enough B cells among its active cells.
                for &c in b_cells.iter().filter(|c| !chosen.contains(c)).take(10) {
                    writeln!(fcells, "{f}\t{c}\t3\t{}", 10.0 + rng.uniform()).unwrap();
                }
            }
        }
        std::fs::write(cat.join("features.tsv"), features).unwrap();
        std::fs::write(cat.join("top_genes.tsv"), top).unwrap();
        std::fs::write(cat.join("feature_cells.tsv"), fcells).unwrap();
        catalogs.push(cat);
    }
    Inputs {
        catalogs,
        gmt_symbols,
        gmt_ensembl,
        trrust,
        ppi: ppi_path,
        planted_genes: planted,
    }
}

/// A Python with scipy, statsmodels and pandas (and whether it has pyarrow for Parquet), if any.
fn python() -> Option<(String, bool)> {
    for candidate in ["/tmp/pyenv/venv/bin/python", "python3"] {
        let ok = Command::new(candidate)
            .args(["-c", "import scipy, statsmodels, pandas"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            let arrow = Command::new(candidate)
                .args(["-c", "import pyarrow"])
                .output()
                .is_ok_and(|o| o.status.success());
            return Some((candidate.to_string(), arrow));
        }
    }
    None
}

fn check_with_python(py: &str, out: &Path, inputs: &Inputs, obs: bool) -> Output {
    let script = repo_root().join("tests/reference/check_annotate.py");
    let catalogs: Vec<&str> = inputs.catalogs.iter().map(|p| s(p)).collect();
    let gene_sets = format!("{},{}", s(&inputs.gmt_symbols), s(&inputs.gmt_ensembl));
    let mut args = vec![
        s(&script).to_string(),
        "--out".into(),
        s(out).into(),
        "--catalogs".into(),
        catalogs.join(","),
        "--gene-sets".into(),
        gene_sets,
        "--trrust".into(),
        s(&inputs.trrust).into(),
        "--ppi".into(),
        s(&inputs.ppi).into(),
        "--ppi-min-score".into(),
        "500".into(),
        "--alpha".into(),
        "0.1".into(),
    ];
    if obs {
        args.extend(["--obs-column".into(), "cell_type".into()]);
    }
    Command::new(py).args(&args).output().expect("run python")
}

fn run_annotate(inputs: &Inputs, out: &Path, format: &str) -> Output {
    run_annotate_with(inputs, out, format, &[])
}

fn run_annotate_with(inputs: &Inputs, out: &Path, format: &str, extra: &[&str]) -> Output {
    let catalogs: Vec<&str> = inputs.catalogs.iter().map(|p| s(p)).collect();
    let gene_sets = format!("{},{}", s(&inputs.gmt_symbols), s(&inputs.gmt_ensembl));
    let catalogs = catalogs.join(",");
    let mut argv = vec![
        "annotate",
        "--catalog",
        &catalogs,
        "--gene-sets",
        &gene_sets,
        "--trrust",
        s(&inputs.trrust),
        "--ppi",
        s(&inputs.ppi),
        "--ppi-min-score",
        "500",
        "--obs-column",
        "cell_type",
        "--out",
        s(out),
        "--format",
        format,
        "--permutations",
        "300",
        "--alpha",
        "0.1",
        "--seed",
        "7",
        "--json",
        "--threads",
        "2",
    ];
    argv.extend_from_slice(extra);
    scinterp(&argv)
}

#[test]
fn an_existing_annotation_is_refused_and_replaced_whole_with_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = write_inputs(tmp.path());
    let out = tmp.path().join("ann");
    let res = run_annotate(&inputs, &out, "tsv");
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let before = std::fs::read(out.join("enrichment.tsv")).unwrap();
    // Without --overwrite: refused before any work, naming the folder and the flag; nothing changes.
    let again = run_annotate(&inputs, &out, "parquet");
    assert_fails_with(&again, &["ann", "already holds an annotation", "--overwrite"]);
    assert_eq!(std::fs::read(out.join("enrichment.tsv")).unwrap(), before);
    assert!(!out.join("enrichment.parquet").exists());
    // With it, the new annotation replaces the old one entirely: no stale TSV beside the Parquet tables,
    // and no staging folder left.
    let res = run_annotate_with(&inputs, &out, "parquet", &["--overwrite"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(out.join("enrichment.parquet").is_file() && out.join("annotate.json").is_file());
    assert!(
        !out.join("enrichment.tsv").exists(),
        "a table of the earlier run was left"
    );
    assert!(!tmp.path().join(".ann.staging").exists());
}

#[test]
fn annotate_finds_the_planted_term_and_agrees_with_scipy_and_statsmodels() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = write_inputs(tmp.path());
    let out = tmp.path().join("out_tsv");
    let res = run_annotate(&inputs, &out, "tsv");
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&res.stdout).expect("--json prints JSON");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("annotate.json")).unwrap()).unwrap();
    assert_eq!(summary["families"], written["families"]);

    // The gene-set family: 2 catalogs × 28 tested features (30, minus one dead, minus one with 2 genes)
    // × (terms of both libraries and TRRUST TF sets in [5, 500]); the network-edge family, its own:
    // 2 × 28 × 2 networks.
    let fam = &summary["families"]["gene_sets"];
    let per_feature: u64 = summary["catalogs"][0]["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["terms_tested"].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(summary["catalogs"][0]["tested_features"], 28);
    assert_eq!(summary["catalogs"][0]["alive_features"], 29);
    assert_eq!(fam["m"].as_u64().unwrap(), 2 * 28 * per_feature);
    assert_eq!(summary["catalogs"][0]["m"].as_u64().unwrap(), 28 * per_feature);
    let edge_fam = &summary["families"]["network_edges"];
    assert_eq!(edge_fam["m"].as_u64().unwrap(), 2 * 28 * 2);
    assert_eq!(
        summary["catalogs"][0]["m_network_edges"].as_u64().unwrap(),
        28 * 2
    );
    assert_eq!(
        fam["libraries"],
        serde_json::json!(["msig_like", "enrichr_like", "TRRUST_TF_targets"])
    );
    // Ensembl-id GMT matched through the gene ids (versions ignored); TINY (2 genes) is not tested.
    let libs = summary["catalogs"][0]["libraries"].as_array().unwrap();
    assert_eq!(libs[1]["terms_tested"], 25);
    assert_eq!(libs[0]["terms_below_min_size"], 1);
    assert!(summary["settings"]["edge_null"]
        .as_str()
        .unwrap()
        .contains("degree"));
    assert!(summary["families"]["cell_types"]["rule"]
        .as_str()
        .unwrap()
        .contains("10 %"));

    // The planted feature: its best term is PLANTED_TERM with a tiny q, in both catalogs.
    let best = read_tsv(&out.join("best_terms.tsv"));
    for hook in ["blocks.3.hook_resid_post", "blocks.7.hook_resid_post"] {
        let b = best
            .iter()
            .find(|r| r["catalog"] == hook && r["feature"] == "0")
            .unwrap_or_else(|| panic!("feature 0 of {hook} not annotated"));
        assert_eq!(b["term"], "PLANTED_TERM");
        assert_eq!(b["overlap"], "14");
        assert!(b["q_value_atlas"].parse::<f64>().unwrap() < 1e-6, "{b:?}");
        let genes: Vec<&str> = b["overlap_genes"].split(',').collect();
        assert_eq!(genes.len(), 14);
        assert_eq!(genes[0], symbol(inputs.planted_genes[0]));
        // The random feature is not annotated.
        assert!(
            !best.iter().any(|r| r["catalog"] == hook && r["feature"] == "1"),
            "random feature 1 annotated: {best:?}"
        );
    }
    // The TRRUST module: feature 2 holds the TF and its targets (a chain among them too).
    let edges = read_tsv(&out.join("edge_enrichment.tsv"));
    let e = edges
        .iter()
        .find(|r| r["feature"] == "2" && r["network"] == "TRRUST_edges")
        .expect("feature 2 has TRRUST edges");
    assert_eq!(e["network"], "TRRUST_edges");
    assert!(e["observed_edges"].parse::<u32>().unwrap() >= 20, "{e:?}");
    assert!(e["p_value"].parse::<f64>().unwrap() < 0.01, "{e:?}");
    assert!(e["edges"].contains("SYM300>SYM301"), "{e:?}");
    assert!(
        best.iter().any(|r| r["feature"] == "2" && r["term"] == "SYM300"),
        "{best:?}"
    );
    // The PPI module in feature 2: the 15 pairs of SYM303..SYM308 (undirected, written `A-B`).
    let p = edges
        .iter()
        .find(|r| r["feature"] == "2" && r["network"] == "PPI_edges")
        .expect("feature 2 has PPI edges");
    assert!(p["observed_edges"].parse::<u32>().unwrap() >= 15, "{p:?}");
    assert!(p["p_value"].parse::<f64>().unwrap() < 0.01, "{p:?}");
    assert!(p["edges"].contains("SYM303-SYM304"), "{p:?}");
    assert!(
        summary["families"]["network_edges"]["networks"] == serde_json::json!(["TRRUST_edges", "PPI_edges"])
    );
    // Every q says its family.
    assert!(best.iter().all(|r| r["q_family"] == "gene_sets"));
    assert!(edges.iter().all(|r| r["q_family"] == "network_edges"));
    // Cell types: feature 0's top cells are B cells.
    let ct = read_tsv(&out.join("cell_types.tsv"));
    let b = ct
        .iter()
        .find(|r| r["feature"] == "0")
        .expect("feature 0 enriched for a cell type");
    assert_eq!(b["label"], "B");

    // Parquet holds the same rows (checked through Python below when pyarrow is there).
    let out_pq = tmp.path().join("out_pq");
    let res = run_annotate(&inputs, &out_pq, "parquet");
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    for t in ["enrichment", "best_terms", "edge_enrichment", "cell_types"] {
        assert!(
            out_pq.join(format!("{t}.parquet")).exists(),
            "{t}.parquet missing"
        );
    }

    let Some((py, arrow)) = python() else {
        skip_part(
            "the scipy/statsmodels check",
            "no python with scipy, statsmodels and pandas found",
        );
        return;
    };
    let check = check_with_python(&py, &out, &inputs, true);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "python check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    println!("{stdout}");
    assert!(stdout.contains("checked"), "{stdout}");
    if arrow {
        let check = check_with_python(&py, &out_pq, &inputs, true);
        assert!(
            check.status.success(),
            "python check of the Parquet output failed:\n{}\n{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    } else {
        skip_part("the Parquet check", "pyarrow not installed");
    }
    // The check can fail: a copy of the output with one q changed, and one with a row dropped.
    let bad = tmp.path().join("out_bad");
    std::fs::create_dir_all(&bad).unwrap();
    for entry in std::fs::read_dir(&out).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, bad.join(p.file_name().unwrap())).unwrap();
    }
    let text = std::fs::read_to_string(out.join("enrichment.tsv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    assert!(lines.len() > 2);
    let mut fields: Vec<String> = lines[1].split('\t').map(String::from).collect();
    let q: f64 = fields[9].parse().unwrap();
    fields[9] = format!("{:?}", q * (1.0 + 1e-6));
    lines[1] = fields.join("\t");
    std::fs::write(bad.join("enrichment.tsv"), lines.join("\n") + "\n").unwrap();
    let check = check_with_python(&py, &bad, &inputs, true);
    assert!(!check.status.success(), "the check accepted a changed q-value");
    assert!(String::from_utf8_lossy(&check.stderr).contains("q_value_atlas"));
    lines.remove(1);
    std::fs::write(bad.join("enrichment.tsv"), lines.join("\n") + "\n").unwrap();
    let check = check_with_python(&py, &bad, &inputs, true);
    assert!(!check.status.success(), "the check accepted a missing row");
    assert!(String::from_utf8_lossy(&check.stderr).contains("missing from enrichment"));
}

#[test]
fn annotate_refuses_bad_input_with_one_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = write_inputs(tmp.path());
    let cat = s(&inputs.catalogs[0]).to_string();
    let gmt = s(&inputs.gmt_symbols).to_string();
    let out = tmp.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec!["annotate", "--out", s(&out), "--format", "tsv"];
        args.extend_from_slice(extra);
        scinterp(&args)
    };

    // A missing catalog table.
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["catalog.json", "genes.tsv", "features.tsv", "feature_cells.tsv"] {
        std::fs::copy(inputs.catalogs[0].join(f), broken.join(f)).unwrap();
    }
    let res = run(&["--catalog", s(&broken), "--gene-sets", &gmt]);
    assert_fails_with(&res, &["top_genes.tsv is missing", "scinterp analyze"]);

    // A GMT with no terms.
    let empty = tmp.path().join("empty.gmt");
    std::fs::write(&empty, "# nothing\n\nNAME_ONLY\tdesc\n").unwrap();
    let res = run(&["--catalog", &cat, "--gene-sets", s(&empty)]);
    assert_fails_with(&res, &["empty.gmt", "no term"]);

    // A TRRUST file with the wrong column count.
    let tr = tmp.path().join("trrust_bad.tsv");
    std::fs::write(&tr, "SYM1\tSYM2\tActivation\t1\nSYM1\tSYM3\n").unwrap();
    let res = run(&["--catalog", &cat, "--gene-sets", &gmt, "--trrust", s(&tr)]);
    assert_fails_with(
        &res,
        &["trrust_bad.tsv", "line 2", "2 tab-separated columns", "has 4"],
    );

    // An obs column that does not exist: the available ones are listed.
    let res = run(&["--catalog", &cat, "--gene-sets", &gmt, "--obs-column", "celltype"]);
    assert_fails_with(&res, &["--obs-column celltype", "barcode, cell_type, batch"]);

    // Zero overlap between a library and the background: Ensembl-only genes table, symbol GMT.
    let ens = tmp.path().join("ensembl_only");
    std::fs::create_dir_all(&ens).unwrap();
    for f in [
        "catalog.json",
        "features.tsv",
        "top_genes.tsv",
        "feature_cells.tsv",
    ] {
        std::fs::copy(inputs.catalogs[0].join(f), ens.join(f)).unwrap();
    }
    let mut genes = String::from("token\tgene_id\tsymbol\tn_positions\tn_cells\n");
    for g in 0..GENES {
        writeln!(genes, "{}\t{}\t\t5\t5", 10 + g, ensembl(g)).unwrap();
    }
    std::fs::write(ens.join("genes.tsv"), genes).unwrap();
    let res = run(&["--catalog", s(&ens), "--gene-sets", &gmt]);
    assert_fails_with(
        &res,
        &[
            "msig_like.gmt",
            "symbols vs Ensembl ids",
            "symbol column is empty",
        ],
    );
    // The Ensembl GMT works on that catalog.
    let res = run(&["--catalog", s(&ens), "--gene-sets", s(&inputs.gmt_ensembl)]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));

    // Not a catalog at all, and an unknown ranking.
    let res = run(&["--catalog", s(tmp.path()), "--gene-sets", &gmt]);
    assert_fails_with(&res, &["catalog.json", "scinterp analyze"]);
    let res = run(&["--catalog", &cat, "--gene-sets", &gmt, "--ranking", "bogus"]);
    assert_fails_with(&res, &["bogus"]);
}

#[test]
fn annotate_reads_every_real_gene_set_file_and_both_trrust_files() {
    let Some([gencode, genesets, trrust_now, trrust_2018]) = shared_data_all([
        "orthologs/GENCODEv44_Gene_id2name.csv",
        "genesets",
        "trrust/trrust_rawdata.human.tsv",
        "trrust/trrust_rawdata.human.2018.tsv",
    ]) else {
        return;
    };
    let trrust = [trrust_now, trrust_2018];
    let mut gmts: Vec<PathBuf> = std::fs::read_dir(&genesets)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gmt"))
        .collect();
    gmts.sort();
    assert!(
        gmts.len() >= 8,
        "expected the 8 GMT files of ../shared/data/genesets"
    );
    // Background: every GENCODE v44 gene (Ensembl id + symbol); features: random genes, and a few taken
    // from Hallmark's first term.
    let tmp = tempfile::tempdir().unwrap();
    let cat = tmp.path().join("cat");
    std::fs::create_dir_all(&cat).unwrap();
    let text = std::fs::read_to_string(&gencode).unwrap();
    let mut genes = String::from("token\tgene_id\tsymbol\tn_positions\tn_cells\n");
    let mut symbols = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some((id, name)) = line.split_once(',') else {
            continue;
        };
        writeln!(genes, "{}\t{id}\t{name}\t10\t10", i + 4).unwrap();
        symbols.push((i + 4, name.to_string()));
    }
    std::fs::write(cat.join("genes.tsv"), genes).unwrap();
    let hallmark = std::fs::read_to_string(genesets.join("h.all.v7.0.symbols.gmt")).unwrap();
    let first: Vec<&str> = hallmark
        .lines()
        .next()
        .unwrap()
        .split('\t')
        .skip(2)
        .take(15)
        .collect();
    let mut rng = rng(5, 5);
    let mut features = String::from("feature\talive\tfire_count\n");
    let mut top = String::from("feature\tranking\trank\ttoken\tgene_id\tsymbol\tn_fired\tn_positions\tmean_when_fired\tmass\tfire_rate\n");
    for f in 0..20 {
        writeln!(features, "{f}\t1\t100").unwrap();
        let chosen: Vec<usize> = if f == 0 {
            first
                .iter()
                .filter_map(|s| symbols.iter().find(|(_, n)| n == s).map(|(t, _)| *t))
                .collect()
        } else {
            (0..20).map(|_| symbols[rng.below(symbols.len())].0).collect()
        };
        for (rank, t) in chosen.iter().enumerate() {
            writeln!(
                top,
                "{f}\tconditional_mean\t{rank}\t{t}\tX\tX\t1\t1\t1.0\t1.0\t1.0"
            )
            .unwrap();
        }
    }
    std::fs::write(cat.join("features.tsv"), features).unwrap();
    std::fs::write(cat.join("top_genes.tsv"), top).unwrap();
    std::fs::write(
        cat.join("catalog.json"),
        r#"{"format":"scinterp-catalog","format_version":1,"hook":"blocks.0.hook_resid_post","token_store":"/nonexistent","table_format":"tsv"}"#,
    )
    .unwrap();
    let gene_sets: Vec<&str> = gmts.iter().map(|p| s(p)).collect();
    for tr in &trrust {
        let out = tmp
            .path()
            .join(format!("out_{}", tr.file_stem().unwrap().to_str().unwrap()));
        let res = scinterp(&[
            "annotate",
            "--catalog",
            s(&cat),
            "--gene-sets",
            &gene_sets.join(","),
            "--trrust",
            s(tr),
            "--permutations",
            "100",
            "--out",
            s(&out),
            "--format",
            "tsv",
            "--json",
        ]);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
        let libs = summary["catalogs"][0]["libraries"].as_array().unwrap();
        assert_eq!(libs.len(), gmts.len() + 1);
        for l in libs {
            assert!(l["terms_tested"].as_u64().unwrap() > 0, "{l}");
            assert!(l["universe_in_background"].as_u64().unwrap() > 500, "{l}");
        }
        let go = libs
            .iter()
            .find(|l| l["library"] == "enrichr.GO_Biological_Process_2021")
            .unwrap();
        assert!(go["terms_tested"].as_u64().unwrap() > 5000, "{go}");
        let tf = libs.iter().find(|l| l["library"] == "TRRUST_TF_targets").unwrap();
        assert!(tf["terms_tested"].as_u64().unwrap() > 200, "{tf}");
        let net = &summary["catalogs"][0]["networks"][0];
        assert!(net["edges_in_background"].as_u64().unwrap() > 7000, "{net}");
        let best = read_tsv(&out.join("best_terms.tsv"));
        let b = best
            .iter()
            .find(|r| r["feature"] == "0")
            .expect("the Hallmark feature is annotated");
        assert!(b["q_value_atlas"].parse::<f64>().unwrap() < 1e-6, "{b:?}");
        println!(
            "{}: {} enrichment rows, best of feature 0: {} / {}",
            tr.display(),
            read_tsv(&out.join("enrichment.tsv")).len(),
            b["library"],
            b["term"]
        );
    }
}

/// The background is the genes that could enter a query: with `conditional_mean` top lists the catalog's
/// `min_support_positions` applies to the genes table (n_positions = 50 + g here, so a minimum of 60
/// leaves out genes 0..9); `mass` lists need no support, so every gene stays.
#[test]
fn the_background_holds_only_genes_with_enough_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = write_inputs(tmp.path());
    for cat in &inputs.catalogs {
        let path = cat.join("catalog.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["settings"] = serde_json::json!({"min_support_positions": 60});
        std::fs::write(&path, v.to_string()).unwrap();
    }
    let res = run_annotate(&inputs, &tmp.path().join("out"), "tsv");
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    let c = &summary["catalogs"][0];
    assert_eq!(c["background_min_positions"], 60);
    assert_eq!(c["background_genes"].as_u64().unwrap(), GENES as u64 - 10);
    let catalogs: Vec<&str> = inputs.catalogs.iter().map(|p| s(p)).collect();
    let mass = scinterp(&[
        "annotate",
        "--catalog",
        &catalogs.join(","),
        "--gene-sets",
        s(&inputs.gmt_symbols),
        "--ranking",
        "mass",
        "--out",
        s(&tmp.path().join("out_mass")),
        "--format",
        "tsv",
        "--json",
    ]);
    assert!(mass.status.success(), "{}", String::from_utf8_lossy(&mass.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&mass.stdout).unwrap();
    assert_eq!(
        summary["catalogs"][0]["background_genes"].as_u64().unwrap(),
        GENES as u64
    );
    assert_eq!(summary["catalogs"][0]["background_min_positions"], 1);
}
