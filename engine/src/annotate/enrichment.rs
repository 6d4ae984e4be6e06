//! Gene-set and edge enrichment of feature catalogs, with BH over every test (methods A8–A11, A22).
//!
//! **Query.** A feature's query genes are its top genes (distinct background genes, in rank order). A
//! feature is tested when it is alive and has at least `min_query_genes` of them.
//!
//! **Fisher test.** For a library with universe U (its genes in the background, N = |U|), a term T
//! (K = |T| genes in the background, K in [min, max]) and a feature with n = |query ∩ U| genes of which
//! a lie in T: p = P[X ≥ a] for X ~ Hypergeom(N, K, n), the one-sided Fisher exact test
//! (`scipy.stats.hypergeom.sf(a − 1, N, K, n)`), computed in log space.
//!
//! **The families (A9).** The gene-set family: every (tested feature, tested term) pair of every
//! library. Pairs that share no gene (a = 0) have p = 1 exactly and are counted without being computed;
//! nothing is filtered on the outcome. The network-edge family, separate: one edge test per (tested
//! feature, network) (features with no edge at p = 1). A permutation p is at least 1/(B + 1), so in the
//! gene-set family of ~10⁸ tests it could never pass BH; in its own family of features × networks it
//! can. Each family has an atlas version (all catalogs given together) and a per-catalog one; both
//! q-values are reported.
//!
//! **Cost.** Only pairs that share a gene are touched, through each library's inverted index gene →
//! terms. The p-value of such a pair depends on (library, n, a, K) alone, so pairs are counted per key in
//! a first pass, each distinct key's tail is computed once, and the BH families are built from those
//! counts (memory follows the number of distinct p-values, not the ~10⁹ pairs). A second pass re-walks
//! the pairs and writes the rows whose p is at most the largest significant p of either family.

use rayon::prelude::*;

use super::gene_sets::{GeneSetLibrary, MappedLibrary};
use super::networks::{EdgeScratch, EdgeTest, MappedNetwork, Network};
use super::{AnnotateError, Background, FastMap};
use crate::rng::{splitmix64, Rng};
use crate::stats::{hypergeom_upper_tail, BhFamily};

/// One feature's query: its id and its top genes as distinct background indices, in rank order.
#[derive(Clone, Debug)]
pub struct FeatureQuery {
    pub feature: i64,
    pub genes: Vec<u32>,
}

/// One catalog to annotate: its name (the hook), background, and alive features.
#[derive(Clone, Debug)]
pub struct CatalogQuery {
    pub name: String,
    pub background: Background,
    /// Alive features with their queries (a feature with too few genes is counted, not tested).
    pub features: Vec<FeatureQuery>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub min_term_size: usize,
    pub max_term_size: usize,
    /// Features with fewer query genes are not tested (the published rule: 3).
    pub min_query_genes: usize,
    pub permutations: usize,
    pub seed: u64,
    pub alpha: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            min_term_size: 5,
            max_term_size: 500,
            min_query_genes: 3,
            permutations: 1000,
            seed: 0,
            alpha: 0.05,
        }
    }
}

/// A (feature, term) test reported in the output.
#[derive(Clone, Debug, PartialEq)]
pub struct TermRow {
    pub catalog: usize,
    pub feature: i64,
    pub library: usize,
    pub term: String,
    pub overlap: u32,
    /// n: the feature's query genes in the library's universe.
    pub query_size: u32,
    /// K: the term's genes in the background.
    pub term_size: u32,
    /// N: the library's universe in the background (the population of the test).
    pub background_size: u32,
    pub p_value: f64,
    pub q_value_atlas: f64,
    pub q_value_catalog: f64,
    /// (a/n) / (K/N).
    pub fold_enrichment: f64,
    /// Display names of the shared genes, in the feature's rank order.
    pub overlap_genes: Vec<String>,
}

/// A (feature, network) edge test with at least one observed edge.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeRow {
    pub catalog: usize,
    pub feature: i64,
    pub network: usize,
    pub observed_edges: u32,
    pub null_mean: f64,
    pub p_value: f64,
    pub q_value_atlas: f64,
    pub q_value_catalog: f64,
    pub permutations: u32,
    /// `A>B` (directed, TF > target) or `A-B` (undirected).
    pub edges: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct LibraryStats {
    pub library: String,
    pub universe: usize,
    pub terms_tested: usize,
    pub terms_below_min: usize,
    pub terms_above_max: usize,
    /// Pairs with at least one shared gene (the p-values that were computed).
    pub pairs_with_overlap: u64,
    pub significant_atlas: u64,
    pub significant_catalog: u64,
}

#[derive(Clone, Debug)]
pub struct NetworkStats {
    pub network: String,
    pub edges_in_background: usize,
    pub genes_with_edges: usize,
    pub features_with_edges: u64,
    pub significant_atlas: u64,
    pub significant_catalog: u64,
}

#[derive(Clone, Debug)]
pub struct CatalogResult {
    pub name: String,
    pub background_genes: usize,
    pub alive_features: usize,
    pub tested_features: usize,
    pub libraries: Vec<LibraryStats>,
    pub networks: Vec<NetworkStats>,
    /// Size of the catalog's own gene-set family, and of its network-edge family.
    pub m: u64,
    pub m_edges: u64,
    pub significant_catalog: u64,
    pub significant_atlas: u64,
    /// Features with a test at q ≤ alpha (atlas q; catalog q).
    pub annotated_atlas: usize,
    pub annotated_catalog: usize,
}

#[derive(Clone, Debug)]
pub struct FamilyStats {
    pub m: u64,
    /// Tests whose p-value was computed (a pair sharing a gene, or an edge test with an edge).
    pub explicit: u64,
    pub significant: u64,
    /// Largest significant p (None when nothing is significant).
    pub p_threshold: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Annotation {
    /// Library names in the order of `TermRow::library`.
    pub libraries: Vec<String>,
    /// Network names in the order of `EdgeRow::network`.
    pub networks: Vec<String>,
    pub catalogs: Vec<CatalogResult>,
    /// The gene-set family over all catalogs.
    pub atlas: FamilyStats,
    /// The network-edge family over all catalogs (None without networks).
    pub edge_atlas: Option<FamilyStats>,
    /// Rows significant in either family, by catalog, feature, then p.
    pub term_rows: Vec<TermRow>,
    /// Each feature's lowest-p term, for features with a term row.
    pub best_rows: Vec<TermRow>,
    /// Every edge test with at least one observed edge.
    pub edge_rows: Vec<EdgeRow>,
}

/// (library, n, a, K): everything a pair's p-value depends on (N is the library's, per catalog).
type Key = (u16, u32, u32, u32);

/// A catalog's libraries and networks on its background, and its tested features.
struct Prepared<'a> {
    libs: Vec<MappedLibrary>,
    nets: Vec<MappedNetwork>,
    tested: Vec<&'a FeatureQuery>,
}

/// One worker's buffers.
struct Worker {
    overlap: Vec<Vec<u32>>,
    touched: Vec<u32>,
    edge: Vec<EdgeScratch>,
}

impl Worker {
    fn new(p: &Prepared) -> Self {
        Worker {
            overlap: p.libs.iter().map(|l| vec![0; l.terms.len()]).collect(),
            touched: Vec::new(),
            edge: p.nets.iter().map(MappedNetwork::scratch).collect(),
        }
    }

    /// Calls `visit(term, n, a)` for every term of `lib` that shares a gene with `genes`; returns n.
    fn walk(&mut self, li: usize, lib: &MappedLibrary, genes: &[u32], mut visit: impl FnMut(u32, u32, u32)) {
        let n = genes.iter().filter(|&&g| lib.in_universe[g as usize]).count() as u32;
        if n == 0 {
            return;
        }
        let counts = &mut self.overlap[li];
        self.touched.clear();
        for &g in genes {
            for &t in lib.terms_of(g) {
                let c = &mut counts[t as usize];
                if *c == 0 {
                    self.touched.push(t);
                }
                *c += 1;
            }
        }
        for &t in &self.touched {
            let a = std::mem::take(&mut counts[t as usize]);
            visit(t, n, a);
        }
    }
}

/// A stable 64-bit hash of a catalog name (FNV-1a), so that a catalog's permutation streams do not
/// depend on which other catalogs are annotated with it.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn edge_rng(seed: u64, catalog: &str, feature: i64, network: usize) -> Rng {
    let stream = splitmix64(splitmix64(name_hash(catalog) ^ feature as u64) ^ network as u64);
    Rng::new(seed, stream)
}

/// Annotates the catalogs (see the module documentation). `tick(k)` is called as features are done: the
/// total is twice the number of tested features (two passes).
pub fn annotate(
    catalogs: &[CatalogQuery],
    libraries: &[GeneSetLibrary],
    networks: &[Network],
    settings: &Settings,
    tick: &(dyn Fn(u64) + Sync),
) -> Result<Annotation, AnnotateError> {
    if settings.min_term_size == 0 || settings.min_term_size > settings.max_term_size {
        return Err(AnnotateError::Invalid(format!(
            "term sizes [{}, {}]: need 1 ≤ min ≤ max",
            settings.min_term_size, settings.max_term_size
        )));
    }
    if libraries.is_empty() && networks.is_empty() {
        return Err(AnnotateError::Invalid(
            "no gene-set library and no network to test".into(),
        ));
    }
    if libraries.len() > u16::MAX as usize {
        return Err(AnnotateError::Invalid("more than 65,535 libraries".into()));
    }
    if !networks.is_empty() && settings.permutations == 0 {
        return Err(AnnotateError::Invalid(
            "edge tests need at least one permutation (--permutations)".into(),
        ));
    }

    // Pass 1: count pairs per p-value key; run the edge tests.
    let mut prepared = Vec::with_capacity(catalogs.len());
    let mut pvalues: Vec<FastMap<Key, (f64, u64)>> = Vec::with_capacity(catalogs.len());
    let mut edge_tests: Vec<Vec<(usize, usize, EdgeTest)>> = Vec::with_capacity(catalogs.len());
    for cat in catalogs {
        let in_catalog = |e: AnnotateError| AnnotateError::Invalid(format!("catalog {}: {e}", cat.name));
        let libs = libraries
            .iter()
            .map(|l| MappedLibrary::map(l, &cat.background, settings.min_term_size, settings.max_term_size))
            .collect::<Result<Vec<_>, _>>()
            .map_err(in_catalog)?;
        let nets = networks
            .iter()
            .map(|n| MappedNetwork::map(n, &cat.background))
            .collect::<Result<Vec<_>, _>>()
            .map_err(in_catalog)?;
        let tested: Vec<&FeatureQuery> = cat
            .features
            .iter()
            .filter(|f| f.genes.len() >= settings.min_query_genes)
            .collect();
        let p = Prepared { libs, nets, tested };
        let (counts, mut edges) = p
            .tested
            .par_iter()
            .enumerate()
            .fold(
                || (Worker::new(&p), FastMap::<Key, u64>::default(), Vec::new()),
                |(mut w, mut counts, mut edges), (fi, f)| {
                    for (li, lib) in p.libs.iter().enumerate() {
                        w.walk(li, lib, &f.genes, |t, n, a| {
                            let k = lib.terms[t as usize].genes.len() as u32;
                            *counts.entry((li as u16, n, a, k)).or_insert(0) += 1;
                        });
                    }
                    for (ni, net) in p.nets.iter().enumerate() {
                        let mut rng = edge_rng(settings.seed, &cat.name, f.feature, ni);
                        let t = net.test(&f.genes, settings.permutations, &mut rng, &mut w.edge[ni]);
                        if t.observed > 0 {
                            edges.push((fi, ni, t));
                        }
                    }
                    tick(1);
                    (w, counts, edges)
                },
            )
            .map(|(_, counts, edges)| (counts, edges))
            .reduce(
                || (FastMap::default(), Vec::new()),
                |(mut a, mut ea), (b, eb)| {
                    if a.len() < b.len() {
                        return merge_counts(b, a, eb, ea);
                    }
                    for (k, v) in b {
                        *a.entry(k).or_insert(0) += v;
                    }
                    ea.extend(eb);
                    (a, ea)
                },
            );
        edges.sort_by_key(|&(fi, ni, _)| (fi, ni));
        // Each distinct key's tail, once.
        let keyed: Vec<(Key, u64)> = counts.into_iter().collect();
        let with_p: Vec<(Key, (f64, u64))> = keyed
            .into_par_iter()
            .map(|((li, n, a, k), count)| {
                let big_n = p.libs[li as usize].universe as u64;
                let pv = hypergeom_upper_tail(u64::from(a), big_n, u64::from(k), u64::from(n));
                ((li, n, a, k), (pv, count))
            })
            .collect();
        pvalues.push(with_p.into_iter().collect());
        edge_tests.push(edges);
        prepared.push(p);
    }

    // The families: gene sets, and network edges on their own.
    let n_terms = |p: &Prepared| p.libs.iter().map(|l| l.terms.len() as u64).sum::<u64>();
    let (pv_ref, edges_ref) = (&pvalues, &edge_tests);
    let sets_of = move |c: usize| pv_ref[c].values().copied();
    let edges_of = move |c: usize| edges_ref[c].iter().map(|(_, _, t)| (t.p_value, 1));
    let invalid = |e: crate::stats::StatsError| AnnotateError::Invalid(format!("BH: {e} (internal error)"));
    let mut catalog_families = Vec::with_capacity(catalogs.len());
    let mut edge_families = Vec::with_capacity(catalogs.len());
    let (mut m_atlas, mut m_edges_atlas) = (0u64, 0u64);
    for (c, p) in prepared.iter().enumerate() {
        let m = p.tested.len() as u64 * n_terms(p);
        let m_edges = p.tested.len() as u64 * p.nets.len() as u64;
        m_atlas += m;
        m_edges_atlas += m_edges;
        catalog_families.push(BhFamily::from_counts(sets_of(c), m).map_err(invalid)?);
        edge_families.push(BhFamily::from_counts(edges_of(c), m_edges).map_err(invalid)?);
    }
    let atlas = BhFamily::from_counts((0..catalogs.len()).flat_map(sets_of), m_atlas).map_err(invalid)?;
    let edge_atlas =
        BhFamily::from_counts((0..catalogs.len()).flat_map(edges_of), m_edges_atlas).map_err(invalid)?;
    let atlas_threshold = atlas.p_threshold(settings.alpha);

    // Pass 2: the rows.
    let mut term_rows = Vec::new();
    let mut best_rows = Vec::new();
    let mut edge_rows = Vec::new();
    let mut results = Vec::with_capacity(catalogs.len());
    for (c, (cat, p)) in catalogs.iter().zip(&prepared).enumerate() {
        let family = &catalog_families[c];
        let threshold = match (atlas_threshold, family.p_threshold(settings.alpha)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let per_feature: Vec<Vec<TermRow>> = match threshold {
            None => {
                tick(p.tested.len() as u64);
                Vec::new()
            }
            Some(threshold) => p
                .tested
                .par_iter()
                .map_init(
                    || Worker::new(p),
                    |w, f| {
                        let mut rows = Vec::new();
                        for (li, lib) in p.libs.iter().enumerate() {
                            w.walk(li, lib, &f.genes, |t, n, a| {
                                let term = &lib.terms[t as usize];
                                let k = term.genes.len() as u32;
                                let pv = pvalues[c][&(li as u16, n, a, k)].0;
                                if pv > threshold {
                                    return;
                                }
                                let overlap_genes = f
                                    .genes
                                    .iter()
                                    .filter(|g| term.genes.binary_search(g).is_ok())
                                    .map(|&g| cat.background.display(g).to_string())
                                    .collect();
                                rows.push(TermRow {
                                    catalog: c,
                                    feature: f.feature,
                                    library: li,
                                    term: term.name.clone(),
                                    overlap: a,
                                    query_size: n,
                                    term_size: k,
                                    background_size: lib.universe as u32,
                                    p_value: pv,
                                    q_value_atlas: atlas.q_value(pv),
                                    q_value_catalog: family.q_value(pv),
                                    fold_enrichment: (f64::from(a) / f64::from(n))
                                        / (f64::from(k) / lib.universe as f64),
                                    overlap_genes,
                                });
                            });
                        }
                        rows.sort_by(|x, y| {
                            x.p_value
                                .total_cmp(&y.p_value)
                                .then(x.library.cmp(&y.library))
                                .then(x.term.cmp(&y.term))
                        });
                        tick(1);
                        rows
                    },
                )
                .collect(),
        };
        let mut libs: Vec<LibraryStats> = p
            .libs
            .iter()
            .zip(libraries)
            .enumerate()
            .map(|(li, (l, src))| LibraryStats {
                library: src.name.clone(),
                universe: l.universe,
                terms_tested: l.terms.len(),
                terms_below_min: l.terms_below_min,
                terms_above_max: l.terms_above_max,
                pairs_with_overlap: pvalues[c]
                    .iter()
                    .filter(|(k, _)| k.0 as usize == li)
                    .map(|(_, v)| v.1)
                    .sum(),
                significant_atlas: 0,
                significant_catalog: 0,
            })
            .collect();
        let mut nets: Vec<NetworkStats> = p
            .nets
            .iter()
            .enumerate()
            .map(|(ni, n)| NetworkStats {
                network: n.name.clone(),
                edges_in_background: n.edges_in_background,
                genes_with_edges: n.genes_with_edges,
                features_with_edges: edge_tests[c].iter().filter(|e| e.1 == ni).count() as u64,
                significant_atlas: 0,
                significant_catalog: 0,
            })
            .collect();
        let alpha = settings.alpha;
        let mut annotated_atlas = vec![false; p.tested.len()];
        let mut annotated_catalog = vec![false; p.tested.len()];
        for (fi, rows) in per_feature.into_iter().enumerate() {
            for r in &rows {
                let (sa, sc) = (r.q_value_atlas <= alpha, r.q_value_catalog <= alpha);
                libs[r.library].significant_atlas += u64::from(sa);
                libs[r.library].significant_catalog += u64::from(sc);
                annotated_atlas[fi] |= sa;
                annotated_catalog[fi] |= sc;
            }
            if let Some(best) = rows.first() {
                best_rows.push(best.clone());
            }
            term_rows.extend(rows);
        }
        for (fi, ni, t) in &edge_tests[c] {
            let (qa, qc) = (edge_atlas.q_value(t.p_value), edge_families[c].q_value(t.p_value));
            nets[*ni].significant_atlas += u64::from(qa <= alpha);
            nets[*ni].significant_catalog += u64::from(qc <= alpha);
            annotated_atlas[*fi] |= qa <= alpha;
            annotated_catalog[*fi] |= qc <= alpha;
            let net = &p.nets[*ni];
            let sep = if net.directed { ">" } else { "-" };
            edge_rows.push(EdgeRow {
                catalog: c,
                feature: p.tested[*fi].feature,
                network: *ni,
                observed_edges: t.observed,
                null_mean: t.null_mean,
                p_value: t.p_value,
                q_value_atlas: qa,
                q_value_catalog: qc,
                permutations: t.permutations,
                edges: t
                    .edges
                    .iter()
                    .map(|&(a, b)| format!("{}{sep}{}", cat.background.display(a), cat.background.display(b)))
                    .collect(),
            });
        }
        results.push(CatalogResult {
            name: cat.name.clone(),
            background_genes: cat.background.len(),
            alive_features: cat.features.len(),
            tested_features: p.tested.len(),
            m: family.m(),
            m_edges: edge_families[c].m(),
            significant_catalog: family.significant(alpha) + edge_families[c].significant(alpha),
            significant_atlas: libs.iter().map(|l| l.significant_atlas).sum::<u64>()
                + nets.iter().map(|n| n.significant_atlas).sum::<u64>(),
            libraries: libs,
            networks: nets,
            annotated_atlas: annotated_atlas.iter().filter(|&&b| b).count(),
            annotated_catalog: annotated_catalog.iter().filter(|&&b| b).count(),
        });
    }
    Ok(Annotation {
        libraries: libraries.iter().map(|l| l.name.clone()).collect(),
        networks: networks.iter().map(|n| n.name.clone()).collect(),
        catalogs: results,
        atlas: FamilyStats {
            m: atlas.m(),
            explicit: atlas.explicit(),
            significant: atlas.significant(settings.alpha),
            p_threshold: atlas_threshold,
        },
        edge_atlas: (!networks.is_empty()).then(|| FamilyStats {
            m: edge_atlas.m(),
            explicit: edge_atlas.explicit(),
            significant: edge_atlas.significant(settings.alpha),
            p_threshold: edge_atlas.p_threshold(settings.alpha),
        }),
        term_rows,
        best_rows,
        edge_rows,
    })
}

type EdgeList = Vec<(usize, usize, EdgeTest)>;

/// Merges the smaller count map into the larger one.
fn merge_counts(
    mut big: FastMap<Key, u64>,
    small: FastMap<Key, u64>,
    mut edges_a: EdgeList,
    edges_b: EdgeList,
) -> (FastMap<Key, u64>, EdgeList) {
    for (k, v) in small {
        *big.entry(k).or_insert(0) += v;
    }
    edges_a.extend(edges_b);
    (big, edges_a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotate::gene_sets::GeneSet;
    use crate::stats::bh_qvalues;

    fn background(n: usize) -> Background {
        let ids = (0..n).map(|i| format!("ENSG{i:011}")).collect();
        let symbols = (0..n).map(|i| format!("G{i}")).collect();
        Background::new(ids, symbols).unwrap()
    }

    fn library(name: &str, terms: &[(&str, Vec<usize>)]) -> GeneSetLibrary {
        GeneSetLibrary {
            name: name.into(),
            source: format!("{name}.gmt").into(),
            terms: terms
                .iter()
                .map(|(t, genes)| GeneSet {
                    name: t.to_string(),
                    genes: genes.iter().map(|g| format!("G{g}")).collect(),
                })
                .collect(),
        }
    }

    /// Brute force over every pair with plain BH on the full vector: the reference for `annotate`.
    #[test]
    fn equals_brute_force_bh_over_every_pair() {
        let n_genes = 300;
        let mut rng = Rng::new(3, 0);
        let mut terms = Vec::new();
        for t in 0..40 {
            let size = 3 + rng.below(40);
            let genes: Vec<usize> = (0..size).map(|_| rng.below(n_genes + 20)).collect();
            terms.push((format!("T{t}"), genes));
        }
        let planted: Vec<usize> = (0..30).collect();
        terms.push(("PLANTED".to_string(), planted.clone()));
        let term_refs: Vec<(&str, Vec<usize>)> = terms.iter().map(|(n, g)| (n.as_str(), g.clone())).collect();
        let libs = [library("A", &term_refs[..20]), library("B", &term_refs[20..])];
        let mut catalogs = Vec::new();
        for c in 0..2 {
            let mut features = Vec::new();
            for f in 0..25 {
                let mut genes: Vec<u32> = if f == 0 {
                    planted[..12].iter().map(|&g| g as u32).collect()
                } else {
                    (0..(1 + rng.below(15)))
                        .map(|_| rng.below(n_genes) as u32)
                        .collect()
                };
                genes.dedup();
                let mut seen = std::collections::HashSet::new();
                genes.retain(|g| seen.insert(*g));
                features.push(FeatureQuery {
                    feature: f as i64 * 3 + c,
                    genes,
                });
            }
            catalogs.push(CatalogQuery {
                name: format!("blocks.{c}.hook_resid_post"),
                background: background(n_genes),
                features,
            });
        }
        let settings = Settings {
            min_term_size: 5,
            max_term_size: 35,
            alpha: 0.2,
            ..Settings::default()
        };
        let out = annotate(&catalogs, &libs, &[], &settings, &|_| {}).unwrap();

        // Reference: every pair, p by the definition, BH on the whole vector.
        struct Pair {
            catalog: usize,
            feature: i64,
            library: usize,
            term: String,
            p: f64,
        }
        let mut pairs = Vec::new();
        for (c, cat) in catalogs.iter().enumerate() {
            for f in cat.features.iter().filter(|f| f.genes.len() >= 3) {
                for (li, lib) in libs.iter().enumerate() {
                    let m = MappedLibrary::map(lib, &cat.background, 5, 35).unwrap();
                    let n = f.genes.iter().filter(|&&g| m.in_universe[g as usize]).count() as u64;
                    for t in &m.terms {
                        let a = f.genes.iter().filter(|g| t.genes.contains(g)).count() as u64;
                        let p = hypergeom_upper_tail(a, m.universe as u64, t.genes.len() as u64, n);
                        pairs.push(Pair {
                            catalog: c,
                            feature: f.feature,
                            library: li,
                            term: t.name.clone(),
                            p,
                        });
                    }
                }
            }
        }
        let all_p: Vec<f64> = pairs.iter().map(|p| p.p).collect();
        let q_atlas = bh_qvalues(&all_p).unwrap();
        assert_eq!(out.atlas.m, pairs.len() as u64);
        let mut want = Vec::new();
        for c in 0..2 {
            let idx: Vec<usize> = (0..pairs.len()).filter(|&i| pairs[i].catalog == c).collect();
            let q_cat = bh_qvalues(&idx.iter().map(|&i| all_p[i]).collect::<Vec<_>>()).unwrap();
            assert_eq!(out.catalogs[c].m, idx.len() as u64);
            for (j, &i) in idx.iter().enumerate() {
                if q_atlas[i] <= 0.2 || q_cat[j] <= 0.2 {
                    want.push((
                        pairs[i].feature,
                        pairs[i].library,
                        pairs[i].term.clone(),
                        all_p[i],
                        q_atlas[i],
                        q_cat[j],
                    ));
                }
            }
        }
        let mut got: Vec<_> = out
            .term_rows
            .iter()
            .map(|r| {
                (
                    r.feature,
                    r.library,
                    r.term.clone(),
                    r.p_value,
                    r.q_value_atlas,
                    r.q_value_catalog,
                )
            })
            .collect();
        let key = |x: &(i64, usize, String, f64, f64, f64)| (x.0, x.1, x.2.clone());
        want.sort_by_key(key);
        got.sort_by_key(key);
        assert!(!want.is_empty());
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(key(g), key(w));
            assert!((g.3 - w.3).abs() <= 1e-12 * w.3, "{g:?} {w:?}");
            assert!((g.4 - w.4).abs() <= 1e-12 * w.4, "{g:?} {w:?}");
            assert!((g.5 - w.5).abs() <= 1e-12 * w.5, "{g:?} {w:?}");
        }
        // The planted feature's best term is the planted one.
        let best = out.best_rows.iter().find(|r| r.feature == 0).unwrap();
        assert_eq!(best.term, "PLANTED");
        assert_eq!(best.overlap, 12);
        assert_eq!(best.overlap_genes[0], "G0");
    }

    #[test]
    fn edge_tests_join_the_family_and_are_reproducible() {
        let n_genes = 200;
        let bg = background(n_genes);
        // A directed module among G0..G5, and noise.
        let mut edges = Vec::new();
        for i in 0..6 {
            for j in 0..6 {
                if i != j {
                    edges.push((format!("G{i}"), format!("G{j}")));
                }
            }
        }
        // Noise with the module's degrees (5 out, about 5 in), so that its degree bin is populated.
        let mut rng = Rng::new(9, 9);
        for i in 10..190 {
            for _ in 0..5 {
                edges.push((format!("G{i}"), format!("G{}", 10 + rng.below(180))));
            }
        }
        let net = Network {
            name: "TRRUST_edges".into(),
            source: "t.tsv".into(),
            directed: true,
            edges,
            self_loops: Vec::new(),
        };
        let lib = library("L", &[("T", (50..70).collect())]);
        let features = vec![
            FeatureQuery {
                feature: 0,
                genes: vec![0, 1, 2, 3, 4, 5, 150, 151],
            },
            FeatureQuery {
                feature: 1,
                genes: vec![160, 170, 180],
            },
            FeatureQuery {
                feature: 2,
                genes: vec![1, 2],
            },
        ];
        let cat = CatalogQuery {
            name: "c".into(),
            background: bg,
            features,
        };
        let settings = Settings {
            permutations: 200,
            ..Settings::default()
        };
        let a = annotate(
            std::slice::from_ref(&cat),
            std::slice::from_ref(&lib),
            std::slice::from_ref(&net),
            &settings,
            &|_| {},
        )
        .unwrap();
        let b = annotate(&[cat], &[lib], &[net], &settings, &|_| {}).unwrap();
        assert_eq!(a.edge_rows, b.edge_rows);
        // Two tested features (feature 2 has 2 genes): the gene-set family has m = 2 × 1 term, the
        // network-edge family (its own, so that permutation p-values ≥ 1/(B+1) are not drowned in the
        // gene-set tests) m = 2 × 1 network.
        assert_eq!(a.catalogs[0].tested_features, 2);
        assert_eq!((a.atlas.m, a.catalogs[0].m, a.catalogs[0].m_edges), (2, 2, 2));
        assert_eq!(a.edge_atlas.as_ref().unwrap().m, 2);
        assert!(a.edge_rows[0].feature == 0);
        let e = a.edge_rows.iter().find(|e| e.feature == 0).unwrap();
        assert!(e.observed_edges >= 30);
        assert!(e.p_value <= 0.02, "{e:?}");
        assert!(e.edges.contains(&"G0>G1".to_string()));
        // BH over the 2 edge tests, the others at p = 1 unless they have edges.
        let mut p_all: Vec<f64> = a.edge_rows.iter().map(|e| e.p_value).collect();
        p_all.resize(2, 1.0);
        assert_eq!(e.q_value_atlas, bh_qvalues(&p_all).unwrap()[0]);
        assert_eq!(e.q_value_catalog, e.q_value_atlas);
        assert_eq!(a.catalogs[0].annotated_atlas, 1);
    }
}
