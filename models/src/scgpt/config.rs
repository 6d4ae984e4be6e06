//! The model part of scGPT's `args.json` (the training script's arguments, saved next to the weights).

use std::path::Path;

use crate::error::{Invalid, ModelError};

/// The `args.json` keys that shape the forward pass. Absent keys take the whole-human values; keys that
/// would select a variant scinterp does not implement are refused rather than ignored.
#[derive(Clone, Debug, PartialEq)]
pub struct ScgptConfig {
    /// `embsize`: the model width.
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// `d_hid`: the FFN width (512 in whole-human, equal to the model width).
    pub d_ff: usize,
    /// `pad_token`: resolved to an id through vocab.json.
    pub pad_token: String,
    pub pad_value: f32,
    /// `max_seq_len` (includes `<cls>`); the model has no position embedding, so this is only what it
    /// was trained on, not a hard limit.
    pub max_seq_len: usize,
}

/// LayerNorm epsilon of every scGPT norm (torch's default).
pub const SCGPT_LAYER_NORM_EPS: f64 = 1e-5;
/// The continuous value encoder clamps its input from above at this value.
pub const SCGPT_MAX_VALUE: f32 = 512.0;

impl Default for ScgptConfig {
    fn default() -> Self {
        ScgptConfig {
            d_model: 512,
            n_layers: 12,
            n_heads: 8,
            d_ff: 512,
            pad_token: "<pad>".into(),
            pad_value: -2.0,
            max_seq_len: 1200,
        }
    }
}

impl ScgptConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|reason| ModelError::Config {
            path: path.to_path_buf(),
            reason: reason.0,
        })
    }

    pub fn from_json(text: &str) -> Result<Self, Invalid> {
        Self::parse(text)
    }

    fn parse(text: &str) -> Result<Self, Invalid> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
        let obj = value
            .as_object()
            .ok_or("expected a JSON object (scGPT's args.json)")?;
        let present = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let uint = |k: &str, default: usize| -> Result<usize, Invalid> {
            match present(k) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|&i| i > 0)
                    .ok_or_else(|| Invalid(format!("`{k}` is {v}, expected a positive integer"))),
            }
        };
        let text_value = |k: &str| -> Result<Option<String>, Invalid> {
            match present(k) {
                None => Ok(None),
                Some(v) => v
                    .as_str()
                    .map(|s| Some(s.to_owned()))
                    .ok_or_else(|| Invalid(format!("`{k}` is {v}, expected a string"))),
            }
        };
        let flag = |k: &str| present(k).and_then(serde_json::Value::as_bool).unwrap_or(false);

        let d = ScgptConfig::default();
        let config = ScgptConfig {
            d_model: uint("embsize", d.d_model)?,
            n_layers: uint("nlayers", d.n_layers)?,
            n_heads: uint("nheads", d.n_heads)?,
            d_ff: uint("d_hid", d.d_ff)?,
            pad_token: text_value("pad_token")?.unwrap_or(d.pad_token),
            pad_value: match present("pad_value") {
                None => d.pad_value,
                Some(v) => v
                    .as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| format!("`pad_value` is {v}, expected a number"))?,
            },
            max_seq_len: uint("max_seq_len", d.max_seq_len)?,
        };
        if !config.d_model.is_multiple_of(config.n_heads) {
            return Err(Invalid(format!(
                "embsize {} is not a multiple of nheads {}",
                config.d_model, config.n_heads
            )));
        }
        if let Some(style) = text_value("input_emb_style")? {
            if style != "continuous" {
                return Err(Invalid(format!(
                    "input_emb_style is \"{style}\"; scinterp implements the \"continuous\" value encoder of \
                     the whole-human model only"
                )));
            }
        }
        if let Some(style) = text_value("cell_emb_style")? {
            if style != "cls" {
                return Err(Invalid(format!(
                    "cell_emb_style is \"{style}\"; only \"cls\" (the whole-human setting) is implemented"
                )));
            }
        }
        for variant in [
            "pre_norm",
            "explicit_zero_prob",
            "use_batch_labels",
            "DSBN",
            "use_mod",
        ] {
            if flag(variant) {
                return Err(Invalid(format!(
                    "`{variant}` is true; scinterp implements the whole-human architecture (post-norm, no \
                     batch or modality labels, no zero-probability head)"
                )));
            }
        }
        Ok(config)
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_real_args_and_refuses_other_variants() {
        let real = r#"{"embsize": 512, "nlayers": 12, "nheads": 8, "d_hid": 512, "pad_token": "<pad>",
            "pad_value": -2, "max_seq_len": 1200, "input_emb_style": "continuous", "load_model": null}"#;
        assert_eq!(ScgptConfig::from_json(real).unwrap(), ScgptConfig::default());
        let small =
            ScgptConfig::from_json(r#"{"embsize": 64, "nheads": 4, "d_hid": 48, "nlayers": 2}"#).unwrap();
        assert_eq!(
            (small.d_model, small.head_dim(), small.d_ff, small.n_layers),
            (64, 16, 48, 2)
        );
        for (bad, says) in [
            (r#"{"embsize": 60, "nheads": 8}"#, "multiple"),
            (r#"{"input_emb_style": "category"}"#, "continuous"),
            (r#"{"pre_norm": true}"#, "pre_norm"),
            (r#"{"nlayers": 0}"#, "positive"),
            (r#"{"pad_value": "x"}"#, "pad_value"),
            ("[1]", "object"),
        ] {
            let err = ScgptConfig::from_json(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
