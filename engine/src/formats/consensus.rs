//! `consensus.json`: the summary of `scinterp consensus` (two models' annotated circuit graphs
//! compared), written with sorted keys.

use serde::{Deserialize, Serialize};

pub const CONSENSUS_FORMAT: &str = "scinterp-consensus";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsensusSummary {
    pub format: String,
    pub format_version: u32,
    pub settings: ConsensusSettings,
    /// The two graphs, in the order given (`a`, `b`).
    pub graphs: Vec<GraphSummary>,
    /// Terms carried by at least one node of each graph (only these can form a conserved pair).
    pub shared_terms: usize,
    /// Distinct (source term, target term) pairs found in both graphs.
    pub conserved_pairs: usize,
    /// Mean and standard deviation of the conserved-pair count under the null (term sets permuted among
    /// each graph's annotated nodes of the same hook, both graphs independently).
    pub null_mean: f64,
    pub null_sd: f64,
    /// 95th percentile and maximum of the null counts.
    pub null_q95: f64,
    pub null_max: usize,
    /// conserved_pairs / null_mean; `None` when the null mean is 0.
    pub enrichment: Option<f64>,
    /// (1 + #{null count ≥ conserved_pairs}) / (1 + permutations).
    pub p_value: f64,
    pub focus: Option<FocusSummary>,
    pub outputs: Vec<String>,
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsensusSettings {
    pub alpha: f64,
    pub q_column: String,
    pub libraries: Vec<String>,
    pub directed: bool,
    pub permutations: usize,
    pub seed: u64,
    pub null: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphSummary {
    pub name: String,
    pub edges_file: String,
    pub annotations_file: String,
    /// Rows of the edge table.
    pub edges: usize,
    /// Distinct (hook, feature) endpoints of the edges.
    pub nodes: usize,
    /// Nodes that carry at least one term.
    pub annotated_nodes: usize,
    /// Edges whose source and target both carry terms.
    pub annotated_edges: usize,
    /// Distinct terms carried by the nodes.
    pub terms: usize,
    /// Distinct (source term, target term) pairs over the annotated edges.
    pub term_pairs: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FocusSummary {
    pub gmt: String,
    /// Sets in the GMT.
    pub sets: usize,
    /// Focus sets that some node of either graph carries as a term.
    pub focus_terms_present: usize,
    /// Pairs in either graph (the universe), and those touching a focus term (either side).
    pub universe_pairs: usize,
    pub universe_focus_pairs: usize,
    /// Conserved pairs touching a focus term, and the count expected if touching were independent of
    /// being conserved (conserved_pairs × universe_focus_pairs / universe_pairs).
    pub conserved_focus_pairs: usize,
    pub expected: f64,
    /// conserved_focus_pairs / expected; `None` when expected is 0.
    pub fold: Option<f64>,
    /// Hypergeometric P(X ≥ conserved_focus_pairs) drawing conserved_pairs from the universe.
    pub p_hypergeometric: f64,
    /// Mean focus-touching conserved pairs under the permutation null, and
    /// (1 + #{null ≥ observed}) / (1 + permutations).
    pub null_mean: f64,
    pub p_permutation: f64,
}
