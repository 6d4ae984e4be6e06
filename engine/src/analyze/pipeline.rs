//! The feature catalogue of one SAE over every row of an activation store, as one library call:
//! per-feature statistics, top genes and cells, the SVD comparison, and co-activation modules, in a
//! single pass over the store. Writes a catalog folder (tables, `svd_axes.npy`, `catalog.json`) that
//! annotation and the layer comparison read.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde_json::Value;

use super::{
    leiden_modules, quantile_sorted, Catalog, CatalogBuilder, CatalogSettings, CoactBuilder, CoactResult,
    CoactRule, Modules, PrincipalAxes, PROJECTED_NORM_SQ_THRESHOLDS,
};
use crate::formats::catalog::{
    CatalogSettingsRecord, CatalogSummary, CoactivationRuleRecord, CoactivationSummary, ModulesSummary,
    Reconstruction, SvdSummary, CATALOG_FILE, CATALOG_FORMAT, CATALOG_FORMAT_VERSION,
};
use crate::formats::{absolute, write_json, Column, JsonFileError, Table, TableError, TableFormat};
use crate::npy::{write_npy, NpyDtype};
use crate::rng::{splitmix64, unit_f64};
use crate::sae::io::{open_sae_on_store, SaeOnStoreError};
use crate::sae::{SparseCodes, TopKSae};
use crate::store::StoreError;

/// What to analyse and how (the command line's `scinterp analyze`).
#[derive(Clone, Debug)]
pub struct AnalyzeConfig {
    /// Activation store.
    pub acts: PathBuf,
    /// SAE folder trained on one of the store's hooks.
    pub sae: PathBuf,
    /// Hook of the store (default: the SAE's hook_name).
    pub hook: Option<String>,
    /// Catalog folder to write.
    pub out: PathBuf,
    pub format: TableFormat,
    /// Genes listed per feature and ranking.
    pub top_genes: usize,
    /// Positions a feature must fire on a gene before the gene can rank by conditional mean.
    pub min_support: u64,
    /// Cells listed per feature.
    pub top_cells: usize,
    /// Principal axes compared with the decoder directions, and the rows sampled (seeded) for them.
    pub svd_axes: usize,
    pub svd_sample_rows: usize,
    /// Co-activation and modules (they need 3·d_sae²·8 bytes).
    pub coactivation: bool,
    pub coact_alpha: f64,
    pub coact_min_cocount: u64,
    pub coact_min_pmi: f64,
    /// Leiden resolution (RB configuration; 1 is modularity), and the smallest module reported.
    pub leiden_resolution: f64,
    pub min_module_size: usize,
    /// Rows encoded at a time (rounded up to whole cells).
    pub chunk_rows: usize,
    pub seed: u64,
    /// Replace an existing catalog folder.
    pub overwrite: bool,
}

impl AnalyzeConfig {
    /// The defaults of `scinterp analyze`: Parquet tables, 20 top genes per ranking (support 5), 10 top
    /// cells, 50 principal axes from 50,000 sampled rows, co-activation at BH 0.05 (co-count 10, PMI 1),
    /// Leiden resolution 1 with modules of 3 or more, 8,192 rows at a time, seed 0.
    pub fn new(acts: PathBuf, sae: PathBuf, out: PathBuf) -> Self {
        AnalyzeConfig {
            acts,
            sae,
            hook: None,
            out,
            format: TableFormat::Parquet,
            top_genes: Self::TOP_GENES,
            min_support: Self::MIN_SUPPORT,
            top_cells: Self::TOP_CELLS,
            svd_axes: Self::SVD_AXES,
            svd_sample_rows: Self::SVD_SAMPLE_ROWS,
            coactivation: true,
            coact_alpha: Self::COACT_ALPHA,
            coact_min_cocount: Self::COACT_MIN_COCOUNT,
            coact_min_pmi: Self::COACT_MIN_PMI,
            leiden_resolution: Self::LEIDEN_RESOLUTION,
            min_module_size: Self::MIN_MODULE_SIZE,
            chunk_rows: Self::CHUNK_ROWS,
            seed: 0,
            overwrite: false,
        }
    }
    pub const TOP_GENES: usize = 20;
    pub const MIN_SUPPORT: u64 = 5;
    pub const TOP_CELLS: usize = 10;
    pub const SVD_AXES: usize = 50;
    pub const SVD_SAMPLE_ROWS: usize = 50_000;
    pub const COACT_ALPHA: f64 = 0.05;
    pub const COACT_MIN_COCOUNT: u64 = 10;
    pub const COACT_MIN_PMI: f64 = 1.0;
    pub const LEIDEN_RESOLUTION: f64 = 1.0;
    pub const MIN_MODULE_SIZE: usize = 3;
    pub const CHUNK_ROWS: usize = 8192;
}

/// Gene identifiers and symbols of token ids (a model's dictionaries; the caller loads them).
pub trait GeneNaming: Sync {
    fn gene_id(&self, token: u32) -> String;
    fn symbol(&self, token: u32) -> String;
    /// Where the names came from (recorded in catalog.json), if anywhere.
    fn source(&self) -> Option<String>;
}

/// No names: gene ids are `token_<id>`, symbols empty.
pub struct TokenNames;

impl GeneNaming for TokenNames {
    fn gene_id(&self, token: u32) -> String {
        format!("token_{token}")
    }
    fn symbol(&self, _token: u32) -> String {
        String::new()
    }
    fn source(&self) -> Option<String> {
        None
    }
}

/// Progress of an analysis, for a progress bar and the log.
#[derive(Clone, Debug)]
pub enum AnalyzeProgress {
    /// The pass starts.
    Start {
        hook: String,
        d_sae: usize,
        rows: usize,
        cells: usize,
    },
    /// Rows encoded so far.
    Rows(usize),
}

/// Why an analysis stopped; messages name the file or flag.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Output(#[from] crate::formats::OutputError),
    #[error(transparent)]
    File(#[from] crate::formats::FileError),
    #[error(transparent)]
    Open(#[from] SaeOnStoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {}: {io}", path.display())]
    Read { path: PathBuf, io: std::io::Error },
    #[error("cannot write {}: {io}", path.display())]
    Write { path: PathBuf, io: std::io::Error },
    #[error("{}: principal axes: {error}", acts.display())]
    Svd {
        acts: PathBuf,
        error: super::svd::SvdError,
    },
    #[error("Leiden clustering failed: {0}")]
    Leiden(#[from] super::modules::LeidenError),
    #[error("the {0} thread failed")]
    Worker(&'static str),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Json(#[from] JsonFileError),
    #[error("{0}")]
    Flag(String),
}

type Result<T, E = AnalyzeError> = std::result::Result<T, E>;

/// Values per block of the squared-error sum: blocks are summed in parallel, then in order, so the FVU
/// does not depend on how rayon splits the work (a plain parallel sum did, in its last digits).
const ERR_BLOCK: usize = 1 << 14;

/// What the single pass over the store collects.
struct Pass {
    catalog: Catalog,
    coact: Option<CoactResult>,
    svd_sample: Vec<f32>,
    /// Σ‖x − x̂‖², Σ‖x‖², Σx (for the FVU over every row).
    err: f64,
    /// Active latents (value > 0) summed over rows (the SAE's L0 × rows).
    active: u64,
    sum_sq: f64,
    sum: Vec<f64>,
}

/// Runs the analysis and writes the catalog folder; returns catalog.json's content.
pub fn run(
    args: &AnalyzeConfig,
    names: &dyn GeneNaming,
    progress: &mut dyn FnMut(AnalyzeProgress),
) -> Result<CatalogSummary> {
    // Refused before any work: a NaN level or resolution would give empty modules without a word.
    // A catalog without top genes cannot be annotated and the atlas would show empty features.
    if args.top_genes == 0 {
        return Err(AnalyzeError::Flag(
            "--top-genes 0: list at least one gene per feature (default 20)".into(),
        ));
    }
    if !(args.coact_alpha > 0.0 && args.coact_alpha <= 1.0) {
        return Err(AnalyzeError::Flag(format!(
            "--coact-alpha {}: must be in (0, 1]",
            args.coact_alpha
        )));
    }
    if !args.coact_min_pmi.is_finite() {
        return Err(AnalyzeError::Flag(format!(
            "--coact-min-pmi {}: must be finite",
            args.coact_min_pmi
        )));
    }
    if !(args.leiden_resolution.is_finite() && args.leiden_resolution > 0.0) {
        return Err(AnalyzeError::Flag(format!(
            "--leiden-resolution {}: must be finite and above 0",
            args.leiden_resolution
        )));
    }
    // The catalog is written in a staging folder and swapped in whole: a killed run never leaves an old
    // catalog.json beside new tables, and an existing catalog is refused without --overwrite.
    let staged = crate::formats::StagedDir::begin(&args.out, args.overwrite, "a catalog")?;
    let dir = staged.path().to_path_buf();
    let started = Instant::now();
    let (folder, store, array, hook) = open_sae_on_store(&args.sae, &args.acts, args.hook.as_deref())?;
    let sae = &folder.sae;
    let rows = store.rows()?;
    let token_store = store
        .manifest
        .source
        .token_store()
        .map(|t| PathBuf::from(&t.path));
    progress(AnalyzeProgress::Start {
        hook: hook.clone(),
        d_sae: sae.d_sae,
        rows: rows.len(),
        cells: store.manifest.n_cells,
    });
    let pass = single_pass(args, sae, &array, &rows, progress)?;
    let catalog = &pass.catalog;
    let alive: Vec<bool> = catalog.features.iter().map(|f| f.alive()).collect();
    let n_alive = alive.iter().filter(|&&a| a).count();

    // Superposition: principal axes of the sampled rows against every alive decoder direction; and
    // enough axes to compare with the SAE at matched L0 (as many numbers per row as active latents).
    let mean_l0 = pass.active as f64 / catalog.n_rows.max(1) as f64;
    let matched_rank = (mean_l0.round() as usize).clamp(1, sae.d_in);
    let all_axes =
        PrincipalAxes::fit(&pass.svd_sample, sae.d_in, args.svd_axes.max(matched_rank)).map_err(|error| {
            AnalyzeError::Svd {
                acts: args.acts.clone(),
                error,
            }
        })?;
    let axes = all_axes.top(args.svd_axes);
    let alignment: Vec<(f64, f64)> = (0..sae.d_sae)
        .into_par_iter()
        .map(|f| {
            if alive[f] {
                axes.alignment(sae.decoder_row(f))
            } else {
                (f64::NAN, f64::NAN)
            }
        })
        .collect();
    let null = axes.random_projection_null(10_000, args.seed);
    let null_q99 = quantile_sorted(&null, 0.99);
    let count_alive = |pred: &dyn Fn(&(f64, f64)) -> bool| {
        alignment
            .iter()
            .zip(&alive)
            .filter(|(a, &l)| l && pred(a))
            .count()
    };
    let total_var = pass.sum_sq - pass.sum.iter().map(|s| s * s).sum::<f64>() / catalog.n_rows.max(1) as f64;
    let fvu_all_rows = pass.err / total_var;

    let modules = match &pass.coact {
        Some(c) => {
            let edges: Vec<(u32, u32, f64)> = c.edges.iter().map(|e| (e.a, e.b, e.pmi)).collect();
            Some(
                leiden_modules(
                    sae.d_sae,
                    &edges,
                    args.leiden_resolution,
                    args.seed,
                    args.min_module_size,
                )
                .map_err(AnalyzeError::Leiden)?,
            )
        }
        None => None,
    };

    let cell_ids = token_store
        .as_deref()
        .map(read_cell_ids)
        .transpose()?
        .unwrap_or_default();
    write_tables(
        TableDir {
            dir: &dir,
            format: args.format,
            top_cells: args.top_cells,
        },
        catalog,
        names,
        &alignment,
        pass.coact.as_ref(),
        modules.as_ref(),
        &cell_ids,
    )?;
    let axes_path = dir.join("svd_axes.npy");
    let axes_f32: Vec<f32> = axes.axes.iter().map(|&x| x as f32).collect();
    write_npy(
        &axes_path,
        NpyDtype::F32,
        &[axes.n_axes(), sae.d_in],
        bytemuck::cast_slice(&axes_f32),
    )
    .map_err(|io| AnalyzeError::Write {
        path: axes_path.clone(),
        io,
    })?;

    let heldout_fvu = folder
        .metadata
        .pointer("/scinterp/heldout/fvu")
        .and_then(Value::as_f64);
    let summary = CatalogSummary {
        format: CATALOG_FORMAT.into(),
        format_version: CATALOG_FORMAT_VERSION,
        hook: hook.clone(),
        sae: absolute(&args.sae),
        acts: absolute(&args.acts),
        token_store: token_store.as_deref().map(absolute),
        table_format: args.format,
        gene_names: names.source(),
        n_rows: catalog.n_rows,
        n_cells: catalog.n_cells,
        n_genes: catalog.genes.len(),
        d_in: sae.d_in,
        d_sae: sae.d_sae,
        k: sae.k,
        alive: n_alive,
        dead: sae.d_sae - n_alive,
        alive_rule: "fired (value > 0) on at least one row of the store".into(),
        settings: CatalogSettingsRecord {
            top_genes: args.top_genes,
            min_support_positions: args.min_support,
            top_cells: args.top_cells,
            quantiles: "log-spaced histogram, 64 bins per decade over [1e-4, 1e4): within a factor 10^(1/64)".into(),
            seed: args.seed,
        },
        reconstruction: Reconstruction {
            fvu_all_rows,
            variance_explained_all_rows: 1.0 - fvu_all_rows,
            fvu_heldout_cells_at_training: heldout_fvu,
        },
        svd: SvdSummary {
            axes: axes.n_axes(),
            sample_rows: axes.sample_rows,
            sample_rule: "row r kept iff unit(splitmix64(seed ^ r)) < sample_rows / n_rows".into(),
            variance_explained: axes.variance_explained(),
            sae_variance_explained_all_rows: 1.0 - fvu_all_rows,
            aligned_max_abs_cos_gt_0_5: count_alive(&|a| a.0 > 0.5),
            aligned_max_abs_cos_gt_0_7: count_alive(&|a| a.0 > 0.7),
            projection_null_q99: null_q99,
            projection_null: "norm of the projection of 10,000 seeded Gaussian random directions onto the axes".into(),
            projection_above_null_q99: count_alive(&|a| a.1 > null_q99),
            projected_norm_sq_at_least: PROJECTED_NORM_SQ_THRESHOLDS
                .iter()
                .map(|&t| (t.to_string(), count_alive(&|a| a.1 * a.1 >= t)))
                .collect(),
            invisible_published_rule: n_alive - count_alive(&|a| a.0 > 0.5),
            invisible_published_rule_fraction: (n_alive - count_alive(&|a| a.0 > 0.5)) as f64
                / n_alive.max(1) as f64,
            sae_mean_l0: mean_l0,
            matched_rank,
            svd_variance_explained_at_matched_rank: all_axes.variance_explained_at(matched_rank),
        },
        coactivation: pass.coact.as_ref().map(|c| CoactivationSummary {
            test: "cell-stratified Cochran–Mantel–Haenszel z (one-sided, continuity-corrected) of position co-occurrence"
                .into(),
            family: "every pair of alive features".into(),
            tests: c.tests,
            significant_at_alpha: c.significant,
            edges: c.edges.len(),
            rule: CoactivationRuleRecord {
                alpha: args.coact_alpha,
                min_cocount: args.coact_min_cocount,
                min_pmi: args.coact_min_pmi,
            },
        }),
        modules: modules.as_ref().map(|m| ModulesSummary {
            algorithm: "Leiden (leiden-rs), RB configuration quality, PMI edge weights".into(),
            resolution: args.leiden_resolution,
            seed: args.seed,
            min_size: args.min_module_size,
            count: m.sizes.len(),
            sizes: m.sizes.clone(),
            features_in_modules: m.members.len(),
            coverage_of_alive: m.members.len() as f64 / n_alive.max(1) as f64,
            quality: m.quality,
        }),
        seconds: started.elapsed().as_secs_f64(),
        scinterp_version: env!("CARGO_PKG_VERSION").into(),
    };
    write_json(&dir.join(CATALOG_FILE), &summary)?;
    staged.commit()?;
    Ok(summary)
}

/// Reads every row once, in chunks of whole cells: encode, then feed the catalogue, the co-activation
/// counts, the FVU sums and the SVD sample.
fn single_pass(
    args: &AnalyzeConfig,
    sae: &TopKSae,
    array: &crate::store::HookArray,
    rows: &[[i32; 3]],
    progress: &mut dyn FnMut(AnalyzeProgress),
) -> Result<Pass> {
    let d = sae.d_in;
    let n = rows.len();
    let settings = CatalogSettings {
        top_genes: args.top_genes,
        min_support: args.min_support,
        top_cells: args.top_cells,
    };
    let catalog = CatalogBuilder::new(sae.d_sae, CatalogBuilder::observed_tokens(rows), settings);
    let coact = args.coactivation.then(|| CoactBuilder::new(sae.d_sae));
    let sample_fraction = (args.svd_sample_rows as f64 / n.max(1) as f64).min(1.0);
    let mut svd_sample = Vec::new();
    let (mut err, mut sum_sq, mut sum) = (0.0f64, 0.0f64, vec![0.0f64; d]);
    let mut active = 0u64;
    // The catalogue and the co-activation counts are serial; each runs on a thread of its own while the
    // next chunk is read and encoded.
    type Chunk = (usize, usize, Arc<SparseCodes>);
    let (cat_tx, cat_rx) = sync_channel::<Chunk>(2);
    let (co_tx, co_rx) = sync_channel::<Chunk>(2);
    let (catalog, coact) = std::thread::scope(|scope| {
        let cat_thread = scope.spawn(move || {
            let mut catalog = catalog;
            for (a, b, codes) in cat_rx {
                catalog.push(&rows[a..b], &codes);
            }
            catalog
        });
        let co_thread = coact.map(|mut coact| {
            scope.spawn(move || {
                for (a, b, codes) in co_rx {
                    let cells: Vec<u32> = rows[a..b].iter().map(|r| r[0] as u32).collect();
                    coact.push(&cells, &codes);
                }
                coact
            })
        });
        let mut x = Vec::new();
        let mut start = 0;
        while start < n {
            // Extend to the end of the cell that contains row start + chunk_rows − 1.
            let mut end = (start + args.chunk_rows.max(1)).min(n);
            while end < n && rows[end][0] == rows[end - 1][0] {
                end += 1;
            }
            x.resize((end - start) * d, 0.0);
            array.read_rows(start, &mut x);
            let codes = Arc::new(sae.encode(&x));
            active += codes.values.iter().filter(|&&v| v > 0.0).count() as u64;
            let recon = sae.decode(&codes);
            err += x
                .par_chunks(ERR_BLOCK)
                .zip(recon.par_chunks(ERR_BLOCK))
                .map(|(a, b)| {
                    a.iter()
                        .zip(b)
                        .map(|(&a, &b)| ((a - b) as f64).powi(2))
                        .sum::<f64>()
                })
                .collect::<Vec<f64>>()
                .into_iter()
                .sum::<f64>();
            for (r, row) in x.chunks_exact(d).enumerate() {
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += v as f64;
                    sum_sq += (v as f64) * (v as f64);
                }
                if unit_f64(splitmix64(args.seed ^ (start + r) as u64)) < sample_fraction {
                    svd_sample.extend_from_slice(row);
                }
            }
            // A send fails only if a worker panicked; its join below reports that.
            let _ = cat_tx.send((start, end, codes.clone()));
            if co_thread.is_some() {
                let _ = co_tx.send((start, end, codes));
            }
            progress(AnalyzeProgress::Rows(end));
            start = end;
        }
        drop((cat_tx, co_tx));
        let catalog = cat_thread.join().map_err(|_| AnalyzeError::Worker("catalogue"));
        let coact = co_thread
            .map(|t| t.join().map_err(|_| AnalyzeError::Worker("co-activation")))
            .transpose();
        (catalog, coact)
    });
    let (catalog, coact) = (catalog?, coact?);
    let norms: Vec<f32> = (0..sae.d_sae)
        .map(|f| sae.decoder_row(f).iter().map(|x| x * x).sum::<f32>().sqrt())
        .collect();
    let rule = CoactRule {
        alpha: args.coact_alpha,
        min_cocount: args.coact_min_cocount,
        min_pmi: args.coact_min_pmi,
    };
    Ok(Pass {
        catalog: catalog.finish(&norms),
        coact: coact.map(|c| c.finish(&rule)),
        svd_sample,
        err,
        active,
        sum_sq,
        sum,
    })
}

/// The first column (cell name) of a token store's cells.tsv, by cell index.
fn read_cell_ids(token_store: &Path) -> Result<Vec<String>> {
    let path = token_store.join("cells.tsv");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|io| AnalyzeError::Read {
        path: path.clone(),
        io,
    })?;
    Ok(text
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect())
}

/// Where the tables go (the staging folder, in the chosen format) and how many top cells they list.
struct TableDir<'a> {
    dir: &'a Path,
    format: TableFormat,
    top_cells: usize,
}

fn write_tables(
    out: TableDir<'_>,
    catalog: &Catalog,
    names: &dyn GeneNaming,
    alignment: &[(f64, f64)],
    coact: Option<&CoactResult>,
    modules: Option<&Modules>,
    cell_ids: &[String],
) -> Result<()> {
    let path = |name: &str| out.dir.join(format!("{name}.{}", out.format.ext()));
    let i64s = |it: &mut dyn Iterator<Item = i64>| Column::I64(it.collect());
    let f64s = |it: &mut dyn Iterator<Item = f64>| Column::F64(it.collect());
    let mut module_of = vec![-1i64; catalog.features.len()];
    let mut module_size = vec![0i64; catalog.features.len()];
    if let Some(m) = modules {
        for &(f, module) in &m.members {
            module_of[f as usize] = module as i64;
            module_size[f as usize] = m.sizes[module as usize] as i64;
        }
    }
    let fs = &catalog.features;
    Table::new()
        .column("feature", i64s(&mut fs.iter().map(|f| f.feature as i64)))
        .column("alive", i64s(&mut fs.iter().map(|f| f.alive() as i64)))
        .column("fire_count", i64s(&mut fs.iter().map(|f| f.fire_count as i64)))
        .column("fire_freq", f64s(&mut fs.iter().map(|f| f.fire_freq)))
        .column("cells_fired", i64s(&mut fs.iter().map(|f| f.cells_fired as i64)))
        .column("mean_activation", f64s(&mut fs.iter().map(|f| f.mean_activation)))
        .column(
            "mean_when_active",
            f64s(&mut fs.iter().map(|f| f.mean_when_active)),
        )
        .column("q50_when_active", f64s(&mut fs.iter().map(|f| f.q50_when_active)))
        .column("q90_when_active", f64s(&mut fs.iter().map(|f| f.q90_when_active)))
        .column("q99_when_active", f64s(&mut fs.iter().map(|f| f.q99_when_active)))
        .column("max_activation", f64s(&mut fs.iter().map(|f| f.max_activation)))
        .column("decoder_norm", f64s(&mut fs.iter().map(|f| f.decoder_norm)))
        .column("svd_max_abs_cos", f64s(&mut alignment.iter().map(|a| a.0)))
        .column("svd_projection", f64s(&mut alignment.iter().map(|a| a.1)))
        .column("module", Column::I64(module_of))
        .column("module_size", Column::I64(module_size))
        .write(&path("features"))?;

    let gs = &catalog.genes;
    Table::new()
        .column("token", i64s(&mut gs.iter().map(|g| g.token as i64)))
        .column(
            "gene_id",
            Column::Str(gs.iter().map(|g| names.gene_id(g.token)).collect()),
        )
        .column(
            "symbol",
            Column::Str(gs.iter().map(|g| names.symbol(g.token)).collect()),
        )
        .column("n_positions", i64s(&mut gs.iter().map(|g| g.n_positions as i64)))
        .column("n_cells", i64s(&mut gs.iter().map(|g| g.n_cells as i64)))
        .write(&path("genes"))?;

    let tg = &catalog.top_genes;
    Table::new()
        .column("feature", i64s(&mut tg.iter().map(|t| t.feature as i64)))
        .column(
            "ranking",
            Column::Str(tg.iter().map(|t| t.ranking.name().to_string()).collect()),
        )
        .column("rank", i64s(&mut tg.iter().map(|t| t.rank as i64)))
        .column("token", i64s(&mut tg.iter().map(|t| t.token as i64)))
        .column(
            "gene_id",
            Column::Str(tg.iter().map(|t| names.gene_id(t.token)).collect()),
        )
        .column(
            "symbol",
            Column::Str(tg.iter().map(|t| names.symbol(t.token)).collect()),
        )
        .column("n_fired", i64s(&mut tg.iter().map(|t| t.n_fired as i64)))
        .column("n_positions", i64s(&mut tg.iter().map(|t| t.n_positions as i64)))
        .column("mean_when_fired", f64s(&mut tg.iter().map(|t| t.mean_when_fired)))
        .column("mass", f64s(&mut tg.iter().map(|t| t.mass)))
        .column("fire_rate", f64s(&mut tg.iter().map(|t| t.fire_rate)))
        .write(&path("top_genes"))?;

    let fc = &catalog.feature_cells;
    Table::new()
        .column("feature", i64s(&mut fc.iter().map(|c| c.feature as i64)))
        .column("cell", i64s(&mut fc.iter().map(|c| c.cell as i64)))
        .column("n_active", i64s(&mut fc.iter().map(|c| c.n_active as i64)))
        .column(
            "mean_when_active",
            f64s(&mut fc.iter().map(|c| c.mean_when_active as f64)),
        )
        .write(&path("feature_cells"))?;

    let top = catalog.top_cells(out.top_cells);
    let cell_name = |c: u32| cell_ids.get(c as usize).cloned().unwrap_or_else(|| c.to_string());
    Table::new()
        .column("feature", i64s(&mut top.iter().map(|(_, c)| c.feature as i64)))
        .column("rank", i64s(&mut top.iter().map(|(r, _)| *r as i64)))
        .column("cell", i64s(&mut top.iter().map(|(_, c)| c.cell as i64)))
        .column(
            "cell_id",
            Column::Str(top.iter().map(|(_, c)| cell_name(c.cell)).collect()),
        )
        .column("n_active", i64s(&mut top.iter().map(|(_, c)| c.n_active as i64)))
        .column(
            "mean_when_active",
            f64s(&mut top.iter().map(|(_, c)| c.mean_when_active as f64)),
        )
        .write(&path("top_cells"))?;

    if let Some(c) = coact {
        let e = &c.edges;
        Table::new()
            .column("feature_a", i64s(&mut e.iter().map(|e| e.a as i64)))
            .column("feature_b", i64s(&mut e.iter().map(|e| e.b as i64)))
            .column("cocount", i64s(&mut e.iter().map(|e| e.cocount as i64)))
            .column("expected_cocount", f64s(&mut e.iter().map(|e| e.expected)))
            .column("null_variance", f64s(&mut e.iter().map(|e| e.variance)))
            .column("z", f64s(&mut e.iter().map(|e| e.z)))
            .column("p_value", f64s(&mut e.iter().map(|e| e.p_value)))
            .column("q_value", f64s(&mut e.iter().map(|e| e.q_value)))
            .column("pmi", f64s(&mut e.iter().map(|e| e.pmi)))
            .column("npmi", f64s(&mut e.iter().map(|e| e.npmi)))
            .write(&path("coactivation"))?;
    }
    if let Some(m) = modules {
        Table::new()
            .column("feature", i64s(&mut m.members.iter().map(|&(f, _)| f as i64)))
            .column("module", i64s(&mut m.members.iter().map(|&(_, x)| x as i64)))
            .column(
                "module_size",
                i64s(&mut m.members.iter().map(|&(_, x)| m.sizes[x as usize] as i64)),
            )
            .write(&path("modules"))?;
    }
    Ok(())
}
