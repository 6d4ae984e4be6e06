//! A model folder + a token store → an activation store: the hooks captured at gene positions, written
//! resumably (`scinterp extract`; the batching and writing are `scinterp_engine::extract`). This module
//! adds what needs the model registry: loading the folder, the special tokens of the store's tokenizer,
//! the store's record of which model and cells made it, and shards by token budget.

use std::path::{Path, PathBuf};

use scinterp_engine::cuda::GpuPrecision;
use scinterp_engine::device::{forward_on, Backend};
use scinterp_engine::extract::{
    extract, shard_cells, ExtractCells, ExtractError, ExtractProgress, ShardError, ShardInfo,
};
use scinterp_engine::formats::absolute;
use scinterp_engine::store::{
    remove_store_for_overwrite, ActDtype, ModelFolderRecord, OpenedStore, StoreError, StoreManifest,
    StoreModelRecord, StoreSourceRecord, StoreWriter, TokenStoreRecord, STORE_FORMAT,
};
use scinterp_engine::EngineError;
use serde::Serialize;

use crate::forward::{parse_hooks, ForwardError};
use crate::input::{read_cells, InputError};
use crate::registry::LoadedModel;
use crate::token_store::{hash_of, TokenStore, TokenStoreError};
use crate::ModelError;

/// Tokens per packed batch by default.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 16_384;

/// What to extract, and where to.
#[derive(Clone, Debug)]
pub struct ExtractConfig {
    /// Model folder (Geneformer or scGPT).
    pub model: PathBuf,
    /// Token store made by `scinterp tokenize` for that model.
    pub input: PathBuf,
    /// Hooks: a comma list (`blocks.2.hook_resid_post,…`) or `all`.
    pub hooks: String,
    /// Activation store folder (created, or resumed when it was made with the same settings).
    pub out: PathBuf,
    pub dtype: ActDtype,
    /// Keep the positions of special tokens (`<cls>`, `<eos>`, …) too.
    pub include_special: bool,
    pub max_batch_tokens: usize,
    /// `(i, n)`: only the i-th of n contiguous cell ranges of about equal tokens (0-based).
    pub shard: Option<(usize, usize)>,
    pub backend: Backend,
    pub gpu_precision: GpuPrecision,
    /// Testing: stop after this many batches, before the last is checkpointed.
    pub stop_after_batches: Option<usize>,
    /// Delete an existing store at `out` (complete or partial) and extract afresh, instead of resuming it.
    pub overwrite: bool,
}

impl ExtractConfig {
    /// The command line's defaults: f16 values, gene positions only, 16,384 tokens per batch, the CPU.
    pub fn new(model: &Path, input: &Path, hooks: &str, out: &Path) -> Self {
        ExtractConfig {
            model: model.to_path_buf(),
            input: input.to_path_buf(),
            hooks: hooks.into(),
            out: out.to_path_buf(),
            dtype: ActDtype::F16,
            include_special: false,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            shard: None,
            backend: Backend::Cpu,
            gpu_precision: GpuPrecision::Bf16,
            stop_after_batches: None,
            overwrite: false,
        }
    }
}

/// What a run did (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct ExtractSummary {
    pub out: String,
    pub hooks: Vec<String>,
    pub n_cells: usize,
    pub n_rows: usize,
    /// Cells that were already in the store when this run started.
    pub resumed_from_cell: usize,
    pub cells_run: usize,
    pub tokens_run: usize,
    pub seconds: f64,
    pub cells_per_second: f64,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub enum ExtractOutcome {
    /// The store at `out` was already complete: nothing was run.
    AlreadyComplete {
        n_cells: usize,
        n_rows: usize,
    },
    Extracted(ExtractSummary),
}

/// What the caller hears while a run goes on.
#[derive(Clone, Copy, Debug)]
pub enum ExtractEvent {
    /// The store is open: `cells` in this run's range, of which `resumed_from` were already written.
    Started {
        cells: usize,
        resumed_from: usize,
    },
    Progress(ExtractProgress),
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractStoreError {
    #[error("--input {0}: not a token store folder; make one with `scinterp tokenize`")]
    NotATokenStore(PathBuf),
    #[error("--hooks names no hook; give a comma list such as blocks.5.hook_resid_post, or `all`")]
    NoHooks,
    #[error("{0}: no position to store (every token is special); pass --include-special")]
    NoPositions(PathBuf),
    #[error("--shard {index}/{count} over {input}: {source}")]
    Shard {
        index: usize,
        count: usize,
        input: PathBuf,
        source: ShardError,
    },
    #[error("hashing {path}: {source}")]
    Hash { path: PathBuf, source: std::io::Error },
    #[error("extracting into {out}: {source}")]
    Extract { out: PathBuf, source: ExtractError },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Hooks(#[from] ForwardError),
    #[error(transparent)]
    TokenStore(#[from] TokenStoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Extracts into the store (or finishes it).
pub fn run(
    config: &ExtractConfig,
    events: &mut dyn FnMut(ExtractEvent),
) -> Result<ExtractOutcome, ExtractStoreError> {
    if !config.input.is_dir() {
        return Err(ExtractStoreError::NotATokenStore(config.input.clone()));
    }
    let model = crate::load(&config.model, false)?;
    let cells = read_cells(&config.input, &model)?;
    let hooks = parse_hooks(&config.hooks, model.encoder.dims().n_layers)?;
    if hooks.is_empty() {
        return Err(ExtractStoreError::NoHooks);
    }
    let forward = forward_on(config.backend, model.encoder.as_ref(), config.gpu_precision)?;
    let special_ids = special_token_ids(&config.input, &model)?;
    let max_batch_tokens = config.max_batch_tokens.max(1);
    let total_cells = cells.tokens.len();
    let range = match config.shard {
        None => 0..total_cells,
        Some((index, count)) => {
            let lengths: Vec<usize> = cells.tokens.iter().map(Vec::len).collect();
            shard_cells(&lengths, max_batch_tokens, index, count).map_err(|source| {
                ExtractStoreError::Shard {
                    index,
                    count,
                    input: config.input.clone(),
                    source,
                }
            })?
        }
    };
    let job = ExtractCells {
        tokens: &cells.tokens[range.clone()],
        values: cells.values.as_deref().map(|v| &v[range.clone()]),
        special_ids: &special_ids,
        include_special: config.include_special,
    };
    let rows = job.row_index();
    if rows.is_empty() {
        return Err(ExtractStoreError::NoPositions(config.input.clone()));
    }
    let source = TokenStoreRecord {
        offsets_blake3: hash(&config.input.join("offsets.npy"))?,
        path: absolute(&config.input),
        // A shard store numbers its cells from 0; this places them for `extract merge`.
        shard: config.shard.map(|(index, count)| ShardInfo {
            count,
            end_cell: range.end,
            first_cell: range.start,
            index,
            total_cells,
        }),
        tokens_blake3: hash(&config.input.join("tokens.npy"))?,
    };
    let manifest = StoreManifest {
        format: STORE_FORMAT.into(),
        format_version: 1,
        model: StoreModelRecord::Folder(ModelFolderRecord {
            kind: model.name.to_string(),
            path: absolute(&config.model),
            weights: absolute(&model.weights),
            weights_blake3: hash(&model.weights)?,
        }),
        source: StoreSourceRecord::TokenStore(source),
        hooks: hooks.iter().map(ToString::to_string).collect(),
        dtype: config.dtype,
        d_model: model.encoder.dims().d_model,
        include_special: config.include_special,
        n_cells: range.len(),
        n_rows: rows.len(),
        max_batch_tokens,
        cells_complete: 0,
        rows_complete: 0,
        complete: false,
        scinterp_version: env!("CARGO_PKG_VERSION").into(),
    };
    // Only now, with every input checked: a refused run deletes nothing.
    if config.overwrite {
        remove_store_for_overwrite(&config.out)?;
    }
    let mut writer = match StoreWriter::open(&config.out, manifest, &rows)? {
        OpenedStore::AlreadyComplete(m) => {
            return Ok(ExtractOutcome::AlreadyComplete {
                n_cells: m.n_cells,
                n_rows: m.n_rows,
            })
        }
        OpenedStore::Writer(w) => w,
    };
    let resumed_from = writer.manifest().cells_complete;
    events(ExtractEvent::Started {
        cells: range.len(),
        resumed_from,
    });
    let stats = extract(
        model.encoder.as_ref(),
        forward.as_ref(),
        &job,
        &hooks,
        &mut writer,
        config.stop_after_batches,
        &mut |p| events(ExtractEvent::Progress(p)),
    )
    .map_err(|source| ExtractStoreError::Extract {
        out: config.out.clone(),
        source,
    })?;
    Ok(ExtractOutcome::Extracted(ExtractSummary {
        out: config.out.display().to_string(),
        hooks: hooks.iter().map(ToString::to_string).collect(),
        n_cells: range.len(),
        n_rows: rows.len(),
        resumed_from_cell: resumed_from,
        cells_run: stats.cells_run,
        tokens_run: stats.tokens_run,
        seconds: stats.seconds,
        cells_per_second: stats.cells_run as f64 / stats.seconds.max(1e-9),
    }))
}

/// Token ids whose positions are not genes, for cells tokenized as the store at `store` says (the
/// registry knows them: Geneformer V2 `<pad> <mask> <cls> <eos>`, V1 `<pad> <mask>`; scGPT `<cls>`
/// and `<pad>`).
pub fn special_token_ids(store: &Path, model: &LoadedModel) -> Result<Vec<u32>, TokenStoreError> {
    Ok(model.special_tokens(|| TokenStore::read_manifest(store))?.ids())
}

fn hash(path: &Path) -> Result<String, ExtractStoreError> {
    hash_of(path).map_err(|source| ExtractStoreError::Hash {
        path: path.to_path_buf(),
        source,
    })
}
