//! `scinterp extract`: a batched forward pass over a token store, writing the captured hooks at gene
//! positions to an activation store (resumable; see `scinterp_engine::store`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use scinterp_engine::extract::merge_shards;
use scinterp_engine::store::ActDtype;
use scinterp_export::steps;
use scinterp_models::extract::{ExtractConfig, ExtractSummary};
use serde_json::json;

use crate::args::{parse_shard, print_json, DeviceArgs};
use crate::progress::Bars;

/// `scinterp extract …` (a run), or `scinterp extract merge …` (shard stores → one store).
#[derive(Debug)]
pub struct ExtractCli {
    pub(crate) command: Option<ExtractCommand>,
    /// Without a subcommand, the arguments of an extraction.
    pub(crate) run: Option<ExtractArgs>,
}

// By hand rather than derived, as for `trace`: the run's arguments sit beside the `merge` subcommand and
// are read only when no subcommand was given (main sets `args_conflicts_with_subcommands` and
// `subcommand_negates_reqs`).
impl clap::FromArgMatches for ExtractCli {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Self::from_arg_matches_mut(&mut matches.clone())
    }

    fn from_arg_matches_mut(matches: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
        if matches.subcommand_name().is_some() {
            Ok(ExtractCli {
                command: Some(ExtractCommand::from_arg_matches_mut(matches)?),
                run: None,
            })
        } else {
            Ok(ExtractCli {
                command: None,
                run: Some(ExtractArgs::from_arg_matches_mut(matches)?),
            })
        }
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for ExtractCli {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        ExtractCommand::augment_subcommands(ExtractArgs::augment_args(cmd))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Subcommand, Debug)]
pub enum ExtractCommand {
    /// Combine the stores of `scinterp extract --shard i/n` runs into the store one run writes.
    Merge(MergeArgs),
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Shard stores (comma list), each written by `scinterp extract --shard i/n --out DIR`.
    #[arg(long, value_delimiter = ',', required = true)]
    shards: Vec<PathBuf>,
    /// The merged activation store (created, or resumed if a merge was interrupted).
    #[arg(long)]
    out: PathBuf,
    /// Delete an existing merged store at --out (complete or partial) and merge afresh; without it the
    /// merge resumes it (or, when it is complete, does nothing).
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// Model folder (Geneformer or scGPT), as for `scinterp forward`.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Token store made by `scinterp tokenize` for this model.
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Hooks to store: a comma list (e.g. blocks.5.hook_resid_post) or `all`.
    #[arg(long)]
    pub(crate) hooks: String,
    /// Activation store folder to create, or to resume if a run was interrupted.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Element type of the stored activations.
    #[arg(long, value_enum, default_value_t = DtypeArg::F16)]
    pub(crate) dtype: DtypeArg,
    /// Also store the special-token positions (<cls>, <eos>); by default only genes get rows.
    #[arg(long)]
    pub(crate) include_special: bool,
    /// Most tokens run together in one packed batch (bounds memory; part of the store's settings).
    #[arg(long, default_value_t = 16_384)]
    pub(crate) max_batch_tokens: usize,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
    /// Extract only shard i of n (`0/4` … `3/4`): a run of whole batches of the unsharded run; join
    /// the shard stores with `scinterp extract merge`, which gives the unsharded store byte for byte.
    #[arg(long, value_parser = parse_shard)]
    pub(crate) shard: Option<(usize, usize)>,
    /// Delete an existing store at --out (complete or partial; only an activation store is deleted) and
    /// extract afresh; without it a store made with the same settings is resumed (or, when complete,
    /// left as it is).
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Testing: stop after N batches are written, before the last is checkpointed (as a kill there would).
    #[arg(long, hide = true)]
    pub(crate) stop_after_batches: Option<usize>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DtypeArg {
    F16,
    F32,
}

pub fn run(cli: ExtractCli, json: bool) -> Result<()> {
    let args = match (cli.command, cli.run) {
        (Some(ExtractCommand::Merge(m)), _) => return merge(m, json),
        (None, Some(r)) => r,
        (None, None) => {
            bail!("nothing to do: give the extraction's arguments, or use `scinterp extract merge …`")
        }
    };
    if let Some(summary) = extract_store(args)? {
        print_json(json, &summary)?;
    }
    Ok(())
}

fn merge(args: MergeArgs, json: bool) -> Result<()> {
    let stats = merge_shards(&args.shards, &args.out, args.overwrite)
        .with_context(|| format!("merging shard stores into {}", args.out.display()))?;
    if stats.already_complete {
        tracing::info!("{} is already complete; nothing to do", args.out.display());
    } else {
        tracing::info!(
            "merged {} shards: {} cells, {} rows into {}",
            stats.n_shards,
            stats.n_cells,
            stats.n_rows,
            args.out.display()
        );
    }
    print_json(
        json,
        &json!({
            "out": args.out.display().to_string(),
            "n_shards": stats.n_shards,
            "n_cells": stats.n_cells,
            "n_rows": stats.n_rows,
            "resumed_from_cell": stats.resumed_from_cell,
            "already_complete": stats.already_complete,
        }),
    )
}

/// Extracts into the store (or finishes it); `None` when it was already complete.
fn extract_store(args: ExtractArgs) -> Result<Option<ExtractSummary>> {
    let config = ExtractConfig {
        model: args.model,
        input: args.input,
        hooks: args.hooks,
        out: args.out,
        dtype: match args.dtype {
            DtypeArg::F16 => ActDtype::F16,
            DtypeArg::F32 => ActDtype::F32,
        },
        include_special: args.include_special,
        max_batch_tokens: args.max_batch_tokens,
        shard: args.shard,
        backend: args.device.backend()?,
        gpu_precision: args.device.precision(),
        stop_after_batches: args.stop_after_batches,
        overwrite: args.overwrite,
    };
    Ok(steps::extract(&config, &mut Bars::default())?)
}
