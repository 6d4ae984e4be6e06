//! Operator export (rank-k surrogates with readouts, ONNX / safetensors tools) and the static web atlas.
//!
//! Empty until the export issue: nothing here pretends to work yet.
