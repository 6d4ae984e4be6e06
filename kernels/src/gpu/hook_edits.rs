//! Hook edits applied on the GPU: the edit list and the launch wrappers of `hook_edits.cu`.
//!
//! CPU reference: `scinterp_engine::hooks::Edit::apply`, applied in sequence. [`EditList`] mirrors the four
//! kinds of `Edit` (add a direction, zero, replace, mean-ablate) without depending on the engine: push the
//! edits of one hook in the order the CPU would apply them, then [`EditList::upload`] it and launch
//! [`Kernels::hook_edits`] once for all of them.
//!
//! Encoding: one [`EditRecord`] per edited row, `(row, op, scale, offset)`, with the vectors (a direction
//! or mean once per edit, replacement values once per row) in one shared f32 pool. For the device the
//! records are sorted by row with a **stable** sort, so several records of one row stay in list order,
//! and cut into one segment per distinct row; one thread block applies one row's records in order, which
//! gives exactly the sequential CPU result (records before a row's last overwrite are dropped: they
//! cannot change it). [`EditList::apply_host`] runs that same encoding on the CPU.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use thiserror::Error;

use super::{GpuError, Kernels};

/// What one record does to its row (the numeric codes are those of `hook_edits.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum EditOp {
    /// `x[row] += scale · pool[offset .. offset + d]`.
    AddDirection = 0,
    /// `x[row] = 0`.
    Zero = 1,
    /// `x[row] = pool[offset .. offset + d]` (a row patched from another run).
    Replace = 2,
    /// `x[row] = pool[offset .. offset + d]` (a precomputed mean).
    MeanAblate = 3,
}

impl EditOp {
    /// Whether the record ignores the row's previous value.
    pub fn overwrites(self) -> bool {
        self != EditOp::AddDirection
    }
}

/// One edited row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EditRecord {
    pub row: u32,
    pub op: EditOp,
    /// Used by [`EditOp::AddDirection`] only (0 otherwise).
    pub scale: f32,
    /// Start of the record's vector in the pool (0 for [`EditOp::Zero`]).
    pub offset: u32,
}

impl EditRecord {
    /// The 16-byte device form (`uint4`: row, op, scale bits, offset).
    fn words(&self) -> [u32; 4] {
        [self.row, self.op as u32, self.scale.to_bits(), self.offset]
    }
}

/// Why an edit cannot be added to an [`EditList`]. The list is unchanged after an error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EditListError {
    #[error("row {row} is outside the tensor ({tokens} rows)")]
    RowOutOfRange { row: usize, tokens: usize },
    #[error("{what} holds {got} values, expected {want}")]
    Length {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("too large for the device encoding: {0}")]
    TooLarge(String),
}

/// The edits of one hook over a `[tokens, d]` tensor, in application order (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct EditList {
    tokens: usize,
    d: usize,
    records: Vec<EditRecord>,
    pool: Vec<f32>,
}

impl EditList {
    /// An empty list for a `[tokens, d]` tensor (both must fit the kernel's `int`).
    pub fn new(tokens: usize, d: usize) -> Result<EditList, EditListError> {
        if i32::try_from(tokens).is_err() || i32::try_from(d).is_err() {
            return Err(EditListError::TooLarge(format!("[{tokens}, {d}] exceeds i32")));
        }
        Ok(EditList {
            tokens,
            d,
            records: Vec::new(),
            pool: Vec::new(),
        })
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn d(&self) -> usize {
        self.d
    }

    /// Records in list (application) order.
    pub fn records(&self) -> &[EditRecord] {
        &self.records
    }

    /// The shared vector pool.
    pub fn pool(&self) -> &[f32] {
        &self.pool
    }

    /// Number of records (edited rows, counted once per edit).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn check_rows(&self, rows: &[usize], extra_pool: usize) -> Result<(), EditListError> {
        if let Some(&row) = rows.iter().find(|&&r| r >= self.tokens) {
            return Err(EditListError::RowOutOfRange {
                row,
                tokens: self.tokens,
            });
        }
        let records = self.records.len().checked_add(rows.len());
        // The kernel indexes records with `int`.
        if records.is_none_or(|n| i32::try_from(n).is_err()) {
            return Err(EditListError::TooLarge("more than i32::MAX records".into()));
        }
        // Every offset (the start of a pushed vector) must fit u32.
        let last_offset = (self.pool.len() + extra_pool).saturating_sub(self.d);
        if extra_pool > 0 && u32::try_from(last_offset).is_err() {
            return Err(EditListError::TooLarge(format!(
                "vector pool of {} values: offsets exceed u32",
                self.pool.len() + extra_pool
            )));
        }
        Ok(())
    }

    fn check_len(what: &'static str, got: usize, want: usize) -> Result<(), EditListError> {
        if got == want {
            Ok(())
        } else {
            Err(EditListError::Length { what, got, want })
        }
    }

    /// `x[rows[i]] += scales[i] · direction` (`Edit::AddDirection`; an SAE-feature ablation is
    /// `direction = W_dec[f]`, `scales = −a_f(row)`).
    pub fn add_direction(
        &mut self,
        rows: &[usize],
        direction: &[f32],
        scales: &[f32],
    ) -> Result<(), EditListError> {
        Self::check_len("direction", direction.len(), self.d)?;
        Self::check_len("scales", scales.len(), rows.len())?;
        self.check_rows(rows, self.d)?;
        if rows.is_empty() {
            return Ok(());
        }
        let offset = self.pool.len() as u32;
        self.pool.extend_from_slice(direction);
        self.records
            .extend(rows.iter().zip(scales).map(|(&r, &scale)| EditRecord {
                row: r as u32,
                op: EditOp::AddDirection,
                scale,
                offset,
            }));
        Ok(())
    }

    /// `x[row] = 0` (`Edit::Zero`).
    pub fn zero(&mut self, rows: &[usize]) -> Result<(), EditListError> {
        self.check_rows(rows, 0)?;
        self.records.extend(rows.iter().map(|&r| EditRecord {
            row: r as u32,
            op: EditOp::Zero,
            scale: 0.0,
            offset: 0,
        }));
        Ok(())
    }

    /// `x[rows[i]] = values[i·d .. (i + 1)·d]` (`Edit::Replace`).
    pub fn replace(&mut self, rows: &[usize], values: &[f32]) -> Result<(), EditListError> {
        let want = rows
            .len()
            .checked_mul(self.d)
            .ok_or_else(|| EditListError::TooLarge("rows × d overflows".into()))?;
        Self::check_len("values", values.len(), want)?;
        self.check_rows(rows, want)?;
        let base = self.pool.len();
        self.pool.extend_from_slice(values);
        self.records
            .extend(rows.iter().enumerate().map(|(i, &r)| EditRecord {
                row: r as u32,
                op: EditOp::Replace,
                scale: 0.0,
                offset: (base + i * self.d) as u32,
            }));
        Ok(())
    }

    /// `x[row] = mean` (`Edit::MeanAblate`).
    pub fn mean_ablate(&mut self, rows: &[usize], mean: &[f32]) -> Result<(), EditListError> {
        Self::check_len("mean", mean.len(), self.d)?;
        self.check_rows(rows, self.d)?;
        if rows.is_empty() {
            return Ok(());
        }
        let offset = self.pool.len() as u32;
        self.pool.extend_from_slice(mean);
        self.records.extend(rows.iter().map(|&r| EditRecord {
            row: r as u32,
            op: EditOp::MeanAblate,
            scale: 0.0,
            offset,
        }));
        Ok(())
    }

    /// The device encoding: records sorted stably by row, with those before each row's last overwrite
    /// dropped, and the segment starts (`segments[s] .. segments[s + 1]` are the records of one row;
    /// `segments.len()` = rows edited + 1).
    pub fn segments(&self) -> (Vec<EditRecord>, Vec<u32>) {
        let mut sorted = self.records.clone();
        sorted.sort_by_key(|r| r.row); // stable: a row's records keep their list order
        let mut kept = Vec::with_capacity(sorted.len());
        let mut segments = vec![0u32];
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i;
            while j < sorted.len() && sorted[j].row == sorted[i].row {
                j += 1;
            }
            let from = (i..j).rev().find(|&r| sorted[r].op.overwrites()).unwrap_or(i);
            kept.extend_from_slice(&sorted[from..j]);
            segments.push(kept.len() as u32);
            i = j;
        }
        (kept, segments)
    }

    /// Applies the device encoding on the CPU to a row-major `[tokens, d]` f32 tensor, with the kernel's
    /// arithmetic (`v + s·w`, rounded twice): equals `Edit::apply` in sequence bit for bit.
    pub fn apply_host(&self, x: &mut [f32]) -> Result<(), EditListError> {
        Self::check_len("x", x.len(), self.tokens * self.d)?;
        self.apply_rows(|row, f| {
            let xr = &mut x[row * self.d..(row + 1) * self.d];
            for (c, v) in xr.iter_mut().enumerate() {
                *v = f(*v, c);
            }
        });
        Ok(())
    }

    /// [`EditList::apply_host`] for bf16: each edited row is widened to f32, edited in f32 and rounded
    /// once to bf16 (round to nearest even), as `hook_edits_bf16` does.
    pub fn apply_host_bf16(&self, x: &mut [half::bf16]) -> Result<(), EditListError> {
        Self::check_len("x", x.len(), self.tokens * self.d)?;
        self.apply_rows(|row, f| {
            let xr = &mut x[row * self.d..(row + 1) * self.d];
            for (c, v) in xr.iter_mut().enumerate() {
                *v = half::bf16::from_f32(f(v.to_f32(), c));
            }
        });
        Ok(())
    }

    /// Calls `visit(row, edit)` once per segment, where `edit(v, c)` runs the row's records on the value
    /// `v` of column `c`, as the kernel does.
    fn apply_rows(&self, mut visit: impl FnMut(usize, &dyn Fn(f32, usize) -> f32)) {
        let (records, segments) = self.segments();
        for s in segments.windows(2) {
            let recs = &records[s[0] as usize..s[1] as usize];
            let overwrites = recs[0].op.overwrites();
            let edit = |v: f32, c: usize| -> f32 {
                let mut v = if overwrites { 0.0 } else { v };
                for r in recs {
                    let w = self.pool.get(r.offset as usize + c).copied().unwrap_or(0.0);
                    v = match r.op {
                        EditOp::AddDirection => v + r.scale * w,
                        EditOp::Zero => 0.0,
                        EditOp::Replace | EditOp::MeanAblate => w,
                    };
                }
                v
            };
            visit(recs[0].row as usize, &edit);
        }
    }

    /// Copies the device encoding to the GPU.
    pub fn upload(&self, stream: &Arc<CudaStream>) -> Result<DeviceEditList, GpuError> {
        let (records, segments) = self.segments();
        let mut words: Vec<u32> = records.iter().flat_map(|r| r.words()).collect();
        // Never allocate zero bytes: pad empty buffers with one unused element.
        if words.is_empty() {
            words.resize(4, 0);
        }
        let pool = if self.pool.is_empty() {
            vec![0.0f32]
        } else {
            self.pool.clone()
        };
        Ok(DeviceEditList {
            tokens: self.tokens,
            d: self.d,
            n_segments: segments.len() - 1,
            records: stream.clone_htod(&words)?,
            segments: stream.clone_htod(&segments)?,
            pool: stream.clone_htod(&pool)?,
        })
    }
}

/// An [`EditList`] on the device, ready for [`Kernels::hook_edits`]. Only `upload` builds one, so its
/// rows and offsets are valid for its `[tokens, d]`.
pub struct DeviceEditList {
    tokens: usize,
    d: usize,
    n_segments: usize,
    records: CudaSlice<u32>,
    segments: CudaSlice<u32>,
    pool: CudaSlice<f32>,
}

impl DeviceEditList {
    /// The tensor shape the list was built for.
    pub fn shape(&self) -> (usize, usize) {
        (self.tokens, self.d)
    }

    /// Distinct rows edited (thread blocks of a launch).
    pub fn rows_edited(&self) -> usize {
        self.n_segments
    }
}

impl Kernels {
    /// Applies every edit of `list` to the row-major f32 tensor `x` of shape `(tokens, d)`, in one launch.
    pub fn hook_edits(
        &self,
        stream: &Arc<CudaStream>,
        x: &mut CudaSlice<f32>,
        shape: (usize, usize),
        list: &DeviceEditList,
    ) -> Result<(), GpuError> {
        self.launch_edits("hook_edits_f32", stream, x, shape, list)
    }

    /// [`Kernels::hook_edits`] on a bf16 tensor: rows are edited in f32 and rounded once.
    pub fn hook_edits_bf16(
        &self,
        stream: &Arc<CudaStream>,
        x: &mut CudaSlice<half::bf16>,
        shape: (usize, usize),
        list: &DeviceEditList,
    ) -> Result<(), GpuError> {
        self.launch_edits("hook_edits_bf16", stream, x, shape, list)
    }

    /// One launch of `entry` (either variant: they differ only in the element type of `x`).
    fn launch_edits<T: DeviceRepr>(
        &self,
        entry: &'static str,
        stream: &Arc<CudaStream>,
        x: &mut CudaSlice<T>,
        (tokens, d): (usize, usize),
        list: &DeviceEditList,
    ) -> Result<(), GpuError> {
        let Some(cfg) = edit_launch(entry, x.len(), (tokens, d), list)? else {
            return Ok(());
        };
        let (tokens_i, d_i, n_i) = (tokens as i32, d as i32, list.n_segments as i32);
        let mut launch = stream.launch_builder(self.function(entry)?);
        launch
            .arg(x)
            .arg(&tokens_i)
            .arg(&d_i)
            .arg(&list.records)
            .arg(&list.segments)
            .arg(&n_i)
            .arg(&list.pool);
        // SAFETY: argument types and order match both kernels' signatures (T is the element type of the
        // entry's `x`); lengths checked, the list's rows and offsets validated when it was built.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}

/// Checks a launch of either variant; `None` when there is nothing to do.
fn edit_launch(
    kernel: &'static str,
    x_len: usize,
    (tokens, d): (usize, usize),
    list: &DeviceEditList,
) -> Result<Option<LaunchConfig>, GpuError> {
    let bad = |reason: String| GpuError::BadArgs { kernel, reason };
    if (tokens, d) != (list.tokens, list.d) {
        return Err(bad(format!(
            "tensor is [{tokens}, {d}], the edit list was built for [{}, {}]",
            list.tokens, list.d
        )));
    }
    let n = tokens
        .checked_mul(d)
        .ok_or_else(|| bad("tokens × d overflows".into()))?;
    super::check_len("x", x_len, n).map_err(|e| bad(e.to_string()))?;
    if list.n_segments == 0 || d == 0 {
        return Ok(None);
    }
    // One block per edited row; up to 256 threads striding over its columns.
    let threads = d.div_ceil(32).clamp(1, 8) as u32 * 32;
    Ok(Some(LaunchConfig {
        grid_dim: (list.n_segments as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }))
}
