//! `scinterp export operator`: reads a gene × gene operator out of a model, compresses it (rank-k), fits
//! an adaptor and readouts on reference cells and writes the tool (`scinterp_export::pipeline`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use scinterp_export::cells::{CellInput, PanelChoice};
use scinterp_export::operator::Construction;
use scinterp_export::pipeline::{ExportConfig, ExportReport};
use scinterp_export::steps;
use scinterp_export::tool::AdaptorKind;
use scinterp_models::cells::{GeneIdColumn, OpenOptions};

use crate::args::print_json;
use crate::progress::Bars;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(subcommand)]
    command: ExportCommand,
}

#[derive(Subcommand, Debug)]
enum ExportCommand {
    /// Build a pseudotime + cell-type tool from a model's operator; writes tool.onnx,
    /// tool.safetensors and card.json.
    Operator(OperatorArgs),
}

/// How cells are read: the input options of `scinterp tokenize`.
#[derive(Args, Debug, Clone)]
pub struct CellArgs {
    /// Cells: an .h5ad file, a .loom file, or a 10x MatrixMarket folder (raw counts).
    #[arg(long)]
    pub input: PathBuf,
    /// 10x folders: whether features.tsv's id column is Ensembl ids or symbols.
    #[arg(long, value_enum, default_value = "ensembl")]
    pub gene_ids: GeneIds,
    /// h5ad: the var column holding the gene ids (default: the var index); loom: the row attribute.
    #[arg(long)]
    pub gene_id_column: Option<String>,
    /// h5ad: read the counts from `layers/<NAME>` instead of X.
    #[arg(long)]
    pub layer: Option<String>,
    /// h5ad: read the counts from `raw/X` (with `raw/var`).
    #[arg(long)]
    pub use_raw: bool,
    /// Mouse data: a `human_symbol,mouse_symbol` ortholog table; the input's gene ids must be mouse symbols.
    #[arg(long)]
    pub orthologs: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GeneIds {
    Ensembl,
    Symbol,
}

impl CellArgs {
    pub fn input(&self, obs_columns: Vec<String>) -> CellInput {
        CellInput {
            path: self.input.clone(),
            open: OpenOptions {
                tenx_column: match self.gene_ids {
                    GeneIds::Ensembl => GeneIdColumn::Id,
                    GeneIds::Symbol => GeneIdColumn::Symbol,
                },
                gene_id_column: self.gene_id_column.clone(),
                layer: self.layer.clone(),
                use_raw: self.use_raw,
                obs_columns,
                optional_obs_columns: Vec::new(),
            },
            orthologs: self.orthologs.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ConstructionArg {
    /// softmax(Q·Kᵀ/√d_h) of the genes' embeddings: weights only.
    WeightsQk,
    /// (E·W_V)·W_O·Eᵀ/d_model: weights only.
    WeightsOv,
    /// Head attention between panel genes averaged over reference cells.
    Attention,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AdaptorArg {
    Unsupervised,
    Supervised,
}

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// The model folder (Geneformer or scGPT).
    #[arg(long)]
    model: PathBuf,
    /// Geneformer: the folder of the dictionary pickles (default: the model folder).
    #[arg(long)]
    dictionaries: Option<PathBuf>,
    /// Reference cells and how to read them.
    #[command(flatten)]
    cells: CellArgs,
    /// obs column with the cell-type labels of the reference cells.
    #[arg(long)]
    labels: String,
    /// The root cell of the pseudotime ordering: a 0-based index or a cell name.
    #[arg(long)]
    root: String,
    /// Gene panel: a file with one gene (Ensembl id or symbol) per line. Default: --hvg.
    #[arg(long, conflicts_with = "hvg")]
    panel: Option<PathBuf>,
    /// Gene panel: the N most variable genes (log1p-CP10k) of the reference cells known to the model.
    #[arg(long, default_value_t = ExportConfig::HVG)]
    hvg: usize,
    #[arg(long, value_enum, default_value = "attention")]
    construction: ConstructionArg,
    /// Heads to use: LAYER.HEAD[,LAYER.HEAD…] (several: their mean), or all.
    #[arg(long)]
    heads: Option<String>,
    /// The drift map between layer blocks instead: `0-3;4-7;8-11`, or auto (three blocks).
    #[arg(long, conflicts_with = "heads")]
    drift: Option<String>,
    /// Replace the operator by its rank-k truncated-SVD surrogate.
    #[arg(long)]
    rank: Option<usize>,
    #[arg(long, default_value_t = ExportConfig::D_LATENT)]
    d_latent: usize,
    #[arg(long, value_enum, default_value = "unsupervised")]
    adaptor: AdaptorArg,
    /// Labels in developmental order (comma list), for the held-out stage Spearman.
    #[arg(long, value_delimiter = ',')]
    stage_order: Option<Vec<String>>,
    /// Fraction of each label's cells held out for the card's metrics (0: none held out, every cell is
    /// fitted on, and the card's metrics are null).
    #[arg(long, default_value_t = ExportConfig::HELDOUT)]
    heldout: f64,
    /// Neighbours of the kNN graph of the root-anchored ordering.
    #[arg(long, default_value_t = ExportConfig::KNN)]
    knn: usize,
    /// Attention construction: tokens per cell (default: the model's limit).
    #[arg(long)]
    max_len: Option<usize>,
    /// Attention construction: at most this many training cells go through the model.
    #[arg(long, default_value_t = ExportConfig::MAX_REFERENCE_CELLS)]
    max_reference_cells: usize,
    /// Control: build the tool from the model with every weight tensor's elements shuffled (this seed).
    #[arg(long)]
    shuffled_control: Option<u64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The tool folder to write. The attention construction keeps a checkpoint in `<out>.checkpoint`
    /// (saved at most once a minute): a killed export resumes from it when rerun the same way.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    overwrite: bool,
    /// Testing: stop after N batches of the attention pass with its checkpoint saved, as if killed.
    #[arg(long, hide = true)]
    stop_after_batches: Option<usize>,
}

pub fn run(args: ExportArgs, json: bool) -> Result<()> {
    let ExportCommand::Operator(a) = args.command;
    let report = export_operator(&a)?;
    if json {
        return print_json(json, &report);
    }
    let m = &report.card.metrics;
    println!("wrote {} in {:.1} s", report.out.display(), report.seconds);
    println!(
        "operator: {} ({} bytes)",
        report.card.operator["description"].as_str().unwrap_or(""),
        report.operator_bytes
    );
    for (k, e, b) in &report.energy {
        println!("  rank {k:>5}: retained energy {e:.4}, {b} bytes");
    }
    if m["cell_type"].is_null() {
        println!(
            "held-out: none (--heldout {}: every reference cell was used for fitting; the card has no metrics)",
            m["heldout_fraction"]
        );
        return Ok(());
    }
    println!(
        "held-out ({} cells): accuracy {:.3}, balanced accuracy {:.3}, macro-F1 {:.3}; pseudotime Spearman with the ordering {:.3}{}",
        m["heldout_cells"],
        m["cell_type"]["accuracy"].as_f64().unwrap_or(f64::NAN),
        m["cell_type"]["balanced_accuracy"].as_f64().unwrap_or(f64::NAN),
        m["cell_type"]["macro_f1"].as_f64().unwrap_or(f64::NAN),
        m["pseudotime"]["spearman_with_ordering"].as_f64().unwrap_or(f64::NAN),
        m["pseudotime"]["stage_order"]["spearman"].as_f64().map(|r| format!(", with the stage order {r:.3}")).unwrap_or_default()
    );
    Ok(())
}

/// `scinterp export operator`'s arguments → the library call → its report.
pub fn export_operator(a: &OperatorArgs) -> Result<ExportReport> {
    let panel = match &a.panel {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--panel {}: {e}", path.display()))?;
            PanelChoice::Given(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect(),
            )
        }
        None => PanelChoice::Hvg(a.hvg),
    };
    let config = ExportConfig {
        model: a.model.clone(),
        dictionaries: a.dictionaries.clone(),
        cells: a.cells.input(vec![a.labels.clone()]),
        label_column: a.labels.clone(),
        panel,
        construction: match a.construction {
            ConstructionArg::WeightsQk => Construction::WeightsQk,
            ConstructionArg::WeightsOv => Construction::WeightsOv,
            ConstructionArg::Attention => Construction::Attention,
        },
        heads: a.heads.clone(),
        drift: a.drift.clone(),
        rank: a.rank,
        d_latent: a.d_latent,
        adaptor: match a.adaptor {
            AdaptorArg::Unsupervised => AdaptorKind::Unsupervised,
            AdaptorArg::Supervised => AdaptorKind::Supervised,
        },
        root: a.root.clone(),
        stage_order: a.stage_order.clone(),
        heldout: a.heldout,
        seed: a.seed,
        knn: a.knn,
        max_len: a.max_len,
        max_reference_cells: a.max_reference_cells,
        shuffled_control: a.shuffled_control,
        out: a.out.clone(),
        overwrite: a.overwrite,
        stop_after_batches: a.stop_after_batches,
    };
    Ok(steps::export_tool(&config, &mut Bars::default())?)
}
