//! `scinterp apply`: runs an exported tool on new cells and writes pseudotime and cell-type calls
//! (`scinterp_export::apply`). The foundation model is not needed.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use scinterp_export::apply::{self, ApplyConfig};

use crate::args::print_json;
use crate::export::CellArgs;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The tool folder written by `scinterp export operator`.
    #[arg(long)]
    tool: PathBuf,
    #[command(flatten)]
    cells: CellArgs,
    /// The calls: a TSV `cell, pseudotime, cell_type, probability, latent_1…`.
    #[arg(long)]
    out: PathBuf,
    /// Refuse cells holding fewer than this fraction of the panel genes.
    #[arg(long, default_value_t = 0.5)]
    min_panel_fraction: f64,
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: ApplyArgs, json: bool) -> Result<()> {
    let config = ApplyConfig {
        tool: args.tool,
        cells: args.cells.input(Vec::new()),
        out: args.out,
        min_panel_fraction: args.min_panel_fraction,
        overwrite: args.overwrite,
    };
    let r = apply::apply(&config)?;
    if json {
        return print_json(json, &r);
    }
    println!(
        "wrote {} ({} cells; {} of {} panel genes found): read {:.2} s, calls {:.2} s, {:.0} cells/min",
        r.out.display(),
        r.n_cells,
        r.panel_genes - r.missing_genes.len(),
        r.panel_genes,
        r.read_seconds,
        r.compute_seconds,
        r.cells_per_minute
    );
    Ok(())
}
