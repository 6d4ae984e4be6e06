//! Geneformer's rank value encoding (`geneformer/tokenizer.py`, `TranscriptomeTokenizer`).
//!
//! For each cell of a raw-count [`CountMatrix`]:
//!
//! 1. **Map and collapse gene ids** ([`TokenizerOptions::collapse_gene_ids`], default on). Symbols
//!    ([`GeneIdKind::Symbol`]) first go through `gene_name_id_dict` (exact match; a symbol missing there is
//!    passed on unchanged, since the V2 mapping dictionary also holds upper-case aliases). Each id is then
//!    upper-cased and looked up in `ensembl_mapping_dict`, restricted to targets that are vocabulary genes
//!    (in the token dictionary, with a median; `<pad>`/`<mask>`/`<cls>`/`<eos>` are never targets). Columns
//!    without a mapping are dropped; columns mapping to the same target are summed. With collapsing off, the
//!    id is looked up as-is in the token dictionary and two columns with the same vocabulary id are an error
//!    (as upstream).
//! 2. **Normalise** in f64, in exactly this order: `x = count / n_counts * 10_000 / median[gene]`.
//!    `n_counts` is the obs column `"n_counts"` when present (numeric), else the cell's total over **all**
//!    columns of the matrix (before any mapping or dropping), with a warning: Geneformer expects the user to
//!    supply the total over the whole transcriptome, before any feature filtering.
//! 3. **Rank** the genes with `x > 0`, descending by `x`.
//!
//!    **Tie rule.** Upstream uses numpy's unstable `argsort(-x)`, whose tie order depends on the numpy version.
//!    scinterp sorts by `x` descending, then by the **ascending column index (in the input matrix) of the
//!    first source column of the collapsed gene** — for a gene that is not collapsed, simply its own column.
//!    The result is deterministic and independent of the order of the stored values. Parity with upstream
//!    holds up to permutations within runs of exactly equal `x` (the tests compare those runs as sets).
//! 4. **Truncate and add specials.** V2: `[<cls>] + genes[..model_input_size - 2] + [<eos>]` (4,096 by
//!    default, so at most 4,094 genes). V1: `genes[..model_input_size]` (2,048 by default), no specials.
//!    A smaller `model_input_size` is allowed (V2: at least 3; V1: at least 1); positions stay within the
//!    model's range, but it is a shift from the training distribution. A larger one is refused: it would
//!    exceed the models' position embeddings.
//!
//! Cells without any token are dropped, as upstream; [`TokenizedCells`] keeps the indices of the kept and
//! dropped cells so that results can be joined back to the input.

mod dictionaries;
mod ranking;
#[cfg(test)]
mod tests;
mod tokenizer;

use std::fmt;
use std::path::PathBuf;

use crate::checkpoint::pickle::PickleError;

pub use dictionaries::{DictMap, GeneformerDictionaries};
pub use tokenizer::{
    GeneIdKind, GeneformerTokenizer, PreparedGenes, TokenizeStats, TokenizedCells, TokenizerOptions,
};

/// `target_sum` of upstream's normalisation.
pub const TARGET_SUM: f64 = 10_000.0;

/// Which Geneformer model series (and dictionaries) to tokenize for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GeneformerVersion {
    /// The original series pretrained on ~30M cells (`*_gc30M.pkl`; 10M and 12L models): 2,048 tokens, no
    /// special tokens.
    V1,
    /// The series pretrained on ~104M cells (`*_gc104M.pkl`; 104M and 316M models): 4,096 tokens with
    /// `<cls>` and `<eos>`.
    V2,
}

impl GeneformerVersion {
    /// The suffix of the dictionary file names (`token_dictionary_<suffix>.pkl`).
    pub fn dictionary_suffix(self) -> &'static str {
        match self {
            GeneformerVersion::V1 => "gc30M",
            GeneformerVersion::V2 => "gc104M",
        }
    }

    /// The native (and largest accepted) `model_input_size`.
    pub fn default_input_size(self) -> usize {
        match self {
            GeneformerVersion::V1 => 2048,
            GeneformerVersion::V2 => 4096,
        }
    }

    /// Whether sequences get `<cls>` in front and `<eos>` at the end.
    pub fn special_tokens(self) -> bool {
        matches!(self, GeneformerVersion::V2)
    }

    /// The file names of the four dictionaries: token, median, name → id, Ensembl mapping.
    pub fn dictionary_files(self) -> [String; 4] {
        let s = self.dictionary_suffix();
        [
            format!("token_dictionary_{s}.pkl"),
            format!("gene_median_dictionary_{s}.pkl"),
            format!("gene_name_id_dict_{s}.pkl"),
            format!("ensembl_mapping_dict_{s}.pkl"),
        ]
    }
}

impl fmt::Display for GeneformerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GeneformerVersion::V1 => "V1",
            GeneformerVersion::V2 => "V2",
        })
    }
}

/// Errors of dictionary loading and tokenization; each says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("cannot read Geneformer dictionary {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode Geneformer dictionary {path}: {source}")]
    Pickle {
        path: PathBuf,
        #[source]
        source: PickleError,
    },
    #[error("Geneformer dictionary {path}: {reason}")]
    Dictionary { path: PathBuf, reason: String },
    #[error("invalid tokenizer options: {0}")]
    Options(String),
    #[error(
        "the matrix does not hold raw counts ({example}). Geneformer ranks raw counts normalised by each \
         cell's total; a log-normalised (or otherwise transformed) matrix cannot be tokenized. Pass the raw \
         count matrix (e.g. adata.raw.X or adata.layers[\"counts\"]), or --allow-normalized for a \
         non-negative normalised matrix"
    )]
    NotCounts { example: String },
    #[error("obs column `n_counts` {reason}")]
    NCounts { reason: String },
    #[error(
        "none of the {n_genes} genes of the matrix maps to a Geneformer {version} gene (e.g. {examples}). \
         Check that the gene ids are {expected}, or choose the other GeneIdKind"
    )]
    NoGenesMapped {
        n_genes: usize,
        version: GeneformerVersion,
        examples: String,
        expected: &'static str,
    },
    #[error(
        "gene id `{id}` appears in columns {first} and {second}; with collapse_gene_ids off the ids must be \
         unique (turn collapsing on to sum duplicates)"
    )]
    DuplicateGene { id: String, first: usize, second: usize },
}
