//! `scinterp demo` on the embedded default: the two small models of `models/assets` (a Geneformer-V2-
//! shaped BERT and an scGPT-shaped model, both trained on real blood cells by `models/assets/train.py`)
//! run through the whole pipeline on the 700 pbmc68k PBMCs (10 FACS-sorted cell types), each beside its
//! random-weight control (same shape and files, every weight redrawn with a seed,
//! `scinterp_models::random_control`). Whatever the control also finds comes from the architecture,
//! the tokenizer or the cells; the difference is what training added.
//!
//! Per model and weights ("arm"): tokens → activations at blocks.0–2.hook_resid_post → a TopK SAE per
//! hook → a feature catalogue per SAE → annotation of the three catalogues together (Hallmark and the
//! HAY_BONE_MARROW cell-type gene sets, and the cells' own `bulk_labels`) → a trace from blocks.1 to
//! blocks.2 → (Geneformer) the output effect of the best cell-type feature on its own top genes; then
//! the cross-model consensus of the two trained models' annotated circuits, and of the two controls.

use super::say;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use scinterp_engine::analyze::consensus::{ConsensusConfig, GraphInput};
use scinterp_engine::analyze::AnalyzeConfig;
use scinterp_engine::annotate::AnnotateConfig;
use scinterp_engine::cuda::GpuPrecision;
use scinterp_engine::device::Backend;
use scinterp_engine::effects::EffectsConfig;
use scinterp_engine::formats::annotation::{read_cell_type_terms, read_feature_terms, FeatureTermRow};
use scinterp_engine::formats::consensus::ConsensusSummary;
use scinterp_engine::formats::trace::read_trace_edges;
use scinterp_engine::formats::{Table, TableFormat};
use scinterp_engine::sae::pipeline::TrainRequest;
use scinterp_engine::trace::{EdgeFilters, TraceConfig};
use scinterp_models::cells::OpenOptions;
use scinterp_models::extract::ExtractConfig;
use scinterp_models::registry::TokenizerKind;
use scinterp_models::tokenize::geneformer::GeneIdKind;
use scinterp_models::tokenize::pipeline::Config as TokenizeConfig;
use scinterp_models::trace::TraceFiles;
use serde::Serialize;
use serde_json::json;

use super::sae_request;
use crate::cells::{CellInput, PanelChoice};
use crate::pipeline::ExportConfig;
use crate::steering::EffectsFiles;
use crate::steps::{self, Observer};
use crate::tool::AdaptorKind;

/// Where the demo writes, its seed, and the embedded assets folder (models and cells).
pub struct EmbeddedConfig {
    pub out: PathBuf,
    pub seed: u64,
    pub assets: PathBuf,
}

/// What the demo found, for its report (the same as `summary.json`).
pub struct EmbeddedReport {
    /// Geneformer trained, Geneformer random, scGPT trained, scGPT random.
    pub arms: Vec<ArmResult>,
    pub tool: PseudotimeTool,
    /// Geneformer × scGPT, trained and random weights.
    pub consensus_trained: ConsensusSummary,
    pub consensus_random: ConsensusSummary,
    pub summary: PathBuf,
}

const HOOKS: [&str; 3] = [
    "blocks.0.hook_resid_post",
    "blocks.1.hook_resid_post",
    "blocks.2.hook_resid_post",
];
pub const TRACE_SOURCE: &str = "blocks.1.hook_resid_post";
pub const TRACE_TARGET: &str = "blocks.2.hook_resid_post";
/// SAE shape and budget: 4× the models' width, k 16, 300k rows (about 2 passes over the store; the
/// SAE report's `warnings` says that this is short of the 5-pass default, which would take minutes).
const D_SAE: usize = 512;
const K: usize = 16;
const SAE_TOKENS: u64 = 300_000;
/// The trace: the 24 source features that fire in most of the first 200 cells.
const TRACE_FEATURES: &str = "top:24";
const TRACE_CELLS: usize = 200;
const TRACE_NULL_PERMUTATIONS: usize = 20;
/// FDR level of every annotation and of the term a feature carries.
pub const ALPHA: f64 = 0.05;
const CELLS: &str = "cells/pbmc68k.h5ad.gz";
pub const LABELS: &str = "bulk_labels";
/// Steering read through a pseudotime tool: the paul15 mouse bone-marrow cells (erythroid stages
/// 7MEP → 1Ery), a tool exported from the trained Geneformer on them (root cell 840, the benchmark's), and
/// the source features firing in most pbmc68k cells, amplified (α 4) and ablated (α 0) in the first
/// 100 paul15 cells.
const PAUL15: &str = "cells/paul15.h5ad.gz";
const PAUL15_ORTHOLOGS: &str = "cells/paul15_orthologs.csv";
const PAUL15_LABELS: &str = "paul15_clusters";
const PAUL15_ROOT: &str = "840";
const ERYTHROID_STAGES: &str = "7MEP,6Ery,5Ery,4Ery,3Ery,2Ery,1Ery";
pub const STEER_FEATURES: usize = 8;
pub const STEER_CELLS: usize = 100;
const STEER_MAX_LEN: &str = "128";
const GENE_SETS: [&str; 2] = [
    "genesets/h.all.v7.0.symbols.gmt",
    "genesets/c8.hay_bone_marrow.v2023.2.Hs.symbols.gmt",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Geneformer,
    Scgpt,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Geneformer => "geneformer",
            Family::Scgpt => "scgpt",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Weights {
    Trained,
    Random,
}

impl Weights {
    fn name(self) -> &'static str {
        match self {
            Weights::Trained => "trained",
            Weights::Random => "random",
        }
    }
}

/// One model with one set of weights, and where its outputs go.
struct Arm {
    family: Family,
    weights: Weights,
    model: PathBuf,
    tokens: PathBuf,
    dir: PathBuf,
}

impl Arm {
    fn label(&self) -> String {
        format!("{}-{}", self.family.name(), self.weights.name())
    }
    fn saes(&self) -> PathBuf {
        self.dir.join("saes")
    }
    fn catalog(&self, hook: &str) -> PathBuf {
        self.dir.join("catalogs").join(hook)
    }
    fn annotation(&self) -> PathBuf {
        self.dir.join("annotation")
    }
    fn trace(&self) -> PathBuf {
        self.dir.join("trace.tsv")
    }
}

#[derive(Debug, Serialize)]
pub struct LayerResult {
    pub hook: String,
    pub sae_heldout_fvu: f64,
    pub sae_loss_recovered: Option<f64>,
    pub alive: usize,
    /// Features with a gene-set term at q ≤ 0.05 (atlas q over the three layers).
    pub gene_set_features: usize,
    /// Features whose top cells are enriched for a cell type at q ≤ 0.05.
    pub cell_type_features: usize,
    pub cell_type_fraction: f64,
}

#[derive(Debug, Serialize)]
pub struct BestFeature {
    pub hook: String,
    pub feature: i64,
    /// Cell types the feature's top cells are enriched for (q ≤ 0.05), best first, with q.
    pub cell_types: Vec<(String, f64)>,
    /// Gene-set terms (q ≤ 0.05), best first, with q.
    pub gene_sets: Vec<(String, f64)>,
    pub top_genes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TraceResult {
    pub source: String,
    pub target: String,
    pub ablations: u64,
    pub tests: u64,
    pub edges: u64,
    /// Edges whose source and target both carry a term (gene set or cell type at q ≤ 0.05).
    pub annotated_edges: usize,
    /// Of those, edges whose source and target share a term.
    pub edges_sharing_a_term: usize,
    pub empirical_fdr: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct EffectResult {
    pub feature: i64,
    pub readout: String,
    pub readout_genes: usize,
    pub alpha: f64,
    /// Mean change of the readout genes' logits minus that of the other genes' logits.
    pub target_minus_other: f64,
    pub target_minus_other_p: f64,
    /// The same statistic minus that of the norm-matched random direction.
    pub vs_control: f64,
    pub vs_control_p: f64,
}

/// The pseudotime tool the steering is read through.
#[derive(Debug, Serialize)]
pub struct PseudotimeTool {
    pub dir: String,
    pub panel_genes: usize,
    /// Held-out Spearman of the tool's pseudotime with the erythroid stage order.
    pub heldout_stage_spearman: Option<f64>,
}

/// One (feature, α) row of `steering.tsv` (`scinterp effects --pseudotime-tool`).
#[derive(Debug, Serialize)]
pub struct SteeringRow {
    pub feature: i64,
    pub alpha: f64,
    pub cells: i64,
    /// Mean pseudotime shift of the edited cells, and of the norm-matched random direction.
    pub pseudotime_shift: f64,
    pub control_shift: f64,
    /// Mean per-cell (feature − control) shift, its paired t-test p and BH q over the rows.
    pub vs_control: f64,
    pub vs_control_p: f64,
    pub vs_control_q: f64,
}

#[derive(Debug, Serialize)]
pub struct ArmResult {
    pub model: String,
    pub weights: String,
    pub model_dir: String,
    pub layers: Vec<LayerResult>,
    pub best_features: Vec<BestFeature>,
    pub trace: TraceResult,
    pub effects: Vec<EffectResult>,
    /// Geneformer arms: pseudotime steering on the paul15 cells (filled after the arms ran).
    pub steering: Vec<SteeringRow>,
    pub seconds: f64,
}

/// Runs the demo on the embedded models (see the module comment); writes everything under `config.out`.
pub fn run(config: &EmbeddedConfig, obs: &mut dyn Observer) -> Result<EmbeddedReport> {
    let started = Instant::now();
    let (out, assets, seed) = (&config.out, &config.assets, config.seed);
    for rel in [
        "geneformer/config.json",
        "scgpt/args.json",
        CELLS,
        GENE_SETS[0],
        GENE_SETS[1],
    ] {
        if !assets.join(rel).is_file() {
            bail!(
                "{} is missing: --assets must be the embedded assets folder (models/assets of a scinterp \
                 checkout), or run `scinterp demo --planted` for the synthetic fixture",
                assets.join(rel).display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // A rerun starts every step afresh; only the demo's own subfolders are removed.
    for sub in [
        "models",
        "tokens",
        "geneformer-trained",
        "geneformer-random",
        "scgpt-trained",
        "scgpt-random",
        "pseudotime-tool",
        "consensus",
        "atlas",
    ] {
        let p = out.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    say!(
        obs,
        "scinterp demo (seed {seed}): the embedded models trained on real blood cells, each beside a \
         random-weight control; writing to {}",
        out.display()
    );

    let mut arms = Vec::new();
    for family in [Family::Geneformer, Family::Scgpt] {
        let tokens = out.join("tokens").join(family.name());
        tokenize(assets, family, &tokens, obs)?;
        let trained = assets.join(family.name());
        let random = out.join("models").join(format!("{}-random", family.name()));
        let control = scinterp_models::random_control::write_random_control(&trained, &random, seed)?;
        say!(
            obs,
            "  models   {}: trained ({}) and its random-weight control ({}: {} tensors, {} parameters, \
             N(0, 0.02²) matrices, unit norms, zero biases)",
            family.name(),
            trained.display(),
            random.display(),
            control.tensors,
            control.parameters
        );
        for (weights, model) in [(Weights::Trained, trained), (Weights::Random, random)] {
            let arm = Arm {
                family,
                weights,
                model,
                tokens: tokens.clone(),
                dir: out.join(format!("{}-{}", family.name(), weights.name())),
            };
            arms.push(arm);
        }
    }

    let mut results = Vec::new();
    for arm in &arms {
        results.push(run_arm(arm, assets, seed, obs)?);
    }

    let tool = pseudotime_tool(out, assets, &arms[0], seed, obs)?;
    let paul15_tokens = out.join("tokens").join("geneformer-paul15");
    tokenize_paul15(assets, &paul15_tokens, obs)?;
    for (arm, result) in arms.iter().zip(&mut results) {
        if arm.family == Family::Geneformer {
            result.steering = pseudotime_steering(arm, &paul15_tokens, &tool, seed, obs)?;
        }
    }

    let consensus_trained = consensus(out, "trained", &arms[0], &arms[2], seed)?;
    let consensus_random = consensus(out, "random", &arms[1], &arms[3], seed)?;

    let atlas = build_atlas(out, &arms[0])?;
    say!(
        obs,
        "  atlas    {}: the trained Geneformer's {} features and {} edges, {:.1} MB; open {}",
        atlas.out.display(),
        atlas.features,
        atlas.edges,
        atlas.bytes as f64 / 1e6,
        atlas.index.display()
    );
    let summary = json!({
        "seed": seed,
        "assets": assets.display().to_string(),
        "cells": format!("{} ({LABELS})", assets.join(CELLS).display()),
        "alpha": ALPHA,
        "arms": results,
        "consensus": { "trained": consensus_trained, "random": consensus_random },
        "pseudotime_tool": tool,
        "atlas": atlas.index.display().to_string(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let path = out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    say!(
        obs,
        "  summary  {} ({:.0} s in all)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(EmbeddedReport {
        arms: results,
        tool,
        consensus_trained,
        consensus_random,
        summary: path,
    })
}

fn tokenize(assets: &Path, family: Family, tokens: &Path, obs: &mut dyn Observer) -> Result<()> {
    let model = assets.join(family.name());
    let kind = match family {
        Family::Geneformer => TokenizerKind::GeneformerV2,
        Family::Scgpt => TokenizerKind::Scgpt,
    };
    let mut config = TokenizeConfig {
        max_len: Some(256),
        obs_columns: vec!["bulk_labels".into(), "split".into()],
        ..TokenizeConfig::new(assets.join(CELLS), kind, tokens.to_path_buf())
    };
    match family {
        Family::Geneformer => {
            config.dictionaries = Some(model);
            config.gene_ids = GeneIdKind::Symbol;
        }
        Family::Scgpt => {
            config.vocab = Some(model);
            // Seed 19 is the seed of the tokens the model was trained on (models/assets/README.md).
            config.seed = 19;
        }
    }
    steps::tokenize(&config, obs)?;
    Ok(())
}

/// The paul15 cells as the embedded Geneformer reads them (mouse symbols through the ortholog table).
fn tokenize_paul15(assets: &Path, tokens: &Path, obs: &mut dyn Observer) -> Result<()> {
    let config = TokenizeConfig {
        dictionaries: Some(assets.join("geneformer")),
        gene_ids: GeneIdKind::Symbol,
        orthologs: Some(assets.join(PAUL15_ORTHOLOGS)),
        max_len: Some(STEER_MAX_LEN.parse()?),
        obs_columns: vec![PAUL15_LABELS.into()],
        ..TokenizeConfig::new(
            assets.join(PAUL15),
            TokenizerKind::GeneformerV2,
            tokens.to_path_buf(),
        )
    };
    steps::tokenize(&config, obs)?;
    Ok(())
}

/// A pseudotime + cell-type tool exported from the trained Geneformer on the paul15 cells: attention
/// operators pooled over all heads, the 200 most variable panel genes, a supervised adaptor.
fn pseudotime_tool(
    out: &Path,
    assets: &Path,
    trained: &Arm,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<PseudotimeTool> {
    let dir = out.join("pseudotime-tool");
    let labels = PAUL15_LABELS.to_string();
    let cells = CellInput {
        path: assets.join(PAUL15),
        open: OpenOptions {
            obs_columns: vec![labels.clone()],
            ..Default::default()
        },
        orthologs: Some(assets.join(PAUL15_ORTHOLOGS)),
    };
    let config = ExportConfig {
        panel: PanelChoice::Hvg(200),
        adaptor: AdaptorKind::Supervised,
        stage_order: Some(ERYTHROID_STAGES.split(',').map(String::from).collect()),
        max_len: Some(STEER_MAX_LEN.parse()?),
        max_reference_cells: 300,
        seed,
        ..ExportConfig::new(
            trained.model.clone(),
            cells,
            labels,
            PAUL15_ROOT.into(),
            dir.clone(),
        )
    };
    let report = steps::export_tool(&config, obs)?;
    let tool = PseudotimeTool {
        dir: dir.display().to_string(),
        panel_genes: report.card.panel.len(),
        heldout_stage_spearman: report.card.metrics["pseudotime"]["stage_order"]["spearman"].as_f64(),
    };
    say!(
        obs,
        "  tool     {}: pseudotime + cell-type tool of the trained Geneformer on paul15 ({} panel genes; \
         held-out Spearman with the erythroid stages {})",
        tool.dir,
        tool.panel_genes,
        tool.heldout_stage_spearman
            .map_or("-".into(), |r| format!("{r:.3}"))
    );
    Ok(tool)
}

/// Ablates (α 0) and amplifies (α 4) the source features that fire in most pbmc68k cells, in the first
/// paul15 cells, and reads the pseudotime tool on the edited cells beside a norm-matched random direction.
fn pseudotime_steering(
    arm: &Arm,
    tokens: &Path,
    tool: &PseudotimeTool,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<Vec<SteeringRow>> {
    let t = Table::read(&arm.catalog(TRACE_SOURCE).join("features.tsv"))?;
    let (feature, cells_fired) = (t.i64s("feature")?, t.i64s("cells_fired")?);
    let mut order: Vec<usize> = (0..t.rows()).collect();
    order.sort_by_key(|&r| (std::cmp::Reverse(cells_fired[r]), feature[r]));
    let features = order
        .iter()
        .take(STEER_FEATURES)
        .map(|&r| feature[r].to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = arm.dir.join("steering.tsv");
    let files = EffectsFiles {
        model: &arm.model,
        input: tokens,
        saes: &arm.saes(),
        pseudotime_tool: Some(Path::new(&tool.dir)),
    };
    let config = EffectsConfig {
        cells: Some(STEER_CELLS),
        alphas: vec![0.0, 4.0],
        control_seed: Some(seed),
        overwrite: true,
        ..EffectsConfig::new(TRACE_SOURCE, &features, &out)
    };
    steps::effects(&files, config, Backend::Cpu, GpuPrecision::Bf16, obs)?;
    let t = Table::read(&out)?;
    let (f, alpha, cells) = (t.i64s("feature")?, t.f64s("alpha")?, t.i64s("n_cells")?);
    let (shift, control) = (t.f64s("pseudotime_shift")?, t.f64s("control_pseudotime_shift")?);
    let (vs, p, q) = (
        t.f64s("pseudotime_vs_control")?,
        t.f64s("pseudotime_vs_control_p")?,
        t.f64s("pseudotime_vs_control_q")?,
    );
    Ok((0..t.rows())
        .map(|r| SteeringRow {
            feature: f[r],
            alpha: alpha[r],
            cells: cells[r],
            pseudotime_shift: shift[r],
            control_shift: control[r],
            vs_control: vs[r],
            vs_control_p: p[r],
            vs_control_q: q[r],
        })
        .collect())
}

fn run_arm(arm: &Arm, assets: &Path, seed: u64, obs: &mut dyn Observer) -> Result<ArmResult> {
    let started = Instant::now();
    let label = arm.label();
    let acts = arm.dir.join("acts");
    let extracted = steps::extract(
        &ExtractConfig::new(&arm.model, &arm.tokens, &HOOKS.join(","), &acts),
        obs,
    )?
    .context("the activation store was not written")?;

    let genes = match arm.family {
        Family::Geneformer => assets.join("geneformer"),
        Family::Scgpt => assets.join("scgpt/vocab.json"),
    }
    .display()
    .to_string();
    let mut layers = Vec::new();
    for hook in HOOKS {
        // The default dead-latent window (a tenth of the run), unlike the planted fixture's 50k tokens.
        let sae = steps::train_sae(
            &TrainRequest {
                dead_after_tokens: None,
                ..sae_request(
                    &acts,
                    hook,
                    D_SAE,
                    K,
                    &arm.saes().join(hook),
                    SAE_TOKENS,
                    16,
                    seed,
                )
            },
            obs,
        )?;
        let config = AnalyzeConfig {
            format: TableFormat::Tsv,
            seed,
            overwrite: true,
            ..AnalyzeConfig::new(acts.clone(), arm.saes().join(hook), arm.catalog(hook))
        };
        let catalog = steps::analyze(&config, Some(Path::new(&genes)), obs)?;
        layers.push(LayerResult {
            hook: hook.into(),
            sae_heldout_fvu: sae.heldout.fvu,
            sae_loss_recovered: sae.spliced.as_ref().map(|s| s.loss_recovered),
            alive: catalog.alive,
            gene_set_features: 0,
            cell_type_features: 0,
            cell_type_fraction: 0.0,
        });
    }

    let catalogs = HOOKS
        .iter()
        .map(|h| arm.catalog(h).display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let gene_sets = GENE_SETS
        .iter()
        .map(|g| assets.join(g).display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let config = AnnotateConfig {
        gene_sets: gene_sets.split(',').map(PathBuf::from).collect(),
        obs_column: Some(LABELS.into()),
        format: TableFormat::Tsv,
        alpha: ALPHA,
        seed,
        overwrite: true,
        ..AnnotateConfig::new(catalogs.split(',').map(PathBuf::from).collect(), arm.annotation())
    };
    serde_json::to_value(steps::annotate(&config, obs)?)?;
    let terms = FeatureTerms::read(&arm.annotation())?;
    for layer in &mut layers {
        layer.gene_set_features = terms.features(&layer.hook, false).len();
        layer.cell_type_features = terms.features(&layer.hook, true).len();
        layer.cell_type_fraction = layer.cell_type_features as f64 / layer.alive.max(1) as f64;
    }

    let files = TraceFiles {
        model: &arm.model,
        input: &arm.tokens,
        saes: &arm.saes(),
    };
    let config = TraceConfig {
        features: TRACE_FEATURES.into(),
        cells: Some(TRACE_CELLS),
        filters: EdgeFilters {
            min_abs_d: 0.5,
            max_q: ALPHA,
            ..EdgeFilters::default()
        },
        null_permutations: TRACE_NULL_PERMUTATIONS,
        seed,
        overwrite: true,
        ..TraceConfig::new(TRACE_SOURCE, TRACE_TARGET, &arm.trace())
    };
    let trace_summary = steps::trace(&files, &config, Backend::Cpu, GpuPrecision::Bf16, obs)?;
    let edges = read_trace_edges(&arm.trace())?;
    let (mut annotated_edges, mut sharing) = (0, 0);
    for e in &edges {
        let a = terms.of(&e.source_hook, e.source_feature);
        let b = terms.of(&e.target_hook, e.target_feature);
        if !a.is_empty() && !b.is_empty() {
            annotated_edges += 1;
            if a.keys().any(|t| b.contains_key(t)) {
                sharing += 1;
            }
        }
    }
    let trace = TraceResult {
        source: TRACE_SOURCE.into(),
        target: TRACE_TARGET.into(),
        ablations: trace_summary.ablations,
        tests: trace_summary.tests_performed as u64,
        edges: trace_summary.edges_written as u64,
        annotated_edges,
        edges_sharing_a_term: sharing,
        empirical_fdr: trace_summary.null.as_ref().map(|n| n.empirical_fdr),
    };

    let best_features = best_features(arm, &terms)?;
    let effects = if arm.family == Family::Geneformer {
        effects_of_best_feature(arm, &terms, seed, obs)?
    } else {
        Vec::new()
    };
    say!(
        obs,
        "  {label:<18} {} rows × 3 hooks; SAEs {D_SAE}×k{K}; cell-type features {}; gene-set features {}; \
         trace {} → {}: {} edges, {} between annotated features, {} sharing a term ({:.0} s)",
        extracted.n_rows,
        layers
            .iter()
            .map(|l| format!("{}/{}", l.cell_type_features, l.alive))
            .collect::<Vec<_>>()
            .join(", "),
        layers
            .iter()
            .map(|l| l.gene_set_features.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        short(TRACE_SOURCE),
        short(TRACE_TARGET),
        trace.edges,
        trace.annotated_edges,
        trace.edges_sharing_a_term,
        started.elapsed().as_secs_f64()
    );
    Ok(ArmResult {
        model: arm.family.name().into(),
        weights: arm.weights.name().into(),
        model_dir: arm.model.display().to_string(),
        layers,
        best_features,
        trace,
        effects,
        steering: Vec::new(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `blocks.1.hook_resid_post` → `blocks.1`.
pub fn short(hook: &str) -> &str {
    hook.strip_suffix(".hook_resid_post").unwrap_or(hook)
}

/// The terms each feature carries at q ≤ [`ALPHA`]: gene sets (atlas q) and cell types.
struct FeatureTerms {
    /// (hook, feature) → (is a cell type, term) → q. The kind is part of the key, so a gene set and a
    /// label of the same name stay two terms.
    by_feature: HashMap<(String, i64), BTreeMap<(bool, String), f64>>,
    empty: BTreeMap<(bool, String), f64>,
}

impl FeatureTerms {
    fn read(annotation: &Path) -> Result<Self> {
        let mut by_feature: HashMap<(String, i64), BTreeMap<(bool, String), f64>> = HashMap::new();
        let mut add = |rows: Vec<FeatureTermRow>, cell_type: bool| {
            for r in rows.into_iter().filter(|r| r.q_value_atlas <= ALPHA) {
                by_feature
                    .entry((r.catalog, r.feature))
                    .or_default()
                    .insert((cell_type, r.term), r.q_value_atlas);
            }
        };
        add(read_feature_terms(&annotation.join("enrichment.tsv"))?, false);
        add(read_cell_type_terms(&annotation.join("cell_types.tsv"))?, true);
        Ok(FeatureTerms {
            by_feature,
            empty: BTreeMap::new(),
        })
    }

    fn of(&self, hook: &str, feature: i64) -> &BTreeMap<(bool, String), f64> {
        self.by_feature
            .get(&(hook.to_string(), feature))
            .unwrap_or(&self.empty)
    }

    /// Features of `hook` carrying a cell type (`cell_type`) or a gene set.
    fn features(&self, hook: &str, cell_type: bool) -> BTreeSet<i64> {
        self.by_feature
            .iter()
            .filter(|((h, _), terms)| h == hook && terms.keys().any(|(c, _)| *c == cell_type))
            .map(|((_, f), _)| *f)
            .collect()
    }

    /// Terms of one kind of a feature, best (lowest q) first.
    fn ranked(&self, hook: &str, feature: i64, cell_type: bool) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .of(hook, feature)
            .iter()
            .filter(|((c, _), _)| *c == cell_type)
            .map(|((_, t), &q)| (t.clone(), q))
            .collect();
        v.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// The feature of `hook` with the lowest q of one kind (ties to the lower index).
    fn best(&self, hook: &str, cell_type: bool) -> Option<i64> {
        self.features(hook, cell_type)
            .into_iter()
            .map(|f| (self.ranked(hook, f, cell_type)[0].1, f))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, f)| f)
    }
}

/// The catalogue's top genes of a feature (by conditional mean): (token, symbol).
fn top_genes(catalog: &Path, feature: i64, n: usize) -> Result<Vec<(i64, String)>> {
    let t = Table::read(&catalog.join("top_genes.tsv"))?;
    let (f, ranking, rank) = (t.i64s("feature")?, t.strs("ranking")?, t.i64s("rank")?);
    let (token, symbol) = (t.i64s("token")?, t.strs("symbol")?);
    let mut rows: Vec<(i64, i64, String)> = (0..t.rows())
        .filter(|&r| f[r] == feature && ranking[r] == "conditional_mean")
        .map(|r| (rank[r], token[r], symbol[r].clone()))
        .collect();
    rows.sort();
    Ok(rows.into_iter().take(n).map(|(_, t, s)| (t, s)).collect())
}

/// Per hook, the feature with the best (lowest q) cell-type term, then the best gene-set term.
fn best_features(arm: &Arm, terms: &FeatureTerms) -> Result<Vec<BestFeature>> {
    let mut best = Vec::new();
    for hook in HOOKS {
        for cell_type in [true, false] {
            let pick = terms.best(hook, cell_type);
            if let Some(feature) = pick {
                if best
                    .iter()
                    .any(|b: &BestFeature| b.hook == hook && b.feature == feature)
                {
                    continue;
                }
                best.push(BestFeature {
                    hook: hook.into(),
                    feature,
                    cell_types: terms.ranked(hook, feature, true).into_iter().take(3).collect(),
                    gene_sets: terms.ranked(hook, feature, false).into_iter().take(3).collect(),
                    top_genes: top_genes(&arm.catalog(hook), feature, 8)?
                        .into_iter()
                        .map(|(_, s)| s)
                        .collect(),
                });
            }
        }
    }
    Ok(best)
}

/// Ablates (α 0) and amplifies (α 4) the best cell-type feature of the trace source and reads the MLM
/// logits of its own top 20 genes against the other genes', beside a norm-matched random direction.
fn effects_of_best_feature(
    arm: &Arm,
    terms: &FeatureTerms,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<Vec<EffectResult>> {
    let Some(feature) = terms.best(TRACE_SOURCE, true) else {
        return Ok(Vec::new());
    };
    let genes = top_genes(&arm.catalog(TRACE_SOURCE), feature, 20)?;
    let out = arm.dir.join("effects.tsv");
    let files = EffectsFiles {
        model: &arm.model,
        input: &arm.tokens,
        saes: &arm.saes(),
        pseudotime_tool: None,
    };
    let config = EffectsConfig {
        cells: Some(TRACE_CELLS),
        alphas: vec![0.0, 4.0],
        readout_tokens: genes.iter().map(|&(t, _)| t as u32).collect(),
        control_seed: Some(seed),
        overwrite: true,
        ..EffectsConfig::new(TRACE_SOURCE, &feature.to_string(), &out)
    };
    steps::effects(&files, config, Backend::Cpu, GpuPrecision::Bf16, obs)?;
    let t = Table::read(&out)?;
    let (alpha, diff, p) = (
        t.f64s("alpha")?,
        t.f64s("target_minus_other")?,
        t.f64s("target_minus_other_p")?,
    );
    let (vs, vs_p) = (t.f64s("vs_control")?, t.f64s("vs_control_p")?);
    Ok((0..t.rows())
        .map(|r| EffectResult {
            feature,
            readout: format!("the feature's top {} genes (conditional mean)", genes.len()),
            readout_genes: genes.len(),
            alpha: alpha[r],
            target_minus_other: diff[r],
            target_minus_other_p: p[r],
            vs_control: vs[r],
            vs_control_p: vs_p[r],
        })
        .collect())
}

/// `scinterp consensus` of the Geneformer and scGPT arms with the same weights: term pairs (gene sets
/// and cell types) along traced edges found in both models, against the label-permutation null.
fn consensus(out: &Path, weights: &str, a: &Arm, b: &Arm, seed: u64) -> Result<ConsensusSummary> {
    let dir = out.join("consensus").join(weights);
    let s = steps::consensus(&ConsensusConfig {
        alpha: ALPHA,
        permutations: 1000,
        seed,
        ..ConsensusConfig::new(
            GraphInput::new("a", &a.trace(), &a.annotation()),
            GraphInput::new("b", &b.trace(), &b.annotation()),
            &dir,
        )
    })?;
    Ok(s)
}

/// The static atlas (`scinterp atlas`) of one arm: its catalogues, annotation, trace, effects and the
/// consensus of its weights.
fn build_atlas(out: &Path, arm: &Arm) -> Result<crate::atlas::AtlasReport> {
    let effects = arm.dir.join("effects.tsv");
    let consensus = out
        .join("consensus")
        .join(arm.weights.name())
        .join("conserved_pairs.tsv");
    let config = crate::atlas::AtlasConfig {
        catalogs: HOOKS.iter().map(|h| arm.catalog(h)).collect(),
        annotations: vec![arm.annotation()],
        edges: vec![arm.trace()],
        effects: effects.is_file().then_some(effects).into_iter().collect(),
        layers: Vec::new(),
        consensus: consensus.is_file().then_some(consensus).into_iter().collect(),
        tools: Vec::new(),
        out: out.join("atlas"),
        title: Some(format!("scinterp demo: {} on pbmc68k", arm.label())),
        overwrite: true,
        shard_features: 64,
    };
    Ok(crate::atlas::build(&config)?)
}
