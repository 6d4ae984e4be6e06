//! The Hugging Face `config.json` of a `BertForMaskedLM` (every published Geneformer config parses).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Invalid, ModelError};

/// The fields of a BERT config that determine the forward pass. Other keys (dropout, init range,
/// transformers version, …) do not affect inference and are ignored.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_type_vocab() -> usize {
    2
}

fn default_position_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Reads and validates `config.json`.
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
        let config: BertConfig =
            serde_json::from_str(text).map_err(|e| format!("not a BERT config.json ({e})"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.hidden_act != "relu" {
            return Err(Invalid(format!(
                "hidden_act is \"{}\"; scinterp implements Geneformer's \"relu\" only (no Geneformer model uses GELU)",
                self.hidden_act
            )));
        }
        if self.position_embedding_type != "absolute" {
            return Err(Invalid(format!(
                "position_embedding_type is \"{}\"; only \"absolute\" is implemented",
                self.position_embedding_type
            )));
        }
        if let Some(model_type) = &self.model_type {
            if model_type != "bert" {
                return Err(Invalid(format!(
                    "model_type is \"{model_type}\", expected \"bert\""
                )));
            }
        }
        if let Some(archs) = &self.architectures {
            if !archs.iter().any(|a| a == "BertForMaskedLM" || a == "BertModel") {
                return Err(Invalid(format!(
                    "architectures is {archs:?}; expected BertForMaskedLM (Geneformer)"
                )));
            }
        }
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Invalid(format!("{name} must be positive")));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return Err(Invalid(format!(
                "layer_norm_eps {} is invalid",
                self.layer_norm_eps
            )));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_published_geneformer_config_parses() {
        let Some(dir) = crate::test_data::shared_data("geneformer/configs") else {
            return;
        };
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path().join("config.json");
            let c = BertConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.head_dim(), 64, "{}", path.display());
            assert_eq!(c.layer_norm_eps, 1e-12);
            seen += 1;
        }
        assert_eq!(seen, 4);
        let v2 = BertConfig::from_file(&dir.join("Geneformer-V2-316M/config.json")).unwrap();
        assert_eq!(
            (
                v2.hidden_size,
                v2.num_hidden_layers,
                v2.num_attention_heads,
                v2.intermediate_size
            ),
            (1152, 18, 18, 4608)
        );
        assert_eq!((v2.max_position_embeddings, v2.vocab_size), (4096, 20275));
    }

    #[test]
    fn rejects_what_it_does_not_implement() {
        let base = r#"{"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 256, "hidden_act": "relu", "max_position_embeddings": 64,
            "vocab_size": 96}"#;
        assert!(BertConfig::from_json(base).is_ok());
        let gelu = base.replace("\"relu\"", "\"gelu\"");
        assert!(BertConfig::from_json(&gelu)
            .unwrap_err()
            .to_string()
            .contains("gelu"));
        let heads = base.replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 3");
        assert!(BertConfig::from_json(&heads)
            .unwrap_err()
            .to_string()
            .contains("multiple"));
        assert!(BertConfig::from_json("{}").is_err());
        assert!(BertConfig::from_json("not json").is_err());
    }
}
