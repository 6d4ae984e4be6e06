//! The trace pipeline as one library call: pick the source features, trace them over the cells in
//! checkpointed chunks (a killed run resumes from the checkpoint), then write the edge table or, with a
//! shard, the shard's accumulator; and `merge`, which makes the table from shard files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::edges::{shard_summary, write_table, EdgeFilters};
use super::state::{read_state, typed, write_state, CHECKPOINT_MAGIC, SHARD_MAGIC};
use super::{source_cell_counts, trace_cells, SignFlipNull, TraceAccumulator, TraceError, TraceSetup};
use crate::executor::ModelAndCells;
use crate::formats::absolute;
use crate::formats::trace::{RunSettings, ShardHeader, TracePlan, TraceSettings, TraceSummary};
use crate::hooks::HookPoint;
use crate::sae::io::{find_sae, SaeFolder};

/// What to trace and how (the command line's `scinterp trace run`).
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// Source hook (a `blocks.L.hook_resid_post`).
    pub source: String,
    /// Downstream hooks (later `hook_resid_post`s).
    pub targets: Vec<String>,
    /// `all`, a comma list, or `top:N` (the N that fire in most traced cells; ties to the lower index).
    pub features: String,
    /// Trace on the first N cells (default: all).
    pub cells: Option<usize>,
    /// Edge table (`.parquet`/`.tsv`), or with `shard` the shard file.
    pub out: PathBuf,
    /// Every n-th requested feature starting at i.
    pub shard: Option<(usize, usize)>,
    pub filters: EdgeFilters,
    /// Cells per clean-run chunk (one checkpoint per chunk).
    pub chunk_cells: usize,
    pub max_batch_tokens: usize,
    pub null_permutations: usize,
    pub seed: u64,
    /// Replace an existing --out (a finished table or shard); without it one is refused.
    pub overwrite: bool,
    /// Testing: stop with [`TraceError::Stopped`] after this many chunks, as if killed right after a
    /// checkpoint.
    pub stop_after_chunks: Option<usize>,
}

impl TraceConfig {
    /// The command line's defaults: every feature of `source`, every cell, the default edge filters, 64
    /// cells per chunk, 16,384 tokens per batch, no sign-flip null. `targets` is a comma list.
    pub fn new(source: &str, targets: &str, out: &Path) -> Self {
        TraceConfig {
            source: source.into(),
            targets: targets.split(',').map(String::from).collect(),
            features: "all".into(),
            cells: None,
            out: out.to_path_buf(),
            shard: None,
            filters: EdgeFilters::default(),
            chunk_cells: 64,
            max_batch_tokens: 16_384,
            null_permutations: 0,
            seed: 0,
            overwrite: false,
            stop_after_chunks: None,
        }
    }
}

/// The model, cells and SAEs a trace runs on (loaded by the caller).
pub struct TraceInputs<'a> {
    pub cells: ModelAndCells<'a>,
    /// Folder of SAE folders, one per hook.
    pub saes: &'a Path,
    /// Where the model and the cells came from (recorded in the settings; absolute paths).
    pub model_path: String,
    pub input_path: String,
}

/// Progress of a trace, for a progress bar.
#[derive(Clone, Debug)]
pub enum TraceProgress {
    /// Tracing starts (or resumes at `done`) over `total` cells.
    Start { total: usize, done: usize },
    /// Ablations done so far.
    Ablations(u64),
    /// Cells done so far (a chunk and its checkpoint finished).
    Cells(usize),
    /// Resumed from the checkpoint at this cell.
    Resumed { checkpoint: PathBuf, cells_done: usize },
}

/// What a finished trace wrote.
#[derive(Clone, Debug)]
pub enum TraceOutcome {
    /// The edge table and its summary.
    Table(TraceSummary),
    /// A shard's accumulator (combine with [`merge`]).
    Shard(TraceSummary),
}

impl TraceOutcome {
    pub fn summary(&self) -> &TraceSummary {
        match self {
            TraceOutcome::Table(s) | TraceOutcome::Shard(s) => s,
        }
    }

    pub fn into_summary(self) -> TraceSummary {
        match self {
            TraceOutcome::Table(s) | TraceOutcome::Shard(s) => s,
        }
    }
}

fn resid_post_layer(name: &str) -> Result<usize, TraceError> {
    match HookPoint::parse(name)? {
        HookPoint::ResidPost(l) => Ok(l),
        other => Err(TraceError::NotResidPost(other.to_string())),
    }
}

/// `all` or a comma list of feature indices below `d_sae` (sorted, deduplicated).
pub fn parse_features(spec: &str, d_sae: u32) -> Result<Vec<u32>, TraceError> {
    let spec = spec.trim();
    if spec == "all" {
        return Ok((0..d_sae).collect());
    }
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let f: u32 = part
            .parse()
            .map_err(|_| TraceError::Features(format!("--features: `{part}` is not a feature index")))?;
        if f >= d_sae {
            return Err(TraceError::Features(format!(
                "--features: {f} is out of range (the source SAE has {d_sae} latents)"
            )));
        }
        out.push(f);
    }
    if out.is_empty() {
        return Err(TraceError::Features(format!(
            "--features `{spec}` names no feature; give `all`, a comma list (3,17,40) or top:N"
        )));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Refuses filter values that would silently keep nothing or everything (NaN compares false).
fn check_filters(f: &EdgeFilters) -> Result<(), TraceError> {
    if f.min_cells < super::edges::DEFAULT_MIN_CELLS {
        return Err(TraceError::MinCells(f.min_cells));
    }
    let bad = |flag: &str, v: f64, want: &str| Err(TraceError::Flag(format!("{flag} {v}: must be {want}")));
    if !(0.0..=1.0).contains(&f.max_q) {
        return bad("--max-q", f.max_q, "a q value in [0, 1]");
    }
    if !(f.min_abs_d.is_finite() && f.min_abs_d >= 0.0) {
        return bad("--min-abs-d", f.min_abs_d, "finite and at least 0");
    }
    if !(0.0..=1.0).contains(&f.min_consistency) {
        return bad("--min-consistency", f.min_consistency, "a fraction in [0, 1]");
    }
    Ok(())
}

/// Traces, writes the edge table and its summary (or the shard file), and returns the summary.
pub fn run(
    config: &TraceConfig,
    inputs: &TraceInputs,
    progress: &mut dyn FnMut(TraceProgress),
) -> Result<TraceOutcome, TraceError> {
    let started = Instant::now();
    check_filters(&config.filters)?;
    if config.cells == Some(0) {
        return Err(TraceError::Flag(
            "--cells 0: trace on at least one cell (or leave --cells out for all)".into(),
        ));
    }
    // The table's format is known before any work, so that a bad name leaves no checkpoint behind.
    let ext = config.out.extension().and_then(|e| e.to_str()).unwrap_or("");
    if config.shard.is_none() && !matches!(ext, "parquet" | "tsv") {
        return Err(crate::formats::TableError::WriteExtension(config.out.clone()).into());
    }
    let what = if config.shard.is_some() {
        "a trace shard"
    } else {
        "a trace table"
    };
    crate::formats::check_file_output(&config.out, config.overwrite, what)?;
    let (encoder, forward) = (inputs.cells.encoder, inputs.cells.forward);
    let dims = encoder.dims();
    let n_cells = config
        .cells
        .unwrap_or(inputs.cells.tokens.len())
        .min(inputs.cells.tokens.len());
    let source = &config.source;
    let source_layer = resid_post_layer(source)?;
    let source_sae = find_sae(inputs.saes, source)?;
    let target_names: Vec<String> = config
        .targets
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if target_names.is_empty() {
        return Err(TraceError::NoTargets);
    }
    let mut targets: Vec<(HookPoint, SaeFolder)> = Vec::new();
    for name in &target_names {
        let layer = resid_post_layer(name)?;
        if layer <= source_layer || layer >= dims.n_layers {
            return Err(TraceError::TargetNotDownstream {
                target: name.clone(),
                source_hook: source.clone(),
                n_layers: dims.n_layers,
            });
        }
        targets.push((HookPoint::ResidPost(layer), find_sae(inputs.saes, name)?));
    }
    for (what, sae) in
        std::iter::once((source, &source_sae)).chain(target_names.iter().zip(targets.iter().map(|(_, s)| s)))
    {
        if sae.sae.d_in != dims.d_model {
            return Err(TraceError::Width {
                hook: what.clone(),
                d_in: sae.sae.d_in,
                d_model: dims.d_model,
            });
        }
    }
    let setup = TraceSetup {
        source_layer,
        source_sae: &source_sae.sae,
        targets: targets.iter().map(|(h, s)| (*h, &s.sae)).collect(),
        special_ids: inputs.cells.special_ids.to_vec(),
        max_batch_tokens: config.max_batch_tokens.max(1),
        null: SignFlipNull {
            permutations: config.null_permutations,
            seed: config.seed,
        },
    };
    let d_sae = source_sae.sae.d_sae as u32;
    let tokens = &inputs.cells.tokens[..n_cells];
    let values = inputs.cells.values.map(|v| &v[..n_cells]);
    let mut features = match config.features.trim().strip_prefix("top:") {
        Some(n) => {
            let n: usize = n.trim().parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                TraceError::Features(format!(
                    "--features {}: expected top:N with a number N of at least 1",
                    config.features
                ))
            })?;
            let counts = source_cell_counts(encoder, forward, &setup, tokens, values)?;
            // Most cells first, ties by index; features that never fire are not taken.
            let mut order: Vec<u32> = (0..d_sae).filter(|&f| counts[f as usize] > 0).collect();
            order.sort_by_key(|&f| (std::cmp::Reverse(counts[f as usize]), f));
            order.truncate(n);
            order.sort_unstable();
            if order.is_empty() {
                return Err(TraceError::Features(format!(
                    "--features {}: no feature of the source SAE fires in the {n_cells} traced cells",
                    config.features
                )));
            }
            order
        }
        None => parse_features(&config.features, d_sae)?,
    };
    let features_requested = features.len();
    if let Some((i, n)) = config.shard {
        features = features
            .into_iter()
            .enumerate()
            .filter(|(j, _)| j % n == i)
            .map(|(_, f)| f)
            .collect();
    }
    let plan = TracePlan {
        source: source.clone(),
        targets: target_names.clone(),
        target_d_sae: targets.iter().map(|(_, s)| s.sae.d_sae).collect(),
        features_requested,
        cells: n_cells,
        settings: TraceSettings {
            model: inputs.model_path.clone(),
            input: inputs.input_path.clone(),
            saes: absolute(inputs.saes),
            source: source.clone(),
            targets: target_names,
            features: config.features.clone(),
            cells: n_cells,
            chunk_cells: config.chunk_cells.max(1),
            max_batch_tokens: config.max_batch_tokens.max(1),
            null_permutations: config.null_permutations,
            seed: config.seed,
        },
    };
    let settings = RunSettings {
        plan: plan.settings.clone(),
        shard: config.shard,
    };

    // Resume from a checkpoint of the same command, if any.
    let checkpoint_path = config.out.with_extension("checkpoint");
    let (mut acc, mut first) = match read_state(&checkpoint_path, CHECKPOINT_MAGIC)? {
        Some((saved, cells_done, acc)) if typed::<RunSettings>(saved.clone()).as_ref() == Some(&settings) => {
            progress(TraceProgress::Resumed {
                checkpoint: checkpoint_path.clone(),
                cells_done,
            });
            (acc, cells_done)
        }
        Some(_) => return Err(TraceError::OtherCheckpoint(checkpoint_path)),
        None => (TraceAccumulator::default(), 0),
    };
    progress(TraceProgress::Start {
        total: n_cells,
        done: first,
    });
    let chunk = config.chunk_cells.max(1);
    let mut chunks_done = 0usize;
    while first < n_cells {
        let last = (first + chunk).min(n_cells);
        let mut part = TraceAccumulator::default();
        let before = acc.ablations;
        trace_cells(
            (encoder, forward),
            &setup,
            &features,
            &tokens[first..last],
            values.map(|v| &v[first..last]),
            &mut part,
            &mut |done| progress(TraceProgress::Ablations(before + done)),
        )
        .map_err(|error| TraceError::Cells { first, last, error })?;
        acc.merge(part);
        first = last;
        write_state(&checkpoint_path, CHECKPOINT_MAGIC, &settings, first, &acc)?;
        chunks_done += 1;
        if config.stop_after_chunks == Some(chunks_done) {
            return Err(TraceError::Stopped {
                chunks: chunks_done,
                checkpoint: checkpoint_path,
            });
        }
        progress(TraceProgress::Cells(first));
    }
    let seconds = started.elapsed().as_secs_f64();

    if config.shard.is_some() {
        // A shard writes its accumulator; `merge` makes the table.
        let header = ShardHeader { settings, plan };
        write_state(&config.out, SHARD_MAGIC, &header, header.plan.cells, &acc)?;
        let _ = std::fs::remove_file(&checkpoint_path);
        return Ok(TraceOutcome::Shard(shard_summary(
            &header.plan,
            &acc,
            seconds,
            &config.out,
        )));
    }
    let summary = write_table(&plan, &acc, &config.filters, &config.out, seconds)?;
    let _ = std::fs::remove_file(&checkpoint_path);
    Ok(TraceOutcome::Table(summary))
}

/// Shards of one trace (same settings, shards 0..n of n, each once) → the edge table and its summary.
/// An existing `out` is refused unless `overwrite` (then replaced atomically).
pub fn merge(
    shards: &[PathBuf],
    out: &Path,
    filters: &EdgeFilters,
    overwrite: bool,
) -> Result<TraceSummary, TraceError> {
    let started = Instant::now();
    check_filters(filters)?;
    let mut plan: Option<TracePlan> = None;
    let mut seen: Vec<(usize, usize)> = Vec::new();
    let mut acc = TraceAccumulator::default();
    for path in shards {
        let (meta, _, part) =
            read_state(path, SHARD_MAGIC)?.ok_or_else(|| TraceError::NoShard(path.clone()))?;
        let header: ShardHeader = serde_json::from_value(meta).map_err(|e| TraceError::NotAShard {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let (i, n) = header.settings.shard.unwrap_or((0, 0));
        if let Some(p) = &plan {
            if p.settings != header.plan.settings {
                return Err(TraceError::ShardOfAnotherTrace {
                    path: path.clone(),
                    first: shards[0].clone(),
                });
            }
        }
        if seen.contains(&(i, n)) {
            return Err(TraceError::ShardTwice {
                path: path.clone(),
                i,
                n,
            });
        }
        seen.push((i, n));
        plan.get_or_insert(header.plan);
        acc.merge(part);
    }
    let plan = plan.ok_or(TraceError::NoShards)?;
    let n = seen.first().map(|s| s.1).unwrap_or(0);
    if seen.len() != n || seen.iter().any(|s| s.1 != n) {
        return Err(TraceError::ShardsIncomplete { seen, n });
    }
    crate::formats::check_file_output(out, overwrite, "a trace table")?;
    write_table(&plan, &acc, filters, out, started.elapsed().as_secs_f64())
}
