//! `scinterp tokenize`: real cells in (.h5ad, 10x MatrixMarket folder, .loom), a token store out, for
//! Geneformer (V1/V2 rank value encoding) or scGPT (binned values).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use scinterp_models::cells::h5ad::{open_h5ad, read_var_text_columns, H5adOptions};
use scinterp_models::cells::loom::read_loom;
use scinterp_models::cells::orthologs::OrthologTable;
use scinterp_models::cells::tenx::read_10x_mtx;
use scinterp_models::cells::{
    decompress_if_gzip, CellBlock, CellSource, CountMatrix, GeneIdColumn, ObsColumn,
};
use scinterp_models::token_chunks::{PartialDir, TokenChunk};
use scinterp_models::token_store::{
    hash_of, StoreRest, TokenStoreError, TokenStoreManifest, TokenStoreStream, FORMAT, FORMAT_VERSION,
    HASH_ALGORITHM,
};
use scinterp_models::tokenize::geneformer::{
    GeneIdKind, GeneformerDictionaries, GeneformerTokenizer, GeneformerVersion, PreparedGenes, TokenizeError,
    TokenizerOptions,
};
use scinterp_models::tokenize::scgpt::{
    ScgptArgs, ScgptTokenizeError, ScgptTokenizeStats, ScgptTokenizer, ScgptTokenizerOptions, ScgptVocab,
};
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
    /// Once the run has lasted this many seconds, completed chunks of cells are saved in `<out>.partial`,
    /// so that a killed run resumes when the same command is run again (0: save every chunk).
    #[arg(long, default_value_t = 20.0)]
    checkpoint_secs: f64,
    /// Cells per chunk (the unit of progress and checkpoints).
    #[arg(long, default_value_t = CHUNK_CELLS, hide = true)]
    chunk_cells: usize,
    /// Testing: stop with an error after this many chunks, as if killed (their checkpoints are saved).
    #[arg(long, hide = true)]
    stop_after_chunks: Option<usize>,
}

/// Cells per chunk: the unit of progress and of checkpoints.
const CHUNK_CELLS: usize = 2048;

pub fn run(args: TokenizeArgs, quiet: bool) -> Result<()> {
    let scgpt = matches!(args.model, TokenizerKind::Scgpt);
    if args.out.exists() && !args.overwrite {
        return Err(TokenStoreError::Exists {
            path: args.out.clone(),
        }
        .into());
    }
    // The manifest's source hash reads the whole input once more; do it beside the reading and
    // tokenizing instead of after them.
    let mut source_hash = SourceHash::spawn(&args.input);
    let started = Instant::now();
    let reading = spinner(quiet, format!("reading {}", args.input.display()));
    // The dictionaries are decoded while the matrix is read.
    let (matrix, dictionaries) = std::thread::scope(|s| {
        let dictionaries = s.spawn(|| load_dictionaries(&args));
        let matrix = read_cells(&args, scgpt);
        // A matrix left in its file starts being read while the dictionaries are decoded.
        if let Ok((cells, _)) = &matrix {
            cells.read_ahead(chunk_ranges(cells.n_cells(), args.chunk_cells));
        }
        let dictionaries = dictionaries
            .join()
            .map_err(|_| anyhow::anyhow!("the thread reading the dictionaries failed"));
        (matrix, dictionaries)
    });
    reading.finish_and_clear();
    // `_decompressed`: the decompressed copy of a gzipped input, which blocks are read from.
    let ((mut cells, _decompressed), dictionaries) = (matrix?, dictionaries??);
    tracing::info!(
        "{} {} cells × {} genes from {} in {:.2} s",
        match cells {
            CellSource::Memory(_) => "read",
            CellSource::Blocks(_) => "opened (to be read in blocks)",
        },
        cells.n_cells(),
        cells.genes().n_genes,
        args.input.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(table_path) = &args.orthologs {
        let table = OrthologTable::read(table_path)?;
        let mapped = table.translate(cells.genes_mut());
        tracing::info!(
            "{mapped} of {} mouse genes have a human ortholog in {}",
            cells.genes().n_genes,
            table_path.display()
        );
    }
    // The genes and obs columns of the cells (the whole matrix, or the head of one read in blocks).
    let matrix = cells.genes();
    let started = Instant::now();
    let job = match dictionaries {
        Dictionaries::Geneformer(tokenizer, hashes) => Job::geneformer(&args, tokenizer, hashes, matrix),
        Dictionaries::Scgpt(vocab, model_args) => Job::scgpt(&args, vocab, &model_args, matrix),
    };
    // A gene id column that maps badly is refused (or warned about) with the column to use instead.
    let job = match job {
        Ok(job) => {
            if let Some(e) = check_gene_column(&args, matrix, job.genes_mapped())? {
                return Err(e);
            }
            job
        }
        Err(e) if no_gene_mapped(&e) => return Err(check_gene_column(&args, matrix, 0)?.unwrap_or(e)),
        Err(e) => return Err(e),
    };
    // tokens.npy is written (and flushed to the disk) chunk by chunk on a thread of its own while the
    // next chunks are tokenized; the rest of the store follows at the end, then the folder is renamed
    // into place as before.
    let writer = StoreWriter::spawn(TokenStoreStream::create(&args.out, args.overwrite)?);
    let chunks = run_chunks(&args, &job, &cells, &mut source_hash, quiet, &|c| writer.send(c));
    let stream = writer.join();
    let (chunks, stream) = (chunks?, stream?);
    tracing::info!("tokenized in {:.2} s", started.elapsed().as_secs_f64());

    let n_cells = cells.n_cells();
    let mut lengths = Vec::with_capacity(n_cells);
    let mut values = job.has_values().then(|| Vec::with_capacity(n_cells));
    let (mut kept, mut dropped) = (Vec::with_capacity(n_cells), Vec::new());
    let (mut n_sampled, mut n_random_bins) = (0, 0);
    for chunk in chunks {
        lengths.extend(chunk.lengths);
        if let (Some(all), Some(v)) = (values.as_mut(), chunk.values) {
            all.extend(v);
        }
        kept.extend(chunk.kept);
        dropped.extend(chunk.dropped);
        n_sampled += chunk.n_sampled;
        n_random_bins += chunk.n_random_bins;
    }
    job.log_summary(n_sampled, n_random_bins);
    if !dropped.is_empty() {
        let examples: Vec<&str> = dropped
            .iter()
            .take(3)
            .map(|&c| cells.cell_names()[c].as_str())
            .collect();
        tracing::warn!(
            "{} of {} cells have no gene in the {} vocabulary and were skipped (e.g. {}); they are not in \
             the store and are counted in the manifest's n_cells_dropped",
            dropped.len(),
            n_cells,
            job.name(),
            examples.join(", ")
        );
    }
    let mut manifest = build_manifest(&args, job.info(), &lengths, values.is_some(), dropped.len());
    manifest.source_hash = source_hash.get()?;
    let cell_table = (
        cell_table_header(&cells),
        kept.iter().map(|&c| cell_table_row(&cells, c)).collect(),
    );
    let started = Instant::now();
    stream.finish(StoreRest {
        manifest: &manifest,
        lengths: &lengths,
        values: values.as_deref(),
        cell_table: &cell_table,
    })?;
    tracing::debug!("store written in {:.2} s", started.elapsed().as_secs_f64());
    PartialDir::for_output(&args.out).remove().with_context(|| {
        format!(
            "removing the checkpoints of {} (the store itself is complete)",
            args.out.display()
        )
    })?;
    tracing::info!(
        "wrote {} ({} cells, {} tokens, {} cells skipped for having no token)",
        args.out.display(),
        manifest.n_cells,
        manifest.n_tokens,
        manifest.n_cells_dropped
    );
    if args.json {
        println!("{}", serde_json::to_string(&manifest)?);
    }
    // The process ends here: hand the cells, the scGPT values (hundreds of MB for big inputs) and the
    // tokenizer's maps (hundreds of thousands of strings) back to the OS with it instead of freeing them
    // piece by piece.
    std::mem::forget(job);
    std::mem::forget(values);
    std::mem::forget(cell_table);
    std::mem::forget(cells);
    Ok(())
}

/// Writes the tokens of the chunks it is sent into a [`TokenStoreStream`], on a thread of its own.
struct StoreWriter {
    sender: Option<mpsc::Sender<TokenChunk>>,
    thread: std::thread::JoinHandle<Result<TokenStoreStream, TokenStoreError>>,
}

impl StoreWriter {
    fn spawn(mut stream: TokenStoreStream) -> Self {
        let (sender, chunks) = mpsc::channel::<TokenChunk>();
        let thread = std::thread::spawn(move || {
            let mut busy = std::time::Duration::ZERO;
            for chunk in chunks {
                let started = Instant::now();
                stream.append(&chunk.tokens)?;
                busy += started.elapsed();
            }
            tracing::debug!(
                "tokens written beside the tokenizing in {:.2} s",
                busy.as_secs_f64()
            );
            Ok(stream)
        });
        StoreWriter {
            sender: Some(sender),
            thread,
        }
    }

    /// Queues a chunk (a writer that failed says so in [`Self::join`]).
    fn send(&self, chunk: TokenChunk) {
        if let Some(s) = &self.sender {
            let _ = s.send(chunk);
        }
    }

    /// Waits for every queued chunk to be written.
    fn join(mut self) -> Result<TokenStoreStream> {
        drop(self.sender.take());
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the thread writing the token store failed"))?
            .map_err(Into::into)
    }
}

/// The input's hash, computed on a thread of its own and waited for when first needed.
struct SourceHash {
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<std::io::Result<String>>>,
    value: Option<String>,
}

impl SourceHash {
    fn spawn(input: &Path) -> Self {
        let path = input.to_path_buf();
        let thread = {
            let path = path.clone();
            Some(std::thread::spawn(move || hash_of(&path)))
        };
        SourceHash {
            path,
            thread,
            value: None,
        }
    }

    fn get(&mut self) -> Result<String> {
        if let Some(t) = self.thread.take() {
            let hash = t
                .join()
                .map_err(|_| anyhow::anyhow!("the thread hashing {} failed", self.path.display()))?
                .with_context(|| format!("hashing {}", self.path.display()))?;
            self.value = Some(hash);
        }
        self.value
            .clone()
            .with_context(|| format!("hashing {} failed earlier", self.path.display()))
    }
}

/// A spinner on stderr while a step without a count runs; hidden when quiet or not on a terminal.
fn spinner(quiet: bool, message: String) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// The progress bar over cells; hidden when quiet or not on a terminal.
fn cell_bar(quiet: bool, n_cells: usize) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n_cells as u64);
    if let Ok(style) =
        ProgressStyle::with_template("tokenizing [{bar:25}] {human_pos}/{human_len} cells, {rate}, ETA {eta}")
    {
        bar.set_style(
            style
                .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} cells/s", s.per_sec());
                })
                .progress_chars("=> "),
        );
    }
    bar
}

/// Tokenizes the matrix chunk by chunk, resuming from the checkpoints of an interrupted run of the same
/// command, and saving checkpoints once the run has lasted `--checkpoint-secs`.
/// Each chunk, resumed or computed, is handed to `sink` in order.
fn run_chunks(
    args: &TokenizeArgs,
    job: &Job,
    cells: &CellSource,
    source_hash: &mut SourceHash,
    quiet: bool,
    sink: &dyn Fn(TokenChunk),
) -> Result<Vec<ChunkDone>> {
    let n = cells.n_cells();
    let size = args.chunk_cells.max(1);
    let ranges = chunk_ranges(n, size);
    let partial = PartialDir::for_output(&args.out);
    // Chunks saved by an interrupted run.
    let mut resumed: Vec<Option<TokenChunk>> = (0..ranges.len()).map(|_| None).collect();
    // Whether the partial folder holds this run's key (checkpoints may be added to it).
    let mut started_partial = false;
    let mut key = None;
    if partial.exists() {
        let k = resume_key(args, job, source_hash.get()?, size, n);
        if partial.key().as_ref() == Some(&k) {
            for (slot, r) in resumed.iter_mut().zip(&ranges) {
                *slot = partial.load(r.start, r.len(), job.has_values());
            }
            let n_done = resumed.iter().filter(|c| c.is_some()).count();
            tracing::info!(
                "resuming the interrupted run from {}: {n_done} of {} chunks of cells already done",
                partial.dir.display(),
                ranges.len()
            );
            started_partial = true;
        } else {
            tracing::info!(
                "{} holds checkpoints of a run with other options or another input; starting over",
                partial.dir.display()
            );
            partial
                .remove()
                .with_context(|| format!("removing {}", partial.dir.display()))?;
        }
        key = Some(k);
    }
    let bar = cell_bar(quiet, n);
    bar.inc(resumed.iter().flatten().map(|c| c.n_cells as u64).sum::<u64>());
    let started = Instant::now();
    // Negative or NaN: from the start; too large to represent: never.
    let checkpoint_after = std::time::Duration::try_from_secs_f64(args.checkpoint_secs.max(0.0))
        .unwrap_or(std::time::Duration::MAX);
    let mut done = Vec::with_capacity(ranges.len());
    let mut computed = 0usize;
    let mut reading = std::time::Duration::ZERO;
    for (i, r) in ranges.iter().enumerate() {
        if let Some(mut chunk) = resumed[i].take() {
            done.push(ChunkDone::take(&mut chunk));
            sink(chunk);
            continue;
        }
        let t0 = Instant::now();
        let block = cells.block(r.clone())?;
        reading += t0.elapsed();
        let mut chunk = job.tokenize(&block)?;
        cells.recycle(block);
        computed += 1;
        bar.inc(r.len() as u64);
        let stop = args.stop_after_chunks.is_some_and(|s| computed >= s) && i + 1 < ranges.len();
        // Once the run has lasted --checkpoint-secs, each chunk is saved as it is finished (the chunks
        // before are not: a kill then costs at most that much work).
        if stop || started.elapsed() >= checkpoint_after {
            if !started_partial {
                let k = match key.take() {
                    Some(k) => k,
                    None => resume_key(args, job, source_hash.get()?, size, n),
                };
                partial.start(&k)?;
                started_partial = true;
            }
            partial.save(&chunk)?;
        }
        // The writer takes the tokens and lets them go once written: they are not kept to the end.
        done.push(ChunkDone::take(&mut chunk));
        sink(chunk);
        if stop {
            bar.abandon();
            bail!(
                "stopped after {computed} chunks as asked (--stop-after-chunks); rerun without it to resume \
                 from {}",
                partial.dir.display()
            );
        }
    }
    bar.finish_and_clear();
    tracing::debug!(
        "{computed} chunks of cells read and tokenized in {:.2} s ({:.2} s reading)",
        started.elapsed().as_secs_f64(),
        reading.as_secs_f64()
    );
    Ok(done)
}

/// What the end of a run needs of a chunk of cells once its tokens are handed to the store's writer.
struct ChunkDone {
    kept: Vec<usize>,
    dropped: Vec<usize>,
    /// The number of tokens of each kept cell.
    lengths: Vec<usize>,
    values: Option<Vec<Vec<f32>>>,
    n_sampled: usize,
    n_random_bins: usize,
}

impl ChunkDone {
    /// Takes all but the tokens out of `chunk`.
    fn take(chunk: &mut TokenChunk) -> Self {
        ChunkDone {
            kept: std::mem::take(&mut chunk.kept),
            dropped: std::mem::take(&mut chunk.dropped),
            lengths: chunk.tokens.iter().map(Vec::len).collect(),
            values: chunk.values.take(),
            n_sampled: chunk.n_sampled,
            n_random_bins: chunk.n_random_bins,
        }
    }
}

/// The chunks of cells of a run: `size` cells each (at least 1), the last one shorter.
fn chunk_ranges(n_cells: usize, size: usize) -> Vec<Range<usize>> {
    let size = size.max(1);
    (0..n_cells.div_ceil(size))
        .map(|i| i * size..((i + 1) * size).min(n_cells))
        .collect()
}

/// Everything the tokens of a run depend on; a rerun resumes only from checkpoints with an equal key.
fn resume_key(
    args: &TokenizeArgs,
    job: &Job,
    source_hash: String,
    chunk_cells: usize,
    n_cells: usize,
) -> serde_json::Value {
    let (kind, version, options, dictionaries) = job.info();
    json!({
        "format": "scinterp-tokenize-checkpoints",
        "format_version": 1,
        "scinterp_version": env!("CARGO_PKG_VERSION"),
        "source_path": args.input.display().to_string(),
        "hash_algorithm": HASH_ALGORITHM,
        "source_hash": source_hash,
        "tokenizer": kind,
        "tokenizer_version": version,
        "options": options,
        "dictionaries": dictionaries,
        "gene_ids": format!("{:?}", args.gene_ids),
        "gene_id_column": args.gene_id_column,
        "layer": args.layer,
        "use_raw": args.use_raw,
        "max_len": args.max_len,
        "seed": args.seed,
        "cls_value": args.cls_value,
        "chunk_cells": chunk_cells,
        "n_cells": n_cells,
    })
}

/// Decoded dictionaries of either tokenizer.
enum Dictionaries {
    /// The tokenizer (built beside the matrix read) and the hash of each dictionary file.
    Geneformer(Box<GeneformerTokenizer>, BTreeMap<String, String>),
    Scgpt(ScgptVocab, ScgptArgs),
}

fn load_dictionaries(args: &TokenizeArgs) -> Result<Dictionaries> {
    let started = Instant::now();
    let d = match args.model {
        TokenizerKind::Scgpt => {
            let dir = args.vocab.as_deref().context("--vocab is required for scGPT")?;
            let vocab = ScgptVocab::load(&dir.join("vocab.json"))?;
            let args_path = dir.join("args.json");
            let model_args = if args_path.is_file() {
                ScgptArgs::load(&args_path)?
            } else {
                ScgptArgs::default()
            };
            Dictionaries::Scgpt(vocab, model_args)
        }
        _ => {
            let dir = args
                .dictionaries
                .as_deref()
                .context("--dictionaries is required for Geneformer")?;
            let version = geneformer_version(args);
            let dicts = GeneformerDictionaries::load_for(version, dir, gene_id_kind(args))?;
            let mut options = TokenizerOptions::new(version);
            options.gene_id_kind = gene_id_kind(args);
            options.allow_normalized = args.allow_normalized;
            if let Some(n) = args.max_len {
                options.model_input_size = n;
            }
            tracing::debug!("dictionaries decoded in {:.2} s", started.elapsed().as_secs_f64());
            // The tokenizer keeps the mapping and symbol maps of the dictionaries (no copy).
            let tokenizer = Box::new(GeneformerTokenizer::from_dictionaries(dicts, options)?);
            let mut hashes = BTreeMap::new();
            for name in version.dictionary_files() {
                let path = dir.join(&name);
                hashes.insert(
                    name,
                    hash_of(&path).with_context(|| format!("hashing {}", path.display()))?,
                );
            }
            Dictionaries::Geneformer(tokenizer, hashes)
        }
    };
    tracing::debug!("dictionaries read in {:.2} s", started.elapsed().as_secs_f64());
    Ok(d)
}

fn geneformer_version(args: &TokenizeArgs) -> GeneformerVersion {
    match args.model {
        TokenizerKind::GeneformerV1 => GeneformerVersion::V1,
        _ => GeneformerVersion::V2,
    }
}

/// What the Geneformer tokenizer is given: orthologs yield human symbols whatever the input's ids were.
fn gene_id_kind(args: &TokenizeArgs) -> GeneIdKind {
    match (args.orthologs.is_some(), args.gene_ids) {
        (true, _) | (false, GeneIds::Symbol) => GeneIdKind::Symbol,
        (false, GeneIds::Ensembl) => GeneIdKind::Ensembl,
    }
}

/// A tokenizer bound to a matrix, with what the manifest says about it.
struct Job {
    kind: JobKind,
    info: TokenizerInfo,
}

enum JobKind {
    Geneformer {
        tokenizer: Box<GeneformerTokenizer>,
        prepared: PreparedGenes,
    },
    Scgpt {
        tokenizer: Box<ScgptTokenizer>,
        stats: ScgptTokenizeStats,
    },
}

impl Job {
    /// `matrix`: the genes and obs columns of the cells (see [`CellSource::genes`]).
    fn geneformer(
        args: &TokenizeArgs,
        tokenizer: Box<GeneformerTokenizer>,
        dictionaries: BTreeMap<String, String>,
        matrix: &CountMatrix,
    ) -> Result<Self> {
        let version = tokenizer.options().version;
        let started = Instant::now();
        let prepared = tokenizer
            .prepare(matrix)
            .with_context(|| format!("tokenizing {}", args.input.display()))?;
        tracing::debug!(
            "gene ids mapped and counts checked in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        let stats = prepared.stats();
        tracing::info!(
            "{} of {} genes map to the {version} vocabulary ({} unmapped, e.g. {:?})",
            stats.n_genes_mapped,
            stats.n_genes,
            stats.n_genes_unmapped,
            stats.unmapped_examples.iter().take(3).collect::<Vec<_>>()
        );
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
        Ok(Job {
            info: ("geneformer", version.to_string(), options, dictionaries),
            kind: JobKind::Geneformer { tokenizer, prepared },
        })
    }

    fn scgpt(
        args: &TokenizeArgs,
        vocab: ScgptVocab,
        model_args: &ScgptArgs,
        matrix: &CountMatrix,
    ) -> Result<Self> {
        let dir = args.vocab.as_deref().context("--vocab is required for scGPT")?;
        let mut options = ScgptTokenizerOptions::from_args(model_args);
        options.cls_value = args.cls_value;
        options.seed = args.seed;
        if let Some(n) = args.max_len {
            options.max_seq_len = n;
        }
        let tokenizer = Box::new(ScgptTokenizer::new(vocab, options)?);
        // The gene matching of the whole matrix (and its refusals), from a run over no cell.
        let stats = tokenizer
            .tokenize_with_offset(&matrix.slice_rows(0..0), 0)
            .with_context(|| format!("tokenizing {}", args.input.display()))?
            .stats;
        let mut dictionaries = BTreeMap::new();
        for path in [dir.join("vocab.json"), dir.join("args.json")] {
            if path.is_file() {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                dictionaries.insert(
                    name,
                    hash_of(&path).with_context(|| format!("hashing {}", path.display()))?,
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
        Ok(Job {
            info: ("scgpt", "whole-human".to_string(), options, dictionaries),
            kind: JobKind::Scgpt { tokenizer, stats },
        })
    }

    /// Input genes that map to the vocabulary.
    fn genes_mapped(&self) -> usize {
        match &self.kind {
            JobKind::Geneformer { prepared, .. } => prepared.stats().n_genes_mapped,
            JobKind::Scgpt { stats, .. } => stats.n_genes_matched,
        }
    }

    fn info(&self) -> TokenizerInfo {
        self.info.clone()
    }

    fn name(&self) -> String {
        match &self.kind {
            JobKind::Geneformer { tokenizer, .. } => format!("Geneformer {}", tokenizer.options().version),
            JobKind::Scgpt { .. } => "scGPT".into(),
        }
    }

    fn has_values(&self) -> bool {
        matches!(self.kind, JobKind::Scgpt { .. })
    }

    /// Tokenizes a block of cells.
    fn tokenize(&self, block: &CellBlock<'_>) -> Result<TokenChunk> {
        let (matrix, r) = (block.matrix.as_ref(), block.cells.clone());
        let (first, n_cells) = (block.first + r.start, r.len());
        Ok(match &self.kind {
            JobKind::Geneformer { tokenizer, prepared } => {
                let t = tokenizer.tokenize_cells(prepared, matrix, r, block.first)?;
                TokenChunk {
                    first,
                    n_cells,
                    kept: t.kept_cells,
                    dropped: t.dropped_cells,
                    tokens: t.tokens,
                    values: None,
                    n_sampled: 0,
                    n_random_bins: 0,
                }
            }
            JobKind::Scgpt { tokenizer, .. } => {
                let t = if r == (0..matrix.n_cells) {
                    tokenizer.tokenize_with_offset(matrix, first)?
                } else {
                    tokenizer.tokenize_with_offset(&matrix.slice_rows(r), first)?
                };
                TokenChunk {
                    first,
                    n_cells,
                    kept: t.kept_cells,
                    dropped: t.dropped_cells,
                    tokens: t.gene_ids,
                    values: Some(t.values),
                    n_sampled: t.stats.n_cells_sampled,
                    n_random_bins: t.stats.n_random_bins,
                }
            }
        })
    }

    fn log_summary(&self, n_sampled: usize, n_random_bins: usize) {
        if let JobKind::Scgpt { tokenizer, stats } = &self.kind {
            tracing::info!(
                "{} of {} genes match the scGPT vocabulary ({} unmatched, e.g. {:?}); {n_sampled} cells \
                 subsampled to {} tokens; {n_random_bins} bins drawn at repeated edges",
                stats.n_genes_matched,
                stats.n_genes,
                stats.n_genes_unmatched,
                stats.unmatched_examples.iter().take(3).collect::<Vec<_>>(),
                tokenizer.options().max_seq_len
            );
        }
    }
}

type TokenizerInfo = (&'static str, String, serde_json::Value, BTreeMap<String, String>);

/// Whether an error is the tokenizers' "no gene maps".
fn no_gene_mapped(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<TokenizeError>(),
        Some(TokenizeError::NoGenesMapped { .. })
    ) || matches!(
        e.downcast_ref::<ScgptTokenizeError>(),
        Some(ScgptTokenizeError::NoGenesMatched { .. })
    )
}

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
fn gene_columns(args: &TokenizeArgs, matrix: &CountMatrix) -> Vec<GeneColumn> {
    let is_h5ad = args
        .input
        .file_name()
        .is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().ends_with(".h5ad"));
    if is_h5ad {
        let options = H5adOptions {
            use_raw: args.use_raw,
            ..H5adOptions::default()
        };
        let var = if args.use_raw { "raw/var" } else { "var" };
        if let Ok(columns) = read_var_text_columns(&args.input, &options) {
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
        flags: args
            .gene_id_column
            .iter()
            .map(|c| format!("--gene-id-column {c}"))
            .collect(),
        ids: matrix.gene_ids.clone(),
    }];
    if let Some(symbols) = &matrix.gene_symbols {
        out.push(GeneColumn {
            label: "the gene symbols of the file".into(),
            flags: vec![if args.input.is_dir() {
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
fn check_gene_column(
    args: &TokenizeArgs,
    matrix: &CountMatrix,
    mapped: usize,
) -> Result<Option<anyhow::Error>> {
    let n = matrix.n_genes;
    if args.orthologs.is_some() || n == 0 || mapped * 2 >= n {
        return Ok(None);
    }
    let columns = gene_columns(args, matrix);
    // (column, --gene-ids flag, matches) for every way of reading each column.
    let mut counts: Vec<(usize, Option<GeneIds>, usize)> = Vec::new();
    let model = match args.model {
        TokenizerKind::Scgpt => {
            let dir = args.vocab.as_deref().context("--vocab is required for scGPT")?;
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
            let dir = args
                .dictionaries
                .as_deref()
                .context("--dictionaries is required for Geneformer")?;
            let version = geneformer_version(args);
            let dicts = GeneformerDictionaries::load(version, dir)?;
            for kind in [GeneIds::Ensembl, GeneIds::Symbol] {
                let mut options = TokenizerOptions::new(version);
                options.gene_id_kind = match kind {
                    GeneIds::Ensembl => GeneIdKind::Ensembl,
                    GeneIds::Symbol => GeneIdKind::Symbol,
                };
                let tokenizer = GeneformerTokenizer::new(&dicts, options)?;
                for (i, c) in columns.iter().enumerate() {
                    counts.push((i, Some(kind), tokenizer.count_mapped(&c.ids)));
                }
            }
            format!("Geneformer {version}")
        }
    };
    let describe = |kind: Option<GeneIds>| match kind {
        Some(GeneIds::Ensembl) => " as Ensembl ids",
        Some(GeneIds::Symbol) => " as symbols",
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
    let current = match (&args.gene_id_column, args.model) {
        (Some(c), _) => format!("var column `{c}`"),
        (None, _) => "the gene ids read (the var index for .h5ad)".to_string(),
    };
    let head = format!(
        "{}: only {mapped} of {n} genes map to the {model} vocabulary with {current}{}",
        args.input.display(),
        match args.model {
            TokenizerKind::Scgpt => "",
            _ => describe(Some(args.gene_ids)),
        }
    );
    let Some((bi, bkind, bm)) = best.filter(|b| b.2 > mapped) else {
        if mapped == 0 {
            let need = match args.model {
                TokenizerKind::Scgpt => "human gene symbols",
                _ => "human Ensembl ids (ENSG…) or human gene symbols",
            };
            return Ok(Some(anyhow::anyhow!(
                "{head}, and no other column maps any better ({table}). {model} needs {need}; for mouse \
                 data pass --orthologs with a human–mouse ortholog table"
            )));
        }
        return Ok(None);
    };
    let mut flags = columns[bi].flags.clone();
    if let Some(kind) = bkind {
        flags.push(match kind {
            GeneIds::Ensembl => "--gene-ids ensembl".into(),
            GeneIds::Symbol => "--gene-ids symbol".into(),
        });
    }
    let advice = if columns[bi].flags.is_empty() && args.gene_id_column.is_some() {
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
        Ok(Some(anyhow::anyhow!(message)))
    } else {
        if bm * 2 >= mapped * 3 {
            tracing::warn!("{message}");
        }
        Ok(None)
    }
}

fn build_manifest(
    args: &TokenizeArgs,
    (kind, version, options, dictionaries): TokenizerInfo,
    lengths: &[usize],
    has_values: bool,
    n_dropped: usize,
) -> TokenStoreManifest {
    TokenStoreManifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        tokenizer: kind.into(),
        tokenizer_version: version,
        options,
        hash_algorithm: HASH_ALGORITHM.into(),
        dictionaries,
        source_path: args.input.display().to_string(),
        // Filled in by `run` from the hashing thread.
        source_hash: String::new(),
        n_cells: lengths.len(),
        n_tokens: lengths.iter().sum(),
        max_len: lengths.iter().copied().max().unwrap_or(0),
        has_values,
        n_cells_dropped: n_dropped,
        scinterp_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Reads (or opens) the input's cells, choosing the reader from what the path is; a gzipped input comes with its decompressed temporary copy, to be
/// kept while its cells are read.
fn read_cells(args: &TokenizeArgs, scgpt: bool) -> Result<(CellSource, Option<tempfile::NamedTempFile>)> {
    let input = &args.input;
    if input.is_dir() {
        let column = match (scgpt || args.orthologs.is_some(), args.gene_ids) {
            (true, _) | (false, GeneIds::Symbol) => GeneIdColumn::Symbol,
            (false, GeneIds::Ensembl) => GeneIdColumn::Id,
        };
        return Ok((CellSource::Memory(read_10x_mtx(input, column)?), None));
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
            Ok((open_h5ad(input, &options)?, decompressed))
        }
        "loom" => {
            let m = read_loom(input, args.gene_id_column.as_deref(), &args.obs_columns)?;
            Ok((CellSource::Memory(m), None))
        }
        _ => bail!(
            "{}: unknown input format; give an .h5ad or .loom file or a 10x MatrixMarket folder",
            input.display()
        ),
    }
}

fn cell_table_header(m: &CellSource) -> Vec<String> {
    std::iter::once("cell".to_string())
        .chain(m.obs().keys().cloned())
        .collect()
}

fn cell_table_row(m: &CellSource, c: usize) -> Vec<String> {
    let mut row = vec![m.cell_names()[c].clone()];
    for col in m.obs().values() {
        row.push(match col {
            ObsColumn::Text(v) => v[c].clone(),
            ObsColumn::Number(v) => v[c].to_string(),
        });
    }
    row
}
