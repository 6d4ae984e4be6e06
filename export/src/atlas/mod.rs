//! The static web atlas: [`build`] turns the outputs of `scinterp analyze`, `annotate`, `trace`, `layers`
//! and `effects` into a self-contained site (hand-written HTML/CSS/JS from `export/atlas/`, embedded here,
//! plus data files) that works from `file://` with no network and no server; [`serve`] serves a built site
//! on 127.0.0.1.
//!
//! Site layout: `index.html`, `assets/` (the page's script and style), `data/atlas.js` (the manifest: layers,
//! counts, libraries, definitions of the files), `data/genes.js` and `data/terms.js` (dictionaries),
//! `data/L<i>/features.js` (one row per feature of layer i, column-wise), `data/L<i>/d<k>.js` (everything
//! about features `k·shard … (k+1)·shard − 1`), `data/gidx/<k>.js` and `data/tidx/<k>.js` (gene → features
//! and term → features, sharded by index), `data/extra.js` (consensus tables and tool cards).

mod build;
mod encode;
mod error;
pub mod input;
mod serve;

use std::path::PathBuf;

pub use build::build;
pub use encode::{dequantise_top_cell_means, read_script, records, script};
pub use error::{AtlasError, Result};
pub use serve::{serve, ServeHandle};

/// What to build from. Every list may name several files or folders (e.g. one catalog per layer).
#[derive(Clone, Debug, Default)]
pub struct AtlasConfig {
    /// Catalog folders of `scinterp analyze` (at least one, or edges).
    pub catalogs: Vec<PathBuf>,
    /// Output folders of `scinterp annotate`.
    pub annotations: Vec<PathBuf>,
    /// Edge tables of `scinterp trace` (`.parquet` / `.tsv`, with `.summary.json` beside).
    pub edges: Vec<PathBuf>,
    /// Tables of `scinterp effects`.
    pub effects: Vec<PathBuf>,
    /// Output folders of `scinterp layers`.
    pub layers: Vec<PathBuf>,
    /// Consensus tables (shown column by column as they are).
    pub consensus: Vec<PathBuf>,
    /// Tool cards (JSON) or folders of them.
    pub tools: Vec<PathBuf>,
    /// The site folder.
    pub out: PathBuf,
    /// Shown in the page header.
    pub title: Option<String>,
    /// Replace an existing atlas at `out`.
    pub overwrite: bool,
    /// Features per detail file (default 64).
    pub shard_features: usize,
}

/// What [`build`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AtlasReport {
    pub out: PathBuf,
    /// The page to open (`index.html`).
    pub index: PathBuf,
    pub layers: usize,
    /// Features with a catalog row, over all layers.
    pub features: usize,
    pub alive: usize,
    /// Alive features with a term or edge test at q_value_atlas ≤ alpha.
    pub annotated: usize,
    pub genes: usize,
    pub terms: usize,
    pub edges: usize,
    pub files: usize,
    pub bytes: u64,
    /// Bytes of the data files by kind (manifest, features, details, genes, terms, extra).
    pub bytes_by_kind: std::collections::BTreeMap<String, u64>,
    pub seconds: f64,
}

/// The site's hand-written assets (path in the site, contents).
pub const ASSETS: [(&str, &str); 3] = [
    ("index.html", include_str!("../../atlas/index.html")),
    ("assets/atlas.css", include_str!("../../atlas/atlas.css")),
    ("assets/atlas.js", include_str!("../../atlas/atlas.js")),
];
