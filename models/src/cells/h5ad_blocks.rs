//! An `.h5ad` CSR matrix read a block of cells at a time, one block ahead on a thread of its own.
//!
//! anndata writes `X/indices` and `X/data` as chunked datasets, which cannot be viewed in the file's
//! memory map; reading them whole copies hundreds of MB into fresh memory, and on the 2-core machine
//! touching that much fresh memory cost as much as the tokenizing itself. Read in blocks, memory stays
//! bounded by a few blocks (their arrays are reused) whatever the number of cells, and the reading of
//! the next block overlaps the processing of this one.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rust_hdf5::{ByteOrder, DatatypeMessage};

use super::hdf5_util::{decode_map_into, element_width, guard, Csr, Hdf5};
use super::{CellsError, CountMatrix, ObsColumn, Stored};

/// The arrays of a block of cells: gene indices and values.
type Arrays = (Vec<u32>, Vec<f32>);

/// For a CSR group `name` whose `indices` (32-bit integers) and `data` (float32) are uncompressed chunked
/// datasets in little-endian order: its checked `indptr` and the names of the two datasets, to be read in
/// blocks. `None` for any other matrix (read whole instead): a contiguous dataset is viewed in the file's
/// map, which is cheaper still, and compressed chunks are decompressed in parallel by a whole read.
pub(crate) fn csr_in_blocks(
    h5: &Hdf5,
    name: &str,
    n_rows: usize,
) -> Result<Option<(Vec<usize>, String, String)>, CellsError> {
    if !h5.is_group(name) {
        return Ok(None);
    }
    let enc = h5
        .attr_string(name, "encoding-type")
        .or_else(|| h5.attr_string(name, "h5sparse_format"));
    if !matches!(enc.as_deref(), Some("csr_matrix") | Some("csr")) {
        return Ok(None);
    }
    let (indices, data) = (format!("{name}/indices"), format!("{name}/data"));
    for (part, integer) in [(&indices, true), (&data, false)] {
        if !h5.is_dataset(part) {
            return Ok(None);
        }
        let ds = h5.dataset(part)?;
        let plain = ds.is_chunked() && ds.filters().is_ok_and(|f| f.is_empty());
        let dt = ds
            .datatype()
            .map_err(|e| h5.err(format!("cannot read the datatype of `{part}`: {e:?}")))?;
        // Indices: 32-bit integers. Values: any little-endian number (float32 as anndata writes it, or
        // the integer counts some files hold), decoded to f32 a block at a time.
        let readable = match dt {
            DatatypeMessage::FixedPoint {
                size,
                byte_order: ByteOrder::LittleEndian,
                ..
            } => size == 4 || !integer && matches!(size, 1 | 2 | 8),
            DatatypeMessage::FloatingPoint {
                size,
                byte_order: ByteOrder::LittleEndian,
                ..
            } => !integer && matches!(size, 4 | 8),
            _ => false,
        };
        if !(plain && readable) {
            return Ok(None);
        }
    }
    let indptr = h5.read_index(&format!("{name}/indptr"), u64::MAX)?;
    let nnz = h5.shape(&data)?.iter().product::<usize>();
    if indptr.len() != n_rows + 1 {
        return Err(h5.err(format!(
            "`{name}/indptr` has {} entries, expected {} for {n_rows} cells",
            indptr.len(),
            n_rows + 1
        )));
    }
    if h5.shape(&indices)?.iter().product::<usize>() != nnz {
        return Err(h5.err(format!("`{name}`: `indices` and `data` differ in length")));
    }
    let indptr: Vec<usize> = indptr.into_iter().map(|p| p as usize).collect();
    if indptr[0] != 0 || indptr.windows(2).any(|w| w[0] > w[1]) || indptr[n_rows] > nnz {
        return Err(h5.err(format!(
            "`{name}/indptr` is not a valid non-decreasing offset array"
        )));
    }
    Ok(Some((indptr, indices, data)))
}

/// A CSR matrix left in its `.h5ad` file and read a block of cells at a time ([`Self::read`]); everything
/// else (gene ids, cell names, obs columns, `indptr`) is in memory. Made by [`super::h5ad::open_h5ad`].
pub struct H5adBlocks {
    path: PathBuf,
    /// The path messages name (the gzipped file a temporary `path` was decompressed from).
    shown: PathBuf,
    h5: Hdf5,
    /// The matrix (`X`, `layers/<name>`, `raw/X`) and its two datasets.
    matrix: String,
    indices: String,
    data: String,
    indptr: Vec<usize>,
    /// The gene ids and symbols, and the obs columns, of no cell.
    head: CountMatrix,
    cell_names: Vec<String>,
    obs: BTreeMap<String, ObsColumn>,
    /// Arrays of an earlier block, given back by [`Self::recycle`] and read into again.
    spare: std::cell::RefCell<Arrays>,
    ahead: std::cell::RefCell<Option<ReadAhead>>,
}

/// The thread reading blocks ahead ([`H5adBlocks::read_ahead`]).
struct ReadAhead {
    blocks: mpsc::Receiver<(Range<usize>, Result<Arrays, CellsError>)>,
    /// Arrays given back, for the thread to read into.
    spare: mpsc::Sender<Arrays>,
}

impl H5adBlocks {
    pub(crate) fn new(
        path: &Path,
        h5: Hdf5,
        [matrix, indices, data]: [String; 3],
        indptr: Vec<usize>,
        head: CountMatrix,
        cell_names: Vec<String>,
        obs: BTreeMap<String, ObsColumn>,
    ) -> Self {
        H5adBlocks {
            path: path.to_path_buf(),
            shown: path.to_path_buf(),
            h5,
            matrix,
            indices,
            data,
            indptr,
            head,
            cell_names,
            obs,
            spare: Default::default(),
            ahead: Default::default(),
        }
    }

    pub fn n_cells(&self) -> usize {
        self.cell_names.len()
    }

    /// A matrix of no cell with the genes (ids, symbols) and the obs columns of every block.
    pub fn head(&self) -> &CountMatrix {
        &self.head
    }

    /// The head, to change the gene ids of every block read afterwards (e.g. orthologs).
    pub fn head_mut(&mut self) -> &mut CountMatrix {
        &mut self.head
    }

    pub fn cell_names(&self) -> &[String] {
        &self.cell_names
    }

    pub fn obs(&self) -> &BTreeMap<String, ObsColumn> {
        &self.obs
    }

    /// Starts reading the blocks `blocks`, in this order, on a thread of its own (through its own handle
    /// on the file), one block ahead of [`Self::read`]. Asking `read` for other cells is allowed: blocks
    /// read ahead before them are skipped, and once `read` is asked for cells behind the thread, reading
    /// goes on without it.
    /// Names `shown` instead of the file read in messages (see [`Self::shown_error`]).
    pub(crate) fn show_as(&mut self, shown: &Path) {
        self.shown = shown.to_path_buf();
    }

    /// An error of [`Self::read`] about the file the user gave.
    pub(crate) fn shown_error(&self, e: CellsError) -> CellsError {
        e.shown_as(&self.path, &self.shown)
    }

    pub fn read_ahead(&self, blocks: Vec<Range<usize>>) {
        let plan: Vec<(Range<usize>, usize, usize)> = blocks
            .into_iter()
            .filter(|r| r.start <= r.end && r.end <= self.n_cells())
            .map(|r| {
                let (a, b) = (self.indptr[r.start], self.indptr[r.end]);
                (r, a, b)
            })
            .collect();
        let (block_tx, block_rx) = mpsc::sync_channel(1);
        let (spare_tx, spare_rx) = mpsc::channel::<Arrays>();
        let (path, indices, data) = (self.path.clone(), self.indices.clone(), self.data.clone());
        std::thread::spawn(move || {
            let h5 = match guard(&path, || Hdf5::open(&path)) {
                Ok(h5) => h5,
                Err(e) => {
                    if let Some((r, _, _)) = plan.into_iter().next() {
                        let _ = block_tx.send((r, Err(e)));
                    }
                    return;
                }
            };
            for (r, a, b) in plan {
                let mut arrays = spare_rx.try_recv().unwrap_or_default();
                let read = guard(&path, || read_arrays(&h5, [&indices, &data], a..b, &mut arrays));
                let failed = read.is_err();
                // A receiver gone (the blocks dropped) ends the thread.
                if block_tx.send((r, read.map(|()| arrays))).is_err() || failed {
                    return;
                }
            }
        });
        self.ahead.replace(Some(ReadAhead {
            blocks: block_rx,
            spare: spare_tx,
        }));
    }

    /// The cells `cells` as a matrix of their own (cell 0 is `cells.start`), checked like a whole read:
    /// indices within the genes; rows sorted, duplicates summed and zeros dropped when they are not.
    pub fn read(&self, cells: Range<usize>) -> Result<CountMatrix, CellsError> {
        if cells.start > cells.end || cells.end > self.n_cells() {
            return Err(self.h5.err(format!(
                "cells {cells:?} asked of a matrix of {} cells",
                self.n_cells()
            )));
        }
        let (indices, values) = match self.take_ahead(&cells) {
            Some(read) => read?,
            None => {
                let mut arrays = self.spare.take();
                let (a, b) = (self.indptr[cells.start], self.indptr[cells.end]);
                guard(&self.path, || {
                    read_arrays(&self.h5, [&self.indices, &self.data], a..b, &mut arrays)
                })?;
                arrays
            }
        };
        let a = self.indptr[cells.start];
        let indptr = self.indptr[cells.clone()]
            .iter()
            .chain(std::iter::once(&self.indptr[cells.end]))
            .map(|&p| (p - a) as u64)
            .collect();
        let n_genes = self.head.n_genes;
        let csr = Csr::from_compressed(cells.len(), n_genes, true, indptr, indices.into(), values.into())
            .map_err(|e| {
                self.h5
                    .err(format!("sparse matrix `{}`, cells {cells:?}: {e}", self.matrix))
            })?;
        Ok(CountMatrix {
            n_cells: cells.len(),
            n_genes,
            indptr: csr.indptr,
            indices: csr.indices,
            values: csr.values,
            gene_ids: self.head.gene_ids.clone(),
            gene_symbols: self.head.gene_symbols.clone(),
            cell_names: self.cell_names[cells.clone()].to_vec(),
            obs: self
                .obs
                .iter()
                .map(|(k, col)| (k.clone(), col.slice(cells.clone())))
                .collect(),
        })
    }

    /// The arrays of `cells` from the thread reading ahead, if it has them coming; `None` (and the thread
    /// let go) when it is past them or done.
    fn take_ahead(&self, cells: &Range<usize>) -> Option<Result<Arrays, CellsError>> {
        let mut ahead = self.ahead.borrow_mut();
        let thread = ahead.as_ref()?;
        while let Ok((r, read)) = thread.blocks.recv() {
            if r == *cells {
                return Some(read);
            }
            if r.start > cells.start || read.is_err() {
                break;
            }
            // A block before the one asked for (e.g. done in an earlier run): its arrays go back.
            if let Ok(arrays) = read {
                let _ = thread.spare.send(arrays);
            }
        }
        *ahead = None;
        None
    }

    /// Takes back the arrays of a block read earlier, to read a later block into.
    pub fn recycle(&self, block: CountMatrix) {
        let (Stored::Owned(indices), Stored::Owned(values)) = (block.indices, block.values) else {
            return;
        };
        match self.ahead.borrow().as_ref() {
            Some(thread) => {
                let _ = thread.spare.send((indices, values));
            }
            None => {
                self.spare.replace((indices, values));
            }
        }
    }
}

/// Reads the non-zeros `nz` of the two datasets into `arrays` (resized to fit).
fn read_arrays(
    h5: &Hdf5,
    [indices, data]: [&str; 2],
    nz: Range<usize>,
    (index_out, value_out): &mut Arrays,
) -> Result<(), CellsError> {
    // Reused arrays are overwritten as they are; only growth is zeroed first.
    index_out.truncate(nz.len());
    index_out.resize(nz.len(), 0);
    value_out.truncate(nz.len());
    value_out.resize(nz.len(), 0.0);
    if nz.is_empty() {
        return Ok(());
    }
    h5.dataset(indices)?
        .read_slice_into(index_out, &[nz.start], &[nz.len()])
        .map_err(|e| h5.err(format!("cannot read `{indices}`: {e:?}")))?;
    let values = h5.dataset(data)?;
    let cannot = |e: rust_hdf5::Hdf5Error| h5.err(format!("cannot read `{data}`: {e:?}"));
    let dt = values.datatype().map_err(cannot)?;
    if let DatatypeMessage::FloatingPoint { size: 4, .. } = dt {
        return values
            .read_slice_into(value_out, &[nz.start], &[nz.len()])
            .map_err(cannot);
    }
    // Other numbers: the stored elements into a scratch buffer (reused by this thread, so no fresh memory
    // per block), then decoded to f32 exactly as a whole read decodes them.
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        let width = element_width(&dt).map_err(|e| h5.err(format!("`{data}`: {e}")))?;
        scratch.resize((nz.len() * width).div_ceil(8), 0);
        let bytes: &mut [u8] = &mut bytemuck::cast_slice_mut(scratch.as_mut_slice())[..nz.len() * width];
        let (at, count) = (&[nz.start][..], &[nz.len()][..]);
        match width {
            1 => values.read_slice_into(bytes, at, count),
            2 => values.read_slice_into(bytemuck::cast_slice_mut::<u8, u16>(bytes), at, count),
            4 => values.read_slice_into(bytemuck::cast_slice_mut::<u8, u32>(bytes), at, count),
            _ => values.read_slice_into(bytemuck::cast_slice_mut::<u8, u64>(bytes), at, count),
        }
        .map_err(cannot)?;
        decode_map_into(&dt, bytes, value_out, |x| x as f32).map_err(|e| h5.err(format!("`{data}`: {e}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cells::h5ad::tests::{all_obs, check_obs, dense, expected, fixture};
    use crate::cells::h5ad::{open_h5ad, read_h5ad};
    use crate::cells::CellSource;

    fn blocks(file: &str) -> H5adBlocks {
        match open_h5ad(&fixture(file), &all_obs()).unwrap() {
            CellSource::Blocks(b) => *b,
            CellSource::Memory(_) => panic!("{file} was read whole"),
        }
    }

    fn ranges(n: usize, size: usize) -> Vec<Range<usize>> {
        (0..n.div_ceil(size))
            .map(|i| i * size..((i + 1) * size).min(n))
            .collect()
    }

    /// The dense counts, cell names and obs values of blocks read one after the other.
    fn check_blocks(b: &H5adBlocks, read: impl IntoIterator<Item = Range<usize>>) {
        let e = expected();
        for r in read {
            let m = b.read(r.clone()).unwrap();
            m.validate().unwrap();
            assert_eq!(dense(&m), e.counts[r.clone()], "cells {r:?}");
            assert_eq!(m.cell_names, e.cell_names[r.clone()], "cells {r:?}");
            assert_eq!(m.gene_ids, e.gene_ids);
            for (k, column) in b.obs() {
                assert_eq!(m.obs[k], column.slice(r.clone()), "obs {k}, cells {r:?}");
            }
            b.recycle(m);
        }
    }

    #[test]
    fn blocks_equal_the_counts_whatever_their_size_and_order() {
        let e = expected();
        // Counts stored as float32, as uint16 and as float64 (decoded a block at a time).
        for file in [
            "csr_plain.h5ad",
            "csr_unsorted.h5ad",
            "csr_uint16.h5ad",
            "csr_float64.h5ad",
        ] {
            let b = blocks(file);
            assert_eq!((b.n_cells(), b.head().n_genes, b.head().n_cells), (30, 40, 0));
            assert_eq!(b.cell_names(), e.cell_names);
            assert_eq!(b.head().gene_symbols.as_ref(), Some(&e.gene_symbols));
            // The obs columns over all cells, as a whole read gives them.
            let whole = read_h5ad(&fixture(file), &all_obs()).unwrap();
            assert_eq!(b.obs(), &whole.obs);
            check_obs(&whole, &e, &["cell_type", "n_counts"]);
            for size in [1, 7, 30] {
                check_blocks(&b, ranges(30, size));
            }
            // Out of order and empty, without a thread reading ahead.
            check_blocks(&b, [20..30, 0..0, 3..4, 0..30]);
            assert!(b.read(25..31).is_err());
        }
    }

    #[test]
    fn reading_ahead_gives_the_same_blocks_and_survives_skips_and_going_back() {
        for file in ["csr_plain.h5ad", "csr_unsorted.h5ad", "csr_uint16.h5ad"] {
            let b = blocks(file);
            b.read_ahead(ranges(30, 4));
            check_blocks(&b, ranges(30, 4));
            // Skipping blocks done earlier (a resumed run), then going back behind the thread.
            b.read_ahead(ranges(30, 4));
            check_blocks(&b, [8..12, 16..20, 28..30, 0..4, 4..8]);
            assert!(b.ahead.borrow().is_none(), "the thread is let go once passed");
        }
    }

    #[test]
    fn only_uncompressed_chunked_csr_is_left_in_the_file() {
        for file in [
            "dense.h5ad",
            "csr_gzip.h5ad",
            "csr_lzf.h5ad",
            "csc.h5ad",
            "legacy_07.h5ad",
        ] {
            let source = open_h5ad(&fixture(file), &all_obs()).unwrap();
            let CellSource::Memory(m) = source else {
                panic!("{file} was left in the file");
            };
            assert_eq!(dense(&m), expected().counts, "{file}");
        }
        // legacy_07's arrays are contiguous: viewed in the file's map, not copied.
        let m = read_h5ad(&fixture("legacy_07.h5ad"), &all_obs()).unwrap();
        assert!(m.indices.is_mapped() && m.values.is_mapped());
    }

    #[test]
    fn truncated_files_error_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(fixture("csr_plain.h5ad")).unwrap();
        for cut in [100, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1000] {
            let p = dir.path().join(format!("cut_{cut}.h5ad"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let r = match open_h5ad(&p, &all_obs()) {
                Err(e) => Err(e),
                Ok(CellSource::Memory(_)) => Ok(()),
                Ok(CellSource::Blocks(b)) => {
                    b.read_ahead(ranges(30, 8));
                    ranges(30, 8).into_iter().try_for_each(|r| b.read(r).map(drop))
                }
            };
            let err = r.expect_err("a truncated file read without error");
            assert!(err.to_string().contains(&format!("cut_{cut}.h5ad")), "{err}");
        }
    }
}
