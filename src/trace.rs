//! `scinterp trace run|merge`: arguments → [`TraceConfig`] → [`scinterp_engine::trace::run`] (or
//! `merge`) → the summary, printed. `scinterp trace --model …` without `run` is the old spelling and
//! still works.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use scinterp_engine::device::DeviceChoice;
use scinterp_engine::formats::absolute;
use scinterp_engine::formats::trace::TraceSummary;
use scinterp_engine::trace::{EdgeFilters, TraceConfig, TraceInputs, TraceOutcome, TraceProgress};

use crate::forward::{load_model, make_forward, read_cells, resolve_device, GpuPrecisionArg};

/// `trace run …`, `trace merge …`, or (the old spelling) `trace …` with the arguments of `run`.
#[derive(Debug)]
pub struct TraceArgs {
    pub(crate) command: Option<TraceCommand>,
    /// Without a subcommand, the arguments of `trace run`.
    pub(crate) run: Option<RunArgs>,
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
    pub(crate) model: PathBuf,
    /// Token store of the cells to trace on.
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Folder of SAE folders, one per hook: `<saes>/<hook>/cfg.json` (or any subfolder whose
    /// cfg.json names the hook in metadata.hook_name).
    #[arg(long)]
    pub(crate) saes: PathBuf,
    /// Source hook (a `blocks.L.hook_resid_post`).
    #[arg(long)]
    pub(crate) source: String,
    /// Source features: `all`, a comma list (`3,17,40`), or `top:N` (the N that fire in most of the
    /// traced cells; ties to the lower index).
    #[arg(long, default_value = "all")]
    pub(crate) features: String,
    /// Downstream hooks (comma list of later `hook_resid_post`s).
    #[arg(long)]
    pub(crate) targets: String,
    /// Trace on the first N cells of the store (default: all).
    #[arg(long)]
    pub(crate) cells: Option<usize>,
    /// Edge table, `.parquet` or `.tsv` (by the extension), written atomically; a JSON summary is
    /// written beside it (`.summary.json`).
    /// A checkpoint (`.checkpoint`) is kept beside it while the trace runs: rerunning the same command
    /// after a kill resumes from it. With --shard, the shard's accumulator is written here instead.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Trace only every n-th requested feature starting at i (`i/n`, 0-based); combine the shards'
    /// outputs with `scinterp trace merge`.
    #[arg(long, value_parser = parse_shard)]
    pub(crate) shard: Option<(usize, usize)>,
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    /// Cells per clean-run chunk (bounds memory: their states at the source and target hooks).
    #[arg(long, default_value_t = 64)]
    pub(crate) chunk_cells: usize,
    #[arg(long, default_value_t = 16_384)]
    pub(crate) max_batch_tokens: usize,
    /// Sign-flip permutations of the per-cell changes (0: none): the summary then gives, per
    /// permutation, the tested edges whose flipped statistics pass the observed rule held fixed (p at most
    /// the largest p written, and the |d| and consistency filters), and the empirical FDR of the rule
    /// (π̂₀ · mean null edges / edges written). Memory: 16 bytes × B per edge.
    #[arg(long, default_value_t = 0)]
    pub(crate) null_permutations: usize,
    /// Seed of the sign flips.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Where the clean runs and tail replays run: `auto` (the CPU until the CUDA path is validated on a
    /// GPU), `cpu` or `cuda` (see `scinterp forward --help`); SAE encodes and statistics stay on the CPU.
    #[arg(long, default_value = "auto")]
    pub(crate) device: DeviceChoice,
    /// With `--device cuda`: `bf16` (default) or `f32` (exact f32 GEMMs: the parity mode).
    #[arg(long, default_value = "bf16")]
    pub(crate) gpu_precision: GpuPrecisionArg,
    /// Replace an existing --out (a finished table or shard accumulator); without it one is refused.
    #[arg(long)]
    pub(crate) overwrite: bool,
    #[arg(long)]
    pub(crate) json: bool,
    /// Testing: stop with an error after this many chunks, as if killed right after a checkpoint.
    #[arg(long, hide = true)]
    pub(crate) stop_after_chunks: Option<usize>,
}

/// The edge filters of the table.
#[derive(Args, Debug, Clone, Copy)]
pub struct FilterArgs {
    /// Keep edges with |Cohen's d| at least this.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) min_abs_d: f64,
    /// Keep edges with BH q at most this.
    #[arg(long, default_value_t = 0.05)]
    pub(crate) max_q: f64,
    /// Keep edges whose `sign_consistency` is at least this: max(n₊, n₋)/n, the fraction of all n
    /// cells whose change has the majority sign (cells with no change count against it).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) min_consistency: f64,
    /// Edges whose source fired in fewer cells are untestable (no p, not in the BH family; at least 3).
    #[arg(long, default_value_t = scinterp_engine::trace::edges::DEFAULT_MIN_CELLS)]
    pub(crate) min_cells: u32,
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
    #[arg(long)]
    json: bool,
}

fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let (i, n) = text.split_once('/').ok_or("expected i/n, e.g. 0/4")?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| "i must be a number")?,
        n.trim().parse().map_err(|_| "n must be a number")?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 ≤ i < n"));
    }
    Ok((i, n))
}

pub fn run(args: TraceArgs) -> Result<()> {
    let (summary, json) = match (args.command, args.run) {
        (Some(TraceCommand::Merge(m)), _) => {
            let summary = scinterp_engine::trace::merge(&m.shards, &m.out, &m.filters.into(), m.overwrite)?;
            log_table(&summary);
            (summary, m.json)
        }
        (Some(TraceCommand::Run(r)), _) => {
            let json = r.json;
            (trace_edges(*r)?, json)
        }
        (None, Some(r)) => {
            let json = r.json;
            (trace_edges(r)?, json)
        }
        (None, None) => bail!("nothing to do: use `scinterp trace run …` or `scinterp trace merge …`"),
    };
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// Loads the model and the cells, traces, and returns the summary (of the table, or of the shard).
pub fn trace_edges(args: RunArgs) -> Result<TraceSummary> {
    let backend = resolve_device(args.device)?;
    let model = load_model(&args.model, false)?;
    let forward = make_forward(backend, model.encoder.as_ref(), args.gpu_precision)?;
    let cells = read_cells(&args.input, &model)?;
    let special_ids = crate::extract::special_token_ids(&args.input, &model)?;
    let config = TraceConfig {
        source: args.source.clone(),
        targets: args.targets.split(',').map(String::from).collect(),
        features: args.features.clone(),
        cells: args.cells,
        out: args.out.clone(),
        shard: args.shard,
        filters: args.filters.into(),
        chunk_cells: args.chunk_cells,
        max_batch_tokens: args.max_batch_tokens,
        null_permutations: args.null_permutations,
        seed: args.seed,
        stop_after_chunks: args.stop_after_chunks,
        overwrite: args.overwrite,
    };
    let inputs = TraceInputs {
        encoder: model.encoder.as_ref(),
        forward: forward.as_ref(),
        tokens: &cells.tokens,
        values: cells.values.as_deref(),
        special_ids,
        saes: &args.saes,
        model_path: absolute(&args.model),
        input_path: absolute(&args.input),
    };
    let mut bar: Option<indicatif::ProgressBar> = None;
    let outcome = scinterp_engine::trace::run(&config, &inputs, &mut |p| match p {
        TraceProgress::Resumed {
            checkpoint,
            cells_done,
        } => tracing::info!("resuming from {} at cell {cells_done}", checkpoint.display()),
        TraceProgress::Start { total, done } => {
            bar = Some(crate::progress::bar(total as u64, done as u64, "cells"));
        }
        TraceProgress::Ablations(n) => {
            if let Some(b) = &bar {
                b.set_message(format!("{n} ablations"));
            }
        }
        TraceProgress::Cells(n) => {
            if let Some(b) = &bar {
                b.set_position(n as u64);
            }
        }
    });
    if let Some(b) = bar {
        crate::progress::finish(&b);
    }
    Ok(match outcome? {
        TraceOutcome::Shard(s) => {
            tracing::info!(
                "shard: {} ablations in {:.1} s; accumulator written to {} (combine shards with `scinterp trace merge`)",
                s.ablations,
                s.seconds,
                s.out
            );
            s
        }
        TraceOutcome::Table(s) => {
            log_table(&s);
            s
        }
    })
}

fn log_table(s: &TraceSummary) {
    tracing::info!(
        "{} ablations over {} cells in {:.1} s ({:.1}/s); {} tests, {} edges written to {}",
        s.ablations,
        s.cells,
        s.seconds,
        s.ablations_per_second,
        s.tests_performed,
        s.edges_written,
        s.out
    );
}
