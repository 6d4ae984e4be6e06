//! `scinterp trace`: feature → downstream-feature circuit tracing by ablation with tail replay, and
//! the edge table with per-edge statistics and Benjamini–Hochberg q-values over every test performed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use scinterp_engine::device::DeviceChoice;
use scinterp_engine::sae::io::{load as load_sae, SaeFolder};
use scinterp_engine::stats::bh_qvalues;
use scinterp_engine::trace::{source_cell_counts, trace_cells, TraceAccumulator, TraceSetup};
use scinterp_engine::HookPoint;
use serde::Serialize;

use crate::extract::absolute;
use crate::forward::{load_model, make_forward, read_cells, resolve_device, GpuPrecisionArg};
use crate::table::{Column, Table};

#[derive(Args, Debug)]
pub struct TraceArgs {
    #[command(subcommand)]
    pub(crate) command: Option<TraceCommand>,
    /// Model folder (Geneformer or scGPT).
    #[arg(long, required = true)]
    pub(crate) model: Option<PathBuf>,
    /// Token store of the cells to trace on.
    #[arg(long, required = true)]
    pub(crate) input: Option<PathBuf>,
    /// Folder of SAE folders, one per hook: `<saes>/<hook>/cfg.json` (or any subfolder whose
    /// cfg.json names the hook in metadata.hook_name).
    #[arg(long, required = true)]
    pub(crate) saes: Option<PathBuf>,
    /// Source hook (a `blocks.L.hook_resid_post`).
    #[arg(long, required = true)]
    pub(crate) source: Option<String>,
    /// Source features: `all`, a comma list (`3,17,40`), or `top:N` (the N that fire in most of the
    /// traced cells; ties to the lower index).
    #[arg(long, default_value = "all")]
    pub(crate) features: String,
    /// Downstream hooks (comma list of later `hook_resid_post`s).
    #[arg(long, required = true)]
    pub(crate) targets: Option<String>,
    /// Trace on the first N cells of the store (default: all).
    #[arg(long)]
    pub(crate) cells: Option<usize>,
    /// Edge table, `.parquet` or `.tsv` (by the extension), written atomically; a JSON summary is
    /// written beside it (`.summary.json`).
    /// A checkpoint (`.checkpoint`) is kept beside it while the trace runs: rerunning the same command
    /// after a kill resumes from it. With --shard, the shard's accumulator is written here instead.
    #[arg(long, required = true)]
    pub(crate) out: Option<PathBuf>,
    /// Trace only every n-th requested feature starting at i (`i/n`, 0-based); combine the shards'
    /// outputs with `scinterp trace merge`.
    #[arg(long, value_parser = parse_shard)]
    pub(crate) shard: Option<(usize, usize)>,
    /// Keep edges with |Cohen's d| at least this.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) min_abs_d: f64,
    /// Keep edges with BH q at most this.
    #[arg(long, default_value_t = 0.05)]
    pub(crate) max_q: f64,
    /// Keep edges whose sign agrees in at least this fraction of cells.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) min_consistency: f64,
    /// Cells per clean-run chunk (bounds memory: their states at the source and target hooks).
    #[arg(long, default_value_t = 64)]
    pub(crate) chunk_cells: usize,
    #[arg(long, default_value_t = 16_384)]
    pub(crate) max_batch_tokens: usize,
    /// Sign-flip permutations of the per-cell changes (0: none): the summary then gives the edges the
    /// filters pass under the null and the empirical FDR of the rule. Memory: 16 bytes × B per edge.
    #[arg(long, default_value_t = 0)]
    pub(crate) null_permutations: usize,
    /// Seed of the sign flips.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Where the clean runs and tail replays run: `auto` (the CPU until the CUDA path is validated on a
    /// GPU), `cpu` or `cuda` (see `scinterp forward --help`); SAE encodes and statistics stay on the CPU.
    #[arg(long, default_value = "auto")]
    pub(crate) device: DeviceChoice,
    /// With `--device cuda`: `bf16` (default) or `f32` (exact f32 GEMMs: the parity mode).
    #[arg(long, default_value = "bf16")]
    pub(crate) gpu_precision: GpuPrecisionArg,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Serialize)]
pub struct TraceSummary {
    pub(crate) source: String,
    pub(crate) targets: Vec<String>,
    pub(crate) cells: usize,
    pub(crate) features_requested: usize,
    pub(crate) features_traced: usize,
    /// Requested features that never fired in the traced cells (nothing to ablate).
    pub(crate) features_skipped_never_fired: usize,
    pub(crate) ablations: u64,
    pub(crate) seconds: f64,
    pub(crate) ablations_per_second: f64,
    /// Edges whose target changed in at least one cell and whose statistics were tested.
    pub(crate) tests_performed: usize,
    /// (feature, target feature) pairs whose change was zero in every cell: counted, not tested.
    pub(crate) all_zero_targets: u64,
    /// Edges with n < 2 (a feature firing in one cell): not tested.
    pub(crate) untestable_edges: usize,
    pub(crate) edges_written: usize,
    pub(crate) edges_per_target: BTreeMap<String, usize>,
    pub(crate) excitatory_fraction: f64,
    pub(crate) inhibitory_fraction: f64,
    pub(crate) filters: serde_json::Value,
    /// With `--null-permutations`: edges passing the filters per permutation (mean and each), and the
    /// empirical FDR of the rule (mean null edges / edges written).
    pub(crate) null: Option<NullSummary>,
    pub(crate) out: String,
}

#[derive(Debug, Serialize)]
pub struct NullSummary {
    pub(crate) permutations: usize,
    pub(crate) seed: u64,
    pub(crate) null_edges_mean: f64,
    pub(crate) null_edges: Vec<usize>,
    pub(crate) empirical_fdr: f64,
    pub(crate) method: &'static str,
}

/// Finds the SAE of `hook` under `dir`.
pub(crate) fn find_sae(dir: &Path, hook: &str) -> Result<SaeFolder> {
    let direct = dir.join(hook);
    if direct.join("cfg.json").exists() {
        return Ok(load_sae(&direct)?);
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("--saes {}: cannot list", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.join("cfg.json").exists() {
            let folder = load_sae(&path)?;
            if folder.hook_name() == Some(hook) {
                return Ok(folder);
            }
        }
    }
    bail!(
        "--saes {}: no SAE for {hook} (expected {}/cfg.json or a folder whose cfg.json has metadata.hook_name \
         = {hook}); train one with `scinterp sae train --hook {hook}`",
        dir.display(),
        direct.display()
    )
}

fn resid_post_layer(name: &str) -> Result<usize> {
    match HookPoint::parse(name)? {
        HookPoint::ResidPost(l) => Ok(l),
        other => bail!("{other}: tracing replays from a block output; use a blocks.L.hook_resid_post hook"),
    }
}

#[derive(Subcommand, Debug)]
pub enum TraceCommand {
    /// Combine the accumulators of `scinterp trace --shard i/n` runs into one edge table.
    Merge(MergeArgs),
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Shard files (comma list), as written by `scinterp trace --shard i/n --out FILE`.
    #[arg(long, value_delimiter = ',', required = true)]
    shards: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0.0)]
    min_abs_d: f64,
    #[arg(long, default_value_t = 0.05)]
    max_q: f64,
    #[arg(long, default_value_t = 0.0)]
    min_consistency: f64,
    #[arg(long)]
    json: bool,
}

fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let (i, n) = text.split_once('/').ok_or("expected i/n, e.g. 0/4")?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| "i must be a number")?,
        n.trim().parse().map_err(|_| "n must be a number")?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 ≤ i < n"));
    }
    Ok((i, n))
}

pub fn run(args: TraceArgs) -> Result<()> {
    if let Some(TraceCommand::Merge(m)) = args.command {
        let json = m.json;
        let summary = merge(m)?;
        if json {
            println!("{}", serde_json::to_string(&summary)?);
        }
        return Ok(());
    }
    let json = args.json;
    let summary = trace_edges(args)?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// Traces, writes the edge table and its summary, and returns the summary.
pub fn trace_edges(args: TraceArgs) -> Result<TraceSummary> {
    let started = std::time::Instant::now();
    let need = |what: &str| anyhow::anyhow!("--{what} is required");
    let model_dir = args.model.clone().ok_or_else(|| need("model"))?;
    let input = args.input.clone().ok_or_else(|| need("input"))?;
    let saes = args.saes.clone().ok_or_else(|| need("saes"))?;
    let source = args.source.clone().ok_or_else(|| need("source"))?;
    let targets_spec = args.targets.clone().ok_or_else(|| need("targets"))?;
    let out = args.out.clone().ok_or_else(|| need("out"))?;
    let backend = resolve_device(args.device)?;
    let model = load_model(&model_dir, false)?;
    let forward = make_forward(backend, model.encoder.as_ref(), args.gpu_precision)?;
    let cells = read_cells(&input, &model)?;
    let n_cells = args.cells.unwrap_or(cells.tokens.len()).min(cells.tokens.len());
    let source_layer = resid_post_layer(&source)?;
    let source_sae = find_sae(&saes, &source)?;
    let target_names: Vec<String> = targets_spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if target_names.is_empty() {
        bail!("--targets names no hook");
    }
    let mut targets = Vec::new();
    for name in &target_names {
        let layer = resid_post_layer(name)?;
        if layer <= source_layer || layer >= model.encoder.dims().n_layers {
            bail!(
                "--targets {name}: must be a block after the source ({}) and within the model's {} layers",
                source,
                model.encoder.dims().n_layers
            );
        }
        targets.push((HookPoint::ResidPost(layer), find_sae(&saes, name)?));
    }
    for (what, sae) in
        std::iter::once((&source, &source_sae)).chain(target_names.iter().zip(targets.iter().map(|(_, s)| s)))
    {
        if sae.sae.d_in != model.encoder.dims().d_model {
            bail!(
                "the SAE of {what} reads d_in = {} but the model's width is {}; use SAEs trained on this model",
                sae.sae.d_in,
                model.encoder.dims().d_model
            );
        }
    }
    let special_ids = crate::extract::special_token_ids(&input, &model)?;
    let setup = TraceSetup {
        source_layer,
        source_sae: &source_sae.sae,
        targets: targets.iter().map(|(h, s)| (*h, &s.sae)).collect(),
        special_ids,
        max_batch_tokens: args.max_batch_tokens.max(1),
        null: scinterp_engine::trace::SignFlipNull {
            permutations: args.null_permutations,
            seed: args.seed,
        },
    };
    let d_sae = source_sae.sae.d_sae as u32;
    let mut features = match args.features.trim().strip_prefix("top:") {
        Some(n) => {
            let n: usize = n
                .parse()
                .with_context(|| format!("--features {}: expected top:N with a number N", args.features))?;
            let counts = source_cell_counts(
                model.encoder.as_ref(),
                forward.as_ref(),
                &setup,
                &cells.tokens[..n_cells],
                cells.values.as_deref().map(|v| &v[..n_cells]),
            )?;
            // Most cells first, ties by index; features that never fire are not taken.
            let mut order: Vec<u32> = (0..d_sae).filter(|&f| counts[f as usize] > 0).collect();
            order.sort_by_key(|&f| (std::cmp::Reverse(counts[f as usize]), f));
            order.truncate(n);
            order.sort_unstable();
            order
        }
        None => parse_features(&args.features, d_sae)?,
    };
    let features_requested = features.len();
    if let Some((i, n)) = args.shard {
        features = features
            .into_iter()
            .enumerate()
            .filter(|(j, _)| j % n == i)
            .map(|(_, f)| f)
            .collect();
    }
    let values = cells.values.as_deref();
    let plan = TracePlan {
        source: source.clone(),
        targets: target_names.clone(),
        target_d_sae: targets.iter().map(|(_, s)| s.sae.d_sae).collect(),
        features_requested,
        cells: n_cells,
        settings: serde_json::json!({
            "model": absolute(&model_dir),
            "input": absolute(&input),
            "saes": absolute(&saes),
            "source": source,
            "targets": target_names,
            "features": args.features,
            "cells": n_cells,
            "chunk_cells": args.chunk_cells.max(1),
            "max_batch_tokens": args.max_batch_tokens.max(1),
            "null_permutations": args.null_permutations,
            "seed": args.seed,
        }),
    };
    let shard_tag = args.shard.map(|(i, n)| serde_json::json!([i, n]));
    let settings = serde_json::json!({"plan": plan.settings, "shard": shard_tag});

    // Resume from a checkpoint of the same command, if any.
    let checkpoint_path = out.with_extension("checkpoint");
    let (mut acc, mut first) = match read_checkpoint(&checkpoint_path)? {
        Some((saved, cells_done, acc)) if saved == settings => {
            tracing::info!("resuming from {} at cell {cells_done}", checkpoint_path.display());
            (acc, cells_done)
        }
        Some(_) => bail!(
            "{} holds the checkpoint of a trace with other settings; rerun that command to finish it, or remove \
             the file to start this one",
            checkpoint_path.display()
        ),
        None => (TraceAccumulator::default(), 0),
    };
    let bar = crate::progress::bar(n_cells as u64, first as u64, "cells");
    let chunk = args.chunk_cells.max(1);
    let fault_after = std::env::var("SCINTERP_FAULT_AFTER_CHUNKS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let mut chunks_done = 0usize;
    while first < n_cells {
        let last = (first + chunk).min(n_cells);
        let mut part = TraceAccumulator::default();
        let before = acc.ablations;
        trace_cells(
            (model.encoder.as_ref(), forward.as_ref()),
            &setup,
            &features,
            &cells.tokens[first..last],
            values.map(|v| &v[first..last]),
            &mut part,
            &mut |done| bar.set_message(format!("{} ablations", before + done)),
        )
        .with_context(|| format!("tracing cells {first}..{last}"))?;
        acc.merge(part);
        first = last;
        write_checkpoint(&checkpoint_path, &settings, first, &acc)?;
        chunks_done += 1;
        if fault_after == Some(chunks_done) {
            // Test hook standing in for `kill -9` right after a checkpoint.
            std::process::abort();
        }
        bar.set_position(first as u64);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    if args.shard.is_some() {
        // A shard writes its accumulator; `scinterp trace merge` makes the table.
        write_shard(&out, &plan, &settings, &acc)?;
        let _ = std::fs::remove_file(&checkpoint_path);
        tracing::info!(
            "shard: {} ablations in {seconds:.1} s; accumulator written to {} (combine shards with `scinterp trace merge`)",
            acc.ablations,
            out.display()
        );
        return Ok(TraceSummary::for_shard(&plan, &acc, seconds, &out));
    }
    let summary = write_table(&plan, &acc, &args.filters(), &out, seconds)?;
    let _ = std::fs::remove_file(&checkpoint_path);
    Ok(summary)
}

/// What a trace was asked to do, as the table and the shards need it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct TracePlan {
    source: String,
    targets: Vec<String>,
    target_d_sae: Vec<usize>,
    features_requested: usize,
    cells: usize,
    /// Everything that decides the result (for resume and for checking shards belong together).
    settings: serde_json::Value,
}

/// Edge filters of the table.
struct Filters {
    max_q: f64,
    min_abs_d: f64,
    min_consistency: f64,
}

impl TraceArgs {
    fn filters(&self) -> Filters {
        Filters {
            max_q: self.max_q,
            min_abs_d: self.min_abs_d,
            min_consistency: self.min_consistency,
        }
    }
}

/// Statistics of every edge, BH over every test performed, the filtered TSV and its summary.
fn write_table(
    plan: &TracePlan,
    acc: &TraceAccumulator,
    filters: &Filters,
    out: &Path,
    seconds: f64,
) -> Result<TraceSummary> {
    // Statistics of every edge; BH over every test performed.
    let mut keys: Vec<(u32, u16, u32)> = acc.edges.keys().copied().collect();
    keys.sort_unstable();
    let stats: Vec<_> = keys
        .iter()
        .map(|k| acc.edges[k].stats(acc.cells_active[&k.0]))
        .collect();
    let tested: Vec<usize> = (0..keys.len()).filter(|&i| stats[i].p.is_finite()).collect();
    let q_tested = bh_qvalues(&tested.iter().map(|&i| stats[i].p).collect::<Vec<_>>())?;
    let mut q = vec![f64::NAN; keys.len()];
    for (&i, &qv) in tested.iter().zip(&q_tested) {
        q[i] = qv;
    }
    let passes = |s: &scinterp_engine::trace::EdgeStats, q: f64| {
        q <= filters.max_q
            && s.cohens_d.abs() >= filters.min_abs_d
            && s.sign_consistency >= filters.min_consistency
    };

    let kept: Vec<usize> = (0..keys.len()).filter(|&i| passes(&stats[i], q[i])).collect();
    let null = null_edges(plan, acc, &keys, &tested, &passes, kept.len())?;
    let f64s = |get: &dyn Fn(usize) -> f64| Column::F64(kept.iter().map(|&i| get(i)).collect());
    let table = Table::new()
        .column("source_hook", Column::Str(vec![plan.source.clone(); kept.len()]))
        .column(
            "source_feature",
            Column::I64(kept.iter().map(|&i| i64::from(keys[i].0)).collect()),
        )
        .column(
            "target_hook",
            Column::Str(
                kept.iter()
                    .map(|&i| plan.targets[keys[i].1 as usize].clone())
                    .collect(),
            ),
        )
        .column(
            "target_feature",
            Column::I64(kept.iter().map(|&i| i64::from(keys[i].2)).collect()),
        )
        .column(
            "n_cells",
            Column::I64(kept.iter().map(|&i| i64::from(stats[i].n)).collect()),
        )
        .column("mean_change", f64s(&|i| stats[i].mean))
        .column("sd_change", f64s(&|i| stats[i].sd))
        .column("cohens_d", f64s(&|i| stats[i].cohens_d))
        .column("hedges_g", f64s(&|i| stats[i].hedges_g))
        .column("sign_consistency", f64s(&|i| stats[i].sign_consistency))
        .column("t", f64s(&|i| stats[i].t))
        .column("p", f64s(&|i| stats[i].p))
        .column("q", f64s(&|i| q[i]));
    table.write(out)?;
    let written = kept.len();
    let mut per_target: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &kept {
        *per_target
            .entry(plan.targets[keys[i].1 as usize].clone())
            .or_default() += 1;
    }
    let excitatory = kept.iter().filter(|&&i| stats[i].mean > 0.0).count();
    let inhibitory = written - excitatory;

    let traced = acc.cells_active.len();
    let target_latents: u64 = plan.target_d_sae.iter().map(|&d| d as u64).sum();
    let summary = TraceSummary {
        source: plan.source.clone(),
        targets: plan.targets.clone(),
        cells: plan.cells,
        features_requested: plan.features_requested,
        features_traced: traced,
        features_skipped_never_fired: plan.features_requested - traced,
        ablations: acc.ablations,
        seconds,
        ablations_per_second: acc.ablations as f64 / seconds.max(1e-9),
        tests_performed: tested.len(),
        all_zero_targets: traced as u64 * target_latents - keys.len() as u64,
        untestable_edges: keys.len() - tested.len(),
        edges_written: written,
        edges_per_target: per_target,
        excitatory_fraction: excitatory as f64 / written.max(1) as f64,
        inhibitory_fraction: inhibitory as f64 / written.max(1) as f64,
        filters: serde_json::json!({
            "max_q": filters.max_q, "min_abs_d": filters.min_abs_d, "min_consistency": filters.min_consistency,
            "fdr": "Benjamini-Hochberg over every test performed (edges with n >= 2 and a finite p)",
        }),
        null,
        out: out.display().to_string(),
    };
    let summary_path = out.with_extension("summary.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    tracing::info!(
        "{} ablations over {} cells in {:.1} s ({:.1}/s); {} tests, {} edges written to {}",
        summary.ablations,
        plan.cells,
        seconds,
        summary.ablations_per_second,
        summary.tests_performed,
        written,
        out.display()
    );
    Ok(summary)
}

/// The sign-flip null: for each permutation, the statistics of every tested edge from its flipped
/// sums, BH over the same family, and the count of edges the filters pass.
fn null_edges(
    plan: &TracePlan,
    acc: &TraceAccumulator,
    keys: &[(u32, u16, u32)],
    tested: &[usize],
    passes: &dyn Fn(&scinterp_engine::trace::EdgeStats, f64) -> bool,
    observed: usize,
) -> Result<Option<NullSummary>> {
    let permutations = plan.settings["null_permutations"].as_u64().unwrap_or(0) as usize;
    if permutations == 0 {
        return Ok(None);
    }
    let counts = (0..permutations)
        .map(|b| -> Result<usize> {
            let stats: Vec<_> = tested
                .iter()
                .map(|&i| {
                    let k = &keys[i];
                    acc.edges[k].flipped_stats(acc.cells_active[&k.0], &acc.null[k][b])
                })
                .collect();
            let q = bh_qvalues(&stats.iter().map(|s| s.p).collect::<Vec<_>>())?;
            Ok(stats.iter().zip(&q).filter(|(s, &q)| passes(s, q)).count())
        })
        .collect::<Result<Vec<_>>>()?;
    let mean = counts.iter().sum::<usize>() as f64 / permutations as f64;
    Ok(Some(NullSummary {
        permutations,
        seed: plan.settings["seed"].as_u64().unwrap_or(0),
        null_edges_mean: mean,
        null_edges: counts,
        empirical_fdr: mean / observed.max(1) as f64,
        method: "sign flips of each (source feature, cell) observation, shared across targets; BH and the filters \
                 applied to each permutation as to the data",
    }))
}

pub(crate) fn parse_features(spec: &str, d_sae: u32) -> Result<Vec<u32>> {
    let spec = spec.trim();
    if spec == "all" {
        return Ok((0..d_sae).collect());
    }
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let f: u32 = part
            .parse()
            .with_context(|| format!("--features: `{part}` is not a feature index"))?;
        if f >= d_sae {
            bail!("--features: {f} is out of range (the source SAE has {d_sae} latents)");
        }
        out.push(f);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl TraceSummary {
    fn for_shard(plan: &TracePlan, acc: &TraceAccumulator, seconds: f64, out: &Path) -> TraceSummary {
        TraceSummary {
            source: plan.source.clone(),
            targets: plan.targets.clone(),
            cells: plan.cells,
            features_requested: plan.features_requested,
            features_traced: acc.cells_active.len(),
            features_skipped_never_fired: 0,
            ablations: acc.ablations,
            seconds,
            ablations_per_second: acc.ablations as f64 / seconds.max(1e-9),
            tests_performed: 0,
            all_zero_targets: 0,
            untestable_edges: 0,
            edges_written: 0,
            edges_per_target: BTreeMap::new(),
            excitatory_fraction: 0.0,
            inhibitory_fraction: 0.0,
            filters: serde_json::json!(null),
            null: None,
            out: out.display().to_string(),
        }
    }
}

const SHARD_MAGIC: &[u8; 8] = b"SCISHARD";

/// `[magic][u64 len][settings JSON][u64 cells_done][accumulator]`, through a temporary name.
fn write_state(
    path: &Path,
    magic: &[u8; 8],
    settings: &serde_json::Value,
    cells_done: usize,
    acc: &TraceAccumulator,
) -> Result<()> {
    let text = serde_json::to_vec(settings)?;
    let mut bytes = Vec::with_capacity(text.len() + 64);
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&text);
    bytes.extend_from_slice(&(cells_done as u64).to_le_bytes());
    bytes.extend_from_slice(&acc.to_bytes());
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", tmp.display()))
}

fn read_state(path: &Path, magic: &[u8; 8]) -> Result<Option<(serde_json::Value, usize, TraceAccumulator)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let damaged = || {
        anyhow::anyhow!(
            "{}: damaged or not a scinterp trace file; remove it and rerun",
            path.display()
        )
    };
    if bytes.get(..8) != Some(&magic[..]) {
        return Err(damaged());
    }
    let len = u64::from_le_bytes(bytes.get(8..16).ok_or_else(damaged)?.try_into()?) as usize;
    let settings: serde_json::Value =
        serde_json::from_slice(bytes.get(16..16 + len).ok_or_else(damaged)?).map_err(|_| damaged())?;
    let at = 16 + len;
    let cells_done = u64::from_le_bytes(bytes.get(at..at + 8).ok_or_else(damaged)?.try_into()?) as usize;
    let acc = TraceAccumulator::from_bytes(&bytes[at + 8..]).ok_or_else(damaged)?;
    Ok(Some((settings, cells_done, acc)))
}

fn write_checkpoint(
    path: &Path,
    settings: &serde_json::Value,
    cells_done: usize,
    acc: &TraceAccumulator,
) -> Result<()> {
    write_state(path, b"SCICHECK", settings, cells_done, acc)
}

fn read_checkpoint(path: &Path) -> Result<Option<(serde_json::Value, usize, TraceAccumulator)>> {
    read_state(path, b"SCICHECK")
}

fn write_shard(
    path: &Path,
    plan: &TracePlan,
    settings: &serde_json::Value,
    acc: &TraceAccumulator,
) -> Result<()> {
    let with_plan = serde_json::json!({"settings": settings, "plan": plan});
    write_state(path, SHARD_MAGIC, &with_plan, plan.cells, acc)
}

/// `scinterp trace merge`: shards of one trace (same settings, shards 0..n of n, each once) → table.
fn merge(args: MergeArgs) -> Result<TraceSummary> {
    let started = std::time::Instant::now();
    let mut plan: Option<TracePlan> = None;
    let mut seen = Vec::new();
    let mut acc = TraceAccumulator::default();
    for path in &args.shards {
        let (meta, _, part) = read_state(path, SHARD_MAGIC)?
            .ok_or_else(|| anyhow::anyhow!("{}: no such shard file", path.display()))?;
        let this: TracePlan = serde_json::from_value(meta["plan"].clone())
            .map_err(|e| anyhow::anyhow!("{}: not a shard file ({e})", path.display()))?;
        let shard = meta["settings"]["shard"].clone();
        let (i, n) = (shard[0].as_u64().unwrap_or(0), shard[1].as_u64().unwrap_or(0));
        if let Some(p) = &plan {
            if p.settings != this.settings {
                bail!(
                    "{}: a shard of another trace (settings differ from {})",
                    path.display(),
                    args.shards[0].display()
                );
            }
        }
        if seen.contains(&(i, n)) {
            bail!("{}: shard {i}/{n} given twice", path.display());
        }
        seen.push((i, n));
        plan.get_or_insert(this);
        acc.merge(part);
    }
    let plan = plan.ok_or_else(|| anyhow::anyhow!("--shards names no file"))?;
    let n = seen.first().map(|s| s.1).unwrap_or(0);
    if seen.len() as u64 != n || seen.iter().any(|s| s.1 != n) {
        bail!(
            "got shards {seen:?}; all of 0/{n}..{}/{n} are needed, once each",
            n.saturating_sub(1)
        );
    }
    let filters = Filters {
        max_q: args.max_q,
        min_abs_d: args.min_abs_d,
        min_consistency: args.min_consistency,
    };
    write_table(&plan, &acc, &filters, &args.out, started.elapsed().as_secs_f64())
}
