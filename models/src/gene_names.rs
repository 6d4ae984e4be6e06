//! Names for token ids: the gene id the tokenizer used (Ensembl for Geneformer, the symbol for scGPT)
//! and a gene symbol, so that gene sets written either way can be matched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::tokenize::geneformer::{GeneformerDictionaries, GeneformerVersion, TokenizeError};
use crate::tokenize::scgpt::{ScgptTokenizeError, ScgptVocab};

/// Gene names that cannot be read. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum GeneNamesError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{} line {line}: token `{token}` is not an integer", path.display())]
    Token {
        path: PathBuf,
        line: usize,
        token: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error(transparent)]
    Geneformer(#[from] TokenizeError),
    #[error(transparent)]
    Scgpt(#[from] ScgptTokenizeError),
}

fn invalid(path: &Path, reason: String) -> GeneNamesError {
    GeneNamesError::Invalid {
        path: path.to_path_buf(),
        reason,
    }
}

/// token → (gene id, symbol).
#[derive(Clone, Debug, Default)]
pub struct GeneNames {
    names: HashMap<u32, (String, String)>,
    source: Option<PathBuf>,
}

impl GeneNames {
    /// Reads a Geneformer dictionary folder, an scGPT vocab.json or a TSV (token, gene_id, symbol).
    pub fn load(path: &Path) -> Result<Self, GeneNamesError> {
        let names = if path.is_dir() {
            geneformer_names(path)?
        } else if path.extension().is_some_and(|e| e == "json") {
            let vocab = ScgptVocab::load(path)?;
            vocab
                .tokens
                .iter()
                .filter(|(s, _)| !s.starts_with('<'))
                .map(|(s, &t)| (t, (s.clone(), s.clone())))
                .collect()
        } else {
            tsv_names(path)?
        };
        if names.is_empty() {
            return Err(invalid(path, "no gene names found".into()));
        }
        Ok(GeneNames {
            names,
            source: Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())),
        })
    }

    pub fn source(&self) -> Option<String> {
        self.source.as_ref().map(|p| p.display().to_string())
    }

    pub fn gene_id(&self, token: u32) -> String {
        self.names
            .get(&token)
            .map_or_else(|| format!("token_{token}"), |n| n.0.clone())
    }

    pub fn symbol(&self, token: u32) -> String {
        self.names.get(&token).map_or_else(String::new, |n| n.1.clone())
    }
}

/// Geneformer: token → Ensembl id from the token dictionary, and the symbol from the inverted
/// gene-name dictionary (the alphabetically first symbol when several name one Ensembl id).
fn geneformer_names(dir: &Path) -> Result<HashMap<u32, (String, String)>, GeneNamesError> {
    let version = [GeneformerVersion::V2, GeneformerVersion::V1]
        .into_iter()
        .find(|v| dir.join(&v.dictionary_files()[0]).exists())
        .ok_or_else(|| {
            invalid(
                dir,
                "no token_dictionary_gc104M.pkl (V2) or token_dictionary_gc30M.pkl (V1); pass the folder \
                 of the model's dictionaries"
                    .into(),
            )
        })?;
    let dicts = GeneformerDictionaries::load(version, dir)?;
    let mut symbol_of: HashMap<&str, &str> = HashMap::new();
    for (symbol, ensembl) in &dicts.gene_name_id {
        let entry = symbol_of.entry(ensembl.as_str()).or_insert(symbol.as_str());
        if symbol.as_str() < *entry {
            *entry = symbol.as_str();
        }
    }
    Ok(dicts
        .token
        .iter()
        .filter(|(id, _)| !id.starts_with('<'))
        .map(|(id, &t)| {
            (
                t,
                (id.clone(), symbol_of.get(id.as_str()).unwrap_or(&"").to_string()),
            )
        })
        .collect())
}

fn tsv_names(path: &Path) -> Result<HashMap<u32, (String, String)>, GeneNamesError> {
    let text = std::fs::read_to_string(path).map_err(|source| GeneNamesError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    if header.len() < 2 || header[0] != "token" || header[1] != "gene_id" {
        return Err(invalid(
            path,
            format!(
                "expected a TSV with a header `token<TAB>gene_id[<TAB>symbol]`, found `{}`",
                header.join("<TAB>")
            ),
        ));
    }
    let mut out = HashMap::new();
    for (n, line) in lines.enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        let token: u32 = cols[0].parse().map_err(|source| GeneNamesError::Token {
            path: path.to_path_buf(),
            line: n + 2,
            token: cols[0].to_string(),
            source,
        })?;
        let id = cols.get(1).copied().unwrap_or("").to_string();
        let symbol = cols.get(2).copied().unwrap_or("").to_string();
        out.insert(token, (id, symbol));
    }
    Ok(out)
}

/// The names `scinterp analyze` writes into a catalog's gene tables.
impl scinterp_engine::analyze::pipeline::GeneNaming for GeneNames {
    fn gene_id(&self, token: u32) -> String {
        GeneNames::gene_id(self, token)
    }
    fn symbol(&self, token: u32) -> String {
        GeneNames::symbol(self, token)
    }
    fn source(&self) -> Option<String> {
        GeneNames::source(self)
    }
}
