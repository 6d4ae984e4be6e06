//! Operator export (rank-k surrogates with readouts, ONNX / safetensors tools: not written yet) and the
//! static web atlas ([`atlas`]).

pub mod atlas;
