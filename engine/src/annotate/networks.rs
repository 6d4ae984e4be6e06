//! Gene networks and the edge-count test (methods A10, A11, A22).
//!
//! - **TRRUST** (`TF<TAB>target<TAB>mode<TAB>PMIDs`, with or without a header line): directed TF → target
//!   edges (A11: never canonicalised to unordered pairs). Each TF's target set is also a gene-set library,
//!   `TRRUST_TF_targets`, tested like any other.
//! - **PPI** (two or more columns, tab- or space-separated, optional header, optional third column with a
//!   score): undirected edges.
//!
//! Duplicate edges (TRRUST lists a pair once per mode) count once; self-loops (autoregulation) are left
//! out of the edge test, since a gene with itself says nothing about a gene set (an autoregulating TF is
//! still one of its own targets in `TRRUST_TF_targets`).
//!
//! **Edge test.** The statistic is the number of edges with both ends among a feature's query genes
//! (directed TF → target edges for TRRUST; unordered pairs for PPI). The null replaces each query gene by
//! a random background gene of the same degree bin, without replacement, and counts again; p = (1 + #{null
//! ≥ observed}) / (B + 1) over B permutations (Phipson & Smyth's exact permutation p-value). Features
//! with no edge among their genes get p = 1 without simulation. Degree bins are log₂-spaced on the
//! network restricted to the background: 0, 1, 2–3, 4–7, 8–15, 16–31, ≥ 32, taken for the out- and the
//! in-degree separately in a directed network (49 bins), for the degree in an undirected one. The edge
//! count is a test of its own, never a pseudo-term (A22).

use std::path::{Path, PathBuf};

use super::gene_sets::{GeneSet, GeneSetLibrary};
use super::{AnnotateError, Background};
use crate::rng::Rng;

/// Number of log₂ degree classes: 0, 1, 2–3, 4–7, 8–15, 16–31, ≥ 32.
pub const DEGREE_CLASSES: usize = 7;

/// The log₂ class of a degree (see [`DEGREE_CLASSES`]).
pub fn degree_class(degree: usize) -> usize {
    if degree == 0 {
        0
    } else {
        (1 + degree.ilog2() as usize).min(DEGREE_CLASSES - 1)
    }
}

/// An edge list as read from a file (gene names as written).
#[derive(Clone, Debug)]
pub struct Network {
    /// The statistic's name in outputs: `TRRUST_edges` or `PPI_edges`.
    pub name: String,
    pub source: PathBuf,
    pub directed: bool,
    /// Distinct edges without self-loops, in file order.
    pub edges: Vec<(String, String)>,
    /// Genes with a self-loop (TRRUST: autoregulating TFs), in file order; not edges of the test.
    pub self_loops: Vec<String>,
}

fn read_text(path: &Path) -> Result<String, AnnotateError> {
    let bytes = std::fs::read(path).map_err(|e| AnnotateError::file(path, format!("cannot read: {e}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Keeps the first occurrence of each edge (`directed`: ordered pairs) and sets self-loops apart.
fn distinct_edges(raw: Vec<(String, String)>, directed: bool) -> (Vec<(String, String)>, Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    let mut loops = Vec::new();
    let edges = raw
        .into_iter()
        .filter(|(a, b)| {
            let (ka, kb) = (a.to_ascii_uppercase(), b.to_ascii_uppercase());
            if ka == kb {
                if seen.insert((ka, kb)) {
                    loops.push(a.clone());
                }
                return false;
            }
            let key = if directed || ka < kb { (ka, kb) } else { (kb, ka) };
            seen.insert(key)
        })
        .collect();
    (edges, loops)
}

const TRRUST_MODES: [&str; 3] = ["Activation", "Repression", "Unknown"];

/// Reads a TRRUST file (see the module documentation).
pub fn read_trrust(path: &Path) -> Result<Network, AnnotateError> {
    let text = read_text(path)?;
    let mut raw = Vec::new();
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let was_first = std::mem::replace(&mut first, false);
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 4 {
            return Err(AnnotateError::file(
                path,
                format!(
                    "line {}: {} tab-separated columns; a TRRUST file has 4: TF, target, mode \
                     (Activation/Repression/Unknown), PMIDs (as trrust_rawdata.human.tsv)",
                    i + 1,
                    fields.len()
                ),
            ));
        }
        let is_mode = TRRUST_MODES
            .iter()
            .any(|m| m.eq_ignore_ascii_case(fields[2].trim()));
        if was_first && !is_mode {
            // The 2018 release starts with a header line (Gene1, Gene2, Mode_of_Regulation, PMID).
            continue;
        }
        let (tf, target) = (fields[0].trim(), fields[1].trim());
        if tf.is_empty() || target.is_empty() {
            return Err(AnnotateError::file(
                path,
                format!("line {}: empty TF or target", i + 1),
            ));
        }
        raw.push((tf.to_string(), target.to_string()));
    }
    if raw.is_empty() {
        return Err(AnnotateError::file(path, "no TF → target row"));
    }
    let (edges, self_loops) = distinct_edges(raw, true);
    Ok(Network {
        name: "TRRUST_edges".into(),
        source: path.to_path_buf(),
        directed: true,
        edges,
        self_loops,
    })
}

/// Each TF's targets as a term (named after the TF) of the library `TRRUST_TF_targets`; an
/// autoregulating TF is one of its own targets.
pub fn trrust_target_sets(trrust: &Network) -> GeneSetLibrary {
    let mut order: Vec<String> = Vec::new();
    let mut targets: super::FastMap<String, Vec<String>> = super::FastMap::default();
    let loops = trrust.self_loops.iter().map(|g| (g, g));
    for (tf, target) in trrust.edges.iter().map(|(a, b)| (a, b)).chain(loops) {
        let key = tf.to_ascii_uppercase();
        let entry = targets.entry(key).or_insert_with(|| {
            order.push(tf.clone());
            Vec::new()
        });
        entry.push(target.clone());
    }
    let terms = order
        .into_iter()
        .map(|tf| GeneSet {
            genes: targets.remove(&tf.to_ascii_uppercase()).unwrap_or_default(),
            name: tf,
        })
        .collect();
    GeneSetLibrary {
        name: "TRRUST_TF_targets".into(),
        source: trrust.source.clone(),
        terms,
    }
}

/// Reads an undirected edge list: gene A, gene B, optionally a score (kept when ≥ `min_score`).
pub fn read_ppi(path: &Path, min_score: Option<f64>) -> Result<Network, AnnotateError> {
    let text = read_text(path)?;
    let mut raw = Vec::new();
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = if line.contains('\t') {
            line.split('\t').map(str::trim).collect()
        } else {
            line.split_whitespace().collect()
        };
        let was_first = std::mem::replace(&mut first, false);
        if fields.len() < 2 {
            return Err(AnnotateError::file(
                path,
                format!(
                    "line {}: one column; a PPI edge list has gene A, gene B and optionally a score per line",
                    i + 1
                ),
            ));
        }
        // A score column must hold finite numbers on every line but a header: a line with another
        // value is a damaged or misread file, not an edge to keep or drop without a word.
        let score = fields
            .get(2)
            .map(|s| s.parse::<f64>().ok().filter(|v| v.is_finite()));
        if was_first && matches!(score, Some(None)) {
            continue; // header: a non-numeric score column
        }
        if let Some(None) = score {
            return Err(AnnotateError::file(
                path,
                format!(
                    "line {}: score `{}` is not a finite number; the third column of a PPI edge list is \
                     the edge's score",
                    i + 1,
                    fields[2]
                ),
            ));
        }
        if let Some(min) = min_score {
            match score {
                Some(Some(s)) if s >= min => {}
                Some(_) => continue,
                None => {
                    return Err(AnnotateError::file(
                        path,
                        format!(
                            "line {}: no score column, but --ppi-min-score was given; drop the option or \
                             give a file with a third column of scores",
                            i + 1
                        ),
                    ))
                }
            }
        }
        raw.push((fields[0].to_string(), fields[1].to_string()));
    }
    if raw.is_empty() {
        return Err(AnnotateError::file(path, "no edge (after the score filter)"));
    }
    let (edges, self_loops) = distinct_edges(raw, false);
    Ok(Network {
        name: "PPI_edges".into(),
        source: path.to_path_buf(),
        directed: false,
        edges,
        self_loops,
    })
}

/// A network restricted to one background, ready for edge tests.
#[derive(Clone, Debug)]
pub struct MappedNetwork {
    pub name: String,
    pub directed: bool,
    /// Edges with both ends in the background (an undirected edge counts once).
    pub edges_in_background: usize,
    /// Background genes with at least one such edge.
    pub genes_with_edges: usize,
    /// Out-neighbours (undirected: neighbours) of gene g: `adjacency[offsets[g]..offsets[g + 1]]`, sorted.
    offsets: Vec<u32>,
    adjacency: Vec<u32>,
    /// Degree bin of every background gene, and the genes of every bin.
    bin_of: Vec<u16>,
    members: Vec<Vec<u32>>,
}

/// Reusable buffers of one worker for [`MappedNetwork::test`].
pub struct EdgeScratch {
    mark: Vec<u32>,
    stamp: u32,
    pool: Vec<u32>,
    sample: Vec<u32>,
    bins: Vec<(u16, u32)>,
}

impl EdgeScratch {
    fn next_stamp(&mut self) -> u32 {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.mark.fill(0);
            self.stamp = 1;
        }
        self.stamp
    }
}

/// The result of one edge test.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeTest {
    pub observed: u32,
    /// Mean edge count under the null (NaN when not simulated).
    pub null_mean: f64,
    pub p_value: f64,
    /// Permutations drawn (0 when nothing was observed).
    pub permutations: u32,
    /// The observed edges (TF, target) as background indices; for an undirected network, each pair once
    /// in query order.
    pub edges: Vec<(u32, u32)>,
}

impl MappedNetwork {
    /// Restricts `network` to the background. None of its genes in the background is an error.
    pub fn map(network: &Network, background: &Background) -> Result<Self, AnnotateError> {
        let n = background.len();
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        let mut any_match = false;
        for (a, b) in &network.edges {
            let (ma, mb) = (background.matches(a), background.matches(b));
            any_match |= !ma.is_empty() || !mb.is_empty();
            for &u in ma {
                for &v in mb {
                    if u != v {
                        pairs.push((u, v));
                        if !network.directed {
                            pairs.push((v, u));
                        }
                    }
                }
            }
        }
        if !any_match {
            let examples: Vec<&str> = network.edges.iter().take(3).map(|(a, _)| a.as_str()).collect();
            return Err(background.no_overlap_error(&network.source, "network", &examples));
        }
        pairs.sort_unstable();
        pairs.dedup();
        let mut offsets = vec![0u32; n + 1];
        let mut in_degree = vec![0usize; n];
        for &(u, v) in &pairs {
            offsets[u as usize + 1] += 1;
            in_degree[v as usize] += 1;
        }
        for g in 0..n {
            offsets[g + 1] += offsets[g];
        }
        let adjacency: Vec<u32> = pairs.iter().map(|&(_, v)| v).collect();
        let mut bin_of = vec![0u16; n];
        let mut genes_with_edges = 0;
        for g in 0..n {
            let out = (offsets[g + 1] - offsets[g]) as usize;
            if out + in_degree[g] > 0 {
                genes_with_edges += 1;
            }
            bin_of[g] = if network.directed {
                (degree_class(out) * DEGREE_CLASSES + degree_class(in_degree[g])) as u16
            } else {
                degree_class(out) as u16
            };
        }
        let n_bins = if network.directed {
            DEGREE_CLASSES * DEGREE_CLASSES
        } else {
            DEGREE_CLASSES
        };
        let mut members = vec![Vec::new(); n_bins];
        for g in 0..n {
            members[bin_of[g] as usize].push(g as u32);
        }
        Ok(MappedNetwork {
            name: network.name.clone(),
            directed: network.directed,
            edges_in_background: if network.directed {
                pairs.len()
            } else {
                pairs.len() / 2
            },
            genes_with_edges,
            offsets,
            adjacency,
            bin_of,
            members,
        })
    }

    /// Buffers for [`Self::test`], one per worker.
    pub fn scratch(&self) -> EdgeScratch {
        EdgeScratch {
            mark: vec![0; self.bin_of.len()],
            stamp: 0,
            pool: Vec::new(),
            sample: Vec::new(),
            bins: Vec::new(),
        }
    }

    fn neighbours(&self, g: u32) -> &[u32] {
        &self.adjacency[self.offsets[g as usize] as usize..self.offsets[g as usize + 1] as usize]
    }

    /// Edges among `genes`, which must be the genes marked with the current stamp (each edge once).
    fn count_marked(&self, genes: &[u32], scratch: &EdgeScratch) -> u32 {
        let mut count = 0u32;
        for &u in genes {
            let adj = self.neighbours(u);
            // Hubs (a TF with hundreds of targets): look the few genes up instead of scanning the list.
            if adj.len() <= 4 * genes.len() {
                count += adj
                    .iter()
                    .filter(|&&v| scratch.mark[v as usize] == scratch.stamp)
                    .count() as u32;
            } else {
                count += genes.iter().filter(|&&v| adj.binary_search(&v).is_ok()).count() as u32;
            }
        }
        if self.directed {
            count
        } else {
            count / 2
        }
    }

    /// The edges among `genes` (distinct background genes).
    pub fn edges_among(&self, genes: &[u32], scratch: &mut EdgeScratch) -> Vec<(u32, u32)> {
        let stamp = scratch.next_stamp();
        for &g in genes {
            scratch.mark[g as usize] = stamp;
        }
        let position = |g: u32| genes.iter().position(|&x| x == g).unwrap_or(usize::MAX);
        let mut edges = Vec::new();
        for &u in genes {
            for &v in self.neighbours(u) {
                if scratch.mark[v as usize] == stamp && (self.directed || position(u) < position(v)) {
                    edges.push((u, v));
                }
            }
        }
        edges
    }

    /// The edge test of the query genes (distinct background genes) with `permutations` draws of the
    /// degree-preserving null from `rng` (see the module documentation).
    pub fn test(
        &self,
        query: &[u32],
        permutations: usize,
        rng: &mut Rng,
        scratch: &mut EdgeScratch,
    ) -> EdgeTest {
        let edges = self.edges_among(query, scratch);
        let observed = edges.len() as u32;
        if observed == 0 || permutations == 0 {
            return EdgeTest {
                observed,
                null_mean: f64::NAN,
                p_value: 1.0,
                permutations: 0,
                edges,
            };
        }
        // How many genes to draw from each bin.
        scratch.bins.clear();
        let mut bins: Vec<u16> = query.iter().map(|&g| self.bin_of[g as usize]).collect();
        bins.sort_unstable();
        for b in bins {
            match scratch.bins.last_mut() {
                Some((last, c)) if *last == b => *c += 1,
                _ => scratch.bins.push((b, 1)),
            }
        }
        let mut at_least = 0u64;
        let mut total = 0u64;
        let bin_counts = std::mem::take(&mut scratch.bins);
        for _ in 0..permutations {
            let stamp = scratch.next_stamp();
            scratch.sample.clear();
            for &(b, c) in &bin_counts {
                let members = &self.members[b as usize];
                let c = c as usize;
                if members.len() <= 4 * c {
                    // Small bin: a partial Fisher–Yates shuffle of a copy.
                    scratch.pool.clear();
                    scratch.pool.extend_from_slice(members);
                    for i in 0..c {
                        let j = i + rng.below(scratch.pool.len() - i);
                        scratch.pool.swap(i, j);
                        let g = scratch.pool[i];
                        scratch.mark[g as usize] = stamp;
                        scratch.sample.push(g);
                    }
                } else {
                    // Large bin: rejection of repeats (at most a quarter of the bin is ever taken).
                    let mut taken = 0;
                    while taken < c {
                        let g = members[rng.below(members.len())];
                        if scratch.mark[g as usize] != stamp {
                            scratch.mark[g as usize] = stamp;
                            scratch.sample.push(g);
                            taken += 1;
                        }
                    }
                }
            }
            let sample = std::mem::take(&mut scratch.sample);
            let null = self.count_marked(&sample, scratch);
            scratch.sample = sample;
            total += u64::from(null);
            if null >= observed {
                at_least += 1;
            }
        }
        scratch.bins = bin_counts;
        EdgeTest {
            observed,
            null_mean: total as f64 / permutations as f64,
            p_value: (1 + at_least) as f64 / (permutations + 1) as f64,
            permutations: permutations as u32,
            edges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn background(n: usize) -> Background {
        let ids = (0..n).map(|i| format!("ENSG{i:011}")).collect();
        let symbols = (0..n).map(|i| format!("G{i}")).collect();
        Background::new(ids, symbols).unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn degree_classes_are_log2() {
        let classes: Vec<usize> = [0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 1000]
            .map(degree_class)
            .to_vec();
        assert_eq!(classes, [0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]);
    }

    #[test]
    fn reads_trrust_with_and_without_header_and_ppi() {
        let dir = tempfile::tempdir().unwrap();
        let body =
            "TF1\tG1\tActivation\t1\nTF1\tG1\tRepression\t2\nTF1\tTF1\tUnknown\t3\nTF2\tG2\tUnknown\t4;5\n";
        let a = read_trrust(&write(dir.path(), "a.tsv", body)).unwrap();
        let header = format!("Gene1\tGene2\tMode_of_Regulation\tPMID\n{body}");
        let b = read_trrust(&write(dir.path(), "b.tsv", &header)).unwrap();
        assert_eq!(a.edges, b.edges);
        assert_eq!(
            a.edges,
            [("TF1".into(), "G1".into()), ("TF2".into(), "G2".into())]
        );
        assert!(a.directed && a.name == "TRRUST_edges");
        let lib = trrust_target_sets(&a);
        assert_eq!(lib.name, "TRRUST_TF_targets");
        assert_eq!(a.self_loops, ["TF1"]);
        assert_eq!(lib.terms[0].name, "TF1");
        assert_eq!(lib.terms[0].genes, ["G1", "TF1"]);
        let err = read_trrust(&write(dir.path(), "c.tsv", "TF1\tG1\tActivation\n")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("c.tsv") && msg.contains("3 tab-separated columns") && msg.contains("has 4"),
            "{msg}"
        );

        let ppi = "protein1 protein2 combined_score\nA B 900\nB A 950\nA C 400\nC C 999\n";
        let p = read_ppi(&write(dir.path(), "p.txt", ppi), Some(700.0)).unwrap();
        assert_eq!(p.edges, [("A".into(), "B".into())]);
        let all = read_ppi(&write(dir.path(), "p2.txt", ppi), None).unwrap();
        assert_eq!(all.edges.len(), 2);
        assert!(!all.directed);
        let err = read_ppi(&write(dir.path(), "p3.txt", "A\tB\nC\tD\n"), Some(1.0)).unwrap_err();
        assert!(err.to_string().contains("no score column"), "{err}");
        // A non-numeric or non-finite score past the header is an error naming the line, with or
        // without --ppi-min-score (it was kept or dropped without a word).
        for (body, line) in [("A B 900\nC D high\n", 2), ("x y score\nA B 900\nC D nan\n", 3)] {
            for min in [None, Some(1.0)] {
                let err = read_ppi(&write(dir.path(), "p4.txt", body), min).unwrap_err();
                let msg = err.to_string();
                assert!(
                    msg.contains("p4.txt") && msg.contains(&format!("line {line}: score")),
                    "{msg}"
                );
            }
        }
    }

    fn network(edges: &[(&str, &str)], directed: bool) -> Network {
        let raw = edges
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let (edges, self_loops) = distinct_edges(raw, directed);
        Network {
            name: "net".into(),
            source: PathBuf::from("net.tsv"),
            directed,
            edges,
            self_loops,
        }
    }

    #[test]
    fn counts_directed_and_undirected_edges() {
        let bg = background(10);
        let edges = [
            ("G0", "G1"),
            ("G1", "G0"),
            ("G1", "G2"),
            ("G3", "G4"),
            ("G5", "G5"),
        ];
        let d = MappedNetwork::map(&network(&edges, true), &bg).unwrap();
        let u = MappedNetwork::map(&network(&edges, false), &bg).unwrap();
        assert_eq!(d.edges_in_background, 4);
        assert_eq!(u.edges_in_background, 3);
        let mut s = d.scratch();
        assert_eq!(d.edges_among(&[0, 1, 2], &mut s), [(0, 1), (1, 0), (1, 2)]);
        assert_eq!(u.edges_among(&[2, 1, 0], &mut s), [(2, 1), (1, 0)]);
        // The same count through the marked-gene path used by the null.
        let stamp = s.next_stamp();
        for g in [0, 1, 2] {
            s.mark[g] = stamp;
        }
        assert_eq!(d.count_marked(&[0, 1, 2], &s), 3);
        assert_eq!(u.count_marked(&[0, 1, 2], &s), 2);
        // Degree classes: G1 has out 2 / in 1 in the directed network.
        assert_eq!(
            d.bin_of[1] as usize,
            degree_class(2) * DEGREE_CLASSES + degree_class(1)
        );
        let err = MappedNetwork::map(&network(&[("X", "Y")], true), &bg).unwrap_err();
        assert!(err.to_string().contains("net.tsv"), "{err}");
    }

    #[test]
    fn a_dense_module_is_significant_and_the_null_preserves_degrees() {
        // 200 genes: a planted clique of 6 (directed both ways) plus a random sparse background graph.
        let n = 200;
        let bg = background(n);
        let mut rng = Rng::new(11, 0);
        let mut edges: Vec<(String, String)> = Vec::new();
        for i in 0..6 {
            for j in 0..6 {
                if i != j {
                    edges.push((format!("G{i}"), format!("G{j}")));
                }
            }
        }
        // Noise with the module's degrees (5 out, about 5 in), so that its degree bin is populated.
        for a in 6..n {
            for _ in 0..5 {
                edges.push((format!("G{a}"), format!("G{}", 6 + rng.below(n - 6))));
            }
        }
        let net = Network {
            name: "net".into(),
            source: "x".into(),
            directed: true,
            edges: distinct_edges(edges, true).0,
            self_loops: Vec::new(),
        };
        let m = MappedNetwork::map(&net, &bg).unwrap();
        let mut s = m.scratch();
        let query: Vec<u32> = (0..6).chain(100..110).collect();
        let t = m.test(&query, 999, &mut Rng::new(1, 2), &mut s);
        assert!(t.observed >= 30);
        assert!(t.p_value <= 0.01, "{t:?}");
        assert!(t.null_mean < t.observed as f64);
        // Reproducible for a seed; p has the (1 + k)/(B + 1) form.
        let again = m.test(&query, 999, &mut Rng::new(1, 2), &mut s);
        assert_eq!(t, again);
        assert_eq!((t.p_value * 1000.0).round() as u64 as f64 / 1000.0, t.p_value);
        // No edge among the genes: p = 1 without simulation.
        let mut lonely: Vec<u32> = Vec::new();
        for g in 6..n as u32 {
            lonely.push(g);
            if !m.edges_among(&lonely, &mut s).is_empty() {
                lonely.pop();
            }
            if lonely.len() == 5 {
                break;
            }
        }
        let none = m.test(&lonely, 999, &mut Rng::new(1, 3), &mut s);
        assert_eq!((none.observed, none.p_value, none.permutations), (0, 1.0, 0));
        // Every null draw keeps the query's bin counts: check one draw directly.
        let stamp_before = s.stamp;
        let _ = m.test(&query, 1, &mut Rng::new(5, 5), &mut s);
        let drawn: Vec<u32> = s.sample.clone();
        assert_eq!(drawn.len(), query.len());
        let mut want: Vec<u16> = query.iter().map(|&g| m.bin_of[g as usize]).collect();
        let mut got: Vec<u16> = drawn.iter().map(|&g| m.bin_of[g as usize]).collect();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(want, got);
        let mut distinct = drawn.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), drawn.len());
        assert!(s.stamp > stamp_before);
    }
}
