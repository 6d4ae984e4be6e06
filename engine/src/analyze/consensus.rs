//! Cross-model consensus of annotated circuit graphs (`scinterp consensus`; issue 19 item 4, after the
//! published comparison of two models' circuits: conserved domain pairs against chance).
//!
//! Each model gives a circuit graph: the edges of a trace table (source feature → target feature,
//! features named by hook and index) and, from an annotation's term table, the terms each feature
//! carries (rows with q ≤ alpha). An edge whose source and target both carry terms yields every
//! (source term, target term) pair; a graph's pair set is the distinct pairs over its edges. Pairs
//! found in both graphs are *conserved*.
//!
//! Null: the edges stay as they are (every node keeps its in- and out-degree) and the term sets are
//! permuted among the annotated nodes of the same hook, in each graph independently; each permutation
//! gives a conserved-pair count. Enrichment = observed / null mean; p = (1 + #{null ≥ observed}) /
//! (1 + permutations). Permutation i draws from `Rng::new(seed, i)`, so the result does not depend on
//! the thread count.
//!
//! Focus sets (optional GMT): a pair touches the focus when one of its terms is a set of the GMT (names
//! compared ignoring case; annotate with that GMT among the libraries so that features can carry its
//! sets). Over-representation of focus-touching pairs among the conserved ones: hypergeometric in the
//! universe of pairs found in either graph, and against the same permutation null.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::annotate::gene_sets::read_gmt;
use crate::annotate::AnnotateError;
use crate::formats::annotation::{read_cell_type_terms, read_feature_terms, FeatureTermRow};
use crate::formats::consensus::{
    ConsensusSettings, ConsensusSummary, FocusSummary, GraphSummary, CONSENSUS_FORMAT,
};
use crate::formats::trace::{read_trace_edges, TraceEdgeRow};
use crate::formats::{absolute, atomic_write, to_json_pretty, Column, Table, TableError, TableFormat};
use crate::rng::Rng;
use crate::stats::hypergeom_upper_tail;

pub const CONSENSUS_FILE: &str = "consensus.json";
const NULL_DESCRIPTION: &str = "term sets permuted among each graph's annotated nodes of the same hook \
     (edges and degrees kept), both graphs independently; Rng(seed, permutation)";

#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Annotate(#[from] AnnotateError),
    #[error(transparent)]
    Write(#[from] crate::formats::FileError),
    #[error(transparent)]
    Output(#[from] crate::formats::OutputError),
    #[error("{0}")]
    Invalid(String),
}

/// One model's inputs.
#[derive(Clone, Debug)]
pub struct GraphInput {
    /// A short name for reports (`a`, `b`, or the model's).
    pub name: String,
    /// A trace edge table (`.parquet` / `.tsv`).
    pub edges: PathBuf,
    /// An annotation folder (its `enrichment` table is read) or a term table file.
    pub annotations: PathBuf,
    /// When the annotation covered catalogs of several models with the same hooks, their catalog names
    /// are `<folder>:<hook>`: the folder name that belongs to this model.
    pub catalog_prefix: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ConsensusConfig {
    pub a: GraphInput,
    pub b: GraphInput,
    pub focus_sets: Option<PathBuf>,
    /// A feature carries a term when the term row's atlas q is ≤ alpha.
    pub alpha: f64,
    /// Only terms of these libraries (empty: all).
    pub libraries: Vec<String>,
    pub permutations: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub format: TableFormat,
    /// Replace an existing output folder (only once the new one is complete).
    pub overwrite: bool,
}

impl GraphInput {
    pub fn new(name: &str, edges: &Path, annotations: &Path) -> Self {
        GraphInput {
            name: name.into(),
            edges: edges.to_path_buf(),
            annotations: annotations.to_path_buf(),
            catalog_prefix: None,
        }
    }
}

impl ConsensusConfig {
    /// The command line's defaults: atlas q ≤ 0.05, every library, 1,000 permutations, seed 0, TSV.
    pub fn new(a: GraphInput, b: GraphInput, out: &Path) -> Self {
        ConsensusConfig {
            a,
            b,
            focus_sets: None,
            alpha: 0.05,
            libraries: Vec::new(),
            permutations: 1000,
            seed: 0,
            out: out.to_path_buf(),
            format: TableFormat::Tsv,
            overwrite: false,
        }
    }
}

/// A circuit graph with term labels: nodes are (hook, feature); `stratum` is the node's hook (the
/// permutation null moves term sets only within a stratum).
#[derive(Clone, Debug, Default)]
pub struct CircuitGraph {
    pub stratum: Vec<u32>,
    /// Sorted, distinct term ids per node (empty: not annotated).
    pub labels: Vec<Vec<u32>>,
    /// (source node, target node) per edge.
    pub edges: Vec<(u32, u32)>,
}

/// A (source term, target term) pair as one sortable key.
fn key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

fn unkey(k: u64) -> (u32, u32) {
    ((k >> 32) as u32, k as u32)
}

impl CircuitGraph {
    /// The distinct term pairs over the edges under `labels`, sorted.
    pub fn pairs(&self, labels: &[Vec<u32>]) -> Vec<u64> {
        let mut out = self.pairs_with_repeats(labels);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn pairs_with_repeats(&self, labels: &[Vec<u32>]) -> Vec<u64> {
        let mut out = Vec::new();
        for &(s, t) in &self.edges {
            for &a in &labels[s as usize] {
                for &b in &labels[t as usize] {
                    out.push(key(a, b));
                }
            }
        }
        out
    }

    /// Pairs with the number of edges that give each, sorted by pair.
    pub fn pair_counts(&self) -> Vec<(u64, usize)> {
        let mut all = self.pairs_with_repeats(&self.labels);
        all.sort_unstable();
        let mut out: Vec<(u64, usize)> = Vec::new();
        for k in all {
            match out.last_mut() {
                Some((p, c)) if *p == k => *c += 1,
                _ => out.push((k, 1)),
            }
        }
        out
    }

    /// The term sets shuffled among the annotated nodes of each stratum (unannotated nodes stay
    /// unannotated, so the number of annotated nodes per hook and every degree are kept).
    pub fn permuted_labels(&self, rng: &mut Rng) -> Vec<Vec<u32>> {
        let mut by_stratum: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (n, l) in self.labels.iter().enumerate() {
            if !l.is_empty() {
                by_stratum.entry(self.stratum[n]).or_default().push(n);
            }
        }
        let mut out = self.labels.clone();
        for nodes in by_stratum.values() {
            let mut order = nodes.clone();
            rng.shuffle(&mut order);
            for (&dst, &src) in nodes.iter().zip(&order) {
                out[dst] = self.labels[src].clone();
            }
        }
        out
    }

    fn terms(&self) -> BTreeSet<u32> {
        self.labels.iter().flatten().copied().collect()
    }
}

/// Number of keys in both sorted, distinct lists, and how many of those satisfy `focus`.
fn intersect(a: &[u64], b: &[u64], focus: &dyn Fn(u64) -> bool) -> (usize, usize) {
    let (mut i, mut j, mut n, mut f) = (0, 0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                f += usize::from(focus(a[i]));
                i += 1;
                j += 1;
            }
        }
    }
    (n, f)
}

/// One conserved pair: its terms (ids) and the edges giving it in each graph.
#[derive(Clone, Debug, PartialEq)]
pub struct ConservedPair {
    pub source_term: u32,
    pub target_term: u32,
    pub edges_a: usize,
    pub edges_b: usize,
}

/// The comparison of two labelled graphs.
#[derive(Clone, Debug)]
pub struct ConsensusResult {
    pub pairs_a: usize,
    pub pairs_b: usize,
    pub shared_terms: usize,
    pub conserved: Vec<ConservedPair>,
    /// Conserved-pair count per permutation.
    pub null: Vec<usize>,
    pub p_value: f64,
    pub focus: Option<FocusResult>,
}

#[derive(Clone, Debug)]
pub struct FocusResult {
    pub universe_pairs: usize,
    pub universe_focus_pairs: usize,
    pub conserved_focus_pairs: usize,
    pub expected: f64,
    pub p_hypergeometric: f64,
    pub null: Vec<usize>,
    pub p_permutation: f64,
}

fn permutation_p(observed: usize, null: &[usize]) -> f64 {
    let ge = null.iter().filter(|&&x| x >= observed).count();
    (1 + ge) as f64 / (1 + null.len()) as f64
}

/// Compares two graphs whose term ids share one dictionary. `focus_term[t]` marks the focus terms
/// (`None`: no focus analysis). `permutations` ≥ 1.
pub fn compare_graphs(
    a: &CircuitGraph,
    b: &CircuitGraph,
    focus_term: Option<&[bool]>,
    permutations: usize,
    seed: u64,
) -> ConsensusResult {
    let is_focus = |k: u64| {
        focus_term.is_some_and(|f| {
            let (s, t) = unkey(k);
            f.get(s as usize).copied().unwrap_or(false) || f.get(t as usize).copied().unwrap_or(false)
        })
    };
    let (ca, cb) = (a.pair_counts(), b.pair_counts());
    let count_b: HashMap<u64, usize> = cb.iter().copied().collect();
    let conserved: Vec<ConservedPair> = ca
        .iter()
        .filter_map(|&(k, na)| {
            count_b.get(&k).map(|&nb| {
                let (s, t) = unkey(k);
                ConservedPair {
                    source_term: s,
                    target_term: t,
                    edges_a: na,
                    edges_b: nb,
                }
            })
        })
        .collect();
    let null_counts: Vec<(usize, usize)> = (0..permutations)
        .into_par_iter()
        .map(|i| {
            let mut rng = Rng::new(seed, i as u64);
            let la = a.permuted_labels(&mut rng);
            let lb = b.permuted_labels(&mut rng);
            intersect(&a.pairs(&la), &b.pairs(&lb), &is_focus)
        })
        .collect();
    let null: Vec<usize> = null_counts.iter().map(|c| c.0).collect();
    let p_value = permutation_p(conserved.len(), &null);
    let shared_terms = a.terms().intersection(&b.terms()).count();
    let focus = focus_term.map(|_| {
        let universe: BTreeSet<u64> = ca.iter().chain(&cb).map(|c| c.0).collect();
        let universe_focus = universe.iter().filter(|&&k| is_focus(k)).count();
        let observed = conserved
            .iter()
            .filter(|c| is_focus(key(c.source_term, c.target_term)))
            .count();
        let n = conserved.len();
        let expected = if universe.is_empty() {
            0.0
        } else {
            n as f64 * universe_focus as f64 / universe.len() as f64
        };
        let p_hypergeometric = if n == 0 {
            1.0
        } else {
            hypergeom_upper_tail(
                observed as u64,
                universe.len() as u64,
                universe_focus as u64,
                n as u64,
            )
        };
        let fnull: Vec<usize> = null_counts.iter().map(|c| c.1).collect();
        FocusResult {
            universe_pairs: universe.len(),
            universe_focus_pairs: universe_focus,
            conserved_focus_pairs: observed,
            expected,
            p_hypergeometric,
            p_permutation: permutation_p(observed, &fnull),
            null: fnull,
        }
    });
    ConsensusResult {
        pairs_a: ca.len(),
        pairs_b: cb.len(),
        shared_terms,
        conserved,
        null,
        p_value,
        focus,
    }
}

/// Term ids shared by both graphs (first-seen order, so ids are deterministic).
#[derive(Default)]
struct Terms {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Terms {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.ids.insert(name.to_string(), i);
        self.names.push(name.to_string());
        i
    }
}

/// The annotation's term table: the folder's `enrichment.parquet` / `.tsv`, or the file itself.
fn term_table_path(p: &Path) -> Result<PathBuf, ConsensusError> {
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    if p.is_dir() {
        for ext in ["parquet", "tsv"] {
            let f = p.join(format!("enrichment.{ext}"));
            if f.is_file() {
                return Ok(f);
            }
        }
        return Err(ConsensusError::Invalid(format!(
            "{}: no enrichment.parquet or enrichment.tsv in this folder; give a `scinterp annotate` output folder or its term table",
            p.display()
        )));
    }
    Err(ConsensusError::Invalid(format!(
        "{}: no such file or folder (expected a `scinterp annotate` output folder or its term table)",
        p.display()
    )))
}

/// An annotation folder's `cell_types` table, when the annotation tested cell types (`--obs-column`):
/// its labels join the terms as the library `cell_types`.
fn cell_types_table(p: &Path) -> Option<PathBuf> {
    ["parquet", "tsv"]
        .iter()
        .map(|ext| p.join(format!("cell_types.{ext}")))
        .find(|f| f.is_file())
}

/// The hook a catalog name stands for, or `None` when the row belongs to another model.
fn catalog_hook<'a>(catalog: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    match (catalog.rsplit_once(':'), prefix) {
        (Some((p, hook)), Some(want)) => (p == want).then_some(hook),
        (Some(_), None) => None,
        (None, Some(_)) => None,
        (None, None) => Some(catalog),
    }
}

/// Builds one model's graph; `terms` is shared with the other model's.
fn build_graph(
    input: &GraphInput,
    edges: &[TraceEdgeRow],
    rows: &[FeatureTermRow],
    term_file: &Path,
    config: &ConsensusConfig,
    terms: &mut Terms,
) -> Result<CircuitGraph, ConsensusError> {
    let mut labels: HashMap<(String, i64), BTreeSet<u32>> = HashMap::new();
    let mut catalogs_seen = BTreeSet::new();
    for r in rows {
        catalogs_seen.insert(r.catalog.as_str());
        let Some(hook) = catalog_hook(&r.catalog, input.catalog_prefix.as_deref()) else {
            continue;
        };
        let wanted = config.libraries.is_empty() || config.libraries.iter().any(|l| l == &r.library);
        if wanted && r.q_value_atlas <= config.alpha {
            let t = terms.id(&r.term);
            labels.entry((hook.to_string(), r.feature)).or_default().insert(t);
        }
    }
    let mut hooks_seen: HashSet<&str> = HashSet::new();
    for c in &catalogs_seen {
        if let Some(h) = catalog_hook(c, input.catalog_prefix.as_deref()) {
            if !hooks_seen.insert(h) {
                return Err(ConsensusError::Invalid(format!(
                    "{}: two catalogs stand for hook {h}; say which is this model's with its catalog prefix",
                    term_file.display()
                )));
            }
        }
    }
    if !rows.is_empty() && hooks_seen.is_empty() {
        let names: Vec<&str> = catalogs_seen.iter().copied().collect();
        return Err(ConsensusError::Invalid(format!(
            "{}: no catalog of model {} (catalogs: {}){}",
            term_file.display(),
            input.name,
            names.join(", "),
            match &input.catalog_prefix {
                Some(p) => format!("; no catalog is named {p}:<hook>"),
                None => "; catalogs named <folder>:<hook> need the model's catalog prefix".into(),
            }
        )));
    }
    let mut node_of: HashMap<(String, i64), u32> = HashMap::new();
    let mut hook_ids: HashMap<String, u32> = HashMap::new();
    let mut g = CircuitGraph::default();
    let mut node = |hook: &str, feature: i64, g: &mut CircuitGraph| -> u32 {
        let k = (hook.to_string(), feature);
        if let Some(&n) = node_of.get(&k) {
            return n;
        }
        let next_hook = hook_ids.len() as u32;
        let h = *hook_ids.entry(hook.to_string()).or_insert(next_hook);
        let n = g.stratum.len() as u32;
        g.stratum.push(h);
        g.labels.push(
            labels
                .get(&k)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        );
        node_of.insert(k, n);
        n
    };
    for e in edges {
        let s = node(&e.source_hook, e.source_feature, &mut g);
        let t = node(&e.target_hook, e.target_feature, &mut g);
        g.edges.push((s, t));
    }
    Ok(g)
}

fn graph_summary(input: &GraphInput, term_file: &Path, g: &CircuitGraph, term_pairs: usize) -> GraphSummary {
    GraphSummary {
        name: input.name.clone(),
        edges_file: absolute(&input.edges),
        annotations_file: absolute(term_file),
        edges: g.edges.len(),
        nodes: g.labels.len(),
        annotated_nodes: g.labels.iter().filter(|l| !l.is_empty()).count(),
        annotated_edges: g
            .edges
            .iter()
            .filter(|&&(s, t)| !g.labels[s as usize].is_empty() && !g.labels[t as usize].is_empty())
            .count(),
        terms: g.terms().len(),
        term_pairs,
    }
}

fn quantile(sorted: &[usize], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * (pos - lo as f64)
}

/// Reads both models' edges and annotations, compares them, writes `consensus.json` and the
/// `conserved_pairs` table into `config.out`, and returns the summary.
pub fn run(config: &ConsensusConfig) -> Result<ConsensusSummary, ConsensusError> {
    let started = std::time::Instant::now();
    if config.permutations == 0 {
        return Err(ConsensusError::Invalid(
            "--permutations must be at least 1 (the p value is a permutation p)".into(),
        ));
    }
    if !(config.alpha > 0.0 && config.alpha <= 1.0) {
        return Err(ConsensusError::Invalid(format!(
            "--alpha {} must lie in (0, 1]",
            config.alpha
        )));
    }
    let staged = crate::formats::StagedDir::begin(&config.out, config.overwrite, "a consensus")?;
    let mut terms = Terms::default();
    let mut graphs = Vec::new();
    for input in [&config.a, &config.b] {
        let term_file = term_table_path(&input.annotations)?;
        let edges = read_trace_edges(&input.edges)?;
        let mut rows = read_feature_terms(&term_file)?;
        if let Some(cell_types) = cell_types_table(&input.annotations) {
            rows.extend(read_cell_type_terms(&cell_types)?);
        }
        let g = build_graph(input, &edges, &rows, &term_file, config, &mut terms)?;
        graphs.push((input, term_file, g));
    }
    let focus = match &config.focus_sets {
        Some(path) => {
            let lib = read_gmt(path)?;
            let names: HashSet<String> = lib.terms.iter().map(|t| t.name.to_lowercase()).collect();
            let marks: Vec<bool> = terms
                .names
                .iter()
                .map(|n| names.contains(&n.to_lowercase()))
                .collect();
            Some((path.clone(), lib.terms.len(), marks))
        }
        None => None,
    };
    let (ga, gb) = (&graphs[0].2, &graphs[1].2);
    let result = compare_graphs(
        ga,
        gb,
        focus.as_ref().map(|f| f.2.as_slice()),
        config.permutations,
        config.seed,
    );

    let table_path = config.format.path(staged.path(), "conserved_pairs");
    let name = |t: u32| terms.names[t as usize].clone();
    let mut table = Table::new()
        .column(
            "source_term",
            Column::Str(result.conserved.iter().map(|c| name(c.source_term)).collect()),
        )
        .column(
            "target_term",
            Column::Str(result.conserved.iter().map(|c| name(c.target_term)).collect()),
        )
        .column(
            "edges_a",
            Column::I64(result.conserved.iter().map(|c| c.edges_a as i64).collect()),
        )
        .column(
            "edges_b",
            Column::I64(result.conserved.iter().map(|c| c.edges_b as i64).collect()),
        );
    if let Some((_, _, marks)) = &focus {
        table = table.column(
            "focus",
            Column::I64(
                result
                    .conserved
                    .iter()
                    .map(|c| i64::from(marks[c.source_term as usize] || marks[c.target_term as usize]))
                    .collect(),
            ),
        );
    }
    table.write(&table_path)?;

    let mut sorted = result.null.clone();
    sorted.sort_unstable();
    let n = sorted.len() as f64;
    let null_mean = sorted.iter().sum::<usize>() as f64 / n;
    let null_sd = if sorted.len() > 1 {
        (sorted
            .iter()
            .map(|&x| (x as f64 - null_mean).powi(2))
            .sum::<f64>()
            / (n - 1.0))
            .sqrt()
    } else {
        0.0
    };
    let focus_summary = match (&focus, &result.focus) {
        (Some((path, sets, marks)), Some(f)) => {
            let present = ga
                .terms()
                .union(&gb.terms())
                .filter(|&&t| marks[t as usize])
                .count();
            Some(FocusSummary {
                gmt: absolute(path),
                sets: *sets,
                focus_terms_present: present,
                universe_pairs: f.universe_pairs,
                universe_focus_pairs: f.universe_focus_pairs,
                conserved_focus_pairs: f.conserved_focus_pairs,
                expected: f.expected,
                fold: (f.expected > 0.0).then(|| f.conserved_focus_pairs as f64 / f.expected),
                p_hypergeometric: f.p_hypergeometric,
                null_mean: f.null.iter().sum::<usize>() as f64 / f.null.len() as f64,
                p_permutation: f.p_permutation,
            })
        }
        _ => None,
    };
    let summary = ConsensusSummary {
        format: CONSENSUS_FORMAT.into(),
        format_version: 1,
        settings: ConsensusSettings {
            alpha: config.alpha,
            q_column: "q_value_atlas".into(),
            libraries: config.libraries.clone(),
            directed: true,
            permutations: config.permutations,
            seed: config.seed,
            null: NULL_DESCRIPTION.into(),
        },
        graphs: vec![
            graph_summary(graphs[0].0, &graphs[0].1, ga, result.pairs_a),
            graph_summary(graphs[1].0, &graphs[1].1, gb, result.pairs_b),
        ],
        shared_terms: result.shared_terms,
        conserved_pairs: result.conserved.len(),
        null_mean,
        null_sd,
        null_q95: quantile(&sorted, 0.95),
        null_max: sorted.last().copied().unwrap_or(0),
        enrichment: (null_mean > 0.0).then(|| result.conserved.len() as f64 / null_mean),
        p_value: result.p_value,
        focus: focus_summary,
        outputs: vec![
            CONSENSUS_FILE.to_string(),
            table_path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ],
        seconds: started.elapsed().as_secs_f64(),
    };
    let text = to_json_pretty(&summary)
        .map_err(|e| ConsensusError::Invalid(format!("cannot serialise {CONSENSUS_FILE}: {e}")))?
        + "\n";
    atomic_write(&staged.path().join(CONSENSUS_FILE), text.as_bytes())?;
    staged.commit()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph with one source node (hook 0) and one target node (hook 1) per edge, labelled as given.
    fn graph(edges: &[(Vec<u32>, Vec<u32>)]) -> CircuitGraph {
        let mut g = CircuitGraph::default();
        for (s, t) in edges {
            let n = g.labels.len() as u32;
            g.stratum.extend([0, 1]);
            g.labels.push(s.clone());
            g.labels.push(t.clone());
            g.edges.push((n, n + 1));
        }
        g
    }

    /// `n` edges whose endpoints carry one random term each: sources from 0..pool, targets from
    /// 1000..1000+pool.
    fn random_edges(n: usize, pool: u32, rng: &mut Rng) -> Vec<(Vec<u32>, Vec<u32>)> {
        (0..n)
            .map(|_| {
                let s = rng.below(pool as usize) as u32;
                let t = 1000 + rng.below(pool as usize) as u32;
                (vec![s], vec![t])
            })
            .collect()
    }

    /// The same 20 pairs (k → 1000 + k) planted in both graphs, among 60 random edges each.
    fn planted(seed: u64) -> (CircuitGraph, CircuitGraph) {
        let mut rng = Rng::new(seed, 99);
        let plant: Vec<(Vec<u32>, Vec<u32>)> = (0..20).map(|k| (vec![k], vec![1000 + k])).collect();
        let mut a = plant.clone();
        a.extend(random_edges(60, 40, &mut rng));
        let mut b = plant;
        b.extend(random_edges(60, 40, &mut rng));
        (graph(&a), graph(&b))
    }

    #[test]
    fn planted_overlap_is_found_and_significant() {
        let (a, b) = planted(1);
        let r = compare_graphs(&a, &b, None, 500, 7);
        for k in 0..20 {
            assert!(
                r.conserved
                    .iter()
                    .any(|c| c.source_term == k && c.target_term == 1000 + k),
                "planted pair {k} missing"
            );
        }
        let mean = r.null.iter().sum::<usize>() as f64 / r.null.len() as f64;
        assert!(r.conserved.len() >= 20);
        assert!(
            r.conserved.len() as f64 > 2.0 * mean,
            "{} vs null mean {mean}",
            r.conserved.len()
        );
        assert!(r.p_value <= 2.0 / 501.0, "p {}", r.p_value);
        // Edge counts per pair are the multiplicities in each graph.
        let c0 = r
            .conserved
            .iter()
            .find(|c| c.source_term == 0 && c.target_term == 1000)
            .unwrap();
        let count = |g: &CircuitGraph| {
            g.edges
                .iter()
                .filter(|&&(s, t)| g.labels[s as usize] == [0] && g.labels[t as usize] == [1000])
                .count()
        };
        assert_eq!((c0.edges_a, c0.edges_b), (count(&a), count(&b)));
    }

    #[test]
    fn independent_labels_are_not_significant() {
        // Both graphs labelled at random from the same pools: the null is the generating process, so
        // p is (conservatively) uniform: few of 20 independent cases may fall below 0.05.
        let mut significant = 0;
        let mut ps = Vec::new();
        for seed in 0..20 {
            let mut rng = Rng::new(seed, 5);
            let a = graph(&random_edges(80, 25, &mut rng));
            let b = graph(&random_edges(80, 25, &mut rng));
            let r = compare_graphs(&a, &b, None, 200, seed);
            assert!(
                !r.conserved.is_empty(),
                "the null case must have chance overlap to test"
            );
            significant += usize::from(r.p_value < 0.05);
            ps.push(r.p_value);
        }
        assert!(
            significant <= 3,
            "{significant} of 20 null cases significant: {ps:?}"
        );
        let mean_p = ps.iter().sum::<f64>() / ps.len() as f64;
        assert!(mean_p > 0.3, "mean p {mean_p} under the null");
    }

    #[test]
    fn permutation_keeps_degrees_and_label_sets_per_hook() {
        let mut g = graph(&[
            (vec![1, 2], vec![10]),
            (vec![3], vec![]),
            (vec![], vec![11, 12]),
            (vec![4], vec![13]),
        ]);
        // A hub: node 0 also sends to node 7.
        g.edges.push((0, 7));
        let mut rng = Rng::new(3, 0);
        let mut moved = false;
        for _ in 0..50 {
            let l = g.permuted_labels(&mut rng);
            for stratum in [0, 1] {
                let mut before: Vec<_> = (0..g.labels.len())
                    .filter(|&n| g.stratum[n] == stratum)
                    .map(|n| g.labels[n].clone())
                    .collect();
                let mut after: Vec<_> = (0..l.len())
                    .filter(|&n| g.stratum[n] == stratum)
                    .map(|n| l[n].clone())
                    .collect();
                before.sort();
                after.sort();
                assert_eq!(before, after, "label sets of hook {stratum} changed");
            }
            for (n, (after, before)) in l.iter().zip(&g.labels).enumerate() {
                assert_eq!(
                    after.is_empty(),
                    before.is_empty(),
                    "node {n} changed annotated state"
                );
            }
            moved |= l != g.labels;
        }
        assert!(moved, "the permutation never moved a label");
    }

    #[test]
    fn result_does_not_depend_on_thread_count() {
        let (a, b) = planted(2);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let r1 = one.install(|| compare_graphs(&a, &b, None, 64, 11));
        let r2 = compare_graphs(&a, &b, None, 64, 11);
        assert_eq!(r1.null, r2.null);
        assert_eq!(r1.conserved, r2.conserved);
    }

    #[test]
    fn focus_pairs_over_represented_among_conserved() {
        // Focus terms 0..20 are exactly the planted (conserved) sources; the random edges draw their
        // sources from 20..60, so focus pairs in the universe are (nearly) only the conserved ones.
        let mut rng = Rng::new(4, 1);
        let plant: Vec<(Vec<u32>, Vec<u32>)> = (0..20).map(|k| (vec![k], vec![1000 + k])).collect();
        let shifted = |rng: &mut Rng| -> Vec<(Vec<u32>, Vec<u32>)> {
            random_edges(60, 40, rng)
                .into_iter()
                .map(|(s, t)| (vec![s[0] + 20], t))
                .collect()
        };
        let (mut ea, mut eb) = (plant.clone(), plant);
        ea.extend(shifted(&mut rng));
        eb.extend(shifted(&mut rng));
        let (a, b) = (graph(&ea), graph(&eb));
        let mut focus = vec![false; 2000];
        focus[..20].iter_mut().for_each(|f| *f = true);
        let r = compare_graphs(&a, &b, Some(&focus), 300, 5);
        let f = r.focus.unwrap();
        assert!(f.conserved_focus_pairs >= 20);
        assert!(f.conserved_focus_pairs as f64 > 1.5 * f.expected, "{f:?}");
        assert!(f.p_hypergeometric < 1e-3, "{f:?}");
        assert!(f.p_permutation <= 2.0 / 301.0, "{f:?}");
        // Without focus marks nothing is reported.
        assert!(compare_graphs(&a, &b, None, 10, 5).focus.is_none());
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    const EDGE_HEADER: &str =
        "source_hook\tsource_feature\ttarget_hook\ttarget_feature\tn_cells\tmean_change\tq\n";
    const TERM_HEADER: &str = "catalog\tfeature\tlibrary\tterm\toverlap\tquery_size\tterm_size\tbackground_size\tp_value\tq_value_atlas\tq_value_catalog\tfold_enrichment\n";

    fn config(
        dir: &Path,
        a_terms: PathBuf,
        b_terms: PathBuf,
        prefix: (Option<&str>, Option<&str>),
    ) -> ConsensusConfig {
        ConsensusConfig {
            a: GraphInput {
                name: "a".into(),
                edges: dir.join("a_edges.tsv"),
                annotations: a_terms,
                catalog_prefix: prefix.0.map(String::from),
            },
            b: GraphInput {
                name: "b".into(),
                edges: dir.join("b_edges.tsv"),
                annotations: b_terms,
                catalog_prefix: prefix.1.map(String::from),
            },
            focus_sets: None,
            alpha: 0.05,
            libraries: vec![],
            permutations: 50,
            seed: 0,
            out: dir.join("out"),
            format: TableFormat::Tsv,
            overwrite: true,
        }
    }

    #[test]
    fn run_reads_the_tables_and_writes_pairs_and_summary() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (l0, l1) = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post");
        write(
            &d.join("a_edges.tsv"),
            &format!("{EDGE_HEADER}{l0}\t1\t{l1}\t7\t10\t0.5\t0.01\n{l0}\t2\t{l1}\t8\t10\t-0.2\t0.02\n{l0}\t3\t{l1}\t8\t10\t0.1\t0.02\n"),
        );
        write(
            &d.join("b_edges.tsv"),
            &format!("{EDGE_HEADER}{l0}\t5\t{l1}\t9\t10\t0.5\t0.01\n"),
        );
        std::fs::create_dir(d.join("ann_a")).unwrap();
        // a: 1 → HEME, 7 → ERY, 2 → MYELOID, 8 → ERY; a row above alpha and a row of another library
        // that --libraries excludes.
        write(
            &d.join("ann_a/enrichment.tsv"),
            &format!(
                "{TERM_HEADER}{l0}\t1\tH\tHEME\t3\t20\t50\t900\t1e-5\t0.001\t0.001\t5\n\
                 {l1}\t7\tH\tERY\t3\t20\t50\t900\t1e-5\t0.001\t0.001\t5\n\
                 {l0}\t2\tH\tMYELOID\t3\t20\t50\t900\t1e-5\t0.001\t0.001\t5\n\
                 {l1}\t8\tH\tERY\t3\t20\t50\t900\t1e-5\t0.001\t0.001\t5\n\
                 {l0}\t3\tH\tWEAK\t3\t20\t50\t900\t0.01\t0.2\t0.04\t2\n\
                 {l0}\t3\tOTHER\tSKIPPED\t3\t20\t50\t900\t1e-5\t0.001\t0.001\t5\n"
            ),
        );
        // b's annotation covered two models (catalog names with folder prefixes).
        write(
            &d.join("b_terms.tsv"),
            &format!(
                "{TERM_HEADER}sg:{l0}\t5\tH\tHEME\t3\t20\t50\t900\t1e-5\t0.001\t0.001\t5\n\
                 sg:{l1}\t9\tH\tERY\t3\t20\t50\t900\t1e-5\t0.001\t0.001\t5\n\
                 gf:{l0}\t5\tH\tMYELOID\t3\t20\t50\t900\t1e-5\t0.001\t0.001\t5\n"
            ),
        );
        let mut c = config(d, d.join("ann_a"), d.join("b_terms.tsv"), (None, Some("sg")));
        c.libraries = vec!["H".into()];
        let s = run(&c).unwrap();
        assert_eq!(s.graphs[0].edges, 3);
        assert_eq!(s.graphs[0].nodes, 5);
        // Node 3 carries nothing: WEAK is above alpha and SKIPPED is another library.
        assert_eq!(s.graphs[0].annotated_nodes, 4);
        assert_eq!((s.graphs[0].annotated_edges, s.graphs[0].term_pairs), (2, 2));
        assert_eq!((s.graphs[1].annotated_nodes, s.graphs[1].term_pairs), (2, 1));
        assert_eq!(s.conserved_pairs, 1);
        assert_eq!(s.shared_terms, 2);
        let table = std::fs::read_to_string(d.join("out/conserved_pairs.tsv")).unwrap();
        assert_eq!(
            table,
            "source_term\ttarget_term\tedges_a\tedges_b\nHEME\tERY\t1\t1\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("out/consensus.json")).unwrap()).unwrap();
        assert_eq!(json["conserved_pairs"], 1);
        assert!(json["p_value"].as_f64().unwrap() > 0.0);

        // The gf catalog in b's file stands for the same hook: without a prefix that is refused.
        let err = run(&config(d, d.join("ann_a"), d.join("b_terms.tsv"), (None, None))).unwrap_err();
        assert!(
            err.to_string().contains("b_terms.tsv") && err.to_string().contains("catalog prefix"),
            "{err}"
        );
    }

    #[test]
    fn cell_type_rows_join_the_terms_as_their_own_library() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (l0, l1) = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post");
        write(
            &d.join("a_edges.tsv"),
            &format!("{EDGE_HEADER}{l0}\t1\t{l1}\t2\t10\t0.5\t0.01\n"),
        );
        write(
            &d.join("b_edges.tsv"),
            &format!("{EDGE_HEADER}{l0}\t4\t{l1}\t6\t10\t0.5\t0.01\n"),
        );
        let header =
            "catalog\tfeature\tlabel\tin_top\ttop_size\tlabel_cells\tn_cells\tp_value\tq_value\tq_family\n";
        for (folder, src, dst) in [("ann_a", 1, 2), ("ann_b", 4, 6)] {
            std::fs::create_dir(d.join(folder)).unwrap();
            write(&d.join(folder).join("enrichment.tsv"), TERM_HEADER);
            // Source marks erythroid cells, target monocytes; a third row is above alpha.
            write(
                &d.join(folder).join("cell_types.tsv"),
                &format!(
                    "{header}{l0}\t{src}\t2Ery\t40\t100\t300\t2730\t1e-9\t1e-8\tcell_types\n\
                     {l1}\t{dst}\t14Mo\t30\t100\t200\t2730\t1e-7\t1e-6\tcell_types\n\
                     {l1}\t{dst}\t7MEP\t5\t100\t100\t2730\t0.1\t0.3\tcell_types\n"
                ),
            );
        }
        let mut c = config(d, d.join("ann_a"), d.join("ann_b"), (None, None));
        c.libraries = vec![crate::formats::annotation::CELL_TYPES_LIBRARY.into()];
        let s = run(&c).unwrap();
        assert_eq!((s.graphs[0].annotated_nodes, s.graphs[0].term_pairs), (2, 1));
        assert_eq!(s.conserved_pairs, 1);
        let table = std::fs::read_to_string(d.join("out/conserved_pairs.tsv")).unwrap();
        assert!(table.ends_with("2Ery\t14Mo\t1\t1\n"), "{table}");
        // Fold enrichment of the first row: (40/100) / (300/2730).
        let rows = crate::formats::annotation::read_cell_type_terms(&d.join("ann_a/cell_types.tsv")).unwrap();
        assert!((rows[0].fold_enrichment - 0.4 / (300.0 / 2730.0)).abs() < 1e-12);
        // Another library filter leaves no cell-type terms.
        c.libraries = vec!["H".into()];
        assert_eq!(run(&c).unwrap().conserved_pairs, 0);
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(&d.join("a_edges.tsv"), "source_hook\tsource_feature\n");
        write(&d.join("b_edges.tsv"), EDGE_HEADER);
        write(&d.join("t.tsv"), TERM_HEADER);
        let err = run(&config(d, d.join("t.tsv"), d.join("t.tsv"), (None, None))).unwrap_err();
        assert!(
            err.to_string().contains("a_edges.tsv") && err.to_string().contains("target_hook"),
            "{err}"
        );
        let err = run(&config(d, d.join("nope"), d.join("t.tsv"), (None, None))).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let mut c = config(d, d.join("t.tsv"), d.join("t.tsv"), (None, None));
        c.permutations = 0;
        assert!(run(&c).unwrap_err().to_string().contains("--permutations"));
    }
}
