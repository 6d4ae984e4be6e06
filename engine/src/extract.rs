//! Extraction: batched forward passes over packed cells, writing the captured hooks at the kept
//! positions to an activation store. Batches are fixed by the token budget over the whole cell list,
//! so a resumed run starts at a batch boundary of the uninterrupted run and computes the same bytes.
//! The store is written on a second thread while the next batch computes.

use std::sync::mpsc::sync_channel;
use std::time::Instant;

use crate::batching::group_by_token_budget;
use crate::encoder::Encoder;
use crate::executor::{Forward, Start};
use crate::hooks::{HookPlan, HookPoint};
use crate::packed::PackedBatch;
use crate::store::{StoreError, StoreWriter};

/// The cells and what to keep of them.
pub struct ExtractCells<'a> {
    pub tokens: &'a [Vec<u32>],
    /// Per-token values (scGPT), same shape as `tokens`.
    pub values: Option<&'a [Vec<f32>]>,
    /// Token ids whose positions get no row unless `include_special` (`<cls>`, `<eos>`, `<pad>`).
    pub special_ids: &'a [u32],
    pub include_special: bool,
}

impl ExtractCells<'_> {
    fn keeps(&self, token: u32) -> bool {
        self.include_special || !self.special_ids.contains(&token)
    }

    /// The store's row index: (cell, position, token) for every kept position, cells in order.
    pub fn row_index(&self) -> Vec<[i32; 3]> {
        let mut rows = Vec::new();
        for (c, cell) in self.tokens.iter().enumerate() {
            for (p, &t) in cell.iter().enumerate() {
                if self.keeps(t) {
                    rows.push([c as i32, p as i32, t as i32]);
                }
            }
        }
        rows
    }
}

/// Progress after each batch.
#[derive(Clone, Copy, Debug)]
pub struct ExtractProgress {
    pub cells_done: usize,
    pub cells_total: usize,
    /// Cells done by this run (a resume starts above 0).
    pub cells_this_run: usize,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct ExtractStats {
    pub cells_run: usize,
    pub tokens_run: usize,
    pub rows_written: usize,
    pub seconds: f64,
}

/// Why extraction stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cells {first}..{last}: {source}")]
    Forward {
        first: usize,
        last: usize,
        source: crate::EngineError,
    },
    /// The caller asked to stop (`stop_after_batches`): the last batch's rows are written but not
    /// checkpointed, the state a `kill -9` between the two leaves, which a rerun resumes from.
    #[error("stopped after {batches} batches as asked: their rows are written but the last is not checkpointed; rerun to resume")]
    Stopped { batches: usize },
}

/// Runs `encoder` over the cells not yet in the store and writes their rows.
pub fn extract(
    encoder: &dyn Encoder,
    forward: &dyn Forward,
    cells: &ExtractCells,
    hooks: &[HookPoint],
    writer: &mut StoreWriter,
    stop_after_batches: Option<usize>,
    progress: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractStats, ExtractError> {
    let started = Instant::now();
    let manifest = writer.manifest().clone();
    let lengths: Vec<usize> = cells.tokens.iter().map(Vec::len).collect();
    let groups = group_by_token_budget(&lengths, manifest.max_batch_tokens);
    let resume_at = manifest.cells_complete;
    // Rows before each cell, to place every batch in the store.
    let mut first_row_of_cell = Vec::with_capacity(cells.tokens.len() + 1);
    first_row_of_cell.push(0usize);
    for cell in cells.tokens {
        let kept = cell.iter().filter(|&&t| cells.keeps(t)).count();
        first_row_of_cell.push(first_row_of_cell.last().copied().unwrap_or(0) + kept);
    }
    let plan = HookPlan::new().capture_many(hooks.iter().copied());
    let dtype = manifest.dtype;
    let mut stats = ExtractStats::default();

    std::thread::scope(|scope| -> Result<(), ExtractError> {
        // The writer thread owns the store; the channel holds one batch so compute runs ahead by one.
        let (send, receive) = sync_channel::<(usize, usize, usize, Vec<Vec<u8>>)>(1);
        let write_thread = scope.spawn(move || -> Result<(), ExtractError> {
            let mut batches = 0usize;
            for (first_row, cells_done, rows_done, data) in receive {
                writer.write_rows(first_row, &data)?;
                batches += 1;
                if stop_after_batches == Some(batches) {
                    // After the data write, before the checkpoint: what `kill -9` there leaves.
                    return Err(ExtractError::Stopped { batches });
                }
                writer.checkpoint(cells_done, rows_done)?;
            }
            Ok(())
        });

        let mut compute = || -> Result<(), ExtractError> {
            for group in groups.iter().filter(|g| g.end > resume_at) {
                let forward_error = |source| ExtractError::Forward {
                    first: group.start,
                    last: group.end,
                    source,
                };
                let mut batch =
                    PackedBatch::from_cells(&cells.tokens[group.clone()]).map_err(forward_error)?;
                if let Some(values) = cells.values {
                    let flat: Vec<f32> = values[group.clone()].iter().flatten().copied().collect();
                    batch = batch.with_values(flat).map_err(forward_error)?;
                }
                let mut out = forward
                    .run(encoder, &batch, &plan, Start::Embed, false)
                    .map_err(forward_error)?;
                let kept_rows: Vec<usize> = (0..batch.n_tokens())
                    .filter(|&r| cells.keeps(batch.tokens()[r]))
                    .collect();
                let d = encoder.dims().d_model;
                let mut data = Vec::with_capacity(hooks.len());
                for &hook in hooks {
                    let captured = out.captures.take(hook).ok_or_else(|| {
                        forward_error(crate::EngineError::InvalidStart(format!(
                            "{hook} was not captured"
                        )))
                    })?;
                    let mut rows = Vec::with_capacity(kept_rows.len() * d);
                    for &r in &kept_rows {
                        rows.extend_from_slice(captured.row(r));
                    }
                    data.push(dtype.encode(&rows));
                }
                stats.cells_run += group.len();
                stats.tokens_run += batch.n_tokens();
                stats.rows_written += kept_rows.len();
                let item = (
                    first_row_of_cell[group.start],
                    group.end,
                    first_row_of_cell[group.end],
                    data,
                );
                if send.send(item).is_err() {
                    // The writer stopped on an error; it is reported below.
                    break;
                }
                progress(ExtractProgress {
                    cells_done: group.end,
                    cells_total: cells.tokens.len(),
                    cells_this_run: stats.cells_run,
                });
            }
            Ok(())
        };
        let computed = compute();
        drop(send);
        let written = write_thread.join().unwrap_or_else(|_| {
            Err(StoreError::new(std::path::Path::new("."), "the writer thread panicked").into())
        });
        written?;
        computed
    })?;
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}
