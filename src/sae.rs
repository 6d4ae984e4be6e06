//! `scinterp sae train|encode|eval|synth`: TopK sparse autoencoders on activation stores.

use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use half::f16;
use half::slice::HalfFloatSliceExt;
use scinterp_engine::cuda::{GpuSaeEncoder, GpuSaeStepper};
use scinterp_engine::device::{Backend, DeviceChoice};
use scinterp_engine::formats::sae::{
    HoldoutRecord, NormalizationRecord, SaeMetadata, SaeTrainingRecord, SAE_LENS_VERSION,
};
use scinterp_engine::npy::{header_bytes, read_npy_bytes, write_npy, NpyDtype};
use scinterp_engine::sae::io::{save as save_sae, SaeFolder};
use scinterp_engine::sae::splice::{splice_losses, SpliceLosses};
use scinterp_engine::sae::synth::{recovery, Recovery, SynthSpec};
use scinterp_engine::sae::train::{
    evaluate, push_range, split_by_cell, train_with, CpuStepper, EvalStats, Stepper, TrainConfig,
    TrainSummary,
};
use scinterp_engine::sae::TopKSae;
use scinterp_engine::store::{
    ActDtype, ActStore, HookArray, OpenedStore, StoreManifest, StoreWriter, STORE_FORMAT,
};
use scinterp_engine::{HookPoint, Matrix, PackedBatch};
use serde::Serialize;
use serde_json::json;

use crate::extract::absolute;
use crate::forward::{load_model, read_cells, resolve_device, GpuPrecisionArg};
use scinterp_models::registry::PretrainingLoss;

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

pub fn run(args: SaeArgs) -> Result<()> {
    match args.command {
        SaeCommand::Train(a) => run_train(a),
        SaeCommand::Encode(a) => run_encode(a),
        SaeCommand::Eval(a) => run_eval(a),
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
    /// Training tokens (rows); default one pass over the training rows.
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
    /// Tokens without firing after which a latent counts as dead.
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) dead_after_tokens: u64,
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
    /// Where the optimiser steps run: `auto` (the CPU until the GPU trainer is validated on a GPU),
    /// `cpu`, or `cuda` (every parameter and gradient on GPU 0; needs libcublasLt).
    #[arg(long, default_value = "auto")]
    pub(crate) device: DeviceChoice,
    /// With `--device cuda`: the encoder GEMM in `bf16` (default; f32 accumulation) or exact `f32`.
    #[arg(long, default_value = "bf16")]
    pub(crate) gpu_precision: GpuPrecisionArg,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Serialize)]
pub struct TrainReport {
    pub(crate) out: String,
    pub(crate) hook: String,
    pub(crate) d_in: usize,
    pub(crate) d_sae: usize,
    pub(crate) k: usize,
    pub(crate) train_rows: usize,
    pub(crate) heldout_cells: usize,
    #[serde(flatten)]
    pub(crate) summary: TrainSummary,
    pub(crate) heldout: EvalStats,
    pub(crate) spliced: Option<SpliceLosses>,
}

fn run_train(args: TrainArgs) -> Result<()> {
    let json = args.json;
    let report = train_sae(args)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// Trains, evaluates and writes the SAE folder.
pub fn train_sae(args: TrainArgs) -> Result<TrainReport> {
    if args.out.join("cfg.json").exists() && !args.overwrite {
        bail!(
            "{} already holds an SAE; pass --overwrite or choose another --out",
            args.out.display()
        );
    }
    if !(0.0..1.0).contains(&args.holdout) {
        bail!("--holdout {} must be in [0, 1)", args.holdout);
    }
    let store = ActStore::open(&args.acts)?;
    let hook = store.hook(&args.hook)?;
    let rows = store.rows()?;
    let split = split_by_cell(&rows, args.seed, args.holdout);
    if split.train_rows == 0 {
        bail!(
            "{}: no training rows (every cell was held out)",
            args.acts.display()
        );
    }
    if args.holdout > 0.0 && split.heldout_cells.is_empty() {
        bail!(
            "{}: no cell was held out ({} cells); use more cells or --holdout 0",
            args.acts.display(),
            store.manifest.n_cells
        );
    }
    let d = hook.d();
    let tokens = args.tokens.unwrap_or(split.train_rows as u64);
    let mut cfg = TrainConfig::new(d, args.d_sae, args.k, tokens);
    cfg.batch_size = args.batch_size;
    cfg.seed = args.seed;
    cfg.aux_coef = args.aux_coef;
    cfg.dead_after_tokens = args.dead_after_tokens;
    cfg.normalize = !args.no_normalize;
    cfg.shuffle_buffer_rows = args.shuffle_buffer_rows.max(args.batch_size);
    if let Some(lr) = args.lr {
        cfg.lr = lr;
    }
    if let Some(w) = args.warmup_steps {
        cfg.warmup_steps = w;
    }
    if let Some(a) = args.aux_k {
        cfg.aux_k = a;
    }
    let steps = tokens.div_ceil(cfg.batch_size as u64);
    tracing::info!(
        "training {}→{} (k {}) on {} ({} training rows, {} held-out cells), {tokens} tokens in {steps} steps",
        d,
        args.d_sae,
        args.k,
        args.hook,
        split.train_rows,
        split.heldout_cells.len()
    );
    let backend = resolve_device(args.device)?;
    let precision = args.gpu_precision.into();
    let make_stepper = |sae: TopKSae| -> Result<Box<dyn Stepper>, String> {
        Ok(match backend {
            Backend::Cpu => Box::new(CpuStepper::new(sae)),
            Backend::Cuda => Box::new(GpuSaeStepper::new(sae, &cfg, precision)?),
        })
    };
    let bar = crate::progress::bar(steps, 0, "steps");
    let (sae, summary) = train_with(&hook, &split.train, &cfg, &make_stepper, &mut |step, _, nmse| {
        bar.set_position(step as u64);
        if step % 10 == 0 {
            bar.set_message(format!("nmse {nmse:.4}"));
        }
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", args.acts.display()))?;
    bar.finish_and_clear();
    let heldout = evaluate(&sae, &hook, &split.heldout);
    let spliced = if args.splice_cells > 0 {
        spliced_loss_on_store(&store, &args.hook, &sae, &split.heldout_cells, args.splice_cells)?
    } else {
        None
    };
    let hook_point = HookPoint::parse(&args.hook).ok();
    let metadata = SaeMetadata {
        sae_lens_version: SAE_LENS_VERSION,
        hook_name: args.hook.clone(),
        hook_layer: hook_point.and_then(|h| h.layer()),
        model_name: store.manifest.model.get("path").cloned(),
        scinterp: SaeTrainingRecord {
            version: env!("CARGO_PKG_VERSION"),
            activation_store: absolute(&args.acts),
            training: &cfg,
            summary: &summary,
            normalization: NormalizationRecord {
                kind: if cfg.normalize {
                    "mean row norm scaled to sqrt(d_in) while training"
                } else {
                    "none"
                },
                scale: summary.input_scale,
                folded_into: "b_enc and b_dec divided by the scale (codes in raw units, decoder rows unit norm)",
            },
            holdout: HoldoutRecord {
                rule: "cell c is held out iff unit(splitmix64(splitmix64(seed ^ 0x48454C444F5554AA) ^ c)) < fraction",
                seed: args.seed,
                fraction: args.holdout,
                cells: split.heldout_cells.len(),
                file: "heldout_cells.npy",
            },
            heldout: &heldout,
            spliced: &spliced,
        },
    };
    let metadata = serde_json::to_value(&metadata)?;
    save_sae(&args.out, &sae, &metadata)?;
    let cells: Vec<i64> = split.heldout_cells.iter().map(|&c| c as i64).collect();
    let cells_path = args.out.join("heldout_cells.npy");
    write_npy(
        &cells_path,
        NpyDtype::I64,
        &[cells.len()],
        bytemuck::cast_slice(&cells),
    )
    .with_context(|| format!("writing {}", cells_path.display()))?;
    let report = TrainReport {
        out: args.out.display().to_string(),
        hook: args.hook.clone(),
        d_in: d,
        d_sae: args.d_sae,
        k: args.k,
        train_rows: split.train_rows,
        heldout_cells: split.heldout_cells.len(),
        summary,
        heldout,
        spliced,
    };
    tracing::info!(
        "{} tokens in {:.1} s ({:.0} tokens/s); held-out FVU {:.4}, L0 {:.1}, dead {:.2} %; wrote {}",
        report.summary.tokens_trained,
        report.summary.train_seconds,
        report.summary.tokens_per_second,
        report.heldout.fvu,
        report.heldout.l0,
        100.0 * report.heldout.dead_fraction,
        args.out.display()
    );
    if let Some(s) = &report.spliced {
        tracing::info!(
            "model loss: clean {:.4}, SAE spliced {:.4}, zero-ablated {:.4} (loss recovered {:.3})",
            s.clean,
            s.spliced,
            s.zero_ablated,
            s.loss_recovered
        );
    }
    Ok(report)
}

/// The model's loss on up to `n_cells` of `cells` with the SAE spliced in at `hook`, when the store
/// records a model and token store that still exist.
fn spliced_loss_on_store(
    store: &ActStore,
    hook_name: &str,
    sae: &TopKSae,
    cells: &[u64],
    n_cells: usize,
) -> Result<Option<SpliceLosses>> {
    let model_dir = store
        .manifest
        .model
        .get("path")
        .and_then(|v| v.as_str())
        .map(PathBuf::from);
    let token_dir = store
        .manifest
        .source
        .get("path")
        .and_then(|v| v.as_str())
        .map(PathBuf::from);
    let (Some(model_dir), Some(token_dir)) = (model_dir, token_dir) else {
        tracing::info!("the store records no model (synthetic rows?): no spliced loss");
        return Ok(None);
    };
    if !model_dir.is_dir() || !token_dir.is_dir() {
        tracing::warn!(
            "the store's model ({}) or token store ({}) is gone: no spliced loss",
            model_dir.display(),
            token_dir.display()
        );
        return Ok(None);
    }
    let model = load_model(&model_dir, true)?;
    let input = read_cells(&token_dir, &model)?;
    let hook = HookPoint::parse(hook_name)?;
    let chosen: Vec<usize> = cells.iter().take(n_cells).map(|&c| c as usize).collect();
    if chosen.is_empty() {
        return Ok(None);
    }
    let tokens: Vec<Vec<u32>> = chosen.iter().map(|&c| input.tokens[c].clone()).collect();
    let special = crate::extract::special_token_ids(&token_dir, &model)?;
    // The rows the SAE reads: the positions the store kept (genes, unless it kept specials too).
    let spliced_rows: Vec<usize> = tokens
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, t)| store.manifest.include_special || !special.contains(t))
        .map(|(r, _)| r)
        .collect();
    let gene_rows: Vec<usize> = tokens
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, t)| !special.contains(t))
        .map(|(r, _)| r)
        .collect();
    let mut batch_tokens = tokens.clone();
    let mut labels: Vec<(usize, u32)> = Vec::new();
    if let PretrainingLoss::MaskedLm { mask_id } = model.loss {
        // Its pretraining loss: cross-entropy of the true gene at 15 % of gene positions (seeded),
        // replaced by <mask>.
        let mut rng = scinterp_engine::rng::Rng::new(0, 0x3A5C);
        let flat_len = batch_tokens.iter().map(Vec::len).sum::<usize>();
        let mut row_of = Vec::with_capacity(flat_len);
        for (c, cell) in batch_tokens.iter().enumerate() {
            row_of.extend((0..cell.len()).map(|p| (c, p)));
        }
        for &r in &gene_rows {
            if rng.uniform() < 0.15 {
                let (c, p) = row_of[r];
                labels.push((r, batch_tokens[c][p]));
                batch_tokens[c][p] = mask_id;
            }
        }
    }
    let mut batch = PackedBatch::from_cells(&batch_tokens)?;
    let mut targets = Vec::new();
    if let Some(values) = &input.values {
        targets = chosen.iter().flat_map(|&c| values[c].iter().copied()).collect();
        batch = batch.with_values(targets.clone())?;
    }
    let kind = model.loss;
    let loss = move |head: &Matrix| -> f64 {
        match kind {
            PretrainingLoss::MaskedLm { .. } => {
                let total: f64 = labels
                    .iter()
                    .map(|&(r, label)| {
                        let logits = head.row(r);
                        let max = logits.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
                        let lse = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
                        lse - logits[label as usize] as f64
                    })
                    .sum();
                total / labels.len().max(1) as f64
            }
            // scGPT: squared error of the expression prediction (first head column) at gene positions.
            PretrainingLoss::MaskedExpression => {
                gene_rows
                    .iter()
                    .map(|&r| (head.row(r)[0] as f64 - targets[r] as f64).powi(2))
                    .sum::<f64>()
                    / gene_rows.len().max(1) as f64
            }
        }
    };
    let losses = splice_losses(model.encoder.as_ref(), &batch, hook, sae, &spliced_rows, &loss)?;
    Ok(Some(losses))
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
    /// `auto` (the CPU until the GPU path is validated on a GPU), `cpu`, or `cuda` (the SAE uploaded
    /// once; centring, encoder GEMM and top-k on GPU 0).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// With `--device cuda`: the encoder GEMM in `bf16` (f32 accumulation) or exact `f32` (default, so
    /// that the codes match the CPU's).
    #[arg(long, default_value = "f32")]
    gpu_precision: GpuPrecisionArg,
}

/// Opens the SAE, the store and the hook, and checks that their widths agree.
fn open_pair(pair: &SaeOnStore) -> Result<(SaeFolder, ActStore, HookArray, String)> {
    Ok(scinterp_engine::sae::io::open_sae_on_store(
        &pair.sae,
        &pair.acts,
        pair.hook.as_deref(),
    )?)
}

fn run_encode(args: EncodeArgs) -> Result<()> {
    let (folder, store, array, hook) = open_pair(&args.input)?;
    if args.out.exists() {
        if !args.overwrite {
            bail!(
                "{} exists; pass --overwrite or choose another --out",
                args.out.display()
            );
        }
        std::fs::remove_dir_all(&args.out).with_context(|| format!("removing {}", args.out.display()))?;
    }
    let sae = &folder.sae;
    let n = array.n_rows();
    let tmp = args.out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let wide = sae.d_sae > i16::MAX as usize;
    let index_dtype = if wide { NpyDtype::I32 } else { NpyDtype::I16 };
    let open = |name: &str, dtype: NpyDtype| -> Result<std::io::BufWriter<std::fs::File>> {
        let path = tmp.join(name);
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        w.write_all(&header_bytes(dtype, &[n, sae.k]))?;
        Ok(w)
    };
    let mut indices_out = open("indices.npy", index_dtype)?;
    let mut values_out = open("values.npy", NpyDtype::F16)?;
    // The CPU encoder, or the SAE uploaded once to the GPU.
    let gpu = match resolve_device(args.device)? {
        Backend::Cpu => None,
        Backend::Cuda => {
            Some(GpuSaeEncoder::new(sae, args.gpu_precision.into()).map_err(anyhow::Error::msg)?)
        }
    };
    let bar = crate::progress::bar(n as u64, 0, "rows");
    const CHUNK: usize = 8192;
    let mut x = vec![0.0f32; CHUNK * sae.d_in];
    let mut start = 0;
    while start < n {
        let rows = (n - start).min(CHUNK);
        let x = &mut x[..rows * sae.d_in];
        array.read_rows(start, x);
        let codes = match &gpu {
            Some(g) => g.encode(x).map_err(anyhow::Error::msg)?,
            None => sae.encode(x),
        };
        if wide {
            let idx: Vec<i32> = codes.indices.iter().map(|&i| i as i32).collect();
            indices_out.write_all(bytemuck::cast_slice(&idx))?;
        } else {
            let idx: Vec<i16> = codes.indices.iter().map(|&i| i as i16).collect();
            indices_out.write_all(bytemuck::cast_slice(&idx))?;
        }
        let mut vals = vec![f16::ZERO; codes.values.len()];
        vals.convert_from_f32_slice(&codes.values);
        values_out.write_all(bytemuck::cast_slice(&vals))?;
        start += rows;
        bar.set_position(start as u64);
    }
    bar.finish_and_clear();
    for w in [indices_out, values_out] {
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
    }
    let manifest = json!({
        "format": "scinterp-sae-codes",
        "format_version": 1,
        "sae": absolute(&args.input.sae),
        "activation_store": absolute(&args.input.acts),
        "hook_name": hook,
        "n_rows": n,
        "k": sae.k,
        "d_sae": sae.d_sae,
        "rows": "row r of indices.npy / values.npy is row r of the store (rows.npy gives its cell, position, token)",
    });
    scinterp_engine::formats::atomic_write(
        &tmp.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("moving {} into place", tmp.display()))?;
    scinterp_engine::formats::atomic::sync_parent(&args.out);
    tracing::info!(
        "encoded {n} rows of {hook} from {} ({} cells) into {}",
        args.input.acts.display(),
        store.manifest.n_cells,
        args.out.display()
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
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct EvalReport {
    hook: String,
    rows: EvalStats,
    spliced: Option<SpliceLosses>,
    recovery: Option<Recovery>,
}

fn run_eval(args: EvalArgs) -> Result<()> {
    let (folder, store, array, hook) = open_pair(&args.input)?;
    let rows = store.rows()?;
    let (ranges, cells): (Vec<Range<usize>>, Vec<u64>) = match args.rows.as_str() {
        "all" => (
            std::iter::once(0..array.n_rows()).collect(),
            (0..store.manifest.n_cells as u64).collect(),
        ),
        "heldout" => {
            let path = args.input.sae.join("heldout_cells.npy");
            let (_, bytes) = read_npy_bytes(&path).map_err(|e| anyhow::anyhow!(e))?;
            let cells: Vec<i64> = bytemuck::pod_collect_to_vec(&bytes);
            let wanted: std::collections::HashSet<i64> = cells.iter().copied().collect();
            let mut ranges = Vec::new();
            for (r, row) in rows.iter().enumerate() {
                if wanted.contains(&(row[0] as i64)) {
                    push_range(&mut ranges, r..r + 1);
                }
            }
            (ranges, cells.iter().map(|&c| c as u64).collect())
        }
        other => bail!("--rows {other}: expected `all` or `heldout`"),
    };
    let stats = evaluate(&folder.sae, &array, &ranges);
    let spliced = if args.splice_cells > 0 {
        spliced_loss_on_store(&store, &hook, &folder.sae, &cells, args.splice_cells)?
    } else {
        None
    };
    let recovery = match &args.truth {
        Some(path) => {
            let (header, bytes) = read_npy_bytes(path).map_err(|e| anyhow::anyhow!(e))?;
            if header.dtype != NpyDtype::F32 || header.shape.len() != 2 || header.shape[1] != folder.sae.d_in
            {
                bail!(
                    "{}: expected a float32 [atoms, {}] dictionary, found {:?} {:?}",
                    path.display(),
                    folder.sae.d_in,
                    header.dtype,
                    header.shape
                );
            }
            Some(recovery(
                &folder.sae,
                &bytemuck::pod_collect_to_vec::<u8, f32>(&bytes),
                0.9,
            ))
        }
        None => None,
    };
    let report = EvalReport {
        hook,
        rows: stats,
        spliced,
        recovery,
    };
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
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
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
    #[arg(long)]
    out: PathBuf,
}

fn run_synth(args: SynthArgs) -> Result<()> {
    let spec = SynthSpec {
        d: args.d_in,
        atoms: args.atoms.unwrap_or(4 * args.d_in),
        active: args.active,
        noise: args.noise,
        seed: args.seed,
    };
    spec.validate().map_err(|e| anyhow::anyhow!(e))?;
    if args.out.exists() {
        bail!("{} exists; choose another --out or remove it", args.out.display());
    }
    HookPoint::parse(&args.hook)?;
    let cell_rows = args.cell_rows.max(1);
    let n_cells = args.rows.div_ceil(cell_rows);
    let rows: Vec<[i32; 3]> = (0..args.rows)
        .map(|r| [(r / cell_rows) as i32, (r % cell_rows) as i32, 0])
        .collect();
    let manifest = StoreManifest {
        format: STORE_FORMAT.into(),
        format_version: 1,
        model: json!({"synthetic": &spec}),
        source: json!({"synthetic_rows": args.rows, "cell_rows": cell_rows}),
        hooks: vec![args.hook.clone()],
        dtype: ActDtype::F32,
        d_model: spec.d,
        include_special: false,
        n_cells,
        n_rows: rows.len(),
        max_batch_tokens: cell_rows,
        cells_complete: 0,
        rows_complete: 0,
        complete: false,
        scinterp_version: env!("CARGO_PKG_VERSION").into(),
    };
    let OpenedStore::Writer(mut writer) = StoreWriter::open(&args.out, manifest, &rows)? else {
        bail!("{} is already complete", args.out.display());
    };
    let dictionary = spec.dictionary();
    write_npy(
        &args.out.join("dictionary.npy"),
        NpyDtype::F32,
        &[spec.atoms, spec.d],
        bytemuck::cast_slice(&dictionary),
    )?;
    const CHUNK_CELLS: usize = 512;
    let mut cell = 0;
    while cell < n_cells {
        let end_cell = (cell + CHUNK_CELLS).min(n_cells);
        let (first, last) = (cell * cell_rows, (end_cell * cell_rows).min(args.rows));
        let mut data = vec![0.0f32; (last - first) * spec.d];
        spec.rows(&dictionary, first, &mut data);
        writer.write_rows(first, &[ActDtype::F32.encode(&data)])?;
        writer.checkpoint(end_cell, last)?;
        cell = end_cell;
    }
    tracing::info!(
        "{} rows ({} cells) of width {} from {} planted atoms ({} active per row) in {}",
        args.rows,
        n_cells,
        spec.d,
        spec.atoms,
        spec.active,
        args.out.display()
    );
    Ok(())
}
