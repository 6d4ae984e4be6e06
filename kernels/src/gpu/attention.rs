//! Launch wrappers of `attention_varlen.cu`: bidirectional multi-head self-attention over packed
//! variable-length cells, head_dim 64 (CPU reference: `scinterp_engine::cpu::attention_varlen`).
//!
//! Offsets: the caller gives the cell offsets once per batch as a host `&[usize]` to
//! [`Kernels::attention_batch`], which checks them and uploads, for each kernel's query tile, the
//! per-block work list `{first query row, cell start, cell end}` (3 `i32` per block; blocks never cross a
//! cell). The returned [`VarlenBatch`] is reused by every layer of a forward pass, so the launches upload
//! nothing. The raw offsets are not needed on the device.
//!
//! bf16 buffers are `CudaSlice<half::bf16>`.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use super::{ArgError, GpuError, Kernels};

/// The only head size the kernels support.
pub const ATTENTION_HEAD_DIM: usize = 64;
/// Query rows per block of `attention_varlen_bf16` (`BF_BR` in the source).
pub const BF16_QUERY_TILE: usize = 64;
/// Query rows per block of `attention_varlen_f32` (`F_BR` in the source).
pub const F32_QUERY_TILE: usize = 32;
/// Keys per shared-memory tile of both kernels (`BF_BC`, `F_BC`).
pub const KEY_TILE: usize = 64;
/// Threads per block of both kernels.
const THREADS: u32 = 128;

/// The per-block work list for query tiles of `query_tile` rows: `{q0, cell start, cell end}` per block,
/// empty cells skipped. A block's work grows with its cell's length, so the longest cells come first
/// (longest-processing-time order: short cells fill the tail of the grid instead of a long cell's blocks
/// starting last); cells of equal length keep their order. No block's result depends on the order.
/// `offsets` must start at 0, never decrease, and end at most at `i32::MAX`; the last offset is the
/// token count.
pub fn varlen_tiles(offsets: &[usize], query_tile: usize) -> Result<Vec<i32>, ArgError> {
    if query_tile == 0 {
        return Err(ArgError::EmptyQueryTile);
    }
    check_offsets(offsets)?;
    let mut cells: Vec<(usize, usize)> = offsets.windows(2).map(|w| (w[0], w[1])).collect();
    cells.sort_by_key(|&(start, end)| std::cmp::Reverse(end - start));
    let mut tiles = Vec::new();
    for (start, end) in cells {
        let mut q = start;
        while q < end {
            // check_offsets bounds every offset by i32::MAX.
            tiles.extend([q as i32, start as i32, end as i32]);
            q = q.saturating_add(query_tile);
        }
    }
    Ok(tiles)
}

/// Offsets start at 0, never decrease and fit an `i32`.
fn check_offsets(offsets: &[usize]) -> Result<(), ArgError> {
    match offsets.first() {
        None => return Err(ArgError::NoOffsets),
        Some(&first) if first != 0 => return Err(ArgError::OffsetsStart(first)),
        _ => {}
    }
    if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(ArgError::OffsetsDecrease {
            cell: i,
            from: offsets[i],
            to: offsets[i + 1],
        });
    }
    let last = *offsets.last().unwrap_or(&0);
    if last > i32::MAX as usize {
        return Err(ArgError::TooManyTokens(last));
    }
    Ok(())
}

/// One packed batch's cell layout on the device: the work lists of both kernels. Build it with
/// [`Kernels::attention_batch`] once per batch and reuse it for every layer.
pub struct VarlenBatch {
    tokens: usize,
    n_cells: usize,
    bf16_tiles: Option<CudaSlice<i32>>,
    bf16_blocks: usize,
    f32_tiles: Option<CudaSlice<i32>>,
    f32_blocks: usize,
}

impl VarlenBatch {
    /// Tokens of the batch (the last offset).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Cells of the batch (offsets.len() − 1).
    pub fn n_cells(&self) -> usize {
        self.n_cells
    }
}

/// Element type of an attention launch.
#[derive(Clone, Copy)]
enum Precision {
    Bf16,
    F32,
}

impl Kernels {
    /// Check `offsets` (n_cells + 1 values: 0, then non-decreasing; the last is the token count) and
    /// upload the per-block work lists of both attention kernels.
    pub fn attention_batch(
        &self,
        stream: &Arc<CudaStream>,
        offsets: &[usize],
    ) -> Result<VarlenBatch, GpuError> {
        let bad = |reason: String| GpuError::BadArgs {
            kernel: "attention_varlen",
            reason,
        };
        let bf16 = varlen_tiles(offsets, BF16_QUERY_TILE).map_err(|e| bad(e.to_string()))?;
        let f32 = varlen_tiles(offsets, F32_QUERY_TILE).map_err(|e| bad(e.to_string()))?;
        let upload = |tiles: &[i32]| -> Result<Option<CudaSlice<i32>>, GpuError> {
            if tiles.is_empty() {
                Ok(None)
            } else {
                Ok(Some(stream.clone_htod(tiles)?))
            }
        };
        Ok(VarlenBatch {
            tokens: *offsets.last().unwrap_or(&0),
            n_cells: offsets.len() - 1,
            bf16_tiles: upload(&bf16)?,
            bf16_blocks: bf16.len() / 3,
            f32_tiles: upload(&f32)?,
            f32_blocks: f32.len() / 3,
        })
    }

    /// `ctx = attention(qkv)` for every cell of `batch`, bf16 in and out, f32
    /// softmax and accumulation, tensor cores. `qkv`: `[tokens, 3·H]`, columns `[q | k | v]`, head `h` at
    /// columns `h·64..` of each part; `ctx`: `[tokens, H]`, H = n_heads · 64. `key_mask`: one byte per
    /// token, 0 = this key is left out (a query with every key left out gets zeros); `None` keeps all.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_varlen_bf16(
        &self,
        stream: &Arc<CudaStream>,
        qkv: &CudaSlice<half::bf16>,
        batch: &VarlenBatch,
        key_mask: Option<&CudaSlice<u8>>,
        ctx: &mut CudaSlice<half::bf16>,
        (n_heads, head_dim): (usize, usize),
        scale: f32,
    ) -> Result<(), GpuError> {
        self.launch_attention(
            Precision::Bf16,
            stream,
            qkv,
            batch,
            key_mask,
            ctx,
            (n_heads, head_dim),
            scale,
        )
    }

    /// As [`Kernels::attention_varlen_bf16`], in f32 throughout (SIMT, no tensor cores): the parity
    /// kernel for comparisons with the CPU reference.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_varlen_f32(
        &self,
        stream: &Arc<CudaStream>,
        qkv: &CudaSlice<f32>,
        batch: &VarlenBatch,
        key_mask: Option<&CudaSlice<u8>>,
        ctx: &mut CudaSlice<f32>,
        (n_heads, head_dim): (usize, usize),
        scale: f32,
    ) -> Result<(), GpuError> {
        self.launch_attention(
            Precision::F32,
            stream,
            qkv,
            batch,
            key_mask,
            ctx,
            (n_heads, head_dim),
            scale,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_attention<T: DeviceRepr>(
        &self,
        precision: Precision,
        stream: &Arc<CudaStream>,
        qkv: &CudaSlice<T>,
        batch: &VarlenBatch,
        key_mask: Option<&CudaSlice<u8>>,
        ctx: &mut CudaSlice<T>,
        (n_heads, head_dim): (usize, usize),
        scale: f32,
    ) -> Result<(), GpuError> {
        let (entry, tiles, blocks) = match precision {
            Precision::Bf16 => ("attention_varlen_bf16", &batch.bf16_tiles, batch.bf16_blocks),
            Precision::F32 => ("attention_varlen_f32", &batch.f32_tiles, batch.f32_blocks),
        };
        let bad = |reason: String| GpuError::BadArgs {
            kernel: entry,
            reason,
        };
        if head_dim != ATTENTION_HEAD_DIM {
            return Err(bad(format!(
                "head_dim {head_dim}: only {ATTENTION_HEAD_DIM} is supported"
            )));
        }
        if n_heads == 0 {
            return Err(bad("0 heads".into()));
        }
        let hidden = n_heads
            .checked_mul(head_dim)
            .ok_or_else(|| bad("n_heads × head_dim overflows".into()))?;
        let tokens = batch.tokens;
        let ctx_len = tokens
            .checked_mul(hidden)
            .ok_or_else(|| bad("tokens × H overflows".into()))?;
        let qkv_len = ctx_len
            .checked_mul(3)
            .ok_or_else(|| bad("tokens × 3H overflows".into()))?;
        super::check_len("qkv", qkv.len(), qkv_len).map_err(|e| bad(e.to_string()))?;
        super::check_len("ctx", ctx.len(), ctx_len).map_err(|e| bad(e.to_string()))?;
        if let Some(mask) = key_mask {
            super::check_len("key_mask", mask.len(), tokens).map_err(|e| bad(e.to_string()))?;
        }
        let heads_i = i32::try_from(n_heads).map_err(|_| bad(format!("{n_heads} heads exceed i32")))?;
        let grid_y = u32::try_from(n_heads)
            .ok()
            .filter(|&h| h <= 65_535)
            .ok_or_else(|| bad(format!("{n_heads} heads exceed the grid's y (65,535)")))?;
        let grid_x = u32::try_from(blocks)
            .ok()
            .filter(|&b| b <= i32::MAX as u32)
            .ok_or_else(|| bad(format!("{blocks} query tiles exceed the grid's x")))?;
        let Some(tiles) = tiles.as_ref() else {
            // No token in any cell: nothing to compute.
            return Ok(());
        };
        let cfg = LaunchConfig {
            grid_dim: (grid_x, grid_y, 1),
            block_dim: (THREADS, 1, 1),
            // Static shared memory only (28 KB bf16, 33 KB f32).
            shared_mem_bytes: 0,
        };
        let null_mask: u64 = 0;
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch.arg(qkv).arg(tiles);
        match key_mask {
            Some(mask) => launch.arg(mask),
            None => launch.arg(&null_mask),
        };
        launch.arg(ctx).arg(&heads_i).arg(&scale);
        // SAFETY: argument types and order match the kernel's signature (a null `u64` for the absent
        // mask pointer); qkv, ctx and mask lengths checked above against the batch's token count, and
        // every work-list entry lies within 0..tokens (checked offsets).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_lists_cover_every_query_row_once_without_crossing_cells() {
        let offsets = [0usize, 1, 1, 8, 72, 137, 437];
        for tile in [BF16_QUERY_TILE, F32_QUERY_TILE, 1, 5] {
            let tiles = varlen_tiles(&offsets, tile).unwrap();
            let mut covered = vec![0u32; *offsets.last().unwrap()];
            for t in tiles.chunks_exact(3) {
                let (q0, start, end) = (t[0] as usize, t[1] as usize, t[2] as usize);
                assert!(offsets.windows(2).any(|w| w[0] == start && w[1] == end));
                assert!(start <= q0 && q0 < end);
                for c in &mut covered[q0..(q0 + tile).min(end)] {
                    *c += 1;
                }
            }
            assert!(covered.iter().all(|&c| c == 1), "tile {tile}");
        }
        // 64 rows: 1 + 0 + 1 + 1 + 2 + 5 blocks.
        assert_eq!(varlen_tiles(&offsets, 64).unwrap().len(), 3 * 10);
        assert_eq!(varlen_tiles(&[0], 64).unwrap(), Vec::<i32>::new());
        // Longest cell first, equal lengths in order.
        let tiles = varlen_tiles(&[0, 10, 300, 310, 320], 64).unwrap();
        let starts: Vec<i32> = tiles.chunks_exact(3).map(|t| t[1]).collect();
        assert_eq!(starts, [10, 10, 10, 10, 10, 0, 300, 310]);
    }

    #[test]
    fn bad_offsets_are_errors() {
        assert!(varlen_tiles(&[], 64).is_err());
        assert!(varlen_tiles(&[1, 4], 64).is_err());
        assert!(varlen_tiles(&[0, 5, 4], 64).is_err());
        assert!(varlen_tiles(&[0, i32::MAX as usize + 1], 64).is_err());
        assert!(varlen_tiles(&[0, 4], 0).is_err());
        assert!(varlen_tiles(&[0, 4, 4, 9], 64).is_ok());
    }

    #[test]
    fn bad_offsets_are_typed_and_say_what_is_wrong() {
        assert!(matches!(
            varlen_tiles(&[0, 5, 4], 64),
            Err(ArgError::OffsetsDecrease {
                cell: 1,
                from: 5,
                to: 4
            })
        ));
        assert_eq!(
            varlen_tiles(&[1, 4], 64).unwrap_err().to_string(),
            "offsets start at 1, not 0"
        );
        assert_eq!(
            varlen_tiles(&[0, 4], 0).unwrap_err().to_string(),
            "query tile of 0 rows"
        );
    }
}
