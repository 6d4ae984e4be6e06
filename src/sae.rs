//! `scinterp sae train|encode|eval|synth`: TopK sparse autoencoders on activation stores. The work
//! is `scinterp_engine::sae::pipeline`; here are the flags and the printing.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use scinterp_engine::sae::pipeline::{
    encode_store, eval_on_store, synth_store, EncodeRequest, EvalRequest, SpliceModel, SynthRequest,
    TrainRequest,
};
use scinterp_engine::sae::synth::SynthSpec;
use scinterp_export::steps;

use crate::args::{print_json, DeviceArgs};
use crate::progress::Bars;

#[derive(Args, Debug)]
pub struct SaeArgs {
    #[command(subcommand)]
    command: SaeCommand,
}

#[derive(Subcommand, Debug)]
enum SaeCommand {
    /// Train a TopK SAE on one hook of an activation store; writes an SAELens folder.
    Train(TrainArgs),
    /// Write the top-k codes (indices and values) of every row of a store.
    Encode(EncodeArgs),
    /// Measure an SAE on a store: FVU, L0, dead latents, and the model's loss with the SAE spliced in.
    Eval(EvalArgs),
    /// Write an activation store of synthetic rows made from a known dictionary (ground truth).
    Synth(SynthArgs),
}

pub fn run(args: SaeArgs, json: bool) -> Result<()> {
    match args.command {
        SaeCommand::Train(a) => run_train(a, json),
        SaeCommand::Encode(a) => run_encode(a),
        SaeCommand::Eval(a) => run_eval(a, json),
        SaeCommand::Synth(a) => run_synth(a),
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Activation store made by `scinterp extract` (or `scinterp sae synth`).
    #[arg(long)]
    pub(crate) acts: PathBuf,
    /// Hook to train on (one of the store's).
    #[arg(long)]
    pub(crate) hook: String,
    /// Number of latents.
    #[arg(long)]
    pub(crate) d_sae: usize,
    /// Active latents per row.
    #[arg(long)]
    pub(crate) k: usize,
    /// SAE folder to write (SAELens layout).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Training tokens (rows); default 5 passes over the training rows and, where the store is large
    /// enough, at least 1,000 steps (at most 100 passes).
    #[arg(long)]
    pub(crate) tokens: Option<u64>,
    #[arg(long, default_value_t = 4096)]
    pub(crate) batch_size: usize,
    /// Peak learning rate (default 2e-4 / sqrt(d_sae / 2^14), Gao et al.).
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Warm-up steps (default 5 % of the steps, at most 1,000).
    #[arg(long)]
    pub(crate) warmup_steps: Option<usize>,
    /// AuxK latents (default d_in / 2).
    #[arg(long)]
    pub(crate) aux_k: Option<usize>,
    #[arg(long, default_value_t = 1.0 / 32.0)]
    pub(crate) aux_coef: f32,
    /// Tokens without firing after which a latent counts as dead (and AuxK trains it); default a
    /// tenth of the run, at least 4 batches, at most 10 M.
    #[arg(long)]
    pub(crate) dead_after_tokens: Option<u64>,
    /// Train on the raw scale instead of rows scaled to a mean norm of sqrt(d_in).
    #[arg(long)]
    pub(crate) no_normalize: bool,
    /// Fraction of cells held out for evaluation.
    #[arg(long, default_value_t = 0.1)]
    pub(crate) holdout: f64,
    /// Rows in the shuffle buffer (bounds memory: rows × d_in × 4 bytes).
    #[arg(long, default_value_t = 1 << 17)]
    pub(crate) shuffle_buffer_rows: usize,
    /// Held-out cells run through the model to measure the spliced loss (0: skip).
    #[arg(long, default_value_t = 16)]
    pub(crate) splice_cells: usize,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Replace an existing SAE folder.
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Where the optimiser steps run (with `cuda`: every parameter and gradient on GPU 0; needs
    /// libcublasLt).
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
    /// Leave out rows holding inf/NaN (counted in the report) instead of refusing the store.
    #[arg(long)]
    pub(crate) skip_nonfinite_rows: bool,
    /// Save the training state every this many steps (beside --out, in `.<name>.partial/`), so that a
    /// killed run resumes when rerun with the same settings; 0: never.
    #[arg(long, default_value_t = 200)]
    pub(crate) checkpoint_every: usize,
    /// Testing: stop right after the checkpoint of this step, as a kill there would.
    #[arg(long, hide = true)]
    pub(crate) stop_after_steps: Option<usize>,
}

fn run_train(args: TrainArgs, json: bool) -> Result<()> {
    let req = TrainRequest {
        acts: args.acts,
        hook: args.hook,
        d_sae: args.d_sae,
        k: args.k,
        out: args.out,
        tokens: args.tokens,
        batch_size: args.batch_size,
        lr: args.lr,
        warmup_steps: args.warmup_steps,
        aux_k: args.aux_k,
        aux_coef: args.aux_coef,
        dead_after_tokens: args.dead_after_tokens,
        normalize: !args.no_normalize,
        holdout: args.holdout,
        shuffle_buffer_rows: args.shuffle_buffer_rows,
        splice_cells: args.splice_cells,
        seed: args.seed,
        overwrite: args.overwrite,
        backend: args.device.backend()?,
        gpu_precision: args.device.precision(),
        skip_nonfinite_rows: args.skip_nonfinite_rows,
        checkpoint_every_steps: args.checkpoint_every,
        stop_after_steps: args.stop_after_steps,
    };
    print_json(json, &steps::train_sae(&req, &mut Bars::default())?)
}

/// An SAE and the activation store it reads (shared by `encode` and `eval`).
#[derive(Args, Debug)]
struct SaeOnStore {
    /// SAE folder (SAELens layout).
    #[arg(long)]
    sae: PathBuf,
    /// Activation store.
    #[arg(long)]
    acts: PathBuf,
    /// Hook of the store to read (default: the SAE's hook_name).
    #[arg(long)]
    hook: Option<String>,
}

#[derive(Args, Debug)]
struct EncodeArgs {
    #[command(flatten)]
    input: SaeOnStore,
    /// Output folder: indices.npy (int16 when d_sae ≤ 32,767, else int32) and values.npy (f16),
    /// both [n_rows, k], each row's latents by descending value.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    overwrite: bool,
    /// Where the rows are encoded (with `cuda`: the SAE uploaded once; centring, encoder GEMM and
    /// top-k on GPU 0; `--gpu-precision f32` gives the CPU's codes).
    #[command(flatten)]
    device: DeviceArgs,
}

fn run_encode(args: EncodeArgs) -> Result<()> {
    let backend = args.device.backend()?;
    let req = EncodeRequest {
        sae: args.input.sae.clone(),
        acts: args.input.acts.clone(),
        hook: args.input.hook.clone(),
        out: args.out.clone(),
        overwrite: args.overwrite,
        backend,
        gpu_precision: args.device.precision(),
    };
    let mut bar = None;
    let report = encode_store(&req, &mut |done, total| {
        bar.get_or_insert_with(|| crate::progress::bar(total as u64, 0, "rows"))
            .set_position(done as u64);
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    tracing::info!(
        "encoded {} rows of {} from {} ({} cells) into {}",
        report.rows,
        report.hook,
        args.input.acts.display(),
        report.cells,
        report.out
    );
    Ok(())
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[command(flatten)]
    input: SaeOnStore,
    /// Rows to measure on: `heldout` (the cells the SAE's training held out; needs heldout_cells.npy
    /// in the SAE folder) or `all`.
    #[arg(long, default_value = "all")]
    rows: String,
    /// Planted dictionary (`dictionary.npy` of a synthetic store): also report how many atoms the
    /// decoder recovers at cosine ≥ 0.9.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Cells run through the model to measure the spliced loss (0: skip).
    #[arg(long, default_value_t = 16)]
    splice_cells: usize,
}

fn run_eval(args: EvalArgs, json: bool) -> Result<()> {
    let splicer = steps::splice_model(&args.input.acts, args.splice_cells)?;
    let req = EvalRequest {
        sae: args.input.sae.clone(),
        acts: args.input.acts.clone(),
        hook: args.input.hook.clone(),
        rows: args.rows.clone(),
        truth: args.truth.clone(),
        splice_cells: args.splice_cells,
    };
    let report = eval_on_store(&req, splicer.as_ref().map(|s| s as &dyn SpliceModel))?;
    tracing::info!(
        "{} rows: FVU {:.4}, L0 {:.1}, dead {} ({:.2} %)",
        report.rows.rows,
        report.rows.fvu,
        report.rows.l0,
        report.rows.dead_latents,
        100.0 * report.rows.dead_fraction
    );
    if let Some(r) = &report.recovery {
        tracing::info!(
            "recovered {} of {} planted atoms at cosine ≥ {} (mean best cosine {:.3})",
            r.recovered,
            r.atoms,
            r.threshold,
            r.mean_best_cosine
        );
    }
    print_json(json, &report)
}

#[derive(Args, Debug)]
struct SynthArgs {
    /// Width of the rows.
    #[arg(long)]
    d_in: usize,
    /// Planted atoms (default 4 × d_in).
    #[arg(long)]
    atoms: Option<usize>,
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Atoms active per row.
    #[arg(long, default_value_t = 4)]
    active: usize,
    /// Expected norm of the Gaussian noise added to each row.
    #[arg(long, default_value_t = 0.05)]
    noise: f64,
    /// Rows per pseudo-cell (rows.npy's cell column; the held-out split is by cell).
    #[arg(long, default_value_t = 100)]
    cell_rows: usize,
    /// Hook name the rows are stored under.
    #[arg(long, default_value = "blocks.0.hook_resid_post")]
    hook: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Activation store folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out store (only once the new one is complete); without it one is refused.
    #[arg(long)]
    overwrite: bool,
}

fn run_synth(args: SynthArgs) -> Result<()> {
    let spec = SynthSpec {
        d: args.d_in,
        atoms: args.atoms.unwrap_or(4 * args.d_in),
        active: args.active,
        noise: args.noise,
        seed: args.seed,
    };
    let req = SynthRequest {
        spec: spec.clone(),
        rows: args.rows,
        cell_rows: args.cell_rows,
        hook: args.hook.clone(),
        out: args.out.clone(),
        overwrite: args.overwrite,
    };
    let report = synth_store(&req)?;
    tracing::info!(
        "{} rows ({} cells) of width {} from {} planted atoms ({} active per row) in {}",
        report.rows,
        report.cells,
        spec.d,
        spec.atoms,
        spec.active,
        args.out.display()
    );
    Ok(())
}
