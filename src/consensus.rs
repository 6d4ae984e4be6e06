//! `scinterp consensus`: arguments → [`ConsensusConfig`] → [`scinterp_engine::analyze::consensus::run`]
//! → the summary (`consensus.json`), printed.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use scinterp_engine::analyze::consensus::{ConsensusConfig, GraphInput};
use scinterp_engine::formats::TableFormat;
use scinterp_export::steps;

use crate::args::print_json;

#[derive(Args, Debug, Clone)]
pub struct ConsensusArgs {
    /// Model A's trace edge table (`scinterp trace` output, .parquet or .tsv).
    #[arg(long)]
    edges_a: PathBuf,
    /// Model A's annotation: a `scinterp annotate` output folder (its enrichment table) or a term table.
    #[arg(long)]
    annotations_a: PathBuf,
    /// Model B's trace edge table.
    #[arg(long)]
    edges_b: PathBuf,
    /// Model B's annotation folder or term table.
    #[arg(long)]
    annotations_b: PathBuf,
    /// When one annotation run covered both models (catalogs named `<folder>:<hook>`): model A's folder
    /// name.
    #[arg(long)]
    catalog_prefix_a: Option<String>,
    /// Model B's catalog folder name (see --catalog-prefix-a).
    #[arg(long)]
    catalog_prefix_b: Option<String>,
    /// Optional GMT whose sets are the focus (e.g. disease genes annotated as a library): the
    /// over-representation of conserved pairs touching them.
    #[arg(long)]
    focus_sets: Option<PathBuf>,
    /// A feature carries a term when its atlas q is at most this.
    #[arg(long, default_value_t = 0.05)]
    alpha: f64,
    /// Only terms of these libraries (comma list of library names; default: all).
    #[arg(long, value_delimiter = ',')]
    libraries: Vec<String>,
    /// Permutations of the term labels (the null).
    #[arg(long, default_value_t = 1000)]
    permutations: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (created): consensus.json and the conserved_pairs table.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "tsv")]
    format: TableFormat,
    /// Replace an existing --out folder (only once the new consensus is complete).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: ConsensusArgs, json: bool) -> Result<()> {
    let config = ConsensusConfig {
        a: GraphInput {
            catalog_prefix: args.catalog_prefix_a,
            ..GraphInput::new("a", &args.edges_a, &args.annotations_a)
        },
        b: GraphInput {
            catalog_prefix: args.catalog_prefix_b,
            ..GraphInput::new("b", &args.edges_b, &args.annotations_b)
        },
        focus_sets: args.focus_sets,
        alpha: args.alpha,
        libraries: args.libraries,
        permutations: args.permutations,
        seed: args.seed,
        out: args.out,
        format: args.format,
        overwrite: args.overwrite,
    };
    print_json(json, &steps::consensus(&config)?)
}
