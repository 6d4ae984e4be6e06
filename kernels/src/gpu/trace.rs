//! Causal tracing on the GPU: launch wrappers of `trace.cu` and their host-side data.
//!
//! CPU reference: `scinterp_engine::trace` (`trace_cells`, `TraceAccumulator`).
//!
//! * [`AblationList`] + [`Kernels::trace_ablate`]: B edited copies of one packed batch's clean residual
//!   in one launch, copy b = clean − Σ a_f(row)·W_dec[f] at the rows where its feature f fires (the
//!   tracer's AddDirection ablation with scales −a_f(row)).
//! * [`TraceStats`] + [`Kernels::trace_reduce`]: per (source slot, target latent) Welford statistics
//!   of the per-cell changes, the sign counts and the sign-flip null sums, kept on the device across
//!   launches; [`TraceStats::download`] returns only the final statistics. [`TraceStatsHost::accumulate`]
//!   is the same computation on the CPU, operation for operation, in the same order. With
//!   [`ReduceSlots`], a launch's input copies update chosen slots (the features ablated in one cell).
//! * [`Kernels::trace_gather_rows`]: the rows of the tail's captures that the target SAEs encode.
//! * [`CodeSegments`] + [`Kernels::trace_code_sums`]: per ablation, the dense sum of the top-k codes over
//!   its rows ([`CodeSegments::sums_host`] is the CPU reference, same order).
//!
//! Numerics of the reduction: one thread owns one edge and pushes the cells in order with Welford's
//! update in f64 (as `RunningStats::push`), so no cancellation-prone Σx²−n·x̄² is formed and there are no
//! float atomics: results are bitwise reproducible, and for equal observations x they equal the CPU's
//! `RunningStats` bit for bit. The observations differ from the CPU's only in how the per-cell sums of
//! codes are formed (f32 sums over the active positions here, an interleaved f64 sum on the CPU): a
//! relative difference of about n·2⁻²⁴ in x, far below the 1e-2 tolerance on Cohen's d.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{GpuError, Kernels};

fn bad(kernel: &'static str) -> impl Fn(String) -> GpuError {
    move |reason| GpuError::BadArgs { kernel, reason }
}

/// B ablations of one packed batch of `tokens` rows, for an SAE with `n_features` latents. Ablation b
/// subtracts `activations[i] · W_dec[feature]` from row `rows[i]` of its copy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AblationList {
    tokens: usize,
    n_features: usize,
    features: Vec<u32>,
    /// `starts[b] .. starts[b + 1]`: ablation b's entries, sorted by row (stable).
    starts: Vec<u32>,
    rows: Vec<u32>,
    activations: Vec<f32>,
}

impl AblationList {
    pub fn new(tokens: usize, n_features: usize) -> Result<AblationList, GpuError> {
        if i32::try_from(tokens).is_err() || i32::try_from(n_features).is_err() {
            return Err(bad("trace_ablate_f32")(format!(
                "{tokens} tokens or {n_features} features exceed i32"
            )));
        }
        Ok(AblationList {
            tokens,
            n_features,
            starts: vec![0],
            ..Default::default()
        })
    }

    /// Number of copies (ablations).
    pub fn copies(&self) -> usize {
        self.features.len()
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The source feature of each copy.
    pub fn features(&self) -> &[u32] {
        &self.features
    }

    /// Adds the copy that ablates `feature` at `rows` with activations `a_f(row)` (the tracer's
    /// `Ablation::active`, mapped to packed rows). No rows: a clean copy. The list is unchanged on `Err`.
    pub fn push(&mut self, feature: u32, rows: &[usize], activations: &[f32]) -> Result<(), GpuError> {
        let bad = bad("trace_ablate_f32");
        if feature as usize >= self.n_features {
            return Err(bad(format!(
                "feature {feature} is outside the SAE ({} latents)",
                self.n_features
            )));
        }
        if activations.len() != rows.len() {
            return Err(bad(format!(
                "{} activations for {} rows",
                activations.len(),
                rows.len()
            )));
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= self.tokens) {
            return Err(bad(format!(
                "row {r} is outside the batch ({} tokens)",
                self.tokens
            )));
        }
        // Copies are the grid's y dimension; the kernel indexes entries with `int`.
        if i32::try_from(self.rows.len() + rows.len()).is_err() || self.features.len() >= 65_535 {
            return Err(bad("more than 65,535 copies or i32::MAX entries".into()));
        }
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i]); // stable: a repeated row keeps its order
        self.features.push(feature);
        self.rows.extend(order.iter().map(|&i| rows[i] as u32));
        self.activations.extend(order.iter().map(|&i| activations[i]));
        self.starts.push(self.rows.len() as u32);
        Ok(())
    }

    /// The copies on the CPU with the kernel's arithmetic: `[copies · tokens, d]`, equal bit for bit to
    /// the tracer's `*x -= v * w`.
    pub fn apply_host(&self, clean: &[f32], d: usize, w_dec: &[f32]) -> Result<Vec<f32>, GpuError> {
        let bad = bad("trace_ablate_f32");
        super::check_len("clean", clean.len(), self.tokens * d).map_err(|e| bad(e.to_string()))?;
        super::check_len("w_dec", w_dec.len(), self.n_features * d).map_err(|e| bad(e.to_string()))?;
        let block = self.tokens * d;
        let mut out = Vec::with_capacity(self.copies() * block);
        for b in 0..self.copies() {
            let at = out.len();
            out.extend_from_slice(&clean[..block]);
            let f = self.features[b] as usize;
            let w = &w_dec[f * d..(f + 1) * d];
            for e in self.starts[b] as usize..self.starts[b + 1] as usize {
                let row = at + self.rows[e] as usize * d;
                let a = self.activations[e];
                for (x, &wc) in out[row..row + d].iter_mut().zip(w) {
                    *x -= a * wc;
                }
            }
        }
        Ok(out)
    }

    /// Copies the list to the GPU.
    pub fn upload(&self, stream: &Arc<CudaStream>) -> Result<DeviceAblationList, GpuError> {
        let pad_u32 = |v: &[u32]| if v.is_empty() { vec![0u32] } else { v.to_vec() };
        let acts = if self.activations.is_empty() {
            vec![0.0f32]
        } else {
            self.activations.clone()
        };
        Ok(DeviceAblationList {
            tokens: self.tokens,
            n_features: self.n_features,
            copies: self.copies(),
            features: stream.clone_htod(&pad_u32(&self.features))?,
            starts: stream.clone_htod(&self.starts)?,
            rows: stream.clone_htod(&pad_u32(&self.rows))?,
            activations: stream.clone_htod(&acts)?,
        })
    }
}

/// An [`AblationList`] on the device (only `upload` builds one, so its rows and features are valid).
pub struct DeviceAblationList {
    tokens: usize,
    n_features: usize,
    copies: usize,
    features: CudaSlice<u32>,
    starts: CudaSlice<u32>,
    rows: CudaSlice<u32>,
    activations: CudaSlice<f32>,
}

impl DeviceAblationList {
    pub fn copies(&self) -> usize {
        self.copies
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

/// The hash the sign-flip null draws its signs from: `SignFlipNull::signs` of the engine, up to the
/// last step (see [`sign_flip_is_positive`]).
pub fn sign_flip_hash(seed: u64, feature: u32, cell_tokens: &[u32]) -> u64 {
    let mut h = splitmix64(seed ^ 0x51_6E_F1_1B ^ u64::from(feature));
    for &t in cell_tokens {
        h = splitmix64(h ^ u64::from(t));
    }
    h
}

/// The sign of permutation `p` for a (feature, cell) with hash `hash` (`true`: +1).
pub fn sign_flip_is_positive(hash: u64, p: u64) -> bool {
    splitmix64(hash ^ p.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 63 == 0
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Statistics of the edges (source slot k, target latent g) on the host: the layout of the device
/// state. Edge arrays are `[copies, n_targets]`, null arrays `[copies, permutations, n_targets]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceStatsHost {
    /// The source feature of each slot (copy index of the reduction's inputs).
    pub features: Vec<u32>,
    pub n_targets: usize,
    pub permutations: usize,
    /// Welford mean and M2 of the non-zero observations (their count is `positive + negative`).
    pub mean: Vec<f64>,
    pub m2: Vec<f64>,
    pub positive: Vec<u32>,
    pub negative: Vec<u32>,
    pub null_sum: Vec<f64>,
    pub null_positive: Vec<u32>,
    pub null_negative: Vec<u32>,
    /// Cells in which each slot's source fired (the `n` of its edges).
    pub cells_active: Vec<u32>,
}

/// One edge's statistics (`TraceAccumulator::edges` holds the same as `EdgeSums`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdgeStatsHost {
    pub count: u64,
    pub mean: f64,
    pub m2: f64,
    pub positive: u32,
    pub negative: u32,
}

impl TraceStatsHost {
    /// Empty statistics for `features.len()` slots.
    pub fn new(features: &[u32], n_targets: usize, permutations: usize) -> TraceStatsHost {
        let edges = features.len() * n_targets;
        let null = edges * permutations;
        TraceStatsHost {
            features: features.to_vec(),
            n_targets,
            permutations,
            mean: vec![0.0; edges],
            m2: vec![0.0; edges],
            positive: vec![0; edges],
            negative: vec![0; edges],
            null_sum: vec![0.0; null],
            null_positive: vec![0; null],
            null_negative: vec![0; null],
            cells_active: vec![0; features.len()],
        }
    }

    pub fn copies(&self) -> usize {
        self.features.len()
    }

    /// The edge (slot k, target g).
    pub fn edge(&self, k: usize, g: usize) -> EdgeStatsHost {
        let e = k * self.n_targets + g;
        EdgeStatsHost {
            count: u64::from(self.positive[e]) + u64::from(self.negative[e]),
            mean: self.mean[e],
            m2: self.m2[e],
            positive: self.positive[e],
            negative: self.negative[e],
        }
    }

    /// Permutation p of the edge (slot k, target g): (flipped sum, positive, negative).
    pub fn flip(&self, k: usize, p: usize, g: usize) -> (f64, u32, u32) {
        let at = (k * self.permutations + p) * self.n_targets + g;
        (self.null_sum[at], self.null_positive[at], self.null_negative[at])
    }

    /// What `trace_reduce` does, on the CPU, in the same order with the same operations: for every
    /// edge, the cells in order. Inputs as in [`Kernels::trace_reduce`] (host slices).
    /// `slots`: input copy k updates slot `slots[k]` (checked as [`TraceStats::slots`] does); `None`:
    /// slot k.
    pub fn accumulate(
        &mut self,
        clean_sum: &[f32],
        ablated_sum: &[f32],
        n_active: &[u32],
        sign_hash: &[u64],
        cells: usize,
        slots: Option<&[u32]>,
    ) -> Result<(), GpuError> {
        let identity: Vec<u32>;
        let slots = match slots {
            Some(s) => {
                check_slots(s, self.copies())?;
                s
            }
            None => {
                identity = (0..self.copies() as u32).collect();
                &identity
            }
        };
        check_reduce_lens(
            (slots.len(), cells, self.n_targets, self.permutations),
            (
                clean_sum.len(),
                ablated_sum.len(),
                n_active.len(),
                sign_hash.len(),
            ),
        )?;
        let f = self.n_targets;
        for (k, &slot) in slots.iter().enumerate() {
            let slot = slot as usize;
            for g in 0..f {
                let edge = slot * f + g;
                for c in 0..cells {
                    let kc = k * cells + c;
                    let n = n_active[kc];
                    if n == 0 {
                        continue;
                    }
                    let x = (f64::from(ablated_sum[kc * f + g]) - f64::from(clean_sum[kc * f + g]))
                        / f64::from(n);
                    if x == 0.0 {
                        continue;
                    }
                    let count = f64::from(self.positive[edge] + self.negative[edge] + 1);
                    let delta = x - self.mean[edge];
                    self.mean[edge] += delta / count;
                    self.m2[edge] += delta * (x - self.mean[edge]);
                    if x > 0.0 {
                        self.positive[edge] += 1;
                    } else {
                        self.negative[edge] += 1;
                    }
                    for p in 0..self.permutations {
                        let sx = if sign_flip_is_positive(sign_hash[kc], p as u64) {
                            x
                        } else {
                            -x
                        };
                        let at = (slot * self.permutations + p) * f + g;
                        self.null_sum[at] += sx;
                        if sx > 0.0 {
                            self.null_positive[at] += 1;
                        } else {
                            self.null_negative[at] += 1;
                        }
                    }
                }
            }
            self.cells_active[slot] += (0..cells).filter(|&c| n_active[k * cells + c] > 0).count() as u32;
        }
        Ok(())
    }
}

/// Checks the input lengths of one reduction over `cells` cells.
fn check_reduce_lens(
    (copies, cells, n_targets, permutations): (usize, usize, usize, usize),
    (clean, ablated, n_active, sign_hash): (usize, usize, usize, usize),
) -> Result<(), GpuError> {
    let bad = bad("trace_reduce");
    let kc = copies
        .checked_mul(cells)
        .ok_or_else(|| bad("copies × cells overflows".into()))?;
    let n = kc
        .checked_mul(n_targets)
        .ok_or_else(|| bad("copies × cells × targets overflows".into()))?;
    super::check_len("clean_sum", clean, n).map_err(|e| bad(e.to_string()))?;
    super::check_len("ablated_sum", ablated, n).map_err(|e| bad(e.to_string()))?;
    super::check_len("n_active", n_active, kc).map_err(|e| bad(e.to_string()))?;
    if permutations > 0 {
        super::check_len("sign_hash", sign_hash, kc).map_err(|e| bad(e.to_string()))?;
    }
    if i32::try_from(cells).is_err() {
        return Err(bad(format!("{cells} cells exceed i32")));
    }
    Ok(())
}

/// Slots of one reduction: distinct, each below `copies` (the state's slot count).
fn check_slots(slots: &[u32], copies: usize) -> Result<(), GpuError> {
    let bad = bad("trace_reduce");
    let mut seen = vec![false; copies];
    for &s in slots {
        match seen.get_mut(s as usize) {
            None => return Err(bad(format!("slot {s} is outside the {copies} slots"))),
            Some(true) => return Err(bad(format!("slot {s} given twice in one launch"))),
            Some(x) => *x = true,
        }
    }
    if slots.is_empty() || slots.len() > 65_535 {
        return Err(bad(format!("{} input copies (1–65,535)", slots.len())));
    }
    Ok(())
}

/// Which state slot each input copy of a [`Kernels::trace_reduce`] launch updates: checked (distinct,
/// within the state) and on the device. Only [`TraceStats::slots`] builds one.
pub struct ReduceSlots {
    slots: CudaSlice<u32>,
    len: usize,
    state_copies: usize,
}

impl ReduceSlots {
    /// Input copies of the launch.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The edge statistics of [`TraceStatsHost`], resident on the device and accumulated there by
/// [`Kernels::trace_reduce`] over any number of launches.
pub struct TraceStats {
    features: Vec<u32>,
    n_targets: usize,
    permutations: usize,
    mean: CudaSlice<f64>,
    m2: CudaSlice<f64>,
    positive: CudaSlice<u32>,
    negative: CudaSlice<u32>,
    null_sum: CudaSlice<f64>,
    null_positive: CudaSlice<u32>,
    null_negative: CudaSlice<u32>,
    cells_active: CudaSlice<u32>,
}

impl TraceStats {
    /// Zeroed statistics for one target SAE of `n_targets` latents and the source features `features`
    /// (one slot per copy of the reduction's inputs), with `permutations` sign flips per edge.
    pub fn new(
        stream: &Arc<CudaStream>,
        features: &[u32],
        n_targets: usize,
        permutations: usize,
    ) -> Result<TraceStats, GpuError> {
        let bad = bad("trace_reduce");
        if features.is_empty() || features.len() > 65_535 {
            return Err(bad(format!("{} source slots (1–65,535)", features.len())));
        }
        if n_targets == 0 || i32::try_from(n_targets).is_err() || i32::try_from(permutations).is_err() {
            return Err(bad(format!("{n_targets} targets or {permutations} permutations")));
        }
        let edges = features.len() * n_targets;
        let null = edges
            .checked_mul(permutations)
            .ok_or_else(|| bad("edges × permutations overflows".into()))?
            .max(1);
        Ok(TraceStats {
            features: features.to_vec(),
            n_targets,
            permutations,
            mean: stream.alloc_zeros(edges)?,
            m2: stream.alloc_zeros(edges)?,
            positive: stream.alloc_zeros(edges)?,
            negative: stream.alloc_zeros(edges)?,
            null_sum: stream.alloc_zeros(null)?,
            null_positive: stream.alloc_zeros(null)?,
            null_negative: stream.alloc_zeros(null)?,
            cells_active: stream.alloc_zeros(features.len())?,
        })
    }

    pub fn copies(&self) -> usize {
        self.features.len()
    }

    /// Checks and uploads `slots` for [`Kernels::trace_reduce`]: input copy k of the launch updates
    /// slot `slots[k]`; the slots are distinct and below [`TraceStats::copies`].
    pub fn slots(&self, stream: &Arc<CudaStream>, slots: &[u32]) -> Result<ReduceSlots, GpuError> {
        check_slots(slots, self.copies())?;
        Ok(ReduceSlots {
            slots: stream.clone_htod(slots)?,
            len: slots.len(),
            state_copies: self.copies(),
        })
    }

    /// The final statistics, copied to the host.
    pub fn download(&self, stream: &Arc<CudaStream>) -> Result<TraceStatsHost, GpuError> {
        let null = self.features.len() * self.n_targets * self.permutations;
        let mut null_sum = stream.clone_dtoh(&self.null_sum)?;
        let mut null_positive = stream.clone_dtoh(&self.null_positive)?;
        let mut null_negative = stream.clone_dtoh(&self.null_negative)?;
        null_sum.truncate(null);
        null_positive.truncate(null);
        null_negative.truncate(null);
        Ok(TraceStatsHost {
            features: self.features.clone(),
            n_targets: self.n_targets,
            permutations: self.permutations,
            mean: stream.clone_dtoh(&self.mean)?,
            m2: stream.clone_dtoh(&self.m2)?,
            positive: stream.clone_dtoh(&self.positive)?,
            negative: stream.clone_dtoh(&self.negative)?,
            null_sum,
            null_positive,
            null_negative,
            cells_active: stream.clone_dtoh(&self.cells_active)?,
        })
    }
}

impl Kernels {
    /// Writes `list.copies()` ablated copies of `clean` (`[tokens, d]` f32) to `out`
    /// (`[copies · tokens, d]`); `w_dec` is the source SAE's decoder, `[n_features, d]` row-major.
    pub fn trace_ablate(
        &self,
        stream: &Arc<CudaStream>,
        clean: &CudaSlice<f32>,
        (tokens, d): (usize, usize),
        w_dec: &CudaSlice<f32>,
        list: &DeviceAblationList,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        let bad = bad("trace_ablate_f32");
        if tokens != list.tokens {
            return Err(bad(format!(
                "{tokens} tokens, the ablation list was built for {}",
                list.tokens
            )));
        }
        let block = tokens
            .checked_mul(d)
            .ok_or_else(|| bad("tokens × d overflows".into()))?;
        let all = block
            .checked_mul(list.copies)
            .ok_or_else(|| bad("copies × tokens × d overflows".into()))?;
        let dec = list
            .n_features
            .checked_mul(d)
            .ok_or_else(|| bad("features × d overflows".into()))?;
        super::check_len("clean", clean.len(), block).map_err(|e| bad(e.to_string()))?;
        super::check_len("w_dec", w_dec.len(), dec).map_err(|e| bad(e.to_string()))?;
        super::check_len("out", out.len(), all).map_err(|e| bad(e.to_string()))?;
        let d_i = i32::try_from(d).map_err(|_| bad(format!("d {d} exceeds i32")))?;
        if all == 0 {
            return Ok(());
        }
        let (tokens_i, nf_i, copies_i) = (tokens as i32, list.n_features as i32, list.copies as i32);
        let threads = d.div_ceil(32).clamp(1, 8) as u32 * 32;
        let cfg = LaunchConfig {
            grid_dim: (tokens as u32, list.copies as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(self.function("trace_ablate_f32")?);
        launch
            .arg(clean)
            .arg(&tokens_i)
            .arg(&d_i)
            .arg(w_dec)
            .arg(&nf_i)
            .arg(&list.features)
            .arg(&list.starts)
            .arg(&list.rows)
            .arg(&list.activations)
            .arg(&copies_i)
            .arg(out);
        // SAFETY: argument types and order match the kernel's signature; lengths checked above, rows and
        // features validated when the list was built.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Adds `cells` cells to `stats`. Inputs per (copy k, cell c), copy k being `stats`' slot k:
    /// `clean_sum` and `ablated_sum` `[copies, cells, n_targets]` f32, the sums over the ablation's
    /// active positions of the clean and the ablated target codes (0 where a latent is not in the
    /// top k); `n_active` `[copies, cells]`, the number of those positions (0: the source did not fire
    /// in the cell, nothing is counted); `sign_hash` `[copies, cells]`, [`sign_flip_hash`] of (source
    /// feature, cell tokens) (read only with permutations). `copies` is the state's slot count, or with
    /// `slots` the launch's input copies, copy k updating slot `slots[k]`.
    #[allow(clippy::too_many_arguments)]
    pub fn trace_reduce(
        &self,
        stream: &Arc<CudaStream>,
        stats: &mut TraceStats,
        clean_sum: &CudaSlice<f32>,
        ablated_sum: &CudaSlice<f32>,
        n_active: &CudaSlice<u32>,
        sign_hash: &CudaSlice<u64>,
        cells: usize,
        slots: Option<&ReduceSlots>,
    ) -> Result<(), GpuError> {
        if let Some(s) = slots {
            if s.state_copies != stats.copies() {
                return Err(bad("trace_reduce")(format!(
                    "slots were checked against {} slots, the statistics have {}",
                    s.state_copies,
                    stats.copies()
                )));
            }
        }
        let copies = slots.map_or(stats.copies(), ReduceSlots::len);
        check_reduce_lens(
            (copies, cells, stats.n_targets, stats.permutations),
            (
                clean_sum.len(),
                ablated_sum.len(),
                n_active.len(),
                sign_hash.len(),
            ),
        )?;
        if cells == 0 {
            return Ok(());
        }
        let (copies_i, cells_i, f_i, p_i) = (
            copies as i32,
            cells as i32,
            stats.n_targets as i32,
            stats.permutations as i32,
        );
        let cfg = LaunchConfig {
            grid_dim: (stats.n_targets.div_ceil(128) as u32, copies as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let identity = 0u64; // a null pointer: copy k updates slot k
        let mut launch = stream.launch_builder(self.function("trace_reduce")?);
        launch
            .arg(clean_sum)
            .arg(ablated_sum)
            .arg(n_active)
            .arg(sign_hash)
            .arg(&copies_i)
            .arg(&cells_i)
            .arg(&f_i)
            .arg(&p_i)
            .arg(&mut stats.mean)
            .arg(&mut stats.m2)
            .arg(&mut stats.positive)
            .arg(&mut stats.negative)
            .arg(&mut stats.null_sum)
            .arg(&mut stats.null_positive)
            .arg(&mut stats.null_negative)
            .arg(&mut stats.cells_active);
        match slots {
            Some(s) => launch.arg(&s.slots),
            None => launch.arg(&identity),
        };
        // SAFETY: argument types and order match the kernel's signature; input lengths checked above,
        // state sized for (slots, n_targets, permutations) at construction; slots checked distinct and
        // within the state when uploaded.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[i, :] = src[rows[i], :]` for `src` `[src_rows, d]` f32; `out` holds at least `rows.len() · d`
    /// values.
    pub fn trace_gather_rows(
        &self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<f32>,
        (src_rows, d): (usize, usize),
        rows: &[u32],
        out: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        let bad = bad("trace_gather_rows_f32");
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= src_rows) {
            return Err(bad(format!("row {r} is outside the source's {src_rows} rows")));
        }
        let n = rows.len();
        let need = src_rows
            .checked_mul(d)
            .ok_or_else(|| bad("rows × d overflows".into()))?;
        super::check_len("src", src.len(), need).map_err(|e| bad(e.to_string()))?;
        super::check_len("out", out.len(), n.saturating_mul(d)).map_err(|e| bad(e.to_string()))?;
        if n == 0 || d == 0 {
            return Ok(());
        }
        let (src_rows_i, d_i, n_i) = (
            i32::try_from(src_rows).map_err(|_| bad(format!("{src_rows} rows exceed i32")))?,
            i32::try_from(d).map_err(|_| bad(format!("d {d} exceeds i32")))?,
            i32::try_from(n).map_err(|_| bad(format!("{n} rows exceed i32")))?,
        );
        let rows_dev = stream.clone_htod(rows)?;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: ((d.div_ceil(32).clamp(1, 8) * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(self.function("trace_gather_rows_f32")?);
        launch
            .arg(src)
            .arg(&src_rows_i)
            .arg(&d_i)
            .arg(&rows_dev)
            .arg(&n_i)
            .arg(out);
        // SAFETY: argument types and order match the kernel's signature; every row is below src_rows,
        // `src` holds src_rows · d and `out` n · d values (checked above).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Per segment s of `segments`, the dense f32 sum of the top-k codes (`idx`, `val`, `[rows, k]`)
    /// of its rows: `out[s, g]`, `[segments, n_targets]`.
    pub fn trace_code_sums(
        &self,
        stream: &Arc<CudaStream>,
        (idx, val, k): (&CudaSlice<u32>, &CudaSlice<f32>, usize),
        segments: &CodeSegments,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        let bad = bad("trace_code_sums");
        let codes = segments.rows() * k;
        super::check_len("idx", idx.len(), codes).map_err(|e| bad(e.to_string()))?;
        super::check_len("val", val.len(), codes).map_err(|e| bad(e.to_string()))?;
        let n = segments.len() * segments.n_targets;
        super::check_len("out", out.len(), n).map_err(|e| bad(e.to_string()))?;
        if segments.is_empty() {
            return Ok(());
        }
        let (k_i, s_i, f_i) = (
            i32::try_from(k).map_err(|_| bad(format!("k {k} exceeds i32")))?,
            segments.len() as i32,
            segments.n_targets as i32,
        );
        let starts = stream.clone_htod(&segments.starts)?;
        let cfg = LaunchConfig {
            grid_dim: (segments.len() as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(self.function("trace_code_sums")?);
        launch
            .arg(idx)
            .arg(val)
            .arg(&k_i)
            .arg(&starts)
            .arg(&s_i)
            .arg(&f_i)
            .arg(out);
        // SAFETY: argument types and order match the kernel's signature; the segments end within the
        // codes' rows and `out` holds segments · n_targets values (checked above).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}

/// Consecutive row ranges of a `[rows, k]` code matrix, one per segment (an ablation's clean or
/// ablated rows), for [`Kernels::trace_code_sums`] into `n_targets` latents.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeSegments {
    starts: Vec<u32>,
    n_targets: usize,
}

impl CodeSegments {
    /// Segments of `lengths[s]` rows each, starting at row `first`.
    pub fn new(first: usize, lengths: &[usize], n_targets: usize) -> Result<CodeSegments, GpuError> {
        let bad = bad("trace_code_sums");
        if n_targets == 0 || i32::try_from(n_targets).is_err() {
            return Err(bad(format!("{n_targets} target latents")));
        }
        if lengths.len() >= i32::MAX as usize {
            return Err(bad(format!("{} segments exceed i32", lengths.len())));
        }
        let mut starts = Vec::with_capacity(lengths.len() + 1);
        let mut at = first;
        starts.push(u32::try_from(at).map_err(|_| bad(format!("row {at} exceeds u32")))?);
        for &n in lengths {
            at = at.checked_add(n).ok_or_else(|| bad("rows overflow".into()))?;
            starts.push(u32::try_from(at).map_err(|_| bad(format!("row {at} exceeds u32")))?);
        }
        Ok(CodeSegments { starts, n_targets })
    }

    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Segment s is rows `starts[s]..starts[s + 1]` (the kernel's `starts` argument).
    pub fn starts(&self) -> &[u32] {
        &self.starts
    }

    /// Rows the codes must hold: the end of the last segment.
    pub fn rows(&self) -> usize {
        *self.starts.last().unwrap_or(&0) as usize
    }

    /// What `trace_code_sums` computes, on the CPU in the same order (rows in order, f32 adds):
    /// `[segments, n_targets]`. A latent index outside `n_targets` is skipped, as in the kernel.
    pub fn sums_host(&self, idx: &[u32], val: &[f32], k: usize) -> Result<Vec<f32>, GpuError> {
        let bad = bad("trace_code_sums");
        super::check_len("idx", idx.len(), self.rows() * k).map_err(|e| bad(e.to_string()))?;
        super::check_len("val", val.len(), self.rows() * k).map_err(|e| bad(e.to_string()))?;
        let f = self.n_targets;
        let mut out = vec![0.0f32; self.len() * f];
        for (s, w) in self.starts.windows(2).enumerate() {
            let row = &mut out[s * f..(s + 1) * f];
            for r in w[0] as usize..w[1] as usize {
                for j in 0..k {
                    let g = idx[r * k + j] as usize;
                    if g < f {
                        row[g] += val[r * k + j];
                    }
                }
            }
        }
        Ok(out)
    }
}
