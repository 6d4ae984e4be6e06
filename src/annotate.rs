//! `scinterp annotate`: gene-set, TRRUST/PPI edge and cell-type enrichment of feature catalogs, with
//! BH over every test. Arguments → [`AnnotateConfig`] → [`scinterp_engine::annotate::run`] → the
//! summary (`annotate.json`), printed.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use scinterp_engine::annotate::{AnnotateConfig, Ranking};
use scinterp_engine::formats::TableFormat;
use scinterp_export::steps;

use crate::args::print_json;
use crate::progress::Bars;

#[derive(Args, Debug)]
pub struct AnnotateArgs {
    /// Feature catalog folders (comma list), as written by `scinterp analyze`. Catalogs given together
    /// (e.g. one per layer) share one BH family (atlas q); each catalog's own q is reported too.
    #[arg(long, value_delimiter = ',', required = true)]
    catalog: Vec<PathBuf>,
    /// Gene-set libraries (comma list of GMT files, MSigDB or Enrichr style); a library is named after
    /// its file's stem. Genes match the catalog's gene ids or symbols, ignoring case.
    #[arg(long, value_delimiter = ',')]
    gene_sets: Vec<PathBuf>,
    /// TRRUST file (TF, target, mode, PMIDs; header line optional): TF target sets as the library
    /// TRRUST_TF_targets, and the directed TF → target edge test TRRUST_edges.
    #[arg(long)]
    trrust: Option<PathBuf>,
    /// Undirected gene–gene edge list (2+ columns, optional header, optional 3rd column of scores): the
    /// edge test PPI_edges.
    #[arg(long)]
    ppi: Option<PathBuf>,
    /// Keep PPI edges whose score (3rd column) is at least this (e.g. 700 for STRING combined scores).
    #[arg(long)]
    ppi_min_score: Option<f64>,
    /// Cell-type enrichment by this column of the token store's cells.tsv.
    #[arg(long)]
    obs_column: Option<String>,
    /// Output folder (created): enrichment, best_terms, edge_enrichment, cell_types tables and
    /// annotate.json.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "parquet")]
    format: TableFormat,
    /// Smallest term tested (genes in the background).
    #[arg(long, default_value_t = AnnotateConfig::MIN_TERM_SIZE)]
    min_term_size: usize,
    /// Largest term tested (genes in the background).
    #[arg(long, default_value_t = AnnotateConfig::MAX_TERM_SIZE)]
    max_term_size: usize,
    /// Top genes per feature used as its query.
    #[arg(long, default_value_t = AnnotateConfig::TOP_N)]
    top_n: usize,
    /// Which top-gene ranking of the catalog to use.
    #[arg(long, value_enum, default_value = "conditional_mean")]
    ranking: Ranking,
    /// Permutations of the degree-preserving null per edge test.
    #[arg(long, default_value_t = AnnotateConfig::PERMUTATIONS)]
    permutations: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// FDR level: rows with q ≤ alpha (atlas or catalog q) are written.
    #[arg(long, default_value_t = AnnotateConfig::ALPHA)]
    alpha: f64,
    /// Replace an existing --out folder (only once the new annotation is complete).
    #[arg(long)]
    overwrite: bool,
}

impl AnnotateArgs {
    fn config(&self) -> AnnotateConfig {
        AnnotateConfig {
            catalog: self.catalog.clone(),
            gene_sets: self.gene_sets.clone(),
            trrust: self.trrust.clone(),
            ppi: self.ppi.clone(),
            ppi_min_score: self.ppi_min_score,
            obs_column: self.obs_column.clone(),
            out: self.out.clone(),
            format: self.format,
            min_term_size: self.min_term_size,
            max_term_size: self.max_term_size,
            top_n: self.top_n,
            ranking: self.ranking,
            permutations: self.permutations,
            seed: self.seed,
            alpha: self.alpha,
            overwrite: self.overwrite,
        }
    }
}

pub fn run(args: AnnotateArgs, json: bool) -> Result<()> {
    let summary = steps::annotate(&args.config(), &mut Bars::default())?;
    print_json(json, &summary)?;
    Ok(())
}
