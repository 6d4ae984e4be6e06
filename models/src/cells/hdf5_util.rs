//! Small helpers over the pure-Rust `rust-hdf5` crate shared by the h5ad and loom readers: opening a file
//! with errors that name it, listing children, reading string attributes, decoding any numeric or
//! string dataset (including old anndata compound datasets) and turning dense / sparse matrices into CSR.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rust_hdf5::{ByteOrder, DatatypeMessage, H5Dataset, H5File, Hdf5Error, MappedView};

use super::{csr_from_triplets, CellsError, ObsColumn, Stored};

/// Why numeric elements (of a dataset, or of one member of a compound dataset) could not be decoded;
/// the reader adds the file and dataset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The datatype, as the HDF5 reader describes it.
    #[error("not a numeric dataset ({0})")]
    NotNumeric(String),
    #[error("unsupported numeric width {0} bytes")]
    Width(usize),
    #[error("{bytes} bytes is not a whole number of {width}-byte elements")]
    Partial { bytes: usize, width: usize },
    #[error("member lies outside the element")]
    OutsideElement,
    #[error("{elements} elements decoded into room for {room}")]
    Room { elements: usize, room: usize },
    /// A compound member's datatype, as the HDF5 reader describes it.
    #[error("unsupported member type {0}")]
    MemberType(String),
}

/// Compressed-sparse arrays that do not form a matrix of the announced shape; the reader adds the file
/// and dataset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("indptr has {got} entries, expected {want} for a {rows} × {cols} {layout} matrix")]
    IndptrLength {
        got: usize,
        want: usize,
        rows: usize,
        cols: usize,
        /// `CSR` or `CSC`.
        layout: &'static str,
    },
    #[error("{indices} indices but {values} values")]
    Lengths { indices: usize, values: usize },
    #[error("indptr is not a valid non-decreasing offset array")]
    Indptr,
    #[error("index {index} out of range ({bound})")]
    IndexOutOfRange { index: u32, bound: usize },
}

/// An open HDF5 file plus its path, for error messages.
pub(crate) struct Hdf5 {
    pub file: H5File,
    pub path: PathBuf,
    /// The file's length: what bounds the size a dataset may declare ([`Hdf5::dataset`]).
    len: u64,
}

/// How far one stored byte may expand when decoded: deflate, the filter h5py, anndata and loompy use,
/// cannot exceed about 1032:1.
const MAX_EXPANSION: u64 = 1100;

/// Declared sizes up to this are trusted whatever the file's length (a small file may legitimately
/// hold a dataset whose chunks were never written and read as fill values).
const SIZE_FLOOR: u64 = 64 << 20;

/// Runs a reader, turning a panic inside the HDF5 decoder (a corrupt or truncated file) into an error.
pub(crate) fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T, CellsError>) -> Result<T, CellsError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(CellsError::invalid(
            path,
            "the HDF5 decoder failed on this file (corrupt or truncated?); re-write it with h5py/anndata",
        )),
    }
}

/// A numeric dataset's stored bytes, borrowed from the file's memory map or owned.
enum RawBytes {
    Mapped8(MappedView<u8>),
    Mapped16(MappedView<u16>),
    Mapped32(MappedView<u32>),
    Mapped64(MappedView<u64>),
    Owned(Vec<u8>),
}

impl RawBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            RawBytes::Mapped8(v) => v,
            RawBytes::Mapped16(v) => bytemuck::cast_slice(v),
            RawBytes::Mapped32(v) => bytemuck::cast_slice(v),
            RawBytes::Mapped64(v) => bytemuck::cast_slice(v),
            RawBytes::Owned(v) => v,
        }
    }
}

impl Hdf5 {
    pub fn open(path: &Path) -> Result<Self, CellsError> {
        let len = match std::fs::metadata(path) {
            Ok(meta) => meta.len(),
            Err(source) => {
                return Err(CellsError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        match H5File::open(path) {
            Ok(file) => Ok(Hdf5 {
                file,
                path: path.to_path_buf(),
                len,
            }),
            Err(Hdf5Error::Io(source)) => Err(CellsError::Io {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) => Err(CellsError::invalid(
                path,
                format!("not a readable HDF5 file ({e:?}); is it truncated or not HDF5?"),
            )),
        }
    }

    pub fn err(&self, reason: impl Into<String>) -> CellsError {
        CellsError::invalid(&self.path, reason)
    }

    pub fn is_group(&self, name: &str) -> bool {
        self.file.root_group().group(name.trim_start_matches('/')).is_ok()
    }

    pub fn is_dataset(&self, name: &str) -> bool {
        self.file.dataset(name.trim_start_matches('/')).is_ok()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.is_group(name) || self.is_dataset(name)
    }

    /// A dataset whose declared size (and chunk size) this file could hold: rust-hdf5 allocates a
    /// dataset's or a chunk's whole decoded image from the sizes the file declares, so a corrupt size would
    /// otherwise ask for gigabytes (or abort the process) before any byte is read.
    pub fn dataset(&self, name: &str) -> Result<H5Dataset, CellsError> {
        let ds = self
            .file
            .dataset(name.trim_start_matches('/'))
            .map_err(|e| self.err(format!("cannot open dataset `{name}`: {e:?}")))?;
        let limit = self.len.saturating_mul(MAX_EXPANSION).max(SIZE_FLOOR);
        let width = ds.element_size() as u64;
        let bytes = |dims: &[usize]| {
            dims.iter()
                .try_fold(width, |acc, &d| acc.checked_mul(d as u64))
                .filter(|&b| b <= limit)
        };
        let shape = ds.shape();
        if bytes(&shape).is_none() {
            return Err(self.err(format!(
                "dataset `{name}` declares shape {shape:?} of {width}-byte elements, more than this {}-byte \
                 file can hold even compressed; the file is corrupt",
                self.len
            )));
        }
        if let Some(chunk) = ds.chunk_dims() {
            if bytes(&chunk).is_none() {
                return Err(self.err(format!(
                    "dataset `{name}` declares chunks of {chunk:?} {width}-byte elements, more than this {}-byte \
                     file can hold even compressed; the file is corrupt",
                    self.len
                )));
            }
        }
        Ok(ds)
    }

    /// Names (last path component) of the groups and datasets directly under `group`, sorted.
    pub fn children(&self, group: &str) -> Vec<String> {
        let root = self.file.root_group();
        let g = if group.is_empty() || group == "/" {
            root
        } else {
            match root.group(group.trim_start_matches('/')) {
                Ok(g) => g,
                Err(_) => return Vec::new(),
            }
        };
        let mut names: Vec<String> = g
            .group_names()
            .unwrap_or_default()
            .into_iter()
            .chain(g.dataset_names().unwrap_or_default())
            .map(|n| n.rsplit('/').next().unwrap_or(&n).to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// A string attribute of a group or dataset, if present and readable.
    pub fn attr_string(&self, object: &str, attr: &str) -> Option<String> {
        let name = object.trim_start_matches('/');
        if let Ok(g) = self.file.root_group().group(name) {
            return g.attr_string(attr).ok();
        }
        let ds = self.file.dataset(name).ok()?;
        ds.attr(attr).ok()?.read_string().ok()
    }

    pub fn is_string_dataset(&self, name: &str) -> Result<bool, CellsError> {
        let ds = self.dataset(name)?;
        let dt = ds
            .datatype()
            .map_err(|e| self.err(format!("cannot read the datatype of `{name}`: {e:?}")))?;
        Ok(matches!(
            dt,
            DatatypeMessage::VarLenString { .. } | DatatypeMessage::FixedString { .. }
        ))
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>, CellsError> {
        Ok(self.dataset(name)?.shape())
    }

    /// Any integer / float / enum (h5py bool) dataset, as f64.
    pub fn read_f64(&self, name: &str) -> Result<Vec<f64>, CellsError> {
        let (dt, raw) = self.read_numeric_raw(name)?;
        decode_numeric(&dt, raw.bytes()).map_err(|e| self.err(format!("`{name}`: {e}")))
    }

    /// A numeric dataset as f32 (matrix values), decoded straight to f32 on the rayon pool: matrices
    /// hold tens of millions of values, and an f64 intermediate would double the memory traffic.
    pub fn read_f32(&self, name: &str) -> Result<Stored<f32>, CellsError> {
        // The usual case (float32 values as anndata writes them): a view of the file when the dataset is
        // one uncompressed stretch of it, else read straight into the result.
        if let DatatypeMessage::FloatingPoint {
            size: 4,
            byte_order: ByteOrder::LittleEndian,
            ..
        } = self.datatype(name)?
        {
            return self.read_stored(name);
        }
        let (dt, raw) = self.read_numeric_raw(name)?;
        decode_map(&dt, raw.bytes(), |x| x as f32)
            .map(Stored::from)
            .map_err(|e| self.err(format!("`{name}`: {e}")))
    }

    /// A dataset whose stored elements are the host image of `T`: viewed in the file's map when it is one
    /// uncompressed stretch of the file, else read into memory.
    fn read_stored<T: rust_hdf5::H5Type>(&self, name: &str) -> Result<Stored<T>, CellsError> {
        let ds = self.dataset(name)?;
        match ds.read_mapped::<T>() {
            Ok(view) => Ok(view.into()),
            Err(e) => {
                tracing::trace!("`{name}` is read by copy, not mapped: {e}");
                ds.read_raw::<T>()
                    .map(Stored::from)
                    .map_err(|e| self.err(format!("cannot read `{name}`: {e:?}")))
            }
        }
    }

    fn datatype(&self, name: &str) -> Result<DatatypeMessage, CellsError> {
        self.dataset(name)?
            .datatype()
            .map_err(|e| self.err(format!("cannot read the datatype of `{name}`: {e:?}")))
    }

    /// An integer dataset as non-negative indices below `bound` (sparse `indices` / `indptr`).
    pub fn read_index(&self, name: &str, bound: u64) -> Result<Vec<u64>, CellsError> {
        self.read_index_as(name, bound, |x| x)
    }

    /// An integer dataset as indices below `bound` (at most 2^32), as u32 (sparse `indices`).
    pub fn read_index_u32(&self, name: &str, bound: u32) -> Result<Stored<u32>, CellsError> {
        // The usual case (int32 indices as anndata writes them): a view of the file, or a read straight
        // into the result; then the bound (and the sign) is checked in place.
        if let DatatypeMessage::FixedPoint {
            size: 4,
            byte_order: ByteOrder::LittleEndian,
            signed,
            ..
        } = self.datatype(name)?
        {
            let v: Stored<u32> = self.read_stored(name)?;
            let shown = |x: u32| if signed { i64::from(x as i32) } else { i64::from(x) };
            // Negative i32 values read as u32 are ≥ 2^31; bounds beyond that never occur in practice.
            let limit = if signed { bound.min(1 << 31) } else { bound };
            if let Some(i) = super::first_out_of_range(&v, limit as usize) {
                let i = v.iter().position(|&x| x == i).unwrap_or(0);
                return Err(self.err(format!(
                    "`{name}` holds {} at position {i}, not an index in 0..{bound}",
                    shown(v[i])
                )));
            }
            return Ok(v);
        }
        self.read_index_as(name, u64::from(bound), |x| x as u32)
            .map(Stored::from)
    }

    /// An integer dataset whose values must lie in `0..bound`, each mapped by `to` (given a value in range).
    fn read_index_as<T: Send>(
        &self,
        name: &str,
        bound: u64,
        to: impl Fn(u64) -> T + Sync + Send,
    ) -> Result<Vec<T>, CellsError> {
        let (dt, raw) = self.read_numeric_raw(name)?;
        let bytes = raw.bytes();
        let DatatypeMessage::FixedPoint {
            size,
            byte_order,
            signed,
            ..
        } = &dt
        else {
            return Err(self.err(format!("`{name}` is not an integer dataset ({dt:?})")));
        };
        let (w, signed) = (*size as usize, *signed);
        let big = matches!(byte_order, ByteOrder::BigEndian);
        if !matches!(w, 1 | 2 | 4 | 8) {
            return Err(self.err(format!("`{name}`: unsupported integer width {w} bytes")));
        }
        if !bytes.len().is_multiple_of(w) {
            return Err(self.err(format!(
                "`{name}`: {} bytes is not a whole number of {w}-byte elements",
                bytes.len()
            )));
        }
        let converted = match w {
            1 => index_pass::<1, T>(bytes, big, signed, bound, &to),
            2 => index_pass::<2, T>(bytes, big, signed, bound, &to),
            4 => index_pass::<4, T>(bytes, big, signed, bound, &to),
            _ => index_pass::<8, T>(bytes, big, signed, bound, &to),
        };
        converted.map_err(|(i, v)| {
            self.err(format!(
                "`{name}` holds {v} at position {i}, not an index in 0..{bound}"
            ))
        })
    }

    /// The stored bytes of a numeric dataset: a view into the file's memory map when the dataset is one
    /// uncompressed, contiguous stretch of the file in host byte order (no read, no copy), else a copy
    /// read (and decompressed) by rust-hdf5.
    fn read_numeric_raw(&self, name: &str) -> Result<(DatatypeMessage, RawBytes), CellsError> {
        let ds = self.dataset(name)?;
        let dt = ds
            .datatype()
            .map_err(|e| self.err(format!("cannot read the datatype of `{name}`: {e:?}")))?;
        let mapped = match dt.element_size() {
            1 => ds.read_mapped::<u8>().map(RawBytes::Mapped8),
            2 => ds.read_mapped::<u16>().map(RawBytes::Mapped16),
            4 => ds.read_mapped::<u32>().map(RawBytes::Mapped32),
            8 => ds.read_mapped::<u64>().map(RawBytes::Mapped64),
            w => Err(Hdf5Error::InvalidState(format!("{w}-byte elements"))),
        };
        match mapped {
            Ok(m) => return Ok((dt, m)),
            Err(e) => tracing::trace!("`{name}` is read by copy, not mapped: {e}"),
        }
        let raw = ds
            .read_raw_bytes()
            .map_err(|e| self.err(format!("cannot read `{name}`: {e:?}")))?;
        Ok((dt, RawBytes::Owned(raw)))
    }

    /// A string dataset (variable-length or fixed-length, UTF-8 or ASCII).
    pub fn read_strings(&self, name: &str) -> Result<Vec<String>, CellsError> {
        self.dataset(name)?
            .read_strings_lossy()
            .map_err(|e| self.err(format!("cannot read strings from `{name}`: {e:?}")))
    }

    /// A 1-D dataset as an obs-like column: strings → Text, numbers → Number.
    pub fn read_column(&self, name: &str) -> Result<ObsColumn, CellsError> {
        if self.is_string_dataset(name)? {
            Ok(ObsColumn::Text(self.read_strings(name)?))
        } else {
            Ok(ObsColumn::Number(self.read_f64(name)?))
        }
    }

    /// A 1-D compound dataset (pre-0.7 anndata obs/var): each member as a column, in member order.
    /// Members this reader cannot decode (e.g. variable-length strings inside a compound) are `Err`.
    #[allow(clippy::type_complexity)]
    pub fn read_compound(
        &self,
        name: &str,
    ) -> Result<Vec<(String, Result<ObsColumn, DecodeError>)>, CellsError> {
        let ds = self.dataset(name)?;
        let dt = ds
            .datatype()
            .map_err(|e| self.err(format!("cannot read the datatype of `{name}`: {e:?}")))?;
        let DatatypeMessage::Compound { size, members } = dt else {
            return Err(self.err(format!(
                "`{name}` is a dataset but not a compound (table) dataset"
            )));
        };
        let raw = ds
            .read_raw_bytes()
            .map_err(|e| self.err(format!("cannot read `{name}`: {e:?}")))?;
        let size = size as usize;
        if size == 0 || raw.len() % size != 0 {
            return Err(self.err(format!(
                "`{name}`: compound element size does not divide the data"
            )));
        }
        let n = raw.len() / size;
        let mut out = Vec::new();
        for m in members {
            let off = m.offset as usize;
            let width = m.datatype.element_size() as usize;
            if off + width > size {
                out.push((m.name, Err(DecodeError::OutsideElement)));
                continue;
            }
            let col = match &m.datatype {
                DatatypeMessage::FixedString { .. } => Ok(ObsColumn::Text(
                    (0..n)
                        .map(|i| {
                            let b = &raw[i * size + off..i * size + off + width];
                            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                            String::from_utf8_lossy(&b[..end]).trim_end().to_string()
                        })
                        .collect(),
                )),
                dt @ (DatatypeMessage::FixedPoint { .. }
                | DatatypeMessage::FloatingPoint { .. }
                | DatatypeMessage::Enum { .. }) => {
                    let mut bytes = Vec::with_capacity(n * width);
                    for i in 0..n {
                        bytes.extend_from_slice(&raw[i * size + off..i * size + off + width]);
                    }
                    decode_numeric(dt, &bytes).map(ObsColumn::Number)
                }
                other => Err(DecodeError::MemberType(format!("{other:?}"))),
            };
            out.push((m.name, col));
        }
        Ok(out)
    }
}

/// One integer element of width `W` as i128 (exact for every width and sign).
#[inline(always)]
fn int_value<const W: usize>(c: &[u8], big: bool, signed: bool) -> i128 {
    let mut a = [0u8; 8];
    if big {
        for (d, s) in a.iter_mut().zip(c[..W].iter().rev()) {
            *d = *s;
        }
    } else {
        a[..W].copy_from_slice(&c[..W]);
    }
    let u = u64::from_le_bytes(a);
    if !signed {
        i128::from(u)
    } else if W == 8 {
        i128::from(u as i64)
    } else if (u >> (8 * W - 1)) & 1 == 1 {
        i128::from(u) - (1i128 << (8 * W))
    } else {
        i128::from(u)
    }
}

/// Converts integer elements of width `W` in one parallel pass, each mapped by `to` when it lies in
/// `0..bound`; on failure, the position and value of the first element out of range.
fn index_pass<const W: usize, T: Send>(
    bytes: &[u8],
    big: bool,
    signed: bool,
    bound: u64,
    to: &(impl Fn(u64) -> T + Sync + Send),
) -> Result<Vec<T>, (usize, i128)> {
    let in_range = |v: i128| v >= 0 && v < i128::from(bound);
    let bad = std::sync::atomic::AtomicBool::new(false);
    let out: Vec<T> = bytes
        .par_chunks_exact(W)
        .with_min_len(1 << 16)
        .map(|c| {
            let v = int_value::<W>(c, big, signed);
            if !in_range(v) {
                bad.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            to(v.clamp(0, i128::from(u64::MAX)) as u64)
        })
        .collect();
    if bad.into_inner() {
        let first = bytes
            .chunks_exact(W)
            .map(|c| int_value::<W>(c, big, signed))
            .enumerate()
            .find(|&(_, v)| !in_range(v))
            .unwrap_or((0, 0));
        return Err(first);
    }
    Ok(out)
}

/// Decodes a buffer of numeric elements (any standard-width integer, IEEE f32/f64, or an enum over an
/// integer such as h5py's bool) to f64.
pub(crate) fn decode_numeric(dt: &DatatypeMessage, raw: &[u8]) -> Result<Vec<f64>, DecodeError> {
    decode_map(dt, raw, |x| x)
}

/// Decodes numeric elements and maps each one (through an exact f64) to `T`, in parallel.
pub(crate) fn decode_map<T: Send + Default + Clone>(
    dt: &DatatypeMessage,
    raw: &[u8],
    map: impl Fn(f64) -> T + Sync + Send,
) -> Result<Vec<T>, DecodeError> {
    let w = element_width(dt)?;
    let mut out = vec![T::default(); raw.len() / w.max(1)];
    decode_map_into(dt, raw, &mut out, map)?;
    Ok(out)
}

/// The byte width of a numeric datatype's elements.
pub(crate) fn element_width(dt: &DatatypeMessage) -> Result<usize, DecodeError> {
    match dt {
        DatatypeMessage::FixedPoint { size, .. } | DatatypeMessage::FloatingPoint { size, .. } => {
            Ok(*size as usize)
        }
        DatatypeMessage::Enum { base, .. } => element_width(base),
        other => Err(DecodeError::NotNumeric(format!("{other:?}"))),
    }
}

/// [`decode_map`] into `out` (one element per stored element), in parallel.
pub(crate) fn decode_map_into<T: Send>(
    dt: &DatatypeMessage,
    raw: &[u8],
    out: &mut [T],
    map: impl Fn(f64) -> T + Sync + Send,
) -> Result<(), DecodeError> {
    fn chunk<const N: usize>(c: &[u8], big_endian: bool) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        if big_endian {
            a.reverse();
        }
        a
    }
    let (w, kind, big) = match dt {
        DatatypeMessage::FixedPoint {
            size,
            byte_order,
            signed,
            ..
        } => (
            *size as usize,
            if *signed { 'i' } else { 'u' },
            matches!(byte_order, ByteOrder::BigEndian),
        ),
        DatatypeMessage::FloatingPoint { size, byte_order, .. } => {
            (*size as usize, 'f', matches!(byte_order, ByteOrder::BigEndian))
        }
        DatatypeMessage::Enum { base, .. } => return decode_map_into(base, raw, out, map),
        other => return Err(DecodeError::NotNumeric(format!("{other:?}"))),
    };
    let supported = match kind {
        'f' => matches!(w, 4 | 8),
        _ => matches!(w, 1 | 2 | 4 | 8),
    };
    if !supported {
        return Err(DecodeError::Width(w));
    }
    if !raw.len().is_multiple_of(w) {
        return Err(DecodeError::Partial {
            bytes: raw.len(),
            width: w,
        });
    }
    let decode = |c: &[u8]| -> f64 {
        match (kind, w) {
            ('i', 1) => c[0] as i8 as f64,
            ('u', 1) => c[0] as f64,
            ('i', 2) => i16::from_le_bytes(chunk(c, big)) as f64,
            ('u', 2) => u16::from_le_bytes(chunk(c, big)) as f64,
            ('i', 4) => i32::from_le_bytes(chunk(c, big)) as f64,
            ('u', 4) => u32::from_le_bytes(chunk(c, big)) as f64,
            ('i', 8) => i64::from_le_bytes(chunk(c, big)) as f64,
            ('u', 8) => u64::from_le_bytes(chunk(c, big)) as f64,
            ('f', 4) => f32::from_le_bytes(chunk(c, big)) as f64,
            _ => f64::from_le_bytes(chunk(c, big)),
        }
    };
    if raw.len() / w != out.len() {
        return Err(DecodeError::Room {
            elements: raw.len() / w,
            room: out.len(),
        });
    }
    raw.par_chunks_exact(w)
        .zip(out.par_iter_mut())
        .with_min_len(1 << 14)
        .for_each(|(c, o)| *o = map(decode(c)));
    Ok(())
}

/// A cells × genes matrix in CSR layout.
pub(crate) struct Csr {
    pub indptr: Vec<usize>,
    pub indices: Stored<u32>,
    pub values: Stored<f32>,
}

impl Csr {
    /// From a row-major dense buffer, dropping zeros.
    pub fn from_dense(n_rows: usize, n_cols: usize, data: &[f32]) -> Self {
        let mut indptr = Vec::with_capacity(n_rows + 1);
        let (mut indices, mut values) = (Vec::new(), Vec::new());
        indptr.push(0);
        for r in 0..n_rows {
            for (c, &v) in data[r * n_cols..(r + 1) * n_cols].iter().enumerate() {
                if v != 0.0 {
                    indices.push(c as u32);
                    values.push(v);
                }
            }
            indptr.push(indices.len());
        }
        Csr {
            indptr,
            indices: indices.into(),
            values: values.into(),
        }
    }

    /// From a column-major dense buffer (loom's genes × cells `/matrix` read row-major is exactly the
    /// column-major layout of cells × genes), dropping zeros.
    pub fn from_dense_transposed(n_rows: usize, n_cols: usize, data: &[f32]) -> Self {
        let mut indptr = Vec::with_capacity(n_rows + 1);
        let (mut indices, mut values) = (Vec::new(), Vec::new());
        indptr.push(0);
        for r in 0..n_rows {
            for c in 0..n_cols {
                let v = data[c * n_rows + r];
                if v != 0.0 {
                    indices.push(c as u32);
                    values.push(v);
                }
            }
            indptr.push(indices.len());
        }
        Csr {
            indptr,
            indices: indices.into(),
            values: values.into(),
        }
    }

    /// From compressed-sparse arrays. `by_row` = CSR (`indptr` over rows), else CSC (transposed here).
    /// Checks every bound; sorts indices within a row, sums duplicates and drops explicit zeros.
    pub fn from_compressed(
        n_rows: usize,
        n_cols: usize,
        by_row: bool,
        indptr: Vec<u64>,
        minor: Stored<u32>,
        data: Stored<f32>,
    ) -> Result<Self, CsrError> {
        let n_major = if by_row { n_rows } else { n_cols };
        let n_minor = if by_row { n_cols } else { n_rows };
        if indptr.len() != n_major + 1 {
            return Err(CsrError::IndptrLength {
                got: indptr.len(),
                want: n_major + 1,
                rows: n_rows,
                cols: n_cols,
                layout: if by_row { "CSR" } else { "CSC" },
            });
        }
        if minor.len() != data.len() {
            return Err(CsrError::Lengths {
                indices: minor.len(),
                values: data.len(),
            });
        }
        let indptr: Vec<usize> = indptr.into_iter().map(|p| p as usize).collect();
        if indptr[0] != 0 || indptr.windows(2).any(|w| w[0] > w[1]) || indptr[n_major] > data.len() {
            return Err(CsrError::Indptr);
        }
        if let Some(i) = super::first_out_of_range(&minor, n_minor) {
            return Err(CsrError::IndexOutOfRange {
                index: i,
                bound: n_minor,
            });
        }
        // What anndata writes for CSR is usually canonical already (columns strictly ascending within
        // each row, no stored zeros): then the arrays are the result as they are.
        let canonical = by_row
            && indptr[n_major] == data.len()
            && (0..n_major).into_par_iter().with_min_len(64).all(|r| {
                let (cols, vals) = (&minor[indptr[r]..indptr[r + 1]], &data[indptr[r]..indptr[r + 1]]);
                // Folds without early exit, so that the loops vectorise.
                let ascending = cols.windows(2).fold(true, |ok, w| ok & (w[0] < w[1]));
                ascending & vals.iter().fold(true, |ok, &v| ok & (v != 0.0))
            });
        tracing::debug!(
            "{} matrix is {}canonical",
            if by_row { "CSR" } else { "CSC" },
            if canonical { "" } else { "not " }
        );
        if canonical {
            return Ok(Csr {
                indptr,
                indices: minor,
                values: data,
            });
        }
        // Triplets (row, col) from the compressed layout, then the shared CSR builder.
        let (mut rows, mut cols) = (Vec::with_capacity(data.len()), Vec::with_capacity(data.len()));
        for major in 0..n_major {
            for &m in &minor[indptr[major]..indptr[major + 1]] {
                let (r, c) = if by_row {
                    (major, m)
                } else {
                    (m as usize, major as u32)
                };
                rows.push(r as u32);
                cols.push(c);
            }
        }
        let (out_ptr, indices, values) = csr_from_triplets(n_rows, &rows, &cols, &data[..indptr[n_major]]);
        Ok(Csr {
            indptr: out_ptr,
            indices: indices.into(),
            values: values.into(),
        })
    }
}
