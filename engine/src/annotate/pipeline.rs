//! Annotation of feature catalogs as one library call: gene-set (Fisher), TRRUST/PPI edge and
//! cell-type enrichment with BH over every test, reading catalog folders written by
//! [`crate::analyze::run`] and writing the tables and `annotate.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::cell_types::{
    cell_type_enrichment, CellLabels, CellTypeCatalog, CellTypeResult, CellTypeSettings, FeatureCells,
};
use super::enrichment::{annotate, Annotation, CatalogQuery, FeatureQuery, Settings, TermRow};
use super::gene_sets::{read_gmt, GeneSetLibrary};
use super::networks::{read_ppi, read_trrust, trrust_target_sets, Network, DEGREE_CLASSES};
use super::{AnnotateError, Background};
use crate::formats::annotation::{
    AnnotationInputs, AnnotationSeconds, AnnotationSettings, AnnotationSummary, CatalogAnnotation, CatalogM,
    CellTypeCounts, CellTypeFamily, EdgeFamily, Families, GeneSetFamily, GeneSetInput, LibraryAnnotation,
    NamedDir, NetworkAnnotation, NetworkInput, ANNOTATION_FORMAT,
};
use crate::formats::catalog::CatalogHeader;
use crate::formats::{absolute, atomic_write, to_json_pretty, Column, Table, TableFormat};

pub const ANNOTATION_FILE: &str = "annotate.json";

/// Which top-gene ranking of a catalog a feature's query comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Ranking {
    /// Mean activation over the positions where the feature fired on the gene.
    #[cfg_attr(feature = "clap", value(name = "conditional_mean"))]
    ConditionalMean,
    /// Mean activation × fire rate on the gene.
    #[cfg_attr(feature = "clap", value(name = "mass"))]
    Mass,
}

impl Ranking {
    pub fn name(self) -> &'static str {
        match self {
            Ranking::ConditionalMean => "conditional_mean",
            Ranking::Mass => "mass",
        }
    }
}

/// What to annotate and how (the command line's `scinterp annotate`).
#[derive(Clone, Debug)]
pub struct AnnotateConfig {
    /// Feature catalog folders; catalogs given together share one BH family (atlas q).
    pub catalog: Vec<PathBuf>,
    /// Gene-set libraries (GMT files), each named after its file's stem.
    pub gene_sets: Vec<PathBuf>,
    /// TRRUST file: TF target sets and the directed TF → target edge test.
    pub trrust: Option<PathBuf>,
    /// Undirected gene–gene edge list: the edge test PPI_edges; and its minimum score.
    pub ppi: Option<PathBuf>,
    pub ppi_min_score: Option<f64>,
    /// Cell-type enrichment by this column of the token store's cells.tsv.
    pub obs_column: Option<String>,
    /// Output folder (created).
    pub out: PathBuf,
    pub format: TableFormat,
    /// Term sizes tested (genes in the background).
    pub min_term_size: usize,
    pub max_term_size: usize,
    /// Top genes per feature used as its query, and which ranking.
    pub top_n: usize,
    pub ranking: Ranking,
    /// Permutations of the degree-preserving null per edge test.
    pub permutations: usize,
    pub seed: u64,
    /// FDR level: rows with q ≤ alpha are written.
    pub alpha: f64,
    /// Replace an existing output folder (only once the new one is complete).
    pub overwrite: bool,
}

impl AnnotateConfig {
    /// The defaults of `scinterp annotate`: no library chosen yet (set `gene_sets`, `trrust`, `ppi` or
    /// `obs_column`), Parquet tables, terms of 5–500 background genes, each feature's top 20 genes by
    /// conditional mean, 1,000 permutations per edge test, seed 0, q ≤ 0.05 written.
    pub fn new(catalog: Vec<PathBuf>, out: PathBuf) -> Self {
        AnnotateConfig {
            catalog,
            gene_sets: Vec::new(),
            trrust: None,
            ppi: None,
            ppi_min_score: None,
            obs_column: None,
            out,
            format: TableFormat::Parquet,
            min_term_size: Self::MIN_TERM_SIZE,
            max_term_size: Self::MAX_TERM_SIZE,
            top_n: Self::TOP_N,
            ranking: Ranking::ConditionalMean,
            permutations: Self::PERMUTATIONS,
            seed: 0,
            alpha: Self::ALPHA,
            overwrite: false,
        }
    }
    pub const MIN_TERM_SIZE: usize = 5;
    pub const MAX_TERM_SIZE: usize = 500;
    pub const TOP_N: usize = 20;
    pub const PERMUTATIONS: usize = 1000;
    pub const ALPHA: f64 = 0.05;
}

/// Progress and notes of an annotation run, for a progress bar and the log.
#[derive(Clone, Debug)]
pub enum AnnotateProgress {
    /// Something the user should know that does not stop the run.
    Warning(String),
    /// Inputs read.
    Read {
        catalogs: usize,
        alive_features: usize,
        libraries: usize,
        seconds: f64,
    },
    /// The tests start: `total` units of work.
    TestsStart {
        total: u64,
    },
    /// `k` more units done.
    Tested(u64),
    TestsDone,
    /// Everything written.
    Done {
        tests: u64,
        significant: u64,
        rows: usize,
        seconds: f64,
    },
}

type Result<T, E = AnnotateError> = std::result::Result<T, E>;

/// Features with fewer query genes are not tested (the published rule).
const MIN_QUERY_GENES: usize = 3;

const FISHER_RULE: &str = "every (feature, term) pair: alive features with >= 3 query genes (top-n genes of the \
     chosen ranking) x every term of every library with size in [min, max] inside the background. Pairs \
     sharing no gene have p = 1 and count in m. One-sided Fisher = hypergeometric upper tail P[X >= overlap], \
     population = the library's genes in the catalog's background, successes = term size in the background, \
     draws = query genes in that population. Background = the genes of the catalog's genes table that could \
     enter a query: with ranking conditional_mean, those with n_positions >= the catalog's min_support_positions. \
     q_value_atlas: BH over this family for all catalogs of the run; q_value_catalog: BH over one catalog's part \
     (q_family = gene_sets in enrichment and best_terms).";

const EDGE_RULE: &str = "one degree-preserving permutation test per (feature, network) for the same tested \
     features; features with no edge among their query genes have p = 1 and count in m. A family of its own: \
     a permutation p is at least 1/(B+1) and could never pass BH among the gene-set tests. q_value_atlas: BH \
     over this family for all catalogs of the run; q_value_catalog: over one catalog's part (q_family = \
     network_edges in edge_enrichment).";

const CELL_TYPE_RULE: &str = "features active in >= 10 cells (rows of feature_cells); top cells = the first \
     ceil(10 %) of its active cells by mean_when_active (ties: lower cell index); every label with >= 3 cells \
     in the token store is tested by one-sided Fisher: in_top ~ Hypergeom(population = labelled cells of the \
     store, successes = label_cells, draws = labelled top cells); BH over every (feature, label) pair of all \
     catalogs, pairs with in_top = 0 at p = 1. Empty, nan, NA and None values are unlabelled.";

/// What catalog.json says, and where its tables are.
struct CatalogFiles {
    dir: PathBuf,
    hook: String,
    /// The catalog's `--min-support` (1 when catalog.json does not say).
    min_support_positions: u64,
    token_store: Option<PathBuf>,
    ext: String,
}

impl CatalogFiles {
    fn open(dir: &Path) -> Result<Self> {
        let header = CatalogHeader::read(dir)?;
        Ok(CatalogFiles {
            dir: dir.to_path_buf(),
            token_store: header.token_store_path(dir),
            min_support_positions: header.settings.map_or(1, |s| s.min_support_positions.max(1)),
            hook: header.hook,
            ext: header.table_format.ext().to_string(),
        })
    }

    fn table(&self, name: &str) -> Result<Table> {
        let path = self.dir.join(format!("{name}.{}", self.ext));
        if !path.exists() {
            return Err(AnnotateError::Invalid(format!(
                "catalog {}: {} is missing (catalog.json says table_format {}); the catalog is incomplete: rerun \
                 `scinterp analyze` for it",
                self.dir.display(),
                path.display(),
                self.ext
            )));
        }
        Ok(Table::read(&path)?)
    }
}

/// A catalog read into the engine's query form, with the token → background index map.
fn read_query(
    files: &CatalogFiles,
    name: &str,
    args: &AnnotateConfig,
    progress: &(dyn Fn(AnnotateProgress) + Sync),
) -> Result<CatalogQuery> {
    let genes = files.table("genes")?;
    let (tokens, gene_ids, symbols) = (
        genes.i64s("token")?,
        genes.strs("gene_id")?,
        genes.strs("symbol")?,
    );
    // The background is the genes that could enter a query: a conditional-mean top list needs the
    // feature to fire on the gene at >= min_support positions, so the gene must have that many.
    let min_positions = background_min_positions(files, args.ranking);
    let keep: Vec<usize> = if min_positions > 1 {
        let n_positions = genes.i64s("n_positions")?;
        (0..tokens.len())
            .filter(|&i| n_positions[i] >= min_positions as i64)
            .collect()
    } else {
        (0..tokens.len()).collect()
    };
    let tokens: Vec<i64> = keep.iter().map(|&i| tokens[i]).collect();
    let background = Background::new(
        keep.iter().map(|&i| gene_ids[i].clone()).collect(),
        keep.iter().map(|&i| symbols[i].clone()).collect(),
    )?;
    let mut index_of: HashMap<i64, u32> = HashMap::with_capacity(tokens.len());
    for (i, &t) in tokens.iter().enumerate() {
        if index_of.insert(t, i as u32).is_some() {
            return Err(AnnotateError::Invalid(format!(
                "catalog {}: genes table lists token {t} twice; rerun `scinterp analyze`",
                files.dir.display()
            )));
        }
    }

    let features = files.table("features")?;
    let ids = features.i64s("feature")?;
    let alive = features.i64s("alive")?;
    let alive_ids: Vec<i64> = ids
        .iter()
        .zip(alive.iter())
        .filter(|(_, &a)| a != 0)
        .map(|(&f, _)| f)
        .collect();

    let top = files.table("top_genes")?;
    let (feature, ranking, rank, token) = (
        top.i64s("feature")?,
        top.strs("ranking")?,
        top.i64s("rank")?,
        top.i64s("token")?,
    );
    let wanted = args.ranking.name();
    let mut per_feature: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
    let mut unknown_tokens = 0usize;
    for r in 0..top.rows() {
        if ranking[r] != wanted || rank[r] < 0 || rank[r] >= args.top_n as i64 {
            continue;
        }
        per_feature
            .entry(feature[r])
            .or_default()
            .push((rank[r], token[r]));
    }
    if per_feature.is_empty() && top.rows() > 0 {
        let mut present: Vec<&str> = ranking.iter().map(String::as_str).collect();
        present.sort_unstable();
        present.dedup();
        return Err(AnnotateError::Invalid(format!(
            "catalog {}: top_genes has no rows with ranking `{wanted}` (present: {}); choose one with --ranking",
            files.dir.display(),
            present.join(", ")
        )));
    }
    let mut queries = Vec::with_capacity(alive_ids.len());
    for f in alive_ids {
        let mut rows = per_feature.remove(&f).unwrap_or_default();
        rows.sort_unstable();
        let mut genes: Vec<u32> = Vec::with_capacity(rows.len());
        for (_, t) in rows {
            match index_of.get(&t) {
                Some(&g) if !genes.contains(&g) => genes.push(g),
                Some(_) => {}
                None => unknown_tokens += 1,
            }
        }
        queries.push(FeatureQuery { feature: f, genes });
    }
    if unknown_tokens > 0 {
        progress(AnnotateProgress::Warning(format!(
            "catalog {}: {unknown_tokens} top-gene rows name tokens missing from the genes table; they are left out",
            files.dir.display()
        )));
    }
    Ok(CatalogQuery {
        name: name.to_string(),
        background,
        features: queries,
    })
}

/// The fewest positions a gene of the catalog needs to enter a query of this ranking.
fn background_min_positions(files: &CatalogFiles, ranking: Ranking) -> u64 {
    match ranking {
        Ranking::ConditionalMean => files.min_support_positions,
        Ranking::Mass => 1,
    }
}

/// Reads the obs column of a token store's cells.tsv.
fn read_labels(store: &Path, column: &str) -> Result<CellLabels> {
    let path = store.join("cells.tsv");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        AnnotateError::file(
            &path,
            format!("cannot read the token store's cell table (needed by --obs-column): {e}"),
        )
    })?;
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let Some(col) = header.iter().position(|h| h.trim() == column) else {
        return Err(AnnotateError::Invalid(format!(
            "--obs-column {column}: {} has no such column; its columns are: {} (the first is the cell barcode); \
             keep it with `scinterp tokenize --obs-columns {column}`",
            path.display(),
            header.join(", ")
        )));
    };
    let values: Vec<String> = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').nth(col).unwrap_or("").to_string())
        .collect();
    Ok(CellLabels::new(&values))
}

fn read_feature_cells(files: &CatalogFiles) -> Result<Vec<FeatureCells>> {
    let t = files.table("feature_cells")?;
    let (feature, cell, mean) = (t.i64s("feature")?, t.i64s("cell")?, t.f64s("mean_when_active")?);
    let mut by_feature: BTreeMap<i64, Vec<(u32, f64)>> = BTreeMap::new();
    for r in 0..t.rows() {
        let c = u32::try_from(cell[r]).map_err(|_| {
            AnnotateError::Invalid(format!(
                "catalog {}: feature_cells row {} has cell {}, not a cell index",
                files.dir.display(),
                r + 1,
                cell[r]
            ))
        })?;
        by_feature.entry(feature[r]).or_default().push((c, mean[r]));
    }
    Ok(by_feature
        .into_iter()
        .map(|(feature, cells)| FeatureCells { feature, cells })
        .collect())
}

fn term_table(rows: &[TermRow], names: &[String], libraries: &[String]) -> Table {
    Table::new()
        .column(
            "catalog",
            Column::Str(rows.iter().map(|r| names[r.catalog].clone()).collect()),
        )
        .column("feature", Column::I64(rows.iter().map(|r| r.feature).collect()))
        .column(
            "library",
            Column::Str(rows.iter().map(|r| libraries[r.library].clone()).collect()),
        )
        .column("term", Column::Str(rows.iter().map(|r| r.term.clone()).collect()))
        .column(
            "overlap",
            Column::I64(rows.iter().map(|r| i64::from(r.overlap)).collect()),
        )
        .column(
            "query_size",
            Column::I64(rows.iter().map(|r| i64::from(r.query_size)).collect()),
        )
        .column(
            "term_size",
            Column::I64(rows.iter().map(|r| i64::from(r.term_size)).collect()),
        )
        .column(
            "background_size",
            Column::I64(rows.iter().map(|r| i64::from(r.background_size)).collect()),
        )
        .column("p_value", Column::F64(rows.iter().map(|r| r.p_value).collect()))
        .column(
            "q_value_atlas",
            Column::F64(rows.iter().map(|r| r.q_value_atlas).collect()),
        )
        .column(
            "q_value_catalog",
            Column::F64(rows.iter().map(|r| r.q_value_catalog).collect()),
        )
        // Which BH family the q-values belong to.
        .column("q_family", Column::Str(vec!["gene_sets".into(); rows.len()]))
        .column(
            "fold_enrichment",
            Column::F64(rows.iter().map(|r| r.fold_enrichment).collect()),
        )
        .column(
            "overlap_genes",
            Column::Str(rows.iter().map(|r| r.overlap_genes.join(",")).collect()),
        )
}

fn edge_table(a: &Annotation, names: &[String]) -> Table {
    let rows = &a.edge_rows;
    Table::new()
        .column(
            "catalog",
            Column::Str(rows.iter().map(|r| names[r.catalog].clone()).collect()),
        )
        .column("feature", Column::I64(rows.iter().map(|r| r.feature).collect()))
        .column(
            "network",
            Column::Str(rows.iter().map(|r| a.networks[r.network].clone()).collect()),
        )
        .column(
            "observed_edges",
            Column::I64(rows.iter().map(|r| i64::from(r.observed_edges)).collect()),
        )
        .column(
            "null_mean",
            Column::F64(rows.iter().map(|r| r.null_mean).collect()),
        )
        .column("p_value", Column::F64(rows.iter().map(|r| r.p_value).collect()))
        .column(
            "q_value_atlas",
            Column::F64(rows.iter().map(|r| r.q_value_atlas).collect()),
        )
        .column(
            "q_value_catalog",
            Column::F64(rows.iter().map(|r| r.q_value_catalog).collect()),
        )
        .column("q_family", Column::Str(vec!["network_edges".into(); rows.len()]))
        .column(
            "permutations",
            Column::I64(rows.iter().map(|r| i64::from(r.permutations)).collect()),
        )
        .column(
            "edges",
            Column::Str(rows.iter().map(|r| r.edges.join(",")).collect()),
        )
}

fn cell_type_table(c: &CellTypeResult, names: &[String]) -> Table {
    let rows = &c.rows;
    let int = |f: fn(&super::cell_types::CellTypeRow) -> u64| {
        Column::I64(rows.iter().map(|r| f(r) as i64).collect())
    };
    Table::new()
        .column(
            "catalog",
            Column::Str(rows.iter().map(|r| names[r.catalog].clone()).collect()),
        )
        .column("feature", Column::I64(rows.iter().map(|r| r.feature).collect()))
        .column(
            "label",
            Column::Str(rows.iter().map(|r| r.label.clone()).collect()),
        )
        .column("in_top", int(|r| r.in_top))
        .column("top_size", int(|r| r.top_size))
        .column("label_cells", int(|r| r.label_cells))
        .column("n_cells", int(|r| r.n_cells))
        .column("p_value", Column::F64(rows.iter().map(|r| r.p_value).collect()))
        .column("q_value", Column::F64(rows.iter().map(|r| r.q_value).collect()))
        .column("q_family", Column::Str(vec!["cell_types".into(); rows.len()]))
}

/// The cell-type inputs: one label set per distinct token store, which one each catalog uses, and each
/// catalog's feature cells.
struct CellInputs {
    labels: Vec<CellLabels>,
    which: Vec<usize>,
    cells: Vec<Vec<FeatureCells>>,
}

/// Runs the whole command and returns annotate.json's content.
pub fn run(args: &AnnotateConfig, progress: &(dyn Fn(AnnotateProgress) + Sync)) -> Result<AnnotationSummary> {
    let started = std::time::Instant::now();
    if !(args.alpha > 0.0 && args.alpha <= 1.0) {
        return Err(AnnotateError::Invalid(format!(
            "--alpha {}: must be in (0, 1]",
            args.alpha
        )));
    }
    if args.top_n < MIN_QUERY_GENES {
        return Err(AnnotateError::Invalid(format!(
            "--top-n {}: at least {MIN_QUERY_GENES} genes are needed to test a feature",
            args.top_n
        )));
    }
    if args.gene_sets.is_empty() && args.trrust.is_none() && args.ppi.is_none() {
        return Err(AnnotateError::Invalid(
            "nothing to test: give --gene-sets (GMT files), --trrust or --ppi".into(),
        ));
    }
    if args.ppi_min_score.is_some() && args.ppi.is_none() {
        return Err(AnnotateError::Invalid("--ppi-min-score needs --ppi".into()));
    }

    // Inputs: libraries and networks first (cheap, and their errors come before reading catalogs).
    let mut libraries: Vec<GeneSetLibrary> = Vec::new();
    for path in &args.gene_sets {
        let lib = read_gmt(path)?;
        if let Some(other) = libraries.iter().find(|l| l.name == lib.name) {
            return Err(AnnotateError::Invalid(format!(
                "--gene-sets: {} and {} are both named {} (libraries are named after the file stem); rename one",
                other.source.display(),
                path.display(),
                lib.name
            )));
        }
        libraries.push(lib);
    }
    let mut networks: Vec<Network> = Vec::new();
    if let Some(path) = &args.trrust {
        let trrust = read_trrust(path)?;
        libraries.push(trrust_target_sets(&trrust));
        networks.push(trrust);
    }
    if let Some(path) = &args.ppi {
        networks.push(read_ppi(path, args.ppi_min_score)?);
    }

    let files: Vec<CatalogFiles> = args
        .catalog
        .iter()
        .map(|d| CatalogFiles::open(d))
        .collect::<Result<_>>()?;
    // Catalog names are hooks; repeated hooks (e.g. two models) get their folder's name in front.
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            if files.iter().filter(|g| g.hook == f.hook).count() > 1 {
                let dir = f.dir.file_name().and_then(|s| s.to_str()).unwrap_or("catalog");
                format!("{dir}:{}", f.hook)
            } else {
                f.hook.clone()
            }
        })
        .collect();
    if names.iter().enumerate().any(|(i, n)| names[..i].contains(n)) {
        return Err(AnnotateError::Invalid(
            "--catalog: two catalogs have the same folder name and hook; give each catalog once".into(),
        ));
    }
    let t_read = std::time::Instant::now();
    let queries: Vec<CatalogQuery> = files
        .iter()
        .zip(&names)
        .map(|(f, n)| read_query(f, n, args, progress))
        .collect::<Result<_>>()?;
    // Labels and feature cells, read before the long part so that their errors come first.
    let mut cell_inputs: Option<CellInputs> = None;
    if let Some(column) = &args.obs_column {
        let mut stores: Vec<PathBuf> = Vec::new();
        let mut labels: Vec<CellLabels> = Vec::new();
        let mut which = Vec::new();
        let mut cells = Vec::new();
        for f in &files {
            let store = f.token_store.clone().ok_or_else(|| {
                AnnotateError::Invalid(format!(
                    "catalog {}: catalog.json names no token_store, which --obs-column needs",
                    f.dir.display()
                ))
            })?;
            let i = match stores.iter().position(|s| *s == store) {
                Some(i) => i,
                None => {
                    labels.push(read_labels(&store, column)?);
                    stores.push(store);
                    stores.len() - 1
                }
            };
            which.push(i);
            cells.push(read_feature_cells(f)?);
        }
        cell_inputs = Some(CellInputs { labels, which, cells });
    }
    let read_seconds = t_read.elapsed().as_secs_f64();
    // Inputs are checked first; an existing output is refused before the tests run.
    let staged = crate::formats::StagedDir::begin(&args.out, args.overwrite, "an annotation")?;
    progress(AnnotateProgress::Read {
        catalogs: queries.len(),
        alive_features: queries.iter().map(|q| q.features.len()).sum::<usize>(),
        libraries: libraries.len(),
        seconds: read_seconds,
    });

    let settings = Settings {
        min_term_size: args.min_term_size,
        max_term_size: args.max_term_size,
        min_query_genes: MIN_QUERY_GENES,
        permutations: args.permutations,
        seed: args.seed,
        alpha: args.alpha,
    };
    let tested: u64 = queries
        .iter()
        .map(|q| {
            q.features
                .iter()
                .filter(|f| f.genes.len() >= MIN_QUERY_GENES)
                .count() as u64
        })
        .sum();
    progress(AnnotateProgress::TestsStart { total: 2 * tested });
    let t_test = std::time::Instant::now();
    let result = annotate(&queries, &libraries, &networks, &settings, &|k| {
        progress(AnnotateProgress::Tested(k))
    })?;
    progress(AnnotateProgress::TestsDone);
    let test_seconds = t_test.elapsed().as_secs_f64();

    let cell_result = match &cell_inputs {
        Some(CellInputs { labels, which, cells }) => {
            let catalogs: Vec<CellTypeCatalog> = names
                .iter()
                .zip(which)
                .zip(cells)
                .map(|((name, &i), features)| CellTypeCatalog {
                    name: name.clone(),
                    labels: &labels[i],
                    features: features.clone(),
                })
                .collect();
            let s = CellTypeSettings {
                alpha: args.alpha,
                ..CellTypeSettings::default()
            };
            Some(cell_type_enrichment(&catalogs, &s)?)
        }
        None => None,
    };

    // Outputs.
    let ext = args.format.ext();
    let out = |name: &str| staged.path().join(format!("{name}.{ext}"));
    term_table(&result.term_rows, &names, &result.libraries).write(&out("enrichment"))?;
    term_table(&result.best_rows, &names, &result.libraries).write(&out("best_terms"))?;
    edge_table(&result, &names).write(&out("edge_enrichment"))?;
    if let Some(c) = &cell_result {
        cell_type_table(c, &names).write(&out("cell_types"))?;
    }

    let summary = summary(
        args,
        &files,
        &names,
        &libraries,
        &networks,
        &result,
        cell_result.as_ref(),
        AnnotationSeconds {
            read: read_seconds,
            tests: test_seconds,
            total: started.elapsed().as_secs_f64(),
        },
    );
    // A final newline, as annotate.json always had.
    let text = to_json_pretty(&summary)
        .map_err(|e| AnnotateError::Invalid(format!("cannot serialise annotate.json: {e}")))?
        + "\n";
    atomic_write(&staged.path().join(ANNOTATION_FILE), text.as_bytes())?;
    staged.commit()?;
    progress(AnnotateProgress::Done {
        tests: result.atlas.m,
        significant: result.atlas.significant,
        rows: result.term_rows.len(),
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn summary(
    args: &AnnotateConfig,
    files: &[CatalogFiles],
    names: &[String],
    libraries: &[GeneSetLibrary],
    networks: &[Network],
    result: &Annotation,
    cells: Option<&CellTypeResult>,
    seconds: AnnotationSeconds,
) -> AnnotationSummary {
    let ext = args.format.ext();
    let mut significant_by_test: BTreeMap<String, u64> = BTreeMap::new();
    for c in &result.catalogs {
        for l in &c.libraries {
            *significant_by_test.entry(l.library.clone()).or_default() += l.significant_atlas;
        }
        for n in &c.networks {
            *significant_by_test.entry(n.network.clone()).or_default() += n.significant_atlas;
        }
    }
    let catalogs: Vec<CatalogAnnotation> = result
        .catalogs
        .iter()
        .zip(files)
        .enumerate()
        .map(|(i, (c, f))| CatalogAnnotation {
            name: names[i].clone(),
            hook: f.hook.clone(),
            dir: absolute(&f.dir),
            token_store: f.token_store.as_ref().map(|p| p.display().to_string()),
            background_genes: c.background_genes,
            background_min_positions: background_min_positions(f, args.ranking),
            alive_features: c.alive_features,
            tested_features: c.tested_features,
            m: c.m,
            m_network_edges: c.m_edges,
            significant_catalog_q: c.significant_catalog,
            significant_atlas_q: c.significant_atlas,
            annotated_features: c.annotated_atlas,
            annotated_fraction: fraction(c.annotated_atlas, c.alive_features),
            annotated_features_catalog_q: c.annotated_catalog,
            annotated_fraction_catalog_q: fraction(c.annotated_catalog, c.alive_features),
            libraries: c
                .libraries
                .iter()
                .map(|l| LibraryAnnotation {
                    library: l.library.clone(),
                    universe_in_background: l.universe,
                    terms_tested: l.terms_tested,
                    terms_below_min_size: l.terms_below_min,
                    terms_above_max_size: l.terms_above_max,
                    pairs_with_overlap: l.pairs_with_overlap,
                    significant_atlas_q: l.significant_atlas,
                    significant_catalog_q: l.significant_catalog,
                })
                .collect(),
            networks: c
                .networks
                .iter()
                .map(|n| NetworkAnnotation {
                    network: n.network.clone(),
                    edges_in_background: n.edges_in_background,
                    genes_with_edges: n.genes_with_edges,
                    features_with_edges: n.features_with_edges,
                    significant_atlas_q: n.significant_atlas,
                    significant_catalog_q: n.significant_catalog,
                })
                .collect(),
            cell_types: cells.map(|r| {
                let s = &r.catalogs[i];
                CellTypeCounts {
                    features_tested: s.features_tested,
                    labels_tested: s.labels_tested,
                    significant: s.significant,
                    features_enriched: s.features_enriched,
                }
            }),
        })
        .collect();
    let mut outputs = vec![
        format!("enrichment.{ext}"),
        format!("best_terms.{ext}"),
        format!("edge_enrichment.{ext}"),
    ];
    if cells.is_some() {
        outputs.push(format!("cell_types.{ext}"));
    }
    AnnotationSummary {
        format: ANNOTATION_FORMAT.into(),
        format_version: 1,
        inputs: AnnotationInputs {
            catalogs: files
                .iter()
                .zip(names)
                .map(|(f, n)| NamedDir {
                    name: n.clone(),
                    dir: absolute(&f.dir),
                })
                .collect(),
            gene_sets: libraries
                .iter()
                .map(|l| GeneSetInput {
                    library: l.name.clone(),
                    path: absolute(&l.source),
                    terms_in_file: l.terms.len(),
                    genes_in_file: l.n_genes(),
                })
                .collect(),
            trrust: args.trrust.as_deref().map(absolute),
            ppi: args.ppi.as_deref().map(absolute),
            ppi_min_score: args.ppi_min_score,
            obs_column: args.obs_column.clone(),
            networks: networks
                .iter()
                .map(|n| NetworkInput {
                    network: n.name.clone(),
                    path: absolute(&n.source),
                    directed: n.directed,
                    edges_in_file: n.edges.len(),
                })
                .collect(),
        },
        settings: AnnotationSettings {
            ranking: args.ranking.name().into(),
            top_n: args.top_n,
            min_query_genes: MIN_QUERY_GENES,
            min_term_size: args.min_term_size,
            max_term_size: args.max_term_size,
            permutations: args.permutations,
            seed: args.seed,
            alpha: args.alpha,
            edge_null: format!(
                "each query gene replaced by a random background gene of the same degree bin, without replacement; \
                 bins: log2 classes 0, 1, 2-3, 4-7, 8-15, 16-31, >=32 of out- and in-degree ({} bins) for directed \
                 networks, of the degree ({} bins) for undirected ones, in the network restricted to the \
                 background; p = (1 + #null >= observed) / (B + 1); features with no edge: p = 1, not simulated; \
                 no early stopping",
                DEGREE_CLASSES * DEGREE_CLASSES,
                DEGREE_CLASSES
            ),
        },
        families: Families {
            gene_sets: GeneSetFamily {
                rule: FISHER_RULE.into(),
                libraries: result.libraries.clone(),
                m: result.atlas.m,
                tests_with_computed_p: result.atlas.explicit,
                significant_atlas_q: result.atlas.significant,
                significant_atlas_q_by_library: significant_by_test,
                largest_significant_p: result.atlas.p_threshold,
                m_per_catalog: result
                    .catalogs
                    .iter()
                    .map(|c| CatalogM {
                        name: c.name.clone(),
                        m: c.m,
                    })
                    .collect(),
            },
            network_edges: result.edge_atlas.as_ref().map(|e| EdgeFamily {
                rule: EDGE_RULE.into(),
                networks: result.networks.clone(),
                m: e.m,
                tests_with_computed_p: e.explicit,
                significant_atlas_q: e.significant,
                largest_significant_p: e.p_threshold,
                m_per_catalog: result
                    .catalogs
                    .iter()
                    .map(|c| CatalogM {
                        name: c.name.clone(),
                        m: c.m_edges,
                    })
                    .collect(),
            }),
            cell_types: cells.map(|c| CellTypeFamily {
                rule: CELL_TYPE_RULE.into(),
                obs_column: args.obs_column.clone(),
                m: c.m,
                tests_with_computed_p: c.explicit,
                significant: c.significant,
            }),
        },
        annotated: "a feature is annotated when one of its tests (a term, or an edge test) has q_value_atlas <= \
                    alpha in its own family (gene_sets or network_edges); fractions are over alive features"
            .into(),
        catalogs,
        outputs,
        seconds,
    }
}

fn fraction(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
