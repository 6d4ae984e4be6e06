//! `scinterp trace`: feature → downstream-feature circuit tracing by ablation with tail replay, and
//! the edge table with per-edge statistics and Benjamini–Hochberg q-values over every test performed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use scinterp_engine::sae::io::{load as load_sae, SaeFolder};
use scinterp_engine::stats::bh_qvalues;
use scinterp_engine::trace::{trace_cells, TraceAccumulator, TraceSetup};
use scinterp_engine::HookPoint;
use serde::Serialize;

use crate::forward::{load_model, read_cells};

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Model folder (Geneformer or scGPT).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Token store of the cells to trace on.
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Folder of SAE folders, one per hook: `<saes>/<hook>/cfg.json` (or any subfolder whose
    /// cfg.json names the hook in metadata.hook_name).
    #[arg(long)]
    pub(crate) saes: PathBuf,
    /// Source hook (a `blocks.L.hook_resid_post`).
    #[arg(long)]
    pub(crate) source: String,
    /// Source features: `all`, a comma list (`3,17,40`), or `top:N` (the N that fire in most cells).
    #[arg(long, default_value = "all")]
    pub(crate) features: String,
    /// Downstream hooks (comma list of later `hook_resid_post`s).
    #[arg(long)]
    pub(crate) targets: String,
    /// Trace on the first N cells of the store (default: all).
    #[arg(long)]
    pub(crate) cells: Option<usize>,
    /// Edge table (TSV), written atomically; a JSON summary is written beside it (`.summary.json`).
    #[arg(long)]
    pub(crate) out: PathBuf,
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
    pub(crate) out: String,
}

/// Finds the SAE of `hook` under `dir`.
fn find_sae(dir: &Path, hook: &str) -> Result<SaeFolder> {
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

pub fn run(args: TraceArgs) -> Result<()> {
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
    let model = load_model(&args.model, false)?;
    let cells = read_cells(&args.input, &model)?;
    let n_cells = args.cells.unwrap_or(cells.tokens.len()).min(cells.tokens.len());
    let source_layer = resid_post_layer(&args.source)?;
    let source_sae = find_sae(&args.saes, &args.source)?;
    let target_names: Vec<String> = args
        .targets
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
                args.source,
                model.encoder.dims().n_layers
            );
        }
        targets.push((HookPoint::ResidPost(layer), find_sae(&args.saes, name)?));
    }
    for (what, sae) in std::iter::once((&args.source, &source_sae))
        .chain(target_names.iter().zip(targets.iter().map(|(_, s)| s)))
    {
        if sae.sae.d_in != model.encoder.dims().d_model {
            bail!(
                "the SAE of {what} reads d_in = {} but the model's width is {}; use SAEs trained on this model",
                sae.sae.d_in,
                model.encoder.dims().d_model
            );
        }
    }
    let special_ids = crate::extract::special_token_ids(&args.input, &model)?;
    let setup = TraceSetup {
        source_layer,
        source_sae: &source_sae.sae,
        targets: targets.iter().map(|(h, s)| (*h, &s.sae)).collect(),
        special_ids,
        max_batch_tokens: args.max_batch_tokens.max(1),
    };
    let d_sae = source_sae.sae.d_sae as u32;
    let features = parse_features(&args.features, d_sae)?;
    let values = cells.values.as_deref();

    let mut acc = TraceAccumulator::default();
    let bar = crate::progress::bar(n_cells as u64, 0, "cells");
    let chunk = args.chunk_cells.max(1);
    let mut first = 0;
    while first < n_cells {
        let last = (first + chunk).min(n_cells);
        let mut part = TraceAccumulator::default();
        trace_cells(
            model.encoder.as_ref(),
            &setup,
            &features,
            &cells.tokens[first..last],
            values.map(|v| &v[first..last]),
            &mut part,
            &mut |done| bar.set_message(format!("{} ablations", acc.ablations + done)),
        )
        .with_context(|| format!("tracing cells {first}..{last}"))?;
        acc.merge(part);
        first = last;
        bar.set_position(first as u64);
    }
    bar.finish_and_clear();

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

    let tmp = args.out.with_extension("tsv.partial");
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?,
    );
    writeln!(
        w,
        "source_hook\tsource_feature\ttarget_hook\ttarget_feature\tn_cells\tmean_change\tsd_change\tcohens_d\t\
         hedges_g\tsign_consistency\tt\tp\tq"
    )?;
    let mut written = 0usize;
    let mut per_target: BTreeMap<String, usize> = BTreeMap::new();
    let (mut excitatory, mut inhibitory) = (0usize, 0usize);
    for (i, &(f, t, g)) in keys.iter().enumerate() {
        let s = &stats[i];
        if !(q[i] <= args.max_q
            && s.cohens_d.abs() >= args.min_abs_d
            && s.sign_consistency >= args.min_consistency)
        {
            continue;
        }
        let target = &target_names[t as usize];
        writeln!(
            w,
            "{}\t{f}\t{target}\t{g}\t{}\t{:e}\t{:e}\t{:e}\t{:e}\t{}\t{:e}\t{:e}\t{:e}",
            args.source, s.n, s.mean, s.sd, s.cohens_d, s.hedges_g, s.sign_consistency, s.t, s.p, q[i]
        )?;
        written += 1;
        *per_target.entry(target.clone()).or_default() += 1;
        if s.mean > 0.0 {
            excitatory += 1;
        } else {
            inhibitory += 1;
        }
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("cannot move {} into place", tmp.display()))?;

    let traced = acc.cells_active.len();
    let target_latents: u64 = targets.iter().map(|(_, s)| s.sae.d_sae as u64).sum();
    let seconds = started.elapsed().as_secs_f64();
    let summary = TraceSummary {
        source: args.source.clone(),
        targets: target_names.clone(),
        cells: n_cells,
        features_requested: features.len(),
        features_traced: traced,
        features_skipped_never_fired: features.len() - traced,
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
            "max_q": args.max_q, "min_abs_d": args.min_abs_d, "min_consistency": args.min_consistency,
            "fdr": "Benjamini-Hochberg over every test performed (edges with n >= 2 and a finite p)",
        }),
        out: args.out.display().to_string(),
    };
    let summary_path = args.out.with_extension("summary.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    tracing::info!(
        "{} ablations over {} cells in {:.1} s ({:.1}/s); {} tests, {} edges written to {}",
        summary.ablations,
        n_cells,
        seconds,
        summary.ablations_per_second,
        summary.tests_performed,
        written,
        args.out.display()
    );
    Ok(summary)
}

fn parse_features(spec: &str, d_sae: u32) -> Result<Vec<u32>> {
    let spec = spec.trim();
    if spec == "all" {
        return Ok((0..d_sae).collect());
    }
    if spec.starts_with("top:") {
        bail!("--features top:N is not available yet; give `all` or a comma list");
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
