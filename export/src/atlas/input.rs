//! Everything the atlas reads from disk, and nothing else: the catalog folders of `scinterp analyze`, the
//! output folders of `scinterp annotate` and `scinterp layers`, the edge tables of `scinterp trace`, the
//! tables of `scinterp effects`, and (generically) consensus tables and tool cards.
//!
//! Tables go through the engine's formats layer (`scinterp_engine::formats::Table`); this module adds the
//! atlas's lenient getters and its per-input checks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use scinterp_engine::formats::{Column, Table as EngineTable};
use serde_json::Value;

use super::error::{AtlasError, Result};

// ---------------------------------------------------------------------------------------------------------
// Tables: the engine's Parquet/TSV reader, with the atlas's lenient typed getters

/// A table of named columns read from `.parquet` or `.tsv` (chosen by the extension) by the engine's
/// formats layer, with getters that accept what other tools write (integral floats as integers, an empty
/// TSV cell as NaN) and name the file in every error.
pub struct Table {
    pub path: PathBuf,
    inner: EngineTable,
}

impl Table {
    pub fn read(path: &Path) -> Result<Table> {
        let inner = EngineTable::read(path).map_err(|e| AtlasError::input(path, e.to_string()))?;
        Ok(Table {
            path: path.to_path_buf(),
            inner,
        })
    }

    pub fn rows(&self) -> usize {
        self.inner.rows()
    }

    pub fn names(&self) -> Vec<&str> {
        self.inner.names()
    }

    pub fn has(&self, name: &str) -> bool {
        self.inner.get(name).is_ok()
    }

    fn err(&self, message: String) -> AtlasError {
        AtlasError::input(&self.path, message)
    }

    fn get(&self, name: &str) -> Result<&Column> {
        self.inner.get(name).map_err(|e| self.err(e.to_string()))
    }

    /// An integer column (TSV text parsed; floats with an integral value accepted).
    pub fn ints(&self, name: &str) -> Result<Vec<i64>> {
        match self.get(name)? {
            Column::F64(v) => v
                .iter()
                .enumerate()
                .map(|(row, &x)| {
                    if x.fract() == 0.0 && x.is_finite() {
                        Ok(x as i64)
                    } else {
                        Err(self.err(format!("column `{name}`, row {}: {x} is not an integer", row + 1)))
                    }
                })
                .collect(),
            _ => Ok(self
                .inner
                .i64s(name)
                .map_err(|e| self.err(e.to_string()))?
                .into_owned()),
        }
    }

    /// A float column (integers converted; TSV text parsed, `NaN`/`inf` and an empty cell as NaN).
    pub fn floats(&self, name: &str) -> Result<Vec<f64>> {
        match self.get(name)? {
            Column::Str(v) if v.iter().any(|s| s.trim().is_empty()) => v
                .iter()
                .enumerate()
                .map(|(row, s)| {
                    let s = s.trim();
                    if s.is_empty() {
                        return Ok(f64::NAN);
                    }
                    s.parse::<f64>().map_err(|_| {
                        self.err(format!("column `{name}`, row {}: `{s}` is not a number", row + 1))
                    })
                })
                .collect(),
            _ => Ok(self
                .inner
                .f64s(name)
                .map_err(|e| self.err(e.to_string()))?
                .into_owned()),
        }
    }

    /// A float column if present, else NaN in every row (optional statistics).
    pub fn floats_or_nan(&self, name: &str) -> Result<Vec<f64>> {
        if self.has(name) {
            self.floats(name)
        } else {
            Ok(vec![f64::NAN; self.rows()])
        }
    }

    /// A text column (numbers formatted).
    pub fn texts(&self, name: &str) -> Result<Vec<String>> {
        Ok(self
            .inner
            .strs(name)
            .map_err(|e| self.err(e.to_string()))?
            .into_owned())
    }

    /// Row `row` of every column as JSON (for tables shown as they are).
    pub fn row_json(&self, row: usize) -> Vec<Value> {
        let number = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
        self.inner
            .names()
            .into_iter()
            .filter_map(|name| self.inner.get(name).ok())
            .map(|c| match c {
                Column::I64(v) => Value::from(v[row]),
                Column::F64(v) => number(v[row]),
                // TSV text that reads as a number is shown as one.
                Column::Str(v) => match v[row].trim().parse::<f64>() {
                    Ok(x) if x.is_finite() => number(x),
                    _ => Value::from(v[row].as_str()),
                },
            })
            .collect()
    }
}

/// `dir/stem.parquet` or `dir/stem.tsv`, whichever exists (Parquet first).
pub fn find_table(dir: &Path, stem: &str) -> Option<PathBuf> {
    ["parquet", "tsv"]
        .iter()
        .map(|ext| dir.join(format!("{stem}.{ext}")))
        .find(|p| p.is_file())
}

fn need_table(dir: &Path, stem: &str, what: &str) -> Result<PathBuf> {
    find_table(dir, stem)
        .ok_or_else(|| AtlasError::input(dir, format!("no {stem}.parquet or {stem}.tsv; {what}")))
}

fn read_json(path: &Path, what: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AtlasError::input(path, format!("cannot read ({e}); {what}")))?;
    serde_json::from_str(&text).map_err(|e| AtlasError::input(path, format!("not valid JSON ({e})")))
}

fn u32_of(table: &Table, name: &str) -> Result<Vec<u32>> {
    table
        .ints(name)?
        .into_iter()
        .enumerate()
        .map(|(row, x)| {
            u32::try_from(x).map_err(|_| {
                table.err(format!(
                    "column `{name}`, row {}: {x} is not a feature index",
                    row + 1
                ))
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Catalogs (`scinterp analyze`)

/// Statistics of `features` shown per feature, in this order; absent columns read as NaN.
pub const FEATURE_STATS: [&str; 13] = [
    "fire_count",
    "fire_freq",
    "cells_fired",
    "mean_activation",
    "mean_when_active",
    "q50_when_active",
    "q90_when_active",
    "q99_when_active",
    "max_activation",
    "decoder_norm",
    "svd_max_abs_cos",
    "svd_projection",
    "module_size",
];

pub struct CatalogIn {
    pub dir: PathBuf,
    pub hook: String,
    pub d_sae: Option<usize>,
    pub summary: Value,
    /// Rows of `features`: index, alive, module (−1: none) and [`FEATURE_STATS`].
    pub feature: Vec<u32>,
    pub alive: Vec<bool>,
    pub module: Vec<i64>,
    pub stats: Vec<Vec<f64>>,
    pub top_genes: Vec<TopGene>,
    /// `feature_cells`: (feature, per-cell mean activation where it fired), when the table exists.
    pub cell_means: Option<(Vec<u32>, Vec<f64>)>,
    pub top_cells: Vec<TopCell>,
}

pub struct TopGene {
    pub feature: u32,
    /// 0: conditional_mean, 1: mass.
    pub ranking: u8,
    pub rank: u32,
    pub gene_id: String,
    pub symbol: String,
    pub token: i64,
    /// n_fired, n_positions, mean_when_fired, mass, fire_rate.
    pub values: [f64; 5],
}

pub struct TopCell {
    pub feature: u32,
    pub rank: u32,
    pub cell_id: String,
    pub n_active: f64,
    pub mean_when_active: f64,
}

pub fn read_catalog(dir: &Path) -> Result<CatalogIn> {
    let json_path = dir.join("catalog.json");
    let summary = read_json(&json_path, "is this a folder written by `scinterp analyze`?")?;
    if summary["format"].as_str() != Some("scinterp-catalog") {
        return Err(AtlasError::input(
            &json_path,
            format!(
                "format is {}, expected \"scinterp-catalog\" (a `scinterp analyze` folder)",
                summary["format"]
            ),
        ));
    }
    if summary["format_version"].as_u64().is_some_and(|v| v > 1) {
        return Err(AtlasError::input(
            &json_path,
            "catalog format_version is newer than this scinterp reads (1)",
        ));
    }
    let hook = summary["hook"]
        .as_str()
        .ok_or_else(|| AtlasError::input(&json_path, "no `hook`"))?
        .to_string();
    let d_sae = summary["d_sae"].as_u64().map(|d| d as usize);

    let features = Table::read(&need_table(dir, "features", "the catalog is incomplete")?)?;
    let feature = u32_of(&features, "feature")?;
    let alive = features.ints("alive")?.into_iter().map(|a| a != 0).collect();
    let module = if features.has("module") {
        features.ints("module")?
    } else {
        vec![-1; features.rows()]
    };
    let stats = FEATURE_STATS
        .iter()
        .map(|s| features.floats_or_nan(s))
        .collect::<Result<Vec<_>>>()?;
    if let (Some(d), Some(&max)) = (d_sae, feature.iter().max()) {
        if max as usize >= d {
            return Err(features.err(format!("feature {max} ≥ d_sae {d} of {}", json_path.display())));
        }
    }

    let tg = Table::read(&need_table(dir, "top_genes", "the catalog is incomplete")?)?;
    let t_feature = u32_of(&tg, "feature")?;
    let ranking = tg.texts("ranking")?;
    let rank = tg.ints("rank")?;
    let gene_id = if tg.has("gene_id") {
        tg.texts("gene_id")?
    } else {
        vec![String::new(); tg.rows()]
    };
    let symbol = if tg.has("symbol") {
        tg.texts("symbol")?
    } else {
        vec![String::new(); tg.rows()]
    };
    let token = if tg.has("token") {
        tg.ints("token")?
    } else {
        vec![-1; tg.rows()]
    };
    let vals = ["n_fired", "n_positions", "mean_when_fired", "mass", "fire_rate"]
        .iter()
        .map(|c| tg.floats_or_nan(c))
        .collect::<Result<Vec<_>>>()?;
    let mut top_genes = Vec::with_capacity(tg.rows());
    for i in 0..tg.rows() {
        let r = match ranking[i].as_str() {
            "conditional_mean" => 0,
            "mass" => 1,
            other => {
                return Err(tg.err(format!(
                    "column `ranking`, row {}: `{other}` (expected conditional_mean or mass)",
                    i + 1
                )))
            }
        };
        top_genes.push(TopGene {
            feature: t_feature[i],
            ranking: r,
            rank: rank[i].max(0) as u32,
            gene_id: gene_id[i].clone(),
            symbol: symbol[i].clone(),
            token: token[i],
            values: [vals[0][i], vals[1][i], vals[2][i], vals[3][i], vals[4][i]],
        });
    }

    let cell_means = match find_table(dir, "feature_cells") {
        Some(p) => {
            let t = Table::read(&p)?;
            Some((u32_of(&t, "feature")?, t.floats("mean_when_active")?))
        }
        None => None,
    };
    let top_cells = match find_table(dir, "top_cells") {
        Some(p) => {
            let t = Table::read(&p)?;
            let f = u32_of(&t, "feature")?;
            let rank = t.ints("rank")?;
            let id = if t.has("cell_id") {
                t.texts("cell_id")?
            } else {
                t.texts("cell")?
            };
            let n = t.floats_or_nan("n_active")?;
            let m = t.floats_or_nan("mean_when_active")?;
            (0..t.rows())
                .map(|i| TopCell {
                    feature: f[i],
                    rank: rank[i].max(0) as u32,
                    cell_id: id[i].clone(),
                    n_active: n[i],
                    mean_when_active: m[i],
                })
                .collect()
        }
        None => Vec::new(),
    };
    Ok(CatalogIn {
        dir: dir.to_path_buf(),
        hook,
        d_sae,
        summary,
        feature,
        alive,
        module,
        stats,
        top_genes,
        cell_means,
        top_cells,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Annotation (`scinterp annotate`)

pub struct AnnotationIn {
    pub dir: PathBuf,
    pub summary: Value,
    pub alpha: f64,
    /// The catalogs it annotated: (name used in its tables, hook, folder).
    pub catalogs: Vec<(String, String, PathBuf)>,
    pub terms: Vec<TermRow>,
    /// (catalog, feature, library, term) of each annotated feature's lowest-p term (`best_terms`).
    pub best: Vec<(String, u32, String, String)>,
    pub edge_tests: Vec<EdgeTestRow>,
    pub cell_types: Vec<CellTypeRow>,
}

pub struct TermRow {
    pub catalog: String,
    pub feature: u32,
    pub library: String,
    pub term: String,
    /// overlap, query_size, term_size, background_size, p_value, q_value_atlas, q_value_catalog,
    /// fold_enrichment.
    pub values: [f64; 8],
    pub overlap_genes: String,
}

pub struct EdgeTestRow {
    pub catalog: String,
    pub feature: u32,
    pub network: String,
    /// observed_edges, null_mean, p_value, q_value_atlas, q_value_catalog, permutations.
    pub values: [f64; 6],
    pub edges: String,
}

pub struct CellTypeRow {
    pub catalog: String,
    pub feature: u32,
    pub label: String,
    /// in_top, top_size, label_cells, n_cells, p_value, q_value.
    pub values: [f64; 6],
}

pub const TERM_VALUES: [&str; 8] = [
    "overlap",
    "query_size",
    "term_size",
    "background_size",
    "p_value",
    "q_value_atlas",
    "q_value_catalog",
    "fold_enrichment",
];
pub const EDGE_TEST_VALUES: [&str; 6] = [
    "observed_edges",
    "null_mean",
    "p_value",
    "q_value_atlas",
    "q_value_catalog",
    "permutations",
];
pub const CELL_TYPE_VALUES: [&str; 6] = [
    "in_top",
    "top_size",
    "label_cells",
    "n_cells",
    "p_value",
    "q_value",
];

fn values<const N: usize>(t: &Table, names: &[&str; N]) -> Result<Vec<[f64; N]>> {
    let cols = names
        .iter()
        .map(|c| t.floats_or_nan(c))
        .collect::<Result<Vec<_>>>()?;
    Ok((0..t.rows())
        .map(|i| std::array::from_fn(|k| cols[k][i]))
        .collect())
}

pub fn read_annotation(dir: &Path) -> Result<AnnotationIn> {
    let json_path = dir.join("annotate.json");
    let summary = read_json(&json_path, "is this a folder written by `scinterp annotate`?")?;
    if summary["format"].as_str() != Some("scinterp-annotation") {
        return Err(AtlasError::input(
            &json_path,
            format!(
                "format is {}, expected \"scinterp-annotation\"",
                summary["format"]
            ),
        ));
    }
    let alpha = summary["settings"]["alpha"].as_f64().unwrap_or(0.05);
    let catalogs = summary["catalogs"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let name = c["name"].as_str().unwrap_or_default().to_string();
                    let hook = c["hook"].as_str().unwrap_or(&name).to_string();
                    (name, hook, PathBuf::from(c["dir"].as_str().unwrap_or_default()))
                })
                .collect()
        })
        .unwrap_or_default();

    let t = Table::read(&need_table(dir, "enrichment", "the annotation is incomplete")?)?;
    let (cat, feat, lib, term) = (
        t.texts("catalog")?,
        u32_of(&t, "feature")?,
        t.texts("library")?,
        t.texts("term")?,
    );
    let genes = if t.has("overlap_genes") {
        t.texts("overlap_genes")?
    } else {
        vec![String::new(); t.rows()]
    };
    let terms = values(&t, &TERM_VALUES)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| TermRow {
            catalog: cat[i].clone(),
            feature: feat[i],
            library: lib[i].clone(),
            term: term[i].clone(),
            values: v,
            overlap_genes: genes[i].clone(),
        })
        .collect();

    let mut best = Vec::new();
    if let Some(p) = find_table(dir, "best_terms") {
        let t = Table::read(&p)?;
        let (cat, feat, lib, term) = (
            t.texts("catalog")?,
            u32_of(&t, "feature")?,
            t.texts("library")?,
            t.texts("term")?,
        );
        best = (0..t.rows())
            .map(|i| (cat[i].clone(), feat[i], lib[i].clone(), term[i].clone()))
            .collect();
    }
    let edge_tests = match find_table(dir, "edge_enrichment") {
        Some(p) => {
            let t = Table::read(&p)?;
            let (cat, feat, net) = (t.texts("catalog")?, u32_of(&t, "feature")?, t.texts("network")?);
            let edges = if t.has("edges") {
                t.texts("edges")?
            } else {
                vec![String::new(); t.rows()]
            };
            values(&t, &EDGE_TEST_VALUES)?
                .into_iter()
                .enumerate()
                .map(|(i, v)| EdgeTestRow {
                    catalog: cat[i].clone(),
                    feature: feat[i],
                    network: net[i].clone(),
                    values: v,
                    edges: edges[i].clone(),
                })
                .collect()
        }
        None => Vec::new(),
    };
    let cell_types = match find_table(dir, "cell_types") {
        Some(p) => {
            let t = Table::read(&p)?;
            let (cat, feat, label) = (t.texts("catalog")?, u32_of(&t, "feature")?, t.texts("label")?);
            values(&t, &CELL_TYPE_VALUES)?
                .into_iter()
                .enumerate()
                .map(|(i, v)| CellTypeRow {
                    catalog: cat[i].clone(),
                    feature: feat[i],
                    label: label[i].clone(),
                    values: v,
                })
                .collect()
        }
        None => Vec::new(),
    };
    Ok(AnnotationIn {
        dir: dir.to_path_buf(),
        summary,
        alpha,
        catalogs,
        terms,
        best,
        edge_tests,
        cell_types,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Edges (`scinterp trace`)

pub struct EdgesIn {
    pub path: PathBuf,
    pub summary: Option<Value>,
    /// Distinct hook names; edges refer to them by index.
    pub hooks: Vec<String>,
    pub source_hook: Vec<u16>,
    pub source: Vec<u32>,
    pub target_hook: Vec<u16>,
    pub target: Vec<u32>,
    /// n_cells, mean_change, cohens_d, sign_consistency, p, q.
    pub values: Vec<[f64; 6]>,
}

pub const EDGE_VALUES: [&str; 6] = ["n_cells", "mean_change", "cohens_d", "sign_consistency", "p", "q"];

fn intern(names: Vec<String>, hooks: &mut Vec<String>, index: &mut HashMap<String, u16>) -> Vec<u16> {
    names
        .into_iter()
        .map(|n| {
            *index.entry(n).or_insert_with_key(|n| {
                hooks.push(n.clone());
                (hooks.len() - 1) as u16
            })
        })
        .collect()
}

pub fn read_edges(path: &Path) -> Result<EdgesIn> {
    let t = Table::read(path)?;
    let (mut hooks, mut index) = (Vec::new(), HashMap::new());
    let source_hook = intern(t.texts("source_hook")?, &mut hooks, &mut index);
    let target_hook = intern(t.texts("target_hook")?, &mut hooks, &mut index);
    if hooks.len() > u16::MAX as usize {
        return Err(t.err("more than 65,535 distinct hooks".into()));
    }
    let summary_path = path.with_extension("summary.json");
    let summary = if summary_path.is_file() {
        Some(read_json(&summary_path, "")?)
    } else {
        None
    };
    Ok(EdgesIn {
        path: path.to_path_buf(),
        summary,
        hooks,
        source_hook,
        source: u32_of(&t, "source_feature")?,
        target_hook,
        target: u32_of(&t, "target_feature")?,
        values: values(&t, &EDGE_VALUES)?,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Effects (`scinterp effects`)

pub const EFFECT_VALUES: [&str; 15] = [
    "alpha",
    "n_cells",
    "target_logit_change",
    "other_logit_change",
    "target_minus_other",
    "target_minus_other_p",
    "target_minus_other_q",
    "specificity_ratio",
    "control_target_minus_other",
    "vs_control",
    "vs_control_p",
    "vs_control_q",
    "direction_change",
    "direction_change_p",
    "control_direction_change",
];

pub struct EffectsIn {
    pub path: PathBuf,
    pub hook: Vec<String>,
    pub feature: Vec<u32>,
    pub values: Vec<[f64; 15]>,
}

pub fn read_effects(path: &Path) -> Result<EffectsIn> {
    let t = Table::read(path)?;
    Ok(EffectsIn {
        path: path.to_path_buf(),
        hook: t.texts("source_hook")?,
        feature: u32_of(&t, "feature")?,
        values: values(&t, &EFFECT_VALUES)?,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Cross-layer comparison (`scinterp layers`)

pub struct LayersIn {
    pub dir: PathBuf,
    pub summary: Value,
    /// (from_hook, to_hook, feature, best_match, abs_cos).
    pub matches: Vec<(String, String, u32, u32, f64)>,
    /// (from_hook, to_hook, source, best_target, [source_fires, cocount, pmi, npmi, pmi_permuted_pairing,
    /// highway]).
    pub highways: Vec<(String, String, u32, u32, [f64; 6])>,
    /// (hook, feature, lifespan_layers).
    pub lifespans: Vec<(String, u32, f64)>,
}

pub fn read_layers(dir: &Path) -> Result<LayersIn> {
    let summary = read_json(
        &dir.join("layers.json"),
        "is this a folder written by `scinterp layers`?",
    )?;
    let mut matches = Vec::new();
    if let Some(p) = find_table(dir, "matches") {
        let t = Table::read(&p)?;
        let (a, b, f, m, c) = (
            t.texts("from_hook")?,
            t.texts("to_hook")?,
            u32_of(&t, "feature")?,
            u32_of(&t, "best_match")?,
            t.floats("abs_cos")?,
        );
        matches = (0..t.rows())
            .map(|i| (a[i].clone(), b[i].clone(), f[i], m[i], c[i]))
            .collect();
    }
    let mut highways = Vec::new();
    if let Some(p) = find_table(dir, "highways") {
        let t = Table::read(&p)?;
        let (a, b, s, d) = (
            t.texts("from_hook")?,
            t.texts("to_hook")?,
            u32_of(&t, "source")?,
            u32_of(&t, "best_target")?,
        );
        let v = values(
            &t,
            &[
                "source_fires",
                "cocount",
                "pmi",
                "npmi",
                "pmi_permuted_pairing",
                "highway",
            ],
        )?;
        highways = (0..t.rows())
            .map(|i| (a[i].clone(), b[i].clone(), s[i], d[i], v[i]))
            .collect();
    }
    let mut lifespans = Vec::new();
    if let Some(p) = find_table(dir, "lifespans") {
        let t = Table::read(&p)?;
        let (h, f, n) = (
            t.texts("hook")?,
            u32_of(&t, "feature")?,
            t.floats("lifespan_layers")?,
        );
        lifespans = (0..t.rows()).map(|i| (h[i].clone(), f[i], n[i])).collect();
    }
    Ok(LayersIn {
        dir: dir.to_path_buf(),
        summary,
        matches,
        highways,
        lifespans,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Consensus tables and tool cards: formats of later commands, shown as they are.

pub struct GenericTable {
    pub path: PathBuf,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// `<stem>.summary.json` or `<stem>.json` beside the table, if any.
    pub summary: Option<Value>,
}

pub fn read_generic_table(path: &Path) -> Result<GenericTable> {
    let t = Table::read(path)?;
    let columns = t.names().iter().map(|s| s.to_string()).collect();
    let rows = (0..t.rows()).map(|r| t.row_json(r)).collect();
    let summary = [path.with_extension("summary.json"), path.with_extension("json")]
        .into_iter()
        .find(|p| p.is_file())
        .map(|p| read_json(&p, ""))
        .transpose()?;
    Ok(GenericTable {
        path: path.to_path_buf(),
        columns,
        rows,
        summary,
    })
}

/// Every JSON object card in `path` (a card file, or a folder searched two levels deep), with its path.
pub fn read_tool_cards(path: &Path) -> Result<Vec<(PathBuf, Value)>> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| AtlasError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() && depth > 0 {
                walk(&p, depth - 1, out)?;
            } else if p.extension().is_some_and(|e| e == "json") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    if path.is_dir() {
        walk(path, 2, &mut files)?;
    } else if path.is_file() {
        files.push(path.to_path_buf());
    } else {
        return Err(AtlasError::input(path, "--tools: no such file or folder"));
    }
    let mut cards = Vec::new();
    for f in files {
        let v = read_json(&f, "")?;
        if v.is_object() {
            cards.push((f, v));
        }
    }
    if cards.is_empty() {
        return Err(AtlasError::input(path, "--tools: no JSON tool card found"));
    }
    Ok(cards)
}
