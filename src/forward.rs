//! `scinterp forward`: a forward pass with hook points over ragged cells; writes one f32 tensor per hook
//! (`[n_cells, max_len, d_model]`, zeros after each cell's length), `lengths`, and optionally `logits`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use scinterp_engine::batching::group_by_token_budget;
use scinterp_engine::{run as run_encoder, Encoder, HookPlan, HookPoint, PackedBatch, Start};
use scinterp_models::checkpoint::{write_safetensors, TensorToWrite};
use scinterp_models::geneformer::{Geneformer, LoadOptions};
use scinterp_models::token_store::TokenStore;
use serde::Serialize;

use crate::tokens_json::read_input_ids;

#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Model folder: config.json with model.safetensors or pytorch_model.bin.
    #[arg(long)]
    model: PathBuf,
    /// Cells: token ids as JSON, {"input_ids": [[...], ...]} (one list per cell, lengths may differ), or a
    /// Geneformer token store made by `scinterp tokenize`.
    #[arg(long)]
    input: PathBuf,
    /// Hooks to capture: a comma list (e.g. hook_embed,blocks.3.hook_resid_post) or `all`.
    #[arg(long, default_value = "")]
    hooks: String,
    /// Also write the MLM logits, [n_cells, max_len, vocab].
    #[arg(long)]
    logits: bool,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Most tokens run together in one packed batch (bounds memory).
    #[arg(long, default_value_t = 16_384)]
    max_batch_tokens: usize,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    json: bool,
}

/// What a forward run did, for `--json` and the demo.
#[derive(Debug, Serialize)]
pub struct ForwardSummary {
    pub model: String,
    pub cells: usize,
    pub tokens: usize,
    pub hooks: Vec<String>,
    pub logits: bool,
    pub threads: usize,
    /// Seconds spent in the forward passes alone (no loading, no writing).
    pub forward_seconds: f64,
    pub tokens_per_second: f64,
    pub out: String,
}

pub fn run(args: ForwardArgs) -> Result<()> {
    let cells = read_cells(&args.input)?;
    let model = load_geneformer(&args.model, args.logits)?;
    let hooks = parse_hooks(&args.hooks, model.dims().n_layers)?;
    if hooks.is_empty() && !args.logits {
        bail!("nothing to write: give --hooks (a comma list or `all`) and/or --logits");
    }
    let mut summary = forward_to_file(
        &model,
        &cells,
        &hooks,
        args.logits,
        &args.out,
        args.max_batch_tokens,
    )
    .with_context(|| format!("forward pass on the cells of {}", args.input.display()))?;
    summary.model = args.model.display().to_string();
    tracing::info!(
        "{} cells, {} tokens in {:.3} s ({:.0} tokens/s); wrote {}",
        summary.cells,
        summary.tokens,
        summary.forward_seconds,
        summary.tokens_per_second,
        args.out.display()
    );
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// Token lists from a JSON file or a token store folder.
fn read_cells(input: &Path) -> Result<Vec<Vec<u32>>> {
    if !input.is_dir() {
        return read_input_ids(input);
    }
    let store = TokenStore::read(input)?;
    if store.manifest.tokenizer != "geneformer" {
        bail!(
            "{}: a {} token store; this forward pass runs Geneformer models (scGPT support comes with its model)",
            input.display(),
            store.manifest.tokenizer
        );
    }
    if store.cells.is_empty() {
        bail!("{}: the token store holds no cells", input.display());
    }
    Ok(store.cells)
}

pub fn load_geneformer(dir: &Path, with_head: bool) -> Result<Geneformer> {
    if !dir.is_dir() {
        bail!(
            "--model {}: not a folder; point it at a model folder holding config.json and model.safetensors \
             (or pytorch_model.bin)",
            dir.display()
        );
    }
    let started = Instant::now();
    let model = Geneformer::load(dir, LoadOptions { with_head })?;
    tracing::info!(
        "loaded {} ({} layers, d_model {}) in {:.2} s",
        model.weights_path().display(),
        model.dims().n_layers,
        model.dims().d_model,
        started.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// `all`, empty, or a comma list of hook names checked against the model depth.
pub fn parse_hooks(spec: &str, n_layers: usize) -> Result<Vec<HookPoint>> {
    let spec = spec.trim();
    if spec == "all" {
        return Ok(HookPoint::all(n_layers));
    }
    let mut hooks = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let hook = HookPoint::parse(name)?;
        hook.validate(n_layers)?;
        if !hooks.contains(&hook) {
            hooks.push(hook);
        }
    }
    hooks.sort();
    Ok(hooks)
}

/// Runs `model` over `cells` in token-budget batches and writes the padded outputs to `out`.
pub fn forward_to_file(
    model: &dyn Encoder,
    cells: &[Vec<u32>],
    hooks: &[HookPoint],
    logits: bool,
    out: &Path,
    max_batch_tokens: usize,
) -> Result<ForwardSummary> {
    let dims = model.dims().clone();
    let n_cells = cells.len();
    let lengths: Vec<usize> = cells.iter().map(Vec::len).collect();
    let max_len = lengths.iter().copied().max().unwrap_or(0);
    let tokens: usize = lengths.iter().sum();
    let vocab = dims.vocab_size;

    let per_cell_floats = max_len * (hooks.len() * dims.d_model + if logits { vocab } else { 0 });
    let bytes = (n_cells * per_cell_floats * 4) as f64;
    if bytes > 32.0 * (1u64 << 30) as f64 {
        bail!(
            "the output would take {:.1} GiB; capture fewer hooks or cells (for large runs, an activation \
             store is the right tool)",
            bytes / (1u64 << 30) as f64
        );
    }
    let mut hook_buffers: Vec<Vec<f32>> = hooks
        .iter()
        .map(|_| vec![0.0; n_cells * max_len * dims.d_model])
        .collect();
    let mut logit_buffer = if logits {
        vec![0.0f32; n_cells * max_len * vocab]
    } else {
        Vec::new()
    };

    let plan = HookPlan::new().capture_many(hooks.iter().copied());
    let mut forward_seconds = 0.0;
    for group in group_by_token_budget(&lengths, max_batch_tokens.max(1)) {
        let batch = PackedBatch::from_cells(&cells[group.clone()])?;
        let started = Instant::now();
        let mut output = run_encoder(model, &batch, &plan, Start::Embed, logits)?;
        forward_seconds += started.elapsed().as_secs_f64();
        for (hook, buffer) in hooks.iter().zip(hook_buffers.iter_mut()) {
            let captured = output
                .captures
                .take(*hook)
                .context("a requested hook was not captured")?;
            scatter_padded(
                &batch,
                group.start,
                max_len,
                captured.as_slice(),
                dims.d_model,
                buffer,
            );
        }
        if logits {
            let head = output.head.context("the model was loaded without its MLM head")?;
            scatter_padded(
                &batch,
                group.start,
                max_len,
                head.as_slice(),
                vocab,
                &mut logit_buffer,
            );
        }
    }

    let lengths_i64: Vec<i64> = lengths.iter().map(|&l| l as i64).collect();
    let mut tensors: Vec<TensorToWrite<'_>> = hooks
        .iter()
        .zip(&hook_buffers)
        .map(|(hook, buffer)| TensorToWrite {
            name: hook.to_string(),
            dtype: safetensors::Dtype::F32,
            shape: vec![n_cells, max_len, dims.d_model],
            bytes: bytemuck::cast_slice(buffer),
        })
        .collect();
    tensors.push(TensorToWrite {
        name: "lengths".into(),
        dtype: safetensors::Dtype::I64,
        shape: vec![n_cells],
        bytes: bytemuck::cast_slice(&lengths_i64),
    });
    if logits {
        tensors.push(TensorToWrite {
            name: "logits".into(),
            dtype: safetensors::Dtype::F32,
            shape: vec![n_cells, max_len, vocab],
            bytes: bytemuck::cast_slice(&logit_buffer),
        });
    }
    write_safetensors(out, &tensors, None)?;

    Ok(ForwardSummary {
        model: String::new(),
        cells: n_cells,
        tokens,
        hooks: hooks.iter().map(ToString::to_string).collect(),
        logits,
        threads: rayon::current_num_threads(),
        forward_seconds,
        tokens_per_second: tokens as f64 / forward_seconds.max(1e-12),
        out: out.display().to_string(),
    })
}

/// Copies packed rows `[tokens, width]` into a padded `[n_cells, max_len, width]` buffer, at the
/// cells' places (`first_cell` is the batch's first cell in the whole input).
fn scatter_padded(
    batch: &PackedBatch,
    first_cell: usize,
    max_len: usize,
    packed: &[f32],
    width: usize,
    out: &mut [f32],
) {
    for c in 0..batch.n_cells() {
        let rows = batch.cell_range(c);
        let dst = (first_cell + c) * max_len * width;
        out[dst..dst + rows.len() * width].copy_from_slice(&packed[rows.start * width..rows.end * width]);
    }
}
