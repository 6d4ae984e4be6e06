//! `scinterp atlas`: builds the static web atlas from the pipeline's outputs (`scinterp_export::atlas`), and
//! `scinterp atlas serve` serves one on 127.0.0.1.

use std::path::PathBuf;

use crate::args::print_json;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use scinterp_export::atlas::{self, AtlasConfig};

#[derive(Args, Debug)]
pub struct AtlasArgs {
    #[command(subcommand)]
    command: Option<AtlasCommand>,
    /// Catalog folders of `scinterp analyze` (comma list, e.g. one per layer).
    #[arg(long, value_delimiter = ',')]
    catalogs: Vec<PathBuf>,
    /// Output folders of `scinterp annotate` (comma list).
    #[arg(long, alias = "annotations", value_delimiter = ',')]
    annotation: Vec<PathBuf>,
    /// Edge tables of `scinterp trace` (.parquet or .tsv; comma list).
    #[arg(long, value_delimiter = ',')]
    edges: Vec<PathBuf>,
    /// Tables of `scinterp effects` (comma list).
    #[arg(long, value_delimiter = ',')]
    effects: Vec<PathBuf>,
    /// Output folders of `scinterp layers` (comma list).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<PathBuf>,
    /// Cross-model consensus tables (.parquet or .tsv; shown as they are).
    #[arg(long, value_delimiter = ',')]
    consensus: Vec<PathBuf>,
    /// Exported tools: JSON cards, or folders holding them.
    #[arg(long, value_delimiter = ',')]
    tools: Vec<PathBuf>,
    /// The site folder to write (open its index.html).
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Title shown in the page header.
    #[arg(long)]
    title: Option<String>,
    /// Features per detail data file.
    #[arg(long, default_value_t = 64)]
    shard_features: usize,
    /// Replace an existing atlas at --out.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Subcommand, Debug)]
enum AtlasCommand {
    /// Serve a built atlas on http://127.0.0.1:PORT/ until interrupted.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// The atlas folder (written by `scinterp atlas --out`).
    dir: PathBuf,
    #[arg(long, default_value_t = 8000)]
    port: u16,
}

pub fn run(args: AtlasArgs, json: bool) -> Result<()> {
    if let Some(AtlasCommand::Serve(s)) = args.command {
        let handle = atlas::serve(&s.dir, s.port)?;
        println!("serving {} at {} (Ctrl-C to stop)", s.dir.display(), handle.url());
        handle.wait();
        return Ok(());
    }
    let config = AtlasConfig {
        catalogs: args.catalogs,
        annotations: args.annotation,
        edges: args.edges,
        effects: args.effects,
        layers: args.layers,
        consensus: args.consensus,
        tools: args.tools,
        out: args.out.context("--out is required")?,
        title: args.title,
        overwrite: args.overwrite,
        shard_features: args.shard_features,
    };
    let report = atlas::build(&config)?;
    if json {
        return print_json(json, &report);
    }
    println!(
        "atlas    {}: {} layers, {} features ({} alive, {} annotated), {} genes, {} terms, {} edges; \
         {} files, {:.1} MB in {:.1} s",
        report.out.display(),
        report.layers,
        report.features,
        report.alive,
        report.annotated,
        report.genes,
        report.terms,
        report.edges,
        report.files,
        report.bytes as f64 / 1e6,
        report.seconds
    );
    println!(
        "         open file://{} (or `scinterp atlas serve {}`)",
        report.index.display(),
        report.out.display()
    );
    Ok(())
}
