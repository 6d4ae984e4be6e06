//! Small helpers over the pure-Rust `rust-hdf5` crate shared by the h5ad and loom readers: opening a file
//! with errors that name it, listing children, reading string attributes, decoding any numeric or
//! string dataset (including old anndata compound datasets) and turning dense / sparse matrices into CSR.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rust_hdf5::{ByteOrder, DatatypeMessage, H5Dataset, H5File, Hdf5Error};

use super::{csr_from_triplets, CellsError, ObsColumn};

/// An open HDF5 file plus its path, for error messages.
pub(crate) struct Hdf5 {
    pub file: H5File,
    pub path: PathBuf,
}

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

impl Hdf5 {
    pub fn open(path: &Path) -> Result<Self, CellsError> {
        if let Err(source) = std::fs::metadata(path) {
            return Err(CellsError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
        match H5File::open(path) {
            Ok(file) => Ok(Hdf5 {
                file,
                path: path.to_path_buf(),
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

    pub fn dataset(&self, name: &str) -> Result<H5Dataset, CellsError> {
        self.file
            .dataset(name.trim_start_matches('/'))
            .map_err(|e| self.err(format!("cannot open dataset `{name}`: {e:?}")))
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
        let ds = self.dataset(name)?;
        let dt = ds
            .datatype()
            .map_err(|e| self.err(format!("cannot read the datatype of `{name}`: {e:?}")))?;
        let raw = ds
            .read_raw_bytes()
            .map_err(|e| self.err(format!("cannot read `{name}`: {e:?}")))?;
        decode_numeric(&dt, &raw).map_err(|e| self.err(format!("`{name}`: {e}")))
    }

    /// A numeric dataset as f32 (matrix values).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, CellsError> {
        Ok(self.read_f64(name)?.into_iter().map(|v| v as f32).collect())
    }

    /// An integer dataset as non-negative indices.
    pub fn read_index(&self, name: &str) -> Result<Vec<usize>, CellsError> {
        let v = self.read_f64(name)?;
        v.iter()
            .map(|&x| {
                if x >= 0.0 && x.fract() == 0.0 && x < 9.0e15 {
                    Ok(x as usize)
                } else {
                    Err(self.err(format!("`{name}` holds {x}, not a non-negative integer index")))
                }
            })
            .collect()
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
    pub fn read_compound(&self, name: &str) -> Result<Vec<(String, Result<ObsColumn, String>)>, CellsError> {
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
                out.push((m.name, Err("member lies outside the element".to_string())));
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
                other => Err(format!("unsupported member type {other:?}")),
            };
            out.push((m.name, col));
        }
        Ok(out)
    }
}

/// Decodes a buffer of numeric elements (any standard-width integer, IEEE f32/f64, or an enum over an
/// integer such as h5py's bool) to f64.
pub(crate) fn decode_numeric(dt: &DatatypeMessage, raw: &[u8]) -> Result<Vec<f64>, String> {
    fn chunk<const N: usize>(c: &[u8], order: &ByteOrder) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        if matches!(order, ByteOrder::BigEndian) {
            a.reverse();
        }
        a
    }
    match dt {
        DatatypeMessage::FixedPoint {
            size,
            byte_order,
            signed,
            ..
        } => {
            let w = *size as usize;
            if !matches!(w, 1 | 2 | 4 | 8) || !raw.len().is_multiple_of(w) {
                return Err(format!("unsupported integer width {w}"));
            }
            Ok(raw
                .chunks_exact(w)
                .map(|c| match (w, signed) {
                    (1, true) => c[0] as i8 as f64,
                    (1, false) => c[0] as f64,
                    (2, true) => i16::from_le_bytes(chunk(c, byte_order)) as f64,
                    (2, false) => u16::from_le_bytes(chunk(c, byte_order)) as f64,
                    (4, true) => i32::from_le_bytes(chunk(c, byte_order)) as f64,
                    (4, false) => u32::from_le_bytes(chunk(c, byte_order)) as f64,
                    (8, true) => i64::from_le_bytes(chunk(c, byte_order)) as f64,
                    _ => u64::from_le_bytes(chunk(c, byte_order)) as f64,
                })
                .collect())
        }
        DatatypeMessage::FloatingPoint { size, byte_order, .. } => match *size {
            4 if raw.len().is_multiple_of(4) => Ok(raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(chunk(c, byte_order)) as f64)
                .collect()),
            8 if raw.len().is_multiple_of(8) => Ok(raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(chunk(c, byte_order)))
                .collect()),
            w => Err(format!("unsupported float width {w}")),
        },
        DatatypeMessage::Enum { base, .. } => decode_numeric(base, raw),
        other => Err(format!("not a numeric dataset ({other:?})")),
    }
}

/// A cells × genes matrix in CSR layout.
pub(crate) struct Csr {
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
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
            indices,
            values,
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
            indices,
            values,
        }
    }

    /// From compressed-sparse arrays. `by_row` = CSR (`indptr` over rows), else CSC (transposed here).
    /// Checks every bound; sorts indices within a row, sums duplicates and drops explicit zeros.
    pub fn from_compressed(
        n_rows: usize,
        n_cols: usize,
        by_row: bool,
        indptr: &[usize],
        minor: &[usize],
        data: &[f32],
    ) -> Result<Self, String> {
        let n_major = if by_row { n_rows } else { n_cols };
        let n_minor = if by_row { n_cols } else { n_rows };
        if indptr.len() != n_major + 1 {
            return Err(format!(
                "indptr has {} entries, expected {} for a {} × {} {} matrix",
                indptr.len(),
                n_major + 1,
                n_rows,
                n_cols,
                if by_row { "CSR" } else { "CSC" }
            ));
        }
        if minor.len() != data.len() {
            return Err(format!("{} indices but {} values", minor.len(), data.len()));
        }
        if indptr[0] != 0 || indptr.windows(2).any(|w| w[0] > w[1]) || indptr[n_major] > data.len() {
            return Err("indptr is not a valid non-decreasing offset array".into());
        }
        if let Some(i) = minor.iter().find(|&&i| i >= n_minor) {
            return Err(format!("index {i} out of range ({n_minor})"));
        }
        // Triplets (row, col) from the compressed layout, then the shared CSR builder.
        let (mut rows, mut cols) = (Vec::with_capacity(data.len()), Vec::with_capacity(data.len()));
        for major in 0..n_major {
            for &m in &minor[indptr[major]..indptr[major + 1]] {
                let (r, c) = if by_row { (major, m) } else { (m, major) };
                rows.push(r as u32);
                cols.push(c as u32);
            }
        }
        let (out_ptr, indices, values) = csr_from_triplets(n_rows, &rows, &cols, &data[..indptr[n_major]]);
        Ok(Csr {
            indptr: out_ptr,
            indices,
            values,
        })
    }
}
