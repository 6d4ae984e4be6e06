//! `scinterp extract`: a batched forward pass over a token store, writing the captured hooks at gene
//! positions to an activation store (resumable; see `scinterp_engine::store`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use scinterp_engine::extract::{extract, merge_shards, shard_cells, ExtractCells, ShardInfo, SHARD_KEY};
use scinterp_engine::store::{ActDtype, OpenedStore, StoreManifest, StoreWriter, STORE_FORMAT};
use scinterp_models::token_store::hash_of;
use serde::Serialize;
use serde_json::json;

use scinterp_engine::device::DeviceChoice;

use scinterp_models::LoadedModel;

use crate::forward::{load_model, make_forward, parse_hooks, read_cells, resolve_device, GpuPrecisionArg};

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
    #[arg(long)]
    json: bool,
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
    /// Backend: `auto`, `cpu` or `cuda`, as for `scinterp forward`.
    #[arg(long, default_value = "auto")]
    pub(crate) device: DeviceChoice,
    /// With `--device cuda`: `bf16` (default) or `f32` (exact f32 GEMMs: the parity mode).
    #[arg(long, default_value = "bf16")]
    pub(crate) gpu_precision: GpuPrecisionArg,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Extract only shard i of n (`0/4` … `3/4`): a run of whole batches of the unsharded run; join
    /// the shard stores with `scinterp extract merge`, which gives the unsharded store byte for byte.
    #[arg(long, value_parser = parse_shard)]
    pub(crate) shard: Option<(usize, usize)>,
    /// Testing: stop after N batches are written, before the last is checkpointed (as a kill there would).
    #[arg(long, hide = true)]
    pub(crate) stop_after_batches: Option<usize>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DtypeArg {
    F16,
    F32,
}

#[derive(Debug, Serialize)]
pub struct ExtractSummary {
    pub(crate) out: String,
    pub(crate) hooks: Vec<String>,
    pub(crate) n_cells: usize,
    pub(crate) n_rows: usize,
    /// Cells that were already in the store when this run started.
    pub(crate) resumed_from_cell: usize,
    pub(crate) cells_run: usize,
    pub(crate) tokens_run: usize,
    pub(crate) seconds: f64,
    pub(crate) cells_per_second: f64,
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

pub fn run(cli: ExtractCli) -> Result<()> {
    let args = match (cli.command, cli.run) {
        (Some(ExtractCommand::Merge(m)), _) => return merge(m),
        (None, Some(r)) => r,
        (None, None) => {
            bail!("nothing to do: give the extraction's arguments, or use `scinterp extract merge …`")
        }
    };
    let json = args.json;
    if let Some(summary) = extract_store(args)? {
        if json {
            println!("{}", serde_json::to_string(&summary)?);
        }
    }
    Ok(())
}

fn merge(args: MergeArgs) -> Result<()> {
    let stats = merge_shards(&args.shards, &args.out)
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
    if args.json {
        println!(
            "{}",
            json!({
                "out": args.out.display().to_string(),
                "n_shards": stats.n_shards,
                "n_cells": stats.n_cells,
                "n_rows": stats.n_rows,
                "resumed_from_cell": stats.resumed_from_cell,
                "already_complete": stats.already_complete,
            })
        );
    }
    Ok(())
}

/// Extracts into the store (or finishes it); `None` when it was already complete.
pub fn extract_store(args: ExtractArgs) -> Result<Option<ExtractSummary>> {
    let backend = resolve_device(args.device)?;
    if !args.input.is_dir() {
        bail!(
            "--input {}: not a token store folder; make one with `scinterp tokenize`",
            args.input.display()
        );
    }
    let model = load_model(&args.model, false)?;
    let cells = read_cells(&args.input, &model)?;
    let hooks = parse_hooks(&args.hooks, model.encoder.dims().n_layers)?;
    let forward = make_forward(backend, model.encoder.as_ref(), args.gpu_precision)?;
    if hooks.is_empty() {
        bail!("--hooks names no hook; give a comma list such as blocks.5.hook_resid_post, or `all`");
    }
    let special_ids = special_token_ids(&args.input, &model)?;
    let total_cells = cells.tokens.len();
    let range = match args.shard {
        None => 0..total_cells,
        Some((index, count)) => {
            let lengths: Vec<usize> = cells.tokens.iter().map(Vec::len).collect();
            shard_cells(&lengths, args.max_batch_tokens.max(1), index, count)
                .map_err(|e| anyhow::anyhow!("--shard {index}/{count} over {}: {e}", args.input.display()))?
        }
    };
    let job = ExtractCells {
        tokens: &cells.tokens[range.clone()],
        values: cells.values.as_deref().map(|v| &v[range.clone()]),
        special_ids: &special_ids,
        include_special: args.include_special,
    };
    let rows = job.row_index();
    if rows.is_empty() {
        bail!(
            "{}: no position to store (every token is special); pass --include-special",
            args.input.display()
        );
    }
    let manifest = StoreManifest {
        format: STORE_FORMAT.into(),
        format_version: 1,
        model: model_identity(&args.model, &model)?,
        source: {
            let mut source = source_identity(&args.input)?;
            if let Some((index, count)) = args.shard {
                // A shard store numbers its cells from 0; this places them for `extract merge`.
                let info = ShardInfo {
                    index,
                    count,
                    first_cell: range.start,
                    end_cell: range.end,
                    total_cells,
                };
                source[SHARD_KEY] = serde_json::to_value(info)?;
            }
            source
        },
        hooks: hooks.iter().map(ToString::to_string).collect(),
        dtype: match args.dtype {
            DtypeArg::F16 => ActDtype::F16,
            DtypeArg::F32 => ActDtype::F32,
        },
        d_model: model.encoder.dims().d_model,
        include_special: args.include_special,
        n_cells: range.len(),
        n_rows: rows.len(),
        max_batch_tokens: args.max_batch_tokens.max(1),
        cells_complete: 0,
        rows_complete: 0,
        complete: false,
        scinterp_version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut writer = match StoreWriter::open(&args.out, manifest, &rows)? {
        OpenedStore::AlreadyComplete(m) => {
            tracing::info!(
                "{} is already complete ({} cells, {} rows); nothing to do",
                args.out.display(),
                m.n_cells,
                m.n_rows
            );
            return Ok(None);
        }
        OpenedStore::Writer(w) => w,
    };
    let resumed_from = writer.manifest().cells_complete;
    if resumed_from > 0 {
        tracing::info!(
            "resuming {} at cell {resumed_from} of {}",
            args.out.display(),
            range.len()
        );
    }
    let bar = crate::progress::bar(range.len() as u64, resumed_from as u64, "cells");
    let stats = extract(
        model.encoder.as_ref(),
        forward.as_ref(),
        &job,
        &hooks,
        &mut writer,
        args.stop_after_batches,
        &mut |p| bar.set_position(p.cells_done as u64),
    )
    .with_context(|| format!("extracting into {}", args.out.display()))?;
    crate::progress::finish(&bar);
    let summary = ExtractSummary {
        out: args.out.display().to_string(),
        hooks: hooks.iter().map(ToString::to_string).collect(),
        n_cells: range.len(),
        n_rows: rows.len(),
        resumed_from_cell: resumed_from,
        cells_run: stats.cells_run,
        tokens_run: stats.tokens_run,
        seconds: stats.seconds,
        cells_per_second: stats.cells_run as f64 / stats.seconds.max(1e-9),
    };
    tracing::info!(
        "{} cells ({} tokens) in {:.2} s ({:.1} cells/s); {} rows × {} hooks in {}",
        summary.cells_run,
        summary.tokens_run,
        summary.seconds,
        summary.cells_per_second,
        summary.n_rows,
        hooks.len(),
        args.out.display()
    );
    Ok(Some(summary))
}

/// Token ids whose positions are not genes, for cells tokenized as the store at `store` says (the
/// registry knows them: Geneformer V2 `<pad> <mask> <cls> <eos>`, V1 `<pad> <mask>`; scGPT `<cls>`
/// and `<pad>`).
pub fn special_token_ids(store: &Path, model: &LoadedModel) -> Result<Vec<u32>> {
    let special = model.special_tokens(|| scinterp_models::token_store::TokenStore::read_manifest(store))?;
    Ok(special.ids())
}

/// The model as the store records it: folder, kind, weights file and its BLAKE3 hash.
fn model_identity(dir: &Path, model: &LoadedModel) -> Result<serde_json::Value> {
    let weights = &model.weights;
    let hash = hash_of(weights).with_context(|| format!("hashing {}", weights.display()))?;
    Ok(json!({
        "path": absolute(dir),
        "kind": model.name,
        "weights": absolute(weights),
        "weights_blake3": hash,
    }))
}

/// The cells as the store records them: token store folder and the hashes of its arrays.
fn source_identity(dir: &Path) -> Result<serde_json::Value> {
    let tokens = dir.join("tokens.npy");
    let offsets = dir.join("offsets.npy");
    Ok(json!({
        "path": absolute(dir),
        "tokens_blake3": hash_of(&tokens).with_context(|| format!("hashing {}", tokens.display()))?,
        "offsets_blake3": hash_of(&offsets).with_context(|| format!("hashing {}", offsets.display()))?,
    }))
}

/// A path as recorded in manifests: absolute when it exists.
pub fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
