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
use crate::store::{StoreError, StoreSourceRecord, StoreWriter};

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

/// Where a shard store sits in the whole extraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
/// (Fields in alphabetical order: the order a store's manifest has always recorded them in.)
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    pub count: usize,
    /// Cells `first_cell..end_cell` of the token store (the shard's rows number them from 0).
    pub end_cell: usize,
    pub first_cell: usize,
    pub index: usize,
    pub total_cells: usize,
}

/// The cells of shard `index` of `count`: a run of whole batches of the unsharded extraction (the
/// same token-budget groups), so every batch is computed exactly as one run would compute it, and
/// the merged store equals the unsharded one byte for byte. Shards get equal numbers of batches
/// (±1); batches hold about the same number of tokens, so shards do too.
pub fn shard_cells(
    lengths: &[usize],
    max_batch_tokens: usize,
    index: usize,
    count: usize,
) -> Result<std::ops::Range<usize>, ShardError> {
    let groups = group_by_token_budget(lengths, max_batch_tokens.max(1));
    if count == 0 || index >= count {
        return Err(ShardError::Index { index, count });
    }
    if count > groups.len() {
        return Err(ShardError::TooMany {
            count,
            batches: groups.len(),
            max_batch_tokens,
        });
    }
    let (first, end) = (index * groups.len() / count, (index + 1) * groups.len() / count);
    Ok(groups[first].start..groups[end - 1].end)
}

/// A shard `index/count` that [`shard_cells`] cannot cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("shard {index}/{count}: expected i/n with 0 ≤ i < n")]
    Index { index: usize, count: usize },
    #[error(
        "{count} shards but the cells make only {batches} batches of at most {max_batch_tokens} tokens; use at \
         most {batches} shards (or a smaller --max-batch-tokens)"
    )]
    TooMany {
        count: usize,
        batches: usize,
        max_batch_tokens: usize,
    },
}

/// What [`merge_shards`] did.
#[derive(Clone, Debug, Default)]
pub struct MergeStats {
    pub n_shards: usize,
    pub n_cells: usize,
    pub n_rows: usize,
    /// Cells already in the output when this run started (a resumed merge).
    pub resumed_from_cell: usize,
    /// The output was already complete; nothing was written.
    pub already_complete: bool,
}

/// The shard description of a shard store's manifest, and its `source` without it.
fn shard_of(
    dir: &std::path::Path,
    m: &crate::store::StoreManifest,
) -> Result<(ShardInfo, StoreSourceRecord), StoreError> {
    let not_a_shard = || {
        StoreError::new(
            dir,
            "is not a shard store (its manifest has no valid source.shard); merge only stores written by \
             `scinterp extract --shard i/n`",
        )
    };
    let mut record = m.source.token_store().cloned().ok_or_else(not_a_shard)?;
    let info = record.shard.take().ok_or_else(not_a_shard)?;
    Ok((info, StoreSourceRecord::TokenStore(record)))
}

/// Concatenates complete shard stores (`scinterp extract --shard i/n`, every i of one n once, in any
/// order) into the store one unsharded run writes, byte for byte. Checks that they belong together
/// (same model, cells, hooks, dtype, positions, batch budget, version; contiguous cell ranges).
/// Resumable: the output advances shard by shard, and a rerun continues after the last whole shard;
/// `overwrite` deletes an existing output store (complete or partial) first and merges afresh.
pub fn merge_shards(
    shards: &[std::path::PathBuf],
    out: &std::path::Path,
    overwrite: bool,
) -> Result<MergeStats, StoreError> {
    use crate::store::{ActStore, OpenedStore, StoreWriter};
    let first_dir = shards
        .first()
        .ok_or_else(|| StoreError::new(out, "no shard stores given; pass --shards a,b,…"))?;
    let mut opened = Vec::with_capacity(shards.len());
    for dir in shards {
        let store = ActStore::open(dir)?;
        let (info, source) = shard_of(dir, &store.manifest)?;
        opened.push((info, source, store));
    }
    opened.sort_by_key(|(info, _, _)| info.index);
    let (info0, source0, store0) = &opened[0];
    let count = info0.count;
    if opened.len() != count || opened.iter().enumerate().any(|(i, (info, _, _))| info.index != i) {
        let got: Vec<String> = opened
            .iter()
            .map(|(i, _, _)| format!("{}/{}", i.index, i.count))
            .collect();
        return Err(StoreError::new(
            first_dir,
            format!(
                "the shards given are {} but a merge needs each of 0/{count} … {}/{count} exactly once",
                got.join(", "),
                count.saturating_sub(1)
            ),
        ));
    }
    let base = &store0.manifest;
    let mut expected_first = 0;
    for (info, source, store) in &opened {
        let m = &store.manifest;
        let mut diff = base.setting_differences(m);
        // n_rows is per shard; the cells are compared without the shard key below.
        diff.retain(|d| !d.starts_with("n_rows") && !d.starts_with("cells"));
        if source != source0 {
            diff.push(format!("cells: {source0} vs {source}"));
        }
        if m.scinterp_version != base.scinterp_version {
            diff.push(format!(
                "scinterp version: {} vs {}",
                base.scinterp_version, m.scinterp_version
            ));
        }
        if info.count != count || info.total_cells != info0.total_cells {
            diff.push(format!(
                "shard count / total cells: {count} / {} vs {} / {}",
                info0.total_cells, info.count, info.total_cells
            ));
        }
        if !diff.is_empty() {
            return Err(StoreError::new(
                &store.dir,
                format!(
                    "does not belong with {} ({}); merge shards of one extraction",
                    store0.dir.display(),
                    diff.join("; ")
                ),
            ));
        }
        if info.first_cell != expected_first || m.n_cells != info.end_cell - info.first_cell {
            return Err(StoreError::new(
                &store.dir,
                format!(
                    "holds cells {}..{} but the shard before it ends at cell {expected_first} (shards made \
                     with another --max-batch-tokens?)",
                    info.first_cell, info.end_cell
                ),
            ));
        }
        expected_first = info.end_cell;
    }
    if expected_first != info0.total_cells {
        return Err(StoreError::new(
            first_dir,
            format!("the shards cover {expected_first} of {} cells", info0.total_cells),
        ));
    }
    // The unsharded store's row index: each shard's rows with its cell offset added.
    let mut rows = Vec::new();
    let mut shard_rows = Vec::with_capacity(count);
    for (info, _, store) in &opened {
        let local = store.rows()?;
        shard_rows.push(rows.len()..rows.len() + local.len());
        rows.extend(
            local
                .into_iter()
                .map(|[c, p, t]| [c + info.first_cell as i32, p, t]),
        );
    }
    let mut manifest = base.clone();
    manifest.source = source0.clone();
    manifest.n_cells = info0.total_cells;
    // Only now, with every shard checked: a refused merge deletes nothing.
    if overwrite {
        crate::store::remove_store_for_overwrite(out)?;
    }
    let mut writer = match StoreWriter::open(out, manifest, &rows)? {
        OpenedStore::AlreadyComplete(m) => {
            return Ok(MergeStats {
                n_shards: count,
                n_cells: m.n_cells,
                n_rows: m.n_rows,
                resumed_from_cell: m.n_cells,
                already_complete: true,
            })
        }
        OpenedStore::Writer(w) => w,
    };
    let resumed_from_cell = writer.manifest().cells_complete;
    let hooks = base.hooks.clone();
    let row_bytes = base.d_model * base.dtype.size_in_bytes() * hooks.len().max(1);
    // Bounded memory: copy about 64 MiB (over all hooks) at a time.
    let chunk = ((64usize << 20) / row_bytes.max(1)).max(1);
    for ((info, _, store), range) in opened.iter().zip(&shard_rows) {
        if info.end_cell <= resumed_from_cell {
            continue;
        }
        let arrays = hooks
            .iter()
            .map(|h| store.hook(h))
            .collect::<Result<Vec<_>, _>>()?;
        let n = range.len();
        let mut start = 0;
        while start < n {
            let take = chunk.min(n - start);
            let data: Vec<Vec<u8>> = arrays.iter().map(|a| a.raw_rows(start, take).to_vec()).collect();
            writer.write_rows(range.start + start, &data)?;
            start += take;
        }
        writer.checkpoint(info.end_cell, range.end)?;
    }
    Ok(MergeStats {
        n_shards: count,
        n_cells: info0.total_cells,
        n_rows: rows.len(),
        resumed_from_cell,
        already_complete: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_that_cannot_be_cut_are_refused_with_the_reason() {
        // Each cell fills a 10-token batch on its own: four batches.
        let lengths = [10usize; 4];
        assert_eq!(shard_cells(&lengths, 10, 1, 2), Ok(2..4));
        assert_eq!(
            shard_cells(&lengths, 10, 2, 2),
            Err(ShardError::Index { index: 2, count: 2 })
        );
        let e = shard_cells(&lengths, 10, 0, 5).unwrap_err();
        assert_eq!(
            e,
            ShardError::TooMany {
                count: 5,
                batches: 4,
                max_batch_tokens: 10
            }
        );
        assert_eq!(
            e.to_string(),
            "5 shards but the cells make only 4 batches of at most 10 tokens; use at most 4 shards (or a \
             smaller --max-batch-tokens)"
        );
    }
}
