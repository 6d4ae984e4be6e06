//! `scinterp tokenize`: real cells in (.h5ad, 10x MatrixMarket folder, .loom), a token store out, for
//! Geneformer (V1/V2 rank value encoding) or scGPT (binned values). The pipeline is
//! `scinterp_models::tokenize::pipeline`; this is its arguments, progress bars and printing.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use scinterp_export::steps;
use scinterp_models::registry;
use scinterp_models::tokenize::geneformer::GeneIdKind;
use scinterp_models::tokenize::pipeline::{self, Config};

use crate::args::print_json;
use crate::progress::Bars;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TokenizerKind {
    /// Geneformer V2 (104M, 316M): rank value encoding, `<cls>` … `<eos>`, 4,096 tokens.
    GeneformerV2,
    /// Geneformer V1 (10M, 12L): rank value encoding, no special tokens, 2,048 tokens.
    GeneformerV1,
    /// scGPT whole-human: gene symbols, per-cell binned values, `<cls>` first, 1,200 tokens.
    Scgpt,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GeneIds {
    /// Ensembl gene ids.
    Ensembl,
    /// Gene symbols (mapped to Ensembl ids through the model's dictionary).
    Symbol,
}

impl From<TokenizerKind> for registry::TokenizerKind {
    fn from(k: TokenizerKind) -> Self {
        match k {
            TokenizerKind::GeneformerV2 => registry::TokenizerKind::GeneformerV2,
            TokenizerKind::GeneformerV1 => registry::TokenizerKind::GeneformerV1,
            TokenizerKind::Scgpt => registry::TokenizerKind::Scgpt,
        }
    }
}

impl From<GeneIds> for GeneIdKind {
    fn from(g: GeneIds) -> Self {
        match g {
            GeneIds::Ensembl => GeneIdKind::Ensembl,
            GeneIds::Symbol => GeneIdKind::Symbol,
        }
    }
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Cells: an .h5ad file, a .loom file, or a 10x MatrixMarket folder (matrix.mtx[.gz],
    /// features.tsv[.gz] or genes.tsv, barcodes.tsv[.gz]). Raw counts, all genes (no feature selection).
    #[arg(long)]
    input: PathBuf,
    /// Which model's tokenizer.
    #[arg(long = "model-kind", alias = "model", value_enum)]
    model: TokenizerKind,
    /// Geneformer: folder with the dictionary pickles (token, median, gene name, Ensembl mapping).
    #[arg(long, required_if_eq_any = [("model", "geneformer-v2"), ("model", "geneformer-v1")])]
    dictionaries: Option<PathBuf>,
    /// scGPT: the model folder holding vocab.json (and args.json, read when present).
    #[arg(long, required_if_eq("model", "scgpt"))]
    vocab: Option<PathBuf>,
    /// Geneformer: whether the gene ids are Ensembl ids or symbols. For a 10x folder this also picks
    /// the column of features.tsv (scGPT always reads symbols).
    #[arg(long, value_enum, default_value = "ensembl")]
    gene_ids: GeneIds,
    /// h5ad: the var column holding the gene ids (default: the var index); loom: the row attribute
    /// (default: ensembl_id, Accession or Gene).
    #[arg(long)]
    gene_id_column: Option<String>,
    /// h5ad: read the counts from `layers/<NAME>` instead of X.
    #[arg(long)]
    layer: Option<String>,
    /// h5ad: read the counts from `raw/X` (with `raw/var`).
    #[arg(long)]
    use_raw: bool,
    /// Cell annotation columns to keep in cells.tsv (comma list; h5ad obs or loom column attributes).
    #[arg(long, value_delimiter = ',')]
    obs_columns: Vec<String>,
    /// Tokens per cell including specials (default: the model's native size: 4,096 V2, 2,048 V1, 1,200 scGPT).
    #[arg(long)]
    max_len: Option<usize>,
    /// scGPT: seed of the random bin draws at repeated quantile edges and of the subsampling of long cells.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Mouse data: a `human_symbol,mouse_symbol` ortholog table (e.g. Ensembl105_Human2Mouse_Genes.csv);
    /// the input's gene ids must then be mouse symbols.
    #[arg(long)]
    orthologs: Option<PathBuf>,
    /// Geneformer: accept non-negative values that are not integer counts (an already normalised matrix).
    #[arg(long)]
    allow_normalized: bool,
    /// scGPT: the value of `<cls>`: -2 (pretraining / zero-shot convention) or 0 (tutorial convention).
    #[arg(long, default_value_t = Config::CLS_VALUE, allow_negative_numbers = true)]
    cls_value: f32,
    /// Output token-store folder.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing store at --out.
    #[arg(long)]
    overwrite: bool,
    /// Once the run has lasted this many seconds, completed chunks of cells are saved in `<out>.partial`,
    /// so that a killed run resumes when the same command is run again (0: save every chunk).
    #[arg(long, default_value_t = Config::CHECKPOINT_SECS)]
    checkpoint_secs: f64,
    /// Cells per chunk (the unit of progress and checkpoints).
    #[arg(long, default_value_t = pipeline::CHUNK_CELLS, hide = true)]
    chunk_cells: usize,
    /// Testing: stop with an error after this many chunks, as if killed (their checkpoints are saved).
    #[arg(long, hide = true)]
    stop_after_chunks: Option<usize>,
}

impl TokenizeArgs {
    fn config(&self) -> Config {
        Config {
            input: self.input.clone(),
            tokenizer: self.model.into(),
            dictionaries: self.dictionaries.clone(),
            vocab: self.vocab.clone(),
            gene_ids: self.gene_ids.into(),
            gene_id_column: self.gene_id_column.clone(),
            layer: self.layer.clone(),
            use_raw: self.use_raw,
            obs_columns: self.obs_columns.clone(),
            max_len: self.max_len,
            seed: self.seed,
            orthologs: self.orthologs.clone(),
            allow_normalized: self.allow_normalized,
            cls_value: self.cls_value,
            out: self.out.clone(),
            overwrite: self.overwrite,
            checkpoint_secs: self.checkpoint_secs,
            chunk_cells: self.chunk_cells,
            stop_after_chunks: self.stop_after_chunks,
        }
    }
}

pub fn run(args: TokenizeArgs, json: bool) -> Result<()> {
    let report = steps::tokenize(&args.config(), &mut Bars::default())?;
    print_json(json, &report.manifest)?;
    // The process ends here: hand the cells, the scGPT values (hundreds of MB for big inputs) and the
    // tokenizer's maps (hundreds of thousands of strings) back to the OS with it instead of freeing them
    // piece by piece.
    std::mem::forget(report.retained);
    Ok(())
}
