//! Causal tracing of SAE features: ablate a source feature inside the residual stream, replay only the
//! layers after it, and measure how every downstream SAE feature changes.
//!
//! For a source feature f at `blocks.L.hook_resid_post` and a cell where f fires, the ablation adds
//! `δ(t) = −a_f(t)·W_dec[f]` to the true residual at the positions t where f fires. The SAE's error
//! term is kept (the state is not replaced by the reconstruction). Blocks `L+1..` are then replayed
//! from that state. The clean run, its source state and its downstream codes are computed once per
//! cell; many (feature, cell) ablations are packed into one tail pass. For each target feature g the
//! observation of a cell is the mean over f's active positions of `a'_g(t) − a_g(t)` (codes after the
//! ReLU, 0 when g is not among the top k).
//!
//! This equals the naive computation (a hooked full forward for every (feature, cell)) exactly: tail
//! replay reproduces the full pass bit for bit, and a cell's rows do not depend on the other cells
//! packed with it (tested in `tests`).

pub mod edges;
pub mod pipeline;
pub(crate) mod resident;
pub mod state;

use std::collections::HashMap;
use std::path::PathBuf;

use crate::encoder::Encoder;
use crate::error::EngineError;
use crate::executor::{Forward, Start};
use crate::hooks::{HookPlan, HookPoint};
use crate::matrix::Matrix;
use crate::packed::PackedBatch;
use crate::rng::splitmix64;
use crate::sae::{SparseCodes, TopKSae};
use crate::stats::{cohens_d, hedges_g, one_sample_t_test, RunningStats, StatsError};

pub use edges::EdgeFilters;
pub use pipeline::{merge, parse_features, run, TraceConfig, TraceInputs, TraceOutcome, TraceProgress};

/// Why a trace or a merge stopped; messages name the file or flag and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Hook(#[from] EngineError),
    #[error("{0}: tracing replays from a block output; use a blocks.L.hook_resid_post hook")]
    NotResidPost(String),
    #[error(transparent)]
    Sae(#[from] crate::sae::io::SaeFileError),
    #[error("--targets names no hook")]
    NoTargets,
    #[error("--targets {target}: must be a block after the source ({source_hook}) and within the model's {n_layers} layers")]
    TargetNotDownstream {
        target: String,
        source_hook: String,
        n_layers: usize,
    },
    #[error("the SAE of {hook} reads d_in = {d_in} but the model's width is {d_model}; use SAEs trained on this model")]
    Width {
        hook: String,
        d_in: usize,
        d_model: usize,
    },
    #[error("{0}")]
    Features(String),
    /// A flag value that cannot mean anything (NaN, out of range).
    #[error("{0}")]
    Flag(String),
    #[error("tracing cells {first}..{last}: {error}")]
    Cells {
        first: usize,
        last: usize,
        error: EngineError,
    },
    #[error("{}: holds the checkpoint of a trace with other settings; rerun that command to finish it, or remove the file to start this one", .0.display())]
    OtherCheckpoint(PathBuf),
    #[error("stopped after {chunks} chunks as asked (--stop-after-chunks); rerun without it to resume from {}", checkpoint.display())]
    Stopped { chunks: usize, checkpoint: PathBuf },
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Table(#[from] crate::formats::TableError),
    #[error(transparent)]
    File(#[from] crate::formats::FileError),
    #[error(transparent)]
    Output(#[from] crate::formats::OutputError),
    #[error("statistics: {0}")]
    Stats(#[from] StatsError),
    #[error("cannot serialise the summary: {0}")]
    Serialise(String),
    #[error("{}: no such shard file", .0.display())]
    NoShard(PathBuf),
    #[error("{}: not a shard file ({reason})", path.display())]
    NotAShard { path: PathBuf, reason: String },
    #[error("{}: a shard of another trace (settings differ from {})", path.display(), first.display())]
    ShardOfAnotherTrace { path: PathBuf, first: PathBuf },
    #[error("{}: shard {i}/{n} given twice", path.display())]
    ShardTwice { path: PathBuf, i: usize, n: usize },
    #[error(
        "--min-cells {0}: must be at least 3 (a t test needs n >= 2, and Hedges' g is undefined at n = 2)"
    )]
    MinCells(u32),
    #[error("--shards names no file")]
    NoShards,
    #[error("got shards {seen:?}; all of 0/{n}..{last}/{n} are needed, once each", last = n.saturating_sub(1))]
    ShardsIncomplete { seen: Vec<(usize, usize)>, n: usize },
}

/// One traced layer pair setup.
pub struct TraceSetup<'a> {
    /// The source hook is `blocks.{source_layer}.hook_resid_post`.
    pub source_layer: usize,
    pub source_sae: &'a TopKSae,
    /// Downstream hooks (`hook_resid_post` of later layers) and their SAEs.
    pub targets: Vec<(HookPoint, &'a TopKSae)>,
    /// Token ids whose positions the SAEs never read (special tokens).
    pub special_ids: Vec<u32>,
    /// Most tokens per packed tail pass (bounds memory).
    pub max_batch_tokens: usize,
    /// Sign-flip null: permutations kept per edge (0: none), and their seed.
    pub null: SignFlipNull,
}

/// The sign-flip permutation null of the edge tests: permutation b multiplies the observation of
/// (source feature f, cell c) by a sign drawn from (seed, b, f, the cell's tokens), the same for every
/// target, so the dependence between tests is kept. Under the null of no effect the per-cell changes
/// are symmetric about 0, so the flipped statistics show how many edges a rule passes by chance.
/// The signs depend on the cell's content, not its index, so chunking, shards and resumes agree.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SignFlipNull {
    pub permutations: usize,
    pub seed: u64,
}

impl SignFlipNull {
    /// The signs (±1) of the `permutations` flips of one (feature, cell) observation.
    pub fn signs(&self, feature: u32, cell_tokens: &[u32]) -> Vec<f64> {
        let mut h = splitmix64(self.seed ^ 0x51_6E_F1_1B ^ u64::from(feature));
        for &t in cell_tokens {
            h = splitmix64(h ^ u64::from(t));
        }
        (0..self.permutations as u64)
            .map(|b| {
                if splitmix64(h ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 63 == 0 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect()
    }
}

/// One sign-flip permutation's sums of an edge.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlipSums {
    pub sum: f64,
    pub positive: u32,
    pub negative: u32,
}

/// Running statistics of one (source feature, target hook, target feature) edge over cells. Only the
/// cells where the target changed are pushed; the zeros of the other cells are implicit, and `n`
/// comes from the source's cell count.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EdgeSums {
    pub nonzero: RunningStats,
    pub positive: u32,
    pub negative: u32,
}

/// Accumulated effects of the traced source features.
#[derive(Clone, Debug, Default)]
pub struct TraceAccumulator {
    /// Cells in which each source feature fired (the `n` of its edges).
    pub cells_active: HashMap<u32, u32>,
    /// (source feature, target index, target feature) → sums over cells.
    pub edges: HashMap<(u32, u16, u32), EdgeSums>,
    /// (feature, cell) ablations run.
    pub ablations: u64,
    /// Sign-flip permutations per edge (empty without a null).
    pub null: HashMap<(u32, u16, u32), Vec<FlipSums>>,
}

impl TraceAccumulator {
    fn add_cell(&mut self, feature: u32, target: u16, changes: &HashMap<u32, f64>, signs: &[f64]) {
        for (&g, &x) in changes {
            if x == 0.0 {
                continue;
            }
            let e = self.edges.entry((feature, target, g)).or_default();
            e.nonzero.push(x);
            if x > 0.0 {
                e.positive += 1;
            } else {
                e.negative += 1;
            }
            if !signs.is_empty() {
                let flips = self
                    .null
                    .entry((feature, target, g))
                    .or_insert_with(|| vec![FlipSums::default(); signs.len()]);
                for (fl, &s) in flips.iter_mut().zip(signs) {
                    fl.sum += s * x;
                    if s * x > 0.0 {
                        fl.positive += 1;
                    } else {
                        fl.negative += 1;
                    }
                }
            }
        }
    }

    /// Adds another accumulator (another batch of cells or another shard).
    pub fn merge(&mut self, other: TraceAccumulator) {
        for (f, n) in other.cells_active {
            *self.cells_active.entry(f).or_default() += n;
        }
        for (k, e) in other.edges {
            let mine = self.edges.entry(k).or_default();
            mine.nonzero.merge(&e.nonzero);
            mine.positive += e.positive;
            mine.negative += e.negative;
        }
        for (k, flips) in other.null {
            let mine = self
                .null
                .entry(k)
                .or_insert_with(|| vec![FlipSums::default(); flips.len()]);
            for (m, o) in mine.iter_mut().zip(&flips) {
                m.sum += o.sum;
                m.positive += o.positive;
                m.negative += o.negative;
            }
        }
        self.ablations += other.ablations;
    }
}

const ACC_MAGIC: &[u8; 8] = b"SCITRACE";
const ACC_VERSION: u32 = 2;

impl TraceAccumulator {
    /// Serialises the accumulator (little-endian, entries sorted by key, so equal accumulators give
    /// equal bytes). Used for checkpoints and shards.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.edges.len() * 42);
        out.extend_from_slice(ACC_MAGIC);
        out.extend_from_slice(&ACC_VERSION.to_le_bytes());
        out.extend_from_slice(&self.ablations.to_le_bytes());
        let mut active: Vec<_> = self.cells_active.iter().collect();
        active.sort_unstable();
        out.extend_from_slice(&(active.len() as u64).to_le_bytes());
        for (f, n) in active {
            out.extend_from_slice(&f.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        let mut edges: Vec<_> = self.edges.iter().collect();
        edges.sort_unstable_by_key(|(k, _)| **k);
        out.extend_from_slice(&(edges.len() as u64).to_le_bytes());
        for ((f, t, g), e) in edges {
            let (n, mean, m2) = e.nonzero.parts();
            out.extend_from_slice(&f.to_le_bytes());
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&g.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&mean.to_le_bytes());
            out.extend_from_slice(&m2.to_le_bytes());
            out.extend_from_slice(&e.positive.to_le_bytes());
            out.extend_from_slice(&e.negative.to_le_bytes());
        }
        let mut null: Vec<_> = self.null.iter().collect();
        null.sort_unstable_by_key(|(k, _)| **k);
        let b = null.first().map_or(0, |(_, v)| v.len());
        out.extend_from_slice(&(null.len() as u64).to_le_bytes());
        out.extend_from_slice(&(b as u64).to_le_bytes());
        for ((f, t, g), flips) in null {
            out.extend_from_slice(&f.to_le_bytes());
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&g.to_le_bytes());
            for fl in flips {
                out.extend_from_slice(&fl.sum.to_le_bytes());
                out.extend_from_slice(&fl.positive.to_le_bytes());
                out.extend_from_slice(&fl.negative.to_le_bytes());
            }
        }
        out
    }

    /// Reads what [`TraceAccumulator::to_bytes`] wrote; `None` if the bytes are not such a file
    /// (truncated, another format or version).
    pub fn from_bytes(bytes: &[u8]) -> Option<TraceAccumulator> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = bytes.get(at..at + n)?;
            at += n;
            Some(s)
        };
        if take(8)? != ACC_MAGIC || u32::from_le_bytes(take(4)?.try_into().ok()?) != ACC_VERSION {
            return None;
        }
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
        let mut acc = TraceAccumulator {
            ablations: u64_of(take(8)?),
            ..Default::default()
        };
        let n_active = u64_of(take(8)?);
        for _ in 0..n_active {
            let f = u32_of(take(4)?);
            let n = u32_of(take(4)?);
            acc.cells_active.insert(f, n);
        }
        let n_edges = u64_of(take(8)?);
        for _ in 0..n_edges {
            let f = u32_of(take(4)?);
            let t = u16::from_le_bytes(take(2)?.try_into().ok()?);
            let g = u32_of(take(4)?);
            let n = u64_of(take(8)?);
            let mean = f64::from_le_bytes(take(8)?.try_into().ok()?);
            let m2 = f64::from_le_bytes(take(8)?.try_into().ok()?);
            let positive = u32_of(take(4)?);
            let negative = u32_of(take(4)?);
            acc.edges.insert(
                (f, t, g),
                EdgeSums {
                    nonzero: RunningStats::from_parts(n, mean, m2),
                    positive,
                    negative,
                },
            );
        }
        let n_null = u64_of(take(8)?);
        let b = u64_of(take(8)?) as usize;
        for _ in 0..n_null {
            let f = u32_of(take(4)?);
            let t = u16::from_le_bytes(take(2)?.try_into().ok()?);
            let g = u32_of(take(4)?);
            // `b` comes from the bytes: reserve no more than they can hold (16 bytes per flip).
            let mut flips = Vec::with_capacity(b.min(bytes.len() / 16));
            for _ in 0..b {
                flips.push(FlipSums {
                    sum: f64::from_le_bytes(take(8)?.try_into().ok()?),
                    positive: u32_of(take(4)?),
                    negative: u32_of(take(4)?),
                });
            }
            acc.null.insert((f, t, g), flips);
        }
        (at == bytes.len()).then_some(acc)
    }
}

/// A cell's clean run, kept for all its ablations.
pub(crate) struct CleanCell {
    pub(crate) tokens: Vec<u32>,
    pub(crate) values: Option<Vec<f32>>,
    /// `blocks.L.hook_resid_post`, `[len, d]`.
    pub(crate) source_state: Matrix,
    /// Positions the SAEs read, and their source codes (one row per such position).
    pub(crate) sae_positions: Vec<usize>,
    pub(crate) source_codes: SparseCodes,
    /// Per target: the clean state at `sae_positions`, `[positions, d]` row-major.
    pub(crate) target_states: Vec<Vec<f32>>,
}

impl CleanCell {
    /// A packed batch of `n` copies of the cell (the resident tracer's clean and ablated copies).
    pub(crate) fn copies(&self, n: usize) -> Result<PackedBatch, EngineError> {
        let cells = vec![self.tokens.as_slice(); n];
        let batch = PackedBatch::from_cells(&cells)?;
        match &self.values {
            Some(v) => batch.with_values(v.repeat(n)),
            None => Ok(batch),
        }
    }
}

/// One pending ablation: cell index in the chunk, feature, and the positions with their activations.
pub(crate) struct Ablation {
    pub(crate) cell: usize,
    pub(crate) feature: u32,
    /// (index into `sae_positions`, a_f) of the positions where the feature fires.
    pub(crate) active: Vec<(usize, f32)>,
}

/// Traces `features` over a chunk of cells (`tokens`, optional scGPT `values`) and adds the effects to
/// `acc`, with the model's runs on `forward` (CPU or GPU). `progress(ablations_done)` is called after
/// every tail pass.
pub fn trace_cells(
    (encoder, forward): (&dyn Encoder, &dyn Forward),
    setup: &TraceSetup,
    features: &[u32],
    tokens: &[Vec<u32>],
    values: Option<&[Vec<f32>]>,
    acc: &mut TraceAccumulator,
    progress: &mut dyn FnMut(u64),
) -> Result<(), EngineError> {
    let source_hook = HookPoint::ResidPost(setup.source_layer);
    for (hook, sae) in &setup.targets {
        if hook.layer().is_none_or(|l| l <= setup.source_layer) {
            return Err(EngineError::InvalidStart(format!(
                "target {hook} is not downstream of {source_hook}"
            )));
        }
        if sae.d_in != encoder.dims().d_model {
            return Err(EngineError::InvalidStart(format!(
                "the SAE of {hook} reads width {}, the model has {}",
                sae.d_in,
                encoder.dims().d_model
            )));
        }
    }
    let clean = clean_runs(encoder, forward, setup, tokens, values)?;

    let ablations = ablations_of(&clean, features, acc);

    // On a GPU with cuBLASLt everything from here to the statistics stays on the device.
    if let Some(gpu) = forward.as_cuda().filter(|g| g.traces_resident()) {
        return gpu.trace_resident(encoder, setup, (&clean, &ablations), acc, progress);
    }

    // Pack ablations into tail passes under the token budget.
    let plan = HookPlan::new().capture_many(setup.targets.iter().map(|(h, _)| *h));
    let mut start = 0;
    while start < ablations.len() {
        let mut end = start;
        let mut tokens_in = 0;
        while end < ablations.len() {
            let len = clean[ablations[end].cell].tokens.len();
            if end > start && tokens_in + len > setup.max_batch_tokens {
                break;
            }
            tokens_in += len;
            end += 1;
        }
        let group = &ablations[start..end];
        let cells: Vec<&[u32]> = group.iter().map(|a| clean[a.cell].tokens.as_slice()).collect();
        let group_signs: Vec<Vec<f64>> = group
            .iter()
            .map(|a| setup.null.signs(a.feature, &clean[a.cell].tokens))
            .collect();
        let mut batch = PackedBatch::from_cells(&cells)?;
        if values.is_some() {
            let flat: Vec<f32> = group
                .iter()
                .flat_map(|a| clean[a.cell].values.iter().flatten().copied())
                .collect();
            batch = batch.with_values(flat)?;
        }
        let d = encoder.dims().d_model;
        let mut state = Matrix::zeros(batch.n_tokens(), d);
        for (i, a) in group.iter().enumerate() {
            let cell = &clean[a.cell];
            let rows = batch.cell_range(i);
            state.as_mut_slice()[rows.start * d..rows.end * d].copy_from_slice(cell.source_state.as_slice());
            let direction = setup.source_sae.decoder_row(a.feature as usize);
            for &(p, v) in &a.active {
                let row = state.row_mut(rows.start + cell.sae_positions[p]);
                for (x, w) in row.iter_mut().zip(direction) {
                    *x -= v * w;
                }
            }
        }
        let out = forward.run(
            encoder,
            &batch,
            &plan,
            Start::BlockInput {
                layer: setup.source_layer + 1,
                state,
            },
            false,
        )?;
        for (t, (hook, sae)) in setup.targets.iter().enumerate() {
            let captured = out
                .captures
                .get(*hook)
                .ok_or_else(|| EngineError::InvalidStart(format!("{hook} was not captured")))?;
            // Clean and ablated rows of every ablation go through one encode call, so that a row
            // the ablation did not change gets exactly the same code (no rounding noise as effect).
            let mut x = Vec::new();
            for (i, a) in group.iter().enumerate() {
                let cell = &clean[a.cell];
                for &(p, _) in &a.active {
                    x.extend_from_slice(&cell.target_states[t][p * d..(p + 1) * d]);
                }
                let base = batch.cell_range(i).start;
                for &(p, _) in &a.active {
                    x.extend_from_slice(captured.row(base + cell.sae_positions[p]));
                }
            }
            let codes = sae.encode(&x);
            let mut row = 0;
            for (a, signs) in group.iter().zip(&group_signs) {
                let n = a.active.len();
                let mut changes: HashMap<u32, f64> = HashMap::new();
                for j in 0..n {
                    let (ci, cv) = codes.row(row + j);
                    for (&g, &v) in ci.iter().zip(cv) {
                        *changes.entry(g).or_default() -= v as f64;
                    }
                    let (ai, av) = codes.row(row + n + j);
                    for (&g, &v) in ai.iter().zip(av) {
                        *changes.entry(g).or_default() += v as f64;
                    }
                }
                row += 2 * n;
                changes.values_mut().for_each(|v| *v /= n as f64);
                acc.add_cell(a.feature, t as u16, &changes, signs);
            }
        }
        acc.ablations += group.len() as u64;
        progress(acc.ablations);
        start = end;
    }
    Ok(())
}

/// The (feature, cell) pairs to ablate, where the feature fires, ordered by cell then feature; counts
/// each in `acc.cells_active`.
pub(crate) fn ablations_of(
    clean: &[CleanCell],
    features: &[u32],
    acc: &mut TraceAccumulator,
) -> Vec<Ablation> {
    let wanted: HashMap<u32, ()> = features.iter().map(|&f| (f, ())).collect();
    let mut ablations = Vec::new();
    for (c, cell) in clean.iter().enumerate() {
        let mut by_feature: HashMap<u32, Vec<(usize, f32)>> = HashMap::new();
        for p in 0..cell.sae_positions.len() {
            let (idx, val) = cell.source_codes.row(p);
            for (&f, &v) in idx.iter().zip(val) {
                if v > 0.0 && wanted.contains_key(&f) {
                    by_feature.entry(f).or_default().push((p, v));
                }
            }
        }
        let mut feats: Vec<u32> = by_feature.keys().copied().collect();
        feats.sort_unstable();
        for f in feats {
            *acc.cells_active.entry(f).or_default() += 1;
            ablations.push(Ablation {
                cell: c,
                feature: f,
                active: by_feature.remove(&f).unwrap_or_default(),
            });
        }
    }
    ablations
}

/// For every source latent, the number of cells in which it fires (at any SAE position): the basis
/// of `--features top:N`.
pub fn source_cell_counts(
    encoder: &dyn Encoder,
    forward: &dyn Forward,
    setup: &TraceSetup,
    tokens: &[Vec<u32>],
    values: Option<&[Vec<f32>]>,
) -> Result<Vec<u32>, EngineError> {
    let no_targets = TraceSetup {
        source_layer: setup.source_layer,
        source_sae: setup.source_sae,
        targets: Vec::new(),
        special_ids: setup.special_ids.clone(),
        max_batch_tokens: setup.max_batch_tokens,
        null: SignFlipNull::default(),
    };
    let mut counts = vec![0u32; setup.source_sae.d_sae];
    for cell in clean_runs(encoder, forward, &no_targets, tokens, values)? {
        let mut fired: Vec<u32> = cell
            .source_codes
            .indices
            .iter()
            .zip(&cell.source_codes.values)
            .filter(|(_, &v)| v > 0.0)
            .map(|(&f, _)| f)
            .collect();
        fired.sort_unstable();
        fired.dedup();
        for f in fired {
            counts[f as usize] += 1;
        }
    }
    Ok(counts)
}

/// Clean runs of every cell: the source state, and the source and target codes at the SAE positions.
pub(crate) fn clean_runs(
    encoder: &dyn Encoder,
    forward: &dyn Forward,
    setup: &TraceSetup,
    tokens: &[Vec<u32>],
    values: Option<&[Vec<f32>]>,
) -> Result<Vec<CleanCell>, EngineError> {
    let source_hook = HookPoint::ResidPost(setup.source_layer);
    let plan = HookPlan::new()
        .capture(source_hook)
        .capture_many(setup.targets.iter().map(|(h, _)| *h));
    let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
    let mut out = Vec::with_capacity(tokens.len());
    for group in crate::batching::group_by_token_budget(&lengths, setup.max_batch_tokens) {
        let mut batch = PackedBatch::from_cells(&tokens[group.clone()])?;
        if let Some(v) = values {
            batch = batch.with_values(v[group.clone()].iter().flatten().copied().collect())?;
        }
        let result = forward.run(encoder, &batch, &plan, Start::Embed, false)?;
        let source = result
            .captures
            .get(source_hook)
            .ok_or_else(|| EngineError::InvalidStart("source not captured".into()))?;
        for (i, c) in group.clone().enumerate() {
            let rows = batch.cell_range(i);
            let sae_positions: Vec<usize> = tokens[c]
                .iter()
                .enumerate()
                .filter(|(_, t)| !setup.special_ids.contains(t))
                .map(|(p, _)| p)
                .collect();
            let gather = |m: &Matrix| -> Vec<f32> {
                sae_positions
                    .iter()
                    .flat_map(|&p| m.row(rows.start + p).iter().copied())
                    .collect()
            };
            let source_codes = setup.source_sae.encode(&gather(source));
            let mut target_states = Vec::with_capacity(setup.targets.len());
            for (hook, _) in &setup.targets {
                let m = result
                    .captures
                    .get(*hook)
                    .ok_or_else(|| EngineError::InvalidStart(format!("{hook} not captured")))?;
                target_states.push(gather(m));
            }
            out.push(CleanCell {
                tokens: tokens[c].clone(),
                values: values.map(|v| v[c].clone()),
                source_state: source.slice_rows(rows.start, rows.end),
                sae_positions,
                source_codes,
                target_states,
            });
        }
    }
    Ok(out)
}

/// Per-edge statistics across cells (zeros included for cells where the target did not change). The
/// observation of a cell is `ablated − clean`: a positive mean means ablating the source raises the
/// target, i.e. the source lowers it.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeStats {
    pub n: u32,
    pub mean: f64,
    pub sd: f64,
    pub cohens_d: f64,
    /// Cohen's d with the exact small-sample correction J(n − 1) (NaN for n ≤ 2, where J(1) = 0).
    pub hedges_g: f64,
    /// max(n₊, n₋)/n: the fraction of all n cells whose change has the majority sign. Cells with no
    /// change count for neither sign, so they count against it.
    pub sign_consistency: f64,
    /// Cells whose change is > 0 (ablation raised the target) and < 0 (ablation lowered it).
    pub ablation_raises: u32,
    pub ablation_lowers: u32,
    /// One-sample t statistic of the mean against 0, and its two-sided p-value (NaN when n < 2). When
    /// every cell has the same non-zero change (sd = 0, e.g. duplicated cells) the t test is undefined:
    /// t = ±∞ and p is the exact sign-flip p-value 2/2ⁿ (the two extreme sign patterns of 2ⁿ).
    pub t: f64,
    pub p: f64,
}

impl EdgeSums {
    /// [`EdgeSums::stats`] of one sign-flip permutation: the sum and signs are the flipped ones,
    /// the sum of squares is unchanged.
    pub fn flipped_stats(&self, n: u32, flip: &FlipSums) -> EdgeStats {
        let (k, mean, m2) = self.nonzero.parts();
        let sum_sq = m2 + k as f64 * mean * mean;
        let nf = f64::from(n);
        let flipped_mean = flip.sum / nf;
        // Σ(x − x̄)² = Σx² − n·x̄² over all n cells (zeros included); a remainder at rounding level
        // is a constant sample (all |x| equal, all signs alike), so it is 0 exactly.
        let mut m2_all = (sum_sq - nf * flipped_mean * flipped_mean).max(0.0);
        if m2_all <= 1e-12 * sum_sq {
            m2_all = 0.0;
        }
        let flipped = EdgeSums {
            nonzero: RunningStats::from_parts(u64::from(n), flipped_mean, m2_all),
            positive: flip.positive,
            negative: flip.negative,
        };
        flipped.stats(n)
    }

    /// Statistics over the `n` cells where the source fired (`n` ≥ the cells pushed).
    pub fn stats(&self, n: u32) -> EdgeStats {
        let mut all = RunningStats::zeros(u64::from(n).saturating_sub(self.nonzero.count()));
        all.merge(&self.nonzero);
        let (mean, sd) = (all.mean(), all.sd());
        let mut test = one_sample_t_test(all.count(), mean, sd, 0.0);
        if n >= 2 && sd == 0.0 && mean != 0.0 {
            // A constant non-zero sample: t = ±∞ would give p = 0. The exact sign-flip test does not.
            test.p_two_sided = (2.0 * 0.5f64.powi(n as i32)).min(1.0);
        }
        let d = cohens_d(mean, sd, 0.0);
        EdgeStats {
            n,
            mean,
            sd,
            cohens_d: d,
            hedges_g: hedges_g(d, test.df),
            sign_consistency: self.positive.max(self.negative) as f64 / n.max(1) as f64,
            ablation_raises: self.positive,
            ablation_lowers: self.negative,
            t: test.t,
            p: test.p_two_sided,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{run, CpuForward};
    use crate::hooks::Edit;
    use crate::test_model::tiny_encoder;

    /// `n` cells: token 0 (special), then `len + step·c` tokens drawn from 1..50.
    pub(crate) fn random_cells(seed: u64, n: usize, (len, step): (usize, usize)) -> Vec<Vec<u32>> {
        let mut rng = crate::rng::Rng::new(seed, 0);
        (0..n)
            .map(|c| {
                let mut cell = vec![0u32];
                cell.extend((0..len + step * c).map(|_| 1 + rng.below(49) as u32));
                cell
            })
            .collect()
    }

    /// The batched tail-replay tracer equals a hooked full forward per (feature, cell).
    #[test]
    fn batched_tail_replay_equals_the_naive_loop() {
        let enc = tiny_encoder(3, 64, 2, 128, 50, 7);
        let d = 64;
        let sae = |seed| crate::sae::tests::random_sae(d, 48, 4, seed);
        let (src, tgt1, tgt2) = (sae(1), sae(2), sae(3));
        let setup = TraceSetup {
            source_layer: 0,
            source_sae: &src,
            targets: vec![(HookPoint::ResidPost(1), &tgt1), (HookPoint::ResidPost(2), &tgt2)],
            special_ids: vec![0],
            max_batch_tokens: 40,
            null: SignFlipNull::default(),
        };
        let cells = random_cells(4, 5, (6, 3));
        let features: Vec<u32> = (0..48).collect();
        let mut acc = TraceAccumulator::default();
        trace_cells(
            (&enc, &CpuForward),
            &setup,
            &features,
            &cells,
            None,
            &mut acc,
            &mut |_| {},
        )
        .unwrap();
        assert!(acc.ablations > 0);

        // Naive: a full forward with an AddDirection edit for every (feature, cell) where it fires.
        let mut naive: HashMap<(u32, u16, u32), EdgeSums> = HashMap::new();
        let mut naive_active: HashMap<u32, u32> = HashMap::new();
        for cell in &cells {
            let batch = PackedBatch::from_cells(std::slice::from_ref(cell)).unwrap();
            let hooks = [
                HookPoint::ResidPost(0),
                HookPoint::ResidPost(1),
                HookPoint::ResidPost(2),
            ];
            let clean = run(
                &enc,
                &batch,
                &HookPlan::new().capture_many(hooks),
                Start::Embed,
                false,
            )
            .unwrap();
            let positions: Vec<usize> = (1..cell.len()).collect();
            let rows_of =
                |m: &Matrix| -> Vec<f32> { positions.iter().flat_map(|&p| m.row(p).to_vec()).collect() };
            let codes = src.encode(&rows_of(clean.captures.get(hooks[0]).unwrap()));
            for f in 0..48u32 {
                let active: Vec<(usize, f32)> = (0..positions.len())
                    .filter_map(|p| {
                        let (i, v) = codes.row(p);
                        i.iter()
                            .zip(v)
                            .find(|(&g, &v)| g == f && v > 0.0)
                            .map(|(_, &v)| (p, v))
                    })
                    .collect();
                if active.is_empty() {
                    continue;
                }
                *naive_active.entry(f).or_default() += 1;
                let rows: Vec<usize> = active.iter().map(|&(p, _)| positions[p]).collect();
                let scales: Vec<f32> = active.iter().map(|&(_, v)| -v).collect();
                let edit = Edit::AddDirection {
                    rows,
                    direction: src.decoder_row(f as usize).to_vec(),
                    scales,
                };
                let plan = HookPlan::new().edit(hooks[0], edit).capture_many(hooks);
                let ablated = run(&enc, &batch, &plan, Start::Embed, false).unwrap();
                for (t, (hook, tsae)) in setup.targets.iter().enumerate() {
                    let pick = |m: &Matrix| -> Vec<f32> {
                        active
                            .iter()
                            .flat_map(|&(p, _)| m.row(positions[p]).to_vec())
                            .collect()
                    };
                    let n = active.len();
                    let mut both = pick(clean.captures.get(*hook).unwrap());
                    both.extend(pick(ablated.captures.get(*hook).unwrap()));
                    let codes = tsae.encode(&both);
                    let mut dense = vec![0.0f64; 48];
                    for j in 0..n {
                        let (bi, bv) = codes.row(j);
                        let (ai, av) = codes.row(n + j);
                        bi.iter()
                            .zip(bv)
                            .for_each(|(&g, &v)| dense[g as usize] -= v as f64);
                        ai.iter()
                            .zip(av)
                            .for_each(|(&g, &v)| dense[g as usize] += v as f64);
                    }
                    for (g, x) in dense.iter().enumerate() {
                        let x = x / active.len() as f64;
                        if x != 0.0 {
                            let e = naive.entry((f, t as u16, g as u32)).or_default();
                            e.nonzero.push(x);
                            if x > 0.0 {
                                e.positive += 1
                            } else {
                                e.negative += 1
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(acc.cells_active, naive_active);
        // Equal up to the rounding of GEMMs over other row counts (the SAE encodes here run over one
        // ablation's rows, there over a whole packed group): no edge above 1e-6 is missing on either
        // side, and the sums agree.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (1.0 + b.abs());
        let sum = |e: &EdgeSums| e.nonzero.mean() * e.nonzero.count() as f64;
        for (k, e) in &naive {
            let got = acc.edges.get(k).copied().unwrap_or_default();
            assert!(close(sum(&got), sum(e)), "{k:?}: {got:?} vs {e:?}");
            if sum(e).abs() > 1e-6 {
                assert_eq!((got.positive, got.negative), (e.positive, e.negative), "{k:?}");
                let n = naive_active[&k.0];
                let (a, b) = (got.stats(n), e.stats(n));
                assert!(
                    close(a.t, b.t) || (a.t.is_nan() && b.t.is_nan()),
                    "{k:?}: t {} vs {}",
                    a.t,
                    b.t
                );
            }
        }
        for (k, e) in &acc.edges {
            let want = naive.get(k).copied().unwrap_or_default();
            assert!(close(sum(e), sum(&want)), "{k:?}: {e:?} vs {want:?}");
        }
    }

    #[test]
    fn accumulators_round_trip_through_bytes() {
        let mut acc = TraceAccumulator {
            ablations: 7,
            ..Default::default()
        };
        acc.cells_active.insert(3, 2);
        let mut changes = HashMap::new();
        changes.insert(5u32, 0.25f64);
        changes.insert(9u32, -1.5f64);
        acc.add_cell(3, 1, &changes, &[1.0, -1.0]);
        acc.add_cell(3, 1, &changes, &[1.0, -1.0]);
        let bytes = acc.to_bytes();
        let back = TraceAccumulator::from_bytes(&bytes).unwrap();
        assert_eq!(back.edges, acc.edges);
        assert_eq!(back.cells_active, acc.cells_active);
        assert_eq!(back.null, acc.null);
        assert_eq!(acc.null[&(3, 1, 9)][1].sum, 3.0);
        assert_eq!(back.to_bytes(), bytes);
        assert!(TraceAccumulator::from_bytes(&bytes[..bytes.len() - 1]).is_none());
    }

    /// A permutation whose signs are all + gives the observed statistics; flipping every sign negates
    /// the mean and keeps |d|; the signs are ±1 at about half each, and depend on the cell's content.
    #[test]
    fn sign_flips_reproduce_and_mirror_the_statistics() {
        let mut acc = TraceAccumulator::default();
        let obs = [0.5, -0.25, 1.0, 0.75];
        for x in obs {
            let mut changes = HashMap::new();
            changes.insert(2u32, x);
            acc.add_cell(1, 0, &changes, &[1.0, -1.0]);
        }
        let e = acc.edges[&(1, 0, 2)];
        let flips = &acc.null[&(1, 0, 2)];
        // Six cells: two with no change.
        let (plain, same, mirrored) = (
            e.stats(6),
            e.flipped_stats(6, &flips[0]),
            e.flipped_stats(6, &flips[1]),
        );
        for (a, b) in [
            (plain.mean, same.mean),
            (plain.sd, same.sd),
            (plain.t, same.t),
            (plain.p, same.p),
        ] {
            assert!((a - b).abs() < 1e-12 * a.abs().max(1.0), "{a} vs {b}");
        }
        assert!(
            (mirrored.mean + plain.mean).abs() < 1e-12 && (mirrored.cohens_d + plain.cohens_d).abs() < 1e-12
        );
        assert_eq!(mirrored.sign_consistency, plain.sign_consistency);
        let null = SignFlipNull {
            permutations: 4000,
            seed: 3,
        };
        let signs = null.signs(7, &[5, 6, 7]);
        let plus = signs.iter().filter(|&&s| s > 0.0).count();
        assert!((1800..2200).contains(&plus), "{plus}");
        assert_eq!(signs, null.signs(7, &[5, 6, 7]));
        assert_ne!(signs, null.signs(7, &[5, 6, 8]));
        assert_ne!(signs, null.signs(8, &[5, 6, 7]));
    }

    /// The planted circuit (test_model::planted_circuit_encoder): source feature i (direction e_i at
    /// blocks.0) drives target feature σ(i) (direction e_{4+σ(i)} at blocks.1) and nothing else. Every
    /// planted edge is found with the right sign (ablating the source lowers the target) at q ≤ 0.05, and
    /// no other edge is found at any threshold (nothing else changes at all).
    #[test]
    fn recovers_a_planted_circuit_and_nothing_else() {
        let sigma = [2usize, 0, 3, 1];
        let enc = crate::test_model::planted_circuit_encoder(sigma);
        let d = 16;
        // SAEs reading unit directions, k = 1, with a threshold so that unrelated positions stay inactive.
        let sae = |offset: usize, n: usize| {
            let rows: Vec<f32> = (0..n)
                .flat_map(|f| (0..d).map(move |k| (k == offset + f) as u8 as f32))
                .collect();
            TopKSae {
                d_in: d,
                d_sae: n,
                k: 1,
                w_enc: rows.clone(),
                b_enc: vec![-0.3; n],
                w_dec: rows,
                b_dec: vec![0.0; d],
            }
        };
        let (src, tgt) = (sae(0, 4), sae(4, 4));
        let setup = TraceSetup {
            source_layer: 0,
            source_sae: &src,
            targets: vec![(HookPoint::ResidPost(1), &tgt)],
            special_ids: vec![],
            max_batch_tokens: 200,
            null: SignFlipNull::default(),
        };
        let mut rng = crate::rng::Rng::new(11, 12);
        let cells: Vec<Vec<u32>> = (0..40)
            .map(|_| {
                (0..12)
                    .map(|_| {
                        if rng.uniform() < 0.5 {
                            rng.below(24) as u32
                        } else {
                            24 + rng.below(10) as u32
                        }
                    })
                    .collect()
            })
            .collect();
        let mut acc = TraceAccumulator::default();
        trace_cells(
            (&enc, &CpuForward),
            &setup,
            &[0, 1, 2, 3],
            &cells,
            None,
            &mut acc,
            &mut |_| {},
        )
        .unwrap();
        let keys: Vec<_> = acc.edges.keys().copied().collect();
        let stats: Vec<EdgeStats> = keys
            .iter()
            .map(|k| acc.edges[k].stats(acc.cells_active[&k.0]))
            .collect();
        let q = crate::stats::bh_qvalues(&stats.iter().map(|s| s.p).collect::<Vec<_>>()).unwrap();
        let mut found: Vec<(u32, u32)> = keys
            .iter()
            .zip(&stats)
            .zip(&q)
            .filter(|((_, _), &q)| q <= 0.05)
            .map(|((k, s), _)| {
                assert!(s.mean < 0.0 && s.sign_consistency == 1.0, "{k:?}: {s:?}");
                (k.0, k.2)
            })
            .collect();
        found.sort_unstable();
        let planted: Vec<(u32, u32)> = (0..4).map(|i| (i as u32, sigma[i] as u32)).collect();
        assert_eq!(found, planted);
        // Nothing else changed anywhere: the only edges with any change are the planted ones.
        let mut any: Vec<(u32, u32)> = keys.iter().map(|k| (k.0, k.2)).collect();
        any.sort_unstable();
        assert_eq!(any, planted);
        assert!(acc.cells_active.values().all(|&n| n >= 10));
    }

    /// A feature that never fires is never ablated; one that fires in a cell changes something there.
    #[test]
    fn inactive_features_are_skipped() {
        let enc = tiny_encoder(2, 64, 2, 128, 50, 9);
        let src = crate::sae::tests::random_sae(64, 48, 2, 5);
        let tgt = crate::sae::tests::random_sae(64, 48, 4, 6);
        let setup = TraceSetup {
            source_layer: 0,
            source_sae: &src,
            targets: vec![(HookPoint::ResidPost(1), &tgt)],
            special_ids: vec![],
            max_batch_tokens: 1000,
            null: SignFlipNull::default(),
        };
        let cells: Vec<Vec<u32>> = vec![(1..12).collect(), (20..31).collect()];
        let mut all = TraceAccumulator::default();
        let features: Vec<u32> = (0..48).collect();
        trace_cells(
            (&enc, &CpuForward),
            &setup,
            &features,
            &cells,
            None,
            &mut all,
            &mut |_| {},
        )
        .unwrap();
        let silent: Vec<u32> = features
            .iter()
            .copied()
            .filter(|f| !all.cells_active.contains_key(f))
            .collect();
        assert!(!silent.is_empty(), "every feature fired; pick a sparser SAE");
        let mut acc = TraceAccumulator::default();
        trace_cells(
            (&enc, &CpuForward),
            &setup,
            &silent,
            &cells,
            None,
            &mut acc,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(acc.ablations, 0);
        assert!(acc.edges.is_empty());
        assert!(all.edges.keys().all(|(f, _, _)| all.cells_active.contains_key(f)));
    }

    #[test]
    fn a_cell_does_not_depend_on_the_cells_packed_with_it() {
        let enc = tiny_encoder(2, 64, 4, 128, 40, 3);
        let cells: Vec<Vec<u32>> = (0..4)
            .map(|c| (0..20 + 7 * c).map(|i| (i * 7 + c) as u32 % 40).collect())
            .collect();
        let hook = HookPoint::ResidPost(1);
        let plan = HookPlan::new().capture(hook);
        let alone = run(
            &enc,
            &PackedBatch::from_cells(&cells[2..3]).unwrap(),
            &plan,
            Start::Embed,
            false,
        )
        .unwrap();
        let packed = run(
            &enc,
            &PackedBatch::from_cells(&cells).unwrap(),
            &plan,
            Start::Embed,
            false,
        )
        .unwrap();
        let batch = PackedBatch::from_cells(&cells).unwrap();
        let r = batch.cell_range(2);
        let a = alone.captures.get(hook).unwrap();
        let p = packed.captures.get(hook).unwrap().slice_rows(r.start, r.end);
        assert_eq!(a.as_slice(), p.as_slice());
    }
}
