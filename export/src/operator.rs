//! Gene × gene operators read out of a model, their compositions, and rank-k surrogates.
//!
//! Constructions (per head `(l, h)`, over a panel of N genes; the README defines them in full):
//! - `weights-qk`: `A = softmax_rows(Q·Kᵀ/√d_h)`, `Q = E·W_Qᵀ + b_Q`, `K = E·W_Kᵀ + b_K`, where row g of
//!   `E` is the embedding-stage output of gene g alone (after `<cls>` when the model has one). No cells.
//! - `weights-ov`: `A = (E·W_Vᵀ + b_V)·W_Oᵀ·Eᵀ / d_model` (W_O: the head's columns of the output projection).
//! - `attention`: `A[g, g'] = Σ_cells p_c(g→g') / #{cells holding both}`, p the head's softmax attention
//!   probability from gene g's position to g''s position in a reference cell (the softmax runs over the
//!   whole cell, specials included; only panel-gene pairs are kept).
//!
//! Compositions: one head; a pool (the mean of several heads); the drift map
//! `F = [A₁ − A₂ | A₂ − A₃ | …]` between blocks of layers, each `A_b` the pool of all heads of block b.

// Index loops here mirror the matrix formulas of the module doc.
#![allow(clippy::needless_range_loop)]

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rayon::prelude::*;
use scinterp_engine::encoder::PostLnBlock;
use scinterp_engine::formats::checkpoint::{read_checkpoint, write_checkpoint, CheckpointError};
use scinterp_engine::{Encoder, HookPlan, HookPoint, Matrix, PackedBatch, Start};

use crate::cells::{ModelGenes, PanelGene};
use crate::error::ExportError;

/// A head: layer and head index, written `L.H`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct HeadId {
    pub layer: usize,
    pub head: usize,
}

impl std::fmt::Display for HeadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.layer, self.head)
    }
}

/// How a head's operator is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Construction {
    WeightsQk,
    WeightsOv,
    Attention,
}

impl Construction {
    pub fn parse(s: &str) -> Result<Self, ExportError> {
        match s {
            "weights-qk" => Ok(Construction::WeightsQk),
            "weights-ov" => Ok(Construction::WeightsOv),
            "attention" => Ok(Construction::Attention),
            _ => Err(ExportError::option(
                "--construction",
                format!("`{s}`: expected weights-qk, weights-ov or attention"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Construction::WeightsQk => "weights-qk",
            Construction::WeightsOv => "weights-ov",
            Construction::Attention => "attention",
        }
    }
}

/// How head operators are combined into the tool's operator.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Composition {
    /// One head (`[N, N]`), or the mean of several (a pool, `[N, N]`).
    Heads(Vec<HeadId>),
    /// The drift map between blocks of layers, `[N, (B−1)·N]`.
    Drift(Vec<Vec<usize>>),
}

impl Composition {
    /// `--heads`: `L.H[,L.H…]` or `all`; `--drift`: blocks of layers `a-b;c;d-e` or `auto` (three
    /// contiguous blocks of near-equal size). Heads and layers are checked against the model's shape.
    pub fn parse(
        heads: Option<&str>,
        drift: Option<&str>,
        n_layers: usize,
        n_heads: usize,
    ) -> Result<Self, ExportError> {
        let shape = format!(
            "the model has {n_layers} layers × {n_heads} heads (0.0 … {}.{})",
            n_layers.saturating_sub(1),
            n_heads.saturating_sub(1)
        );
        if let Some(d) = drift {
            if heads.is_some() {
                return Err(ExportError::option(
                    "--drift",
                    "give either --heads or --drift, not both",
                ));
            }
            let blocks: Vec<Vec<usize>> = if d == "auto" {
                if n_layers < 2 {
                    return Err(ExportError::option(
                        "--drift",
                        format!("needs two layers or more; {shape}"),
                    ));
                }
                let b = n_layers.min(3);
                (0..b)
                    .map(|i| (i * n_layers / b..(i + 1) * n_layers / b).collect())
                    .collect()
            } else {
                let mut blocks = Vec::new();
                for part in d.split(';') {
                    let part = part.trim();
                    let (a, b) = part.split_once('-').unwrap_or((part, part));
                    let (a, b) = match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                        (Ok(a), Ok(b)) if a <= b => (a, b),
                        _ => {
                            return Err(ExportError::option(
                                "--drift",
                                format!("`{part}` is not a layer or a range a-b"),
                            ))
                        }
                    };
                    if b >= n_layers {
                        return Err(ExportError::option(
                            "--drift",
                            format!("layer {b} does not exist: {shape}"),
                        ));
                    }
                    blocks.push((a..=b).collect());
                }
                blocks
            };
            if blocks.len() < 2 {
                return Err(ExportError::option(
                    "--drift",
                    "needs two blocks or more (e.g. 0-3;4-7;8-11)",
                ));
            }
            return Ok(Composition::Drift(blocks));
        }
        let spec = heads.unwrap_or("all");
        if spec == "all" {
            return Ok(Composition::Heads(
                (0..n_layers)
                    .flat_map(|layer| (0..n_heads).map(move |head| HeadId { layer, head }))
                    .collect(),
            ));
        }
        let mut out = Vec::new();
        for part in spec.split(',') {
            let part = part.trim();
            let parsed = part.split_once('.').and_then(|(l, h)| {
                Some(HeadId {
                    layer: l.parse().ok()?,
                    head: h.parse().ok()?,
                })
            });
            let Some(id) = parsed else {
                return Err(ExportError::option(
                    "--heads",
                    format!("`{part}` is not LAYER.HEAD (e.g. 2.1) or all"),
                ));
            };
            if id.layer >= n_layers || id.head >= n_heads {
                return Err(ExportError::option(
                    "--heads",
                    format!("head {id} does not exist: {shape}"),
                ));
            }
            if !out.contains(&id) {
                out.push(id);
            }
        }
        Ok(Composition::Heads(out))
    }

    /// Every head the composition reads.
    pub fn heads(&self, n_heads: usize) -> Vec<HeadId> {
        match self {
            Composition::Heads(h) => h.clone(),
            Composition::Drift(blocks) => blocks
                .iter()
                .flatten()
                .flat_map(|&layer| (0..n_heads).map(move |head| HeadId { layer, head }))
                .collect(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Composition::Heads(h) if h.len() == 1 => format!("head {}", h[0]),
            Composition::Heads(h) => format!("pool of {} heads", h.len()),
            Composition::Drift(b) => format!(
                "drift between {} layer blocks ({})",
                b.len(),
                b.iter()
                    .map(|l| l.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
        }
    }
}

/// A dense row-major matrix of f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Dense {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Dense {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// The embedding basis: row g = the embedding-stage output of panel gene g alone (`[cls, g]` → row 1 when
/// the model's cells start with `<cls>`), `[N, d_model]`.
pub fn gene_basis(
    encoder: &dyn Encoder,
    genes: &ModelGenes,
    panel: &[PanelGene],
) -> Result<Matrix, ExportError> {
    let cls = genes.cls();
    let cells: Vec<Vec<u32>> = panel
        .iter()
        .map(|g| match cls {
            Some((c, _)) => vec![c, g.token],
            None => vec![g.token],
        })
        .collect();
    let mut batch = PackedBatch::from_cells(&cells)?;
    if let Some(v) = genes.typical_value() {
        let cls_value = cls.map(|c| c.1);
        let values = panel
            .iter()
            .flat_map(|_| cls_value.into_iter().chain(std::iter::once(v)))
            .collect();
        batch = batch.with_values(values)?;
    }
    let embedded = encoder.embed(&batch)?;
    let d = embedded.cols();
    let pick = usize::from(cls.is_some());
    let mut out = Matrix::zeros(panel.len(), d);
    for g in 0..panel.len() {
        out.row_mut(g).copy_from_slice(embedded.row(batch.row(g, pick)));
    }
    Ok(out)
}

/// `x·Wᵀ + b` for the rows `rows` of a PyTorch-layout weight (`[out, in]`), `x` `[n, in]` → `[n, rows.len()]`.
fn project(
    x: &Matrix,
    weight: &[f32],
    bias: Option<&[f32]>,
    in_features: usize,
    rows: std::ops::Range<usize>,
) -> Mat<f32> {
    let w = faer::MatRef::from_row_major_slice(
        &weight[rows.start * in_features..rows.end * in_features],
        rows.len(),
        in_features,
    );
    let mut out = Mat::<f32>::zeros(x.rows(), rows.len());
    matmul(
        out.as_mut(),
        Accum::Replace,
        x.as_faer(),
        w.transpose(),
        1.0,
        Par::rayon(0),
    );
    if let Some(b) = bias {
        for j in 0..rows.len() {
            let bj = b[rows.start + j];
            for i in 0..x.rows() {
                out[(i, j)] += bj;
            }
        }
    }
    out
}

/// The head's Q, K or V rows of the fused projection (`part` 0, 1, 2).
fn head_rows(block: &PostLnBlock, head: usize, part: usize) -> std::ops::Range<usize> {
    let hidden = block.n_heads * block.head_dim;
    let start = part * hidden + head * block.head_dim;
    start..start + block.head_dim
}

fn softmax_rows(m: &mut Mat<f32>) {
    for i in 0..m.nrows() {
        let max = (0..m.ncols())
            .map(|j| m[(i, j)])
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f64;
        for j in 0..m.ncols() {
            let e = (m[(i, j)] - max).exp();
            m[(i, j)] = e;
            sum += e as f64;
        }
        let inv = (1.0 / sum) as f32;
        for j in 0..m.ncols() {
            m[(i, j)] *= inv;
        }
    }
}

fn to_dense(m: &Mat<f32>) -> Dense {
    let mut d = Dense::zeros(m.nrows(), m.ncols());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            d.data[i * m.ncols() + j] = m[(i, j)];
        }
    }
    d
}

/// The weights-only operator of one head (`weights-qk` or `weights-ov`), `[N, N]`.
pub fn weights_operator(
    encoder: &dyn Encoder,
    basis: &Matrix,
    head: HeadId,
    construction: Construction,
) -> Dense {
    let block = encoder.block(head.layer);
    let d = basis.cols();
    let qkv = &block.qkv;
    let n = basis.rows();
    let mut out = Mat::<f32>::zeros(n, n);
    match construction {
        Construction::WeightsQk => {
            let q = project(basis, qkv.weight(), qkv.bias(), d, head_rows(block, head.head, 0));
            let k = project(basis, qkv.weight(), qkv.bias(), d, head_rows(block, head.head, 1));
            let scale = 1.0 / (block.head_dim as f32).sqrt();
            matmul(
                out.as_mut(),
                Accum::Replace,
                q.as_ref(),
                k.transpose(),
                scale,
                Par::rayon(0),
            );
            softmax_rows(&mut out);
        }
        Construction::WeightsOv | Construction::Attention => {
            // (attention operators come from cells: [`attention_operators`]; this arm is the OV circuit)
            let v = project(basis, qkv.weight(), qkv.bias(), d, head_rows(block, head.head, 2));
            // W_O's columns for this head: attn_out.weight is [d, H], columns h·dh..
            let dh = block.head_dim;
            let wo = faer::MatRef::from_row_major_slice(block.attn_out.weight(), d, d);
            let wo_h = wo.subcols(head.head * dh, dh);
            let mut written = Mat::<f32>::zeros(n, d);
            matmul(
                written.as_mut(),
                Accum::Replace,
                v.as_ref(),
                wo_h.transpose(),
                1.0,
                Par::rayon(0),
            );
            matmul(
                out.as_mut(),
                Accum::Replace,
                written.as_ref(),
                basis.as_faer().transpose(),
                1.0 / d as f32,
                Par::rayon(0),
            );
        }
    }
    to_dense(&out)
}

/// Reference cells as the model reads them.
pub struct TokenCells {
    pub tokens: Vec<Vec<u32>>,
    pub values: Option<Vec<Vec<f32>>>,
}

/// Where the attention pass keeps its checkpoint, and which run it belongs to: a killed export resumes
/// from the last saved batch, and the sums it resumes from are the exact ones it saved, so the operators
/// come out identical to an uninterrupted run's.
pub struct AttentionResume {
    pub path: std::path::PathBuf,
    /// What the sums depend on (model weights, cells, panel, heads, batch size); a checkpoint with other
    /// settings is refused, never resumed.
    pub settings: serde_json::Value,
    /// Save at most this often: a save rewrites every head's `[N, N]` sums.
    pub every: std::time::Duration,
    /// Testing: save and stop (as a kill would, but with the checkpoint just written) after this many
    /// batches of this run.
    pub stop_after_batches: Option<usize>,
}

const ATTENTION_MAGIC: &[u8; 8] = b"SCIEXATT";
const ATTENTION_WHAT: &str = "a scinterp export checkpoint";

/// The checkpoint's payload: `counts` (u32) then each head's sums (f64), little-endian.
fn attention_payload(counts: &[u32], sums: &[Vec<f64>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(counts.len() * 4 + sums.iter().map(|s| s.len() * 8).sum::<usize>());
    out.extend(counts.iter().flat_map(|c| c.to_le_bytes()));
    for sum in sums {
        out.extend(sum.iter().flat_map(|v| v.to_le_bytes()));
    }
    out
}

/// The sums and counts saved by an earlier run of the same export, and the cells it had done (a whole
/// number of batches, or all of them).
fn resume_attention(
    resume: &AttentionResume,
    counts: &mut [u32],
    sums: &mut [Vec<f64>],
    total_cells: usize,
    batch_cells: usize,
) -> Result<usize, ExportError> {
    let Some(c) = read_checkpoint(&resume.path, ATTENTION_MAGIC, ATTENTION_WHAT)? else {
        return Ok(0);
    };
    if c.settings != resume.settings {
        return Err(ExportError::invalid(
            &resume.path,
            "holds the checkpoint of another export (other model, cells, panel, heads or --max-len); rerun \
             the command that wrote it to finish it, or remove the file to start this one",
        ));
    }
    let damaged = || -> ExportError {
        CheckpointError::Damaged {
            path: resume.path.clone(),
            what: ATTENTION_WHAT,
        }
        .into()
    };
    let (n2, done) = (counts.len(), c.done as usize);
    let on_a_batch = done % batch_cells == 0 || done == total_cells;
    if c.payload.len() != n2 * 4 + sums.len() * n2 * 8 || done > total_cells || !on_a_batch {
        return Err(damaged());
    }
    if n2 == 0 {
        return Ok(done);
    }
    let (head, rest) = c.payload.split_at(n2 * 4);
    for (dst, b) in counts.iter_mut().zip(head.chunks_exact(4)) {
        *dst = u32::from_le_bytes(b.try_into().expect("4 bytes"));
    }
    for (sum, part) in sums.iter_mut().zip(rest.chunks_exact(n2 * 8)) {
        for (dst, b) in sum.iter_mut().zip(part.chunks_exact(8)) {
            *dst = f64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
    }
    Ok(done)
}

/// Cell-averaged attention between panel genes for each head of `heads` (see the module doc), with
/// `progress(done_cells)` called after each batch; with `resume`, checkpointed and resumable.
pub fn attention_operators(
    encoder: &dyn Encoder,
    cells: &TokenCells,
    panel: &[PanelGene],
    heads: &[HeadId],
    batch_cells: usize,
    resume: Option<&AttentionResume>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<Dense>, ExportError> {
    let n = panel.len();
    let index: std::collections::HashMap<u32, usize> =
        panel.iter().enumerate().map(|(i, g)| (g.token, i)).collect();
    let mut sums: Vec<Vec<f64>> = vec![vec![0.0; n * n]; heads.len()];
    let mut counts = vec![0u32; n * n];
    let batch_cells = batch_cells.max(1);
    let resumed_at = match resume {
        Some(r) => resume_attention(r, &mut counts, &mut sums, cells.tokens.len(), batch_cells)?,
        None => 0,
    };
    if resumed_at > 0 {
        progress(resumed_at);
    }
    let mut last_save = std::time::Instant::now();
    let mut batches_this_run = 0usize;
    let mut layers: Vec<usize> = heads.iter().map(|h| h.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    let plan = layers.iter().fold(HookPlan::new(), |p, &l| {
        p.capture(if l == 0 {
            HookPoint::Embed
        } else {
            HookPoint::ResidPost(l - 1)
        })
    });
    let d = encoder.dims().d_model;
    for (b, chunk) in cells.tokens.chunks(batch_cells).enumerate() {
        let first = b * batch_cells;
        if first < resumed_at {
            continue;
        }
        let mut batch = PackedBatch::from_cells(chunk)?;
        if let Some(values) = &cells.values {
            batch = batch.with_values(
                values[first..first + chunk.len()]
                    .iter()
                    .flatten()
                    .copied()
                    .collect(),
            )?;
        }
        let out = scinterp_engine::run(encoder, &batch, &plan, Start::Embed, false)?;
        // Panel positions of each cell: (position, panel index).
        let positions: Vec<Vec<(usize, usize)>> = chunk
            .iter()
            .map(|c| {
                c.iter()
                    .enumerate()
                    .filter_map(|(p, t)| index.get(t).map(|&g| (p, g)))
                    .collect()
            })
            .collect();
        for pos in &positions {
            for &(_, a) in pos {
                for &(_, b) in pos {
                    counts[a * n + b] += 1;
                }
            }
        }
        heads
            .par_iter()
            .zip(sums.par_iter_mut())
            .for_each(|(&head, sum)| {
                let hook = if head.layer == 0 {
                    HookPoint::Embed
                } else {
                    HookPoint::ResidPost(head.layer - 1)
                };
                let x = out.captures.get(hook).expect("captured");
                let block = encoder.block(head.layer);
                let q = project(
                    x,
                    block.qkv.weight(),
                    block.qkv.bias(),
                    d,
                    head_rows(block, head.head, 0),
                );
                let k = project(
                    x,
                    block.qkv.weight(),
                    block.qkv.bias(),
                    d,
                    head_rows(block, head.head, 1),
                );
                let scale = 1.0 / (block.head_dim as f32).sqrt();
                for (c, pos) in positions.iter().enumerate() {
                    if pos.is_empty() {
                        continue;
                    }
                    let range = batch.cell_range(c);
                    let qp =
                        Mat::<f32>::from_fn(pos.len(), block.head_dim, |i, j| q[(range.start + pos[i].0, j)]);
                    let kc = k.as_ref().subrows(range.start, range.len());
                    let mut s = Mat::<f32>::zeros(pos.len(), range.len());
                    matmul(
                        s.as_mut(),
                        Accum::Replace,
                        qp.as_ref(),
                        kc.transpose(),
                        scale,
                        Par::Seq,
                    );
                    softmax_rows(&mut s);
                    for (i, &(_, a)) in pos.iter().enumerate() {
                        for &(p, g) in pos {
                            sum[a * n + g] += s[(i, p)] as f64;
                        }
                    }
                }
            });
        progress(first + chunk.len());
        batches_this_run += 1;
        if let Some(r) = resume {
            let stop = r.stop_after_batches == Some(batches_this_run);
            let last = first + chunk.len() == cells.tokens.len();
            if !last && (stop || last_save.elapsed() >= r.every) {
                write_checkpoint(
                    &r.path,
                    ATTENTION_MAGIC,
                    &r.settings,
                    (first + chunk.len()) as u64,
                    &attention_payload(&counts, &sums),
                )?;
                last_save = std::time::Instant::now();
            }
            if stop && !last {
                return Err(ExportError::Stopped {
                    batches: batches_this_run,
                    checkpoint: r.path.clone(),
                });
            }
        }
    }
    Ok(sums
        .into_iter()
        .map(|sum| Dense {
            rows: n,
            cols: n,
            data: sum
                .iter()
                .zip(&counts)
                .map(|(&s, &c)| if c == 0 { 0.0 } else { (s / c as f64) as f32 })
                .collect(),
        })
        .collect())
}

/// The composed operator from per-head operators (`ops[i]` belongs to `heads[i]`).
pub fn compose(composition: &Composition, heads: &[HeadId], ops: &[Dense]) -> Dense {
    let n = ops[0].rows;
    let pool = |members: &[HeadId]| {
        let mut out = vec![0f64; n * n];
        for m in members {
            let i = heads
                .iter()
                .position(|h| h == m)
                .expect("every member was computed");
            for (o, &v) in out.iter_mut().zip(&ops[i].data) {
                *o += v as f64;
            }
        }
        out.iter()
            .map(|&v| (v / members.len() as f64) as f32)
            .collect::<Vec<f32>>()
    };
    match composition {
        Composition::Heads(members) => Dense {
            rows: n,
            cols: n,
            data: pool(members),
        },
        Composition::Drift(blocks) => {
            let pools: Vec<Vec<f32>> = blocks
                .iter()
                .map(|layers| {
                    let members: Vec<HeadId> = heads
                        .iter()
                        .copied()
                        .filter(|h| layers.contains(&h.layer))
                        .collect();
                    pool(&members)
                })
                .collect();
            let m = (blocks.len() - 1) * n;
            let mut out = Dense::zeros(n, m);
            for b in 0..blocks.len() - 1 {
                for i in 0..n {
                    for j in 0..n {
                        out.data[i * m + b * n + j] = pools[b][i * n + j] - pools[b + 1][i * n + j];
                    }
                }
            }
            out
        }
    }
}

/// The singular value decomposition of an operator, for rank-k surrogates.
pub struct OperatorSvd {
    /// `U·diag(s)`, `[N, r]` (f64).
    us: Mat<f64>,
    /// `V`, `[M, r]`.
    v: Mat<f64>,
    pub singular_values: Vec<f64>,
    pub rows: usize,
    pub cols: usize,
}

/// A rank-k truncated-SVD surrogate `F ≈ L·R`, `L = U_k·diag(s_k)` `[N, k]`, `R = V_kᵀ` `[k, M]`.
#[derive(Clone, Debug)]
pub struct Surrogate {
    pub rank: usize,
    pub left: Dense,
    pub right: Dense,
    /// `Σ_{i≤k} s_i² / Σ s_i²`.
    pub retained_energy: f64,
}

impl OperatorSvd {
    pub fn new(op: &Dense) -> Result<Self, ExportError> {
        let m = Mat::<f64>::from_fn(op.rows, op.cols, |i, j| op.data[i * op.cols + j] as f64);
        let svd = m
            .thin_svd()
            .map_err(|e| ExportError::Numeric(format!("the SVD of the operator failed: {e:?}")))?;
        let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
        let r = s.len();
        let u = svd.U();
        let us = Mat::<f64>::from_fn(op.rows, r, |i, j| u[(i, j)] * s[j]);
        Ok(OperatorSvd {
            us,
            v: svd.V().to_owned(),
            singular_values: s,
            rows: op.rows,
            cols: op.cols,
        })
    }

    /// Retained energy of rank k.
    pub fn energy(&self, k: usize) -> f64 {
        let total: f64 = self.singular_values.iter().map(|s| s * s).sum();
        if total == 0.0 {
            return 1.0;
        }
        self.singular_values.iter().take(k).map(|s| s * s).sum::<f64>() / total
    }

    /// Bytes of a rank-k surrogate in f32 (`4·k·(N + M)`).
    pub fn bytes(&self, k: usize) -> usize {
        4 * k * (self.rows + self.cols)
    }

    pub fn max_rank(&self) -> usize {
        self.singular_values.len()
    }

    pub fn surrogate(&self, k: usize) -> Surrogate {
        let k = k.min(self.max_rank());
        let mut left = Dense::zeros(self.rows, k);
        let mut right = Dense::zeros(k, self.cols);
        for i in 0..self.rows {
            for j in 0..k {
                left.data[i * k + j] = self.us[(i, j)] as f32;
            }
        }
        for j in 0..k {
            for c in 0..self.cols {
                right.data[j * self.cols + c] = self.v[(c, j)] as f32;
            }
        }
        Surrogate {
            rank: k,
            left,
            right,
            retained_energy: self.energy(k),
        }
    }

    /// (k, retained energy, bytes) for k = 1, 2, 4, … up to the full rank.
    pub fn energy_table(&self) -> Vec<(usize, f64, usize)> {
        let mut out = Vec::new();
        let mut k = 1;
        while k < self.max_rank() {
            out.push((k, self.energy(k), self.bytes(k)));
            k *= 2;
        }
        let r = self.max_rank();
        out.push((r, self.energy(r), self.bytes(r)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compositions_parse_and_refuse_missing_heads() {
        let c = Composition::parse(Some("1.0,2.1"), None, 3, 2).unwrap();
        assert_eq!(
            c,
            Composition::Heads(vec![HeadId { layer: 1, head: 0 }, HeadId { layer: 2, head: 1 }])
        );
        assert_eq!(Composition::parse(None, None, 3, 2).unwrap().heads(2).len(), 6);
        assert_eq!(
            Composition::parse(None, Some("auto"), 3, 2).unwrap(),
            Composition::Drift(vec![vec![0], vec![1], vec![2]])
        );
        assert_eq!(
            Composition::parse(None, Some("0-1;2"), 3, 2).unwrap(),
            Composition::Drift(vec![vec![0, 1], vec![2]])
        );
        let e = Composition::parse(Some("3.0"), None, 3, 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("head 3.0 does not exist") && e.contains("3 layers × 2 heads"),
            "{e}"
        );
        assert!(Composition::parse(Some("1.2"), None, 3, 2).is_err());
        assert!(Composition::parse(Some("x"), None, 3, 2).is_err());
        assert!(Composition::parse(None, Some("0"), 3, 2).is_err());
        assert!(Composition::parse(None, Some("0;5"), 3, 2).is_err());
    }

    #[test]
    fn drift_is_differences_of_block_pools() {
        let h = |layer| HeadId { layer, head: 0 };
        let heads = vec![h(0), h(1), h(2)];
        let ops: Vec<Dense> = (0..3)
            .map(|i| Dense {
                rows: 2,
                cols: 2,
                data: vec![i as f32; 4],
            })
            .collect();
        let f = compose(&Composition::Drift(vec![vec![0], vec![1], vec![2]]), &heads, &ops);
        assert_eq!((f.rows, f.cols), (2, 4));
        assert_eq!(f.data, vec![-1.0; 8]);
        let p = compose(&Composition::Heads(heads.clone()), &heads, &ops);
        assert_eq!(p.data, vec![1.0; 4]);
    }

    #[test]
    fn surrogates_reconstruct_and_report_energy() {
        // A rank-2 matrix: rank 2 keeps everything, rank 1 a known fraction.
        let (n, m) = (5, 4);
        let a: Vec<f32> = (0..n * m)
            .map(|i| ((i / m) as f32 + 1.0) * ((i % m) as f32) + if i % m == 0 { 3.0 } else { 0.0 })
            .collect();
        let op = Dense {
            rows: n,
            cols: m,
            data: a.clone(),
        };
        let svd = OperatorSvd::new(&op).unwrap();
        let s2 = svd.surrogate(2);
        assert!((s2.retained_energy - 1.0).abs() < 1e-9);
        for i in 0..n {
            for j in 0..m {
                let v: f32 = (0..2)
                    .map(|k| s2.left.data[i * 2 + k] * s2.right.data[k * m + j])
                    .sum();
                assert!((v - a[i * m + j]).abs() < 1e-4, "{v} vs {}", a[i * m + j]);
            }
        }
        let e1 = svd.energy(1);
        assert!(e1 > 0.5 && e1 < 1.0, "{e1}");
        assert_eq!(svd.bytes(2), 4 * 2 * (n + m));
        assert_eq!(svd.energy_table().last().unwrap().0, 4);
    }
}
