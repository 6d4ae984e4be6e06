//! `scinterp forward`: a forward pass with hook points over ragged cells, for Geneformer and scGPT
//! folders alike. Writes one f32 tensor per hook (`[n_cells, max_len, d_model]`, zeros after each
//! cell's length), `lengths`, the model's cell embedding when it has one (scGPT: `cell_embedding`), and
//! with `--head` the head's outputs (Geneformer `logits`; scGPT `expr_pred` and `mvc_pred`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use scinterp_engine::batching::group_by_token_budget;
use scinterp_engine::cuda::{CudaForward, GpuPrecision};
use scinterp_engine::device::{Backend, DeviceChoice};
use scinterp_engine::{CpuForward, Encoder, Forward, HookPlan, HookPoint, PackedBatch, Start};
use scinterp_models::checkpoint::{write_safetensors, TensorToWrite};
use scinterp_models::geneformer::{Geneformer, LoadOptions};
use scinterp_models::scgpt::{is_scgpt_dir, Scgpt, ScgptLoadOptions};
use scinterp_models::token_store::TokenStore;
use serde::Serialize;

use crate::tokens_json::{read_input_cells, InputCells};

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
    /// Most tokens run together in one packed batch (bounds memory).
    #[arg(long, default_value_t = 16_384)]
    max_batch_tokens: usize,
    /// Backend: `auto` (the CPU until the CUDA path is validated on a GPU), `cpu`, or `cuda` (bf16
    /// GEMMs and attention, f32 residual stream; an error where no GPU is usable).
    #[arg(long, default_value = "auto")]
    pub(crate) device: DeviceChoice,
    /// With `--device cuda`: `bf16` (default) or `f32` (exact f32 GEMMs: the parity mode).
    #[arg(long, default_value = "bf16")]
    pub(crate) gpu_precision: GpuPrecisionArg,
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
    /// Names of the tensors written besides the hooks and `lengths`.
    pub outputs: Vec<String>,
    pub threads: usize,
    /// Seconds spent in the forward passes alone (no loading, no writing).
    pub forward_seconds: f64,
    pub tokens_per_second: f64,
    pub out: String,
}

/// The architectures `scinterp forward` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Geneformer,
    Scgpt,
}

impl ModelKind {
    /// The `tokenizer` of the token stores this model reads.
    fn tokenizer(self) -> &'static str {
        match self {
            ModelKind::Geneformer => "geneformer",
            ModelKind::Scgpt => "scgpt",
        }
    }
}

/// A model loaded from a folder, whichever architecture it is.
pub struct LoadedModel {
    pub encoder: Box<dyn Encoder>,
    pub kind: ModelKind,
    /// The weights file that was read.
    pub weights: PathBuf,
    /// scGPT's `<cls>` id: its cell embedding is read at position 0, which should hold it.
    cls_id: Option<u32>,
    /// scGPT's `<cls>` and `<pad>` ids (positions that are not genes); empty for Geneformer, whose
    /// special ids depend on the tokenizer version.
    pub special_ids: Vec<u32>,
}

pub fn run(args: ForwardArgs) -> Result<()> {
    let backend = resolve_device(args.device)?;
    let model = load_model(&args.model, args.head)?;
    let forward = make_forward(backend, model.encoder.as_ref(), args.gpu_precision)?;
    let cells = read_cells(&args.input, &model)?;
    let hooks = parse_hooks(&args.hooks, model.encoder.dims().n_layers)?;
    if hooks.is_empty() && !args.head && model.kind == ModelKind::Geneformer {
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
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// Resolves `--device` before any work (never panics without CUDA) and logs the choice.
pub(crate) fn resolve_device(choice: DeviceChoice) -> Result<Backend> {
    let resolved = choice.resolve()?;
    tracing::info!("device: {}", resolved.reason);
    Ok(resolved.backend)
}

/// `--gpu-precision`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum GpuPrecisionArg {
    Bf16,
    F32,
}

impl From<GpuPrecisionArg> for GpuPrecision {
    fn from(p: GpuPrecisionArg) -> Self {
        match p {
            GpuPrecisionArg::Bf16 => GpuPrecision::Bf16,
            GpuPrecisionArg::F32 => GpuPrecision::F32,
        }
    }
}

/// The backend that runs the blocks: the CPU, or the model's blocks uploaded to GPU 0.
pub(crate) fn make_forward(
    backend: Backend,
    encoder: &dyn Encoder,
    precision: GpuPrecisionArg,
) -> Result<Box<dyn Forward>> {
    Ok(match backend {
        Backend::Cpu => Box::new(CpuForward),
        Backend::Cuda => {
            let gpu = CudaForward::new(encoder, 0, precision.into())
                .context("uploading the model to the GPU (--device cpu avoids the GPU)")?;
            tracing::info!("forward pass: {}", gpu.name());
            Box::new(gpu)
        }
    })
}

/// Cells from a JSON file or a token store folder, checked against what the model reads.
pub fn read_cells(input: &Path, model: &LoadedModel) -> Result<InputCells> {
    let cells = if input.is_dir() {
        let store = TokenStore::read(input)?;
        if store.manifest.tokenizer != model.kind.tokenizer() {
            bail!(
                "{}: a {} token store, but --model is a {} model; tokenize the cells for this model                  (scinterp tokenize --model-kind ...)",
                input.display(),
                store.manifest.tokenizer,
                model.kind.tokenizer()
            );
        }
        if store.cells.is_empty() {
            bail!("{}: the token store holds no cells", input.display());
        }
        InputCells {
            tokens: store.cells,
            values: store.values,
        }
    } else {
        read_input_cells(input)?
    };
    match (model.kind, cells.values.is_some()) {
        (ModelKind::Scgpt, false) => bail!(
            "{}: scGPT needs an expression value for every gene: give {{\"gene_ids\": [[...]], \"values\": \
             [[...]]}} or an scGPT token store",
            input.display()
        ),
        (ModelKind::Geneformer, true) => bail!(
            "{}: these cells carry expression values (scGPT input), but --model is a Geneformer model, \
             which reads rank-ordered token ids only ({{\"input_ids\": [[...]]}} or a Geneformer token store)",
            input.display()
        ),
        _ => {}
    }
    if let Some(cls) = model.cls_id {
        let without = cells.tokens.iter().filter(|c| c[0] != cls).count();
        if without > 0 {
            tracing::warn!(
                "{}: {without} of {} cells do not start with <cls> (id {cls}); their cell_embedding is \
                 the state of their first gene",
                input.display(),
                cells.tokens.len()
            );
        }
    }
    Ok(cells)
}

/// Loads a Geneformer or scGPT folder (scGPT when it holds `args.json`).
pub fn load_model(dir: &Path, with_head: bool) -> Result<LoadedModel> {
    if !dir.is_dir() {
        bail!(
            "--model {}: not a folder; point it at a Geneformer folder (config.json and model.safetensors) \
             or an scGPT folder (args.json, vocab.json, best_model.pt)",
            dir.display()
        );
    }
    let started = Instant::now();
    type Loaded = (Box<dyn Encoder>, ModelKind, Option<u32>, Vec<u32>, PathBuf);
    let (encoder, kind, cls_id, special_ids, weights): Loaded = if is_scgpt_dir(dir) {
        let model = Scgpt::load(dir, ScgptLoadOptions { with_head })?;
        let weights = model.weights_path().to_path_buf();
        let (cls, pad) = (model.cls_id(), model.pad_id());
        (
            Box::new(model),
            ModelKind::Scgpt,
            Some(cls),
            vec![cls, pad],
            weights,
        )
    } else {
        let model = Geneformer::load(dir, LoadOptions { with_head })?;
        let weights = model.weights_path().to_path_buf();
        (Box::new(model), ModelKind::Geneformer, None, Vec::new(), weights)
    };
    tracing::info!(
        "loaded {} ({:?}, {} layers, d_model {}) in {:.2} s",
        weights.display(),
        kind,
        encoder.dims().n_layers,
        encoder.dims().d_model,
        started.elapsed().as_secs_f64()
    );
    Ok(LoadedModel {
        encoder,
        kind,
        weights,
        cls_id,
        special_ids,
    })
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
    forward: &dyn Forward,
    cells: &InputCells,
    hooks: &[HookPoint],
    with_head: bool,
    out: &Path,
    max_batch_tokens: usize,
) -> Result<ForwardSummary> {
    let dims = model.dims().clone();
    let n_cells = cells.tokens.len();
    let lengths: Vec<usize> = cells.tokens.iter().map(Vec::len).collect();
    let max_len = lengths.iter().copied().max().unwrap_or(0);
    let tokens: usize = lengths.iter().sum();
    let head_outputs = if with_head {
        model.head_outputs()
    } else {
        Vec::new()
    };
    let head_width: usize = head_outputs.iter().map(|(_, w)| w).sum();

    let per_cell_floats = max_len * (hooks.len() * dims.d_model + head_width) + dims.d_model;
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
    let mut head_buffers: Vec<Vec<f32>> = head_outputs
        .iter()
        .map(|(_, w)| vec![0.0f32; n_cells * max_len * w])
        .collect();
    let mut cell_embeddings: Option<Vec<f32>> = None;

    let plan = HookPlan::new().capture_many(hooks.iter().copied());
    let mut forward_seconds = 0.0;
    for group in group_by_token_budget(&lengths, max_batch_tokens.max(1)) {
        let mut batch = PackedBatch::from_cells(&cells.tokens[group.clone()])?;
        if let Some(values) = &cells.values {
            batch = batch.with_values(values[group.clone()].concat())?;
        }
        let started = Instant::now();
        let mut output = forward.run(model, &batch, &plan, Start::Embed, with_head)?;
        let cell_embedding = model.cell_embedding(&output.final_state, &batch);
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
        if let Some(emb) = cell_embedding {
            let buffer = cell_embeddings.get_or_insert_with(|| vec![0.0; n_cells * dims.d_model]);
            buffer[group.start * dims.d_model..group.end * dims.d_model].copy_from_slice(emb.as_slice());
        }
        if with_head {
            let head = output
                .head
                .context("the model was loaded without its output head")?;
            let mut column = 0;
            for ((_, width), buffer) in head_outputs.iter().zip(head_buffers.iter_mut()) {
                let part = columns(head.as_slice(), head.cols(), column, *width);
                scatter_padded(&batch, group.start, max_len, &part, *width, buffer);
                column += width;
            }
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
    let mut outputs = Vec::new();
    if let Some(buffer) = &cell_embeddings {
        tensors.push(TensorToWrite {
            name: "cell_embedding".into(),
            dtype: safetensors::Dtype::F32,
            shape: vec![n_cells, dims.d_model],
            bytes: bytemuck::cast_slice(buffer),
        });
        outputs.push("cell_embedding".to_string());
    }
    for ((name, width), buffer) in head_outputs.iter().zip(&head_buffers) {
        // Per-position scalars (scGPT's predictions) drop the trailing axis of width 1.
        let mut shape = vec![n_cells, max_len];
        if *width > 1 {
            shape.push(*width);
        }
        tensors.push(TensorToWrite {
            name: name.to_string(),
            dtype: safetensors::Dtype::F32,
            shape,
            bytes: bytemuck::cast_slice(buffer),
        });
        outputs.push(name.to_string());
    }
    write_safetensors(out, &tensors, None)?;

    Ok(ForwardSummary {
        model: String::new(),
        cells: n_cells,
        tokens,
        hooks: hooks.iter().map(ToString::to_string).collect(),
        outputs,
        threads: rayon::current_num_threads(),
        forward_seconds,
        tokens_per_second: tokens as f64 / forward_seconds.max(1e-12),
        out: out.display().to_string(),
    })
}

/// Columns `start..start + width` of a row-major `[rows, cols]` buffer, as `[rows, width]`.
fn columns(data: &[f32], cols: usize, start: usize, width: usize) -> Vec<f32> {
    if start == 0 && width == cols {
        return data.to_vec();
    }
    data.chunks_exact(cols)
        .flat_map(|row| row[start..start + width].iter().copied())
        .collect()
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
