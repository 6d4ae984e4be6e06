//! Errors raised by the engine for inconsistent inputs (never panics on user data).

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown hook point `{0}`: expected hook_embed or blocks.<L>.hook_{{attn_out,resid_mid,mlp_out,resid_post}}")]
    UnknownHook(String),
    #[error("hook `{hook}` refers to layer {layer}, but the model has {n_layers} layers (0..{last})", last = n_layers.saturating_sub(1))]
    LayerOutOfRange {
        hook: String,
        layer: usize,
        n_layers: usize,
    },
    #[error("invalid edit at `{hook}`: {reason}")]
    InvalidEdit { hook: String, reason: String },
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("invalid tail replay: {0}")]
    InvalidStart(String),
    #[error("GPU: {0}")]
    Gpu(String),
}
