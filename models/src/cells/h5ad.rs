//! AnnData `.h5ad` reader (a subset: the count matrix, gene ids, cell names and chosen obs columns).
//!
//! **HDF5 backend: `rust-hdf5` 0.7.9, pure Rust.** Chosen over `hdf5-metno` (bindings to libhdf5) because:
//! - no C library: nothing to `apt-get install` in CI or on users' Debian machines, no `static` cmake build;
//! - it decodes both compressions anndata writes: gzip (deflate) and **lzf** (h5py's filter 32000, which
//!   libhdf5 itself does not ship, so `hdf5-metno` would need the h5py/hdf5plugin LZF plugin installed and
//!   found through `HDF5_PLUGIN_PATH` to read `compression="lzf"` files);
//! - variable-length UTF-8 strings, fixed-length strings and compound datasets (old layout) all read;
//! - verified against `shared/data/cells/pbmc68k_reduced.h5ad` and the fixtures of
//!   `tests/reference/make_cells_fixtures.py` (dense / CSR gzip / CSR lzf / CSC / raw + layers / 0.7 layout).
//!
//! Its limits that matter here: group attributes are read as strings only (numeric `shape` /
//! `h5sparse_shape` are not needed: rows come from `indptr`/obs, columns from var), and it needs
//! rustc ≥ 1.89.
//!
//! Layouts understood:
//! - anndata ≥ 0.8: `X` dense dataset or group with `encoding-type` `csr_matrix` / `csc_matrix`;
//!   obs/var dataframe groups (`_index` attribute, string-array / numeric / `categorical` /
//!   `nullable-*` columns); `raw/X` + `raw/var`; `layers/<name>`.
//! - anndata 0.7: as above but sparse groups may only carry `h5sparse_format`, and categoricals are
//!   integer codes with the categories in `<df>/__categories/<col>`.
//! - pre-0.7 (e.g. scanpy's `pbmc68k_reduced.h5ad`): obs/var are compound datasets, categoricals are
//!   integer codes with the categories in `uns/<col>_categories`, raw lives at `raw.X` / `raw.var`.
//!
//! [`read_h5ad`] reads the whole matrix into memory (an uncompressed contiguous dataset is viewed in the
//! file's memory map instead of copied). [`open_h5ad`] leaves an uncompressed chunked CSR matrix (anndata's
//! default layout for counts) in the file and reads it a block of cells at a time ([`H5adBlocks`]): memory
//! then stays bounded by the block, whatever the number of cells.

use std::collections::BTreeMap;
use std::path::Path;

use super::h5ad_blocks::{csr_in_blocks, H5adBlocks};
use super::hdf5_util::{guard, Csr, DecodeError, Hdf5};
use super::{CellSource, CellsError, CountMatrix, ObsColumn};

/// What to read from an h5ad file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct H5adOptions {
    /// Read `layers/<name>` instead of `X`.
    pub layer: Option<String>,
    /// Read `raw/X` with the genes of `raw/var`.
    pub use_raw: bool,
    /// The var column holding the gene ids; `None` = the var index.
    pub gene_id_column: Option<String>,
    /// obs columns to carry into [`CountMatrix::obs`]; empty = none. A missing one is an error.
    pub obs_columns: Vec<String>,
    /// obs columns carried when the file has them and skipped otherwise (e.g. `n_counts`).
    pub optional_obs_columns: Vec<String>,
}

/// Var columns that usually hold gene symbols, in order of preference.
const SYMBOL_COLUMNS: &[&str] = &[
    "gene_symbols",
    "gene_symbol",
    "feature_name",
    "gene_name",
    "gene_names",
    "symbol",
];

/// Named text columns of a dataframe; `None` names the index.
pub type VarColumns = Vec<(Option<String>, Vec<String>)>;

/// The var index (`None`) and every text column of the var dataframe of the matrix `options` choose
/// (`var`, or `raw/var` with `use_raw`), for finding the column that holds usable gene ids.
pub fn read_var_text_columns(path: &Path, options: &H5adOptions) -> Result<VarColumns, CellsError> {
    guard(path, || {
        let h5 = Hdf5::open(path)?;
        let var_path = if options.use_raw {
            if h5.exists("raw/var") {
                "raw/var"
            } else {
                "raw.var"
            }
        } else {
            "var"
        };
        let var = Frame::open(&h5, var_path)?;
        let mut out = vec![(None, var.index.clone())];
        for c in &var.columns {
            if let Ok(ObsColumn::Text(v)) = var.column(&h5, c) {
                out.push((Some(c.clone()), v));
            }
        }
        Ok(out)
    })
}

/// Reads an `.h5ad` file into a [`CountMatrix`].
pub fn read_h5ad(path: &Path, options: &H5adOptions) -> Result<CountMatrix, CellsError> {
    match guard(path, || read_inner(path, options, false))? {
        CellSource::Memory(m) => Ok(m),
        CellSource::Blocks(_) => unreachable!("blocks were not asked for"),
    }
}

/// Opens an `.h5ad` file for reading its cells in order: an uncompressed chunked CSR matrix stays in the
/// file ([`CellSource::Blocks`]); any other matrix is read whole.
pub fn open_h5ad(path: &Path, options: &H5adOptions) -> Result<CellSource, CellsError> {
    guard(path, || read_inner(path, options, true))
}

fn read_inner(path: &Path, options: &H5adOptions, blocks: bool) -> Result<CellSource, CellsError> {
    let h5 = Hdf5::open(path)?;
    if !h5.exists("X") && !h5.exists("obs") {
        return Err(h5.err("no `X` and no `obs`: this HDF5 file is not an AnnData .h5ad file"));
    }
    let (matrix, var_path) = match (&options.layer, options.use_raw) {
        (Some(_), true) => {
            return Err(h5.err("a layer and raw were both asked for; choose one (--layer or --use-raw)"))
        }
        (Some(layer), false) => {
            let p = format!("layers/{layer}");
            if !h5.exists(&p) {
                let have = h5.children("layers");
                return Err(h5.err(format!(
                    "no layer `{layer}`; available layers: [{}]. Pass one of them with --layer, or drop \
                     --layer to read X",
                    have.join(", ")
                )));
            }
            (p, "var".to_string())
        }
        (None, true) => {
            let (x, var) = if h5.exists("raw/X") {
                ("raw/X", "raw/var")
            } else if h5.exists("raw.X") {
                ("raw.X", "raw.var")
            } else {
                return Err(h5.err("no `raw/X` (nor old-style `raw.X`) in this file; drop --use-raw"));
            };
            (x.to_string(), var.to_string())
        }
        (None, false) => ("X".to_string(), "var".to_string()),
    };

    let started = std::time::Instant::now();
    let obs = Frame::open(&h5, "obs")?;
    let var = Frame::open(&h5, &var_path)?;
    let n_cells = obs.index.len();
    let n_genes = var.index.len();
    tracing::debug!(
        "obs and var indexes read in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    // The matrix read now, or (its indptr and the names of its two datasets) left in the file.
    let in_file = match blocks {
        true => csr_in_blocks(&h5, &matrix, n_cells)?,
        false => None,
    };
    let csr = match in_file {
        Some(parts) => Err(parts),
        None => Ok(read_matrix(&h5, &matrix, n_cells, n_genes)?),
    };
    tracing::debug!(
        "matrix `{matrix}` {} in {:.2} s",
        if csr.is_ok() {
            "read"
        } else {
            "opened to be read in blocks"
        },
        started.elapsed().as_secs_f64()
    );

    let gene_ids = match &options.gene_id_column {
        None => var.index.clone(),
        Some(col) => {
            if !var.columns.contains(col) {
                return Err(h5.err(format!(
                    "`{var_path}` has no column `{col}`; its columns are [{}] (or omit --gene-id-column to \
                     use the var index)",
                    var.columns.join(", ")
                )));
            }
            match var.column(&h5, col)? {
                ObsColumn::Text(v) => v,
                ObsColumn::Number(_) => {
                    return Err(h5.err(format!(
                        "var column `{col}` is numeric, not gene ids; choose a string column of [{}]",
                        var.columns.join(", ")
                    )))
                }
            }
        }
    };
    let gene_symbols = SYMBOL_COLUMNS
        .iter()
        .filter(|c| options.gene_id_column.as_deref() != Some(**c))
        .find(|c| var.columns.iter().any(|v| v == *c))
        .and_then(|c| match var.column(&h5, c) {
            Ok(ObsColumn::Text(v)) => Some(v),
            _ => None,
        });

    let mut obs_out = BTreeMap::new();
    for col in &options.obs_columns {
        if !obs.columns.contains(col) {
            return Err(h5.err(format!(
                "obs has no column `{col}`; its columns are [{}]",
                obs.columns.join(", ")
            )));
        }
        obs_out.insert(col.clone(), obs.column(&h5, col)?);
    }
    for col in &options.optional_obs_columns {
        if obs.columns.contains(col) && !obs_out.contains_key(col) {
            obs_out.insert(col.clone(), obs.column(&h5, col)?);
        }
    }

    let csr = match csr {
        Ok(csr) => csr,
        Err((indptr, indices, data)) => {
            let head = CountMatrix {
                n_cells: 0,
                n_genes,
                indptr: vec![0],
                indices: Vec::new().into(),
                values: Vec::new().into(),
                gene_ids,
                gene_symbols,
                cell_names: Vec::new(),
                obs: obs_out.iter().map(|(k, c)| (k.clone(), c.slice(0..0))).collect(),
            };
            return Ok(CellSource::Blocks(Box::new(H5adBlocks::new(
                path,
                h5,
                [matrix, indices, data],
                indptr,
                head,
                obs.index,
                obs_out,
            ))));
        }
    };
    let m = CountMatrix {
        n_cells,
        n_genes,
        indptr: csr.indptr,
        indices: csr.indices,
        values: csr.values,
        gene_ids,
        gene_symbols,
        cell_names: obs.index,
        obs: obs_out,
    };
    m.validate()
        .map_err(|e| h5.err(format!("inconsistent matrix `{matrix}`: {e}")))?;
    Ok(CellSource::Memory(m))
}

/// Reads a dense dataset or a CSR/CSC group as CSR with `n_rows` × `n_cols` checked.
fn read_matrix(h5: &Hdf5, name: &str, n_rows: usize, n_cols: usize) -> Result<Csr, CellsError> {
    let check = |r: usize, c: usize| {
        if (r, c) != (n_rows, n_cols) {
            Err(h5.err(format!(
                "`{name}` is {r} × {c} but obs has {n_rows} cells and var {n_cols} genes"
            )))
        } else {
            Ok(())
        }
    };
    if h5.is_dataset(name) {
        let shape = h5.shape(name)?;
        if shape.len() != 2 {
            return Err(h5.err(format!(
                "`{name}` has shape {shape:?}, expected 2-D cells × genes"
            )));
        }
        check(shape[0], shape[1])?;
        let data = h5.read_f32(name)?;
        if data.len() != n_rows * n_cols {
            return Err(h5.err(format!("`{name}`: {} values for {n_rows} × {n_cols}", data.len())));
        }
        return Ok(Csr::from_dense(n_rows, n_cols, &data));
    }
    if !h5.is_group(name) {
        return Err(h5.err(format!("no `{name}` in this file")));
    }
    let enc = h5
        .attr_string(name, "encoding-type")
        .or_else(|| h5.attr_string(name, "h5sparse_format"));
    let by_row = match enc.as_deref() {
        Some("csr_matrix") | Some("csr") => true,
        Some("csc_matrix") | Some("csc") => false,
        Some(other) => {
            return Err(h5.err(format!(
                "`{name}` has encoding `{other}`; only dense arrays, csr_matrix and csc_matrix are supported \
                 (convert it in Python: adata.X = scipy.sparse.csr_matrix(adata.X))"
            )))
        }
        None => {
            return Err(h5.err(format!(
                "`{name}` is a group without `encoding-type` or `h5sparse_format`; cannot tell CSR from \
                 CSC (re-write the file with a current anndata)"
            )))
        }
    };
    for part in ["data", "indices", "indptr"] {
        if !h5.is_dataset(&format!("{name}/{part}")) {
            return Err(h5.err(format!("sparse matrix `{name}` lacks `{part}`")));
        }
    }
    let indptr = h5.read_index(&format!("{name}/indptr"), u64::MAX)?;
    let major = indptr.len().saturating_sub(1);
    if by_row {
        check(major, n_cols)?;
    } else {
        check(n_rows, major)?;
    }
    let n_minor = if by_row { n_cols } else { n_rows };
    let n_minor = u32::try_from(n_minor).map_err(|_| {
        h5.err(format!(
            "`{name}`: {n_minor} rows or columns are more than this reader handles"
        ))
    })?;
    // `indices` and `data` are read side by side, the second through a handle of its own (a handle is
    // not shared between threads).
    let data_name = format!("{name}/data");
    let path = h5.path.clone();
    let (indices, data) = std::thread::scope(|s| {
        let data = s.spawn(move || guard(&path, || Hdf5::open(&path)?.read_f32(&data_name)));
        let indices = h5.read_index_u32(&format!("{name}/indices"), n_minor);
        let data = data.join().unwrap_or_else(|_| {
            Err(h5.err(
                "the HDF5 decoder failed on this file (corrupt or truncated?); re-write it with h5py/anndata",
            ))
        });
        (indices, data)
    });
    Csr::from_compressed(n_rows, n_cols, by_row, indptr, indices?, data?)
        .map_err(|e| h5.err(format!("sparse matrix `{name}`: {e}")))
}

/// An obs/var dataframe: a group (anndata ≥ 0.7) or a compound dataset (older files).
struct Frame {
    path: String,
    index: Vec<String>,
    /// Column names (sorted for groups, member order for compounds), index excluded.
    columns: Vec<String>,
    /// Pre-decoded columns of a compound dataset; `None` for a group.
    compound: Option<Vec<(String, Result<ObsColumn, DecodeError>)>>,
}

impl Frame {
    fn open(h5: &Hdf5, path: &str) -> Result<Frame, CellsError> {
        if h5.is_dataset(path) {
            let mut cols = h5.read_compound(path)?;
            let pos = cols
                .iter()
                .position(|(n, _)| n == "index" || n == "_index")
                .ok_or_else(|| h5.err(format!("compound `{path}` has no `index` member")))?;
            let (_, index) = cols.remove(pos);
            let index = match index {
                Ok(ObsColumn::Text(v)) => v,
                Ok(ObsColumn::Number(v)) => v.iter().map(|x| format!("{x}")).collect(),
                Err(e) => return Err(h5.err(format!("`{path}` index: {e}"))),
            };
            return Ok(Frame {
                path: path.to_string(),
                index,
                columns: cols.iter().map(|(n, _)| n.clone()).collect(),
                compound: Some(cols),
            });
        }
        if !h5.is_group(path) {
            return Err(h5.err(format!("no `{path}` dataframe in this file")));
        }
        let index_name = h5
            .attr_string(path, "_index")
            .filter(|n| h5.exists(&format!("{path}/{n}")))
            .or_else(|| {
                ["_index", "index"]
                    .iter()
                    .find(|n| h5.is_dataset(&format!("{path}/{n}")))
                    .map(|n| n.to_string())
            })
            .ok_or_else(|| h5.err(format!("dataframe `{path}` has no index (`_index` attribute)")))?;
        let index = match h5.read_column(&format!("{path}/{index_name}"))? {
            ObsColumn::Text(v) => v,
            ObsColumn::Number(v) => v.iter().map(|x| format!("{x}")).collect(),
        };
        let columns = h5
            .children(path)
            .into_iter()
            .filter(|c| *c != index_name && c != "__categories")
            .collect();
        Ok(Frame {
            path: path.to_string(),
            index,
            columns,
            compound: None,
        })
    }

    fn column(&self, h5: &Hdf5, name: &str) -> Result<ObsColumn, CellsError> {
        let n = self.index.len();
        let col = if let Some(cols) = &self.compound {
            let (_, c) = cols
                .iter()
                .find(|(c, _)| c == name)
                .ok_or_else(|| h5.err(format!("`{}` has no column `{name}`", self.path)))?;
            let c = c
                .clone()
                .map_err(|e| h5.err(format!("`{}` column `{name}`: {e}", self.path)))?;
            // Pre-0.7 categoricals: integer codes here, categories in uns/<name>_categories.
            let cats = format!("uns/{name}_categories");
            match c {
                ObsColumn::Number(codes) if h5.is_dataset(&cats) => {
                    decode_categorical(h5, &codes, &h5.read_column(&cats)?, name)?
                }
                other => other,
            }
        } else {
            let p = format!("{}/{name}", self.path);
            if h5.is_group(&p) {
                let enc = h5.attr_string(&p, "encoding-type").unwrap_or_default();
                match enc.as_str() {
                    "categorical" => {
                        let codes = h5.read_f64(&format!("{p}/codes"))?;
                        let cats = h5.read_column(&format!("{p}/categories"))?;
                        decode_categorical(h5, &codes, &cats, name)?
                    }
                    "nullable-integer" | "nullable-boolean" | "nullable-float" => {
                        let values = h5.read_f64(&format!("{p}/values"))?;
                        let mask = h5.read_f64(&format!("{p}/mask"))?;
                        ObsColumn::Number(
                            values
                                .iter()
                                .zip(mask.iter().chain(std::iter::repeat(&0.0)))
                                .map(|(&v, &m)| if m != 0.0 { f64::NAN } else { v })
                                .collect(),
                        )
                    }
                    "nullable-string-array" => {
                        let values = h5.read_strings(&format!("{p}/values"))?;
                        let mask = h5.read_f64(&format!("{p}/mask"))?;
                        ObsColumn::Text(
                            values
                                .into_iter()
                                .zip(mask.iter().chain(std::iter::repeat(&0.0)))
                                .map(|(v, &m)| if m != 0.0 { String::new() } else { v })
                                .collect(),
                        )
                    }
                    other => {
                        return Err(h5.err(format!(
                            "column `{p}` has unsupported encoding `{other}`; convert it to a string or \
                             numeric column in Python before saving"
                        )))
                    }
                }
            } else {
                let c = h5.read_column(&p)?;
                // anndata 0.7 categoricals: integer codes + `<df>/__categories/<name>`.
                let cats = format!("{}/__categories/{name}", self.path);
                match c {
                    ObsColumn::Number(codes) if h5.is_dataset(&cats) => {
                        decode_categorical(h5, &codes, &h5.read_column(&cats)?, name)?
                    }
                    other => other,
                }
            }
        };
        let len = match &col {
            ObsColumn::Text(v) => v.len(),
            ObsColumn::Number(v) => v.len(),
        };
        if len != n {
            return Err(h5.err(format!(
                "column `{}/{name}` has {len} values for {n} rows",
                self.path
            )));
        }
        Ok(col)
    }
}

/// Codes (−1 = missing → empty string) + categories → text.
fn decode_categorical(
    h5: &Hdf5,
    codes: &[f64],
    categories: &ObsColumn,
    name: &str,
) -> Result<ObsColumn, CellsError> {
    let cats: Vec<String> = match categories {
        ObsColumn::Text(v) => v.clone(),
        ObsColumn::Number(v) => v.iter().map(|x| format!("{x}")).collect(),
    };
    codes
        .iter()
        .map(|&c| {
            if c < 0.0 {
                Ok(String::new())
            } else {
                cats.get(c as usize).cloned().ok_or_else(|| {
                    h5.err(format!(
                        "categorical `{name}`: code {c} but only {} categories",
                        cats.len()
                    ))
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(ObsColumn::Text)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    pub(crate) fn fixture(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/cells")).join(name)
    }

    pub(crate) struct Expected {
        pub counts: Vec<Vec<f64>>,
        pub gene_ids: Vec<String>,
        pub gene_symbols: Vec<String>,
        pub cell_names: Vec<String>,
        pub obs: serde_json::Value,
        pub n_hvg: usize,
    }

    pub(crate) fn expected() -> Expected {
        let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        Expected {
            counts: v["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect()
                })
                .collect(),
            gene_ids: strings("gene_ids"),
            gene_symbols: strings("gene_symbols"),
            cell_names: strings("cell_names"),
            obs: v["obs"].clone(),
            n_hvg: v["n_hvg"].as_u64().unwrap() as usize,
        }
    }

    pub(crate) fn dense(m: &CountMatrix) -> Vec<Vec<f64>> {
        let mut d = vec![vec![0.0; m.n_genes]; m.n_cells];
        for (c, row) in d.iter_mut().enumerate() {
            for (g, v) in m.cell(c) {
                row[g] = v as f64;
            }
        }
        d
    }

    pub(crate) fn check_obs(m: &CountMatrix, e: &Expected, cols: &[&str]) {
        for col in cols {
            match &m.obs[*col] {
                ObsColumn::Text(v) => {
                    let want: Vec<&str> = e.obs[*col]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap())
                        .collect();
                    assert_eq!(v, &want, "obs {col}");
                }
                ObsColumn::Number(v) => {
                    let want: Vec<f64> = e.obs[*col]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_f64().unwrap())
                        .collect();
                    assert_eq!(v, &want, "obs {col}");
                }
            }
        }
    }

    pub(crate) fn all_obs() -> H5adOptions {
        H5adOptions {
            obs_columns: ["cell_type", "n_counts", "n_genes", "donor"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn optional_obs_columns_are_carried_when_present_and_skipped_otherwise() {
        let opts = H5adOptions {
            optional_obs_columns: vec!["n_counts".into(), "not_there".into()],
            ..Default::default()
        };
        let m = read_h5ad(&fixture("csr_gzip.h5ad"), &opts).unwrap();
        assert!(matches!(m.obs.get("n_counts"), Some(ObsColumn::Number(_))));
        assert!(!m.obs.contains_key("not_there"));
    }

    #[test]
    fn reads_every_x_layout_exactly() {
        let e = expected();
        for file in [
            "dense.h5ad",
            "csr_gzip.h5ad",
            "csr_lzf.h5ad",
            "csc.h5ad",
            "legacy_07.h5ad",
            "csr_plain.h5ad",
            "csr_unsorted.h5ad",
            "csr_uint16.h5ad",
            "csr_float64.h5ad",
        ] {
            let m = read_h5ad(&fixture(file), &all_obs()).unwrap_or_else(|err| panic!("{file}: {err}"));
            assert_eq!((m.n_cells, m.n_genes), (30, 40), "{file}");
            assert_eq!(dense(&m), e.counts, "{file}");
            assert_eq!(m.gene_ids, e.gene_ids, "{file}");
            assert_eq!(m.gene_symbols.as_ref(), Some(&e.gene_symbols), "{file}");
            assert_eq!(m.cell_names, e.cell_names, "{file}");
            assert!(m.looks_like_counts(), "{file}");
            check_obs(&m, &e, &["cell_type", "n_counts", "n_genes", "donor"]);
            assert!(matches!(m.obs["cell_type"], ObsColumn::Text(_)));
            assert!(matches!(m.obs["n_counts"], ObsColumn::Number(_)));
        }
    }

    #[test]
    fn gene_id_column_and_no_obs() {
        let e = expected();
        let opts = H5adOptions {
            gene_id_column: Some("gene_symbols".into()),
            ..Default::default()
        };
        let m = read_h5ad(&fixture("csr_gzip.h5ad"), &opts).unwrap();
        assert_eq!(m.gene_ids, e.gene_symbols);
        assert!(m.obs.is_empty());
    }

    #[test]
    fn raw_and_layers() {
        let e = expected();
        let path = fixture("raw_layers.h5ad");
        let x = read_h5ad(&path, &H5adOptions::default()).unwrap();
        assert_eq!((x.n_cells, x.n_genes), (30, e.n_hvg));
        assert!(!x.looks_like_counts());

        let raw = read_h5ad(
            &path,
            &H5adOptions {
                use_raw: true,
                ..all_obs()
            },
        )
        .unwrap();
        assert_eq!(dense(&raw), e.counts);
        assert_eq!(raw.gene_ids, e.gene_ids);
        check_obs(&raw, &e, &["cell_type", "n_counts"]);

        let layer = read_h5ad(
            &path,
            &H5adOptions {
                layer: Some("counts".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let want: Vec<Vec<f64>> = e.counts.iter().map(|r| r[..e.n_hvg].to_vec()).collect();
        assert_eq!(dense(&layer), want);
        assert_eq!(layer.gene_ids, e.gene_ids[..e.n_hvg].to_vec());
    }

    #[test]
    fn error_messages_name_file_and_fix() {
        let path = fixture("raw_layers.h5ad");
        let err = read_h5ad(
            &path,
            &H5adOptions {
                layer: Some("spliced".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("raw_layers.h5ad") && err.contains("spliced") && err.contains("[counts]"),
            "{err}"
        );

        let err = read_h5ad(
            &path,
            &H5adOptions {
                gene_id_column: Some("feature_id".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("feature_id") && err.contains("gene_symbols") && err.contains("ensembl"),
            "{err}"
        );

        let err = read_h5ad(
            &path,
            &H5adOptions {
                obs_columns: vec!["tissue".into()],
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tissue") && err.contains("cell_type"), "{err}");

        let err = read_h5ad(
            &fixture("dense.h5ad"),
            &H5adOptions {
                use_raw: true,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--use-raw"), "{err}");

        let err = read_h5ad(&fixture("missing.h5ad"), &H5adOptions::default()).unwrap_err();
        assert!(matches!(err, CellsError::Io { .. }), "{err}");

        let err = read_h5ad(&fixture("expected.json"), &H5adOptions::default()).unwrap_err();
        assert!(err.to_string().contains("expected.json"), "{err}");
    }

    #[test]
    fn truncated_files_error_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        for file in ["csr_gzip.h5ad", "csr_lzf.h5ad", "dense.h5ad"] {
            let bytes = std::fs::read(fixture(file)).unwrap();
            for cut in [100, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1000] {
                let p = dir.path().join(format!("cut_{cut}_{file}"));
                std::fs::write(&p, &bytes[..cut]).unwrap();
                let r = read_h5ad(&p, &all_obs());
                assert!(r.is_err(), "{file} cut at {cut} read without error");
            }
        }
    }

    #[test]
    fn pbmc68k_reduced() {
        let Some(path) = crate::test_data::shared_data("cells/pbmc68k_reduced.h5ad") else {
            return;
        };
        let path = path.as_path();
        let opts = H5adOptions {
            obs_columns: vec!["bulk_labels".into(), "n_counts".into()],
            ..Default::default()
        };
        let x = read_h5ad(path, &opts).unwrap();
        assert_eq!((x.n_cells, x.n_genes), (700, 765));
        let raw = read_h5ad(
            path,
            &H5adOptions {
                use_raw: true,
                ..opts
            },
        )
        .unwrap();
        assert_eq!((raw.n_cells, raw.n_genes), (700, 765));
        assert_eq!(raw.indptr[700], 174_400);
        assert!(!raw.looks_like_counts());
        assert_eq!(raw.cell_names[0], "AAAGCCTGGCTAAC-1");
        assert_eq!(raw.gene_ids[0], "HES4");
        let ObsColumn::Text(labels) = &raw.obs["bulk_labels"] else {
            panic!("bulk_labels is not text")
        };
        let distinct: std::collections::BTreeSet<&String> = labels.iter().collect();
        assert_eq!(distinct.len(), 10);
        assert!(distinct.iter().any(|l| l.as_str() == "CD14+ Monocyte"));
        let ObsColumn::Number(n_counts) = &raw.obs["n_counts"] else {
            panic!("n_counts is not numeric")
        };
        assert_eq!(n_counts[0], 2557.0);
    }
}
