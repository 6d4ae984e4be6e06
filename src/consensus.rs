//! `scinterp consensus`: arguments → [`ConsensusConfig`] → [`scinterp_engine::analyze::consensus::run`]
//! → the summary (`consensus.json`), printed.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use scinterp_engine::analyze::consensus::{ConsensusConfig, GraphInput};
use scinterp_engine::formats::consensus::ConsensusSummary;
use scinterp_engine::formats::{to_json, TableFormat};

#[derive(Args, Debug, Clone)]
pub struct ConsensusArgs {
    /// Model A's trace edge table (`scinterp trace` output, .parquet or .tsv).
    #[arg(long)]
    pub(crate) edges_a: PathBuf,
    /// Model A's annotation: a `scinterp annotate` output folder (its enrichment table) or a term table.
    #[arg(long)]
    pub(crate) annotations_a: PathBuf,
    /// Model B's trace edge table.
    #[arg(long)]
    pub(crate) edges_b: PathBuf,
    /// Model B's annotation folder or term table.
    #[arg(long)]
    pub(crate) annotations_b: PathBuf,
    /// When one annotation run covered both models (catalogs named `<folder>:<hook>`): model A's folder
    /// name.
    #[arg(long)]
    pub(crate) catalog_prefix_a: Option<String>,
    /// Model B's catalog folder name (see --catalog-prefix-a).
    #[arg(long)]
    pub(crate) catalog_prefix_b: Option<String>,
    /// Optional GMT whose sets are the focus (e.g. disease genes annotated as a library): the
    /// over-representation of conserved pairs touching them.
    #[arg(long)]
    pub(crate) focus_sets: Option<PathBuf>,
    /// A feature carries a term when its atlas q is at most this.
    #[arg(long, default_value_t = 0.05)]
    pub(crate) alpha: f64,
    /// Only terms of these libraries (comma list of library names; default: all).
    #[arg(long, value_delimiter = ',')]
    pub(crate) libraries: Vec<String>,
    /// Permutations of the term labels (the null).
    #[arg(long, default_value_t = 1000)]
    pub(crate) permutations: usize,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Output folder (created): consensus.json and the conserved_pairs table.
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[arg(long, value_enum, default_value = "tsv")]
    pub(crate) format: TableFormat,
    /// Replace an existing --out folder; without it one is refused.
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Print consensus.json to stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

pub fn run(args: ConsensusArgs) -> Result<()> {
    let json = args.json;
    let s = consensus(args)?;
    if json {
        println!("{}", to_json(&s)?);
    }
    Ok(())
}

/// Runs the comparison and logs its headline; returns consensus.json's content.
pub fn consensus(args: ConsensusArgs) -> Result<ConsensusSummary> {
    scinterp_engine::formats::check_file_output(&args.out, args.overwrite, "a consensus")?;
    let config = ConsensusConfig {
        a: GraphInput {
            name: "a".into(),
            edges: args.edges_a,
            annotations: args.annotations_a,
            catalog_prefix: args.catalog_prefix_a,
        },
        b: GraphInput {
            name: "b".into(),
            edges: args.edges_b,
            annotations: args.annotations_b,
            catalog_prefix: args.catalog_prefix_b,
        },
        focus_sets: args.focus_sets,
        alpha: args.alpha,
        libraries: args.libraries,
        permutations: args.permutations,
        seed: args.seed,
        out: args.out,
        format: args.format,
    };
    let s = scinterp_engine::analyze::consensus::run(&config)?;
    let enrichment = s
        .enrichment
        .map_or_else(|| "n/a (null mean 0)".to_string(), |e| format!("{e:.2}x"));
    tracing::info!(
        "term pairs: a {}, b {}; conserved {} vs null {:.1} ± {:.1} ({} permutations): enrichment {enrichment}, p = {:.3}",
        s.graphs[0].term_pairs,
        s.graphs[1].term_pairs,
        s.conserved_pairs,
        s.null_mean,
        s.null_sd,
        s.settings.permutations,
        s.p_value
    );
    if let Some(f) = &s.focus {
        tracing::info!(
            "focus: {} of {} conserved pairs touch a focus set (expected {:.1}); hypergeometric p = {:.3e}, permutation p = {:.3}",
            f.conserved_focus_pairs,
            s.conserved_pairs,
            f.expected,
            f.p_hypergeometric,
            f.p_permutation
        );
    }
    tracing::info!("wrote {}", config.out.display());
    Ok(s)
}
