//! Feature analysis over an activation store and its SAE codes (methods.md §4, §6; defects A6, A7,
//! A12, A14, A15):
//!
//! - [`catalog`]: per-feature statistics, top genes (with minimum support) and top cells, streamed;
//! - [`svd`]: principal axes of the activations against the decoder directions (superposition);
//! - [`coact`]: within-layer co-activation with a cell-conditional significance test and BH;
//! - [`modules`]: seeded Leiden clustering of the co-activation graph;
//! - [`layers`]: decoder matching, lifespans and PMI highways across layers;
//! - [`pipeline`]: all of it in one pass over a store, writing a catalog folder ([`run`]).

pub mod catalog;
pub mod coact;
pub mod compare;
pub mod consensus;
pub mod layers;
pub mod modules;
pub mod pipeline;
pub mod svd;

pub use catalog::{
    Catalog, CatalogBuilder, CatalogSettings, FeatureCell, FeatureStats, GeneRanking, GeneStats, TopGene,
};
pub use coact::{CoactBuilder, CoactEdge, CoactResult, CoactRule};
pub use compare::{compare_layers, LayersConfig, LayersError};
pub use layers::{best_matches, lifespans, unit_decoder, DecoderMatch, Highway, HighwayCounts};
pub use modules::{leiden_modules, Modules};
pub use pipeline::{run, AnalyzeConfig, AnalyzeError, AnalyzeProgress, GeneNaming, TokenNames};
pub use svd::{quantile_sorted, PrincipalAxes, PROJECTED_NORM_SQ_THRESHOLDS};
