//! The `scinterp sae` commands as library calls: [`train_on_store`] (split by cell, check the rows,
//! train with checkpoints, evaluate on held-out cells, measure the spliced model loss, save the folder
//! as one unit), [`encode_store`], [`eval_on_store`] and [`synth_store`]. The command line only maps its
//! flags onto the configs here and prints the reports.
//!
//! The spliced loss needs the model that made the store, which the engine does not know by name: the
//! caller passes a [`SpliceModel`] (scinterp-models implements it for stores made by `extract`).

use std::collections::HashSet;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use serde::Serialize;

use super::error::{FlagError, SaeError};
use super::io::{open_sae_on_store, save_with, staging_dir, SaeFolder, CFG_FILE};
use super::splice::SpliceLosses;
use super::synth::{recovery, Recovery, SynthSpec};
use super::train::{
    default_dead_after_tokens, default_tokens, evaluate, hook_seed, push_range, split_by_cell,
    train_resumable, Checkpointing, CpuStepper, EvalStats, RowSource, Stepper, StepperError, TrainConfig,
    TrainSummary, MIN_STEPS,
};
use super::TopKSae;
use crate::cuda::{GpuPrecision, GpuSaeEncoder, GpuSaeStepper};
use crate::device::Backend;
use crate::formats::sae::{
    HoldoutRecord, NormalizationRecord, SaeMetadata, SaeTrainingRecord, SAE_LENS_VERSION,
};
use crate::formats::staged::StagedDir;
use crate::formats::{absolute, atomic_write};
use crate::hooks::HookPoint;
use crate::npy::{header_bytes, read_npy_bytes, write_npy, NpyDtype};
use crate::store::{
    free_bytes, ActDtype, ActStore, HookArray, OpenedStore, StoreManifest, StoreModelRecord,
    StoreSourceRecord, StoreWriter, STORE_FORMAT,
};

/// Why a [`SpliceModel`] could not measure the spliced loss: the implementor's own typed error (the
/// engine does not know the models crate's errors).
pub type SpliceModelError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The model that made an activation store, able to run it with an SAE spliced in.
pub trait SpliceModel {
    /// The model's pretraining loss on `cells` (store cell indices) clean, with `sae` spliced in at
    /// `hook` at the positions the store kept, and with those positions zeroed or set to `mean`.
    fn spliced_losses(
        &self,
        hook: &str,
        sae: &TopKSae,
        mean: &[f32],
        cells: &[u64],
    ) -> Result<SpliceLosses, SpliceModelError>;
}

/// Everything `sae train` needs (the flags, typed).
#[derive(Clone, Debug)]
pub struct TrainRequest {
    pub acts: PathBuf,
    pub hook: String,
    pub d_sae: usize,
    pub k: usize,
    pub out: PathBuf,
    /// Training tokens; default [`default_tokens`] of the training rows.
    pub tokens: Option<u64>,
    pub batch_size: usize,
    pub lr: Option<f64>,
    pub warmup_steps: Option<usize>,
    pub aux_k: Option<usize>,
    pub aux_coef: f32,
    /// Default [`default_dead_after_tokens`] of the run.
    pub dead_after_tokens: Option<u64>,
    pub normalize: bool,
    pub holdout: f64,
    pub shuffle_buffer_rows: usize,
    pub splice_cells: usize,
    pub seed: u64,
    pub overwrite: bool,
    pub backend: Backend,
    pub gpu_precision: GpuPrecision,
    /// Leave out rows holding inf/NaN instead of refusing the store.
    pub skip_nonfinite_rows: bool,
    /// Save a checkpoint every this many steps (0: never).
    pub checkpoint_every_steps: usize,
    /// Testing: stop right after the checkpoint of this step, as a kill there would.
    pub stop_after_steps: Option<usize>,
}

impl TrainRequest {
    /// The defaults of the command line for one hook.
    pub fn new(acts: &Path, hook: &str, d_sae: usize, k: usize, out: &Path) -> Self {
        TrainRequest {
            acts: acts.to_path_buf(),
            hook: hook.into(),
            d_sae,
            k,
            out: out.to_path_buf(),
            tokens: None,
            batch_size: 4096,
            lr: None,
            warmup_steps: None,
            aux_k: None,
            aux_coef: 1.0 / 32.0,
            dead_after_tokens: None,
            normalize: true,
            holdout: 0.1,
            shuffle_buffer_rows: 1 << 17,
            splice_cells: 16,
            seed: 0,
            overwrite: false,
            backend: Backend::Cpu,
            gpu_precision: GpuPrecision::Bf16,
            skip_nonfinite_rows: false,
            checkpoint_every_steps: 200,
            stop_after_steps: None,
        }
    }
}

/// What `sae train` did.
#[derive(Debug, Serialize)]
pub struct TrainReport {
    pub out: String,
    pub hook: String,
    pub d_in: usize,
    pub d_sae: usize,
    pub k: usize,
    pub train_rows: usize,
    pub heldout_cells: usize,
    /// Rows left out for holding inf/NaN (`--skip-nonfinite-rows`).
    pub skipped_nonfinite_rows: usize,
    #[serde(flatten)]
    pub summary: TrainSummary,
    /// Reconstruction on the held-out cells; `dead_latents` there are latents that never fired on
    /// any held-out row.
    pub heldout: EvalStats,
    pub spliced: Option<SpliceLosses>,
    /// Why the run may not be trustworthy (too short to converge…), also logged as warnings.
    pub warnings: Vec<String>,
}

/// What [`train_on_store`] tells its caller while it runs.
#[derive(Clone, Debug)]
pub enum TrainEvent {
    /// Something the user should know (a run too short to converge, skipped rows…).
    Warning(String),
    /// Progress worth a log line (the plan, a resume).
    Info(String),
    /// After every optimiser step.
    Step { step: usize, steps: usize, nmse: f64 },
}

/// The file name of the checkpoint inside the staging folder.
pub const CHECKPOINT_FILE: &str = "train.checkpoint";

/// Trains an SAE on one hook of an activation store and writes its folder ([`TrainRequest`]).
pub fn train_on_store(
    req: &TrainRequest,
    splicer: Option<&dyn SpliceModel>,
    events: &mut dyn FnMut(TrainEvent),
) -> Result<TrainReport, SaeError> {
    if req.out.join(CFG_FILE).exists() && !req.overwrite {
        return Err(SaeError::Exists(req.out.clone()));
    }
    // Any other file or non-empty folder at --out is not replaced without --overwrite either.
    crate::formats::check_file_output(&req.out, req.overwrite, "files that are not an SAE")?;
    if !(req.holdout.is_finite() && (0.0..1.0).contains(&req.holdout)) {
        return Err(FlagError::new("holdout", req.holdout, "must be in [0, 1)").into());
    }
    if req.batch_size == 0 {
        return Err(FlagError::new("batch-size", 0, "must be at least 1").into());
    }
    if req.tokens == Some(0) {
        return Err(FlagError::new("tokens", 0, "must be at least 1").into());
    }
    let store = ActStore::open(&req.acts)?;
    let hook = store.hook(&req.hook)?;
    let rows = store.rows()?;
    let d = hook.d();
    let mut split = split_by_cell(&rows, req.seed, req.holdout);
    if split.train_rows == 0 {
        return Err(SaeError::NoTrainingRows(req.acts.clone()));
    }
    if req.holdout > 0.0 && split.heldout_cells.is_empty() {
        return Err(SaeError::NoHeldoutCells {
            acts: req.acts.clone(),
            cells: store.manifest.n_cells,
        });
    }

    // The settings, checked before anything large is read or allocated.
    let mut cfg = TrainConfig::new(d, req.d_sae, req.k, 1);
    cfg.batch_size = req.batch_size;
    cfg.total_tokens = req
        .tokens
        .unwrap_or_else(|| default_tokens(split.train_rows, req.batch_size));
    cfg.seed = hook_seed(req.seed, &req.hook);
    cfg.aux_coef = req.aux_coef;
    cfg.normalize = req.normalize;
    cfg.shuffle_buffer_rows = req.shuffle_buffer_rows.max(req.batch_size);
    cfg.lr = req.lr.unwrap_or(cfg.lr);
    cfg.warmup_steps = req
        .warmup_steps
        .unwrap_or_else(|| (cfg.steps() / 20).clamp(1, 1000));
    cfg.aux_k = req.aux_k.unwrap_or(cfg.aux_k);
    cfg.dead_after_tokens = req
        .dead_after_tokens
        .unwrap_or_else(|| default_dead_after_tokens(cfg.total_tokens, cfg.batch_size));
    cfg.validate(d)?;
    check_memory(&cfg, d)?;
    check_disk(&req.out, &cfg, d, req.checkpoint_every_steps > 0)?;

    // Rows with inf/NaN: refused (naming the first), or left out when asked.
    let all_rows = std::iter::once(0..hook.n_rows()).collect::<Vec<_>>();
    let bad = nonfinite_rows(&hook, &all_rows);
    if let Some(&(row, column, value)) = bad.first() {
        if !req.skip_nonfinite_rows {
            return Err(SaeError::NonFiniteRow {
                path: hook.path().to_path_buf(),
                row,
                cell: rows[row][0] as i64,
                column,
                value,
            });
        }
        let bad_rows: HashSet<usize> = bad.iter().map(|b| b.0).collect();
        split.train = without_rows(&split.train, &bad_rows);
        split.heldout = without_rows(&split.heldout, &bad_rows);
        split.train_rows = split.train.iter().map(|r| r.len()).sum();
        events(TrainEvent::Warning(format!(
            "{}: left out {} rows holding inf/NaN (--skip-nonfinite-rows)",
            hook.path().display(),
            bad_rows.len()
        )));
        if split.train_rows == 0 {
            return Err(SaeError::AllRowsNonFinite(hook.path().to_path_buf()));
        }
    }

    let steps = cfg.steps();
    let mut warnings = Vec::new();
    if steps < MIN_STEPS {
        warnings.push(format!(
            "{steps} steps ({} tokens of batch {}) are probably too few to converge; aim for at least {MIN_STEPS} \
             steps (--tokens {}) and check the held-out FVU",
            cfg.total_tokens,
            cfg.batch_size,
            MIN_STEPS as u64 * cfg.batch_size as u64
        ));
    }
    if cfg.total_tokens < split.train_rows as u64 {
        warnings.push(format!(
            "--tokens {} is less than one pass over the {} training rows",
            cfg.total_tokens, split.train_rows
        ));
    }
    if cfg.dead_after_tokens >= cfg.total_tokens {
        warnings.push(format!(
            "--dead-after-tokens {} is not below the run's {} tokens: AuxK never acts and no latent can count as dead",
            cfg.dead_after_tokens, cfg.total_tokens
        ));
    }
    for w in &warnings {
        events(TrainEvent::Warning(w.clone()));
    }
    events(TrainEvent::Info(format!(
        "training {d}→{} (k {}) on {} ({} training rows, {} held-out cells), {} tokens in {steps} steps",
        req.d_sae,
        req.k,
        req.hook,
        split.train_rows,
        split.heldout_cells.len(),
        cfg.total_tokens
    )));

    // A checkpoint of an earlier, killed run with the same settings is continued.
    let staging = staging_dir(&req.out);
    let checkpoint_path = staging.join(CHECKPOINT_FILE);
    let fingerprint = settings_fingerprint(req, &cfg, &store)?;
    let resume = read_checkpoint(&checkpoint_path, &fingerprint, events);
    if resume.is_some() {
        events(TrainEvent::Info(format!(
            "resuming from {}",
            checkpoint_path.display()
        )));
    } else if staging.exists() {
        // Leftovers of a killed run with other settings, or of a killed save.
        let _ = std::fs::remove_dir_all(&staging);
    }
    // The staging folder is made now: an output folder that cannot be written is found before the
    // training, not after it.
    std::fs::create_dir_all(&staging)
        .map_err(|e| crate::formats::FileError::new(&staging, "cannot create the staging folder", e))?;
    let use_checkpoints = req.checkpoint_every_steps > 0 || req.stop_after_steps.is_some();
    let mut save = |bytes: &[u8]| -> Result<(), SaeError> {
        std::fs::create_dir_all(&staging)
            .map_err(|e| crate::formats::FileError::new(&staging, "cannot create the staging folder", e))?;
        let mut all = fingerprint.clone();
        all.extend_from_slice(blake3::hash(bytes).as_bytes());
        all.extend_from_slice(bytes);
        Ok(atomic_write(&checkpoint_path, &all)?)
    };
    let checkpointing = use_checkpoints.then(|| Checkpointing {
        save: &mut save,
        resume,
        every_steps: req.checkpoint_every_steps,
        stop_after_steps: req.stop_after_steps,
        path: checkpoint_path.clone(),
    });
    let backend = req.backend;
    let precision = req.gpu_precision;
    let make_stepper = |sae: TopKSae| -> Result<Box<dyn Stepper>, StepperError> {
        Ok(match backend {
            Backend::Cpu => Box::new(CpuStepper::new(sae)),
            Backend::Cuda => Box::new(GpuSaeStepper::new(sae, &cfg, precision)?),
        })
    };
    let mut progress = |step, steps, nmse| events(TrainEvent::Step { step, steps, nmse });
    let (sae, summary) = train_resumable(
        &hook,
        &split.train,
        &cfg,
        &make_stepper,
        checkpointing,
        &mut progress,
    )
    .map_err(|e| match e {
        SaeError::Step(reason) => SaeError::Training {
            acts: req.acts.clone(),
            reason: reason.to_string(),
        },
        other => other,
    })?;

    let heldout = evaluate(&sae, &hook, &split.heldout);
    let spliced = match splicer {
        Some(s) if req.splice_cells > 0 && !split.heldout_cells.is_empty() => {
            let cells: Vec<u64> = split
                .heldout_cells
                .iter()
                .take(req.splice_cells)
                .copied()
                .collect();
            Some(
                s.spliced_losses(&req.hook, &sae, &summary.data_mean, &cells)
                    .map_err(SaeError::Splice)?,
            )
        }
        _ => None,
    };
    let hook_point = HookPoint::parse(&req.hook).ok();
    let metadata = SaeMetadata {
        sae_lens_version: SAE_LENS_VERSION,
        hook_name: req.hook.clone(),
        hook_layer: hook_point.and_then(|h| h.layer()),
        model_name: store
            .manifest
            .model
            .folder()
            .map(|f| serde_json::Value::String(f.path.clone())),
        scinterp: SaeTrainingRecord {
            version: env!("CARGO_PKG_VERSION"),
            activation_store: absolute(&req.acts),
            training: &cfg,
            summary: &summary,
            normalization: NormalizationRecord {
                kind: if cfg.normalize {
                    "mean row norm scaled to sqrt(d_in) while training"
                } else {
                    "none"
                },
                scale: summary.input_scale,
                folded_into: "b_enc and b_dec divided by the scale (codes in raw units, decoder rows unit norm)",
            },
            holdout: HoldoutRecord {
                rule: "cell c is held out iff unit(splitmix64(splitmix64(seed ^ 0x48454C444F5554AA) ^ c)) < fraction",
                seed: req.seed,
                fraction: req.holdout,
                cells: split.heldout_cells.len(),
                file: "heldout_cells.npy",
            },
            seed_rule: "training.seed = splitmix64(seed ^ splitmix64(fnv1a64(hook_name))) (initialisation and data order; the held-out split uses seed itself)",
            heldout: &heldout,
            spliced: &spliced,
        },
    };
    let metadata = serde_json::to_value(&metadata).map_err(|e| SaeError::Serialise(e.to_string()))?;
    let cells: Vec<i64> = split.heldout_cells.iter().map(|&c| c as i64).collect();
    let mut cells_npy = header_bytes(NpyDtype::I64, &[cells.len()]);
    cells_npy.extend_from_slice(bytemuck::cast_slice(&cells));
    save_with(
        &req.out,
        &sae,
        &metadata,
        &[("heldout_cells.npy", cells_npy.as_slice())],
    )?;
    let report = TrainReport {
        out: req.out.display().to_string(),
        hook: req.hook.clone(),
        d_in: d,
        d_sae: req.d_sae,
        k: req.k,
        train_rows: split.train_rows,
        heldout_cells: split.heldout_cells.len(),
        skipped_nonfinite_rows: bad.len(),
        summary,
        heldout,
        spliced,
        warnings,
    };
    Ok(report)
}

/// Refuses a run whose buffers would not fit in memory (before allocating any of them).
fn check_memory(cfg: &TrainConfig, d: usize) -> Result<(), SaeError> {
    let flags = "--d-sae, --batch-size or --shuffle-buffer-rows";
    let what = format!(
        "{} latents × {d} inputs with Adam state, batches of {} rows",
        cfg.d_sae, cfg.batch_size
    );
    let available = available_memory().unwrap_or(u64::MAX);
    match cfg.memory_needed(d) {
        Some(needed) if needed <= available => Ok(()),
        Some(needed) => Err(SaeError::OutOfMemory {
            what,
            needed,
            available,
            flags,
        }),
        None => Err(SaeError::OutOfMemory {
            what,
            needed: u64::MAX,
            available,
            flags,
        }),
    }
}

/// Memory the system can still give (`MemAvailable`), when it says.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a run whose outputs (weights, and a checkpoint with Adam state) would not fit on the disk.
fn check_disk(out: &Path, cfg: &TrainConfig, d: usize, checkpoints: bool) -> Result<(), SaeError> {
    let params = 2 * cfg.d_sae as u64 * d as u64 + cfg.d_sae as u64 + d as u64;
    // The new folder beside the old one while they are swapped, and a checkpoint of 3 copies.
    let needed = params * 4 * if checkpoints { 5 } else { 2 } + (1 << 20);
    let dir = out
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .unwrap_or(Path::new("."));
    match free_bytes(dir) {
        Some(free) if free < needed => Err(SaeError::DiskFull {
            dir: dir.to_path_buf(),
            needed,
            free,
        }),
        _ => Ok(()),
    }
}

/// The rows of `ranges` holding a non-finite value: (row, first bad column, value), in row order.
pub fn nonfinite_rows(source: &dyn RowSource, ranges: &[Range<usize>]) -> Vec<(usize, usize, f32)> {
    const CHUNK: usize = 4096;
    let d = source.d();
    let mut chunks = Vec::new();
    for r in ranges {
        let mut s = r.start;
        while s < r.end {
            let e = (s + CHUNK).min(r.end);
            chunks.push(s..e);
            s = e;
        }
    }
    chunks
        .par_iter()
        .map(|c| {
            let mut x = vec![0.0f32; c.len() * d];
            source.read(c.start, &mut x);
            x.chunks(d)
                .enumerate()
                .filter_map(|(i, row)| {
                    row.iter()
                        .position(|v| !v.is_finite())
                        .map(|col| (c.start + i, col, row[col]))
                })
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flatten()
        .collect()
}

/// `ranges` without the rows in `bad`.
fn without_rows(ranges: &[Range<usize>], bad: &HashSet<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    for r in ranges {
        let mut start = r.start;
        for row in r.clone() {
            if bad.contains(&row) {
                if start < row {
                    push_range(&mut out, start..row);
                }
                start = row + 1;
            }
        }
        if start < r.end {
            push_range(&mut out, start..r.end);
        }
    }
    out
}

/// What decides whether a checkpoint continues this run: the settings, the store's identity and
/// the thread count (the CPU path is bitwise reproducible for a fixed thread count).
fn settings_fingerprint(
    req: &TrainRequest,
    cfg: &TrainConfig,
    store: &ActStore,
) -> Result<Vec<u8>, SaeError> {
    let record = serde_json::json!({
        "config": cfg,
        "hook": req.hook,
        "holdout": req.holdout,
        "seed": req.seed,
        "skip_nonfinite_rows": req.skip_nonfinite_rows,
        "backend": format!("{:?}", req.backend),
        "threads": rayon::current_num_threads(),
        "store": absolute(&req.acts),
        "store_model": store.manifest.model,
        "store_source": store.manifest.source,
        "store_rows": store.manifest.n_rows,
    });
    let text = serde_json::to_string(&record).map_err(|e| SaeError::Serialise(e.to_string()))?;
    Ok(blake3::hash(text.as_bytes()).as_bytes().to_vec())
}

/// The state bytes of a checkpoint made with `fingerprint` whose checksum verifies; `None` (with a
/// message) otherwise.
fn read_checkpoint(path: &Path, fingerprint: &[u8], events: &mut dyn FnMut(TrainEvent)) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 64 || &bytes[..32] != fingerprint {
        events(TrainEvent::Info(format!(
            "{}: a checkpoint of other settings; starting afresh",
            path.display()
        )));
        return None;
    }
    let (sum, state) = (&bytes[32..64], &bytes[64..]);
    if blake3::hash(state).as_bytes() != sum {
        events(TrainEvent::Warning(format!(
            "{}: the checkpoint does not verify (damaged); starting afresh",
            path.display()
        )));
        return None;
    }
    Some(state.to_vec())
}

/// `sae encode`: the top-k codes of every row of a store.
#[derive(Clone, Debug)]
pub struct EncodeRequest {
    pub sae: PathBuf,
    pub acts: PathBuf,
    pub hook: Option<String>,
    pub out: PathBuf,
    pub overwrite: bool,
    pub backend: Backend,
    pub gpu_precision: GpuPrecision,
}

#[derive(Debug, Serialize)]
pub struct EncodeReport {
    pub hook: String,
    pub rows: usize,
    pub cells: usize,
    pub out: String,
}

/// Writes `indices.npy` (int16 when d_sae ≤ 32,767, else int32) and `values.npy` (f16), both
/// `[n_rows, k]`, and `manifest.json` into `out` (staged, then moved into place).
pub fn encode_store(
    req: &EncodeRequest,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EncodeReport, SaeError> {
    let (folder, store, array, hook) = open_sae_on_store(&req.sae, &req.acts, req.hook.as_deref())?;
    if req.out.exists() && !req.overwrite {
        return Err(SaeError::OutputExists(req.out.clone()));
    }
    let sae = &folder.sae;
    let n = array.n_rows();
    let tmp = req.out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let file_err = |path: &Path, action: &'static str| {
        let path = path.to_path_buf();
        move |e: std::io::Error| crate::formats::FileError::new(&path, action, e)
    };
    std::fs::create_dir_all(&tmp).map_err(file_err(&tmp, "cannot create"))?;
    let wide = sae.d_sae > i16::MAX as usize;
    let index_dtype = if wide { NpyDtype::I32 } else { NpyDtype::I16 };
    let open = |name: &str,
                dtype: NpyDtype|
     -> Result<(std::io::BufWriter<std::fs::File>, PathBuf), SaeError> {
        let path = tmp.join(name);
        let mut w =
            std::io::BufWriter::new(std::fs::File::create(&path).map_err(file_err(&path, "cannot create"))?);
        w.write_all(&header_bytes(dtype, &[n, sae.k]))
            .map_err(file_err(&path, "cannot write"))?;
        Ok((w, path))
    };
    let (mut indices_out, indices_path) = open("indices.npy", index_dtype)?;
    let (mut values_out, values_path) = open("values.npy", NpyDtype::F16)?;
    let gpu = match req.backend {
        Backend::Cpu => None,
        Backend::Cuda => Some(GpuSaeEncoder::new(sae, req.gpu_precision)?),
    };
    const CHUNK: usize = 8192;
    let mut x = vec![0.0f32; CHUNK * sae.d_in];
    let mut start = 0;
    while start < n {
        let rows = (n - start).min(CHUNK);
        let x = &mut x[..rows * sae.d_in];
        array.read_rows(start, x);
        refuse_nonfinite(&store, &array, start, x, sae.d_in)?;
        let codes = match &gpu {
            Some(g) => g.encode(x)?,
            None => sae.encode(x),
        };
        if wide {
            let idx: Vec<i32> = codes.indices.iter().map(|&i| i as i32).collect();
            indices_out
                .write_all(bytemuck::cast_slice(&idx))
                .map_err(file_err(&indices_path, "cannot write"))?;
        } else {
            let idx: Vec<i16> = codes.indices.iter().map(|&i| i as i16).collect();
            indices_out
                .write_all(bytemuck::cast_slice(&idx))
                .map_err(file_err(&indices_path, "cannot write"))?;
        }
        let mut vals = vec![f16::ZERO; codes.values.len()];
        vals.convert_from_f32_slice(&codes.values);
        values_out
            .write_all(bytemuck::cast_slice(&vals))
            .map_err(file_err(&values_path, "cannot write"))?;
        start += rows;
        progress(start, n);
    }
    for (w, path) in [(indices_out, &indices_path), (values_out, &values_path)] {
        let file = w
            .into_inner()
            .map_err(|e| crate::formats::FileError::new(path, "cannot write", e.into_error()))?;
        file.sync_all().map_err(file_err(path, "cannot write"))?;
    }
    let manifest = serde_json::json!({
        "format": "scinterp-sae-codes",
        "format_version": 1,
        "sae": absolute(&req.sae),
        "activation_store": absolute(&req.acts),
        "hook_name": hook,
        "n_rows": n,
        "k": sae.k,
        "d_sae": sae.d_sae,
        "rows": "row r of indices.npy / values.npy is row r of the store (rows.npy gives its cell, position, token)",
    });
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| SaeError::Serialise(e.to_string()))?;
    atomic_write(&tmp.join("manifest.json"), text.as_bytes())?;
    // The old output goes only once the new one is complete.
    if req.out.exists() {
        std::fs::remove_dir_all(&req.out).map_err(file_err(&req.out, "cannot remove"))?;
    }
    std::fs::rename(&tmp, &req.out).map_err(file_err(&req.out, "cannot move into place"))?;
    crate::formats::atomic::sync_parent(&req.out);
    Ok(EncodeReport {
        hook,
        rows: n,
        cells: store.manifest.n_cells,
        out: req.out.display().to_string(),
    })
}

/// Refuses a chunk of store rows (starting at row `start`) holding a non-finite value.
fn refuse_nonfinite(
    store: &ActStore,
    array: &HookArray,
    start: usize,
    x: &[f32],
    d: usize,
) -> Result<(), SaeError> {
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        let row = start + i / d;
        let cell = store.rows().ok().map(|r| r[row][0] as i64).unwrap_or(-1);
        return Err(SaeError::NonFiniteRow {
            path: array.path().to_path_buf(),
            row,
            cell,
            column: i % d,
            value: x[i],
        });
    }
    Ok(())
}

/// `sae eval`: an SAE measured on a store's rows.
#[derive(Clone, Debug)]
pub struct EvalRequest {
    pub sae: PathBuf,
    pub acts: PathBuf,
    pub hook: Option<String>,
    /// `all`, or `heldout` (the cells the SAE's training held out).
    pub rows: String,
    /// A planted dictionary (`dictionary.npy` of a synthetic store).
    pub truth: Option<PathBuf>,
    pub splice_cells: usize,
}

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub hook: String,
    pub rows: EvalStats,
    pub spliced: Option<SpliceLosses>,
    pub recovery: Option<Recovery>,
}

/// Measures an SAE on a store: FVU, L0, dead latents, the spliced loss and the planted-atom recovery.
pub fn eval_on_store(req: &EvalRequest, splicer: Option<&dyn SpliceModel>) -> Result<EvalReport, SaeError> {
    let (folder, store, array, hook) = open_sae_on_store(&req.sae, &req.acts, req.hook.as_deref())?;
    let rows = store.rows()?;
    let (ranges, cells): (Vec<Range<usize>>, Vec<u64>) = match req.rows.as_str() {
        "all" => (
            std::iter::once(0..array.n_rows()).collect(),
            (0..store.manifest.n_cells as u64).collect(),
        ),
        "heldout" => {
            let path = req.sae.join("heldout_cells.npy");
            let (_, bytes) = read_npy_bytes(&path).map_err(|e| SaeError::Npy {
                path: path.clone(),
                reason: e.reason(),
            })?;
            let cells: Vec<i64> = bytemuck::pod_collect_to_vec(&bytes);
            let wanted: HashSet<i64> = cells.iter().copied().collect();
            let mut ranges = Vec::new();
            for (r, row) in rows.iter().enumerate() {
                if wanted.contains(&(row[0] as i64)) {
                    push_range(&mut ranges, r..r + 1);
                }
            }
            (ranges, cells.iter().map(|&c| c as u64).collect())
        }
        other => return Err(SaeError::Rows(other.into())),
    };
    if let Some(&(row, column, value)) = nonfinite_rows(&array, &ranges).first() {
        return Err(SaeError::NonFiniteRow {
            path: array.path().to_path_buf(),
            row,
            cell: rows[row][0] as i64,
            column,
            value,
        });
    }
    let stats = evaluate(&folder.sae, &array, &ranges);
    let spliced = match splicer {
        Some(s) if req.splice_cells > 0 && !cells.is_empty() => {
            let chosen: Vec<u64> = cells.iter().take(req.splice_cells).copied().collect();
            Some(
                s.spliced_losses(&hook, &folder.sae, &stats.mean, &chosen)
                    .map_err(SaeError::Splice)?,
            )
        }
        _ => None,
    };
    let recovery = match &req.truth {
        Some(path) => Some(planted_recovery(&folder, path)?),
        None => None,
    };
    Ok(EvalReport {
        hook,
        rows: stats,
        spliced,
        recovery,
    })
}

fn planted_recovery(folder: &SaeFolder, path: &Path) -> Result<Recovery, SaeError> {
    let (header, bytes) = read_npy_bytes(path).map_err(|e| SaeError::Npy {
        path: path.to_path_buf(),
        reason: e.reason(),
    })?;
    if header.dtype != NpyDtype::F32 || header.shape.len() != 2 || header.shape[1] != folder.sae.d_in {
        return Err(SaeError::Npy {
            path: path.to_path_buf(),
            reason: format!(
                "expected a float32 [atoms, {}] dictionary (--truth), found {:?} {:?}",
                folder.sae.d_in, header.dtype, header.shape
            ),
        });
    }
    Ok(recovery(
        &folder.sae,
        &bytemuck::pod_collect_to_vec::<u8, f32>(&bytes),
        0.9,
    ))
}

/// `sae synth`: a store of rows made from a planted dictionary.
#[derive(Clone, Debug)]
pub struct SynthRequest {
    pub spec: SynthSpec,
    pub rows: usize,
    pub cell_rows: usize,
    pub hook: String,
    pub out: PathBuf,
    /// Replace an existing store at `out` (only once the new one is complete).
    pub overwrite: bool,
}

#[derive(Debug, Serialize)]
pub struct SynthReport {
    pub rows: usize,
    pub cells: usize,
}

/// Writes the synthetic store (with `dictionary.npy`, the planted atoms).
pub fn synth_store(req: &SynthRequest) -> Result<SynthReport, SaeError> {
    let spec = &req.spec;
    spec.validate()?;
    HookPoint::parse(&req.hook).map_err(|e| FlagError::new("hook", &req.hook, e.to_string()))?;
    // Written in a staging sibling and swapped in when complete: an earlier store survives a failed run.
    let staged = StagedDir::begin(&req.out, req.overwrite, "an activation store")?;
    let cell_rows = req.cell_rows.max(1);
    let n_cells = req.rows.div_ceil(cell_rows);
    let rows: Vec<[i32; 3]> = (0..req.rows)
        .map(|r| [(r / cell_rows) as i32, (r % cell_rows) as i32, 0])
        .collect();
    let manifest = StoreManifest {
        format: STORE_FORMAT.into(),
        format_version: 1,
        model: StoreModelRecord::Synthetic {
            synthetic: spec.clone(),
        },
        source: StoreSourceRecord::Synthetic {
            cell_rows,
            synthetic_rows: req.rows,
        },
        hooks: vec![req.hook.clone()],
        dtype: ActDtype::F32,
        d_model: spec.d,
        include_special: false,
        n_cells,
        n_rows: rows.len(),
        max_batch_tokens: cell_rows,
        cells_complete: 0,
        rows_complete: 0,
        complete: false,
        scinterp_version: env!("CARGO_PKG_VERSION").into(),
    };
    let OpenedStore::Writer(mut writer) = StoreWriter::open(staged.path(), manifest, &rows)? else {
        return Err(SaeError::OutputExists(req.out.clone()));
    };
    let dictionary = spec.dictionary();
    let dict_path = staged.path().join("dictionary.npy");
    write_npy(
        &dict_path,
        NpyDtype::F32,
        &[spec.atoms, spec.d],
        bytemuck::cast_slice(&dictionary),
    )
    .map_err(|e| crate::formats::FileError::new(&dict_path, "cannot write", e))?;
    const CHUNK_CELLS: usize = 512;
    let mut cell = 0;
    while cell < n_cells {
        let end_cell = (cell + CHUNK_CELLS).min(n_cells);
        let (first, last) = (cell * cell_rows, (end_cell * cell_rows).min(req.rows));
        let mut data = vec![0.0f32; (last - first) * spec.d];
        spec.rows(&dictionary, first, &mut data);
        writer.write_rows(first, &[ActDtype::F32.encode(&data)])?;
        writer.checkpoint(end_cell, last)?;
        cell = end_cell;
    }
    drop(writer);
    staged.commit()?;
    Ok(SynthReport {
        rows: req.rows,
        cells: n_cells,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_cut_out_of_ranges() {
        let bad: HashSet<usize> = [0, 5, 6, 12, 19].into_iter().collect();
        let got = without_rows(&[0..10, 12..20], &bad);
        assert_eq!(got, vec![1..5, 7..10, 13..19]);
        let one: Vec<Range<usize>> = std::iter::once(3..4).collect();
        assert_eq!(without_rows(&one, &[3].into_iter().collect()), vec![]);
    }

    #[test]
    fn nonfinite_rows_are_found_in_row_order() {
        let mut data = vec![1.0f32; 10_000 * 3];
        data[9_000 * 3 + 2] = f32::NAN;
        data[17] = f32::NEG_INFINITY;
        let rows = super::super::train::MemoryRows { d: 3, data };
        let all: Vec<Range<usize>> = std::iter::once(0..10_000).collect();
        let bad = nonfinite_rows(&rows, &all);
        assert_eq!(bad.len(), 2);
        assert_eq!((bad[0].0, bad[0].1), (5, 2));
        assert_eq!((bad[1].0, bad[1].1), (9_000, 2));
        assert!(nonfinite_rows(&rows, &[0..5, 6..9_000]).is_empty());
    }

    #[test]
    fn defaults_scale_with_the_store_and_the_run() {
        // A large store: 5 passes. A small one: 1,000 steps, at most 100 passes.
        assert_eq!(default_tokens(10_000_000, 4096), 50_000_000);
        assert_eq!(default_tokens(100_000, 4096), 4_096_000);
        assert_eq!(default_tokens(1_000, 4096), 100_000);
        assert_eq!(default_dead_after_tokens(1_000_000_000, 4096), 10_000_000);
        assert_eq!(default_dead_after_tokens(4_096_000, 4096), 409_600);
        assert_eq!(default_dead_after_tokens(20_000, 4096), 16_384);
        let (a, b) = (
            hook_seed(0, "blocks.1.hook_resid_post"),
            hook_seed(0, "blocks.2.hook_resid_post"),
        );
        assert_ne!(a, b);
        assert_ne!(a, hook_seed(1, "blocks.1.hook_resid_post"));
        assert_eq!(a, hook_seed(0, "blocks.1.hook_resid_post"));
    }

    #[test]
    fn sizes_beyond_memory_or_64_bits_are_refused_before_allocating() {
        let cfg = TrainConfig::new(1152, 2_000_000_000, 32, 1_000_000);
        let needed = cfg.memory_needed(1152).unwrap();
        assert!(needed > 1 << 40, "{needed}");
        assert!(matches!(
            check_memory(&cfg, 1152),
            Err(SaeError::OutOfMemory { .. })
        ));
        let huge = TrainConfig {
            batch_size: usize::MAX / 2,
            ..TrainConfig::new(1 << 20, 1 << 30, 32, 1)
        };
        assert_eq!(huge.memory_needed(1 << 20), None);
        let small = TrainConfig::new(16, 64, 4, 1000);
        assert!(check_memory(&small, 16).is_ok());
    }
}
