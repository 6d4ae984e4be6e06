//! Runs an [`Encoder`] over a packed batch with hooks: from the embedding, or from any layer with a
//! supplied state (tail replay: tracing edits the state after layer L once and replays only the layers
//! after it).

use crate::cpu;
use crate::encoder::{Activation, Encoder, EncoderDims, PostLnBlock};
use crate::error::EngineError;
use crate::hooks::{Captures, HookPlan, HookPoint};
use crate::matrix::Matrix;
use crate::packed::PackedBatch;

/// Where a run starts.
#[derive(Clone, Debug)]
pub enum Start {
    /// From the token embedding (a full forward pass).
    Embed,
    /// From the input of block `layer` (= `blocks.{layer-1}.hook_resid_post`, or `hook_embed` for
    /// layer 0), given as `[tokens, d_model]`. Blocks `layer..n_layers` run; `layer == n_layers` runs
    /// only the head. Hooks before `layer` are not visited.
    BlockInput { layer: usize, state: Matrix },
}

/// Result of a run.
#[derive(Debug)]
pub struct RunOutput {
    pub captures: Captures,
    /// Output of the last block, `[tokens, d_model]`.
    pub final_state: Matrix,
    /// The encoder's head on the final state, when asked for and available.
    pub head: Option<Matrix>,
}

/// Runs `encoder` on `batch`, applying `plan` at every hook it touches.
pub fn run(
    encoder: &dyn Encoder,
    batch: &PackedBatch,
    plan: &HookPlan,
    start: Start,
    with_head: bool,
) -> Result<RunOutput, EngineError> {
    let dims = encoder.dims().clone();
    let tokens = batch.n_tokens();
    plan.validate(&dims, tokens)?;

    let mut captures = Captures::default();
    let (first_layer, mut state) = match start {
        Start::Embed => {
            let mut x = encoder.embed(batch)?;
            plan.visit(HookPoint::Embed, &mut x, &mut captures);
            (0, x)
        }
        Start::BlockInput { layer, state } => {
            check_block_input(&dims, tokens, layer, &state)?;
            (layer, state)
        }
    };

    for layer in first_layer..dims.n_layers {
        state = run_block(encoder.block(layer), layer, state, batch, plan, &mut captures);
    }
    let head = if with_head {
        encoder.head(&state, batch)
    } else {
        None
    };
    Ok(RunOutput {
        captures,
        final_state: state,
        head,
    })
}

/// Checks a tail-replay start against the model and the batch.
pub(crate) fn check_block_input(
    dims: &EncoderDims,
    tokens: usize,
    layer: usize,
    state: &Matrix,
) -> Result<(), EngineError> {
    if layer > dims.n_layers {
        return Err(EngineError::InvalidStart(format!(
            "layer {layer} is past the last block ({} layers)",
            dims.n_layers
        )));
    }
    if state.rows() != tokens || state.cols() != dims.d_model {
        return Err(EngineError::InvalidStart(format!(
            "state is {}×{}, expected {tokens}×{} for this batch",
            state.rows(),
            state.cols(),
            dims.d_model
        )));
    }
    Ok(())
}

/// What runs an encoder's blocks: the CPU ([`CpuForward`], i.e. [`run`]) or a GPU
/// (`cuda::CudaForward`). Both give the same hooks and outputs.
pub trait Forward: Sync {
    fn run(
        &self,
        encoder: &dyn Encoder,
        batch: &PackedBatch,
        plan: &HookPlan,
        start: Start,
        with_head: bool,
    ) -> Result<RunOutput, EngineError>;

    /// For logs and summaries, e.g. "cpu".
    fn name(&self) -> String;

    /// The GPU backend, for work it runs whole on the device (the resident tracer); `None` elsewhere.
    fn as_cuda(&self) -> Option<&crate::cuda::CudaForward> {
        None
    }
}

/// A model on its backend and the cells it runs on: what the trace and effects pipelines read (the
/// caller loads them, e.g. `scinterp_models::input::ModelOnCells::view`).
#[derive(Clone, Copy)]
pub struct ModelAndCells<'a> {
    pub encoder: &'a dyn Encoder,
    /// What runs its blocks (the CPU or a GPU).
    pub forward: &'a dyn Forward,
    /// Token ids of each cell, and scGPT's values.
    pub tokens: &'a [Vec<u32>],
    pub values: Option<&'a [Vec<f32>]>,
    /// Token ids whose positions the SAEs never read.
    pub special_ids: &'a [u32],
}

/// The CPU backend: [`run`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuForward;

impl Forward for CpuForward {
    fn run(
        &self,
        encoder: &dyn Encoder,
        batch: &PackedBatch,
        plan: &HookPlan,
        start: Start,
        with_head: bool,
    ) -> Result<RunOutput, EngineError> {
        run(encoder, batch, plan, start, with_head)
    }

    fn name(&self) -> String {
        "cpu".into()
    }
}

fn run_block(
    block: &PostLnBlock,
    layer: usize,
    x: Matrix,
    batch: &PackedBatch,
    plan: &HookPlan,
    captures: &mut Captures,
) -> Matrix {
    let qkv = cpu::linear(&x, &block.qkv);
    let scale = 1.0 / (block.head_dim as f32).sqrt();
    let ctx = cpu::attention_varlen(&qkv, batch.offsets(), block.n_heads, block.head_dim, scale);
    drop(qkv);
    let mut attn = cpu::linear(&ctx, &block.attn_out);
    drop(ctx);
    visit(plan, HookPoint::AttnOut(layer), &mut attn, captures);

    let mut mid = cpu::layer_norm_of_sum(&x, &attn, &block.ln_attn);
    drop((x, attn));
    visit(plan, HookPoint::ResidMid(layer), &mut mid, captures);

    let mut hidden = cpu::linear(&mid, &block.ffn_in);
    match block.activation {
        Activation::Relu => cpu::relu_in_place(hidden.as_mut_slice()),
    }
    let mut mlp = cpu::linear(&hidden, &block.ffn_out);
    drop(hidden);
    visit(plan, HookPoint::MlpOut(layer), &mut mlp, captures);

    let mut out = cpu::layer_norm_of_sum(&mid, &mlp, &block.ln_out);
    visit(plan, HookPoint::ResidPost(layer), &mut out, captures);
    out
}

fn visit(plan: &HookPlan, hook: HookPoint, x: &mut Matrix, captures: &mut Captures) {
    if plan.is_touched(hook) {
        plan.visit(hook, x, captures);
    }
}
