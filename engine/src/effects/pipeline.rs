//! Feature → output as one library call: ablate (α = 0) or steer (α > 1) SAE features over cells in
//! chunks, then per (feature, α) the mean logit changes, t-tests across cells, BH q-values, the table
//! (`.parquet`/`.tsv`) and its summary (`.summary.json`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{edit_count, output_effects_with_progress, EffectObservation, EffectsSetup, PanelReadout};
use crate::error::EngineError;
use crate::executor::ModelAndCells;
use crate::formats::effects::{ControlRecord, EffectsSummary, PseudotimeRecord};
use crate::formats::{atomic_write, to_json_pretty, Column, FileError, Table, TableError};
use crate::hooks::HookPoint;
use crate::npy::{read_npy_bytes, NpyDtype};
use crate::sae::io::{find_sae, SaeFileError};
use crate::stats::{bh_qvalues, one_sample_t_test, RunningStats, StatsError};
use crate::trace::TraceError;

/// What to edit and read (the command line's `scinterp effects`).
#[derive(Clone, Debug)]
pub struct EffectsConfig {
    /// Source hook (`blocks.L.hook_resid_post`).
    pub source: String,
    /// `all` or a comma list of source features.
    pub features: String,
    /// First N cells (default all).
    pub cells: Option<usize>,
    /// Scales of a_f: 0 ablates, values above 1 amplify.
    pub alphas: Vec<f32>,
    /// Readout gene set (token ids).
    pub readout_tokens: HashSet<u32>,
    /// Optional readout direction on the final state: a .npy of d_model f32 values.
    pub direction: Option<PathBuf>,
    /// Seed of the norm-matched random control directions; `None`: no control.
    pub control_seed: Option<u64>,
    /// Optional pseudotime readout: an exported tool's pseudotime gradient over its panel's tokens.
    pub pseudotime: Option<PseudotimeReadout>,
    /// Tokens per tail pass.
    pub max_batch_tokens: usize,
    /// Replace an existing --out table; without it one is refused.
    pub overwrite: bool,
    /// Output table (.parquet or .tsv).
    pub out: PathBuf,
}

/// Tokens per tail pass by default (the logits are tokens × vocabulary floats).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 4096;

impl EffectsConfig {
    /// The command line's defaults: every cell, ablation only (α = 0), no readout set or direction,
    /// the random-direction control with seed 0.
    pub fn new(source: &str, features: &str, out: &Path) -> Self {
        EffectsConfig {
            source: source.into(),
            features: features.into(),
            cells: None,
            alphas: vec![0.0],
            readout_tokens: HashSet::new(),
            direction: None,
            control_seed: Some(0),
            pseudotime: None,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            overwrite: false,
            out: out.to_path_buf(),
        }
    }
}

/// A tool's pseudotime as a panel readout, and where it came from (for the summary).
#[derive(Clone, Debug)]
pub struct PseudotimeReadout {
    pub readout: PanelReadout,
    /// The tool folder.
    pub tool: PathBuf,
    /// Panel genes of the tool (all are read; the count is for the summary).
    pub panel_genes: usize,
    /// The weights hash the tool was exported from, and whether it is the steered model's.
    pub tool_weights_blake3: String,
    pub same_weights: bool,
}

/// The model and cells an effects run reads (loaded by the caller).
pub struct EffectsInputs<'a> {
    /// An encoder with its MLM head (the head's readouts stay on the CPU); scGPT's values are refused
    /// (scGPT has no MLM logits).
    pub cells: ModelAndCells<'a>,
    /// Folder of SAE folders, one per hook.
    pub saes: &'a Path,
    /// The token store (for messages).
    pub input: &'a Path,
}

/// Why an effects run stopped; messages name the file or flag.
#[derive(Debug, thiserror::Error)]
pub enum EffectsError {
    #[error("{}: output effects read MLM logits, which scGPT does not have; use a Geneformer model", .0.display())]
    NoLogits(PathBuf),
    #[error("--source {0}: use a blocks.L.hook_resid_post hook before the model's last block")]
    Source(String),
    #[error("the SAE of {hook} reads d_in = {d_in} but the model's width is {d_model}")]
    Width {
        hook: String,
        d_in: usize,
        d_model: usize,
    },
    /// `reason` names the file.
    #[error("--direction: {reason}")]
    Direction { path: PathBuf, reason: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Sae(#[from] SaeFileError),
    #[error(transparent)]
    Features(#[from] TraceError),
    #[error(transparent)]
    Stats(#[from] StatsError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Output(#[from] crate::formats::OutputError),
    #[error("cannot write the summary next to {}: {error}", out.display())]
    Summary { out: PathBuf, error: FileError },
    #[error("cannot serialise the summary: {0}")]
    Serialise(String),
    /// A flag value that cannot mean anything (NaN, empty, outside the vocabulary).
    #[error("{0}")]
    Flag(String),
}

type Result<T, E = EffectsError> = std::result::Result<T, E>;

/// Mean, n and one-sample t-test p of the finite values.
fn summarise(values: impl Iterator<Item = f64>) -> (f64, u64, f64) {
    let mut s = RunningStats::new();
    s.extend(values.filter(|v| v.is_finite()));
    let test = one_sample_t_test(s.count(), s.mean(), s.sd(), 0.0);
    (s.mean(), s.count(), test.p_two_sided)
}

/// Edits the features over the cells, writes the table and its summary, and returns the summary.
/// `progress(edits_done, total)` follows the edits (cell × feature × α × control; see [`edit_count`]).
pub fn run(
    config: &EffectsConfig,
    inputs: &EffectsInputs,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EffectsSummary> {
    let started = Instant::now();
    if inputs.cells.values.is_some() {
        return Err(EffectsError::NoLogits(inputs.input.to_path_buf()));
    }
    crate::formats::check_file_output(&config.out, config.overwrite, "an effects table")?;
    let dims = inputs.cells.encoder.dims();
    // Refused before any work: each would give NaN rows or a readout that silently measures less.
    if config.alphas.is_empty() {
        return Err(EffectsError::Flag(
            "--alphas names no scale; give e.g. 0 or 0,2,4".into(),
        ));
    }
    if let Some(a) = config.alphas.iter().find(|a| !a.is_finite()) {
        return Err(EffectsError::Flag(format!(
            "--alphas: {a} is not a finite scale; give finite values (0 ablates, above 1 amplifies)"
        )));
    }
    if config.readout_tokens.is_empty() && config.pseudotime.is_none() {
        return Err(EffectsError::Flag(
            "--readout-tokens names no token; give the token ids of the readout gene set (or read a \
             --pseudotime-tool)"
                .into(),
        ));
    }
    if let Some(t) = config
        .readout_tokens
        .iter()
        .filter(|&&t| t as usize >= dims.vocab_size)
        .min()
    {
        return Err(EffectsError::Flag(format!(
            "--readout-tokens: token {t} is outside the model's vocabulary ({} tokens); give ids of this \
             model's dictionary",
            dims.vocab_size
        )));
    }
    if config.cells == Some(0) {
        return Err(EffectsError::Flag(
            "--cells 0: use at least one cell (or leave --cells out for all)".into(),
        ));
    }
    let n_cells = config
        .cells
        .unwrap_or(inputs.cells.tokens.len())
        .min(inputs.cells.tokens.len());
    let source_layer = match HookPoint::parse(&config.source)? {
        HookPoint::ResidPost(l) if l + 1 < dims.n_layers => l,
        _ => return Err(EffectsError::Source(config.source.clone())),
    };
    let sae = find_sae(inputs.saes, &config.source)?;
    let d = dims.d_model;
    if sae.sae.d_in != d {
        return Err(EffectsError::Width {
            hook: config.source.clone(),
            d_in: sae.sae.d_in,
            d_model: d,
        });
    }
    let features = crate::trace::parse_features(&config.features, sae.sae.d_sae as u32)?;
    let direction = match &config.direction {
        Some(p) => {
            // The npy reader's messages already name the path: not twice.
            let shown = p.display().to_string();
            let bad = |reason: String| EffectsError::Direction {
                path: p.clone(),
                reason: if reason.contains(&shown) {
                    reason
                } else {
                    format!("{shown}: {reason}")
                },
            };
            let (header, bytes) = read_npy_bytes(p).map_err(|e| bad(e.to_string()))?;
            if header.dtype != NpyDtype::F32 || header.shape.iter().product::<usize>() != d {
                return Err(bad(format!(
                    "expected {d} float32 values (the model's width), found {:?} {:?}",
                    header.dtype, header.shape
                )));
            }
            let values = bytemuck::pod_collect_to_vec::<u8, f32>(&bytes);
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!(
                    "value {i} is {}; the direction must be finite",
                    values[i]
                )));
            }
            Some(values)
        }
        None => None,
    };
    let setup = EffectsSetup {
        source_layer,
        source_sae: &sae.sae,
        alphas: config.alphas.clone(),
        readout_tokens: config.readout_tokens.clone(),
        direction,
        control_seed: config.control_seed,
        panel_readout: config.pseudotime.as_ref().map(|p| p.readout.clone()),
        special_ids: inputs.cells.special_ids.to_vec(),
        max_batch_tokens: config.max_batch_tokens.max(1),
    };
    // Chunks of cells bound the clean states kept. Progress counts edits (cell × feature × α ×
    // control), reported per batch of tail passes, so it advances inside a chunk too.
    let total = edit_count(&setup, features.len(), n_cells) as usize;
    let mut done = 0usize;
    progress(0, total);
    let mut obs: Vec<EffectObservation> = Vec::new();
    for start in (0..n_cells).step_by(64) {
        let end = (start + 64).min(n_cells);
        let chunk = output_effects_with_progress(
            inputs.cells.encoder,
            inputs.cells.forward,
            &setup,
            &features,
            &inputs.cells.tokens[start..end],
            &mut |n| {
                done += n as usize;
                progress(done, total);
            },
        )?;
        obs.extend(chunk.into_iter().map(|mut o| {
            o.cell += start;
            o
        }));
    }

    // Per (feature, α): the feature's and the control's per-cell observations, paired by cell.
    type Key = (u32, u32);
    let mut groups: BTreeMap<Key, (Vec<EffectObservation>, Vec<EffectObservation>)> = BTreeMap::new();
    for o in &obs {
        let g = groups.entry((o.feature, o.alpha.to_bits())).or_default();
        if o.control {
            g.1.push(*o)
        } else {
            g.0.push(*o)
        }
    }
    struct Row {
        feature: u32,
        alpha: f32,
        cells: u64,
        target: (f64, u64, f64),
        other: (f64, u64, f64),
        diff: (f64, u64, f64),
        direction: (f64, u64, f64),
        control_diff: f64,
        control_direction: f64,
        vs_control: (f64, u64, f64),
        pseudotime: (f64, u64, f64),
        control_pseudotime: f64,
        pseudotime_vs_control: (f64, u64, f64),
    }
    let diff = |o: &EffectObservation| o.target_logit_change - o.other_logit_change;
    let rows: Vec<Row> = groups
        .iter()
        .map(|(&(f, a), (real, control))| {
            let by_cell: BTreeMap<usize, &EffectObservation> = control.iter().map(|o| (o.cell, o)).collect();
            Row {
                feature: f,
                alpha: f32::from_bits(a),
                cells: real.len() as u64,
                target: summarise(real.iter().map(|o| o.target_logit_change)),
                other: summarise(real.iter().map(|o| o.other_logit_change)),
                diff: summarise(real.iter().map(diff)),
                direction: summarise(real.iter().map(|o| o.direction_change)),
                control_diff: summarise(control.iter().map(diff)).0,
                control_direction: summarise(control.iter().map(|o| o.direction_change)).0,
                vs_control: summarise(
                    real.iter()
                        .filter_map(|o| by_cell.get(&o.cell).map(|c| diff(o) - diff(c))),
                ),
                pseudotime: summarise(real.iter().map(|o| o.panel_readout_change)),
                control_pseudotime: summarise(control.iter().map(|o| o.panel_readout_change)).0,
                pseudotime_vs_control: summarise(real.iter().filter_map(|o| {
                    by_cell
                        .get(&o.cell)
                        .map(|c| o.panel_readout_change - c.panel_readout_change)
                })),
            }
        })
        .collect();
    // BH over the (feature, α) tests of target-vs-other specificity, and of feature-vs-control.
    let q_of = |p: Vec<f64>| -> Result<Vec<f64>> {
        let finite: Vec<usize> = (0..p.len()).filter(|&i| p[i].is_finite()).collect();
        let q = bh_qvalues(&finite.iter().map(|&i| p[i]).collect::<Vec<_>>())?;
        let mut out = vec![f64::NAN; p.len()];
        finite.iter().zip(q).for_each(|(&i, q)| out[i] = q);
        Ok(out)
    };
    let q_diff = q_of(rows.iter().map(|r| r.diff.2).collect())?;
    let q_control = q_of(rows.iter().map(|r| r.vs_control.2).collect())?;
    let col = |get: &dyn Fn(&Row) -> f64| Column::F64(rows.iter().map(get).collect());
    let mut table = Table::new()
        .column(
            "source_hook",
            Column::Str(vec![config.source.clone(); rows.len()]),
        )
        .column(
            "feature",
            Column::I64(rows.iter().map(|r| r.feature as i64).collect()),
        )
        .column("alpha", col(&|r| r.alpha as f64))
        .column(
            "n_cells",
            Column::I64(rows.iter().map(|r| r.cells as i64).collect()),
        )
        .column("target_logit_change", col(&|r| r.target.0))
        .column(
            "target_cells",
            Column::I64(rows.iter().map(|r| r.target.1 as i64).collect()),
        )
        .column("other_logit_change", col(&|r| r.other.0))
        .column("target_minus_other", col(&|r| r.diff.0))
        .column("target_minus_other_p", col(&|r| r.diff.2))
        .column("target_minus_other_q", Column::F64(q_diff))
        .column("specificity_ratio", col(&|r| r.target.0.abs() / r.other.0.abs()))
        .column("control_target_minus_other", col(&|r| r.control_diff))
        .column("vs_control", col(&|r| r.vs_control.0))
        .column("vs_control_p", col(&|r| r.vs_control.2))
        .column("vs_control_q", Column::F64(q_control))
        .column("direction_change", col(&|r| r.direction.0))
        .column("direction_change_p", col(&|r| r.direction.2))
        .column("control_direction_change", col(&|r| r.control_direction));
    if config.pseudotime.is_some() {
        let q_pseudotime = q_of(rows.iter().map(|r| r.pseudotime_vs_control.2).collect())?;
        table = table
            .column("pseudotime_shift", col(&|r| r.pseudotime.0))
            .column("pseudotime_shift_p", col(&|r| r.pseudotime.2))
            .column("control_pseudotime_shift", col(&|r| r.control_pseudotime))
            .column("pseudotime_vs_control", col(&|r| r.pseudotime_vs_control.0))
            .column("pseudotime_vs_control_p", col(&|r| r.pseudotime_vs_control.2))
            .column("pseudotime_vs_control_q", Column::F64(q_pseudotime));
    }
    table.write(&config.out)?;
    let seconds = started.elapsed().as_secs_f64();
    let edits = obs.len();
    let summary = EffectsSummary {
        source: config.source.clone(),
        features: features.len(),
        features_fired: groups.keys().map(|k| k.0).collect::<HashSet<_>>().len(),
        alphas: config.alphas.clone(),
        cells: n_cells,
        edits,
        edits_per_second: edits as f64 / seconds.max(1e-9),
        rows: rows.len(),
        readout:
            "change of the MLM logit of each gene position's own token, mean over the readout-set positions \
                  (target) and over the others, per cell; tests are one-sample t-tests across cells, BH over \
                  the (feature, alpha) rows"
                .into(),
        control: config.control_seed.map(|seed| ControlRecord {
            seed,
            kind: "random direction with the norm of the feature's decoder row, same positions and scales"
                .into(),
        }),
        pseudotime: config.pseudotime.as_ref().map(|p| PseudotimeRecord {
            tool: p.tool.display().to_string(),
            panel_genes: p.panel_genes,
            tool_weights_blake3: p.tool_weights_blake3.clone(),
            same_weights: p.same_weights,
            readout: "per panel gene g, z_g = mean over the cell's gene positions of the log-softmax of the \
                      MLM logits over the panel's tokens; shift = sum_g v_g (z_g edited - z_g clean) with v the \
                      gradient of the tool's pseudotime in log1p panel expression; tests across cells, \
                      vs_control paired by cell, BH over the (feature, alpha) rows"
                .into(),
        }),
        seconds,
        out: config.out.display().to_string(),
    };
    let text = to_json_pretty(&summary).map_err(|e| EffectsError::Serialise(e.to_string()))?;
    atomic_write(&config.out.with_extension("summary.json"), text.as_bytes()).map_err(|error| {
        EffectsError::Summary {
            out: config.out.clone(),
            error,
        }
    })?;
    Ok(summary)
}
