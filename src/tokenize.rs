//! `scinterp tokenize`: real cells in (10x folder; h5ad and loom as their readers land), a token store out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use scinterp_models::cells::tenx::read_10x_mtx;
use scinterp_models::cells::{CountMatrix, GeneIdColumn, ObsColumn};
use scinterp_models::token_store::{sha256_of, TokenStore, TokenStoreManifest, FORMAT, FORMAT_VERSION};
use scinterp_models::tokenize::geneformer::{
    GeneIdKind, GeneformerDictionaries, GeneformerTokenizer, GeneformerVersion, TokenizerOptions,
};
use serde_json::json;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TokenizerKind {
    /// Geneformer V2 (104M, 316M): rank value encoding, `<cls>` … `<eos>`, 4,096 tokens.
    GeneformerV2,
    /// Geneformer V1 (10M, 12L): rank value encoding, no special tokens, 2,048 tokens.
    GeneformerV1,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GeneIds {
    /// Ensembl gene ids.
    Ensembl,
    /// Gene symbols (mapped to Ensembl ids through the model's dictionary).
    Symbol,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Cells: a 10x MatrixMarket folder (matrix.mtx[.gz], features.tsv[.gz] or genes.tsv, barcodes.tsv[.gz]).
    #[arg(long)]
    input: PathBuf,
    /// Which model's tokenizer.
    #[arg(long, value_enum)]
    model: TokenizerKind,
    /// Folder with the model's dictionary pickles (token, median, gene name, Ensembl mapping).
    #[arg(long)]
    dictionaries: PathBuf,
    /// Which gene identifiers to read from the input.
    #[arg(long, value_enum, default_value = "ensembl")]
    gene_ids: GeneIds,
    /// Tokens per cell including specials (default: the model's native size, 4,096 for V2, 2,048 for V1).
    #[arg(long)]
    max_len: Option<usize>,
    /// Output token-store folder.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing store at --out.
    #[arg(long)]
    overwrite: bool,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TokenizeArgs) -> Result<()> {
    let column = match args.gene_ids {
        GeneIds::Ensembl => GeneIdColumn::Id,
        GeneIds::Symbol => GeneIdColumn::Symbol,
    };
    let matrix = read_cells(&args.input, column)?;
    tracing::info!(
        "read {} cells × {} genes from {}",
        matrix.n_cells,
        matrix.n_genes,
        args.input.display()
    );

    let version = match args.model {
        TokenizerKind::GeneformerV2 => GeneformerVersion::V2,
        TokenizerKind::GeneformerV1 => GeneformerVersion::V1,
    };
    let dicts = GeneformerDictionaries::load(version, &args.dictionaries)?;
    let mut options = TokenizerOptions::new(version);
    options.gene_id_kind = match args.gene_ids {
        GeneIds::Ensembl => GeneIdKind::Ensembl,
        GeneIds::Symbol => GeneIdKind::Symbol,
    };
    if let Some(n) = args.max_len {
        options.model_input_size = n;
    }
    let tokenizer = GeneformerTokenizer::new(&dicts, options)?;
    let tokenized = tokenizer
        .tokenize(&matrix)
        .with_context(|| format!("tokenizing {}", args.input.display()))?;
    let stats = &tokenized.stats;
    tracing::info!(
        "{} of {} genes map to the {version} vocabulary ({} unmapped, e.g. {:?}); {} cells kept, {} dropped (no token)",
        stats.n_genes_mapped,
        stats.n_genes,
        stats.n_genes_unmapped,
        stats.unmapped_examples.iter().take(3).collect::<Vec<_>>(),
        tokenized.tokens.len(),
        tokenized.dropped_cells.len()
    );

    let mut dictionaries = BTreeMap::new();
    for name in version.dictionary_files() {
        let path = args.dictionaries.join(&name);
        dictionaries.insert(
            name,
            sha256_of(&path).with_context(|| format!("hashing {}", path.display()))?,
        );
    }
    let n_tokens = tokenized.tokens.iter().map(Vec::len).sum();
    let max_len = tokenized.tokens.iter().map(Vec::len).max().unwrap_or(0);
    let header = cell_table_header(&matrix);
    let rows = tokenized
        .kept_cells
        .iter()
        .map(|&c| cell_table_row(&matrix, c))
        .collect();
    let store = TokenStore {
        manifest: TokenStoreManifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            tokenizer: "geneformer".into(),
            tokenizer_version: version.to_string(),
            options: json!({
                "model_input_size": tokenizer.options().model_input_size,
                "gene_id_kind": format!("{:?}", tokenizer.options().gene_id_kind),
                "collapse_gene_ids": tokenizer.options().collapse_gene_ids,
                "n_counts_computed": stats.n_counts_computed,
                "tie_rule": "descending normalised value, ties by ascending first source column",
            }),
            dictionaries,
            source_path: args.input.display().to_string(),
            source_sha256: sha256_of(&args.input)
                .with_context(|| format!("hashing {}", args.input.display()))?,
            n_cells: tokenized.tokens.len(),
            n_tokens,
            max_len,
            has_values: false,
            n_cells_dropped: tokenized.dropped_cells.len(),
            scinterp_version: env!("CARGO_PKG_VERSION").into(),
        },
        cells: tokenized.tokens,
        values: None,
        cell_table: (header, rows),
    };
    store.write(&args.out, args.overwrite)?;
    tracing::info!(
        "wrote {} ({} cells, {} tokens)",
        args.out.display(),
        store.manifest.n_cells,
        n_tokens
    );
    if args.json {
        println!("{}", serde_json::to_string(&store.manifest)?);
    }
    Ok(())
}

/// Reads a count matrix, choosing the reader from what the path is.
fn read_cells(input: &Path, column: GeneIdColumn) -> Result<CountMatrix> {
    if input.is_dir() {
        return Ok(read_10x_mtx(input, column)?);
    }
    if !input.exists() {
        bail!("{}: no such file or folder", input.display());
    }
    bail!(
        "{}: unsupported input; this version reads 10x MatrixMarket folders (h5ad and loom readers are in progress)",
        input.display()
    )
}

fn cell_table_header(m: &CountMatrix) -> Vec<String> {
    std::iter::once("cell".to_string())
        .chain(m.obs.keys().cloned())
        .collect()
}

fn cell_table_row(m: &CountMatrix, c: usize) -> Vec<String> {
    let mut row = vec![m.cell_names[c].clone()];
    for col in m.obs.values() {
        row.push(match col {
            ObsColumn::Text(v) => v[c].clone(),
            ObsColumn::Number(v) => v[c].to_string(),
        });
    }
    row
}
