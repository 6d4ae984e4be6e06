//! `scinterp forward`: a forward pass with hook points over ragged cells, for Geneformer and scGPT
//! folders alike (the run and its file are `scinterp_models::forward`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use scinterp_engine::formats::check_file_output;
use scinterp_models::forward::{forward_to_file, parse_hooks};
use scinterp_models::input::read_cells;

use crate::args::{print_json, DeviceArgs};

#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Model folder: Geneformer (config.json with model.safetensors or pytorch_model.bin) or scGPT
    /// (args.json, vocab.json and best_model.pt or model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Cells: JSON with one list per cell (lengths may differ), {"input_ids": [[...], ...]} for
    /// Geneformer or {"gene_ids": [[...], ...], "values": [[...], ...]} for scGPT; or a token store made
    /// by `scinterp tokenize` for the same model.
    #[arg(long)]
    input: PathBuf,
    /// Hooks to capture: a comma list (e.g. hook_embed,blocks.3.hook_resid_post) or `all`.
    #[arg(long, default_value = "")]
    hooks: String,
    /// Also write the output head: Geneformer's MLM `logits` [n_cells, max_len, vocab]; scGPT's
    /// `expr_pred` and `mvc_pred` [n_cells, max_len].
    #[arg(long, alias = "logits")]
    head: bool,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file (only once the new one is complete); without it one is refused.
    #[arg(long)]
    overwrite: bool,
    /// Most tokens run together in one packed batch (bounds memory).
    #[arg(long, default_value_t = 16_384)]
    max_batch_tokens: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: ForwardArgs, json: bool) -> Result<()> {
    check_file_output(&args.out, args.overwrite, "a forward-pass file")?;
    let backend = args.device.backend()?;
    let model = scinterp_models::load(&args.model, args.head)?;
    let forward = args.device.forward(backend, model.encoder.as_ref())?;
    let cells = read_cells(&args.input, &model)?;
    let hooks = parse_hooks(&args.hooks, model.encoder.dims().n_layers)?;
    // A model with a cell embedding always writes it; others need a hook or the head.
    if hooks.is_empty() && !args.head && model.embedding_token.is_none() {
        bail!("nothing to write: give --hooks (a comma list or `all`) and/or --head");
    }
    let mut summary = forward_to_file(
        model.encoder.as_ref(),
        forward.as_ref(),
        &cells,
        &hooks,
        args.head,
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
    print_json(json, &summary)
}
