//! Each step of the pipeline as one call that reports its progress to an [`Observer`] and logs its
//! headline (through `tracing`): what the CLI's subcommands and [`crate::demo`] both run, so that a
//! step behaves and reports the same whichever calls it.
//!
//! tokenize → extract → SAE training → analyze → annotate → trace → effects; layers and consensus
//! compare what those wrote; [`export_tool`] builds a tool.

use std::path::Path;
use std::sync::Mutex;

use scinterp_engine::analyze::consensus::{ConsensusConfig, ConsensusError};
use scinterp_engine::analyze::{
    AnalyzeConfig, AnalyzeError, AnalyzeProgress, GeneNaming, LayersConfig, LayersError,
};
use scinterp_engine::annotate::{AnnotateConfig, AnnotateProgress};
use scinterp_engine::cuda::GpuPrecision;
use scinterp_engine::device::Backend;
use scinterp_engine::effects::EffectsConfig;
use scinterp_engine::formats::annotation::AnnotationSummary;
use scinterp_engine::formats::catalog::CatalogSummary;
use scinterp_engine::formats::consensus::ConsensusSummary;
use scinterp_engine::formats::effects::EffectsSummary;
use scinterp_engine::formats::layers::LayersSummary;
use scinterp_engine::formats::trace::TraceSummary;
use scinterp_engine::sae::pipeline::{train_on_store, SpliceModel, TrainEvent, TrainReport, TrainRequest};
use scinterp_engine::store::ActStore;
use scinterp_engine::trace::{TraceConfig, TraceOutcome, TraceProgress};
use scinterp_models::extract::{ExtractConfig, ExtractEvent, ExtractOutcome, ExtractSummary};
use scinterp_models::gene_names::GeneNames;
use scinterp_models::sae_splice::StoreModel;
use scinterp_models::tokenize::pipeline::{self as tokenize_pipeline, Config as TokenizeConfig};
use scinterp_models::trace::TraceFiles;

use crate::pipeline::{ExportConfig, ExportReport};
use crate::steering::EffectsFiles;

/// What a caller shows of a running step: one counted part at a time (a bar on a terminal, periodic lines
/// in a log), and the lines of a report. Every method has a default that shows nothing.
pub trait Observer: Send {
    /// A counted part starts: `total` units (`cells`, `steps`, `rows`, `edits`, …), `done` of them
    /// already (a resumed run). `label` names the part where the unit alone would be ambiguous.
    fn start(&mut self, _label: &str, _unit: &str, _total: u64, _done: u64) {}
    /// Units of the current part done so far.
    fn position(&mut self, _done: u64) {}
    /// A short status beside the counts (the SAE's running loss).
    fn status(&mut self, _text: &str) {}
    /// The current part ended; `completed` is false when it stopped early.
    fn end(&mut self, _completed: bool) {}
    /// Something without a count is under way (reading a large input).
    fn waiting(&mut self, _what: &str) {}
    /// One line of a report (the demo's step lines).
    fn say(&mut self, _line: &str) {}
}

/// Shows nothing.
pub struct Silent;

impl Observer for Silent {}

/// Why a step failed: the step's own error, which names the file or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Tokenize(#[from] tokenize_pipeline::PipelineError),
    #[error(transparent)]
    Extract(#[from] scinterp_models::extract::ExtractStoreError),
    #[error(transparent)]
    Store(#[from] scinterp_engine::store::StoreError),
    #[error(transparent)]
    StoreModel(#[from] scinterp_models::sae_splice::StoreModelError),
    #[error(transparent)]
    Sae(#[from] scinterp_engine::sae::SaeError),
    #[error(transparent)]
    GeneNames(#[from] scinterp_models::gene_names::GeneNamesError),
    #[error(transparent)]
    Analyze(#[from] AnalyzeError),
    #[error(transparent)]
    Annotate(#[from] scinterp_engine::annotate::AnnotateError),
    #[error(transparent)]
    Trace(#[from] scinterp_models::trace::TraceRunError),
    #[error(transparent)]
    Layers(#[from] LayersError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error(transparent)]
    Export(#[from] crate::ExportError),
}

/// An observer several threads report to (the library calls whose progress callback is shared).
struct Shared<'a>(Mutex<&'a mut dyn Observer>);

impl<'a> Shared<'a> {
    fn new(observer: &'a mut dyn Observer) -> Self {
        Shared(Mutex::new(observer))
    }
    fn with(&self, f: impl FnOnce(&mut dyn Observer)) {
        // A poisoned lock means a reporting thread panicked; progress is then no longer shown.
        if let Ok(mut o) = self.0.lock() {
            f(&mut **o);
        }
    }
}

/// Tokenizes the cells into a token store (resuming a killed run).
pub fn tokenize(
    config: &TokenizeConfig,
    observer: &mut dyn Observer,
) -> Result<tokenize_pipeline::Report, StepError> {
    let progress = Counted::new(observer);
    Ok(tokenize_pipeline::run(config, &progress)?)
}

/// Tokenize's progress reports increments: this keeps the running count for the observer.
struct Counted<'a> {
    inner: Shared<'a>,
    done: Mutex<u64>,
}

impl<'a> Counted<'a> {
    fn new(observer: &'a mut dyn Observer) -> Self {
        Counted {
            inner: Shared::new(observer),
            done: Mutex::new(0),
        }
    }
}

impl tokenize_pipeline::Progress for Counted<'_> {
    fn reading(&self, input: &Path) {
        self.inner
            .with(|o| o.waiting(&format!("reading {}", input.display())));
    }
    fn read(&self) {
        self.inner.with(|o| o.end(true));
    }
    fn cells_start(&self, n_cells: u64, done: u64) {
        if let Ok(mut d) = self.done.lock() {
            *d = done;
        }
        self.inner.with(|o| o.start("tokenizing", "cells", n_cells, done));
    }
    fn cells(&self, n: u64) {
        if let Ok(mut d) = self.done.lock() {
            *d += n;
            let at = *d;
            self.inner.with(|o| o.position(at));
        }
    }
    fn cells_end(&self, completed: bool) {
        self.inner.with(|o| o.end(completed));
    }
}

/// Extracts activations into the store (or finishes it); `None` when it was already complete.
pub fn extract(
    config: &ExtractConfig,
    observer: &mut dyn Observer,
) -> Result<Option<ExtractSummary>, StepError> {
    let outcome = scinterp_models::extract::run(config, &mut |event| match event {
        ExtractEvent::Started { cells, resumed_from } => {
            if resumed_from > 0 {
                tracing::info!(
                    "resuming {} at cell {resumed_from} of {cells}",
                    config.out.display()
                );
            }
            observer.start("", "cells", cells as u64, resumed_from as u64);
        }
        ExtractEvent::Progress(p) => observer.position(p.cells_done as u64),
    });
    observer.end(outcome.is_ok());
    match outcome? {
        ExtractOutcome::AlreadyComplete { n_cells, n_rows } => {
            tracing::info!(
                "{} is already complete ({n_cells} cells, {n_rows} rows); nothing to do",
                config.out.display()
            );
            Ok(None)
        }
        ExtractOutcome::Extracted(summary) => {
            tracing::info!(
                "{} cells ({} tokens) in {:.2} s ({:.1} cells/s); {} rows × {} hooks in {}",
                summary.cells_run,
                summary.tokens_run,
                summary.seconds,
                summary.cells_per_second,
                summary.n_rows,
                summary.hooks.len(),
                config.out.display()
            );
            Ok(Some(summary))
        }
    }
}

/// The model behind an activation store, for the spliced loss of `splice_cells` cells (none: logged
/// and skipped; so is a store written by another tool).
pub fn splice_model(acts: &Path, splice_cells: usize) -> Result<Option<StoreModel>, StepError> {
    if splice_cells == 0 || !acts.join("manifest.json").exists() {
        return Ok(None);
    }
    let store = ActStore::open(acts)?;
    match StoreModel::open(&store)? {
        Ok(model) => Ok(Some(model)),
        Err(why) => {
            tracing::info!("{why}");
            Ok(None)
        }
    }
}

/// Trains, evaluates and writes the SAE folder, and logs the results.
pub fn train_sae(req: &TrainRequest, observer: &mut dyn Observer) -> Result<TrainReport, StepError> {
    let splicer = splice_model(&req.acts, req.splice_cells)?;
    let mut started = false;
    let report = train_on_store(
        req,
        splicer.as_ref().map(|s| s as &dyn SpliceModel),
        &mut |event| match event {
            TrainEvent::Warning(w) => tracing::warn!("{w}"),
            TrainEvent::Info(i) => tracing::info!("{i}"),
            TrainEvent::Step { step, steps, nmse } => {
                if !started {
                    observer.start("", "steps", steps as u64, step as u64 - 1);
                    started = true;
                }
                observer.position(step as u64);
                if step % 10 == 0 {
                    observer.status(&format!("nmse {nmse:.4}"));
                }
            }
        },
    );
    if started {
        observer.end(report.is_ok());
    }
    let report = report?;
    tracing::info!(
        "{} tokens in {:.1} s ({:.0} tokens/s); held-out FVU {:.4}, L0 {:.1}, dead on held-out rows {} ({:.2} %); wrote {}",
        report.summary.tokens_trained,
        report.summary.train_seconds,
        report.summary.tokens_per_second,
        report.heldout.fvu,
        report.heldout.l0,
        report.heldout.dead_latents,
        100.0 * report.heldout.dead_fraction,
        req.out.display()
    );
    if let Some(s) = &report.spliced {
        tracing::info!(
            "model loss at {} positions: clean {:.4}, SAE spliced {:.4}, zero-ablated {:.4}, mean-ablated {:.4} \
             (loss recovered {:.3} vs zero, {:.3} vs mean)",
            s.rows_spliced,
            s.clean,
            s.spliced,
            s.zero_ablated,
            s.mean_ablated,
            s.loss_recovered,
            s.loss_recovered_vs_mean
        );
    }
    Ok(report)
}

/// Writes the feature catalog of one SAE, with gene names from `genes` (a dictionary folder, a
/// vocab.json or a token → gene TSV; without one genes are named `token_<id>`).
pub fn analyze(
    config: &AnalyzeConfig,
    genes: Option<&Path>,
    observer: &mut dyn Observer,
) -> Result<CatalogSummary, StepError> {
    let names: Box<dyn GeneNaming> = match genes {
        Some(path) => Box::new(GeneNames::load(path)?),
        None => {
            tracing::warn!(
                "no --genes: genes are named token_<id>; pass the model's dictionary folder or vocab.json to \
                 annotate them"
            );
            Box::new(GeneNames::default())
        }
    };
    let mut started = false;
    let summary = scinterp_engine::analyze::run(config, names.as_ref(), &mut |p| match p {
        AnalyzeProgress::Start {
            hook,
            d_sae,
            rows,
            cells,
        } => {
            tracing::info!("analysing {d_sae} latents of {hook} over {rows} rows of {cells} cells");
            observer.start("", "rows", rows as u64, 0);
            started = true;
        }
        AnalyzeProgress::Rows(n) => observer.position(n as u64),
    });
    if started {
        observer.end(summary.is_ok());
    }
    let summary = summary?;
    tracing::info!(
        "catalog of {} in {}: {} alive of {} latents, {} SVD-aligned at 0.5; {:.1} s",
        summary.hook,
        config.out.display(),
        summary.alive,
        summary.d_sae,
        summary.svd.aligned_max_abs_cos_gt_0_5,
        summary.seconds
    );
    Ok(summary)
}

/// Annotates catalogs against gene sets (and cell labels, TRRUST); returns `annotate.json`'s content.
pub fn annotate(
    config: &AnnotateConfig,
    observer: &mut dyn Observer,
) -> Result<AnnotationSummary, StepError> {
    let shared = Shared::new(observer);
    let done = Mutex::new(0u64);
    let summary = scinterp_engine::annotate::run(config, &|p| {
        match p {
        AnnotateProgress::Warning(w) => tracing::warn!("{w}"),
        AnnotateProgress::Read {
            catalogs,
            alive_features,
            libraries,
            seconds,
        } => tracing::info!(
            "read {catalogs} catalogs ({alive_features} alive features) and {libraries} libraries in {seconds:.1} s"
        ),
        AnnotateProgress::TestsStart { total } => shared.with(|o| o.start("", "features", total, 0)),
        AnnotateProgress::Tested(k) => {
            if let Ok(mut d) = done.lock() {
                *d += k;
                let at = *d;
                shared.with(|o| o.position(at));
            }
        }
        AnnotateProgress::TestsDone => shared.with(|o| o.end(true)),
        AnnotateProgress::Done {
            tests,
            significant,
            rows,
            seconds,
        } => tracing::info!(
            "{tests} tests, {significant} significant at q ≤ {} (atlas); {rows} rows → {} in {seconds:.1} s",
            config.alpha,
            config.out.display()
        ),
    }
    });
    Ok(summary?)
}

/// Traces the edges of `config` (or one shard of them) and logs the headline.
pub fn trace(
    files: &TraceFiles,
    config: &TraceConfig,
    backend: Backend,
    precision: GpuPrecision,
    observer: &mut dyn Observer,
) -> Result<TraceSummary, StepError> {
    let mut started = false;
    let outcome = scinterp_models::trace::run(files, config, backend, precision, &mut |p| match p {
        TraceProgress::Resumed {
            checkpoint,
            cells_done,
        } => tracing::info!("resuming from {} at cell {cells_done}", checkpoint.display()),
        TraceProgress::Start { total, done } => {
            observer.start("", "cells", total as u64, done as u64);
            started = true;
        }
        TraceProgress::Ablations(n) => observer.status(&format!("{n} ablations")),
        TraceProgress::Cells(n) => observer.position(n as u64),
    });
    if started {
        observer.end(outcome.is_ok());
    }
    Ok(match outcome? {
        TraceOutcome::Shard(s) => {
            tracing::info!(
                "shard: {} ablations in {:.1} s; accumulator written to {} (combine shards with `scinterp trace merge`)",
                s.ablations,
                s.seconds,
                s.out
            );
            s
        }
        TraceOutcome::Table(s) => {
            log_trace_table(&s);
            s
        }
    })
}

/// The headline of a written edge table (`trace run` and `trace merge`).
pub fn log_trace_table(s: &TraceSummary) {
    tracing::info!(
        "{} ablations over {} cells in {:.1} s ({:.1}/s); {} tests, {} edges written to {}",
        s.ablations,
        s.cells,
        s.seconds,
        s.ablations_per_second,
        s.tests_performed,
        s.edges_written,
        s.out
    );
}

/// Measures the output effects of ablating and steering features (see [`crate::steering::effects`]).
pub fn effects(
    files: &EffectsFiles,
    config: EffectsConfig,
    backend: Backend,
    precision: GpuPrecision,
    observer: &mut dyn Observer,
) -> Result<EffectsSummary, StepError> {
    let mut started = false;
    let summary = crate::steering::effects(files, config, backend, precision, &mut |done, total| {
        // Edits (cell × feature × α × control), which advance per batch of tail passes.
        if !started {
            observer.start("effects", "edits", total as u64, 0);
            started = true;
        }
        observer.position(done as u64);
    });
    if started {
        observer.end(summary.is_ok());
    }
    Ok(summary?)
}

/// Compares the SAEs of several layers (decoder matches, highways, the seed control) and logs the
/// headline.
pub fn compare_layers(
    config: &LayersConfig,
    observer: &mut dyn Observer,
) -> Result<LayersSummary, StepError> {
    let mut started = false;
    let summary = scinterp_engine::analyze::compare_layers(config, &mut |done, total| {
        if !started {
            observer.start("", "rows", total as u64, 0);
            started = true;
        }
        observer.position(done as u64);
    });
    if started {
        observer.end(summary.is_ok());
    }
    let summary = summary?;
    if let Some(control) = &summary.seed_control {
        for h in &control.hooks {
            tracing::info!(
                "seed control {}: {} of {} alive features reproduced by the other seed ({} strong)",
                h.hook,
                h.reproduced,
                h.alive_primary,
                h.strong_reproduced
            );
        }
        for p in &control.pairs {
            tracing::info!(
                "seed control {} ({}) → {} ({}): {} matches of {} (primaries: {} of {})",
                p.from,
                p.from_sae,
                p.to,
                p.to_sae,
                p.matches,
                p.alive_from,
                p.primary_matches,
                p.primary_alive_from
            );
        }
    }
    for w in &summary.warnings {
        tracing::warn!("{w}");
    }
    Ok(summary)
}

/// Compares two models' annotated circuits and logs the headline.
pub fn consensus(config: &ConsensusConfig) -> Result<ConsensusSummary, StepError> {
    let s = scinterp_engine::analyze::consensus::run(config)?;
    let enrichment = s
        .enrichment
        .map_or_else(|| "n/a (null mean 0)".to_string(), |e| format!("{e:.2}x"));
    tracing::info!(
        "term pairs: a {}, b {}; conserved {} vs null {:.1} ± {:.1} ({} permutations): enrichment {enrichment}, p = {:.3}",
        s.graphs[0].term_pairs,
        s.graphs[1].term_pairs,
        s.conserved_pairs,
        s.null_mean,
        s.null_sd,
        s.settings.permutations,
        s.p_value
    );
    if let Some(f) = &s.focus {
        tracing::info!(
            "focus: {} of {} conserved pairs touch a focus set (expected {:.1}); hypergeometric p = {:.3e}, permutation p = {:.3}",
            f.conserved_focus_pairs,
            s.conserved_pairs,
            f.expected,
            f.p_hypergeometric,
            f.p_permutation
        );
    }
    tracing::info!("wrote {}", config.out.display());
    Ok(s)
}

/// Export's stages as log lines, its reference cells as a counted part.
struct ExportStages<'a> {
    inner: Shared<'a>,
    started: Mutex<bool>,
}

impl crate::pipeline::Progress for ExportStages<'_> {
    fn stage(&self, what: &str) {
        if let Ok(mut started) = self.started.lock() {
            if *started {
                self.inner.with(|o| o.end(true));
                *started = false;
            }
        }
        tracing::info!("{what}");
    }
    fn cells(&self, done: usize, total: usize) {
        if let Ok(mut started) = self.started.lock() {
            if !*started {
                self.inner
                    .with(|o| o.start("", "reference cells", total as u64, 0));
                *started = true;
            }
            self.inner.with(|o| o.position(done as u64));
        }
    }
}

/// Exports a tool (operator → surrogate → fitted readouts) from a model and reference cells.
pub fn export_tool(config: &ExportConfig, observer: &mut dyn Observer) -> Result<ExportReport, StepError> {
    let stages = ExportStages {
        inner: Shared::new(observer),
        started: Mutex::new(false),
    };
    let report = crate::pipeline::export_tool(config, &stages);
    if stages.started.lock().map(|s| *s).unwrap_or(false) {
        stages.inner.with(|o| o.end(report.is_ok()));
    }
    Ok(report?)
}
