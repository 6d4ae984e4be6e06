//! `catalog.json`: the summary of a feature catalog folder written by `scinterp analyze` and read by
//! `scinterp annotate` (where the tables are, which hook) and by anyone summarising a run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TableFormat;

pub const CATALOG_FILE: &str = "catalog.json";
pub const CATALOG_FORMAT: &str = "scinterp-catalog";
pub const CATALOG_FORMAT_VERSION: u32 = 1;

/// The content of `catalog.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CatalogSummary {
    pub format: String,
    pub format_version: u32,
    pub hook: String,
    /// The SAE folder (absolute).
    pub sae: String,
    /// The activation store (absolute).
    pub acts: String,
    /// The token store the activation store was extracted from, when its manifest names one.
    #[serde(default)]
    pub token_store: Option<String>,
    #[serde(default = "parquet")]
    pub table_format: TableFormat,
    /// Where the gene names came from (`--genes`), if given.
    #[serde(default)]
    pub gene_names: Option<String>,
    pub n_rows: u64,
    pub n_cells: u64,
    pub n_genes: usize,
    pub d_in: usize,
    pub d_sae: usize,
    pub k: usize,
    pub alive: usize,
    pub dead: usize,
    pub alive_rule: String,
    pub settings: CatalogSettingsRecord,
    pub reconstruction: Reconstruction,
    pub svd: SvdSummary,
    /// Absent with `--no-coactivation`.
    #[serde(default)]
    pub coactivation: Option<CoactivationSummary>,
    #[serde(default)]
    pub modules: Option<ModulesSummary>,
    pub seconds: f64,
    pub scinterp_version: String,
}

fn parquet() -> TableFormat {
    TableFormat::Parquet
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CatalogSettingsRecord {
    pub top_genes: usize,
    pub min_support_positions: u64,
    pub top_cells: usize,
    pub quantiles: String,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reconstruction {
    /// Fraction of variance unexplained over every row of the store.
    pub fvu_all_rows: f64,
    pub variance_explained_all_rows: f64,
    /// The SAE's held-out FVU at training (from its cfg.json), when recorded.
    pub fvu_heldout_cells_at_training: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SvdSummary {
    pub axes: usize,
    pub sample_rows: usize,
    pub sample_rule: String,
    /// Variance of the sampled rows explained by the principal axes.
    pub variance_explained: f64,
    pub sae_variance_explained_all_rows: f64,
    pub aligned_max_abs_cos_gt_0_5: usize,
    pub aligned_max_abs_cos_gt_0_7: usize,
    pub projection_null_q99: f64,
    pub projection_null: String,
    pub projection_above_null_q99: usize,
    /// Alive features whose projected-norm fraction ‖P·w‖² onto the axes is at least each threshold
    /// (`"0.25"`, `"0.5"`, `"0.75"`, `"0.9"`).
    #[serde(default)]
    pub projected_norm_sq_at_least: BTreeMap<String, usize>,
    /// Alive features with max |cos| ≤ 0.5 with every axis: the published "SVD-invisible" ("novel")
    /// count, and its fraction of the alive features.
    #[serde(default)]
    pub invisible_published_rule: usize,
    #[serde(default)]
    pub invisible_published_rule_fraction: f64,
    /// The comparison at matched L0: the SAE's mean active latents per row over the store, the rank
    /// r = max(1, round(mean L0)), and the variance of the sample on the top r axes (a linear code of
    /// as many numbers per row as the SAE's active latents), beside `sae_variance_explained_all_rows`.
    #[serde(default)]
    pub sae_mean_l0: f64,
    #[serde(default)]
    pub matched_rank: usize,
    #[serde(default)]
    pub svd_variance_explained_at_matched_rank: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CoactivationSummary {
    pub test: String,
    pub family: String,
    pub tests: u64,
    pub significant_at_alpha: u64,
    pub edges: usize,
    pub rule: CoactivationRuleRecord,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CoactivationRuleRecord {
    pub alpha: f64,
    pub min_cocount: u64,
    pub min_pmi: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModulesSummary {
    pub algorithm: String,
    pub resolution: f64,
    pub seed: u64,
    pub min_size: usize,
    pub count: usize,
    pub sizes: Vec<usize>,
    pub features_in_modules: usize,
    pub coverage_of_alive: f64,
    pub quality: f64,
}

/// A catalog folder that cannot be read; messages name the file and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("--catalog {}: cannot read catalog.json; is it a feature catalog folder made by `scinterp analyze`?: {io}", dir.display())]
    Missing { dir: PathBuf, io: std::io::Error },
    #[error("{}: not valid JSON: {reason}", path.display())]
    Json { path: PathBuf, reason: String },
    #[error("{}: format is {found}, expected \"scinterp-catalog\"; is this a catalog made by `scinterp analyze`?", path.display())]
    NotACatalog { path: PathBuf, found: String },
    #[error("{}: catalog format_version {found} is newer than this scinterp reads (1); update scinterp", path.display())]
    TooNew { path: PathBuf, found: String },
    #[error("{}: {reason}", path.display())]
    Shape { path: PathBuf, reason: String },
}

/// What a reader of a catalog folder needs from `catalog.json` (the rest of [`CatalogSummary`] is
/// reporting; hand-written catalogs may hold only these fields).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct CatalogHeader {
    pub format: String,
    pub format_version: u32,
    pub hook: String,
    #[serde(default)]
    pub token_store: Option<String>,
    #[serde(default = "parquet")]
    pub table_format: TableFormat,
    /// Absent in hand-written catalogs.
    #[serde(default)]
    pub settings: Option<HeaderSettings>,
}

/// The settings a reader needs: top-gene lists need this many positions of a gene.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct HeaderSettings {
    #[serde(default)]
    pub min_support_positions: u64,
}

impl CatalogHeader {
    /// Reads `dir/catalog.json`, checking its format and version before its fields.
    pub fn read(dir: &Path) -> Result<CatalogHeader, CatalogError> {
        let path = dir.join(CATALOG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|io| CatalogError::Missing {
            dir: dir.to_path_buf(),
            io,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| CatalogError::Json {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if v["format"].as_str() != Some(CATALOG_FORMAT) {
            return Err(CatalogError::NotACatalog {
                path,
                found: v["format"].to_string(),
            });
        }
        if v["format_version"]
            .as_u64()
            .is_some_and(|n| n > u64::from(CATALOG_FORMAT_VERSION))
        {
            return Err(CatalogError::TooNew {
                path,
                found: v["format_version"].to_string(),
            });
        }
        match v.get("table_format").and_then(|t| t.as_str()) {
            None | Some("parquet" | "tsv") => {}
            Some(other) => {
                return Err(CatalogError::Shape {
                    path,
                    reason: format!("table_format `{other}`, expected parquet or tsv"),
                })
            }
        }
        serde_json::from_value(v).map_err(|e| CatalogError::Shape {
            path,
            reason: format!("not a catalog header this scinterp reads: {e}"),
        })
    }

    /// The token store, resolved against the catalog folder when relative.
    pub fn token_store_path(&self, dir: &Path) -> Option<PathBuf> {
        self.token_store.as_deref().map(|s| {
            let p = PathBuf::from(s);
            if p.is_absolute() {
                p
            } else {
                dir.join(p)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_headers_and_refuses_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| std::fs::write(dir.path().join(CATALOG_FILE), text).unwrap();
        let err = CatalogHeader::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("scinterp analyze"), "{err}");
        write(r#"{"format":"scinterp-catalog","format_version":1,"hook":"h","token_store":"ts"}"#);
        let h = CatalogHeader::read(dir.path()).unwrap();
        assert_eq!((h.hook.as_str(), h.table_format), ("h", TableFormat::Parquet));
        assert_eq!(h.token_store_path(dir.path()), Some(dir.path().join("ts")));
        write(r#"{"format":"other","format_version":1,"hook":"h"}"#);
        let err = CatalogHeader::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("expected \"scinterp-catalog\""), "{err}");
        write(r#"{"format":"scinterp-catalog","format_version":2,"hook":"h"}"#);
        let err = CatalogHeader::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
        write(r#"{"format":"scinterp-catalog","format_version":1,"hook":"h","table_format":"csv"}"#);
        let err = CatalogHeader::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("table_format `csv`"), "{err}");
    }
}
