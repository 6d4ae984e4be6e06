//! `annotate.json`: the summary of an annotation run (`scinterp annotate`), written with sorted keys and
//! a final newline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const ANNOTATION_FORMAT: &str = "scinterp-annotation";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnotationSummary {
    pub format: String,
    pub format_version: u32,
    pub inputs: AnnotationInputs,
    pub settings: AnnotationSettings,
    pub families: Families,
    /// The rule that makes a feature annotated.
    pub annotated: String,
    pub catalogs: Vec<CatalogAnnotation>,
    /// Files written in the output folder.
    pub outputs: Vec<String>,
    pub seconds: AnnotationSeconds,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnotationInputs {
    pub catalogs: Vec<NamedDir>,
    pub gene_sets: Vec<GeneSetInput>,
    pub trrust: Option<String>,
    pub ppi: Option<String>,
    pub ppi_min_score: Option<f64>,
    pub obs_column: Option<String>,
    pub networks: Vec<NetworkInput>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedDir {
    pub name: String,
    pub dir: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneSetInput {
    pub library: String,
    pub path: String,
    pub terms_in_file: usize,
    pub genes_in_file: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkInput {
    pub network: String,
    pub path: String,
    pub directed: bool,
    pub edges_in_file: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnotationSettings {
    pub ranking: String,
    pub top_n: usize,
    pub min_query_genes: usize,
    pub min_term_size: usize,
    pub max_term_size: usize,
    pub permutations: usize,
    pub seed: u64,
    pub alpha: f64,
    pub edge_null: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Families {
    /// Every (feature, term) Fisher test (q_family = gene_sets).
    pub gene_sets: GeneSetFamily,
    /// Every (feature, network) edge permutation test, a family of its own (q_family = network_edges);
    /// None without networks.
    pub network_edges: Option<EdgeFamily>,
    /// With an obs column only.
    pub cell_types: Option<CellTypeFamily>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneSetFamily {
    pub rule: String,
    pub libraries: Vec<String>,
    pub m: u64,
    pub tests_with_computed_p: u64,
    pub significant_atlas_q: u64,
    pub significant_atlas_q_by_library: BTreeMap<String, u64>,
    /// None when nothing is significant.
    pub largest_significant_p: Option<f64>,
    pub m_per_catalog: Vec<CatalogM>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeFamily {
    pub rule: String,
    pub networks: Vec<String>,
    pub m: u64,
    pub tests_with_computed_p: u64,
    pub significant_atlas_q: u64,
    /// None when nothing is significant.
    pub largest_significant_p: Option<f64>,
    pub m_per_catalog: Vec<CatalogM>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogM {
    pub name: String,
    pub m: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellTypeFamily {
    pub rule: String,
    pub obs_column: Option<String>,
    pub m: u64,
    pub tests_with_computed_p: u64,
    pub significant: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogAnnotation {
    pub name: String,
    pub hook: String,
    pub dir: String,
    pub token_store: Option<String>,
    pub background_genes: usize,
    /// Genes of the catalog's genes table enter the background with at least this many positions.
    pub background_min_positions: u64,
    pub alive_features: usize,
    pub tested_features: usize,
    /// The catalog's gene-set family size, and its network-edge family size.
    pub m: u64,
    pub m_network_edges: u64,
    pub significant_catalog_q: u64,
    pub significant_atlas_q: u64,
    pub annotated_features: usize,
    pub annotated_fraction: f64,
    pub annotated_features_catalog_q: usize,
    pub annotated_fraction_catalog_q: f64,
    pub libraries: Vec<LibraryAnnotation>,
    pub networks: Vec<NetworkAnnotation>,
    pub cell_types: Option<CellTypeCounts>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LibraryAnnotation {
    pub library: String,
    pub universe_in_background: usize,
    pub terms_tested: usize,
    pub terms_below_min_size: usize,
    pub terms_above_max_size: usize,
    pub pairs_with_overlap: u64,
    pub significant_atlas_q: u64,
    pub significant_catalog_q: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkAnnotation {
    pub network: String,
    pub edges_in_background: usize,
    pub genes_with_edges: usize,
    pub features_with_edges: u64,
    pub significant_atlas_q: u64,
    pub significant_catalog_q: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellTypeCounts {
    pub features_tested: usize,
    pub labels_tested: usize,
    pub significant: u64,
    pub features_enriched: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnotationSeconds {
    pub read: f64,
    pub tests: f64,
    pub total: f64,
}

/// One row of an annotation's term table (`enrichment` or `best_terms`, Parquet or TSV), as other
/// commands read it: a feature of a catalog (catalog names are hooks, or `<folder>:<hook>` when two
/// catalogs of one run share a hook) enriched for a term of a library.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureTermRow {
    pub catalog: String,
    pub feature: i64,
    pub library: String,
    pub term: String,
    pub p_value: f64,
    pub q_value_atlas: f64,
    pub q_value_catalog: f64,
    pub fold_enrichment: f64,
}

/// The library name under which cell-type enrichments (`cell_types` table) join the term rows.
pub const CELL_TYPES_LIBRARY: &str = "cell_types";

/// Reads an annotation's `cell_types` table (`.parquet` or `.tsv`) as term rows: library
/// [`CELL_TYPES_LIBRARY`], term = the label, both q columns = the table's q (one BH family over every
/// catalog of the run), fold enrichment = (in_top / top_size) / (label_cells / n_cells).
pub fn read_cell_type_terms(path: &std::path::Path) -> Result<Vec<FeatureTermRow>, super::TableError> {
    let t = super::Table::read(path)?;
    let (catalog, feature, label) = (t.strs("catalog")?, t.i64s("feature")?, t.strs("label")?);
    let (in_top, top_size) = (t.i64s("in_top")?, t.i64s("top_size")?);
    let (label_cells, n_cells) = (t.i64s("label_cells")?, t.i64s("n_cells")?);
    let (p, q) = (t.f64s("p_value")?, t.f64s("q_value")?);
    Ok((0..t.rows())
        .map(|r| FeatureTermRow {
            catalog: catalog[r].clone(),
            feature: feature[r],
            library: CELL_TYPES_LIBRARY.to_string(),
            term: label[r].clone(),
            p_value: p[r],
            q_value_atlas: q[r],
            q_value_catalog: q[r],
            fold_enrichment: (in_top[r] as f64 / top_size[r].max(1) as f64)
                / (label_cells[r] as f64 / n_cells[r].max(1) as f64),
        })
        .collect())
}

/// Reads an annotation term table (`.parquet` or `.tsv`); a missing column or a bad value is an error
/// that names the file.
pub fn read_feature_terms(path: &std::path::Path) -> Result<Vec<FeatureTermRow>, super::TableError> {
    let t = super::Table::read(path)?;
    let (catalog, feature) = (t.strs("catalog")?, t.i64s("feature")?);
    let (library, term) = (t.strs("library")?, t.strs("term")?);
    let (p, qa, qc) = (
        t.f64s("p_value")?,
        t.f64s("q_value_atlas")?,
        t.f64s("q_value_catalog")?,
    );
    let fe = t.f64s("fold_enrichment")?;
    Ok((0..t.rows())
        .map(|r| FeatureTermRow {
            catalog: catalog[r].clone(),
            feature: feature[r],
            library: library[r].clone(),
            term: term[r].clone(),
            p_value: p[r],
            q_value_atlas: qa[r],
            q_value_catalog: qc[r],
            fold_enrichment: fe[r],
        })
        .collect())
}
