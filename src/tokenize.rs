//! `scinterp tokenize`: real cells in (.h5ad, 10x MatrixMarket folder, .loom), a token store out, for
//! Geneformer (V1/V2 rank value encoding) or scGPT (binned values).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use scinterp_models::cells::h5ad::{read_h5ad, H5adOptions};
use scinterp_models::cells::loom::read_loom;
use scinterp_models::cells::orthologs::OrthologTable;
use scinterp_models::cells::tenx::read_10x_mtx;
use scinterp_models::cells::{decompress_if_gzip, CountMatrix, GeneIdColumn, ObsColumn};
use scinterp_models::token_store::{sha256_of, TokenStore, TokenStoreManifest, FORMAT, FORMAT_VERSION};
use scinterp_models::tokenize::geneformer::{
    GeneIdKind, GeneformerDictionaries, GeneformerTokenizer, GeneformerVersion, TokenizerOptions,
};
use scinterp_models::tokenize::scgpt::{ScgptArgs, ScgptTokenizer, ScgptTokenizerOptions, ScgptVocab};
use serde_json::json;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TokenizerKind {
    /// Geneformer V2 (104M, 316M): rank value encoding, `<cls>` … `<eos>`, 4,096 tokens.
    GeneformerV2,
    /// Geneformer V1 (10M, 12L): rank value encoding, no special tokens, 2,048 tokens.
    GeneformerV1,
    /// scGPT whole-human: gene symbols, per-cell binned values, `<cls>` first, 1,200 tokens.
    Scgpt,
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
    /// Cells: an .h5ad file, a .loom file, or a 10x MatrixMarket folder (matrix.mtx[.gz],
    /// features.tsv[.gz] or genes.tsv, barcodes.tsv[.gz]). Raw counts, all genes (no feature selection).
    #[arg(long)]
    input: PathBuf,
    /// Which model's tokenizer.
    #[arg(long = "model-kind", alias = "model", value_enum)]
    model: TokenizerKind,
    /// Geneformer: folder with the dictionary pickles (token, median, gene name, Ensembl mapping).
    #[arg(long, required_if_eq_any = [("model", "geneformer-v2"), ("model", "geneformer-v1")])]
    dictionaries: Option<PathBuf>,
    /// scGPT: the model folder holding vocab.json (and args.json, read when present).
    #[arg(long, required_if_eq("model", "scgpt"))]
    vocab: Option<PathBuf>,
    /// Geneformer: whether the gene ids are Ensembl ids or symbols. For a 10x folder this also picks
    /// the column of features.tsv (scGPT always reads symbols).
    #[arg(long, value_enum, default_value = "ensembl")]
    gene_ids: GeneIds,
    /// h5ad: the var column holding the gene ids (default: the var index); loom: the row attribute
    /// (default: ensembl_id, Accession or Gene).
    #[arg(long)]
    gene_id_column: Option<String>,
    /// h5ad: read the counts from `layers/<NAME>` instead of X.
    #[arg(long)]
    layer: Option<String>,
    /// h5ad: read the counts from `raw/X` (with `raw/var`).
    #[arg(long)]
    use_raw: bool,
    /// Cell annotation columns to keep in cells.tsv (comma list; h5ad obs or loom column attributes).
    #[arg(long, value_delimiter = ',')]
    obs_columns: Vec<String>,
    /// Tokens per cell including specials (default: the model's native size: 4,096 V2, 2,048 V1, 1,200 scGPT).
    #[arg(long)]
    max_len: Option<usize>,
    /// scGPT: seed of the random bin draws at repeated quantile edges and of the subsampling of long cells.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Mouse data: a `human_symbol,mouse_symbol` ortholog table (e.g. Ensembl105_Human2Mouse_Genes.csv);
    /// the input's gene ids must then be mouse symbols.
    #[arg(long)]
    orthologs: Option<PathBuf>,
    /// Geneformer: accept non-negative values that are not integer counts (an already normalised matrix).
    #[arg(long)]
    allow_normalized: bool,
    /// scGPT: the value of `<cls>`: -2 (pretraining / zero-shot convention) or 0 (tutorial convention).
    #[arg(long, default_value_t = -2.0, allow_negative_numbers = true)]
    cls_value: f32,
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
    let scgpt = matches!(args.model, TokenizerKind::Scgpt);
    // The manifest's source hash reads the whole input once more; do it beside the reading and
    // tokenizing instead of after them.
    let hashing = {
        let input = args.input.clone();
        std::thread::spawn(move || sha256_of(&input))
    };
    let started = Instant::now();
    let mut matrix = read_cells(&args, scgpt)?;
    tracing::info!(
        "read {} cells × {} genes from {} in {:.2} s",
        matrix.n_cells,
        matrix.n_genes,
        args.input.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(table_path) = &args.orthologs {
        let table = OrthologTable::read(table_path)?;
        let mapped = table.translate(&mut matrix);
        tracing::info!(
            "{mapped} of {} mouse genes have a human ortholog in {}",
            matrix.n_genes,
            table_path.display()
        );
    }
    let started = Instant::now();
    let store = if scgpt {
        tokenize_scgpt(&args, &matrix)?
    } else {
        tokenize_geneformer(&args, &matrix)?
    };
    tracing::info!("tokenized in {:.2} s", started.elapsed().as_secs_f64());
    let mut store = store;
    store.manifest.source_sha256 = hashing
        .join()
        .map_err(|_| anyhow::anyhow!("the thread hashing {} failed", args.input.display()))?
        .with_context(|| format!("hashing {}", args.input.display()))?;
    let started = Instant::now();
    store.write(&args.out, args.overwrite)?;
    tracing::debug!("store written in {:.2} s", started.elapsed().as_secs_f64());
    tracing::info!(
        "wrote {} ({} cells, {} tokens, {} cells dropped for having no token)",
        args.out.display(),
        store.manifest.n_cells,
        store.manifest.n_tokens,
        store.manifest.n_cells_dropped
    );
    if args.json {
        println!("{}", serde_json::to_string(&store.manifest)?);
    }
    Ok(())
}

fn tokenize_geneformer(args: &TokenizeArgs, matrix: &CountMatrix) -> Result<TokenStore> {
    let dir = args
        .dictionaries
        .as_deref()
        .context("--dictionaries is required for Geneformer")?;
    let version = match args.model {
        TokenizerKind::GeneformerV1 => GeneformerVersion::V1,
        _ => GeneformerVersion::V2,
    };
    let started = Instant::now();
    let dicts = GeneformerDictionaries::load(version, dir)?;
    tracing::debug!("dictionaries read in {:.2} s", started.elapsed().as_secs_f64());
    let mut options = TokenizerOptions::new(version);
    // Orthologs yield human symbols whatever the input's ids were.
    options.gene_id_kind = match (args.orthologs.is_some(), args.gene_ids) {
        (true, _) | (false, GeneIds::Symbol) => GeneIdKind::Symbol,
        (false, GeneIds::Ensembl) => GeneIdKind::Ensembl,
    };
    options.allow_normalized = args.allow_normalized;
    if let Some(n) = args.max_len {
        options.model_input_size = n;
    }
    let tokenizer = GeneformerTokenizer::new(&dicts, options)?;
    let started = Instant::now();
    let tokenized = tokenizer
        .tokenize(matrix)
        .with_context(|| format!("tokenizing {}", args.input.display()))?;
    tracing::debug!("cells ranked in {:.2} s", started.elapsed().as_secs_f64());
    let stats = &tokenized.stats;
    tracing::info!(
        "{} of {} genes map to the {version} vocabulary ({} unmapped, e.g. {:?})",
        stats.n_genes_mapped,
        stats.n_genes,
        stats.n_genes_unmapped,
        stats.unmapped_examples.iter().take(3).collect::<Vec<_>>()
    );
    let mut dictionaries = BTreeMap::new();
    for name in version.dictionary_files() {
        let path = dir.join(&name);
        dictionaries.insert(
            name,
            sha256_of(&path).with_context(|| format!("hashing {}", path.display()))?,
        );
    }
    let options = json!({
        "model_input_size": tokenizer.options().model_input_size,
        "gene_id_kind": format!("{:?}", tokenizer.options().gene_id_kind),
        "collapse_gene_ids": tokenizer.options().collapse_gene_ids,
        "n_counts_computed": stats.n_counts_computed,
        "genes_in_input": stats.n_genes,
        "genes_mapped": stats.n_genes_mapped,
        "orthologs": args.orthologs.as_ref().map(|p| p.display().to_string()),
        "allow_normalized": args.allow_normalized,
        "tie_rule": "descending normalised value, ties by ascending first source column",
    });
    build_store(
        args,
        matrix,
        ("geneformer", version.to_string(), options, dictionaries),
        tokenized.tokens,
        None,
        &tokenized.kept_cells,
        tokenized.dropped_cells.len(),
    )
}

fn tokenize_scgpt(args: &TokenizeArgs, matrix: &CountMatrix) -> Result<TokenStore> {
    let dir = args.vocab.as_deref().context("--vocab is required for scGPT")?;
    let vocab_path = dir.join("vocab.json");
    let args_path = dir.join("args.json");
    let vocab = ScgptVocab::load(&vocab_path)?;
    let model_args = if args_path.is_file() {
        ScgptArgs::load(&args_path)?
    } else {
        ScgptArgs::default()
    };
    let mut options = ScgptTokenizerOptions::from_args(&model_args);
    options.cls_value = args.cls_value;
    options.seed = args.seed;
    if let Some(n) = args.max_len {
        options.max_seq_len = n;
    }
    let tokenizer = ScgptTokenizer::new(vocab, options)?;
    let cells = tokenizer
        .tokenize(matrix)
        .with_context(|| format!("tokenizing {}", args.input.display()))?;
    let stats = &cells.stats;
    tracing::info!(
        "{} of {} genes match the scGPT vocabulary ({} unmatched, e.g. {:?}); {} cells subsampled to {} tokens",
        stats.n_genes_matched,
        stats.n_genes,
        stats.n_genes_unmatched,
        stats.unmatched_examples.iter().take(3).collect::<Vec<_>>(),
        stats.n_cells_sampled,
        tokenizer.options().max_seq_len
    );
    let mut dictionaries = BTreeMap::new();
    for path in [&vocab_path, &args_path] {
        if path.is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            dictionaries.insert(
                name,
                sha256_of(path).with_context(|| format!("hashing {}", path.display()))?,
            );
        }
    }
    let o = tokenizer.options();
    let options = json!({
        "max_seq_len": o.max_seq_len,
        "n_bins": o.n_bins,
        "cls_value": o.cls_value,
        "pad_id": tokenizer.pad_id(),
        "pad_value": o.pad_value,
        "seed": o.seed,
        "genes_in_input": stats.n_genes,
        "genes_mapped": stats.n_genes_matched,
        "binning": "per-cell quantile edges of the non-zero values; random bin at repeated edges (seeded)",
    });
    build_store(
        args,
        matrix,
        ("scgpt", "whole-human".to_string(), options, dictionaries),
        cells.gene_ids,
        Some(cells.values),
        &cells.kept_cells,
        cells.dropped_cells.len(),
    )
}

type TokenizerInfo = (&'static str, String, serde_json::Value, BTreeMap<String, String>);

fn build_store(
    args: &TokenizeArgs,
    matrix: &CountMatrix,
    (kind, version, options, dictionaries): TokenizerInfo,
    cells: Vec<Vec<u32>>,
    values: Option<Vec<Vec<f32>>>,
    kept_cells: &[usize],
    n_dropped: usize,
) -> Result<TokenStore> {
    let header = cell_table_header(matrix);
    let rows = kept_cells.iter().map(|&c| cell_table_row(matrix, c)).collect();
    Ok(TokenStore {
        manifest: TokenStoreManifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            tokenizer: kind.into(),
            tokenizer_version: version,
            options,
            dictionaries,
            source_path: args.input.display().to_string(),
            // Filled in by `run` from the hashing thread.
            source_sha256: String::new(),
            n_cells: cells.len(),
            n_tokens: cells.iter().map(Vec::len).sum(),
            max_len: cells.iter().map(Vec::len).max().unwrap_or(0),
            has_values: values.is_some(),
            n_cells_dropped: n_dropped,
            scinterp_version: env!("CARGO_PKG_VERSION").into(),
        },
        cells,
        values,
        cell_table: (header, rows),
    })
}

/// Reads a count matrix, choosing the reader from what the path is.
fn read_cells(args: &TokenizeArgs, scgpt: bool) -> Result<CountMatrix> {
    let input = &args.input;
    if input.is_dir() {
        let column = match (scgpt || args.orthologs.is_some(), args.gene_ids) {
            (true, _) | (false, GeneIds::Symbol) => GeneIdColumn::Symbol,
            (false, GeneIds::Ensembl) => GeneIdColumn::Id,
        };
        return Ok(read_10x_mtx(input, column)?);
    }
    if !input.exists() {
        bail!("{}: no such file or folder", input.display());
    }
    // `x.h5ad.gz` / `x.loom.gz`: decompress to a temporary file and read that.
    let decompressed = decompress_if_gzip(input)?;
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name).to_string();
    let extension = name.rsplit('.').next().unwrap_or("");
    let input = decompressed.as_ref().map(|t| t.path()).unwrap_or(input);
    match extension {
        "h5ad" => {
            let options = H5adOptions {
                layer: args.layer.clone(),
                use_raw: args.use_raw,
                gene_id_column: args.gene_id_column.clone(),
                obs_columns: args.obs_columns.clone(),
                // Geneformer normalises by each cell's total count over all genes: carry `n_counts`
                // when the file has it.
                optional_obs_columns: if scgpt {
                    Vec::new()
                } else {
                    vec!["n_counts".into()]
                },
            };
            Ok(read_h5ad(input, &options)?)
        }
        "loom" => Ok(read_loom(
            input,
            args.gene_id_column.as_deref(),
            &args.obs_columns,
        )?),
        _ => bail!(
            "{}: unknown input format; give an .h5ad or .loom file or a 10x MatrixMarket folder",
            input.display()
        ),
    }
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
