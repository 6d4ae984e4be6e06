//! `scinterp analyze`: arguments → [`AnalyzeConfig`] → [`scinterp_engine::analyze::run`] → the
//! catalog summary, printed. The catalog folder is what `scinterp annotate` and `scinterp layers` read.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use scinterp_engine::analyze::AnalyzeConfig;
use scinterp_engine::formats::TableFormat;

use scinterp_export::steps;

use crate::args::print_json;
use crate::progress::Bars;

#[derive(Args, Debug, Clone)]
pub struct AnalyzeArgs {
    /// Activation store (from `scinterp extract`).
    #[arg(long)]
    pub(crate) acts: PathBuf,
    /// SAE folder (SAELens layout) trained on one of the store's hooks.
    #[arg(long)]
    pub(crate) sae: PathBuf,
    /// Hook of the store (default: the SAE's hook_name).
    #[arg(long)]
    pub(crate) hook: Option<String>,
    /// Catalog folder to write.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Gene names for the tokens: a Geneformer dictionary folder (token and gene-name pickles), an
    /// scGPT vocab.json, or a TSV with columns token, gene_id, symbol. Without it genes are named
    /// `token_<id>` and cannot be annotated.
    #[arg(long)]
    pub(crate) genes: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "parquet")]
    pub(crate) format: TableFormat,
    /// Genes listed per feature and ranking (at least 1).
    #[arg(long, default_value_t = AnalyzeConfig::TOP_GENES)]
    pub(crate) top_genes: usize,
    /// Positions a feature must fire on a gene before the gene can rank by conditional mean.
    #[arg(long, default_value_t = AnalyzeConfig::MIN_SUPPORT)]
    pub(crate) min_support: u64,
    /// Cells listed per feature.
    #[arg(long, default_value_t = AnalyzeConfig::TOP_CELLS)]
    pub(crate) top_cells: usize,
    /// Principal axes compared with the decoder directions.
    #[arg(long, default_value_t = AnalyzeConfig::SVD_AXES)]
    pub(crate) svd_axes: usize,
    /// Rows sampled (seeded) for the principal axes.
    #[arg(long, default_value_t = AnalyzeConfig::SVD_SAMPLE_ROWS)]
    pub(crate) svd_sample_rows: usize,
    /// Skip co-activation and modules (they need 3·d_sae²·8 bytes).
    #[arg(long)]
    pub(crate) no_coactivation: bool,
    /// BH level of the co-activation test.
    #[arg(long, default_value_t = AnalyzeConfig::COACT_ALPHA)]
    pub(crate) coact_alpha: f64,
    /// Minimum co-activated positions of an edge.
    #[arg(long, default_value_t = AnalyzeConfig::COACT_MIN_COCOUNT)]
    pub(crate) coact_min_cocount: u64,
    /// Minimum PMI (log2) of an edge.
    #[arg(long, default_value_t = AnalyzeConfig::COACT_MIN_PMI)]
    pub(crate) coact_min_pmi: f64,
    /// Leiden resolution (RB configuration; 1 is modularity).
    #[arg(long, default_value_t = AnalyzeConfig::LEIDEN_RESOLUTION)]
    pub(crate) leiden_resolution: f64,
    /// Smallest module reported.
    #[arg(long, default_value_t = AnalyzeConfig::MIN_MODULE_SIZE)]
    pub(crate) min_module_size: usize,
    /// Rows encoded at a time (rounded up to whole cells).
    #[arg(long, default_value_t = AnalyzeConfig::CHUNK_ROWS)]
    pub(crate) chunk_rows: usize,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Replace an existing catalog folder.
    #[arg(long)]
    pub(crate) overwrite: bool,
}

pub fn run(args: AnalyzeArgs, json: bool) -> Result<()> {
    let summary = steps::analyze(&args.config(), args.genes.as_deref(), &mut Bars::default())?;
    print_json(json, &summary)?;
    Ok(())
}

impl AnalyzeArgs {
    fn config(&self) -> AnalyzeConfig {
        AnalyzeConfig {
            acts: self.acts.clone(),
            sae: self.sae.clone(),
            hook: self.hook.clone(),
            out: self.out.clone(),
            format: self.format,
            top_genes: self.top_genes,
            min_support: self.min_support,
            top_cells: self.top_cells,
            svd_axes: self.svd_axes,
            svd_sample_rows: self.svd_sample_rows,
            coactivation: !self.no_coactivation,
            coact_alpha: self.coact_alpha,
            coact_min_cocount: self.coact_min_cocount,
            coact_min_pmi: self.coact_min_pmi,
            leiden_resolution: self.leiden_resolution,
            min_module_size: self.min_module_size,
            chunk_rows: self.chunk_rows,
            seed: self.seed,
            overwrite: self.overwrite,
        }
    }
}
