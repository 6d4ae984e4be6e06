//! scGPT's tokenisation and value binning, pretraining / zero-shot path (`docs/models.md` §3.5 A:
//! `scgpt/tasks/cell_emb.py` `embed_data`, `scgpt/data_collator.py`, `scgpt/preprocess.py` `binning` and
//! `_digitize`).
//!
//! For each cell of a [`CountMatrix`]:
//!
//! 1. **Map symbols.** The gene symbols ([`GeneSymbolSource`]: `gene_ids` by default, or `gene_symbols`) are
//!    looked up exactly in `vocab.json`; unmatched columns, and columns named like a special token
//!    (`<pad>`, `<cls>`, `<eoc>`), are dropped. Two columns with the same symbol both stay (as upstream).
//! 2. **Non-zero genes** (`value != 0`, as `np.nonzero`) in their original column order; `<cls>` first with
//!    value [`ScgptTokenizerOptions::cls_value`] (−2, the pretraining convention; the tutorial path uses 0).
//! 3. **Per-cell quantile binning** of the non-zero values (CLS excluded), before any sampling:
//!    `edges = quantile(nonzero, linspace(0, 1, n_bins - 1))` with numpy's default linear method, computed
//!    as numpy 2.x does on a float32 row (`b - a` in f32, the interpolation in f64, see [`quantile_edges`]);
//!    `left = digitize(x, edges)`, `right = digitize(x, edges, right=True)`; the bin is
//!    `ceil(left - r * (left - right))`, so in `right+1..=left`, exactly `left` when `left - right <= 1`.
//!    Bins are `1..=n_bins-1`.
//! 4. **Length.** When a cell has more than `max_seq_len` tokens (CLS included), CLS stays first and
//!    `max_seq_len - 1` genes are sampled without replacement.
//!
//! **RNG.** Every random number derives from [`splitmix64`] keyed by `(seed, cell, gene column)`, so the
//! result does not depend on batching or thread order ([`ScgptTokenizer::tokenize_with_offset`] keeps the
//! cell key global when a matrix is tokenized in chunks):
//!
//! - binning: `r = (splitmix64(splitmix64(splitmix64(seed ^ BIN_TAG) ^ cell) ^ column) >> 11) · 2⁻⁵³`,
//!   uniform in `[0, 1)`; `column` is the column index in the input matrix;
//! - sampling: each non-zero gene gets the priority `splitmix64(splitmix64(splitmix64(seed ^ SAMPLE_TAG) ^
//!   cell) ^ column)`; the `max_seq_len - 1` genes with the smallest priorities (ties by column) are kept,
//!   which is a uniform sample without replacement. Kept genes stay in their **original column order**
//!   (upstream's `randperm` shuffles them, which is harmless: scGPT has no positions).
//!
//! Upstream draws from the global `np.random` / torch state; exact parity is therefore only reachable
//! where no bin is random (`left - right <= 1`) and no sampling happens (`docs/models.md` §8 rule 6).
//!
//! The output is ragged (no padding): [`ScgptCells`]. Batching pads with [`ScgptTokenizer::pad_id`] and
//! [`ScgptTokenizer::pad_value`] when it must.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::cells::CountMatrix;
use crate::synthetic::splitmix64;

/// Domain tag of the binning draws.
const BIN_TAG: u64 = 0x6269_6e6e_696e_6731; // "binning1"
/// Domain tag of the sampling priorities.
const SAMPLE_TAG: u64 = 0x7361_6d70_6c65_5f31; // "sample_1"

/// The special tokens of the scGPT vocabulary.
pub const SPECIAL_TOKENS: [&str; 3] = ["<pad>", "<cls>", "<eoc>"];

/// Errors of vocabulary/args loading and tokenization; each says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ScgptTokenizeError {
    #[error("cannot read scGPT file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scGPT file {path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("scGPT vocabulary {path}: {reason}")]
    Vocab { path: PathBuf, reason: String },
    #[error("scGPT args {path}: {reason}")]
    Args { path: PathBuf, reason: String },
    #[error("invalid scGPT tokenizer options: {0}")]
    Options(String),
    #[error(
        "none of the {n_genes} gene symbols of the matrix is in the scGPT vocabulary (e.g. {examples}). \
         scGPT expects CELLxGENE feature_name symbols (e.g. GAPDH), not Ensembl ids; choose the column \
         holding symbols (GeneSymbolSource)"
    )]
    NoGenesMatched { n_genes: usize, examples: String },
    #[error("cell {cell} ({name}) has a non-finite value {value} in column {column}")]
    NonFinite {
        cell: usize,
        name: String,
        column: usize,
        value: f32,
    },
}

fn read_json(path: &Path) -> Result<serde_json::Value, ScgptTokenizeError> {
    let bytes = std::fs::read(path).map_err(|source| ScgptTokenizeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| ScgptTokenizeError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// `vocab.json`: symbol → id, with the special tokens resolved.
#[derive(Clone, Debug)]
pub struct ScgptVocab {
    pub tokens: HashMap<String, u32>,
    pub pad: u32,
    pub cls: u32,
    /// `<eoc>`, when present (60696 in whole-human).
    pub eoc: Option<u32>,
}

impl ScgptVocab {
    /// Reads `vocab.json` (a JSON object `{symbol: id}`); it must hold `<pad>` and `<cls>`.
    pub fn load(vocab_json: &Path) -> Result<Self, ScgptTokenizeError> {
        let err = |reason: String| ScgptTokenizeError::Vocab {
            path: vocab_json.to_path_buf(),
            reason,
        };
        let value = read_json(vocab_json)?;
        let obj = value
            .as_object()
            .ok_or_else(|| err("expected a JSON object {symbol: id}".into()))?;
        let mut tokens = HashMap::with_capacity(obj.len());
        for (k, v) in obj {
            let id = v
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| err(format!("the id of `{k}` is {v}, expected a non-negative integer")))?;
            tokens.insert(k.clone(), id);
        }
        Self::from_map(tokens).map_err(|e| err(e.0))
    }

    /// Builds the vocabulary from a map; fails (with a reason) without `<pad>` or `<cls>`.
    pub fn from_map(tokens: HashMap<String, u32>) -> Result<Self, crate::Invalid> {
        Self::build(tokens)
    }

    fn build(tokens: HashMap<String, u32>) -> Result<Self, crate::Invalid> {
        let get = |s: &str| {
            tokens
                .get(s)
                .copied()
                .ok_or_else(|| crate::Invalid(format!("has no `{s}` entry; is it an scGPT vocab.json?")))
        };
        let pad = get("<pad>")?;
        let cls = get("<cls>")?;
        if pad == cls {
            return Err(crate::Invalid(format!("`<pad>` and `<cls>` share the id {pad}")));
        }
        let eoc = tokens.get("<eoc>").copied();
        Ok(ScgptVocab {
            tokens,
            pad,
            cls,
            eoc,
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The id of a gene symbol; `None` for unknown symbols and for the special tokens.
    pub fn gene_id(&self, symbol: &str) -> Option<u32> {
        if SPECIAL_TOKENS.contains(&symbol) {
            return None;
        }
        self.tokens.get(symbol).copied()
    }
}

/// The tokenisation-relevant keys of `args.json`, with the whole-human values as defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScgptArgs {
    pub n_bins: usize,
    pub max_seq_len: usize,
    pub pad_value: f32,
    pub pad_token: String,
    pub mask_value: f32,
}

impl Default for ScgptArgs {
    fn default() -> Self {
        ScgptArgs {
            n_bins: 51,
            max_seq_len: 1200,
            pad_value: -2.0,
            pad_token: "<pad>".into(),
            mask_value: -1.0,
        }
    }
}

impl ScgptArgs {
    /// Reads `args.json`; keys that are absent (or `null`) keep their defaults ([`ScgptArgs::default`]).
    pub fn load(args_json: &Path) -> Result<Self, ScgptTokenizeError> {
        let err = |reason: String| ScgptTokenizeError::Args {
            path: args_json.to_path_buf(),
            reason,
        };
        let value = read_json(args_json)?;
        let obj = value
            .as_object()
            .ok_or_else(|| err("expected a JSON object".into()))?;
        let mut a = ScgptArgs::default();
        let present = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let uint = |k: &str, v: &serde_json::Value| {
            v.as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| err(format!("`{k}` is {v}, expected a non-negative integer")))
        };
        let float = |k: &str, v: &serde_json::Value| {
            v.as_f64()
                .filter(|x| x.is_finite())
                .map(|x| x as f32)
                .ok_or_else(|| err(format!("`{k}` is {v}, expected a number")))
        };
        if let Some(v) = present("n_bins") {
            a.n_bins = uint("n_bins", v)?;
        }
        if let Some(v) = present("max_seq_len") {
            a.max_seq_len = uint("max_seq_len", v)?;
        }
        if let Some(v) = present("pad_value") {
            a.pad_value = float("pad_value", v)?;
        }
        if let Some(v) = present("mask_value") {
            a.mask_value = float("mask_value", v)?;
        }
        if let Some(v) = present("pad_token") {
            a.pad_token = v
                .as_str()
                .ok_or_else(|| err(format!("`pad_token` is {v}, expected a string")))?
                .to_owned();
        }
        Ok(a)
    }
}

/// Which field of the [`CountMatrix`] holds the gene symbols.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeneSymbolSource {
    /// `CountMatrix::gene_ids` (the reader's chosen id column).
    #[default]
    GeneIds,
    /// `CountMatrix::gene_symbols` (an error when the matrix has none).
    GeneSymbols,
}

/// Options of [`ScgptTokenizer`]; `Default` gives the whole-human pretraining settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ScgptTokenizerOptions {
    /// Value of `<cls>`: −2 (pretraining / `embed_data`, default) or 0 (tutorial `tokenize_batch`).
    pub cls_value: f32,
    /// Number of bins including the "not expressed" bin 0; non-zero values get `1..=n_bins-1` (default 51).
    pub n_bins: usize,
    /// Longest sequence, CLS included (default 1,200).
    pub max_seq_len: usize,
    /// Value of padding positions, for batching (default −2).
    pub pad_value: f32,
    /// Seed of the binning draws and the sampling (record it with the tokens).
    pub seed: u64,
    pub symbol_source: GeneSymbolSource,
}

impl Default for ScgptTokenizerOptions {
    fn default() -> Self {
        Self::from_args(&ScgptArgs::default())
    }
}

impl ScgptTokenizerOptions {
    /// Options from `args.json` (n_bins, max_seq_len, pad_value), CLS value −2, seed 0, symbols from
    /// `gene_ids`.
    pub fn from_args(args: &ScgptArgs) -> Self {
        ScgptTokenizerOptions {
            cls_value: -2.0,
            n_bins: args.n_bins,
            max_seq_len: args.max_seq_len,
            pad_value: args.pad_value,
            seed: 0,
            symbol_source: GeneSymbolSource::GeneIds,
        }
    }
}

/// Per-matrix statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScgptTokenizeStats {
    /// Columns of the input matrix.
    pub n_genes: usize,
    /// Columns whose symbol is a vocabulary gene.
    pub n_genes_matched: usize,
    /// Columns dropped (unknown symbol or a special token's name).
    pub n_genes_unmatched: usize,
    /// Matched columns whose vocabulary id an earlier column already has (kept, as upstream).
    pub n_duplicate_genes: usize,
    /// Up to 10 unmatched symbols, for messages.
    pub unmatched_examples: Vec<String>,
    /// Kept cells that had more than `max_seq_len - 1` non-zero genes and were sampled down.
    pub n_cells_sampled: usize,
    /// Binned values whose bin was drawn at random (`left - right >= 2`, repeated edges).
    pub n_random_bins: usize,
}

/// Ragged scGPT token sequences of the kept cells: `<cls>` first, no padding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScgptCells {
    /// Vocabulary ids per kept cell, `<cls>` first.
    pub gene_ids: Vec<Vec<u32>>,
    /// Input values per kept cell: `cls_value`, then the bins `1..=n_bins-1` as f32.
    pub values: Vec<Vec<f32>>,
    /// Input index (plus the offset) of the cell behind each sequence, ascending.
    pub kept_cells: Vec<usize>,
    /// Input indices of the cells without any matched non-zero gene, ascending.
    pub dropped_cells: Vec<usize>,
    pub stats: ScgptTokenizeStats,
}

/// numpy's `np.quantile(x, np.linspace(0, 1, n_edges))` (default linear method) for a float32 array, as
/// numpy 2.x computes it: `q = i · (1 / (n_edges − 1))` (the last one exactly 1), virtual index `(n − 1)·q`,
/// `gamma` its fractional part, `b − a` in float32, then `a + (b − a)·gamma` (or `b − (b − a)·(1 − gamma)`
/// for `gamma ≥ 0.5`) in float64. `x` must be non-empty and free of NaN.
pub fn quantile_edges(x: &[f32], n_edges: usize) -> Vec<f64> {
    assert!(!x.is_empty(), "quantile of an empty array");
    let mut sorted = x.to_vec();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len();
    let div = n_edges.saturating_sub(1) as f64;
    let step = if n_edges > 1 { 1.0 / div } else { 0.0 };
    (0..n_edges)
        .map(|i| {
            // np.linspace: i * step + start, the last element set to `stop`.
            let q = if n_edges > 1 && i == n_edges - 1 {
                1.0
            } else {
                i as f64 * step
            };
            let virtual_index = (n - 1) as f64 * q;
            let prev_f = virtual_index.floor();
            let gamma = virtual_index - prev_f;
            let (prev, next) = if virtual_index >= (n - 1) as f64 {
                (n - 1, n - 1)
            } else if virtual_index < 0.0 {
                (0, 0)
            } else {
                (prev_f as usize, prev_f as usize + 1)
            };
            let (a, b) = (sorted[prev], sorted[next]);
            let diff = f64::from(b - a);
            if gamma >= 0.5 {
                f64::from(b) - diff * (1.0 - gamma)
            } else {
                f64::from(a) + diff * gamma
            }
        })
        .collect()
}

/// `(np.digitize(x, edges), np.digitize(x, edges, right=True))` for non-decreasing `edges`: the number of
/// edges `<= x`, and the number of edges `< x`.
pub fn digitize_both(x: f32, edges: &[f64]) -> (u32, u32) {
    let x = f64::from(x);
    let left = edges.partition_point(|&e| e <= x);
    let right = edges.partition_point(|&e| e < x);
    (left as u32, right as u32)
}

/// scGPT's `_digitize` draw: `ceil(left − r·(left − right))` for `r ∈ [0, 1)`, i.e. `right+1..=left`
/// (exactly `left` when `left − right <= 1`).
pub fn draw_bin(left: u32, right: u32, r: f64) -> u32 {
    let (l, rt) = (f64::from(left), f64::from(right));
    (r * (rt - l) + l).ceil() as u32
}

/// Uniform `[0, 1)` with 53 random bits.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn cell_key(seed: u64, tag: u64, cell: u64) -> u64 {
    splitmix64(splitmix64(seed ^ tag) ^ cell)
}

/// The scGPT tokenizer; build once, tokenize many matrices.
#[derive(Clone, Debug)]
pub struct ScgptTokenizer {
    vocab: ScgptVocab,
    options: ScgptTokenizerOptions,
}

impl ScgptTokenizer {
    pub fn new(vocab: ScgptVocab, options: ScgptTokenizerOptions) -> Result<Self, ScgptTokenizeError> {
        if options.n_bins < 3 || options.n_bins > 1 << 20 {
            return Err(ScgptTokenizeError::Options(format!(
                "n_bins {} is outside 3..=1048576 (the checkpoints use 51)",
                options.n_bins
            )));
        }
        if options.max_seq_len < 2 {
            return Err(ScgptTokenizeError::Options(format!(
                "--max-len {} (max_seq_len) leaves no room for a gene after <cls>; use at least 2 (the \
                 checkpoints use 1200)",
                options.max_seq_len
            )));
        }
        for (name, v) in [("cls_value", options.cls_value), ("pad_value", options.pad_value)] {
            if !v.is_finite() {
                return Err(ScgptTokenizeError::Options(format!("{name} {v} is not finite")));
            }
        }
        Ok(ScgptTokenizer { vocab, options })
    }

    pub fn options(&self) -> &ScgptTokenizerOptions {
        &self.options
    }

    pub fn vocab(&self) -> &ScgptVocab {
        &self.vocab
    }

    /// `<pad>`'s id, for batching.
    pub fn pad_id(&self) -> u32 {
        self.vocab.pad
    }

    /// The value of padding positions, for batching.
    pub fn pad_value(&self) -> f32 {
        self.options.pad_value
    }

    /// `<cls>`'s id.
    pub fn cls_id(&self) -> u32 {
        self.vocab.cls
    }

    /// Tokenizes every cell; cells are keyed `0..n_cells` for the RNG.
    pub fn tokenize(&self, m: &CountMatrix) -> Result<ScgptCells, ScgptTokenizeError> {
        self.tokenize_with_offset(m, 0)
    }

    /// Tokenizes a chunk of a larger matrix whose first cell has the global index `cell_offset`: the RNG is
    /// keyed by `cell_offset + c`, and `kept_cells` / `dropped_cells` hold global indices, so chunked runs
    /// equal one run over the whole matrix.
    pub fn tokenize_with_offset(
        &self,
        m: &CountMatrix,
        cell_offset: usize,
    ) -> Result<ScgptCells, ScgptTokenizeError> {
        let symbols: &[String] = match self.options.symbol_source {
            GeneSymbolSource::GeneIds => &m.gene_ids,
            GeneSymbolSource::GeneSymbols => m.gene_symbols.as_deref().ok_or_else(|| {
                ScgptTokenizeError::Options(
                    "symbol_source is GeneSymbols but the matrix has no gene symbols; use GeneIds".into(),
                )
            })?,
        };
        let mut stats = ScgptTokenizeStats {
            n_genes: symbols.len(),
            ..Default::default()
        };
        let mut seen = std::collections::HashSet::new();
        let col_id: Vec<Option<u32>> = symbols
            .iter()
            .map(|s| {
                let id = self.vocab.gene_id(s);
                match id {
                    Some(t) => {
                        stats.n_genes_matched += 1;
                        if !seen.insert(t) {
                            stats.n_duplicate_genes += 1;
                        }
                    }
                    None => {
                        stats.n_genes_unmatched += 1;
                        if stats.unmatched_examples.len() < 10 {
                            stats.unmatched_examples.push(s.clone());
                        }
                    }
                }
                id
            })
            .collect();
        if stats.n_genes_matched == 0 {
            return Err(ScgptTokenizeError::NoGenesMatched {
                n_genes: symbols.len(),
                examples: if stats.unmatched_examples.is_empty() {
                    "none".into()
                } else {
                    stats.unmatched_examples[..stats.unmatched_examples.len().min(5)].join(", ")
                },
            });
        }

        let n_edges = self.options.n_bins - 1;
        let mut out = ScgptCells {
            stats,
            ..Default::default()
        };
        // (column, id, value) of the cell's matched non-zero genes, ascending column.
        let mut genes: Vec<(usize, u32, f32)> = Vec::new();
        for c in 0..m.n_cells {
            let global = cell_offset + c;
            genes.clear();
            for (col, v) in m.cell(c) {
                if !v.is_finite() {
                    return Err(ScgptTokenizeError::NonFinite {
                        cell: global,
                        name: m.cell_names.get(c).cloned().unwrap_or_default(),
                        column: col,
                        value: v,
                    });
                }
                if v != 0.0 {
                    if let Some(id) = col_id.get(col).copied().flatten() {
                        genes.push((col, id, v));
                    }
                }
            }
            if genes.is_empty() {
                out.dropped_cells.push(global);
                continue;
            }
            // Stored indices are ascending per the CountMatrix contract; sort anyway (cheap when sorted).
            genes.sort_by_key(|g| g.0);

            let nonzero: Vec<f32> = genes.iter().map(|g| g.2).collect();
            let edges = quantile_edges(&nonzero, n_edges);
            let bin_key = cell_key(self.options.seed, BIN_TAG, global as u64);
            let mut bins: Vec<u32> = Vec::with_capacity(genes.len());
            for &(col, _, v) in &genes {
                let (left, right) = digitize_both(v, &edges);
                if left > right + 1 {
                    out.stats.n_random_bins += 1;
                }
                let r = unit(splitmix64(bin_key ^ col as u64));
                bins.push(draw_bin(left, right, r));
            }

            let keep = self.options.max_seq_len - 1;
            let mut order: Vec<usize> = (0..genes.len()).collect();
            if genes.len() > keep {
                out.stats.n_cells_sampled += 1;
                let key = cell_key(self.options.seed, SAMPLE_TAG, global as u64);
                let prio = |i: usize| (splitmix64(key ^ genes[i].0 as u64), genes[i].0);
                order.select_nth_unstable_by_key(keep - 1, |&i| prio(i));
                order.truncate(keep);
                order.sort_unstable();
            }
            let mut ids = Vec::with_capacity(order.len() + 1);
            let mut vals = Vec::with_capacity(order.len() + 1);
            ids.push(self.vocab.cls);
            vals.push(self.options.cls_value);
            for &i in &order {
                ids.push(genes[i].1);
                vals.push(bins[i] as f32);
            }
            out.gene_ids.push(ids);
            out.values.push(vals);
            out.kept_cells.push(global);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer/scgpt");

    use crate::cells::test_matrix as matrix;

    struct Fixture {
        name: String,
        n_bins: usize,
        max_seq_len: usize,
        vocab: HashMap<String, u32>,
        matrix: CountMatrix,
        expected: serde_json::Value,
    }

    fn load_fixture(name: &str) -> Fixture {
        let path = Path::new(FIXTURES).join(format!("{name}.json"));
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let vocab = doc["vocab"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap() as u32))
            .collect();
        let symbols: Vec<String> = doc["gene_symbols"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        let rows: Vec<Vec<(u32, f32)>> = doc["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let cols = c["cols"].as_array().unwrap();
                let bits = c["values_f32_bits"].as_array().unwrap();
                cols.iter()
                    .zip(bits)
                    .map(|(g, b)| {
                        (
                            g.as_u64().unwrap() as u32,
                            f32::from_bits(b.as_u64().unwrap() as u32),
                        )
                    })
                    .collect()
            })
            .collect();
        Fixture {
            name: name.into(),
            n_bins: doc["n_bins"].as_u64().unwrap() as usize,
            max_seq_len: doc["max_seq_len"].as_u64().unwrap() as usize,
            vocab,
            matrix: matrix(symbols, &rows),
            expected: doc["expected"].clone(),
        }
    }

    fn u32s(v: &serde_json::Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }

    fn usizes(v: &serde_json::Value) -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    }

    fn tokenizer(
        vocab: &HashMap<String, u32>,
        n_bins: usize,
        max_seq_len: usize,
        seed: u64,
    ) -> ScgptTokenizer {
        let options = ScgptTokenizerOptions {
            n_bins,
            max_seq_len,
            seed,
            ..Default::default()
        };
        ScgptTokenizer::new(ScgptVocab::from_map(vocab.clone()).unwrap(), options).unwrap()
    }

    /// Checks one tokenizer output against a fixture: ids, CLS, bins within `right+1..=left`.
    fn check_fixture(f: &Fixture, out: &ScgptCells, max_seq_len: usize, cls: u32) {
        let e = &f.expected;
        assert_eq!(out.kept_cells, usizes(&e["kept_cells"]), "{}", f.name);
        assert_eq!(out.dropped_cells, usizes(&e["dropped_cells"]), "{}", f.name);
        assert_eq!(
            out.stats.n_genes_matched,
            e["n_genes_matched"].as_u64().unwrap() as usize
        );
        assert_eq!(
            out.stats.n_genes_unmatched,
            e["n_genes_unmatched"].as_u64().unwrap() as usize
        );
        let cells = e["cells"].as_array().unwrap();
        assert_eq!(cells.len(), out.gene_ids.len());
        for (k, ec) in cells.iter().enumerate() {
            let cell = out.kept_cells[k];
            let full = u32s(&ec["gene_ids"]);
            let (left, right) = (u32s(&ec["left"]), u32s(&ec["right"]));
            let ids = &out.gene_ids[k];
            let vals = &out.values[k];
            assert_eq!(ids.len(), vals.len());
            assert_eq!(
                (ids[0], vals[0]),
                (cls, -2.0),
                "{} cell {cell}: CLS first",
                f.name
            );
            if full.len() <= max_seq_len {
                assert_eq!(ids, &full, "{} cell {cell}", f.name);
            } else {
                assert_eq!(ids.len(), max_seq_len, "{} cell {cell}", f.name);
            }
            // Edges, exactly (bit patterns), from the binned non-zero values in column order.
            let rows: Vec<f32> = f
                .matrix
                .cell(cell)
                .filter(|&(g, v)| v != 0.0 && f.vocab.contains_key(&f.matrix.gene_ids[g]))
                .filter(|&(g, _)| !SPECIAL_TOKENS.contains(&f.matrix.gene_ids[g].as_str()))
                .map(|(_, v)| v)
                .collect();
            assert_eq!(rows.len() + 1, full.len());
            let edges = quantile_edges(&rows, f.n_bins - 1);
            let want: Vec<String> = ec["edges_f64_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect();
            let got: Vec<String> = edges.iter().map(|e| format!("{:016x}", e.to_bits())).collect();
            assert_eq!(got, want, "{} cell {cell}: edges", f.name);
            for (j, &x) in rows.iter().enumerate() {
                assert_eq!(
                    digitize_both(x, &edges),
                    (left[j], right[j]),
                    "{} cell {cell} value {j}",
                    f.name
                );
            }
            // Each output gene: its bin against the fixture's (left, right) at its position in `full`.
            let mut pos: HashMap<u32, Vec<usize>> = HashMap::new();
            for (j, &g) in full[1..].iter().enumerate() {
                pos.entry(g).or_default().push(j);
            }
            let mut used = BTreeSet::new();
            for (&g, &v) in ids[1..].iter().zip(&vals[1..]) {
                let j = *pos[&g]
                    .iter()
                    .find(|j| !used.contains(*j))
                    .expect("gene of the cell");
                used.insert(j);
                let (l, r) = (left[j], right[j]);
                let b = v as u32;
                assert_eq!(b as f32, v);
                if l <= r + 1 {
                    assert_eq!(b, l, "{} cell {cell} gene {g}: deterministic bin", f.name);
                } else {
                    assert!(
                        b > r && b <= l,
                        "{} cell {cell} gene {g}: bin {b} outside {}..={l}",
                        f.name,
                        r + 1
                    );
                }
                assert!(b >= 1 && b < f.n_bins as u32);
            }
            // Sampled genes keep their original column order.
            let order: Vec<usize> = used.iter().copied().collect();
            let mut seq = Vec::new();
            for (&g, _) in ids[1..].iter().zip(&vals[1..]) {
                seq.push(g);
            }
            let sub: Vec<u32> = order.iter().map(|&j| full[j + 1]).collect();
            assert_eq!(seq, sub, "{} cell {cell}: original order", f.name);
        }
    }

    #[test]
    fn fixtures_match_numpy() {
        for name in ["basic", "long"] {
            let f = load_fixture(name);
            let cls = f.vocab["<cls>"];
            for seed in [0, 1, 42] {
                let t = tokenizer(&f.vocab, f.n_bins, f.max_seq_len, seed);
                let out = t.tokenize(&f.matrix).unwrap();
                check_fixture(&f, &out, f.max_seq_len, cls);
            }
            // Without truncation the sequences are exact for every cell.
            let t = tokenizer(&f.vocab, f.n_bins, 1200, 3);
            check_fixture(&f, &t.tokenize(&f.matrix).unwrap(), 1200, cls);
        }
    }

    #[test]
    fn fixtures_with_real_vocab() {
        let Some(path) = crate::test_data::shared_data("scgpt/whole-human/vocab.json") else {
            return;
        };
        let vocab = ScgptVocab::load(&path).unwrap();
        assert_eq!(vocab.len(), 60_697);
        assert_eq!((vocab.pad, vocab.cls, vocab.eoc), (60_694, 60_695, Some(60_696)));
        for name in ["basic", "long"] {
            let f = load_fixture(name);
            for (k, &v) in &f.vocab {
                assert_eq!(vocab.tokens.get(k), Some(&v), "{name}: {k}");
            }
            let t = ScgptTokenizer::new(
                vocab.clone(),
                ScgptTokenizerOptions {
                    max_seq_len: f.max_seq_len,
                    seed: 9,
                    ..Default::default()
                },
            )
            .unwrap();
            check_fixture(&f, &t.tokenize(&f.matrix).unwrap(), f.max_seq_len, 60_695);
        }
    }

    #[test]
    fn real_args_load() {
        let Some(path) = crate::test_data::shared_data("scgpt/whole-human/args.json") else {
            return;
        };
        let a = ScgptArgs::load(&path).unwrap();
        assert_eq!(a, ScgptArgs::default());
        let o = ScgptTokenizerOptions::from_args(&a);
        assert_eq!(
            (o.n_bins, o.max_seq_len, o.pad_value, o.cls_value),
            (51, 1200, -2.0, -2.0)
        );
    }

    #[test]
    fn args_defaults_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("args.json");
        std::fs::write(&p, r#"{"n_bins": 11, "pad_value": -3.5, "max_seq_len": null}"#).unwrap();
        let a = ScgptArgs::load(&p).unwrap();
        assert_eq!(
            (a.n_bins, a.max_seq_len, a.pad_value, a.pad_token.as_str()),
            (11, 1200, -3.5, "<pad>")
        );
        std::fs::write(&p, r#"{"n_bins": "x"}"#).unwrap();
        let e = ScgptArgs::load(&p).unwrap_err().to_string();
        assert!(e.contains("args.json") && e.contains("n_bins"), "{e}");
        std::fs::write(&p, "{").unwrap();
        assert!(ScgptArgs::load(&p).unwrap_err().to_string().contains("args.json"));
        let missing = dir.path().join("nope.json");
        assert!(ScgptArgs::load(&missing)
            .unwrap_err()
            .to_string()
            .contains("nope.json"));
    }

    #[test]
    fn vocab_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing_vocab.json");
        let e = ScgptVocab::load(&missing).unwrap_err();
        assert!(matches!(e, ScgptTokenizeError::Io { .. }));
        assert!(e.to_string().contains("missing_vocab.json"), "{e}");
        let p = dir.path().join("vocab.json");
        for (text, what) in [
            (r#"{"A": 0, "<pad>": 1}"#, "<cls>"),
            (r#"{"A": 0, "<cls>": 1}"#, "<pad>"),
            (r#"{"A": -1, "<cls>": 1, "<pad>": 2}"#, "non-negative"),
            (r#"["A"]"#, "object"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = ScgptVocab::load(&p).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("vocab.json"), "{e}");
        }
        std::fs::write(&p, "not json").unwrap();
        assert!(matches!(
            ScgptVocab::load(&p).unwrap_err(),
            ScgptTokenizeError::Json { .. }
        ));
    }

    fn toy_vocab() -> HashMap<String, u32> {
        let mut v: HashMap<String, u32> = (0..300).map(|i| (format!("G{i}"), i)).collect();
        v.insert("<pad>".into(), 300);
        v.insert("<cls>".into(), 301);
        v.insert("<eoc>".into(), 302);
        v
    }

    fn tied_matrix() -> CountMatrix {
        let genes: Vec<String> = (0..300).map(|i| format!("G{i}")).collect();
        let rows: Vec<Vec<(u32, f32)>> = (0..6)
            .map(|c| (0..200u32).map(|g| (g, ((g * 7 + c) % 4 + 1) as f32)).collect())
            .collect();
        matrix(genes, &rows)
    }

    #[test]
    fn determinism_and_seed_dependence() {
        let v = toy_vocab();
        let m = tied_matrix();
        let a = tokenizer(&v, 51, 1200, 7).tokenize(&m).unwrap();
        let b = tokenizer(&v, 51, 1200, 7).tokenize(&m).unwrap();
        assert_eq!(a, b);
        assert!(a.stats.n_random_bins > 0);
        let c = tokenizer(&v, 51, 1200, 8).tokenize(&m).unwrap();
        assert_eq!(a.gene_ids, c.gene_ids);
        assert_ne!(a.values, c.values);
        // Differences only where the bin is random (repeated edges).
        for k in 0..a.values.len() {
            let row: Vec<f32> = m.cell(k).map(|(_, x)| x).collect();
            let edges = quantile_edges(&row, 50);
            for (j, &x) in row.iter().enumerate() {
                let (l, r) = digitize_both(x, &edges);
                if l <= r + 1 {
                    assert_eq!(a.values[k][j + 1], c.values[k][j + 1]);
                    assert_eq!(a.values[k][j + 1], l as f32);
                }
            }
        }
        // Without ties nothing depends on the seed.
        let genes: Vec<String> = (0..300).map(|i| format!("G{i}")).collect();
        let rows: Vec<Vec<(u32, f32)>> = vec![(0..120u32)
            .map(|g| (g, ((g * 37) % 120 + 1) as f32 * 0.5))
            .collect()];
        let m2 = matrix(genes, &rows);
        let x = tokenizer(&v, 51, 1200, 1).tokenize(&m2).unwrap();
        let y = tokenizer(&v, 51, 1200, 2).tokenize(&m2).unwrap();
        assert_eq!(x, y);
        assert_eq!(x.stats.n_random_bins, 0);
        let vals = &x.values[0][1..];
        assert_eq!(vals.iter().cloned().fold(f32::MAX, f32::min), 1.0);
        assert_eq!(vals.iter().cloned().fold(0.0, f32::max), 50.0);
    }

    #[test]
    fn chunked_equals_whole_and_sampling() {
        let v = toy_vocab();
        let m = tied_matrix();
        let t = tokenizer(&v, 51, 64, 11);
        let whole = t.tokenize(&m).unwrap();
        assert_eq!(whole.stats.n_cells_sampled, 6);
        for ids in &whole.gene_ids {
            assert_eq!(ids.len(), 64);
            assert_eq!(ids[0], 301);
            assert!(ids[1..].windows(2).all(|w| w[0] < w[1]), "original column order");
        }
        // Different cells sample different subsets; different seeds too.
        assert_ne!(whole.gene_ids[0][1..], whole.gene_ids[1][1..]);
        let other = tokenizer(&v, 51, 64, 12).tokenize(&m).unwrap();
        assert_ne!(whole.gene_ids, other.gene_ids);
        // Chunks with offsets reproduce the whole run.
        let sub = |lo: usize, hi: usize| {
            let rows: Vec<Vec<(u32, f32)>> = (lo..hi)
                .map(|c| m.cell(c).map(|(g, x)| (g as u32, x)).collect())
                .collect();
            matrix(m.gene_ids.clone(), &rows)
        };
        let a = t.tokenize_with_offset(&sub(0, 2), 0).unwrap();
        let b = t.tokenize_with_offset(&sub(2, 6), 2).unwrap();
        assert_eq!([a.gene_ids, b.gene_ids].concat(), whole.gene_ids);
        assert_eq!([a.values, b.values].concat(), whole.values);
        assert_eq!([a.kept_cells, b.kept_cells].concat(), whole.kept_cells);
    }

    #[test]
    fn options_and_mapping() {
        let v = toy_vocab();
        let vocab = ScgptVocab::from_map(v.clone()).unwrap();
        for o in [
            ScgptTokenizerOptions {
                n_bins: 2,
                ..Default::default()
            },
            ScgptTokenizerOptions {
                max_seq_len: 1,
                ..Default::default()
            },
            ScgptTokenizerOptions {
                cls_value: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                ScgptTokenizer::new(vocab.clone(), o),
                Err(ScgptTokenizeError::Options(_))
            ));
        }
        // Tutorial CLS value; symbols from gene_symbols; duplicates and specials.
        let t = ScgptTokenizer::new(
            vocab.clone(),
            ScgptTokenizerOptions {
                cls_value: 0.0,
                symbol_source: GeneSymbolSource::GeneSymbols,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((t.pad_id(), t.pad_value(), t.cls_id()), (300, -2.0, 301));
        let mut m = matrix(
            vec!["ENSG1".into(), "ENSG2".into(), "ENSG3".into(), "ENSG4".into()],
            &[vec![(0, 5.0), (1, 2.0), (2, 9.0), (3, 1.0)]],
        );
        assert!(t.tokenize(&m).is_err(), "no gene_symbols");
        m.gene_symbols = Some(vec!["G5".into(), "<cls>".into(), "G5".into(), "nope".into()]);
        let out = t.tokenize(&m).unwrap();
        assert_eq!(out.gene_ids, vec![vec![301, 5, 5]]);
        assert_eq!(out.values, vec![vec![0.0, 1.0, 50.0]]);
        assert_eq!(
            (
                out.stats.n_genes_matched,
                out.stats.n_genes_unmatched,
                out.stats.n_duplicate_genes
            ),
            (2, 2, 1)
        );
        assert_eq!(
            out.stats.unmatched_examples,
            vec!["<cls>".to_string(), "nope".into()]
        );
        // Ensembl ids only: an error that names the problem.
        let t2 = ScgptTokenizer::new(vocab.clone(), ScgptTokenizerOptions::default()).unwrap();
        let e = t2.tokenize(&m).unwrap_err().to_string();
        assert!(e.contains("ENSG1") && e.contains("symbols"), "{e}");
        // Non-finite values are refused.
        let bad = matrix(vec!["G1".into()], &[vec![(0, f32::NAN)]]);
        assert!(matches!(
            t2.tokenize(&bad),
            Err(ScgptTokenizeError::NonFinite { .. })
        ));
    }

    #[test]
    fn draw_bin_range() {
        assert_eq!(draw_bin(7, 7, 0.99), 7);
        assert_eq!(draw_bin(7, 6, 0.0), 7);
        assert_eq!(draw_bin(7, 6, 0.999_999), 7);
        assert_eq!(draw_bin(7, 3, 0.0), 7);
        assert_eq!(draw_bin(7, 3, 0.999_999), 4);
        assert_eq!(draw_bin(7, 3, 0.5), 5);
        // A single value: all edges equal it; left = n_edges, right = 0.
        let e = quantile_edges(&[3.0], 50);
        assert_eq!(digitize_both(3.0, &e), (50, 0));
    }
}
