//! The gene-column check: when few of the input's genes map to the vocabulary, the other columns that
//! could hold gene ids are tried, and the run is refused (or warned about) naming the column to use.

use super::geneformer::{GeneIdKind, GeneformerDictionaries, GeneformerTokenizer, TokenizerOptions};
use super::pipeline::{dictionaries_dir, geneformer_version, vocab_dir, Config, PipelineError};
use super::scgpt::ScgptVocab;
use crate::cells::h5ad::{read_var_text_columns, H5adOptions};
use crate::cells::CountMatrix;
use crate::registry::TokenizerKind;

/// A column of the input that could hold the gene ids, and how to choose it on the command line.
struct GeneColumn {
    /// e.g. "the var index", "var column `gene_ids`".
    label: String,
    /// The flags that choose it (empty: the default).
    flags: Vec<String>,
    ids: Vec<String>,
}

/// The columns of the input that could hold gene ids: for an .h5ad file, the var index and every text
/// column of var; otherwise the ids the reader took and, when the file has them, the symbols.
fn gene_columns(config: &Config, matrix: &CountMatrix) -> Vec<GeneColumn> {
    let is_h5ad = config
        .input
        .file_name()
        .is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().ends_with(".h5ad"));
    if is_h5ad {
        let options = H5adOptions {
            use_raw: config.use_raw,
            ..H5adOptions::default()
        };
        let var = if config.use_raw { "raw/var" } else { "var" };
        if let Ok(columns) = read_var_text_columns(&config.input, &options) {
            return columns
                .into_iter()
                .map(|(name, ids)| match name {
                    None => GeneColumn {
                        label: format!("the {var} index"),
                        flags: Vec::new(),
                        ids,
                    },
                    Some(c) => GeneColumn {
                        label: format!("{var} column `{c}`"),
                        flags: vec![format!("--gene-id-column {c}")],
                        ids,
                    },
                })
                .collect();
        }
    }
    let mut out = vec![GeneColumn {
        label: "the gene ids read".into(),
        flags: config
            .gene_id_column
            .iter()
            .map(|c| format!("--gene-id-column {c}"))
            .collect(),
        ids: matrix.gene_ids.clone(),
    }];
    if let Some(symbols) = &matrix.gene_symbols {
        out.push(GeneColumn {
            label: "the gene symbols of the file".into(),
            flags: vec![if config.input.is_dir() {
                "--gene-ids symbol".into()
            } else {
                "--gene-id-column <the symbol column>".into()
            }],
            ids: symbols.clone(),
        });
    }
    out
}

/// When few of the input's genes map (`mapped` of them), counts the matches of every candidate column
/// (and, for Geneformer, as Ensembl ids and as symbols). Refuses (returns the error) when nothing maps, or
/// when under 10 % map and another column maps five times as many; warns when under half map and
/// another column maps 1.5 times as many.
pub(super) fn check_gene_column(
    config: &Config,
    matrix: &CountMatrix,
    mapped: usize,
) -> Result<Option<PipelineError>, PipelineError> {
    let n = matrix.n_genes;
    if config.orthologs.is_some() || n == 0 || mapped * 2 >= n {
        return Ok(None);
    }
    let columns = gene_columns(config, matrix);
    // (column, --gene-ids flag, matches) for every way of reading each column.
    let mut counts: Vec<(usize, Option<GeneIdKind>, usize)> = Vec::new();
    let model = match config.tokenizer {
        TokenizerKind::Scgpt => {
            let dir = vocab_dir(config)?;
            let vocab = ScgptVocab::load(&dir.join("vocab.json"))?;
            for (i, c) in columns.iter().enumerate() {
                counts.push((
                    i,
                    None,
                    c.ids.iter().filter(|s| vocab.gene_id(s).is_some()).count(),
                ));
            }
            "scGPT".to_string()
        }
        _ => {
            let dir = dictionaries_dir(config)?;
            let version = geneformer_version(config.tokenizer);
            let dicts = GeneformerDictionaries::load(version, dir)?;
            for kind in [GeneIdKind::Ensembl, GeneIdKind::Symbol] {
                let mut options = TokenizerOptions::new(version);
                options.gene_id_kind = kind;
                let tokenizer = GeneformerTokenizer::new(&dicts, options)?;
                for (i, c) in columns.iter().enumerate() {
                    counts.push((i, Some(kind), tokenizer.count_mapped(&c.ids)));
                }
            }
            format!("Geneformer {version}")
        }
    };
    let describe = |kind: Option<GeneIdKind>| match kind {
        Some(GeneIdKind::Ensembl) => " as Ensembl ids",
        Some(GeneIdKind::Symbol) => " as symbols",
        None => "",
    };
    let table = counts
        .iter()
        .map(|&(i, kind, m)| format!("{}{}: {m}", columns[i].label, describe(kind)))
        .collect::<Vec<_>>()
        .join("; ");
    // The best reading; ties go to the first listed (the index, then Ensembl ids).
    let best = counts
        .iter()
        .copied()
        .reduce(|a, b| if b.2 > a.2 { b } else { a });
    let current = match (&config.gene_id_column, config.tokenizer) {
        (Some(c), _) => format!("var column `{c}`"),
        (None, _) => "the gene ids read (the var index for .h5ad)".to_string(),
    };
    let head = format!(
        "{}: only {mapped} of {n} genes map to the {model} vocabulary with {current}{}",
        config.input.display(),
        match config.tokenizer {
            TokenizerKind::Scgpt => "",
            _ => describe(Some(config.gene_ids)),
        }
    );
    let Some((bi, bkind, bm)) = best.filter(|b| b.2 > mapped) else {
        if mapped == 0 {
            let need = match config.tokenizer {
                TokenizerKind::Scgpt => "human gene symbols",
                _ => "human Ensembl ids (ENSG…) or human gene symbols",
            };
            return Ok(Some(PipelineError::Refused(format!(
                "{head}, and no other column maps any better ({table}). {model} needs {need}; for mouse \
                 data pass --orthologs with a human–mouse ortholog table"
            ))));
        }
        return Ok(None);
    };
    let mut flags = columns[bi].flags.clone();
    if let Some(kind) = bkind {
        flags.push(match kind {
            GeneIdKind::Ensembl => "--gene-ids ensembl".into(),
            GeneIdKind::Symbol => "--gene-ids symbol".into(),
        });
    }
    let advice = if columns[bi].flags.is_empty() && config.gene_id_column.is_some() {
        format!(
            "drop --gene-id-column{}",
            flags.iter().map(|f| format!(" and pass {f}")).collect::<String>()
        )
    } else {
        format!("pass {}", flags.join(" "))
    };
    let message = format!(
        "{head}; {} maps {bm}{}. Matches per column: {table}. To use it, {advice}",
        columns[bi].label,
        describe(bkind)
    );
    if mapped == 0 || (mapped * 10 < n && bm >= 5 * mapped) {
        Ok(Some(PipelineError::Refused(message)))
    } else {
        if bm * 2 >= mapped * 3 {
            tracing::warn!("{message}");
        }
        Ok(None)
    }
}
