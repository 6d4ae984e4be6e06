//! scGPT whole-human (`bowang-lab/scGPT`, `TransformerModel`): gene and value encoders, post-norm torch
//! encoder layers, expression and MVC decoders. Tokenisation lives in `tokenize::scgpt`.

mod config;
mod model;

pub use config::{ScgptConfig, SCGPT_LAYER_NORM_EPS, SCGPT_MAX_VALUE};
pub use model::{is_scgpt_dir, Scgpt, ScgptLoadOptions};
