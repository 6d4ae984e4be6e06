//! `scinterp annotate`: gene-set, TRRUST/PPI edge and cell-type enrichment of feature catalogs, with
//! BH over every test (the science is in `scinterp_engine::annotate`; this module reads the catalogs,
//! calls it and writes the tables and `annotate.json`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use scinterp_engine::annotate::cell_types::{
    cell_type_enrichment, CellLabels, CellTypeCatalog, CellTypeResult, CellTypeSettings, FeatureCells,
};
use scinterp_engine::annotate::enrichment::{
    annotate, Annotation, CatalogQuery, FeatureQuery, Settings, TermRow,
};
use scinterp_engine::annotate::gene_sets::{read_gmt, GeneSetLibrary};
use scinterp_engine::annotate::networks::{
    read_ppi, read_trrust, trrust_target_sets, Network, DEGREE_CLASSES,
};
use scinterp_engine::annotate::Background;
use serde_json::{json, Value};

use crate::extract::absolute;
use crate::table::{Column, Table, TableFormat};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Ranking {
    /// Mean activation over the positions where the feature fired on the gene.
    #[value(name = "conditional_mean")]
    ConditionalMean,
    /// Mean activation × fire rate on the gene.
    #[value(name = "mass")]
    Mass,
}

impl Ranking {
    fn name(self) -> &'static str {
        match self {
            Ranking::ConditionalMean => "conditional_mean",
            Ranking::Mass => "mass",
        }
    }
}

#[derive(Args, Debug)]
pub struct AnnotateArgs {
    /// Feature catalog folders (comma list), as written by `scinterp analyze`. Catalogs given together
    /// (e.g. one per layer) share one BH family (atlas q); each catalog's own q is reported too.
    #[arg(long, value_delimiter = ',', required = true)]
    catalog: Vec<PathBuf>,
    /// Gene-set libraries (comma list of GMT files, MSigDB or Enrichr style); a library is named after
    /// its file's stem. Genes match the catalog's gene ids or symbols, ignoring case.
    #[arg(long, value_delimiter = ',')]
    gene_sets: Vec<PathBuf>,
    /// TRRUST file (TF, target, mode, PMIDs; header line optional): TF target sets as the library
    /// TRRUST_TF_targets, and the directed TF → target edge test TRRUST_edges.
    #[arg(long)]
    trrust: Option<PathBuf>,
    /// Undirected gene–gene edge list (2+ columns, optional header, optional 3rd column of scores): the
    /// edge test PPI_edges.
    #[arg(long)]
    ppi: Option<PathBuf>,
    /// Keep PPI edges whose score (3rd column) is at least this (e.g. 700 for STRING combined scores).
    #[arg(long)]
    ppi_min_score: Option<f64>,
    /// Cell-type enrichment by this column of the token store's cells.tsv.
    #[arg(long)]
    obs_column: Option<String>,
    /// Output folder (created): enrichment, best_terms, edge_enrichment, cell_types tables and
    /// annotate.json.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "parquet")]
    format: TableFormat,
    /// Smallest term tested (genes in the background).
    #[arg(long, default_value_t = 5)]
    min_term_size: usize,
    /// Largest term tested (genes in the background).
    #[arg(long, default_value_t = 500)]
    max_term_size: usize,
    /// Top genes per feature used as its query.
    #[arg(long, default_value_t = 20)]
    top_n: usize,
    /// Which top-gene ranking of the catalog to use.
    #[arg(long, value_enum, default_value = "conditional_mean")]
    ranking: Ranking,
    /// Permutations of the degree-preserving null per edge test.
    #[arg(long, default_value_t = 1000)]
    permutations: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// FDR level: rows with q ≤ alpha (atlas or catalog q) are written.
    #[arg(long, default_value_t = 0.05)]
    alpha: f64,
    /// Print annotate.json to stdout.
    #[arg(long)]
    json: bool,
}

/// Features with fewer query genes are not tested (the published rule).
const MIN_QUERY_GENES: usize = 3;

const FISHER_RULE: &str = "every (feature, term) pair: alive features with >= 3 query genes (top-n genes of the \
     chosen ranking) x every term of every library with size in [min, max] inside the background; plus one \
     edge test per (feature, network). Pairs sharing no gene have p = 1 and count in m. One-sided Fisher = \
     hypergeometric upper tail P[X >= overlap], population = the library's genes in the catalog's background \
     (its genes table), successes = term size in the background, draws = query genes in that population. \
     q_value_atlas: BH over this family for all catalogs of the run; q_value_catalog: BH over one catalog's part.";

const CELL_TYPE_RULE: &str = "features active in >= 10 cells (rows of feature_cells); top cells = the first \
     ceil(10 %) of its active cells by mean_when_active (ties: lower cell index); every label with >= 3 cells \
     in the token store is tested by one-sided Fisher: in_top ~ Hypergeom(population = labelled cells of the \
     store, successes = label_cells, draws = labelled top cells); BH over every (feature, label) pair of all \
     catalogs, pairs with in_top = 0 at p = 1. Empty, nan, NA and None values are unlabelled.";

/// What catalog.json says, and where its tables are.
struct CatalogFiles {
    dir: PathBuf,
    hook: String,
    token_store: Option<PathBuf>,
    ext: String,
}

impl CatalogFiles {
    fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("catalog.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "--catalog {}: cannot read catalog.json; is it a feature catalog folder made by `scinterp analyze`?",
                dir.display()
            )
        })?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        if v["format"].as_str() != Some("scinterp-catalog") {
            bail!(
                "{}: format is {}, expected \"scinterp-catalog\"; is this a catalog made by `scinterp analyze`?",
                path.display(),
                v["format"]
            );
        }
        if v["format_version"].as_u64().is_some_and(|n| n > 1) {
            bail!(
                "{}: catalog format_version {} is newer than this scinterp reads (1); update scinterp",
                path.display(),
                v["format_version"]
            );
        }
        let hook = v["hook"]
            .as_str()
            .with_context(|| format!("{}: no `hook` string", path.display()))?
            .to_string();
        let ext = v["table_format"].as_str().unwrap_or("parquet").to_string();
        if ext != "parquet" && ext != "tsv" {
            bail!(
                "{}: table_format `{ext}`, expected parquet or tsv",
                path.display()
            );
        }
        let token_store = v["token_store"].as_str().map(|s| {
            let p = PathBuf::from(s);
            if p.is_absolute() {
                p
            } else {
                dir.join(p)
            }
        });
        Ok(CatalogFiles {
            dir: dir.to_path_buf(),
            hook,
            token_store,
            ext,
        })
    }

    fn table(&self, name: &str) -> Result<Table> {
        let path = self.dir.join(format!("{name}.{}", self.ext));
        if !path.exists() {
            bail!(
                "catalog {}: {} is missing (catalog.json says table_format {}); the catalog is incomplete: rerun \
                 `scinterp analyze` for it",
                self.dir.display(),
                path.display(),
                self.ext
            );
        }
        Table::read(&path)
    }
}

/// A catalog read into the engine's query form, with the token → background index map.
fn read_query(files: &CatalogFiles, name: &str, args: &AnnotateArgs) -> Result<CatalogQuery> {
    let genes = files.table("genes")?;
    let tokens = genes.i64s("token")?;
    let gene_ids = genes.strs("gene_id")?.into_owned();
    let symbols = genes.strs("symbol")?.into_owned();
    let background = Background::new(gene_ids, symbols)?;
    let mut index_of: HashMap<i64, u32> = HashMap::with_capacity(tokens.len());
    for (i, &t) in tokens.iter().enumerate() {
        if index_of.insert(t, i as u32).is_some() {
            bail!(
                "catalog {}: genes table lists token {t} twice; rerun `scinterp analyze`",
                files.dir.display()
            );
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
        bail!(
            "catalog {}: top_genes has no rows with ranking `{wanted}` (present: {}); choose one with --ranking",
            files.dir.display(),
            present.join(", ")
        );
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
        tracing::warn!(
            "catalog {}: {unknown_tokens} top-gene rows name tokens missing from the genes table; they are left out",
            files.dir.display()
        );
    }
    Ok(CatalogQuery {
        name: name.to_string(),
        background,
        features: queries,
    })
}

/// Reads the obs column of a token store's cells.tsv.
fn read_labels(store: &Path, column: &str) -> Result<CellLabels> {
    let path = store.join("cells.tsv");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read the token store's cell table (needed by --obs-column)",
            path.display()
        )
    })?;
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let Some(col) = header.iter().position(|h| h.trim() == column) else {
        bail!(
            "--obs-column {column}: {} has no such column; its columns are: {} (the first is the cell barcode); \
             keep it with `scinterp tokenize --obs-columns {column}`",
            path.display(),
            header.join(", ")
        );
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
            anyhow::anyhow!(
                "catalog {}: feature_cells row {} has cell {}, not a cell index",
                files.dir.display(),
                r + 1,
                cell[r]
            )
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
    let int = |f: fn(&scinterp_engine::annotate::cell_types::CellTypeRow) -> u64| {
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
}

/// The cell-type inputs: one label set per distinct token store, which one each catalog uses, and each
/// catalog's feature cells.
struct CellInputs {
    labels: Vec<CellLabels>,
    which: Vec<usize>,
    cells: Vec<Vec<FeatureCells>>,
}

/// Writes `value` as pretty JSON to `path` through a temporary file.
fn write_json(path: &Path, value: &Value) -> Result<()> {
    let tmp = path.with_extension("json.partial");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(value)?.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", tmp.display()))
}

pub fn run(args: AnnotateArgs) -> Result<()> {
    let json_out = args.json;
    let summary = annotate_catalogs(&args)?;
    if json_out {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// Runs the whole command and returns annotate.json's content.
pub fn annotate_catalogs(args: &AnnotateArgs) -> Result<Value> {
    let started = std::time::Instant::now();
    if !(args.alpha > 0.0 && args.alpha <= 1.0) {
        bail!("--alpha {}: must be in (0, 1]", args.alpha);
    }
    if args.top_n < MIN_QUERY_GENES {
        bail!(
            "--top-n {}: at least {MIN_QUERY_GENES} genes are needed to test a feature",
            args.top_n
        );
    }
    if args.gene_sets.is_empty() && args.trrust.is_none() && args.ppi.is_none() {
        bail!("nothing to test: give --gene-sets (GMT files), --trrust or --ppi");
    }
    if args.ppi_min_score.is_some() && args.ppi.is_none() {
        bail!("--ppi-min-score needs --ppi");
    }

    // Inputs: libraries and networks first (cheap, and their errors come before reading catalogs).
    let mut libraries: Vec<GeneSetLibrary> = Vec::new();
    for path in &args.gene_sets {
        let lib = read_gmt(path)?;
        if let Some(other) = libraries.iter().find(|l| l.name == lib.name) {
            bail!(
                "--gene-sets: {} and {} are both named {} (libraries are named after the file stem); rename one",
                other.source.display(),
                path.display(),
                lib.name
            );
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
        bail!("--catalog: two catalogs have the same folder name and hook; give each catalog once");
    }
    let t_read = std::time::Instant::now();
    let queries: Vec<CatalogQuery> = files
        .iter()
        .zip(&names)
        .map(|(f, n)| read_query(f, n, args))
        .collect::<Result<_>>()?;
    // Labels and feature cells, read before the long part so that their errors come first.
    let mut cell_inputs: Option<CellInputs> = None;
    if let Some(column) = &args.obs_column {
        let mut stores: Vec<PathBuf> = Vec::new();
        let mut labels: Vec<CellLabels> = Vec::new();
        let mut which = Vec::new();
        let mut cells = Vec::new();
        for f in &files {
            let store = f.token_store.clone().with_context(|| {
                format!(
                    "catalog {}: catalog.json names no token_store, which --obs-column needs",
                    f.dir.display()
                )
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
    tracing::info!(
        "read {} catalogs ({} alive features) and {} libraries in {read_seconds:.1} s",
        queries.len(),
        queries.iter().map(|q| q.features.len()).sum::<usize>(),
        libraries.len()
    );

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
    let bar = crate::progress::bar(2 * tested, 0, "features");
    let t_test = std::time::Instant::now();
    let result = annotate(&queries, &libraries, &networks, &settings, &|k| bar.inc(k))?;
    bar.finish_and_clear();
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
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create --out {}", args.out.display()))?;
    let ext = args.format.ext();
    let out = |name: &str| args.out.join(format!("{name}.{ext}"));
    term_table(&result.term_rows, &names, &result.libraries).write(&out("enrichment"))?;
    term_table(&result.best_rows, &names, &result.libraries).write(&out("best_terms"))?;
    edge_table(&result, &names).write(&out("edge_enrichment"))?;
    if let Some(c) = &cell_result {
        cell_type_table(c, &names).write(&out("cell_types"))?;
    }

    let summary = summary_json(
        args,
        &files,
        &names,
        &libraries,
        &networks,
        &result,
        cell_result.as_ref(),
    );
    let mut summary = summary;
    summary["seconds"] = json!({
        "read": read_seconds,
        "tests": test_seconds,
        "total": started.elapsed().as_secs_f64(),
    });
    write_json(&args.out.join("annotate.json"), &summary)?;
    tracing::info!(
        "{} tests, {} significant at q ≤ {} (atlas); {} rows → {} in {:.1} s",
        result.atlas.m,
        result.atlas.significant,
        args.alpha,
        result.term_rows.len(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}

fn summary_json(
    args: &AnnotateArgs,
    files: &[CatalogFiles],
    names: &[String],
    libraries: &[GeneSetLibrary],
    networks: &[Network],
    result: &Annotation,
    cells: Option<&CellTypeResult>,
) -> Value {
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
    let catalogs: Vec<Value> = result
        .catalogs
        .iter()
        .zip(files)
        .enumerate()
        .map(|(i, (c, f))| {
            let ct = cells.map(|r| {
                let s = &r.catalogs[i];
                json!({
                    "features_tested": s.features_tested,
                    "labels_tested": s.labels_tested,
                    "significant": s.significant,
                    "features_enriched": s.features_enriched,
                })
            });
            json!({
                "name": names[i],
                "hook": f.hook,
                "dir": absolute(&f.dir),
                "token_store": f.token_store.as_ref().map(|p| p.display().to_string()),
                "background_genes": c.background_genes,
                "alive_features": c.alive_features,
                "tested_features": c.tested_features,
                "m": c.m,
                "significant_catalog_q": c.significant_catalog,
                "significant_atlas_q": c.significant_atlas,
                "annotated_features": c.annotated_atlas,
                "annotated_fraction": fraction(c.annotated_atlas, c.alive_features),
                "annotated_features_catalog_q": c.annotated_catalog,
                "annotated_fraction_catalog_q": fraction(c.annotated_catalog, c.alive_features),
                "libraries": c.libraries.iter().map(|l| json!({
                    "library": l.library,
                    "universe_in_background": l.universe,
                    "terms_tested": l.terms_tested,
                    "terms_below_min_size": l.terms_below_min,
                    "terms_above_max_size": l.terms_above_max,
                    "pairs_with_overlap": l.pairs_with_overlap,
                    "significant_atlas_q": l.significant_atlas,
                    "significant_catalog_q": l.significant_catalog,
                })).collect::<Vec<_>>(),
                "networks": c.networks.iter().map(|n| json!({
                    "network": n.network,
                    "edges_in_background": n.edges_in_background,
                    "genes_with_edges": n.genes_with_edges,
                    "features_with_edges": n.features_with_edges,
                    "significant_atlas_q": n.significant_atlas,
                    "significant_catalog_q": n.significant_catalog,
                })).collect::<Vec<_>>(),
                "cell_types": ct,
            })
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
    json!({
        "format": "scinterp-annotation",
        "format_version": 1,
        "inputs": {
            "catalogs": files.iter().zip(names).map(|(f, n)| json!({"name": n, "dir": absolute(&f.dir)})).collect::<Vec<_>>(),
            "gene_sets": libraries.iter().map(|l| json!({
                "library": l.name,
                "path": absolute(&l.source),
                "terms_in_file": l.terms.len(),
                "genes_in_file": l.n_genes(),
            })).collect::<Vec<_>>(),
            "trrust": args.trrust.as_deref().map(absolute),
            "ppi": args.ppi.as_deref().map(absolute),
            "ppi_min_score": args.ppi_min_score,
            "obs_column": args.obs_column,
            "networks": networks.iter().map(|n| json!({
                "network": n.name,
                "path": absolute(&n.source),
                "directed": n.directed,
                "edges_in_file": n.edges.len(),
            })).collect::<Vec<_>>(),
        },
        "settings": {
            "ranking": args.ranking.name(),
            "top_n": args.top_n,
            "min_query_genes": MIN_QUERY_GENES,
            "min_term_size": args.min_term_size,
            "max_term_size": args.max_term_size,
            "permutations": args.permutations,
            "seed": args.seed,
            "alpha": args.alpha,
            "edge_null": format!(
                "each query gene replaced by a random background gene of the same degree bin, without replacement; \
                 bins: log2 classes 0, 1, 2-3, 4-7, 8-15, 16-31, >=32 of out- and in-degree ({} bins) for directed \
                 networks, of the degree ({} bins) for undirected ones, in the network restricted to the \
                 background; p = (1 + #null >= observed) / (B + 1); features with no edge: p = 1, not simulated; \
                 no early stopping",
                DEGREE_CLASSES * DEGREE_CLASSES,
                DEGREE_CLASSES
            ),
        },
        "families": {
            "gene_sets_and_edges": {
                "rule": FISHER_RULE,
                "libraries": result.libraries,
                "networks": result.networks,
                "m": result.atlas.m,
                "tests_with_computed_p": result.atlas.explicit,
                "significant_atlas_q": result.atlas.significant,
                "significant_atlas_q_by_library": significant_by_test,
                "largest_significant_p": result.atlas.p_threshold,
                "m_per_catalog": result.catalogs.iter().map(|c| json!({"name": c.name, "m": c.m})).collect::<Vec<_>>(),
            },
            "cell_types": cells.map(|c| json!({
                "rule": CELL_TYPE_RULE,
                "obs_column": args.obs_column,
                "m": c.m,
                "tests_with_computed_p": c.explicit,
                "significant": c.significant,
            })),
        },
        "annotated": "a feature is annotated when one of its tests (a term or an edge test) has q_value_atlas <= alpha; \
                      fractions are over alive features",
        "catalogs": catalogs,
        "outputs": outputs,
    })
}

fn fraction(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
