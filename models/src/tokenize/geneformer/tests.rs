use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use super::ranking::CellRanker;
use super::*;
use crate::cells::{CountMatrix, ObsColumn};

/// The ranking of `(x, local)` pairs by the documented rule, by a plain comparison sort.
fn reference_rank(items: &[(f64, u32)], keep: usize) -> Vec<u32> {
    let mut items = items.to_vec();
    items.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    items.iter().take(keep).map(|&(_, l)| l).collect()
}

fn ranker_with(items: &[(f64, u32)]) -> CellRanker {
    let mut r = CellRanker::new(0);
    r.ascending = items.windows(2).all(|w| w[0].1 < w[1].1);
    r.keys = items.iter().map(|&(x, _)| !x.to_bits()).collect();
    r.locals = items.iter().map(|&(_, l)| l).collect();
    r.range = r
        .keys
        .iter()
        .fold((u64::MAX, 0u64), |(lo, hi), &k| (lo.min(k), hi.max(k)));
    r
}

#[test]
fn the_ranking_equals_a_plain_sort() {
    let mut state = 7u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    for n in [0usize, 1, 2, 31, 32, 33, 255, 256, 2000, 5000, 20_000] {
        let mut cases: Vec<Vec<(f64, u32)>> = Vec::new();
        // Few distinct values (many ties), then a wide spread over many octaves.
        for spread in [3u64, 1 << 20] {
            cases.push(
                (0..n)
                    .map(|l| {
                        let x = (1 + next() % spread) as f64 / (1 + next() % 97) as f64;
                        (x, l as u32)
                    })
                    .collect(),
            );
        }
        // A tight cluster and one outlier: most keys share a bucket.
        cases.push(
            (0..n)
                .map(|l| {
                    let x = if l == 0 {
                        1e9
                    } else {
                        1.0 + (next() % 1000) as f64 * 1e-12
                    };
                    (x, l as u32)
                })
                .collect(),
        );
        // Extremes of the f64 range, and local indices with gaps.
        cases.push(
            (0..n)
                .map(|l| {
                    let x = match next() % 4 {
                        0 => 1e-300,
                        1 => 1e300,
                        2 => f64::MIN_POSITIVE,
                        _ => (next() % 5 + 1) as f64,
                    };
                    (x, 3 * l as u32 + 1)
                })
                .collect(),
        );
        // Local indices not ascending (the general path).
        let mut shuffled = cases[1].clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, next() as usize % (i + 1));
        }
        cases.push(shuffled);
        for (i, items) in cases.iter().enumerate() {
            for keep in [usize::MAX, 4094, 100, 1] {
                let mut r = ranker_with(items);
                assert_eq!(
                    r.rank(keep),
                    reference_rank(items, keep).as_slice(),
                    "n {n} case {i} keep {keep}"
                );
            }
        }
    }
}

const DICTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/geneformer");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer");

fn real_dicts(version: GeneformerVersion) -> Option<&'static GeneformerDictionaries> {
    static V1: OnceLock<Option<GeneformerDictionaries>> = OnceLock::new();
    static V2: OnceLock<Option<GeneformerDictionaries>> = OnceLock::new();
    let (cell, sub) = match version {
        GeneformerVersion::V1 => (&V1, "v1"),
        GeneformerVersion::V2 => (&V2, "v2"),
    };
    cell.get_or_init(|| {
        let dir = Path::new(DICTS).join(sub);
        if !dir.is_dir() {
            return None;
        }
        Some(GeneformerDictionaries::load(version, &dir).expect("real dictionaries load"))
    })
    .as_ref()
}

use crate::cells::test_matrix as matrix;

fn toy_dicts(version: GeneformerVersion) -> GeneformerDictionaries {
    let mut d = GeneformerDictionaries {
        version: Some(version),
        ..Default::default()
    };
    for (i, s) in ["<pad>", "<mask>", "<cls>", "<eos>"].iter().enumerate() {
        d.token.insert(s.to_string(), i as u32);
    }
    for (i, (g, m)) in [("GA", 1.0), ("GB", 2.0), ("GC", 1.0), ("GD", 0.5)]
        .iter()
        .enumerate()
    {
        d.token.insert(g.to_string(), 4 + i as u32);
        d.median.insert(g.to_string(), *m);
        d.ensembl_mapping.insert(g.to_string(), g.to_string());
    }
    d.ensembl_mapping.insert("ALIAS_A".into(), "GA".into());
    d.ensembl_mapping.insert("OLD".into(), "NOT_IN_VOCAB".into());
    d.gene_name_id.insert("SymC".into(), "GC".into());
    d
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn toy_collapse_ties_and_truncation() {
    let d = toy_dicts(GeneformerVersion::V2);
    let tk = GeneformerTokenizer::new(&d, TokenizerOptions::new(GeneformerVersion::V2)).unwrap();
    // columns: GC, alias_a (→ GA, lower case), GB, OLD (unmapped), GA, GD
    let m = matrix(
        ids(&["GC", "alias_a", "GB", "OLD", "GA", "GD"]),
        &[
            // GA = 1 + 1 = 2 → x ∝ 2; GC = 2 → tie with GA: GC's column 0 < GA's first column 1.
            // GB = 2 / 2 = 1; GD = 1 / 0.5 = 2 → tie too, column 5 last.
            vec![(0, 2.0), (1, 1.0), (2, 2.0), (3, 100.0), (4, 1.0), (5, 1.0)],
            vec![],
            vec![(3, 5.0)],
        ],
    );
    let out = tk.tokenize(&m).unwrap();
    assert_eq!(out.kept_cells, vec![0]);
    assert_eq!(out.dropped_cells, vec![1, 2]);
    assert_eq!(out.tokens, vec![vec![2, 6, 4, 7, 5, 3]]);
    assert_eq!(
        (
            out.stats.n_genes_mapped,
            out.stats.n_genes_unmapped,
            out.stats.n_targets
        ),
        (5, 1, 4)
    );
    assert!(out.stats.n_counts_computed);

    let mut o = TokenizerOptions::new(GeneformerVersion::V2);
    o.model_input_size = 4;
    let out = GeneformerTokenizer::new(&d, o).unwrap().tokenize(&m).unwrap();
    assert_eq!(out.tokens, vec![vec![2, 6, 4, 3]]);

    // symbols and no collapsing
    let mut o = TokenizerOptions::new(GeneformerVersion::V2);
    o.gene_id_kind = GeneIdKind::Symbol;
    o.collapse_gene_ids = false;
    let tk = GeneformerTokenizer::new(&d, o).unwrap();
    let m2 = matrix(
        ids(&["SymC", "GA", "ALIAS_A"]),
        &[vec![(0, 1.0), (1, 3.0), (2, 9.0)]],
    );
    assert_eq!(tk.tokenize(&m2).unwrap().tokens, vec![vec![2, 4, 6, 3]]);
    let m3 = matrix(ids(&["GA", "GA"]), &[vec![(0, 1.0)]]);
    assert!(matches!(
        tk.tokenize(&m3),
        Err(TokenizeError::DuplicateGene { .. })
    ));
}

#[test]
fn ranges_of_cells_equal_one_call_and_both_ranking_paths_agree() {
    let d = toy_dicts(GeneformerVersion::V2);
    let tk = GeneformerTokenizer::new(&d, TokenizerOptions::new(GeneformerVersion::V2)).unwrap();
    // Pseudo-random cells over 6 columns; `ids_collapsed` sums two columns into GA.
    let mut state = 7u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut rows: Vec<Vec<(u32, f32)>> = (0..50)
        .map(|_| {
            let mut row = Vec::new();
            for g in 0..6u32 {
                let (keep, v) = (next() % 3 != 0, (next() % 5) as f32);
                if keep && v > 0.0 {
                    row.push((g, v));
                }
            }
            row
        })
        .collect();
    // A cell without counts and one with counts only in an unmapped column: both dropped.
    rows[10].clear();
    rows[20] = vec![(5, 3.0)];
    for names in [
        ["GA", "GB", "GC", "GD", "OLD", "NOPE"],
        ["GA", "GB", "alias_a", "GD", "GC", "OLD"],
    ] {
        let m = matrix(ids(&names), &rows);
        let whole = tk.tokenize(&m).unwrap();
        let prepared = tk.prepare(&m).unwrap();
        assert_eq!(prepared.tables.injective, names[2] != "alias_a");
        // Ranges of the matrix, and the same ranges as blocks of their own (as a file read block by
        // block gives them), mapped once from a matrix of no cell.
        let head = tk.prepare(&m.slice_rows(0..0)).unwrap();
        let (mut joined, mut blocks) = (TokenizedCells::default(), TokenizedCells::default());
        for r in [0..7, 7..8, 8..8, 8..50] {
            let part = tk.tokenize_cells(&prepared, &m, r.clone(), 0).unwrap();
            joined.tokens.extend(part.tokens);
            joined.kept_cells.extend(part.kept_cells);
            joined.dropped_cells.extend(part.dropped_cells);
            let block = m.slice_rows(r.clone());
            let part = tk
                .tokenize_cells(&head, &block, 0..block.n_cells, r.start)
                .unwrap();
            blocks.tokens.extend(part.tokens);
            blocks.kept_cells.extend(part.kept_cells);
            blocks.dropped_cells.extend(part.dropped_cells);
        }
        joined.stats = prepared.stats().clone();
        assert_eq!(joined, whole);
        blocks.stats = prepared.stats().clone();
        assert_eq!(blocks, whole);
        assert!(!whole.dropped_cells.is_empty() && !whole.kept_cells.is_empty());
        assert!(tk.tokenize_cells(&prepared, &m, 0..51, 0).is_err());
        // Against the accumulate-then-rank path on the same cells: forcing it must not change a token.
        let mut forced = tk.prepare(&m).unwrap();
        forced.tables.injective = false;
        let again = tk.tokenize_cells(&forced, &m, 0..50, 0).unwrap();
        assert_eq!(again.tokens, whole.tokens);
    }
    assert_eq!(tk.count_mapped(&ids(&["GA", "alias_a", "OLD", "x", "GD"])), 3);
}

#[test]
fn refuses_non_counts_and_bad_options() {
    let d = toy_dicts(GeneformerVersion::V2);
    let tk = GeneformerTokenizer::new(&d, TokenizerOptions::new(GeneformerVersion::V2)).unwrap();
    let m = matrix(ids(&["GA", "GB"]), &[vec![(0, 1.0)], vec![(1, 0.693)]]);
    let err = tk.tokenize(&m).unwrap_err();
    assert!(matches!(err, TokenizeError::NotCounts { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("log-normalised") && msg.contains("cell 1") && msg.contains("GB"),
        "{msg}"
    );

    // Counts are non-negative integers, at any size; anything else is refused.
    for (v, ok) in [
        (0.0, true),
        (3.0, true),
        (8_388_607.0, true),
        (8_388_607.5, false),
        (8_388_608.0, true),
        (16_777_216.0, true),
        (3e38, true),
        (0.5, false),
        (1.5, false),
        (2.5, false),
        (1e-45, false),
        (-0.0, true),
        (8_388_607.0, true),
        (-1.0, false),
        (f32::INFINITY, false),
        (f32::NAN, false),
    ] {
        let mut m = matrix(ids(&["GA", "GB"]), &[vec![(0, 1.0)], vec![(1, 1.0)]]);
        m.values.to_mut()[1] = v;
        let r = tk.tokenize(&m);
        assert_eq!(
            !matches!(r, Err(TokenizeError::NotCounts { .. })),
            ok,
            "value {v}: {r:?}"
        );
    }

    let m = matrix(ids(&["X1", "X2"]), &[vec![(0, 1.0)]]);
    let msg = tk.tokenize(&m).unwrap_err().to_string();
    assert!(msg.contains("none of the 2 genes"), "{msg}");

    let mut m = matrix(ids(&["GA"]), &[vec![(0, 1.0)]]);
    m.obs.insert("n_counts".into(), ObsColumn::Number(vec![0.0]));
    assert!(matches!(tk.tokenize(&m), Err(TokenizeError::NCounts { .. })));

    for (v, size) in [
        (GeneformerVersion::V2, 2),
        (GeneformerVersion::V2, 4097),
        (GeneformerVersion::V1, 2049),
    ] {
        let mut o = TokenizerOptions::new(v);
        o.model_input_size = size;
        let mut d = toy_dicts(v);
        d.version = Some(v);
        assert!(matches!(
            GeneformerTokenizer::new(&d, o),
            Err(TokenizeError::Options(_))
        ));
    }
    let o = TokenizerOptions::new(GeneformerVersion::V1);
    assert!(matches!(
        GeneformerTokenizer::new(&d, o),
        Err(TokenizeError::Options(_))
    ));
}

#[test]
fn missing_dictionary_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = GeneformerDictionaries::load(GeneformerVersion::V2, dir.path()).unwrap_err();
    assert!(err.to_string().contains("token_dictionary_gc104M.pkl"), "{err}");
    let Some(_) = real_dicts(GeneformerVersion::V1) else {
        crate::test_data::skip("../shared/data/geneformer/{v1,v2} not found");
        return;
    };
    // three of the four V1 files present: the error names the missing one
    for f in &GeneformerVersion::V1.dictionary_files()[..3] {
        std::fs::copy(Path::new(DICTS).join("v1").join(f), dir.path().join(f)).unwrap();
    }
    let err = GeneformerDictionaries::load(GeneformerVersion::V1, dir.path()).unwrap_err();
    assert!(matches!(err, TokenizeError::Io { .. }));
    assert!(
        err.to_string().contains("ensembl_mapping_dict_gc30M.pkl"),
        "{err}"
    );
    // a file that is not a pickle
    std::fs::write(dir.path().join("ensembl_mapping_dict_gc30M.pkl"), b"not a pickle").unwrap();
    let err = GeneformerDictionaries::load(GeneformerVersion::V1, dir.path()).unwrap_err();
    assert!(matches!(err, TokenizeError::Pickle { .. }), "{err}");
    assert!(
        err.to_string().contains("ensembl_mapping_dict_gc30M.pkl"),
        "{err}"
    );
}

#[test]
fn real_dictionaries_sizes() {
    let (Some(v1), Some(v2)) = (
        real_dicts(GeneformerVersion::V1),
        real_dicts(GeneformerVersion::V2),
    ) else {
        crate::test_data::skip("../shared/data/geneformer/{v1,v2} not found");
        return;
    };
    assert_eq!(
        (
            v2.token.len(),
            v2.median.len(),
            v2.gene_name_id.len(),
            v2.ensembl_mapping.len()
        ),
        (20_275, 42_005, 63_675, 173_697)
    );
    assert_eq!(
        (
            v1.token.len(),
            v1.median.len(),
            v1.gene_name_id.len(),
            v1.ensembl_mapping.len()
        ),
        (25_426, 25_424, 40_248, 25_424)
    );
    assert_eq!((v2.token["<cls>"], v2.token["<eos>"]), (2, 3));
    assert_eq!(v1.token.values().max(), Some(&25_425));
}

fn fixture_matrix(fx: &serde_json::Value) -> CountMatrix {
    let n_cells = fx["n_cells"].as_u64().unwrap() as usize;
    let gene_ids: Vec<String> = fx["gene_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    let coo = &fx["coo"];
    let col = |k: &str| -> Vec<u64> {
        coo[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    let (r, c, v) = (col("row"), col("col"), col("val"));
    let mut rows = vec![Vec::new(); n_cells];
    for i in 0..r.len() {
        rows[r[i] as usize].push((c[i] as u32, v[i] as f32));
    }
    for row in &mut rows {
        row.sort_by_key(|e| e.0);
    }
    let mut m = matrix(gene_ids, &rows);
    if let Some(n) = fx["n_counts"].as_array() {
        m.obs.insert(
            "n_counts".into(),
            ObsColumn::Number(n.iter().map(|x| x.as_f64().unwrap()).collect()),
        );
    }
    m
}

fn as_vecs<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> T {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn matches_reference_fixtures() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(FIXTURES)
        .expect("tokenizer fixtures")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "expected the tokenizer fixtures in {FIXTURES}");
    let mut checked = 0;
    for path in &files {
        let fx: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let name = fx["name"].as_str().unwrap();
        let version = match fx["version"].as_str().unwrap() {
            "V1" => GeneformerVersion::V1,
            _ => GeneformerVersion::V2,
        };
        let Some(dicts) = real_dicts(version) else {
            crate::test_data::skip("../shared/data/geneformer/{v1,v2} not found");
            return;
        };
        let mut o = TokenizerOptions::new(version);
        o.model_input_size = fx["model_input_size"].as_u64().unwrap() as usize;
        o.collapse_gene_ids = fx["collapse_gene_ids"].as_bool().unwrap();
        o.gene_id_kind = match fx["gene_id_kind"].as_str().unwrap() {
            "symbol" => GeneIdKind::Symbol,
            _ => GeneIdKind::Ensembl,
        };
        let tk = GeneformerTokenizer::new(dicts, o).unwrap();
        let m = fixture_matrix(&fx);
        let out = tk.tokenize(&m).unwrap_or_else(|e| panic!("{name}: {e}"));
        let exp = &fx["expected"];
        let tokens: Vec<Vec<u32>> = as_vecs(&exp["tokens"]);
        assert_eq!(
            out.kept_cells,
            as_vecs::<Vec<usize>>(&exp["kept_cells"]),
            "{name}"
        );
        assert_eq!(
            out.dropped_cells,
            as_vecs::<Vec<usize>>(&exp["dropped_cells"]),
            "{name}"
        );
        assert_eq!(
            out.stats.n_genes_mapped,
            exp["n_genes_mapped"].as_u64().unwrap() as usize,
            "{name}"
        );
        assert_eq!(
            out.stats.n_genes_unmapped,
            exp["n_genes_unmapped"].as_u64().unwrap() as usize,
            "{name}"
        );
        assert_eq!(
            out.stats.n_targets,
            exp["n_targets"].as_u64().unwrap() as usize,
            "{name}"
        );
        assert_eq!(out.stats.n_counts_computed, fx["n_counts"].is_null(), "{name}");
        if exp["tie_groups"].is_null() {
            assert_eq!(out.tokens, tokens, "{name}");
        } else {
            // Parity with upstream: runs of equal x compared as sets.
            let groups: Vec<Vec<Vec<u32>>> = as_vecs(&exp["tie_groups"]);
            assert_eq!(out.tokens.len(), groups.len(), "{name}");
            let mut n_ties = 0;
            for (cell, (seq, cell_groups)) in out.tokens.iter().zip(&groups).enumerate() {
                let genes = &seq[1..seq.len() - 1];
                assert_eq!(
                    genes.len(),
                    cell_groups.iter().map(Vec::len).sum::<usize>(),
                    "{name} {cell}"
                );
                let mut at = 0;
                for g in cell_groups {
                    let got: BTreeSet<u32> = genes[at..at + g.len()].iter().copied().collect();
                    let want: BTreeSet<u32> = g.iter().copied().collect();
                    assert_eq!(got, want, "{name}: cell {cell}, tie group at rank {at}");
                    at += g.len();
                    n_ties += usize::from(g.len() > 1);
                }
            }
            assert!(n_ties > 0, "{name}: the tie fixture has no tie");
            // scinterp's own documented order (ascending first source column within a tie).
            assert_eq!(out.tokens, tokens, "{name}: tie order");
        }
        checked += 1;
    }
    assert_eq!(checked, files.len());
}
