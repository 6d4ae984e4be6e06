//! Feature annotation against real biology, with multiple testing over every test (methods.md §5 and
//! §14 A8–A11, A13, A22).
//!
//! - [`gene_sets`]: GMT libraries (MSigDB and Enrichr style), mapped onto a catalog's background: terms
//!   restricted to it, sizes counted inside it, an inverted index gene → terms.
//! - [`networks`]: TRRUST (directed TF → target) and PPI (undirected) edge lists; the TF target sets as
//!   a gene-set library; the edge-count test against a degree-preserving permutation null.
//! - [`enrichment`]: the Fisher (hypergeometric upper tail) test of every (feature, term) pair and the
//!   edge tests, with one BH family over all catalogs (atlas q) and one per catalog.
//! - [`cell_types`]: top-cell label enrichment (top 10 % of a feature's active cells, one-sided Fisher).
//!
//! The background of a catalog is the genes observed at its positions (its genes table), not the union
//! of the top-gene lists (A8); each library is intersected with it.

pub mod cell_types;
pub mod enrichment;
pub mod gene_sets;
pub mod networks;
pub mod pipeline;

pub use pipeline::{run, AnnotateConfig, AnnotateProgress, Ranking};

use std::collections::HashMap;
use std::path::PathBuf;

/// Hash maps with a fixed hasher: fast, and the same iteration order in every run.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Errors of annotation inputs; each names the file (or input) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Catalog(#[from] crate::formats::catalog::CatalogError),
    #[error(transparent)]
    Table(#[from] crate::formats::TableError),
    #[error(transparent)]
    Write(#[from] crate::formats::FileError),
    #[error(transparent)]
    Output(#[from] crate::formats::OutputError),
}

impl AnnotateError {
    pub(crate) fn file(path: &std::path::Path, reason: impl Into<String>) -> Self {
        AnnotateError::File {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// A catalog's background: the genes that could appear in a top list (its genes table), with a lookup
/// from any library's gene names. A library gene matches a background gene when it equals, ignoring
/// case, its gene id (Ensembl version suffixes ignored) or its symbol.
#[derive(Clone, Debug)]
pub struct Background {
    gene_ids: Vec<String>,
    symbols: Vec<String>,
    lookup: FastMap<String, Vec<u32>>,
}

/// The key a gene name is matched by: trimmed, upper case, without an Ensembl version (`ENSG….12`).
pub(crate) fn gene_key(name: &str) -> String {
    let name = name.trim();
    let stem = match name.rsplit_once('.') {
        Some((stem, version))
            if name.len() > 4
                && name.as_bytes()[..3].eq_ignore_ascii_case(b"ENS")
                && !version.is_empty()
                && version.bytes().all(|b| b.is_ascii_digit()) =>
        {
            stem
        }
        _ => name,
    };
    stem.to_ascii_uppercase()
}

impl Background {
    /// Genes in table order; `symbols[i]` may be empty. Both vectors have one entry per gene.
    pub fn new(gene_ids: Vec<String>, symbols: Vec<String>) -> Result<Self, AnnotateError> {
        if gene_ids.len() != symbols.len() {
            return Err(AnnotateError::Invalid(format!(
                "{} gene ids but {} symbols (internal error)",
                gene_ids.len(),
                symbols.len()
            )));
        }
        if gene_ids.len() > u32::MAX as usize {
            return Err(AnnotateError::Invalid("more than 2³² background genes".into()));
        }
        let mut lookup: FastMap<String, Vec<u32>> = FastMap::default();
        for (i, (id, symbol)) in gene_ids.iter().zip(&symbols).enumerate() {
            let i = i as u32;
            for name in [id.as_str(), symbol.as_str()] {
                if name.trim().is_empty() {
                    continue;
                }
                let entry = lookup.entry(gene_key(name)).or_default();
                if entry.last() != Some(&i) {
                    entry.push(i);
                }
            }
        }
        Ok(Background {
            gene_ids,
            symbols,
            lookup,
        })
    }

    pub fn len(&self) -> usize {
        self.gene_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.gene_ids.is_empty()
    }

    /// The background genes a library gene name matches (usually one; none if it is not observed).
    pub fn matches(&self, name: &str) -> &[u32] {
        self.lookup.get(&gene_key(name)).map_or(&[], Vec::as_slice)
    }

    /// The name shown in outputs: the symbol, or the gene id when the symbol is empty.
    pub fn display(&self, gene: u32) -> &str {
        let s = &self.symbols[gene as usize];
        if s.trim().is_empty() {
            &self.gene_ids[gene as usize]
        } else {
            s
        }
    }

    pub fn gene_id(&self, gene: u32) -> &str {
        &self.gene_ids[gene as usize]
    }

    /// True when no gene has a symbol (the genes table's symbol column is empty).
    pub fn symbols_empty(&self) -> bool {
        self.symbols.iter().all(|s| s.trim().is_empty())
    }

    /// A short description of the id kinds, for error messages: a few example ids and symbols.
    pub(crate) fn describe(&self) -> String {
        let ids: Vec<&str> = self.gene_ids.iter().take(3).map(String::as_str).collect();
        let symbols: Vec<&str> = self
            .symbols
            .iter()
            .filter(|s| !s.trim().is_empty())
            .take(3)
            .map(String::as_str)
            .collect();
        format!(
            "{} background genes; gene ids like {}; symbols {}",
            self.len(),
            ids.join(", "),
            if symbols.is_empty() {
                "empty".to_string()
            } else {
                format!("like {}", symbols.join(", "))
            }
        )
    }

    /// The error for a library or network none of whose genes is in the background.
    pub(crate) fn no_overlap_error(
        &self,
        path: &std::path::Path,
        what: &str,
        examples: &[&str],
    ) -> AnnotateError {
        let mut reason = format!(
            "none of the {what}'s genes (e.g. {}) matches a gene id or symbol of the catalog's genes table ({}). \
             The ids probably differ in kind (gene symbols vs Ensembl ids)",
            examples.join(", "),
            self.describe()
        );
        if self.symbols_empty() {
            reason.push_str(
                ": the genes table's symbol column is empty, so only ids can match; fill it (e.g. from the \
                 tokenizer's symbol dictionary) or use a library of the same ids",
            );
        } else {
            reason.push_str("; use a library that names genes by the catalog's ids or symbols");
        }
        AnnotateError::file(path, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_matches_ids_and_symbols_ignoring_case_and_versions() {
        let bg = Background::new(
            vec![
                "ENSG00000141510".into(),
                "ENSG00000012048".into(),
                "ENSG00000000003".into(),
            ],
            vec!["TP53".into(), "Brca1".into(), "".into()],
        )
        .unwrap();
        assert_eq!(bg.matches("tp53"), &[0]);
        assert_eq!(bg.matches("BRCA1"), &[1]);
        assert_eq!(bg.matches("ensg00000012048.15"), &[1]);
        assert_eq!(bg.matches(" ENSG00000000003 "), &[2]);
        assert!(bg.matches("MYC").is_empty());
        assert_eq!(bg.display(2), "ENSG00000000003");
        assert_eq!(bg.display(1), "Brca1");
        assert!(!bg.symbols_empty());
        // A symbol with a dot that is not a version stays whole.
        assert_eq!(gene_key("RP11-34P13.7"), "RP11-34P13.7");
        assert_eq!(gene_key("ENSG1.x"), "ENSG1.X");
        assert_eq!(gene_key("αβγδ.1"), "αβγδ.1");
    }
}
