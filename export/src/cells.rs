//! Cells for operators and tools: reading a whole input into memory (the input options of `scinterp
//! tokenize`, orthologs included), the panel's log1p-CP10k expression, the model's gene vocabulary and
//! tokenizer (for attention over reference cells), and the choice of a gene panel.

// Index loops here mirror the matrix formulas of the module doc.
#![allow(clippy::needless_range_loop)]

use std::path::{Path, PathBuf};

use scinterp_models::cells::orthologs::OrthologTable;
use scinterp_models::cells::{CellSource, CountMatrix, ObsColumn, OpenOptions};
use scinterp_models::registry::LoadedModel;
use scinterp_models::tokenize::geneformer::{
    GeneIdKind, GeneformerDictionaries, GeneformerTokenizer, GeneformerVersion, TokenizerOptions,
};
use scinterp_models::tokenize::scgpt::{ScgptArgs, ScgptTokenizer, ScgptTokenizerOptions, ScgptVocab};

use crate::error::ExportError;

/// Token sequences, scGPT values (None for Geneformer) and the cell behind each sequence.
pub type TokenizedCells = (Vec<Vec<u32>>, Option<Vec<Vec<f32>>>, Vec<usize>);

/// Where cells come from and how to read them (the options of `scinterp tokenize`).
#[derive(Clone, Debug, Default)]
pub struct CellInput {
    pub path: PathBuf,
    pub open: OpenOptions,
    /// Mouse data: a `human,mouse` ortholog table; gene ids become human symbols.
    pub orthologs: Option<PathBuf>,
}

/// Reads every cell of `input` into memory (a block-read h5ad is read whole), ortholog-translated.
pub fn read_cells(input: &CellInput) -> Result<CountMatrix, ExportError> {
    let (source, _decompressed) = open_cells(input)?;
    let n = source.n_cells();
    let block = source.block(0..n)?;
    let m = if block.cells == (0..block.matrix.n_cells) {
        block.matrix.into_owned()
    } else {
        block.matrix.slice_rows(block.cells.clone())
    };
    Ok(m)
}

/// Opens `input` to be read a block of cells at a time, its gene ids ortholog-translated; refuses an
/// input with no cell. The temporary file (a decompressed `.gz`) must live as long as the source.
pub fn open_cells(input: &CellInput) -> Result<(CellSource, Option<tempfile::NamedTempFile>), ExportError> {
    let (mut source, decompressed) = scinterp_models::cells::open(&input.path, &input.open)?;
    if let Some(table) = &input.orthologs {
        let table = OrthologTable::read(table)?;
        let genes = source.genes_mut();
        let mapped = table.translate(genes);
        tracing::info!("{mapped} of {} mouse genes have a human ortholog", genes.n_genes);
    }
    if source.n_cells() == 0 {
        return Err(ExportError::invalid(&input.path, "holds no cells"));
    }
    Ok((source, decompressed))
}

/// The text labels of obs column `column`, one per cell (numbers are written as text).
pub fn labels(m: &CountMatrix, column: &str, path: &Path) -> Result<Vec<String>, ExportError> {
    match m.obs.get(column) {
        Some(ObsColumn::Text(v)) => Ok(v.clone()),
        Some(ObsColumn::Number(v)) => Ok(v.iter().map(|x| format!("{x}")).collect()),
        None => Err(ExportError::invalid(
            path,
            format!(
                "no obs column `{column}` (has: {}); pass --labels with one of them",
                m.obs.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Whether an id looks like an Ensembl gene id (`ENSG…`, `ENSMUSG…`).
pub fn is_ensembl(id: &str) -> bool {
    id.starts_with("ENS") && id.len() > 6 && id[3..].chars().any(|c| c.is_ascii_digit())
}

/// Column `c`'s symbol: the symbol column when the file has one, else the id when it is not an Ensembl id.
pub fn symbol_of(m: &CountMatrix, c: usize) -> Option<String> {
    if let Some(s) = &m.gene_symbols {
        if !s[c].is_empty() {
            return Some(s[c].clone());
        }
    }
    let id = &m.gene_ids[c];
    (!is_ensembl(id) && !id.starts_with("unmapped:")).then(|| id.clone())
}

/// log1p(CP10k) of the cells' panel genes, `[n_cells, panel.len()]` row-major: each cell's counts are
/// divided by its total over **all** genes of the matrix, times 10,000, then log1p. `panel[j]` is the
/// matrix column of panel gene j (`None`: absent, stays 0).
pub fn panel_expression(m: &CountMatrix, panel: &[Option<usize>], cells: std::ops::Range<usize>) -> Vec<f32> {
    let n = panel.len();
    let mut col_to_panel = vec![u32::MAX; m.n_genes];
    for (j, c) in panel.iter().enumerate() {
        if let Some(c) = *c {
            col_to_panel[c] = j as u32;
        }
    }
    let mut out = vec![0f32; cells.len() * n];
    use rayon::prelude::*;
    out.par_chunks_mut(n.max(1))
        .zip(cells.into_par_iter())
        .with_min_len(256)
        .for_each(|(row, c)| {
            let total: f64 = m.cell(c).map(|(_, v)| v as f64).sum();
            if total <= 0.0 {
                return;
            }
            let scale = 1e4 / total;
            for (g, v) in m.cell(c) {
                let j = col_to_panel[g];
                if j != u32::MAX {
                    row[j as usize] = ((v as f64 * scale).ln_1p()) as f32;
                }
            }
        });
    out
}

/// The model's gene vocabulary and tokenizer.
pub enum ModelGenes {
    Geneformer {
        dicts: Box<GeneformerDictionaries>,
        version: GeneformerVersion,
        dir: PathBuf,
    },
    Scgpt {
        vocab: ScgptVocab,
        args: ScgptArgs,
    },
}

impl ModelGenes {
    /// The vocabulary of the model in `model_dir` (Geneformer: the dictionary pickles in `dictionaries`,
    /// default the model folder).
    pub fn load(
        model: &LoadedModel,
        model_dir: &Path,
        dictionaries: Option<&Path>,
    ) -> Result<Self, ExportError> {
        if model.name == "scgpt" {
            let vocab = ScgptVocab::load(&model_dir.join("vocab.json"))
                .map_err(|e| ExportError::Tokenize(e.to_string()))?;
            let args_path = model_dir.join("args.json");
            let args = if args_path.exists() {
                ScgptArgs::load(&args_path).map_err(|e| ExportError::Tokenize(e.to_string()))?
            } else {
                ScgptArgs::default()
            };
            return Ok(ModelGenes::Scgpt { vocab, args });
        }
        let dir = dictionaries.unwrap_or(model_dir).to_path_buf();
        let version = [GeneformerVersion::V2, GeneformerVersion::V1]
            .into_iter()
            .find(|v| dir.join(&v.dictionary_files()[0]).exists())
            .ok_or_else(|| {
                ExportError::invalid(
                    &dir,
                    "no Geneformer token dictionary (token_dictionary_gc104M.pkl or _gc30M.pkl); pass \
                     --dictionaries with the folder of the model's dictionaries",
                )
            })?;
        let dicts =
            GeneformerDictionaries::load(version, &dir).map_err(|e| ExportError::Tokenize(e.to_string()))?;
        Ok(ModelGenes::Geneformer {
            dicts: Box::new(dicts),
            version,
            dir,
        })
    }

    /// The model token of a gene given by id (Ensembl id or symbol) and optional symbol.
    pub fn token(&self, id: &str, symbol: Option<&str>) -> Option<u32> {
        match self {
            ModelGenes::Scgpt { vocab, .. } => symbol
                .and_then(|s| vocab.gene_id(s))
                .or_else(|| vocab.gene_id(id))
                .filter(|_| !id.starts_with('<')),
            ModelGenes::Geneformer { dicts, .. } => {
                let by_ensembl = |e: &str| {
                    dicts.token.get(e).copied().or_else(|| {
                        dicts
                            .ensembl_mapping
                            .get(&e.to_ascii_uppercase())
                            .and_then(|t| dicts.token.get(t).copied())
                    })
                };
                if is_ensembl(id) {
                    return by_ensembl(id);
                }
                let symbol = symbol.unwrap_or(id);
                dicts
                    .gene_name_id
                    .get(symbol)
                    .and_then(|e| by_ensembl(e))
                    .or_else(|| by_ensembl(symbol))
                    .filter(|&t| !matches!(t, 0..=3))
            }
        }
    }

    /// The Ensembl id of a gene given by id or symbol, when the vocabulary knows it.
    pub fn ensembl(&self, id: &str, symbol: Option<&str>) -> Option<String> {
        if is_ensembl(id) {
            return Some(id.to_string());
        }
        match self {
            ModelGenes::Geneformer { dicts, .. } => dicts.gene_name_id.get(symbol.unwrap_or(id)).cloned(),
            ModelGenes::Scgpt { .. } => None,
        }
    }

    /// `<cls>` and its value when the model's cells start with one.
    pub fn cls(&self) -> Option<(u32, f32)> {
        match self {
            ModelGenes::Scgpt { vocab, .. } => Some((vocab.cls, -2.0)),
            ModelGenes::Geneformer { version, .. } => (*version == GeneformerVersion::V2).then_some((2, 0.0)),
        }
    }

    /// The value given to a gene when it is embedded alone (scGPT: the middle expression bin).
    pub fn typical_value(&self) -> Option<f32> {
        match self {
            ModelGenes::Scgpt { args, .. } => Some((args.n_bins / 2) as f32),
            ModelGenes::Geneformer { .. } => None,
        }
    }

    /// Tokenizes the cells of `m` as the model reads them, at most `max_len` tokens per cell; also
    /// returns the index of the cell behind each sequence (cells without a known gene are dropped).
    pub fn tokenize(
        &self,
        m: &CountMatrix,
        max_len: usize,
        seed: u64,
    ) -> Result<TokenizedCells, ExportError> {
        let err = |e: String| ExportError::Tokenize(e);
        match self {
            ModelGenes::Geneformer { dicts, version, .. } => {
                let ensembl = m.gene_ids.iter().filter(|g| is_ensembl(g)).count() * 2 > m.n_genes;
                let mut options = TokenizerOptions::new(*version);
                options.gene_id_kind = if ensembl {
                    GeneIdKind::Ensembl
                } else {
                    GeneIdKind::Symbol
                };
                options.model_input_size = max_len.min(version.default_input_size());
                let tokenizer = GeneformerTokenizer::new(dicts, options).map_err(|e| err(e.to_string()))?;
                let cells = tokenizer.tokenize(m).map_err(|e| err(e.to_string()))?;
                Ok((cells.tokens, None, cells.kept_cells))
            }
            ModelGenes::Scgpt { vocab, args } => {
                let mut options = ScgptTokenizerOptions::from_args(args);
                options.max_seq_len = max_len.min(args.max_seq_len);
                options.seed = seed;
                let tokenizer =
                    ScgptTokenizer::new(vocab.clone(), options).map_err(|e| err(e.to_string()))?;
                let cells = tokenizer.tokenize(m).map_err(|e| err(e.to_string()))?;
                Ok((cells.gene_ids, Some(cells.values), cells.kept_cells))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ModelGenes::Geneformer { version, dir, .. } => {
                format!("Geneformer {version} dictionaries in {}", dir.display())
            }
            ModelGenes::Scgpt { .. } => "scGPT vocab.json".into(),
        }
    }
}

/// A gene of a panel.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PanelGene {
    /// The id in the reference cells' id column (after orthologs: the human symbol).
    pub id: String,
    pub symbol: Option<String>,
    pub ensembl_id: Option<String>,
    /// The model's token id of the gene.
    pub token: u32,
}

/// A panel: its genes and their columns in the reference matrix.
pub struct Panel {
    pub genes: Vec<PanelGene>,
    pub columns: Vec<usize>,
}

/// How the panel is chosen.
#[derive(Clone, Debug)]
pub enum PanelChoice {
    /// These genes (ids or symbols), in this order.
    Given(Vec<String>),
    /// The `n` genes of highest variance of log1p-CP10k over the reference cells, among those the model
    /// knows (ties: lower column first), in column order.
    Hvg(usize),
}

/// Resolves the panel against the reference matrix and the model's vocabulary. A given gene that is not
/// in the cells, or not known to the model, is refused, naming it.
pub fn choose_panel(m: &CountMatrix, genes: &ModelGenes, choice: &PanelChoice) -> Result<Panel, ExportError> {
    let token_of = |c: usize| genes.token(&m.gene_ids[c], symbol_of(m, c).as_deref());
    let mut columns = Vec::new();
    match choice {
        PanelChoice::Given(list) => {
            let mut not_in_cells = Vec::new();
            let mut unknown = Vec::new();
            for g in list {
                let found =
                    (0..m.n_genes).find(|&c| m.gene_ids[c] == *g || symbol_of(m, c).is_some_and(|s| s == *g));
                match found {
                    None => not_in_cells.push(g.clone()),
                    Some(c) if token_of(c).is_none() => unknown.push(g.clone()),
                    Some(c) => columns.push(c),
                }
            }
            if !unknown.is_empty() {
                return Err(ExportError::option(
                    "--panel",
                    format!(
                        "{} of {} genes are unknown to the model ({}): {}; drop them from the panel",
                        unknown.len(),
                        list.len(),
                        genes.describe(),
                        unknown.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            if !not_in_cells.is_empty() {
                return Err(ExportError::option(
                    "--panel",
                    format!(
                        "{} genes are not in the reference cells: {}",
                        not_in_cells.len(),
                        not_in_cells
                            .iter()
                            .take(10)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        PanelChoice::Hvg(n) => {
            let known: Vec<usize> = (0..m.n_genes).filter(|&c| token_of(c).is_some()).collect();
            let all: Vec<Option<usize>> = known.iter().map(|&c| Some(c)).collect();
            let x = panel_expression(m, &all, 0..m.n_cells);
            let k = known.len();
            let mut var = vec![0f64; k];
            let mut mean = vec![0f64; k];
            for row in x.chunks_exact(k.max(1)) {
                for j in 0..k {
                    mean[j] += row[j] as f64;
                    var[j] += (row[j] as f64).powi(2);
                }
            }
            let nc = m.n_cells as f64;
            for j in 0..k {
                mean[j] /= nc;
                var[j] = var[j] / nc - mean[j] * mean[j];
            }
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&a, &b| var[b].total_cmp(&var[a]).then(a.cmp(&b)));
            let mut chosen: Vec<usize> = order.into_iter().take(*n).map(|j| known[j]).collect();
            chosen.sort_unstable();
            columns = chosen;
        }
    }
    // One panel entry per model token (two columns can name the same gene).
    let mut seen = std::collections::HashSet::new();
    columns.retain(|&c| seen.insert(token_of(c)));
    if columns.len() < 2 {
        return Err(ExportError::option(
            "--panel/--hvg",
            "fewer than 2 panel genes known to the model",
        ));
    }
    let genes_out = columns
        .iter()
        .map(|&c| {
            let symbol = symbol_of(m, c);
            PanelGene {
                id: m.gene_ids[c].clone(),
                ensembl_id: genes.ensembl(&m.gene_ids[c], symbol.as_deref()),
                token: token_of(c).expect("kept columns are known"),
                symbol,
            }
        })
        .collect();
    Ok(Panel {
        genes: genes_out,
        columns,
    })
}

/// Matches panel genes to the columns of new cells: by Ensembl id (case-insensitive, version suffix
/// ignored), else by symbol (exact: a mouse `Gata1` is not the human `GATA1`; pass `--orthologs`), else
/// by the id the panel was built with. Per panel gene, its column or `None`.
pub fn match_panel(m: &CountMatrix, panel: &[PanelGene]) -> Vec<Option<usize>> {
    use std::collections::HashMap;
    let strip = |e: &str| e.split('.').next().unwrap_or(e).to_ascii_uppercase();
    let mut ensembl: HashMap<String, usize> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for c in (0..m.n_genes).rev() {
        let id = m.gene_ids[c].as_str();
        if is_ensembl(id) {
            ensembl.insert(strip(id), c);
        } else {
            names.insert(id, c);
        }
    }
    if let Some(symbols) = &m.gene_symbols {
        for c in (0..m.n_genes).rev() {
            names.entry(symbols[c].as_str()).or_insert(c);
        }
    }
    panel
        .iter()
        .map(|g| {
            g.ensembl_id
                .as_deref()
                .and_then(|e| ensembl.get(&strip(e)).copied())
                .or_else(|| g.symbol.as_deref().and_then(|s| names.get(s).copied()))
                .or_else(|| names.get(g.id.as_str()).copied())
                .or_else(|| ensembl.get(&strip(&g.id)).copied())
        })
        .collect()
}
