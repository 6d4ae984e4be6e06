//! The forward arrow: a loaded model run over ragged cells in token-budget batches, with hook points,
//! written as one safetensors file: one f32 tensor per hook (`[n_cells, max_len, d_model]`, zeros after
//! each cell's length), `lengths`, the model's cell embedding when it has one (scGPT: `cell_embedding`),
//! and with the head its outputs (Geneformer `logits`; scGPT `expr_pred` and `mvc_pred`).

use std::path::Path;
use std::time::Instant;

use scinterp_engine::batching::group_by_token_budget;
use scinterp_engine::{Encoder, EngineError, Forward, HookPlan, HookPoint, PackedBatch, Start};
use serde::Serialize;

use crate::checkpoint::{write_safetensors, CheckpointError, TensorToWrite};
use crate::input::InputCells;

/// Why a forward run failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(
        "the output would take {gib:.1} GiB; capture fewer hooks or cells (for large runs, an activation \
         store is the right tool)"
    )]
    TooLarge { gib: f64 },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Missing(&'static str),
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

/// `all`, empty, or a comma list of hook names checked against the model depth.
pub fn parse_hooks(spec: &str, n_layers: usize) -> Result<Vec<HookPoint>, ForwardError> {
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
) -> Result<ForwardSummary, ForwardError> {
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
        return Err(ForwardError::TooLarge {
            gib: bytes / (1u64 << 30) as f64,
        });
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
                .ok_or(ForwardError::Missing("a requested hook was not captured"))?;
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
            let head = output.head.ok_or(ForwardError::Missing(
                "the model was loaded without its output head",
            ))?;
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
