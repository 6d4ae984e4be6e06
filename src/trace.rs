//! `scinterp trace run|merge`: arguments → [`TraceConfig`] → [`scinterp_engine::trace::run`] (or
//! `merge`) → the summary, printed. `scinterp trace --model …` without `run` is the old spelling and
//! still works.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use scinterp_engine::formats::trace::TraceSummary;
use scinterp_engine::trace::{EdgeFilters, TraceConfig};
use scinterp_export::steps;
use scinterp_models::trace::TraceFiles;

use crate::args::{parse_shard, print_json, DeviceArgs};
use crate::progress::Bars;

/// `trace run …`, `trace merge …`, or (the old spelling) `trace …` with the arguments of `run`.
#[derive(Debug)]
pub struct TraceArgs {
    command: Option<TraceCommand>,
    /// Without a subcommand, the arguments of `trace run`.
    run: Option<RunArgs>,
}

// By hand rather than derived: the arguments of `run` sit beside the subcommands (the old spelling), and
// are read only when no subcommand was given (the caller sets `args_conflicts_with_subcommands` and
// `subcommand_negates_reqs`).
impl clap::FromArgMatches for TraceArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Self::from_arg_matches_mut(&mut matches.clone())
    }

    fn from_arg_matches_mut(matches: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
        if matches.subcommand_name().is_some() {
            Ok(TraceArgs {
                command: Some(TraceCommand::from_arg_matches_mut(matches)?),
                run: None,
            })
        } else {
            Ok(TraceArgs {
                command: None,
                run: Some(RunArgs::from_arg_matches_mut(matches)?),
            })
        }
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for TraceArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        TraceCommand::augment_subcommands(RunArgs::augment_args(cmd))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Subcommand, Debug)]
pub enum TraceCommand {
    /// Trace edges (the default: `scinterp trace --model …` is `scinterp trace run --model …`).
    Run(Box<RunArgs>),
    /// Combine the accumulators of `scinterp trace run --shard i/n` runs into one edge table.
    Merge(MergeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Model folder (Geneformer or scGPT).
    #[arg(long)]
    model: PathBuf,
    /// Token store of the cells to trace on.
    #[arg(long)]
    input: PathBuf,
    /// Folder of SAE folders, one per hook: `<saes>/<hook>/cfg.json` (or any subfolder whose
    /// cfg.json names the hook in metadata.hook_name).
    #[arg(long)]
    saes: PathBuf,
    /// Source hook (a `blocks.L.hook_resid_post`).
    #[arg(long)]
    source: String,
    /// Source features: `all`, a comma list (`3,17,40`), or `top:N` (the N that fire in most of the
    /// traced cells; ties to the lower index).
    #[arg(long, default_value = "all")]
    features: String,
    /// Downstream hooks (comma list of later `hook_resid_post`s).
    #[arg(long)]
    targets: String,
    /// Trace on the first N cells of the store (default: all).
    #[arg(long)]
    cells: Option<usize>,
    /// Edge table, `.parquet` or `.tsv` (by the extension), written atomically; a JSON summary is
    /// written beside it (`.summary.json`).
    /// A checkpoint (`.checkpoint`) is kept beside it while the trace runs: rerunning the same command
    /// after a kill resumes from it. With --shard, the shard's accumulator is written here instead.
    #[arg(long)]
    out: PathBuf,
    /// Trace only every n-th requested feature starting at i (`i/n`, 0-based); combine the shards'
    /// outputs with `scinterp trace merge`.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    #[command(flatten)]
    filters: FilterArgs,
    /// Cells per clean-run chunk (bounds memory: their states at the source and target hooks).
    #[arg(long, default_value_t = 64)]
    chunk_cells: usize,
    #[arg(long, default_value_t = 16_384)]
    max_batch_tokens: usize,
    /// Sign-flip permutations of the per-cell changes (0: none): the summary then gives, per
    /// permutation, the tested edges whose flipped statistics pass the observed rule held fixed (p at most
    /// the largest p written, and the |d| and consistency filters), and the empirical FDR of the rule
    /// (π̂₀ · mean null edges / edges written). Memory: 16 bytes × B per edge.
    #[arg(long, default_value_t = 0)]
    null_permutations: usize,
    /// Seed of the sign flips.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the clean runs and tail replays run (SAE encodes and statistics stay on the CPU).
    #[command(flatten)]
    device: DeviceArgs,
    /// Replace an existing --out (a finished table or shard accumulator); without it one is refused.
    #[arg(long)]
    overwrite: bool,
    /// Testing: stop with an error after this many chunks, as if killed right after a checkpoint.
    #[arg(long, hide = true)]
    stop_after_chunks: Option<usize>,
}

/// The edge filters of the table.
#[derive(Args, Debug, Clone, Copy)]
pub struct FilterArgs {
    /// Keep edges with |Cohen's d| at least this.
    #[arg(long, default_value_t = 0.0)]
    min_abs_d: f64,
    /// Keep edges with BH q at most this.
    #[arg(long, default_value_t = 0.05)]
    max_q: f64,
    /// Keep edges whose `sign_consistency` is at least this: max(n₊, n₋)/n, the fraction of all n
    /// cells whose change has the majority sign (cells with no change count against it).
    #[arg(long, default_value_t = 0.0)]
    min_consistency: f64,
    /// Edges whose source fired in fewer cells are untestable (no p, not in the BH family; at least 3).
    #[arg(long, default_value_t = scinterp_engine::trace::edges::DEFAULT_MIN_CELLS)]
    min_cells: u32,
}

impl From<FilterArgs> for EdgeFilters {
    fn from(f: FilterArgs) -> Self {
        EdgeFilters {
            max_q: f.max_q,
            min_abs_d: f.min_abs_d,
            min_consistency: f.min_consistency,
            min_cells: f.min_cells,
        }
    }
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Shard files (comma list), as written by `scinterp trace run --shard i/n --out FILE`.
    #[arg(long, value_delimiter = ',', required = true)]
    shards: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    filters: FilterArgs,
    /// Replace an existing --out table; without it one is refused.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: TraceArgs, json: bool) -> Result<()> {
    let summary = match (args.command, args.run) {
        (Some(TraceCommand::Merge(m)), _) => {
            let summary = scinterp_engine::trace::merge(&m.shards, &m.out, &m.filters.into(), m.overwrite)?;
            steps::log_trace_table(&summary);
            summary
        }
        (Some(TraceCommand::Run(r)), _) => run_trace(*r)?,
        (None, Some(r)) => run_trace(r)?,
        (None, None) => bail!("nothing to do: use `scinterp trace run …` or `scinterp trace merge …`"),
    };
    print_json(json, &summary)
}

fn run_trace(args: RunArgs) -> Result<TraceSummary> {
    let config = TraceConfig {
        features: args.features.clone(),
        cells: args.cells,
        shard: args.shard,
        filters: args.filters.into(),
        chunk_cells: args.chunk_cells,
        max_batch_tokens: args.max_batch_tokens,
        null_permutations: args.null_permutations,
        seed: args.seed,
        stop_after_chunks: args.stop_after_chunks,
        overwrite: args.overwrite,
        ..TraceConfig::new(&args.source, &args.targets, &args.out)
    };
    let files = TraceFiles {
        model: &args.model,
        input: &args.input,
        saes: &args.saes,
    };
    trace_edges(&files, &config, &args.device)
}

fn trace_edges(files: &TraceFiles, config: &TraceConfig, device: &DeviceArgs) -> Result<TraceSummary> {
    let backend = device.backend()?;
    Ok(steps::trace(
        files,
        config,
        backend,
        device.precision(),
        &mut Bars::default(),
    )?)
}
