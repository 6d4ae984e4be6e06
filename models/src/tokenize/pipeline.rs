//! The tokenize pipeline: cells in (.h5ad, 10x MatrixMarket folder, .loom), a token store out, for any
//! [`Tokenizer`]. The matrix is read in chunks of cells (a block reader reads ahead beside the
//! tokenizing), each chunk tokenized and handed to a writer thread that appends its tokens to the store;
//! the input is hashed on a thread of its own. Once the run has lasted `checkpoint_secs`, finished chunks
//! are saved in `<out>.partial`, so that a killed run resumes when run again with the same [`Config`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use serde_json::json;

use super::gene_columns::check_gene_column;
use super::geneformer::{
    GeneIdKind, GeneformerDictionaries, GeneformerTokenizer, GeneformerVersion, PreparedGenes, TokenizeError,
    TokenizerOptions,
};
use super::scgpt::{
    ScgptArgs, ScgptTokenizeError, ScgptTokenizeStats, ScgptTokenizer, ScgptTokenizerOptions, ScgptVocab,
};
use crate::cells::orthologs::OrthologTable;
use crate::cells::{CellBlock, CellSource, CellsError, CountMatrix, GeneIdColumn, ObsColumn, OpenOptions};
use crate::registry::TokenizerKind;
use crate::token_chunks::{PartialDir, PartialError, Saved, TokenChunk};
use crate::token_store::{
    hash_of, StoreRest, TokenStoreError, TokenStoreManifest, TokenStoreStream, FORMAT, FORMAT_VERSION,
    HASH_ALGORITHM,
};

/// Cells per chunk: the unit of progress and of checkpoints.
pub const CHUNK_CELLS: usize = 2048;

/// What to tokenize, with what, and where to write it.
#[derive(Clone, Debug)]
pub struct Config {
    /// An .h5ad or .loom file (either may be gzipped) or a 10x MatrixMarket folder.
    pub input: PathBuf,
    pub tokenizer: TokenizerKind,
    /// Geneformer: the folder of the dictionary pickles.
    pub dictionaries: Option<PathBuf>,
    /// scGPT: the model folder holding vocab.json (and args.json, read when present).
    pub vocab: Option<PathBuf>,
    /// Geneformer: whether the gene ids are Ensembl ids or symbols (10x: also the features.tsv column).
    pub gene_ids: GeneIdKind,
    /// h5ad: the var column of the gene ids; loom: the row attribute.
    pub gene_id_column: Option<String>,
    pub layer: Option<String>,
    pub use_raw: bool,
    /// obs columns to keep in cells.tsv.
    pub obs_columns: Vec<String>,
    /// Tokens per cell including specials (`None`: the model's native size).
    pub max_len: Option<usize>,
    /// scGPT: seed of the bin draws at repeated edges and of the subsampling of long cells.
    pub seed: u64,
    /// Mouse data: a `human_symbol,mouse_symbol` ortholog table.
    pub orthologs: Option<PathBuf>,
    /// Geneformer: accept non-negative values that are not integer counts.
    pub allow_normalized: bool,
    /// scGPT: the value of `<cls>`.
    pub cls_value: f32,
    pub out: PathBuf,
    pub overwrite: bool,
    /// Seconds after which finished chunks are saved for a resume (0: every chunk).
    pub checkpoint_secs: f64,
    /// Cells per chunk.
    pub chunk_cells: usize,
    /// Testing: stop with [`PipelineError::Stopped`] after this many chunks (their checkpoints saved).
    pub stop_after_chunks: Option<usize>,
}

impl Config {
    /// The defaults of `scinterp tokenize`: Ensembl gene ids, the model's native length, seed 0, `<cls>`
    /// value −2, counts only, a checkpoint of finished chunks once the run has lasted 20 s. `tokenizer`'s
    /// vocabulary comes from `dictionaries` (Geneformer) or `vocab` (scGPT), to be set by the caller.
    pub fn new(input: PathBuf, tokenizer: TokenizerKind, out: PathBuf) -> Self {
        Config {
            input,
            tokenizer,
            dictionaries: None,
            vocab: None,
            gene_ids: GeneIdKind::Ensembl,
            gene_id_column: None,
            layer: None,
            use_raw: false,
            obs_columns: Vec::new(),
            max_len: None,
            seed: 0,
            orthologs: None,
            allow_normalized: false,
            cls_value: Self::CLS_VALUE,
            out,
            overwrite: false,
            checkpoint_secs: Self::CHECKPOINT_SECS,
            chunk_cells: CHUNK_CELLS,
            stop_after_chunks: None,
        }
    }
    pub const CLS_VALUE: f32 = -2.0;
    pub const CHECKPOINT_SECS: f64 = 20.0;
}

/// What a run wrote.
pub struct Report {
    /// The store's manifest, as written.
    pub manifest: TokenStoreManifest,
    /// The run's large buffers (cells, tokenizer maps, values). Dropping them frees them piece by piece;
    /// a process about to exit may `std::mem::forget` them instead and let the OS take them back at once.
    pub retained: Retained,
}

/// See [`Report::retained`].
pub struct Retained {
    _tokenizer: Box<dyn Tokenizer>,
    _values: Option<Vec<Vec<f32>>>,
    _cell_table: (Vec<String>, Vec<Vec<String>>),
    _cells: CellSource,
}

/// Progress of a run, for a caller that shows it.
pub trait Progress {
    /// Reading (or opening) the input starts.
    fn reading(&self, _input: &Path) {}
    /// The input is read or opened.
    fn read(&self) {}
    /// Tokenizing `n_cells` starts, `done` of them resumed from checkpoints.
    fn cells_start(&self, _n_cells: u64, _done: u64) {}
    /// `n` more cells are tokenized.
    fn cells(&self, _n: u64) {}
    /// The cells are all tokenized (`completed`: false when the run stops early).
    fn cells_end(&self, _completed: bool) {}
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {}

/// Why a run failed. Each names the file or option at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] TokenStoreError),
    #[error(transparent)]
    Cells(#[from] CellsError),
    #[error(transparent)]
    Geneformer(#[from] TokenizeError),
    #[error(transparent)]
    Scgpt(#[from] ScgptTokenizeError),
    #[error(transparent)]
    Checkpoint(#[from] PartialError),
    /// A step that failed; its cause is the error's source.
    #[error("{context}")]
    Step {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Options or input refused, with what to do instead.
    #[error("{0}")]
    Refused(String),
    /// `stop_after_chunks` reached (testing).
    #[error(
        "stopped after {chunks} chunks as asked (--stop-after-chunks); rerun without it to resume from {}",
        partial.display()
    )]
    Stopped { chunks: usize, partial: PathBuf },
    #[error("the thread {0} failed")]
    Thread(String),
}

/// Wraps an error with what was being done.
fn step<E: std::error::Error + Send + Sync + 'static>(context: String) -> impl FnOnce(E) -> PipelineError {
    move |e| PipelineError::Step {
        context,
        source: Box::new(e),
    }
}

/// A tokenizer bound to the genes of a matrix: what the pipeline needs of Geneformer V1/V2 and scGPT.
pub trait Tokenizer: Send + Sync {
    /// Tokenizes a block of cells.
    fn tokenize(&self, block: &CellBlock<'_>) -> Result<TokenChunk, PipelineError>;
    /// Input genes that map to the vocabulary.
    fn genes_mapped(&self) -> usize;
    /// What the manifest says about the tokenizer: kind, version, options, dictionary hashes.
    fn info(&self) -> TokenizerInfo;
    /// The name of its vocabulary in messages.
    fn name(&self) -> String;
    /// Whether its tokens carry expression values.
    fn has_values(&self) -> bool;
    /// Logs what the whole run did (`n_sampled` cells subsampled, `n_random_bins` bins drawn).
    fn log_summary(&self, _n_sampled: usize, _n_random_bins: usize) {}
}

/// The manifest's `tokenizer`, `tokenizer_version`, `options` and `dictionaries`.
pub type TokenizerInfo = (&'static str, String, serde_json::Value, BTreeMap<String, String>);

/// Runs the pipeline: `config.input` tokenized into the token store `config.out`.
pub fn run(config: &Config, progress: &dyn Progress) -> Result<Report, PipelineError> {
    // The tokenizer's complaints about the values do not know the file: name it.
    run_inner(config, progress).map_err(|e| match e {
        PipelineError::Geneformer(e @ (TokenizeError::NotCounts { .. } | TokenizeError::NCounts { .. })) => {
            PipelineError::Refused(format!("{}: {e}", config.input.display()))
        }
        other => other,
    })
}

fn run_inner(config: &Config, progress: &dyn Progress) -> Result<Report, PipelineError> {
    // What killed runs left for this output is cleaned (or put back) before anything is judged.
    crate::token_store::prepare_output(&config.out)?;
    if config.out.exists() && !config.overwrite {
        return Err(TokenStoreError::Exists {
            path: config.out.clone(),
        }
        .into());
    }
    // The manifest's source hash reads the whole input once more; do it beside the reading and
    // tokenizing instead of after them.
    let mut source_hash = SourceHash::spawn(&config.input);
    let started = Instant::now();
    progress.reading(&config.input);
    // The dictionaries are decoded while the matrix is read.
    let (matrix, dictionaries) = std::thread::scope(|s| {
        let dictionaries = s.spawn(|| load_dictionaries(config));
        let matrix = crate::cells::open(&config.input, &open_options(config));
        // A matrix left in its file starts being read while the dictionaries are decoded.
        if let Ok((cells, _)) = &matrix {
            cells.read_ahead(chunk_ranges(cells.n_cells(), config.chunk_cells));
        }
        let dictionaries = dictionaries
            .join()
            .map_err(|_| PipelineError::Thread("reading the dictionaries".into()));
        (matrix, dictionaries)
    });
    progress.read();
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
        config.input.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(table_path) = &config.orthologs {
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
    if config.orthologs.is_none() {
        if let Some((n, examples)) = crate::cells::orthologs::mouse_like_ids(&matrix.gene_ids) {
            return Err(PipelineError::Refused(format!(
                "{}: {n} of {} gene ids look like mouse genes (e.g. {}), but the model's vocabulary is \
                 human; pass --orthologs with a human–mouse ortholog table (human_symbol,mouse_symbol per \
                 line), or --gene-id-column with a column of human gene ids",
                config.input.display(),
                matrix.n_genes,
                examples.join(", ")
            )));
        }
    }
    let started = Instant::now();
    let job: Result<Box<dyn Tokenizer>, PipelineError> = match dictionaries {
        Dictionaries::Geneformer(tokenizer, hashes) => {
            GeneformerJob::new(config, tokenizer, hashes, matrix).map(|j| Box::new(j) as Box<dyn Tokenizer>)
        }
        Dictionaries::Scgpt(vocab, model_args) => {
            ScgptJob::new(config, vocab, &model_args, matrix).map(|j| Box::new(j) as Box<dyn Tokenizer>)
        }
    };
    // A gene id column that maps badly is refused (or warned about) with the column to use instead.
    let job = match job {
        Ok(job) => {
            if let Some(e) = check_gene_column(config, matrix, job.genes_mapped())? {
                return Err(e);
            }
            job
        }
        Err(e) if no_gene_mapped(&e) => return Err(check_gene_column(config, matrix, 0)?.unwrap_or(e)),
        Err(e) => return Err(e),
    };
    // tokens.npy is written (and flushed to the disk) chunk by chunk on a thread of its own while the
    // next chunks are tokenized; the rest of the store follows at the end, then the folder is renamed
    // into place as before.
    let writer = StoreWriter::spawn(TokenStoreStream::create(&config.out, config.overwrite)?);
    let chunks = run_chunks(config, job.as_ref(), &cells, &mut source_hash, progress, &|c| {
        writer.send(c)
    });
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
    let mut manifest = build_manifest(config, job.info(), &lengths, values.is_some(), dropped.len());
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
    PartialDir::for_output(&config.out)
        .remove()
        .map_err(step(format!(
            "removing the checkpoints of {} (the store itself is complete)",
            config.out.display()
        )))?;
    tracing::info!(
        "wrote {} ({} cells, {} tokens, {} cells skipped for having no token)",
        config.out.display(),
        manifest.n_cells,
        manifest.n_tokens,
        manifest.n_cells_dropped
    );
    Ok(Report {
        manifest,
        retained: Retained {
            _tokenizer: job,
            _values: values,
            _cell_table: cell_table,
            _cells: cells,
        },
    })
}

/// The reader's options: Geneformer normalises by each cell's total count over all genes, so it carries
/// `n_counts` when the file has it; scGPT (and mouse data through orthologs) read symbols.
fn open_options(config: &Config) -> OpenOptions {
    let scgpt = config.tokenizer == TokenizerKind::Scgpt;
    OpenOptions {
        tenx_column: match (scgpt || config.orthologs.is_some(), config.gene_ids) {
            (true, _) | (false, GeneIdKind::Symbol) => GeneIdColumn::Symbol,
            (false, GeneIdKind::Ensembl) => GeneIdColumn::Id,
        },
        gene_id_column: config.gene_id_column.clone(),
        layer: config.layer.clone(),
        use_raw: config.use_raw,
        obs_columns: config.obs_columns.clone(),
        optional_obs_columns: if scgpt {
            Vec::new()
        } else {
            vec!["n_counts".into()]
        },
    }
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
    fn join(mut self) -> Result<TokenStoreStream, PipelineError> {
        drop(self.sender.take());
        self.thread
            .join()
            .map_err(|_| PipelineError::Thread("writing the token store".into()))?
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

    fn get(&mut self) -> Result<String, PipelineError> {
        if let Some(t) = self.thread.take() {
            let hash = t
                .join()
                .map_err(|_| PipelineError::Thread(format!("hashing {}", self.path.display())))?
                .map_err(step(format!("hashing {}", self.path.display())))?;
            self.value = Some(hash);
        }
        self.value
            .clone()
            .ok_or_else(|| PipelineError::Refused(format!("hashing {} failed earlier", self.path.display())))
    }
}

/// Tokenizes the matrix chunk by chunk, resuming from the checkpoints of an interrupted run of the same
/// configuration, and saving checkpoints once the run has lasted `checkpoint_secs`.
/// Each chunk, resumed or computed, is handed to `sink` in order.
fn run_chunks(
    config: &Config,
    job: &dyn Tokenizer,
    cells: &CellSource,
    source_hash: &mut SourceHash,
    progress: &dyn Progress,
    sink: &dyn Fn(TokenChunk),
) -> Result<Vec<ChunkDone>, PipelineError> {
    let n = cells.n_cells();
    let size = config.chunk_cells.max(1);
    let ranges = chunk_ranges(n, size);
    let partial = PartialDir::for_output(&config.out);
    // Chunks saved by an interrupted run.
    let mut resumed: Vec<Option<TokenChunk>> = (0..ranges.len()).map(|_| None).collect();
    // Whether the partial folder holds this run's key (checkpoints may be added to it).
    let mut started_partial = false;
    let mut key = None;
    if partial.exists() {
        let k = resume_key(config, job, source_hash.get()?, size, n);
        if partial.key().as_ref() == Some(&k) {
            for (slot, r) in resumed.iter_mut().zip(&ranges) {
                match partial.check(r.start, r.len(), job.has_values()) {
                    Saved::Chunk(c) => *slot = Some(c),
                    Saved::Missing => {}
                    // Discarded and done again: the store comes out the same, and a damaged chunk is
                    // never read into it.
                    Saved::Damaged { path, reason } => {
                        tracing::warn!(
                            "{}: {reason}; discarded, its cells {}..{} are tokenized again",
                            path.display(),
                            r.start,
                            r.end
                        );
                        partial
                            .discard(r.start)
                            .map_err(step(format!("removing {}", path.display())))?;
                    }
                }
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
                "{} holds checkpoints of a run with other options or another input{}; starting over",
                partial.dir.display(),
                if partial.key().is_none() {
                    " (its resume.json is unreadable)"
                } else {
                    ""
                }
            );
            partial
                .remove()
                .map_err(step(format!("removing {}", partial.dir.display())))?;
        }
        key = Some(k);
    }
    progress.cells_start(
        n as u64,
        resumed.iter().flatten().map(|c| c.n_cells as u64).sum::<u64>(),
    );
    let started = Instant::now();
    // Negative or NaN: from the start; too large to represent: never.
    let checkpoint_after = std::time::Duration::try_from_secs_f64(config.checkpoint_secs.max(0.0))
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
        progress.cells(r.len() as u64);
        let stop = config.stop_after_chunks.is_some_and(|s| computed >= s) && i + 1 < ranges.len();
        // Once the run has lasted checkpoint_secs, each chunk is saved as it is finished (the chunks
        // before are not: a kill then costs at most that much work).
        if stop || started.elapsed() >= checkpoint_after {
            if !started_partial {
                let k = match key.take() {
                    Some(k) => k,
                    None => resume_key(config, job, source_hash.get()?, size, n),
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
            progress.cells_end(false);
            return Err(PipelineError::Stopped {
                chunks: computed,
                partial: partial.dir.clone(),
            });
        }
    }
    progress.cells_end(true);
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
    config: &Config,
    job: &dyn Tokenizer,
    source_hash: String,
    chunk_cells: usize,
    n_cells: usize,
) -> serde_json::Value {
    let (kind, version, options, dictionaries) = job.info();
    json!({
        "format": "scinterp-tokenize-checkpoints",
        "format_version": 1,
        "scinterp_version": env!("CARGO_PKG_VERSION"),
        "source_path": config.input.display().to_string(),
        "hash_algorithm": HASH_ALGORITHM,
        "source_hash": source_hash,
        "tokenizer": kind,
        "tokenizer_version": version,
        "options": options,
        "dictionaries": dictionaries,
        "gene_ids": format!("{:?}", config.gene_ids),
        "gene_id_column": config.gene_id_column,
        "layer": config.layer,
        "use_raw": config.use_raw,
        "max_len": config.max_len,
        "seed": config.seed,
        "cls_value": config.cls_value,
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

/// The scGPT model folder of `config`.
pub(super) fn vocab_dir(config: &Config) -> Result<&Path, PipelineError> {
    config
        .vocab
        .as_deref()
        .ok_or_else(|| PipelineError::Refused("--vocab is required for scGPT".into()))
}

/// The Geneformer dictionary folder of `config`.
pub(super) fn dictionaries_dir(config: &Config) -> Result<&Path, PipelineError> {
    config
        .dictionaries
        .as_deref()
        .ok_or_else(|| PipelineError::Refused("--dictionaries is required for Geneformer".into()))
}

fn load_dictionaries(config: &Config) -> Result<Dictionaries, PipelineError> {
    let started = Instant::now();
    let d = match config.tokenizer {
        TokenizerKind::Scgpt => {
            let dir = vocab_dir(config)?;
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
            let dir = dictionaries_dir(config)?;
            let version = geneformer_version(config.tokenizer);
            let dicts = GeneformerDictionaries::load_for(version, dir, gene_id_kind(config))?;
            let mut options = TokenizerOptions::new(version);
            options.gene_id_kind = gene_id_kind(config);
            options.allow_normalized = config.allow_normalized;
            if let Some(n) = config.max_len {
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
                    hash_of(&path).map_err(step(format!("hashing {}", path.display())))?,
                );
            }
            Dictionaries::Geneformer(tokenizer, hashes)
        }
    };
    tracing::debug!("dictionaries read in {:.2} s", started.elapsed().as_secs_f64());
    Ok(d)
}

/// The Geneformer dictionaries of a tokenizer kind (V2 unless V1).
pub(super) fn geneformer_version(kind: TokenizerKind) -> GeneformerVersion {
    match kind {
        TokenizerKind::GeneformerV1 => GeneformerVersion::V1,
        _ => GeneformerVersion::V2,
    }
}

/// What the Geneformer tokenizer is given: orthologs yield human symbols whatever the input's ids were.
fn gene_id_kind(config: &Config) -> GeneIdKind {
    match (config.orthologs.is_some(), config.gene_ids) {
        (true, _) | (false, GeneIdKind::Symbol) => GeneIdKind::Symbol,
        (false, GeneIdKind::Ensembl) => GeneIdKind::Ensembl,
    }
}

/// The Geneformer tokenizer (V1 or V2) bound to the genes of a matrix.
struct GeneformerJob {
    tokenizer: Box<GeneformerTokenizer>,
    prepared: PreparedGenes,
    info: TokenizerInfo,
}

impl GeneformerJob {
    /// `matrix`: the genes and obs columns of the cells (see [`CellSource::genes`]).
    fn new(
        config: &Config,
        tokenizer: Box<GeneformerTokenizer>,
        dictionaries: BTreeMap<String, String>,
        matrix: &CountMatrix,
    ) -> Result<Self, PipelineError> {
        let version = tokenizer.options().version;
        let started = Instant::now();
        let prepared = tokenizer
            .prepare(matrix)
            .map_err(step(format!("tokenizing {}", config.input.display())))?;
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
            "orthologs": config.orthologs.as_ref().map(|p| p.display().to_string()),
            "allow_normalized": config.allow_normalized,
            "tie_rule": "descending normalised value, ties by ascending first source column",
        });
        Ok(GeneformerJob {
            info: ("geneformer", version.to_string(), options, dictionaries),
            tokenizer,
            prepared,
        })
    }
}

impl Tokenizer for GeneformerJob {
    fn tokenize(&self, block: &CellBlock<'_>) -> Result<TokenChunk, PipelineError> {
        let (matrix, r) = (block.matrix.as_ref(), block.cells.clone());
        let (first, n_cells) = (block.first + r.start, r.len());
        let t = self
            .tokenizer
            .tokenize_cells(&self.prepared, matrix, r, block.first)?;
        Ok(TokenChunk {
            first,
            n_cells,
            kept: t.kept_cells,
            dropped: t.dropped_cells,
            tokens: t.tokens,
            values: None,
            n_sampled: 0,
            n_random_bins: 0,
        })
    }

    fn genes_mapped(&self) -> usize {
        self.prepared.stats().n_genes_mapped
    }

    fn info(&self) -> TokenizerInfo {
        self.info.clone()
    }

    fn name(&self) -> String {
        format!("Geneformer {}", self.tokenizer.options().version)
    }

    fn has_values(&self) -> bool {
        false
    }
}

/// The scGPT tokenizer bound to the genes of a matrix.
struct ScgptJob {
    tokenizer: Box<ScgptTokenizer>,
    stats: ScgptTokenizeStats,
    info: TokenizerInfo,
}

impl ScgptJob {
    fn new(
        config: &Config,
        vocab: ScgptVocab,
        model_args: &ScgptArgs,
        matrix: &CountMatrix,
    ) -> Result<Self, PipelineError> {
        let dir = vocab_dir(config)?;
        let mut options = ScgptTokenizerOptions::from_args(model_args);
        options.cls_value = config.cls_value;
        options.seed = config.seed;
        if let Some(n) = config.max_len {
            options.max_seq_len = n;
        }
        let tokenizer = Box::new(ScgptTokenizer::new(vocab, options)?);
        // The gene matching of the whole matrix (and its refusals), from a run over no cell.
        let stats = tokenizer
            .tokenize_with_offset(&matrix.slice_rows(0..0), 0)
            .map_err(step(format!("tokenizing {}", config.input.display())))?
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
                    hash_of(&path).map_err(step(format!("hashing {}", path.display())))?,
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
        Ok(ScgptJob {
            info: ("scgpt", "whole-human".to_string(), options, dictionaries),
            tokenizer,
            stats,
        })
    }
}

impl Tokenizer for ScgptJob {
    fn tokenize(&self, block: &CellBlock<'_>) -> Result<TokenChunk, PipelineError> {
        let (matrix, r) = (block.matrix.as_ref(), block.cells.clone());
        let (first, n_cells) = (block.first + r.start, r.len());
        let t = if r == (0..matrix.n_cells) {
            self.tokenizer.tokenize_with_offset(matrix, first)?
        } else {
            self.tokenizer
                .tokenize_with_offset(&matrix.slice_rows(r), first)?
        };
        Ok(TokenChunk {
            first,
            n_cells,
            kept: t.kept_cells,
            dropped: t.dropped_cells,
            tokens: t.gene_ids,
            values: Some(t.values),
            n_sampled: t.stats.n_cells_sampled,
            n_random_bins: t.stats.n_random_bins,
        })
    }

    fn genes_mapped(&self) -> usize {
        self.stats.n_genes_matched
    }

    fn info(&self) -> TokenizerInfo {
        self.info.clone()
    }

    fn name(&self) -> String {
        "scGPT".into()
    }

    fn has_values(&self) -> bool {
        true
    }

    fn log_summary(&self, n_sampled: usize, n_random_bins: usize) {
        let stats = &self.stats;
        tracing::info!(
            "{} of {} genes match the scGPT vocabulary ({} unmatched, e.g. {:?}); {n_sampled} cells \
             subsampled to {} tokens; {n_random_bins} bins drawn at repeated edges",
            stats.n_genes_matched,
            stats.n_genes,
            stats.n_genes_unmatched,
            stats.unmatched_examples.iter().take(3).collect::<Vec<_>>(),
            self.tokenizer.options().max_seq_len
        );
    }
}

/// Whether an error is the tokenizers' "no gene maps".
fn no_gene_mapped(e: &PipelineError) -> bool {
    let geneformer = |e: &TokenizeError| matches!(e, TokenizeError::NoGenesMapped { .. });
    let scgpt = |e: &ScgptTokenizeError| matches!(e, ScgptTokenizeError::NoGenesMatched { .. });
    match e {
        PipelineError::Geneformer(e) => geneformer(e),
        PipelineError::Scgpt(e) => scgpt(e),
        PipelineError::Step { source, .. } => {
            source.downcast_ref::<TokenizeError>().is_some_and(geneformer)
                || source.downcast_ref::<ScgptTokenizeError>().is_some_and(scgpt)
        }
        _ => false,
    }
}

fn build_manifest(
    config: &Config,
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
        source_path: config.input.display().to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_cells_in_order() {
        assert_eq!(chunk_ranges(5, 2), vec![0..2, 2..4, 4..5]);
        assert_eq!(chunk_ranges(4, 0), vec![0..1, 1..2, 2..3, 3..4]);
        assert!(chunk_ranges(0, 3).is_empty());
    }
}
