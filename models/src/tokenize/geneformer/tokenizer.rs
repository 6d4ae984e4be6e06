//! The tokenizer: gene ids mapped and collapsed onto the vocabulary, counts checked and normalised, and
//! each cell's genes ranked (by [`super::ranking`]) and truncated.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::cells::{CountMatrix, ObsColumn};

use super::ranking::CellRanker;
use super::*;

/// What the matrix's gene ids are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeneIdKind {
    /// Ensembl gene ids (or upper-case aliases known to the mapping dictionary).
    #[default]
    Ensembl,
    /// Gene symbols, mapped through `gene_name_id_dict` first.
    Symbol,
}

/// Options of [`GeneformerTokenizer`]; [`TokenizerOptions::new`] gives upstream's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenizerOptions {
    pub version: GeneformerVersion,
    pub gene_id_kind: GeneIdKind,
    /// Map ids through the Ensembl mapping dictionary and sum genes with the same target (default true).
    pub collapse_gene_ids: bool,
    /// Length of the emitted sequences, specials included (V2 default 4,096; V1 2,048). Smaller values are
    /// allowed (V2 ≥ 3, V1 ≥ 1); larger ones are refused.
    pub model_input_size: usize,
    /// Accept a matrix whose values are not integer counts (e.g. already normalised) as long as they are
    /// non-negative and finite. Off by default: Geneformer was trained on raw counts.
    pub allow_normalized: bool,
}

impl TokenizerOptions {
    pub fn new(version: GeneformerVersion) -> Self {
        TokenizerOptions {
            version,
            gene_id_kind: GeneIdKind::Ensembl,
            collapse_gene_ids: true,
            model_input_size: version.default_input_size(),
            allow_normalized: false,
        }
    }
}

/// A vocabulary gene the tokenizer can emit.
#[derive(Clone, Debug)]
struct VocabGene {
    token: u32,
    median: f64,
}

/// The rank value encoder; build once, tokenize many matrices.
#[derive(Clone, Debug)]
pub struct GeneformerTokenizer {
    options: TokenizerOptions,
    genes: Vec<VocabGene>,
    /// Exact vocabulary id → index in `genes` (used with collapsing off, and for the mapping's targets).
    by_id: DictMap<usize>,
    /// Upper-case source id → canonical id (the whole mapping dictionary; a target that is not in `by_id`
    /// is no mapping). Empty with collapsing off.
    mapping: DictMap<String>,
    gene_name_id: DictMap<String>,
    cls: Option<u32>,
    eos: Option<u32>,
}

/// Per-matrix statistics of the gene mapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizeStats {
    /// Columns of the input matrix.
    pub n_genes: usize,
    /// Columns that map to a vocabulary gene.
    pub n_genes_mapped: usize,
    /// Columns dropped because they map to no vocabulary gene.
    pub n_genes_unmapped: usize,
    /// Distinct vocabulary genes after collapsing (`n_genes_mapped` minus the columns summed into another).
    pub n_targets: usize,
    /// Up to 10 of the unmapped ids, for messages.
    pub unmapped_examples: Vec<String>,
    /// Whether `n_counts` was computed from the matrix (no `n_counts` obs column).
    pub n_counts_computed: bool,
}

/// The token sequences of the cells that have at least one token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenizedCells {
    /// One sequence per kept cell, specials included (V2).
    pub tokens: Vec<Vec<u32>>,
    /// Input index of the cell behind each sequence (ascending).
    pub kept_cells: Vec<usize>,
    /// Input indices of the cells dropped for having no token (ascending).
    pub dropped_cells: Vec<usize>,
    pub stats: TokenizeStats,
}

/// Input columns resolved to vocabulary genes, in order of first source column.
struct ColumnMap {
    /// Per input column: the local target index, if mapped.
    col_target: Vec<Option<u32>>,
    /// Per local target: the index into `GeneformerTokenizer::genes`.
    targets: Vec<usize>,
    stats: TokenizeStats,
}

/// The per-cell tables of a [`ColumnMap`], laid out for the ranking loop.
pub(super) struct CellTables {
    /// Per input column: the local target index, or `UNMAPPED`.
    pub(super) col_local: Vec<u32>,
    /// Per local target: its median and its token.
    pub(super) median: Vec<f64>,
    pub(super) token: Vec<u32>,
    /// No two columns share a target: each count is its gene's count, nothing is summed.
    pub(super) injective: bool,
}

pub(super) const UNMAPPED: u32 = u32::MAX;

impl GeneformerTokenizer {
    pub fn new(dicts: &GeneformerDictionaries, options: TokenizerOptions) -> Result<Self, TokenizeError> {
        let mut tokenizer = Self::build(dicts, options)?;
        if options.collapse_gene_ids {
            tokenizer.mapping = dicts.ensembl_mapping.clone();
        }
        if options.gene_id_kind == GeneIdKind::Symbol {
            tokenizer.gene_name_id = dicts.gene_name_id.clone();
        }
        Ok(tokenizer)
    }

    /// [`Self::new`] taking the dictionaries, whose maps it keeps instead of copying them.
    pub fn from_dictionaries(
        mut dicts: GeneformerDictionaries,
        options: TokenizerOptions,
    ) -> Result<Self, TokenizeError> {
        let mut tokenizer = Self::build(&dicts, options)?;
        if options.collapse_gene_ids {
            tokenizer.mapping = std::mem::take(&mut dicts.ensembl_mapping);
        }
        if options.gene_id_kind == GeneIdKind::Symbol {
            tokenizer.gene_name_id = std::mem::take(&mut dicts.gene_name_id);
        }
        Ok(tokenizer)
    }

    /// Everything but the mapping and symbol dictionaries, which the callers add.
    fn build(dicts: &GeneformerDictionaries, options: TokenizerOptions) -> Result<Self, TokenizeError> {
        let version = options.version;
        if let Some(v) = dicts.version {
            if v != version {
                return Err(TokenizeError::Options(format!(
                    "the dictionaries are for Geneformer {v}, the options ask for {version}"
                )));
            }
        }
        let min = if version.special_tokens() { 3 } else { 1 };
        let max = version.default_input_size();
        if options.model_input_size < min || options.model_input_size > max {
            return Err(TokenizeError::Options(format!(
                "--max-len {} (model_input_size) is outside {min}..={max} for Geneformer {version}",
                options.model_input_size
            )));
        }
        let (cls, eos) = if version.special_tokens() {
            let get = |s: &str| {
                dicts.token.get(s).copied().ok_or_else(|| {
                    TokenizeError::Options(format!(
                        "the token dictionary has no `{s}`, required for {version}"
                    ))
                })
            };
            (Some(get("<cls>")?), Some(get("<eos>")?))
        } else {
            (None, None)
        };
        // Vocabulary genes: token entries that are not specials and have a median. Sorted by token id so
        // that the tables do not depend on hash order.
        let mut vocab: Vec<(&String, u32, f64)> = dicts
            .token
            .iter()
            .filter(|(id, _)| !id.starts_with('<'))
            .filter_map(|(id, &t)| dicts.median.get(id).map(|&m| (id, t, m)))
            .collect();
        vocab.sort_by_key(|&(_, t, _)| t);
        let genes: Vec<VocabGene> = vocab
            .iter()
            .map(|&(_, token, median)| VocabGene { token, median })
            .collect();
        let by_id: DictMap<usize> = vocab
            .iter()
            .enumerate()
            .map(|(i, &(id, _, _))| (id.clone(), i))
            .collect();
        Ok(GeneformerTokenizer {
            options,
            genes,
            by_id,
            mapping: DictMap::default(),
            gene_name_id: DictMap::default(),
            cls,
            eos,
        })
    }

    pub fn options(&self) -> &TokenizerOptions {
        &self.options
    }

    /// How many of `gene_ids` map to a vocabulary gene with this tokenizer's options (for diagnosing a
    /// gene id column that maps badly; no error when none does).
    pub fn count_mapped(&self, gene_ids: &[String]) -> usize {
        gene_ids
            .iter()
            .filter(|raw| {
                let id: &str = match self.options.gene_id_kind {
                    GeneIdKind::Symbol => self.gene_name_id.get(*raw).map(String::as_str).unwrap_or(raw),
                    GeneIdKind::Ensembl => raw,
                };
                self.gene_of(id).is_some()
            })
            .count()
    }

    /// The vocabulary gene (index in `genes`) of an Ensembl id or alias, if any.
    fn gene_of(&self, id: &str) -> Option<usize> {
        if self.options.collapse_gene_ids {
            let target = self.mapping.get(&id.to_uppercase())?;
            self.by_id.get(target).copied()
        } else {
            self.by_id.get(id).copied()
        }
    }

    /// Resolves the matrix's gene ids to vocabulary genes (step 1 of the module doc).
    fn map_columns(&self, gene_ids: &[String]) -> Result<ColumnMap, TokenizeError> {
        let mut col_target = Vec::with_capacity(gene_ids.len());
        // gene index → (local index, first column)
        let mut local: HashMap<usize, (u32, usize), foldhash::fast::RandomState> = HashMap::default();
        let mut targets = Vec::new();
        let mut stats = TokenizeStats {
            n_genes: gene_ids.len(),
            ..TokenizeStats::default()
        };
        for (col, raw) in gene_ids.iter().enumerate() {
            let id: &str = match self.options.gene_id_kind {
                GeneIdKind::Symbol => self.gene_name_id.get(raw).map(String::as_str).unwrap_or(raw),
                GeneIdKind::Ensembl => raw,
            };
            let gene = self.gene_of(id);
            let Some(gene) = gene else {
                stats.n_genes_unmapped += 1;
                if stats.unmapped_examples.len() < 10 {
                    stats.unmapped_examples.push(raw.clone());
                }
                col_target.push(None);
                continue;
            };
            stats.n_genes_mapped += 1;
            let next = targets.len() as u32;
            let &mut (l, first) = local.entry(gene).or_insert((next, col));
            if l == next {
                targets.push(gene);
            } else if !self.options.collapse_gene_ids {
                return Err(TokenizeError::DuplicateGene {
                    id: id.to_owned(),
                    first,
                    second: col,
                });
            }
            col_target.push(Some(l));
        }
        stats.n_targets = targets.len();
        if stats.n_genes_mapped == 0 && !gene_ids.is_empty() {
            let expected = match self.options.gene_id_kind {
                GeneIdKind::Ensembl => "Ensembl ids (ENSG...)",
                GeneIdKind::Symbol => "gene symbols",
            };
            return Err(TokenizeError::NoGenesMapped {
                n_genes: gene_ids.len(),
                version: self.options.version,
                examples: stats
                    .unmapped_examples
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                expected,
            });
        }
        Ok(ColumnMap {
            col_target,
            targets,
            stats,
        })
    }

    /// Tokenizes every cell of `m` (see the module doc for the exact steps and the tie rule).
    pub fn tokenize(&self, m: &CountMatrix) -> Result<TokenizedCells, TokenizeError> {
        let prepared = self.prepare(m)?;
        let mut out = self.tokenize_cells(&prepared, m, 0..m.n_cells, 0)?;
        out.stats = prepared.stats().clone();
        if !out.dropped_cells.is_empty() {
            tracing::warn!(
                "{} of {} cells have no gene in the Geneformer {} vocabulary and were dropped",
                out.dropped_cells.len(),
                m.n_cells,
                self.options.version
            );
        }
        Ok(out)
    }

    /// Maps the gene ids of `m` once for all its cells and checks its `n_counts` column; then
    /// [`Self::tokenize_cells`] tokenizes any cells of `m`, or of blocks of cells read later with the
    /// same genes and obs columns (only the gene ids and the obs columns of `m` are read here).
    pub fn prepare(&self, m: &CountMatrix) -> Result<PreparedGenes, TokenizeError> {
        let mut map = self.map_columns(&m.gene_ids)?;
        if given_n_counts(m)?.is_none() {
            map.stats.n_counts_computed = true;
            tracing::warn!(
                "no `n_counts` obs column: using each cell's total over the {} genes of the matrix. Geneformer \
                 expects the total over all genes before any filtering; supply `n_counts` if the matrix was \
                 subset",
                m.n_genes
            );
        }
        let tables = CellTables {
            col_local: map.col_target.iter().map(|t| t.unwrap_or(UNMAPPED)).collect(),
            median: map.targets.iter().map(|&g| self.genes[g].median).collect(),
            token: map.targets.iter().map(|&g| self.genes[g].token).collect(),
            injective: map.targets.len() == map.stats.n_genes_mapped,
        };
        Ok(PreparedGenes {
            n_genes: m.n_genes,
            map,
            tables,
        })
    }

    /// Tokenizes the cells `cells` of `m`, whose genes were mapped by [`Self::prepare`]; cell `c` is
    /// numbered `first + c` in `kept_cells` and `dropped_cells` (and in errors), so that blocks of a matrix
    /// tokenized one after the other equal one call over all its cells. Checks first that the values of
    /// these cells are raw counts (unless `allow_normalized`). The stats are left empty (they belong to
    /// the matrix: [`PreparedGenes::stats`]); no warning is logged.
    pub fn tokenize_cells(
        &self,
        prepared: &PreparedGenes,
        m: &CountMatrix,
        cells: std::ops::Range<usize>,
        first: usize,
    ) -> Result<TokenizedCells, TokenizeError> {
        let tables = &prepared.tables;
        if cells.end > m.n_cells || cells.start > cells.end {
            return Err(TokenizeError::Options(format!(
                "cells {cells:?} asked of a matrix of {} cells",
                m.n_cells
            )));
        }
        if m.n_genes != prepared.n_genes {
            return Err(TokenizeError::Options(format!(
                "the genes were mapped for {} columns, the matrix has {}",
                prepared.n_genes, m.n_genes
            )));
        }
        self.check_counts(m, cells.clone(), first)?;
        let given = given_n_counts(m)?;
        let keep = match self.options.version.special_tokens() {
            true => self.options.model_input_size - 2,
            false => self.options.model_input_size,
        };
        // Cells are independent: tokenize them on the rayon pool, each worker with its own scratch
        // buffers, then assemble in cell order (so the output and the first error do not depend on
        // the thread count).
        let per_cell: Vec<Result<Option<Vec<u32>>, TokenizeError>> = cells
            .clone()
            .into_par_iter()
            .with_min_len(64)
            .map_init(
                || CellRanker::new(if tables.injective { 0 } else { tables.median.len() }),
                |ranker, c| {
                    let range = m.indptr[c]..m.indptr[c + 1];
                    let (cols, vals) = (&m.indices[range.clone()], &m.values[range]);
                    // n_counts: summed in f64 in stored order (the order of the reference).
                    let n_counts = match given {
                        Some(n) => n[c],
                        None => vals.iter().fold(0.0f64, |t, &v| t + v as f64),
                    };
                    if !ranker.collect(tables, cols, vals, n_counts) {
                        return Err(TokenizeError::NCounts {
                            reason: format!(
                                "is {n_counts} for cell {}, which has counts; it must be positive",
                                first + c
                            ),
                        });
                    }
                    if ranker.keys.is_empty() {
                        return Ok(None);
                    }
                    let ranked = ranker.rank(keep);
                    let mut seq = Vec::with_capacity(ranked.len() + 2);
                    seq.extend(self.cls);
                    seq.extend(ranked.iter().map(|&l| tables.token[l as usize]));
                    seq.extend(self.eos);
                    Ok(Some(seq))
                },
            )
            .collect();
        let mut out = TokenizedCells::default();
        for (c, result) in cells.zip(per_cell) {
            match result? {
                Some(seq) => {
                    out.tokens.push(seq);
                    out.kept_cells.push(first + c);
                }
                None => out.dropped_cells.push(first + c),
            }
        }
        Ok(out)
    }

    /// Refuses values of the cells `cells` that are not raw counts (non-negative integers), unless
    /// `allow_normalized` (then only negative and non-finite values), naming the first one.
    fn check_counts(
        &self,
        m: &CountMatrix,
        cells: std::ops::Range<usize>,
        first: usize,
    ) -> Result<(), TokenizeError> {
        let allow_normalized = self.options.allow_normalized;
        let acceptable = move |v: f32| {
            if allow_normalized {
                v >= 0.0 && v.is_finite()
            } else {
                // Below 2^23, adding and subtracting 2^23 rounds to an integer (the spacing of f32 in
                // [2^23, 2^24) is 1), so the value is unchanged exactly for integers; every finite f32 from
                // 2^23 up is an integer. NaN fails every comparison. Only comparisons and additions: the
                // loop over the values vectorises.
                const TWO_23: f32 = 8_388_608.0;
                let small = (0.0..TWO_23).contains(&v) && (v + TWO_23) - TWO_23 == v;
                let large = (TWO_23..f32::INFINITY).contains(&v);
                small | large
            }
        };
        let values = &m.values[m.indptr[cells.start]..m.indptr[cells.end]];
        // Blocks scanned side by side, each with a plain (vectorised) loop; the position is looked up only
        // when a block fails.
        // (`fold` rather than `all`: no early exit, so the loop vectorises.)
        let bad = values
            .par_chunks(1 << 16)
            .any(|block| !block.iter().fold(true, |ok, &v| ok & acceptable(v)));
        let Some(i) = bad.then(|| values.iter().position(|&v| !acceptable(v))).flatten() else {
            return Ok(());
        };
        let i = m.indptr[cells.start] + i;
        let v = m.values[i];
        let cell = m.indptr.partition_point(|&p| p <= i).saturating_sub(1);
        let gene = m.indices.get(i).map(|&g| g as usize).unwrap_or(0);
        let name = m.gene_ids.get(gene).map(String::as_str).unwrap_or("?");
        Err(TokenizeError::NotCounts {
            example: format!(
                "value {v} in cell {}, gene {name}; counts are non-negative integers",
                first + cell
            ),
        })
    }
}

/// The `n_counts` obs column of `m`, if it has one (then numeric, one value per cell).
fn given_n_counts(m: &CountMatrix) -> Result<Option<&[f64]>, TokenizeError> {
    match m.obs.get("n_counts") {
        Some(ObsColumn::Number(v)) if v.len() == m.n_cells => Ok(Some(v)),
        Some(ObsColumn::Number(v)) => Err(TokenizeError::NCounts {
            reason: format!("has {} values for {} cells", v.len(), m.n_cells),
        }),
        Some(ObsColumn::Text(_)) => Err(TokenizeError::NCounts {
            reason: "holds text; it must be the numeric total count of each cell".into(),
        }),
        None => Ok(None),
    }
}

/// The gene mapping of a matrix, made by [`GeneformerTokenizer::prepare`].
pub struct PreparedGenes {
    n_genes: usize,
    map: ColumnMap,
    pub(super) tables: CellTables,
}

impl PreparedGenes {
    /// The mapping statistics of the matrix.
    pub fn stats(&self) -> &TokenizeStats {
        &self.map.stats
    }
}
