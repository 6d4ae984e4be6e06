//! `scinterp effects`: feature → output. Ablate (α = 0) or steer (α > 1, a dose list) SAE features in
//! the residual stream, replay the rest of the model and its MLM head, and read the change in the logit
//! of each position's own token (readout gene set vs the other genes) and, optionally, along a given
//! direction of the final state; every edit is repeated with a norm-matched random direction.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use scinterp_engine::effects::{output_effects, EffectObservation, EffectsSetup};
use scinterp_engine::npy::{read_npy_bytes, NpyDtype};
use scinterp_engine::stats::{bh_qvalues, one_sample_t_test, RunningStats};
use serde_json::json;

use crate::forward::{load_model, read_cells};
use crate::table::{Column, Table};

#[derive(Args, Debug)]
pub struct EffectsArgs {
    /// Model folder (its MLM head is read).
    #[arg(long)]
    model: PathBuf,
    /// Token store of the cells.
    #[arg(long)]
    input: PathBuf,
    /// SAE folders: `<saes>/<hook>/cfg.json`, or any subfolder whose cfg.json names the hook.
    #[arg(long)]
    saes: PathBuf,
    /// Source hook (`blocks.L.hook_resid_post`).
    #[arg(long)]
    source: String,
    /// `all` or a comma list of source features.
    #[arg(long)]
    features: String,
    /// First N cells of the store (default all).
    #[arg(long)]
    cells: Option<usize>,
    /// Scales of a_f (comma list): 0 ablates, values above 1 amplify (steering doses).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0",
        allow_negative_numbers = true
    )]
    alphas: Vec<f32>,
    /// Readout gene set: token ids, as a comma list or a file with one id per line.
    #[arg(long)]
    readout_tokens: String,
    /// Optional readout direction on the final state: a .npy of d_model f32 values.
    #[arg(long)]
    direction: Option<PathBuf>,
    /// Seed of the norm-matched random control directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip the random-direction control (halves the work).
    #[arg(long)]
    no_control: bool,
    /// Tokens per tail pass (the logits are tokens × vocabulary floats).
    #[arg(long, default_value_t = 4096)]
    max_batch_tokens: usize,
    /// Output table (.parquet or .tsv), one row per (feature, α).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(args: EffectsArgs) -> Result<()> {
    let json = args.json;
    let summary = effects(args)?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

fn read_tokens(spec: &str) -> Result<HashSet<u32>> {
    let path = std::path::Path::new(spec);
    let text = if path.is_file() {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    } else {
        spec.replace(',', "\n")
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<u32>().with_context(|| {
                format!("--readout-tokens: `{l}` is not a token id (give ids, one per line)")
            })
        })
        .collect()
}

/// Mean, n and one-sample t-test p of the finite values.
fn summarise(values: impl Iterator<Item = f64>) -> (f64, u64, f64) {
    let mut s = RunningStats::new();
    s.extend(values.filter(|v| v.is_finite()));
    let test = one_sample_t_test(s.count(), s.mean(), s.sd(), 0.0);
    (s.mean(), s.count(), test.p_two_sided)
}

pub fn effects(args: EffectsArgs) -> Result<serde_json::Value> {
    let started = std::time::Instant::now();
    let model = load_model(&args.model, true)?;
    let cells = read_cells(&args.input, &model)?;
    if cells.values.is_some() {
        bail!(
            "{}: output effects read MLM logits, which scGPT does not have; use a Geneformer model",
            args.input.display()
        );
    }
    let n_cells = args.cells.unwrap_or(cells.tokens.len()).min(cells.tokens.len());
    let source_layer = match scinterp_engine::HookPoint::parse(&args.source)? {
        scinterp_engine::HookPoint::ResidPost(l) if l + 1 < model.encoder.dims().n_layers => l,
        _ => bail!(
            "--source {}: use a blocks.L.hook_resid_post hook before the model's last block",
            args.source
        ),
    };
    let sae = crate::trace::find_sae(&args.saes, &args.source)?;
    let d = model.encoder.dims().d_model;
    if sae.sae.d_in != d {
        bail!(
            "the SAE of {} reads d_in = {} but the model's width is {d}",
            args.source,
            sae.sae.d_in
        );
    }
    let features = crate::trace::parse_features(&args.features, sae.sae.d_sae as u32)?;
    let direction = match &args.direction {
        Some(p) => {
            let (header, bytes) = read_npy_bytes(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            if header.dtype != NpyDtype::F32 || header.shape.iter().product::<usize>() != d {
                bail!(
                    "{}: expected {d} float32 values (the model's width), found {:?} {:?}",
                    p.display(),
                    header.dtype,
                    header.shape
                );
            }
            Some(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes))
        }
        None => None,
    };
    let setup = EffectsSetup {
        source_layer,
        source_sae: &sae.sae,
        alphas: args.alphas.clone(),
        readout_tokens: read_tokens(&args.readout_tokens)?,
        direction,
        control_seed: (!args.no_control).then_some(args.seed),
        special_ids: crate::extract::special_token_ids(&args.input, &model)?,
        max_batch_tokens: args.max_batch_tokens.max(1),
    };
    // Chunks of cells bound the clean states kept.
    let bar = crate::progress::bar(n_cells as u64, 0, "cells");
    let mut obs: Vec<EffectObservation> = Vec::new();
    for start in (0..n_cells).step_by(64) {
        let end = (start + 64).min(n_cells);
        let chunk = output_effects(
            model.encoder.as_ref(),
            &setup,
            &features,
            &cells.tokens[start..end],
        )?;
        obs.extend(chunk.into_iter().map(|mut o| {
            o.cell += start;
            o
        }));
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();

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
    Table::new()
        .column("source_hook", Column::Str(vec![args.source.clone(); rows.len()]))
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
        .column("control_direction_change", col(&|r| r.control_direction))
        .write(&args.out)?;
    let seconds = started.elapsed().as_secs_f64();
    let edits = obs.len();
    let summary = json!({
        "source": args.source,
        "features": features.len(),
        "features_fired": groups.keys().map(|k| k.0).collect::<HashSet<_>>().len(),
        "alphas": args.alphas,
        "cells": n_cells,
        "edits": edits,
        "edits_per_second": edits as f64 / seconds.max(1e-9),
        "rows": rows.len(),
        "readout": "change of the MLM logit of each gene position's own token, mean over the readout-set positions \
                    (target) and over the others, per cell; tests are one-sample t-tests across cells, BH over \
                    the (feature, alpha) rows",
        "control": if args.no_control { json!(null) } else { json!({"seed": args.seed, "kind": "random direction with the norm of the feature's decoder row, same positions and scales"}) },
        "seconds": seconds,
        "out": args.out.display().to_string(),
    });
    std::fs::write(
        args.out.with_extension("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )
    .with_context(|| format!("cannot write the summary next to {}", args.out.display()))?;
    Ok(summary)
}
