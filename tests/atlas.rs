//! `scinterp atlas` end to end: the site built from the demo's outputs (tests/fixtures/atlas, made by
//! tests/reference/make_atlas_fixture.sh) holds exactly what the input tables say, and bad input gets one
//! clear error naming the files.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use common::{as_strs, assert_fails_with, fixtures, read_tsv, s, scinterp};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{json, Value};

fn fixture() -> PathBuf {
    fixtures().join("atlas")
}

/// The arguments that build the fixture's atlas into `out`.
fn atlas_args(out: &Path) -> Vec<String> {
    let f = fixture();
    let cats: Vec<String> = ["catalog-b1", "catalog-b2", "catalog-b3"]
        .iter()
        .map(|c| f.join(c).display().to_string())
        .collect();
    vec![
        "atlas".into(),
        "--catalogs".into(),
        cats.join(","),
        "--annotation".into(),
        f.join("annotation").display().to_string(),
        "--edges".into(),
        f.join("edges.tsv").display().to_string(),
        "--effects".into(),
        f.join("effects.parquet").display().to_string(),
        "--layers".into(),
        f.join("layers").display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--json".into(),
    ]
}

fn run(args: &[String]) -> std::process::Output {
    scinterp(&as_strs(args))
}

/// Every row of a Parquet table as column name → JSON value.
fn parquet_rows(path: &Path) -> Vec<BTreeMap<String, Value>> {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            row.unwrap()
                .get_column_iter()
                .map(|(name, field)| {
                    let v = match field {
                        Field::Long(x) => json!(x),
                        Field::Int(x) => json!(x),
                        Field::Double(x) => json!(x),
                        Field::Float(x) => json!(x),
                        Field::Bool(x) => json!(*x as i64),
                        Field::Str(x) => json!(x),
                        Field::Null => Value::Null,
                        other => panic!("unexpected field {other:?}"),
                    };
                    (name.clone(), v)
                })
                .collect()
        })
        .collect()
}

/// A data file of the site, decoded (a detail shard as its records, as the page reads it).
fn data(site: &Path, rel: &str) -> Value {
    let text = std::fs::read_to_string(site.join("data").join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let v = scinterp_export::atlas::read_script(&text)
        .unwrap_or_else(|| panic!("{rel}: not an atlas data script"))
        .1;
    scinterp_export::atlas::records(&v)
}

/// A record's top-gene ids: the first `it` are the layer table's `top` genes of the feature.
fn gene_ids(g: &Value, table: &Value, f: i64) -> Vec<Value> {
    let it = g.get("it").and_then(Value::as_u64).unwrap_or(0) as usize;
    let row = table["cols"]["f"]
        .as_array()
        .unwrap()
        .iter()
        .position(|x| x.as_i64() == Some(f))
        .unwrap();
    let top = table["cols"]["top"][row].as_array().unwrap();
    assert!(it <= top.len(), "feature {f}: it {it}");
    top[..it]
        .iter()
        .chain(g["id"].as_array().unwrap())
        .cloned()
        .collect()
}

/// Equal to 4 significant digits (the atlas rounds every float so).
fn close(a: &Value, b: f64) -> bool {
    let a = a.as_f64().unwrap_or(f64::NAN);
    if !b.is_finite() {
        return !a.is_finite();
    }
    (a - b).abs() <= 5e-4 * b.abs().max(1e-300)
}

#[test]
fn atlas_data_files_hold_what_the_tables_say() {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    let out = run(&atlas_args(&site));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("--json prints the report");
    assert!(site.join("index.html").is_file() && site.join("assets/atlas.js").is_file());
    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    assert!(
        index.contains("assets/atlas.js") && !index.contains("http"),
        "no network references"
    );
    let js = std::fs::read_to_string(site.join("assets/atlas.js")).unwrap();
    assert!(
        !js.contains("fetch(") && !js.contains("XMLHttpRequest"),
        "data come as scripts, not fetch"
    );

    let fx = fixture();
    let manifest = data(&site, "atlas.js");
    let layers = manifest["layers"].as_array().unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "blocks.1.hook_resid_post",
            "blocks.2.hook_resid_post",
            "blocks.3.hook_resid_post"
        ]
    );
    let annotate: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("annotation/annotate.json")).unwrap()).unwrap();
    let genes = data(&site, "genes.js");
    let terms = data(&site, "terms.js");
    let libraries = manifest["libraries"].as_array().unwrap();
    let term_name = |t: &Value| {
        let t = t.as_u64().unwrap() as usize;
        (
            libraries[terms["library"][t].as_u64().unwrap() as usize]
                .as_str()
                .unwrap()
                .to_string(),
            terms["name"][t].as_str().unwrap().to_string(),
        )
    };
    let mut checked_genes = 0;
    let mut checked_terms = 0;
    for (l, dir) in ["catalog-b1", "catalog-b2", "catalog-b3"].iter().enumerate() {
        let features = parquet_rows(&fx.join(dir).join("features.parquet"));
        let alive = features.iter().filter(|r| r["alive"] == json!(1)).count();
        assert_eq!(layers[l]["alive"], json!(alive), "{dir}");
        // The annotated count is annotate's own (a test at q_value_atlas ≤ alpha, alive features).
        assert_eq!(
            layers[l]["annotated"], annotate["catalogs"][l]["annotated_features"],
            "{dir}"
        );
        let table = data(&site, &format!("L{l}/features.js"));
        assert_eq!(table["cols"]["f"].as_array().unwrap().len(), features.len());
        for r in &features {
            let f = r["feature"].as_i64().unwrap() as usize;
            assert!(close(
                &table["cols"]["fire_freq"][f],
                r["fire_freq"].as_f64().unwrap()
            ));
            assert_eq!(table["cols"]["module"][f], r["module"]);
        }
        // Top genes, both rankings, in rank order with their numbers.
        let mut by_feature: HashMap<(i64, String), Vec<&BTreeMap<String, Value>>> = HashMap::new();
        let top = parquet_rows(&fx.join(dir).join("top_genes.parquet"));
        for r in &top {
            by_feature
                .entry((
                    r["feature"].as_i64().unwrap(),
                    r["ranking"].as_str().unwrap().to_string(),
                ))
                .or_default()
                .push(r);
        }
        for ((f, ranking), mut rows) in by_feature {
            rows.sort_by_key(|r| r["rank"].as_i64().unwrap());
            let shard = data(&site, &format!("L{l}/d{}.js", f / 64));
            let g = &shard[f.to_string()]["g"];
            let ids = gene_ids(g, &table, f);
            assert!(
                g.get("it").and_then(Value::as_u64) >= Some(1),
                "L{l} {f}: the first ids are the layer table's top genes"
            );
            let n_rows = ids.len();
            // `cm` left out: every row in order; a count n: rows 0 … n − 1.
            let order = if ranking == "conditional_mean" {
                match g.get("cm") {
                    Some(Value::Array(a)) => json!(a),
                    count => {
                        let n = count.map_or(n_rows, |c| c.as_u64().unwrap() as usize);
                        json!((0..n).collect::<Vec<_>>())
                    }
                }
            } else {
                g["mass"].clone()
            };
            assert_eq!(
                order.as_array().unwrap().len(),
                rows.len(),
                "L{l} feature {f} {ranking}"
            );
            for (k, r) in rows.iter().enumerate() {
                let at = order[k].as_u64().unwrap() as usize;
                let gi = ids[at].as_u64().unwrap() as usize;
                assert_eq!(genes["symbol"][gi], r["symbol"]);
                assert_eq!(genes["gene_id"][gi], r["gene_id"]);
                // n_positions: the row's own where it has one, else the gene's in genes.js.
                let positions = match g.get("np").map(|np| &np[at]) {
                    Some(v) if !v.is_null() => v.clone(),
                    _ => genes["n_positions"][gi].clone(),
                };
                let row = [g["nf"][at].clone(), positions, g["m"][at].clone()];
                for (j, col) in ["n_fired", "n_positions", "mean_when_fired"].iter().enumerate() {
                    assert!(close(&row[j], r[*col].as_f64().unwrap()), "L{l} {f} {col}");
                }
                // The page derives mass and fire_rate from the row (they are not stored twice).
                let v = |j: usize| row[j].as_f64().unwrap();
                let (mass, rate) = (r["mass"].as_f64().unwrap(), r["fire_rate"].as_f64().unwrap());
                assert!((v(2) * v(0) - mass).abs() <= 1e-3 * mass.abs(), "L{l} {f} mass");
                assert!(
                    (v(0) / v(1) - rate).abs() <= 1e-3 * rate.abs(),
                    "L{l} {f} fire_rate"
                );
                checked_genes += 1;
            }
        }
    }
    assert!(checked_genes > 10_000, "{checked_genes}");

    // Every top cell: its id, n_active and mean_when_active, the last quantised (the first cell's value s
    // to 4 digits, the others to the nearest multiple of s / 255: within s / 510 of the table's).
    let mut checked_cells = 0;
    for (l, dir) in ["catalog-b1", "catalog-b2", "catalog-b3"].iter().enumerate() {
        let mut by_feature: BTreeMap<i64, Vec<BTreeMap<String, Value>>> = BTreeMap::new();
        for r in parquet_rows(&fx.join(dir).join("top_cells.parquet")) {
            by_feature
                .entry(r["feature"].as_i64().unwrap())
                .or_default()
                .push(r);
        }
        for (f, mut rows) in by_feature {
            rows.sort_by_key(|r| r["rank"].as_i64().unwrap());
            let tc = &data(&site, &format!("L{l}/d{}.js", f / 64))[f.to_string()]["tc"];
            assert!(tc.get("r").is_none(), "L{l} {f}: ranks 0, 1, 2, …");
            let ids: Vec<u64> = tc["c"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .collect();
            assert_eq!(ids.len(), rows.len(), "L{l} {f}");
            let s = tc["s"]
                .as_f64()
                .expect("quantised: the demo's means fall with rank");
            let steps: Vec<i64> = tc["q"]
                .as_array()
                .unwrap()
                .iter()
                .map(|q| q.as_i64().unwrap())
                .collect();
            let shown = scinterp_export::atlas::dequantise_top_cell_means(s, &steps);
            for (k, r) in rows.iter().enumerate() {
                let cells = data(&site, &format!("cells/{}.js", ids[k] / 256));
                assert_eq!(cells[ids[k].to_string()], r["cell_id"], "L{l} {f} rank {k}");
                assert_eq!(tc["a"][k].as_f64(), r["n_active"].as_f64(), "L{l} {f} rank {k}");
                let m = r["mean_when_active"].as_f64().unwrap();
                let bound = if k == 0 {
                    5e-4 * m
                } else {
                    s / 510.0 * (1.0 + 1e-9)
                };
                assert!(
                    (shown[k] - m).abs() <= bound,
                    "L{l} {f} rank {k}: shown {}, table {m}, bound {bound}",
                    shown[k]
                );
                checked_cells += 1;
            }
        }
    }
    assert!(checked_cells >= 1000, "{checked_cells}");

    // Every significant term, with p, q, fold and its overlap genes, on its feature.
    let mut derived_p = 0;
    let layer_of = |hook: &str| names.iter().position(|n| *n == hook).unwrap();
    for r in parquet_rows(&fx.join("annotation/enrichment.parquet")) {
        let l = layer_of(r["catalog"].as_str().unwrap());
        let f = r["feature"].as_i64().unwrap();
        let rec = &data(&site, &format!("L{l}/d{}.js", f / 64))[f.to_string()];
        let row = rec["t"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| {
                term_name(&t[0])
                    == (
                        r["library"].as_str().unwrap().into(),
                        r["term"].as_str().unwrap().into(),
                    )
            })
            .unwrap_or_else(|| panic!("L{l} {f}: term {} missing", r["term"]));
        for (j, col) in [
            "overlap",
            "query_size",
            "term_size",
            "background_size",
            "p_value",
            "q_value_atlas",
            "q_value_catalog",
        ]
        .iter()
        .enumerate()
        {
            let want = r[*col].as_f64().unwrap();
            if *col == "p_value" && row[5].is_null() {
                // Left to the page: the hypergeometric tail of the row's four counts (annotate's test),
                // which the builder found equal to the table's p.
                let v = |j: usize| row[j].as_u64().unwrap();
                let tail = scinterp_engine::stats::hypergeom_upper_tail(v(1), v(4), v(3), v(2));
                assert!(
                    (tail - want).abs() <= 1e-9 * want,
                    "L{l} {f} p: tail {tail}, table {want}"
                );
                derived_p += 1;
                continue;
            }
            assert!(close(&row[j + 1], want), "L{l} {f} {col}");
        }
        // fold_enrichment: stored, or null where the page derives it from the four counts.
        let fold = if row[8].is_null() {
            let v = |j: usize| row[j].as_f64().unwrap();
            (v(1) / v(2)) / (v(3) / v(4))
        } else {
            row[8].as_f64().unwrap()
        };
        assert!(
            close(&json!(fold), r["fold_enrichment"].as_f64().unwrap()),
            "L{l} {f} fold"
        );
        // Overlap genes: indices of the feature's top-gene rows (the page shows their symbols), or the
        // list as annotate wrote it.
        let overlap = match &row[9] {
            Value::Array(ix) => {
                let ids = gene_ids(&rec["g"], &data(&site, &format!("L{l}/features.js")), f);
                ix.iter()
                    .map(|k| {
                        let gi = ids[k.as_u64().unwrap() as usize].as_u64().unwrap() as usize;
                        genes["symbol"][gi].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            }
            v => v.as_str().unwrap().to_string(),
        };
        assert_eq!(json!(overlap), r["overlap_genes"]);
        // The term index lists the feature under the term.
        let t = row[0].as_u64().unwrap() as usize;
        let idx = data(&site, &format!("tidx/{}.js", t / 256));
        assert!(idx[t.to_string()]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e[0] == json!(l) && e[1] == json!(f)));
        checked_terms += 1;
    }
    assert!(checked_terms > 50, "{checked_terms}");
    assert!(derived_p > 0, "some term p is left to the page");

    // Every edge, downstream on its source and upstream on its target.
    let edges = read_tsv(&fx.join("edges.tsv"));
    assert_eq!(report["edges"], json!(edges.len()));
    for e in &edges {
        let (ls, lt) = (layer_of(&e["source_hook"]), layer_of(&e["target_hook"]));
        let (fs, ft): (i64, i64) = (
            e["source_feature"].parse().unwrap(),
            e["target_feature"].parse().unwrap(),
        );
        let d: f64 = e["cohens_d"].parse().unwrap();
        let q: f64 = e["q"].parse().unwrap();
        let down = &data(&site, &format!("L{ls}/d{}.js", fs / 64))[fs.to_string()]["dn"];
        assert!(down
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x[0] == json!(lt) && x[1] == json!(ft) && close(&x[4], d) && close(&x[7], q)));
        let up = &data(&site, &format!("L{lt}/d{}.js", ft / 64))[ft.to_string()]["up"];
        assert!(up
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x[0] == json!(ls) && x[1] == json!(fs) && close(&x[4], d)));
    }
    let pair = &manifest["edge_pairs"][0];
    assert_eq!(pair[2], json!(edges.len()));
    let rises = edges
        .iter()
        .filter(|e| e["mean_change"].parse::<f64>().unwrap() > 0.0)
        .count();
    assert_eq!(pair[3], json!(rises));
    // Edges with mean exactly 0 are on neither side.
    let falls = edges
        .iter()
        .filter(|e| e["mean_change"].parse::<f64>().unwrap() < 0.0)
        .count();
    assert_eq!(pair[4], json!(falls));

    // The gene index: a gene of a feature's top list leads back to that feature with its ranks.
    let first = parquet_rows(&fx.join("catalog-b2/top_genes.parquet"))
        .into_iter()
        .next()
        .unwrap();
    let g = (0..genes["symbol"].as_array().unwrap().len())
        .find(|&g| genes["symbol"][g] == first["symbol"])
        .unwrap();
    let idx = data(&site, &format!("gidx/{}.js", g / 256));
    // Per gene: [layer, n, n × (feature − previous, rank_cm + rank_base × rank_mass, mean), …].
    let flat: Vec<f64> = idx[g.to_string()]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let base = manifest["rank_base"].as_f64().unwrap();
    let mut entries = Vec::new();
    let mut k = 0;
    while k < flat.len() {
        let (l, n) = (flat[k], flat[k + 1] as usize);
        k += 2;
        let mut f = 0.0;
        for _ in 0..n {
            f += flat[k];
            entries.push((l, f, flat[k + 1] % base, (flat[k + 1] / base).floor()));
            k += 3;
        }
    }
    let (_, _, cm, mass) = *entries
        .iter()
        .find(|e| e.0 == 1.0 && json!(e.1 as i64) == first["feature"])
        .expect("gene index entry");
    let rank = (first["rank"].as_i64().unwrap() + 1) as f64;
    let ranking = first["ranking"].as_str().unwrap();
    assert_eq!(if ranking == "mass" { mass } else { cm }, rank, "{ranking}");

    // Effects rows sit on their features.
    let effects = parquet_rows(&fx.join("effects.parquet"));
    for r in &effects {
        let l = layer_of(r["source_hook"].as_str().unwrap());
        let f = r["feature"].as_i64().unwrap();
        let fx_rows = &data(&site, &format!("L{l}/d{}.js", f / 64))[f.to_string()]["fx"];
        assert!(fx_rows
            .as_array()
            .unwrap()
            .iter()
            .any(|x| close(&x[0], r["alpha"].as_f64().unwrap())
                && close(&x[4], r["target_minus_other"].as_f64().unwrap())));
    }
    // Layer matches: each of the demo's blocks.1 features has a best match in blocks.2.
    let rec = &data(&site, "L0/d0.js")["0"];
    assert!(rec["mf"].as_array().unwrap().iter().any(|m| m[0] == json!(1)));

    // Building again needs --overwrite; with it the site is replaced.
    let again = run(&atlas_args(&site));
    assert_fails_with(&again, &["--overwrite"]);
    let mut args = atlas_args(&site);
    args.push("--overwrite".into());
    assert!(run(&args).status.success());
}

#[test]
fn mismatched_or_missing_inputs_get_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture();
    let site = tmp.path().join("site");
    // Edges of another SAE: a source feature the catalog's SAE does not have.
    let edges = std::fs::read_to_string(fx.join("edges.tsv")).unwrap();
    let mut lines: Vec<String> = edges.lines().map(str::to_string).collect();
    let mut cols: Vec<String> = lines[1].split('\t').map(str::to_string).collect();
    cols[1] = "9999".into();
    lines[1] = cols.join("\t");
    let bad_edges = tmp.path().join("edges.tsv");
    std::fs::write(&bad_edges, lines.join("\n") + "\n").unwrap();
    let out = scinterp(&[
        "atlas",
        "--catalogs",
        s(&fx.join("catalog-b1")),
        "--edges",
        s(&bad_edges),
        "--out",
        s(&site),
    ]);
    assert_fails_with(
        &out,
        &[
            s(&bad_edges),
            s(&fx.join("catalog-b1")),
            "feature 9999",
            "256 features",
        ],
    );
    assert!(!site.exists(), "nothing is left behind");
    assert!(std::fs::read_dir(tmp.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("partial")));

    // An annotation of catalogs that were not given.
    let out = scinterp(&[
        "atlas",
        "--catalogs",
        s(&fx.join("catalog-b2")),
        "--annotation",
        s(&fx.join("annotation")),
        "--out",
        s(&site),
    ]);
    assert_fails_with(
        &out,
        &[
            "annotate.json",
            "not among --catalogs",
            "blocks.1.hook_resid_post",
        ],
    );

    // A catalog missing a table.
    let broken = tmp.path().join("catalog");
    std::fs::create_dir(&broken).unwrap();
    for f in ["catalog.json", "features.parquet"] {
        std::fs::copy(fx.join("catalog-b2").join(f), broken.join(f)).unwrap();
    }
    let out = scinterp(&["atlas", "--catalogs", s(&broken), "--out", s(&site)]);
    assert_fails_with(&out, &[s(&broken), "top_genes"]);

    // Not a catalog at all; nothing to build; an --out that is not an atlas.
    let out = scinterp(&["atlas", "--catalogs", s(&fx.join("layers")), "--out", s(&site)]);
    assert_fails_with(&out, &["catalog.json", "scinterp analyze"]);
    let out = scinterp(&["atlas", "--out", s(&site)]);
    assert_fails_with(&out, &["nothing to build"]);
    let out = scinterp(&["atlas", "--catalogs", s(&fx.join("catalog-b2")), "--out", s(&fx)]);
    assert_fails_with(&out, &["not an atlas"]);
    let out = scinterp(&["atlas", "serve", s(&fx)]);
    assert_fails_with(&out, &["not an atlas"]);
}

#[test]
fn optional_inputs_absent_still_build_and_consensus_and_tools_are_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture();
    // A consensus table and a tool card that names a feature.
    let consensus = tmp.path().join("consensus.tsv");
    std::fs::write(
        &consensus,
        "term_a\tterm_b\tin_both\tp\nPLANTED_PROGRAM_01\tPLANTED_PROGRAM_02\t1\t0.01\n",
    )
    .unwrap();
    let tools = tmp.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    std::fs::write(
        tools.join("card.json"),
        r#"{"name": "demo tool", "kind": "readout", "source": {"hook": "blocks.2.hook_resid_post", "features": [3, 5]}}"#,
    )
    .unwrap();
    let site = tmp.path().join("site");
    let out = scinterp(&[
        "atlas",
        "--catalogs",
        s(&fx.join("catalog-b2")),
        "--consensus",
        s(&consensus),
        "--tools",
        s(&tools),
        "--out",
        s(&site),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest = data(&site, "atlas.js");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["annotations"], json!([]));
    let extra = data(&site, "extra.js");
    assert_eq!(
        extra["consensus"][0]["columns"],
        json!(["term_a", "term_b", "in_both", "p"])
    );
    assert_eq!(extra["tools"][0]["features"], json!([[0, 3], [0, 5]]));
    assert_eq!(data(&site, "L0/d0.js")["3"]["tl"], json!([0]));
}
