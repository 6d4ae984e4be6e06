//! End-to-end tests of what runs on an activation store and its SAEs (the tiny model, SAEs at blocks.0
//! and blocks.2): `scinterp trace` (edge statistics recomputable from the table, resume after a kill,
//! shards merged equal to one run), `analyze` (the catalog equals an independent recount), `layers`
//! (matches equal the decoders' |cos|, the different-seed control) and `effects` (ablation and steering
//! beside a random-direction control). (Trace against the naive reference: tests/trace_parity.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{
    as_strs, assert_fails_with, extract_tiny_v2, fixture, num, ok, ok_json, read_tsv, s, scinterp,
    tiny_v2_token_store,
};
use scinterp_engine::sae::TopKSae;
use scinterp_engine::store::ActStore;

/// `sae train` of the fixture's small SAE (d_sae 64, k 4, 20,000 tokens) on `hook`, then `extra`.
fn train_sae(acts: &Path, hook: &str, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "sae",
        "train",
        "--acts",
        s(acts),
        "--hook",
        hook,
        "--d-sae",
        "64",
        "--k",
        "4",
        "--out",
        s(out),
        "--tokens",
        "20000",
        "--batch-size",
        "256",
        "--splice-cells",
        "0",
    ];
    args.extend_from_slice(extra);
    ok(&scinterp(&args));
}

/// A token store, an activation store and SAEs at blocks.0 and blocks.2 of the tiny model.
fn trace_fixture(tmp: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let tokens = tmp.join("tokens");
    tiny_v2_token_store(&tokens, 4);
    let model = fixture("tiny_v2");
    let acts = tmp.join("acts");
    let (src, tgt) = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post");
    extract_tiny_v2(&tokens, &format!("{src},{tgt}"), &acts);
    let saes = tmp.join("saes");
    for hook in [src, tgt] {
        train_sae(&acts, hook, &saes.join(hook), &[]);
    }
    (model, tokens, saes)
}

/// `scinterp trace` end to end on the tiny model: an edge table whose statistics are recomputable from
/// its own columns, a summary that accounts for every feature, and clear refusals.
#[test]
fn trace_writes_edges_with_recomputable_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tokens, saes) = trace_fixture(tmp.path());
    let (src, tgt) = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post");
    let edges = tmp.path().join("edges.tsv");
    let trace_to = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "trace",
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--saes",
            s(&saes),
            "--source",
            src,
            "--targets",
            tgt,
            "--out",
            s(out),
            "--json",
        ];
        a.extend_from_slice(extra);
        scinterp(&a)
    };
    let summary = ok_json(&trace_to(&edges, &["--max-q", "1"]));
    // A finished table is not replaced without --overwrite; the later runs below replace it.
    let first = std::fs::read(&edges).unwrap();
    assert_fails_with(
        &trace_to(&edges, &["--max-q", "0.5"]),
        &["edges.tsv", "already holds a trace table", "--overwrite"],
    );
    assert_eq!(std::fs::read(&edges).unwrap(), first);
    let trace = |extra: &[&str]| {
        let mut a = extra.to_vec();
        a.push("--overwrite");
        trace_to(&edges, &a)
    };
    let requested = summary["features_requested"].as_u64().unwrap();
    assert_eq!(requested, 64);
    assert_eq!(
        summary["features_traced"].as_u64().unwrap()
            + summary["features_skipped_never_fired"].as_u64().unwrap(),
        requested
    );
    let text = std::fs::read_to_string(&edges).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len() as u64, summary["edges_written"].as_u64().unwrap());
    assert!(!rows.is_empty());
    for r in &rows {
        let num = |name: &str| r[col(name)].parse::<f64>().unwrap();
        let (n, mean, sd) = (num("n_cells"), num("mean_change"), num("sd_change"));
        let t = mean / (sd / n.sqrt());
        assert!(
            (t - num("t")).abs() <= 1e-9 * t.abs().max(1.0),
            "t {t} vs {}",
            num("t")
        );
        let p = scinterp_engine::stats::student_t_two_sided(t, n - 1.0);
        assert!(
            (p - num("p")).abs() <= 1e-9 * p.max(1e-300),
            "p {p} vs {}",
            num("p")
        );
        assert!(num("q") >= num("p") && num("q") <= 1.0);
        assert!((num("cohens_d") - mean / sd).abs() <= 1e-9 * (mean / sd).abs().max(1.0));
    }
    // The same table as Parquet.
    let pq = tmp.path().join("edges.parquet");
    let pq_summary = ok_json(&trace_to(&pq, &["--max-q", "1"]));
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(&pq).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows() as usize, rows.len());
    assert_eq!(pq_summary["edges_written"], summary["edges_written"]);
    // top:N takes the N features that fire in most cells.
    let top = ok_json(&trace(&["--features", "top:3"]));
    assert_eq!(
        (
            top["features_requested"].as_u64(),
            top["features_traced"].as_u64()
        ),
        (Some(3), Some(3))
    );
    // A stricter q keeps a subset.
    let strict = ok_json(&trace(&["--max-q", "0.05"]));
    assert!(strict["edges_written"].as_u64().unwrap() <= rows.len() as u64);
    // The sign-flip null leaves the table as it is and reports the rule's empirical FDR.
    let plain_table = std::fs::read_to_string(&edges).unwrap();
    let with_null = ok_json(&trace(&[
        "--max-q",
        "0.05",
        "--null-permutations",
        "30",
        "--seed",
        "4",
    ]));
    assert_eq!(std::fs::read_to_string(&edges).unwrap(), plain_table);
    let null = &with_null["null"];
    let counts: Vec<f64> = null["null_edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(counts.len(), 30);
    let mean = counts.iter().sum::<f64>() / 30.0;
    assert!((null["null_edges_mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    let written = with_null["edges_written"].as_f64().unwrap();
    let pi0 = null["pi0"].as_f64().unwrap();
    assert!(pi0 > 0.0 && pi0 <= 1.0, "{pi0}");
    let want = if written > 0.0 {
        (pi0 * mean / written).min(1.0)
    } else {
        0.0
    };
    assert!((null["empirical_fdr"].as_f64().unwrap() - want).abs() < 1e-12);
    // The fixed rule: the largest p among the edges written, so at most --max-q (q >= p).
    let p_threshold = null["p_threshold"].as_f64();
    assert_eq!(p_threshold.is_some(), written > 0.0);
    assert!(p_threshold.is_none_or(|p| p <= 0.001), "{p_threshold:?}");
    assert!(
        mean < written,
        "the fixture's edges are real: {mean} null vs {written} observed"
    );

    assert_fails_with(
        &scinterp(&[
            "trace",
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--saes",
            s(&saes),
            "--source",
            "blocks.0.hook_mlp_out",
            "--targets",
            tgt,
            "--out",
            s(&tmp.path().join("refused.tsv")),
        ]),
        &["hook_resid_post"],
    );
    assert_fails_with(
        &scinterp(&[
            "trace",
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--saes",
            s(&saes),
            "--source",
            src,
            "--targets",
            "blocks.3.hook_resid_post",
            "--out",
            s(&tmp.path().join("refused.tsv")),
        ]),
        &["no SAE for blocks.3.hook_resid_post"],
    );
}

/// Killed after a checkpoint and rerun, a trace writes the same table; shards merged equal one run.
#[test]
fn trace_resumes_after_a_kill_and_shards_merge_to_the_same_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tokens, saes) = trace_fixture(tmp.path());
    // `scinterp trace …` (the old spelling) and `scinterp trace run …` are the same command.
    let run_as = |command: &[&str], out: &Path, extra: &[&str]| {
        let mut a = command.to_vec();
        a.extend_from_slice(&[
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--saes",
            s(&saes),
            "--source",
            "blocks.0.hook_resid_post",
            "--targets",
            "blocks.2.hook_resid_post",
            "--out",
            s(out),
            "--max-q",
            "1",
            "--chunk-cells",
            "3",
            "--null-permutations",
            "5",
        ]);
        a.extend_from_slice(extra);
        scinterp(&a)
    };
    let run = |out: &Path, extra: &[&str]| run_as(&["trace"], out, extra);
    let full = tmp.path().join("full.tsv");
    ok(&run(&full, &[]));
    let resumed = tmp.path().join("resumed.tsv");
    // The hidden test flag stops the run right after the second chunk's checkpoint, as a kill would.
    let killed = run(&resumed, &["--stop-after-chunks", "2"]);
    assert!(!killed.status.success());
    assert!(
        String::from_utf8_lossy(&killed.stderr).contains("stopped after 2 chunks"),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    assert!(!resumed.exists() && resumed.with_extension("checkpoint").exists());
    ok(&run(&resumed, &[]));
    assert!(
        std::fs::read(&full).unwrap() == std::fs::read(&resumed).unwrap(),
        "resumed table differs"
    );
    assert!(!resumed.with_extension("checkpoint").exists());

    let shards: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("shard{i}.bin"))).collect();
    for (i, shard) in shards.iter().enumerate() {
        ok(&run_as(&["trace", "run"], shard, &["--shard", &format!("{i}/3")]));
    }
    let merged = tmp.path().join("merged.tsv");
    let list = shards.iter().map(|p| s(p)).collect::<Vec<_>>().join(",");
    ok(&scinterp(&[
        "trace",
        "merge",
        "--shards",
        &list,
        "--out",
        s(&merged),
        "--max-q",
        "1",
    ]));
    assert!(
        std::fs::read(&full).unwrap() == std::fs::read(&merged).unwrap(),
        "merged table differs"
    );
    let two = format!("{},{}", s(&shards[0]), s(&shards[1]));
    assert_fails_with(
        &scinterp(&["trace", "merge", "--shards", &two, "--out", s(&merged)]),
        &["once each"],
    );
}

/// |a − b| / |b| (0 when equal).
fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        ((a - b) / b).abs()
    }
}

/// A decoder row scaled to unit length.
fn unit(w: &[f32]) -> Vec<f64> {
    let n = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    w.iter().map(|&x| x as f64 / n).collect()
}

/// The best |cos| of decoder row `w` against the alive decoder rows of `other`.
fn best_abs_cos(w: &[f32], other: &TopKSae, alive: &[bool]) -> f64 {
    let w = unit(w);
    (0..other.d_sae)
        .filter(|&g| alive[g])
        .map(|g| {
            unit(other.decoder_row(g))
                .iter()
                .zip(&w)
                .map(|(a, b)| a * b)
                .sum::<f64>()
                .abs()
        })
        .fold(0.0f64, f64::max)
}

#[test]
fn analyze_catalog_equals_an_independent_recount_and_layers_match_the_decoders() {
    use std::collections::HashMap;
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, saes) = trace_fixture(tmp.path());
    let acts = tmp.path().join("acts");
    let hook = "blocks.0.hook_resid_post";
    let sae_dir = saes.join(hook);
    let store = ActStore::open(&acts).unwrap();
    let rows = store.rows().unwrap();
    let genes = tmp.path().join("genes.tsv");
    let mut names = String::from("token\tgene_id\tsymbol\n");
    for t in 0..25_000 {
        names.push_str(&format!("{t}\tENSG{t:011}\tG{t}\n"));
    }
    std::fs::write(&genes, names).unwrap();
    let cat = tmp.path().join("catalog");
    let analyze = |extra: &[&str]| {
        let mut args = vec![
            "analyze",
            "--acts",
            s(&acts),
            "--sae",
            s(&sae_dir),
            "--out",
            s(&cat),
            "--format",
            "tsv",
            "--genes",
            s(&genes),
            "--min-support",
            "2",
            "--top-genes",
            "5",
            "--coact-min-cocount",
            "3",
        ];
        args.extend_from_slice(extra);
        scinterp(&args)
    };
    ok(&analyze(&[]));

    // The recount: encode every row with the SAE and count in the plainest way.
    let sae = scinterp_engine::sae::io::load(&sae_dir).unwrap().sae;
    let array = store.hook(hook).unwrap();
    let mut x = vec![0.0f32; rows.len() * array.d()];
    array.read_rows(0, &mut x);
    let codes = sae.encode(&x);
    let d_sae = sae.d_sae;
    let mut fire = vec![0u64; d_sae];
    let mut sum = vec![0.0f64; d_sae];
    let mut cells_fired: Vec<std::collections::HashSet<i32>> = vec![Default::default(); d_sae];
    let mut per_gene: HashMap<(usize, i32), (u64, f64)> = HashMap::new();
    let mut positions: HashMap<i32, u64> = HashMap::new();
    let mut active_rows: Vec<Vec<usize>> = Vec::new();
    for (r, meta) in rows.iter().enumerate() {
        *positions.entry(meta[2]).or_default() += 1;
        let (idx, val) = codes.row(r);
        let mut act = Vec::new();
        for (&f, &v) in idx.iter().zip(val) {
            if v > 0.0 {
                let f = f as usize;
                fire[f] += 1;
                sum[f] += v as f64;
                cells_fired[f].insert(meta[0]);
                let e = per_gene.entry((f, meta[2])).or_default();
                e.0 += 1;
                e.1 += v as f64;
                act.push(f);
            }
        }
        active_rows.push(act);
    }
    let features = read_tsv(&cat.join("features.tsv"));
    assert_eq!(features.len(), d_sae);
    for row in &features {
        let f = num(row, "feature") as usize;
        assert_eq!(num(row, "fire_count") as u64, fire[f], "feature {f}");
        assert_eq!(
            num(row, "cells_fired") as usize,
            cells_fired[f].len(),
            "feature {f}"
        );
        assert_eq!(num(row, "alive") == 1.0, fire[f] > 0);
        if fire[f] > 0 {
            let mean = sum[f] / fire[f] as f64;
            assert!(rel(num(row, "mean_when_active"), mean) < 1e-9, "feature {f}");
            let norm = sae.decoder_row(f).iter().map(|x| x * x).sum::<f32>().sqrt() as f64;
            assert!((num(row, "decoder_norm") - norm).abs() < 1e-6);
        }
    }
    let gene_rows = read_tsv(&cat.join("genes.tsv"));
    assert_eq!(gene_rows.len(), positions.len());
    for g in &gene_rows {
        let t = num(g, "token") as i32;
        assert_eq!(num(g, "n_positions") as u64, positions[&t]);
        assert_eq!(g["gene_id"], format!("ENSG{t:011}"));
        assert_eq!(g["symbol"], format!("G{t}"));
    }
    // Top genes by mass and by conditional mean (support ≥ 2), ties broken by token.
    let top = read_tsv(&cat.join("top_genes.tsv"));
    for f in (0..d_sae).filter(|&f| fire[f] > 0) {
        let mut genes: Vec<(i32, u64, f64)> = per_gene
            .iter()
            .filter(|((g, _), _)| *g == f)
            .map(|(&(_, t), &(n, s))| (t, n, s))
            .collect();
        genes.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        let want_mass: Vec<i32> = genes.iter().take(5).map(|g| g.0).collect();
        genes.retain(|g| g.1 >= 2);
        genes.sort_by(|a, b| {
            (b.2 / b.1 as f64)
                .total_cmp(&(a.2 / a.1 as f64))
                .then(a.0.cmp(&b.0))
        });
        let want_mean: Vec<i32> = genes.iter().take(5).map(|g| g.0).collect();
        for (ranking, want) in [("mass", want_mass), ("conditional_mean", want_mean)] {
            let got: Vec<i32> = top
                .iter()
                .filter(|r| num(r, "feature") as usize == f && r["ranking"] == ranking)
                .map(|r| num(r, "token") as i32)
                .collect();
            assert_eq!(got, want, "feature {f} by {ranking}");
        }
    }
    for r in &top {
        let (n, s) = per_gene[&(num(r, "feature") as usize, num(r, "token") as i32)];
        assert_eq!(num(r, "n_fired") as u64, n);
        assert!(rel(num(r, "mean_when_fired"), s / n as f64) < 1e-9);
    }
    // Co-activation edges: co-counts and expected co-counts recounted per cell.
    let edges = read_tsv(&cat.join("coactivation.tsv"));
    assert!(!edges.is_empty(), "the fixture has co-activating features");
    for e in &edges {
        let (a, b) = (num(e, "feature_a") as usize, num(e, "feature_b") as usize);
        let (mut o, mut expected) = (0u64, 0.0f64);
        let mut per_cell: HashMap<i32, (f64, f64, f64)> = HashMap::new();
        for (r, act) in active_rows.iter().enumerate() {
            let c = per_cell.entry(rows[r][0]).or_default();
            c.0 += 1.0;
            c.1 += act.contains(&a) as u8 as f64;
            c.2 += act.contains(&b) as u8 as f64;
            o += (act.contains(&a) && act.contains(&b)) as u64;
        }
        for (n, ca, cb) in per_cell.values() {
            expected += ca * cb / n;
        }
        assert_eq!(num(e, "cocount") as u64, o, "{a}-{b}");
        assert!(rel(num(e, "expected_cocount"), expected) < 1e-9, "{a}-{b}");
        assert!(num(e, "q_value") <= 0.05 && num(e, "pmi") >= 1.0 && o >= 3);
        // The row alone gives z (and p = norm.sf(z), checked against scipy in the engine's fixture test).
        let z = (o as f64 - num(e, "expected_cocount") - 0.5) / num(e, "null_variance").sqrt();
        assert!((z - num(e, "z")).abs() < 1e-9 * z.abs().max(1.0), "{a}-{b}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cat.join("catalog.json")).unwrap()).unwrap();
    let alive = fire.iter().filter(|&&n| n > 0).count();
    assert_eq!(summary["alive"].as_u64(), Some(alive as u64));
    assert_eq!(summary["n_rows"].as_u64(), Some(rows.len() as u64));
    let explained = summary["svd"]["variance_explained"].as_f64().unwrap();
    assert!(explained > 0.0 && explained <= 1.0 + 1e-9, "{explained}");
    // The SVD comparison re-derived from the features table and the codes: projected-norm fraction
    // counts, the published "invisible" count, and the matched-L0 rank.
    let svd = &summary["svd"];
    let alive_rows: Vec<_> = features.iter().filter(|r| num(r, "alive") == 1.0).collect();
    for t in ["0.25", "0.5", "0.75", "0.9"] {
        let want = alive_rows
            .iter()
            .filter(|r| num(r, "svd_projection").powi(2) >= t.parse::<f64>().unwrap())
            .count();
        // svd_projection is written rounded to f64 text; allow a feature at the threshold either way.
        let got = svd["projected_norm_sq_at_least"][t].as_u64().unwrap() as usize;
        assert!(got.abs_diff(want) <= 1, "{t}: {got} vs {want}");
    }
    let invisible = alive_rows
        .iter()
        .filter(|r| num(r, "svd_max_abs_cos") <= 0.5)
        .count();
    assert_eq!(svd["invisible_published_rule"].as_u64(), Some(invisible as u64));
    let l0 = active_rows.iter().map(Vec::len).sum::<usize>() as f64 / rows.len() as f64;
    assert!(rel(svd["sae_mean_l0"].as_f64().unwrap(), l0) < 1e-12, "{svd}");
    assert_eq!(svd["matched_rank"].as_u64(), Some((l0.round() as u64).max(1)));
    let at_rank = svd["svd_variance_explained_at_matched_rank"].as_f64().unwrap();
    assert!(at_rank > 0.0 && at_rank <= 1.0 + 1e-9, "{at_rank}");

    // Refusals: an existing catalog, a genes file of the wrong shape.
    assert_fails_with(&analyze(&[]), &["already holds a catalog", "--overwrite"]);
    let bad = tmp.path().join("bad.tsv");
    std::fs::write(&bad, "id\tname\n1\tA\n").unwrap();
    assert_fails_with(
        &scinterp(&[
            "analyze",
            "--acts",
            s(&acts),
            "--sae",
            s(&sae_dir),
            "--out",
            s(&tmp.path().join("c2")),
            "--genes",
            s(&bad),
        ]),
        &["bad.tsv", "token<TAB>gene_id"],
    );

    // Layers: every alive feature's best |cos| against the other SAE's alive decoders.
    let layers = tmp.path().join("layers");
    let other = saes.join("blocks.2.hook_resid_post");
    ok(&scinterp(&[
        "layers",
        "--acts",
        s(&acts),
        "--saes",
        &format!("{},{}", s(&sae_dir), s(&other)),
        "--out",
        s(&layers),
        "--format",
        "tsv",
        "--highway-min-fires",
        "5",
        "--highway-min-cocount",
        "3",
    ]));
    let sae_b = scinterp_engine::sae::io::load(&other).unwrap().sae;
    let mut x_b = vec![0.0f32; rows.len() * array.d()];
    store
        .hook("blocks.2.hook_resid_post")
        .unwrap()
        .read_rows(0, &mut x_b);
    let codes_b = sae_b.encode(&x_b);
    let alive_b: Vec<bool> = (0..sae_b.d_sae)
        .map(|f| {
            codes_b
                .indices
                .iter()
                .zip(&codes_b.values)
                .any(|(&i, &v)| i as usize == f && v > 0.0)
        })
        .collect();
    let matches = read_tsv(&layers.join("matches.tsv"));
    assert_eq!(matches.len(), alive);
    for m in &matches {
        let f = num(m, "feature") as usize;
        let best = best_abs_cos(sae.decoder_row(f), &sae_b, &alive_b);
        assert!(
            (num(m, "abs_cos") - best).abs() < 1e-5,
            "feature {f}: {} vs {best}",
            num(m, "abs_cos")
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(layers.join("layers.json")).unwrap()).unwrap();
    assert_eq!(
        summary["matching"]["pairs"][0]["alive_from"].as_u64(),
        Some(alive as u64)
    );
    assert!(
        summary["highways"]["pairs"][0]["eligible_sources"]
            .as_u64()
            .unwrap()
            > 0
    );
}

/// `scinterp layers --control-saes`: without a control layers.json and the log say none was run; a
/// control trained with another `--seed` is compared with its primary (the reproduced count recounted
/// here from the decoders); a control that is the primary with permuted, sign-flipped features
/// reproduces every feature and keeps every cross-layer match; bad controls are refused.
#[test]
fn layers_reports_a_different_seed_control() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, saes) = trace_fixture(tmp.path());
    let acts = tmp.path().join("acts");
    let (h0, h2) = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post");
    let (primary, next) = (saes.join(h0), saes.join(h2));
    let out = tmp.path().join("layers");
    let layers = |controls: &[&Path]| {
        let mut args = vec![
            "layers".to_string(),
            "--acts".into(),
            s(&acts).into(),
            "--saes".into(),
            format!("{},{}", s(&primary), s(&next)),
            "--out".into(),
            s(&out).into(),
            "--format".into(),
            "tsv".into(),
            "--overwrite".into(),
            "--json".into(),
        ];
        if !controls.is_empty() {
            args.push("--control-saes".into());
            args.push(controls.iter().map(|p| s(p)).collect::<Vec<_>>().join(","));
        }
        scinterp(&as_strs(&args))
    };
    let json = |out: &Output| -> serde_json::Value {
        ok(out);
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join("layers/layers.json")).unwrap())
                .unwrap();
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(file["seed_control"], printed["seed_control"]);
        file
    };

    let none = layers(&[]);
    let summary = json(&none);
    assert!(summary["seed_control"].is_null());
    let warning = summary["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("no different-seed control was run"),
        "{warning}"
    );
    assert!(String::from_utf8_lossy(&none.stderr).contains("no different-seed control was run"));
    // `sae train` gives each hook its own seed: no shared-initialisation warning.
    let seed_of =
        |hook: &str, seed: u64| serde_json::json!(scinterp_engine::sae::train::hook_seed(seed, hook));
    assert_eq!(
        summary["training_seeds"],
        serde_json::json!([seed_of(h0, 0), seed_of(h2, 0)])
    );
    assert!(
        !summary["warnings"].to_string().contains("same seed"),
        "{}",
        summary["warnings"]
    );
    let primary_matches = summary["matching"]["pairs"][0]["matches"].as_u64().unwrap();

    // A control trained from another seed.
    let trained = tmp.path().join("control-seed7");
    // Seed 7 holds out none of the 12 cells.
    train_sae(&acts, h0, &trained, &["--seed", "7", "--holdout", "0"]);
    let run = layers(&[&trained]);
    let summary = json(&run);
    let control = &summary["seed_control"];
    let h = &control["hooks"][0];
    assert_eq!(h["hook"], h0);
    assert_eq!(
        (&h["primary_seed"], &h["control_seed"]),
        (&seed_of(h0, 0), &seed_of(h0, 7))
    );
    assert!(!summary["warnings"]
        .to_string()
        .contains("no different-seed control"));
    // Recount: alive features from the codes, best |cos| of unit decoders.
    let store = ActStore::open(&acts).unwrap();
    let array = store.hook(h0).unwrap();
    let mut x = vec![0.0f32; store.rows().unwrap().len() * array.d()];
    array.read_rows(0, &mut x);
    let alive = |sae: &TopKSae| -> Vec<bool> {
        let codes = sae.encode(&x);
        let mut a = vec![false; sae.d_sae];
        for (&i, &v) in codes.indices.iter().zip(&codes.values) {
            a[i as usize] |= v > 0.0;
        }
        a
    };
    let pa = scinterp_engine::sae::io::load(&primary).unwrap().sae;
    let ca = scinterp_engine::sae::io::load(&trained).unwrap().sae;
    let (alive_p, alive_c) = (alive(&pa), alive(&ca));
    let (mut reproduced, mut strong, mut n_alive) = (0, 0, 0);
    for f in (0..pa.d_sae).filter(|&f| alive_p[f]) {
        n_alive += 1;
        let best = best_abs_cos(pa.decoder_row(f), &ca, &alive_c);
        // A feature within rounding of a threshold could go either way.
        assert!((best - 0.7).abs() > 1e-5 && (best - 0.9).abs() > 1e-5);
        reproduced += (best >= 0.7) as u64;
        strong += (best >= 0.9) as u64;
    }
    assert_eq!(h["alive_primary"], n_alive);
    assert_eq!(
        (h["reproduced"].as_u64(), h["strong_reproduced"].as_u64()),
        (Some(reproduced), Some(strong))
    );
    let fraction = h["reproduced_fraction"].as_f64().unwrap();
    assert!((fraction - reproduced as f64 / n_alive as f64).abs() < 1e-12);
    let pair = &control["pairs"][0];
    assert_eq!(
        (&pair["from_sae"], &pair["to_sae"]),
        (&"control".into(), &"primary".into())
    );
    assert_eq!(pair["primary_matches"], primary_matches);
    let table = read_tsv(&out.join("seed_control_matches.tsv"));
    let same_hook: Vec<_> = table.iter().filter(|r| r["comparison"] == "same_hook").collect();
    assert_eq!(same_hook.len() as u64, n_alive);
    assert_eq!(
        same_hook.iter().filter(|r| num(r, "abs_cos") >= 0.7).count() as u64,
        reproduced
    );

    // A planted control: the primary's features reversed, odd decoders sign-flipped, another seed.
    let folder = scinterp_engine::sae::io::load(&primary).unwrap();
    let mut sae = folder.sae.clone();
    let d = sae.d_in;
    for f in 0..sae.d_sae {
        let g = sae.d_sae - 1 - f;
        let sign = if f % 2 == 1 { -1.0 } else { 1.0 };
        sae.w_enc[g * d..(g + 1) * d].copy_from_slice(folder.sae.encoder_row(f));
        sae.b_enc[g] = folder.sae.b_enc[f];
        for (o, i) in sae.w_dec[g * d..(g + 1) * d]
            .iter_mut()
            .zip(folder.sae.decoder_row(f))
        {
            *o = sign * i;
        }
    }
    let mut metadata = folder.metadata.clone();
    metadata["scinterp"]["training"]["seed"] = 12345.into();
    let planted = tmp.path().join("control-planted");
    scinterp_engine::sae::io::save(&planted, &sae, &metadata).unwrap();
    let summary = json(&layers(&[&planted]));
    let h = &summary["seed_control"]["hooks"][0];
    assert_eq!(h["reproduced"], n_alive);
    assert_eq!(h["reproduced_fraction"], 1.0);
    assert_eq!(summary["seed_control"]["pairs"][0]["matches"], primary_matches);
    let spans = &summary["seed_control"]["lifespans"][0];
    assert_eq!(spans["mean_lifespan"], spans["primary_mean_lifespan"]);

    // Refusals: two controls of one hook; a control of a hook not compared.
    let err = layers(&[&trained, &planted]);
    assert_fails_with(&err, &["--control-saes", "at most one control per hook"]);
    assert_fails_with(&layers(&[&next, &saes.join("nope")]), &["nope"]);
    let only_first = tmp.path().join("layers-one");
    assert_fails_with(
        &scinterp(&[
            "layers",
            "--acts",
            s(&acts),
            "--saes",
            &format!("{},{}", s(&primary), s(&primary)),
            "--control-saes",
            s(&next),
            "--out",
            s(&only_first),
        ]),
        &[
            "--control-saes",
            "blocks.2.hook_resid_post, which no SAE of --saes is on",
        ],
    );
}

/// `scinterp effects`: α = 1 changes nothing; ablation and steering rows for every feature that fired,
/// with the control columns; a malformed readout set is refused.
#[test]
fn effects_ablate_and_steer_with_a_random_direction_control() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tokens, saes) = trace_fixture(tmp.path());
    let out = tmp.path().join("effects.tsv");
    let run = |readout: &str| {
        scinterp(&[
            "effects",
            "--model",
            s(&model),
            "--input",
            s(&tokens),
            "--saes",
            s(&saes),
            "--source",
            "blocks.0.hook_resid_post",
            "--features",
            "all",
            "--alphas",
            "0,1,3",
            "--readout-tokens",
            readout,
            "--out",
            s(&out),
            "--json",
        ])
    };
    let summary = ok_json(&run("5,6,7,8,9,10,11,12,13,14,15"));
    let rows = read_tsv(&out);
    let fired = summary["features_fired"].as_u64().unwrap() as usize;
    assert!(fired > 0);
    assert_eq!(rows.len(), 3 * fired);
    for r in &rows {
        assert!(num(r, "n_cells") >= 1.0);
        if num(r, "alpha") == 1.0 {
            assert_eq!(num(r, "other_logit_change"), 0.0, "α = 1 is the identity edit");
            assert_eq!(num(r, "control_target_minus_other"), 0.0);
        }
        let (p, q) = (num(r, "vs_control_p"), num(r, "vs_control_q"));
        assert!(p.is_nan() || (q >= p && q <= 1.0));
    }
    assert!(
        rows.iter()
            .any(|r| num(r, "alpha") == 0.0 && num(r, "other_logit_change") != 0.0),
        "ablation changes the logits"
    );
    assert_fails_with(&run("5,x"), &["--readout-tokens", "`x` is not a token id"]);
    let table = std::fs::read(&out).unwrap();
    assert_fails_with(
        &run("5,6"),
        &["effects.tsv", "already holds an effects table", "--overwrite"],
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        table,
        "a refused run leaves the table as it was"
    );
}
