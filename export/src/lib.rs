//! Operator export and the static web atlas.
//!
//! - [`operator`]: gene × gene operators read out of a model (weights-only and attention over reference
//!   cells), their compositions (head, pool, drift) and rank-k truncated-SVD surrogates;
//! - [`tool`]: operator → adaptor → readouts (pseudotime, cell type), fitted on reference cells;
//! - [`onnx`], [`files`]: the tool as `.onnx` and as `.safetensors` + `card.json`;
//! - [`pipeline`]: `scinterp export operator`; [`apply`]: `scinterp apply`;
//! - [`steering`]: a tool's pseudotime as the readout of `scinterp effects`;
//! - [`atlas`]: the static web atlas.

pub mod apply;
pub mod atlas;
pub mod cells;
pub mod demo;
pub mod error;
pub mod files;
pub mod onnx;
pub mod operator;
pub mod pipeline;
pub mod steering;
pub mod steps;
pub mod tool;

pub use error::ExportError;
