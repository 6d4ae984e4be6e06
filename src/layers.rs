//! `scinterp layers`: arguments → [`LayersConfig`] → [`scinterp_engine::analyze::compare_layers`] →
//! the summary (`layers.json`), printed.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use scinterp_engine::analyze::LayersConfig;
use scinterp_engine::formats::TableFormat;
use scinterp_export::steps;

use crate::args::print_json;
use crate::progress::Bars;

#[derive(Args, Debug, Clone)]
pub struct LayersArgs {
    /// Activation store holding every SAE's hook.
    #[arg(long)]
    acts: PathBuf,
    /// SAE folders in layer order, comma-separated (each names its hook in cfg.json).
    #[arg(long, value_delimiter = ',', required = true)]
    saes: Vec<PathBuf>,
    /// The different-seed control: SAE folders trained on hooks of --saes from another seed
    /// (`scinterp sae train --seed <other>`), comma-separated, at most one per hook. Without it
    /// layers.json says that no control was run.
    #[arg(long, value_delimiter = ',')]
    control_saes: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "parquet")]
    format: TableFormat,
    /// |cos| of a match.
    #[arg(long, default_value_t = 0.7)]
    match_threshold: f64,
    /// |cos| of a strong match.
    #[arg(long, default_value_t = 0.9)]
    strong_threshold: f64,
    /// Fires a source or target needs to enter the highway statistics.
    #[arg(long, default_value_t = 100)]
    highway_min_fires: u64,
    /// Co-activated rows a (source, target) pair needs (the published code had none).
    #[arg(long, default_value_t = 20)]
    highway_min_cocount: u64,
    /// PMI (log2) above which a source's best target makes it a highway.
    #[arg(long, default_value_t = 3.0)]
    highway_pmi: f64,
    /// Rows encoded at a time (rounded up to whole cells).
    #[arg(long, default_value_t = 8192)]
    chunk_rows: usize,
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: LayersArgs, json: bool) -> Result<()> {
    print_json(
        json,
        &steps::compare_layers(&layers_config(args), &mut Bars::default())?,
    )
}

fn layers_config(args: LayersArgs) -> LayersConfig {
    LayersConfig {
        acts: args.acts,
        saes: args.saes,
        control_saes: args.control_saes,
        out: args.out,
        format: args.format,
        match_threshold: args.match_threshold,
        strong_threshold: args.strong_threshold,
        highway_min_fires: args.highway_min_fires,
        highway_min_cocount: args.highway_min_cocount,
        highway_pmi: args.highway_pmi,
        chunk_rows: args.chunk_rows,
        overwrite: args.overwrite,
    }
}
