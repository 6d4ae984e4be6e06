//! Loom reader: `/matrix` (genes × cells, dense, usually gzip-chunked), `/row_attrs/<gene attrs>` and
//! `/col_attrs/<cell attrs>`. Same pure-Rust HDF5 backend (`rust-hdf5`) as the h5ad reader; see
//! [`super::h5ad`] for why.

use std::collections::BTreeMap;
use std::path::Path;

use super::hdf5_util::{guard, Csr, Hdf5};
use super::{CellsError, CountMatrix, ObsColumn};

/// Gene id row attributes tried, in order, when none is named.
const GENE_ID_DEFAULTS: &[&str] = &["ensembl_id", "Accession", "Gene"];
/// Cell name column attributes tried, in order.
const CELL_ID_ATTRS: &[&str] = &[
    "CellID",
    "cell_id",
    "obs_names",
    "cell_names",
    "barcode",
    "Barcode",
];

/// Reads a `.loom` file into a [`CountMatrix`] (cells × genes).
///
/// `gene_id_attr`: the row attribute holding gene ids; `None` = `ensembl_id` if present, else `Accession`,
/// else `Gene`. `obs_columns`: column attributes to carry into [`CountMatrix::obs`].
pub fn read_loom(
    path: &Path,
    gene_id_attr: Option<&str>,
    obs_columns: &[String],
) -> Result<CountMatrix, CellsError> {
    guard(path, || read_inner(path, gene_id_attr, obs_columns))
}

fn read_inner(
    path: &Path,
    gene_id_attr: Option<&str>,
    obs_columns: &[String],
) -> Result<CountMatrix, CellsError> {
    let h5 = Hdf5::open(path)?;
    if !h5.is_dataset("matrix") {
        return Err(h5.err("no `/matrix` dataset: this HDF5 file is not a loom file"));
    }
    let shape = h5.shape("matrix")?;
    if shape.len() != 2 {
        return Err(h5.err(format!(
            "`/matrix` has shape {shape:?}, expected 2-D genes × cells"
        )));
    }
    let (n_genes, n_cells) = (shape[0], shape[1]);
    let row_attrs = h5.children("row_attrs");
    let col_attrs = h5.children("col_attrs");

    let gene_attr = match gene_id_attr {
        Some(a) => {
            if !row_attrs.iter().any(|r| r == a) {
                return Err(h5.err(format!(
                    "no row attribute `{a}` for gene ids; row attributes are [{}]",
                    row_attrs.join(", ")
                )));
            }
            a.to_string()
        }
        None => GENE_ID_DEFAULTS
            .iter()
            .find(|d| row_attrs.iter().any(|r| r == *d))
            .map(|d| d.to_string())
            .ok_or_else(|| {
                h5.err(format!(
                    "none of the gene id row attributes {GENE_ID_DEFAULTS:?} exists; row attributes are [{}]; \
                     name the one holding gene ids",
                    row_attrs.join(", ")
                ))
            })?,
    };
    let text_attr = |group: &str, name: &str, len: usize| -> Result<Vec<String>, CellsError> {
        let p = format!("{group}/{name}");
        let v = match h5.read_column(&p)? {
            ObsColumn::Text(v) => v,
            ObsColumn::Number(v) => v.iter().map(|x| format!("{x}")).collect(),
        };
        if v.len() != len {
            return Err(h5.err(format!("`/{p}` has {} values, expected {len}", v.len())));
        }
        Ok(v)
    };
    let gene_ids = text_attr("row_attrs", &gene_attr, n_genes)?;
    let gene_symbols = if gene_attr != "Gene" && row_attrs.iter().any(|r| r == "Gene") {
        Some(text_attr("row_attrs", "Gene", n_genes)?)
    } else {
        None
    };
    let cell_attr = CELL_ID_ATTRS
        .iter()
        .find(|d| col_attrs.iter().any(|c| c == *d))
        .ok_or_else(|| {
            h5.err(format!(
                "no cell name column attribute (one of {CELL_ID_ATTRS:?}); column attributes are [{}]",
                col_attrs.join(", ")
            ))
        })?;
    let cell_names = text_attr("col_attrs", cell_attr, n_cells)?;

    let mut obs = BTreeMap::new();
    for col in obs_columns {
        if !col_attrs.contains(col) {
            return Err(h5.err(format!(
                "no column attribute `{col}`; column attributes are [{}]",
                col_attrs.join(", ")
            )));
        }
        let p = format!("col_attrs/{col}");
        let shape = h5.shape(&p)?;
        if shape != [n_cells] {
            return Err(h5.err(format!(
                "column attribute `{col}` has shape {shape:?}; only 1-D per-cell attributes can be carried"
            )));
        }
        obs.insert(col.clone(), h5.read_column(&p)?);
    }

    let data = h5.read_f32("matrix")?;
    if data.len() != n_genes * n_cells {
        return Err(h5.err(format!(
            "`/matrix`: {} values for {n_genes} × {n_cells}",
            data.len()
        )));
    }
    let csr = Csr::from_dense_transposed(n_cells, n_genes, &data);
    let m = CountMatrix {
        n_cells,
        n_genes,
        indptr: csr.indptr,
        indices: csr.indices,
        values: csr.values,
        gene_ids,
        gene_symbols,
        cell_names,
        obs,
    };
    m.validate()
        .map_err(|e| h5.err(format!("inconsistent matrix: {e}")))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cells::h5ad::tests::{check_obs, dense, expected, fixture};

    #[test]
    fn reads_loom_exactly() {
        let e = expected();
        let m = read_loom(
            &fixture("cells.loom"),
            None,
            &["cell_type".to_string(), "n_counts".to_string()],
        )
        .unwrap();
        assert_eq!((m.n_cells, m.n_genes), (30, 40));
        assert_eq!(dense(&m), e.counts);
        assert_eq!(m.gene_ids, e.gene_ids, "default gene id attribute is Accession");
        assert_eq!(m.gene_symbols.as_ref(), Some(&e.gene_symbols));
        assert_eq!(m.cell_names, e.cell_names);
        assert!(m.looks_like_counts());
        check_obs(&m, &e, &["cell_type", "n_counts"]);

        let by_symbol = read_loom(&fixture("cells.loom"), Some("Gene"), &[]).unwrap();
        assert_eq!(by_symbol.gene_ids, e.gene_symbols);
        assert_eq!(by_symbol.gene_symbols, None);
    }

    #[test]
    fn loom_errors() {
        let path = fixture("cells.loom");
        let err = read_loom(&path, Some("ensembl_id"), &[]).unwrap_err().to_string();
        assert!(
            err.contains("cells.loom") && err.contains("Accession") && err.contains("Gene"),
            "{err}"
        );
        let err = read_loom(&path, None, &["tissue".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("tissue") && err.contains("CellID"), "{err}");
        let err = read_loom(&fixture("dense.h5ad"), None, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a loom file"), "{err}");

        // A cut file must give an error, or (when the cut only removed trailing metadata) the same
        // matrix; never a panic or a different matrix.
        let full = read_loom(&path, None, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for cut in [100, bytes.len() / 2, bytes.len() - 500] {
            let p = dir.path().join(format!("cut_{cut}.loom"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let r = read_loom(&p, None, &[]);
            assert!(cut > 100 || r.is_err(), "a 100-byte loom read without error");
            if let Ok(m) = r {
                assert_eq!(m, full, "cut at {cut} read a different matrix");
            }
        }
    }
}
