//! Single-cell count matrices as read from users' files (10x MatrixMarket folders; h5ad and loom to come).
//!
//! Every reader produces a [`CountMatrix`]: cells × genes, sparse by cell (CSR), with the gene ids of the
//! chosen id column, optional symbols, cell names and obs columns. Tokenizers read only this type.

pub mod h5ad;
pub mod h5ad_blocks;
mod hdf5_util;
pub mod loom;
pub mod orthologs;
mod stored;
pub mod tenx;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use stored::Stored;
pub use tenx::GeneIdColumn;

/// A per-cell annotation column.
#[derive(Clone, Debug, PartialEq)]
pub enum ObsColumn {
    Text(Vec<String>),
    Number(Vec<f64>),
}

impl ObsColumn {
    /// The values of the cells `rows`.
    pub fn slice(&self, rows: std::ops::Range<usize>) -> ObsColumn {
        match self {
            ObsColumn::Text(v) => ObsColumn::Text(v[rows].to_vec()),
            ObsColumn::Number(v) => ObsColumn::Number(v[rows].to_vec()),
        }
    }
}

/// The cells of an input, to be processed a block at a time in order: a matrix in memory, or one left in
/// its file and read block by block (bounded memory).
pub enum CellSource {
    Memory(CountMatrix),
    Blocks(Box<h5ad_blocks::H5adBlocks>),
}

/// Cells of a [`CellSource`]: the cells `cells` of `matrix`, numbered from `first` in the whole input.
pub struct CellBlock<'a> {
    pub matrix: std::borrow::Cow<'a, CountMatrix>,
    pub cells: std::ops::Range<usize>,
    pub first: usize,
}

impl CellSource {
    pub fn n_cells(&self) -> usize {
        match self {
            CellSource::Memory(m) => m.n_cells,
            CellSource::Blocks(b) => b.n_cells(),
        }
    }

    /// A matrix with the genes (ids, symbols) and obs columns of every block: the whole matrix, or one of
    /// no cell.
    pub fn genes(&self) -> &CountMatrix {
        match self {
            CellSource::Memory(m) => m,
            CellSource::Blocks(b) => b.head(),
        }
    }

    /// [`Self::genes`], to change the gene ids of every block (e.g. orthologs).
    pub fn genes_mut(&mut self) -> &mut CountMatrix {
        match self {
            CellSource::Memory(m) => m,
            CellSource::Blocks(b) => b.head_mut(),
        }
    }

    pub fn cell_names(&self) -> &[String] {
        match self {
            CellSource::Memory(m) => &m.cell_names,
            CellSource::Blocks(b) => b.cell_names(),
        }
    }

    /// The obs columns, over all cells.
    pub fn obs(&self) -> &BTreeMap<String, ObsColumn> {
        match self {
            CellSource::Memory(m) => &m.obs,
            CellSource::Blocks(b) => b.obs(),
        }
    }

    /// Starts reading the blocks `blocks` ahead, in this order, when they come from a file (see
    /// [`h5ad_blocks::H5adBlocks::read_ahead`]).
    pub fn read_ahead(&self, blocks: Vec<std::ops::Range<usize>>) {
        if let CellSource::Blocks(b) = self {
            b.read_ahead(blocks);
        }
    }

    /// The cells `cells` (a borrow of the matrix in memory, or a block read from the file).
    pub fn block(&self, cells: std::ops::Range<usize>) -> Result<CellBlock<'_>, CellsError> {
        Ok(match self {
            CellSource::Memory(m) => CellBlock {
                matrix: std::borrow::Cow::Borrowed(m),
                cells,
                first: 0,
            },
            CellSource::Blocks(b) => {
                let first = cells.start;
                let matrix = b.read(cells).map_err(|e| b.shown_error(e))?;
                CellBlock {
                    cells: 0..matrix.n_cells,
                    matrix: std::borrow::Cow::Owned(matrix),
                    first,
                }
            }
        })
    }

    /// Gives back a block's arrays once done with it (the next block is read into them).
    pub fn recycle(&self, block: CellBlock<'_>) {
        if let (CellSource::Blocks(b), std::borrow::Cow::Owned(m)) = (self, block.matrix) {
            b.recycle(m);
        }
    }
}

/// Cells × genes counts in CSR layout (row = cell). Values are f32 (integer counts up to 2^24 are exact);
/// tokenizers compute in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct CountMatrix {
    pub n_cells: usize,
    pub n_genes: usize,
    /// `indptr[c]..indptr[c + 1]` indexes the non-zeros of cell `c` in `indices`/`values`.
    pub indptr: Vec<usize>,
    /// Gene (column) index of each stored value, ascending within a cell.
    pub indices: Stored<u32>,
    pub values: Stored<f32>,
    /// Gene ids of the chosen id column (Ensembl ids for Geneformer, symbols for scGPT).
    pub gene_ids: Vec<String>,
    /// Gene symbols, when the file has them besides the ids.
    pub gene_symbols: Option<Vec<String>>,
    /// Cell names (barcodes / obs index).
    pub cell_names: Vec<String>,
    pub obs: BTreeMap<String, ObsColumn>,
}

impl CountMatrix {
    /// The stored (gene index, value) pairs of cell `c`.
    pub fn cell(&self, c: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let range = self.indptr[c]..self.indptr[c + 1];
        self.indices[range.clone()]
            .iter()
            .map(|&g| g as usize)
            .zip(self.values[range].iter().copied())
    }

    /// A copy of the cells `rows` (all genes), with their names and obs values; rows beyond the matrix
    /// are left out.
    pub fn slice_rows(&self, rows: std::ops::Range<usize>) -> CountMatrix {
        let end = rows.end.min(self.n_cells);
        let rows = rows.start.min(end)..end;
        let (a, b) = (self.indptr[rows.start], self.indptr[rows.end]);
        CountMatrix {
            n_cells: rows.len(),
            n_genes: self.n_genes,
            indptr: self.indptr[rows.start..=rows.end]
                .iter()
                .map(|&p| p - a)
                .collect(),
            indices: self.indices[a..b].to_vec().into(),
            values: self.values[a..b].to_vec().into(),
            gene_ids: self.gene_ids.clone(),
            gene_symbols: self.gene_symbols.clone(),
            cell_names: self.cell_names[rows.clone()].to_vec(),
            obs: self
                .obs
                .iter()
                .map(|(k, col)| (k.clone(), col.slice(rows.clone())))
                .collect(),
        }
    }

    /// Checks the internal consistency of the arrays (readers call this before returning).
    pub fn validate(&self) -> Result<(), crate::Invalid> {
        if self.indptr.len() != self.n_cells + 1 || self.indptr.first() != Some(&0) {
            return Err(crate::Invalid(format!(
                "indptr has {} entries for {} cells",
                self.indptr.len(),
                self.n_cells
            )));
        }
        if self.indptr.windows(2).any(|w| w[0] > w[1]) {
            return Err("indptr is not non-decreasing".into());
        }
        let nnz = *self.indptr.last().unwrap_or(&0);
        if self.indices.len() != nnz || self.values.len() != nnz {
            return Err(crate::Invalid(format!(
                "{nnz} non-zeros announced, {} indices and {} values stored",
                self.indices.len(),
                self.values.len()
            )));
        }
        if let Some(g) = first_out_of_range(&self.indices, self.n_genes) {
            return Err(crate::Invalid(format!(
                "gene index {g} out of range ({} genes)",
                self.n_genes
            )));
        }
        if let Some(c) = (0..self.n_cells)
            .into_par_iter()
            .with_min_len(64)
            .find_first(|&c| {
                self.indices[self.indptr[c]..self.indptr[c + 1]]
                    .windows(2)
                    .any(|w| w[0] >= w[1])
            })
        {
            return Err(crate::Invalid(format!(
                "cell {c}: gene indices not strictly ascending"
            )));
        }
        if self.gene_ids.len() != self.n_genes {
            return Err(crate::Invalid(format!(
                "{} gene ids for {} genes",
                self.gene_ids.len(),
                self.n_genes
            )));
        }
        if let Some(s) = &self.gene_symbols {
            if s.len() != self.n_genes {
                return Err(crate::Invalid(format!(
                    "{} gene symbols for {} genes",
                    s.len(),
                    self.n_genes
                )));
            }
        }
        if self.cell_names.len() != self.n_cells {
            return Err(crate::Invalid(format!(
                "{} cell names for {} cells",
                self.cell_names.len(),
                self.n_cells
            )));
        }
        for (name, col) in &self.obs {
            let len = match col {
                ObsColumn::Text(v) => v.len(),
                ObsColumn::Number(v) => v.len(),
            };
            if len != self.n_cells {
                return Err(crate::Invalid(format!(
                    "obs column `{name}` has {len} values for {} cells",
                    self.n_cells
                )));
            }
        }
        Ok(())
    }

    /// Whether the values look like raw counts: all non-negative integers. Tokenizers that need counts
    /// (Geneformer) refuse anything else, so that a log-normalised matrix is caught, not silently ranked.
    pub fn looks_like_counts(&self) -> bool {
        self.values.iter().all(|&v| v >= 0.0 && v.fract() == 0.0)
    }
}

/// A small matrix from per-cell `(gene, value)` lists, for unit tests of the tokenizers.
#[cfg(test)]
pub(crate) fn test_matrix(gene_ids: Vec<String>, rows: &[Vec<(u32, f32)>]) -> CountMatrix {
    let mut indptr = vec![0];
    let (mut indices, mut values) = (Vec::new(), Vec::new());
    for r in rows {
        for &(g, v) in r {
            indices.push(g);
            values.push(v);
        }
        indptr.push(indices.len());
    }
    let m = CountMatrix {
        n_cells: rows.len(),
        n_genes: gene_ids.len(),
        indptr,
        indices: indices.into(),
        values: values.into(),
        gene_ids,
        gene_symbols: None,
        cell_names: (0..rows.len()).map(|i| format!("cell{i}")).collect(),
        obs: BTreeMap::new(),
    };
    m.validate().expect("test matrix is consistent");
    m
}

/// The first of `indices` that is `>= bound`, if any. The blocks' maxima (a vectorised loop, blocks side by
/// side) decide; the position is searched only when some index is out of range.
pub(crate) fn first_out_of_range(indices: &[u32], bound: usize) -> Option<u32> {
    let max = indices
        .par_chunks(1 << 18)
        .map(|b| b.iter().copied().fold(0, u32::max))
        .max()?;
    if (max as usize) < bound {
        return None;
    }
    indices.iter().copied().find(|&g| g as usize >= bound)
}

/// CSR arrays from `(row, col, value)` triplets in any order: a counting sort by row, columns ascending
/// within a row, duplicates summed (in f64), zeros (explicit or summed) dropped. Every sparse reader ends
/// here, so all of them clean their input the same way. Callers check lengths and bounds first.
pub(crate) fn csr_from_triplets(
    n_rows: usize,
    rows: &[u32],
    cols: &[u32],
    values: &[f32],
) -> (Vec<usize>, Vec<u32>, Vec<f32>) {
    let mut start = vec![0usize; n_rows + 1];
    for &r in rows {
        start[r as usize + 1] += 1;
    }
    for i in 0..n_rows {
        start[i + 1] += start[i];
    }
    let mut next = start.clone();
    let mut pairs = vec![(0u32, 0f32); rows.len()];
    for ((&r, &c), &v) in rows.iter().zip(cols).zip(values) {
        let slot = &mut next[r as usize];
        pairs[*slot] = (c, v);
        *slot += 1;
    }
    let mut indptr = Vec::with_capacity(n_rows + 1);
    indptr.push(0);
    let mut indices = Vec::with_capacity(pairs.len());
    let mut out_values = Vec::with_capacity(pairs.len());
    for r in 0..n_rows {
        let row = &mut pairs[start[r]..start[r + 1]];
        row.sort_unstable_by_key(|&(c, _)| c);
        let mut i = 0;
        while i < row.len() {
            let c = row[i].0;
            let mut sum = 0f64;
            while i < row.len() && row[i].0 == c {
                sum += row[i].1 as f64;
                i += 1;
            }
            if sum != 0.0 {
                indices.push(c);
                out_values.push(sum as f32);
            }
        }
        indptr.push(indices.len());
    }
    (indptr, indices, out_values)
}

/// Errors of the cell-matrix readers. Every message names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum CellsError {
    /// The file exists but its content is not what the reader expects (or a needed file is missing).
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CellsError {
    /// The same error about `shown` where it was about `actual` (the decompressed temporary copy of a
    /// gzipped input), so that messages name the file the user gave.
    pub fn shown_as(self, actual: &Path, shown: &Path) -> Self {
        match self {
            CellsError::Invalid { path, reason } if path == actual => CellsError::Invalid {
                path: shown.to_path_buf(),
                reason,
            },
            CellsError::Io { path, source } if path == actual => CellsError::Io {
                path: shown.to_path_buf(),
                source,
            },
            other => other,
        }
    }

    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        CellsError::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// If `path` is gzip-compressed (by its magic bytes), decompresses it into a temporary file in the system
/// temporary folder and returns that file (deleted when dropped); otherwise `None`. Lets users pass
/// `cells.h5ad.gz` as it was downloaded.
pub fn decompress_if_gzip(path: &Path) -> Result<Option<tempfile::NamedTempFile>, CellsError> {
    use std::io::Read;
    let io = |source| CellsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 2];
    if file.read(&mut magic).map_err(io)? < 2 || magic != [0x1f, 0x8b] {
        return Ok(None);
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let mut decoder = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
    let mut tmp = tempfile::NamedTempFile::new().map_err(io)?;
    std::io::copy(&mut decoder, &mut tmp).map_err(|e| {
        CellsError::invalid(
            path,
            format!("gzip data is truncated or corrupt ({e}); download the file again"),
        )
    })?;
    Ok(Some(tmp))
}

/// How [`open`] reads an input.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// 10x folders: which column of features.tsv holds the gene ids.
    pub tenx_column: GeneIdColumn,
    /// h5ad: the var column of the gene ids (`None`: the var index); loom: the row attribute.
    pub gene_id_column: Option<String>,
    /// h5ad: read `layers/<name>` instead of X.
    pub layer: Option<String>,
    /// h5ad: read `raw/X` with `raw/var`.
    pub use_raw: bool,
    /// obs columns (loom: column attributes) to carry; a missing one is an error.
    pub obs_columns: Vec<String>,
    /// h5ad: obs columns carried when the file has them.
    pub optional_obs_columns: Vec<String>,
}

/// Reads (or opens, to be read in blocks) the cells at `input`, choosing the reader from what the path
/// is: a folder is a 10x MatrixMarket folder, else the extension (`.h5ad`, `.loom`, either `.gz`). A
/// gzipped input comes with its decompressed temporary copy, to be kept while its cells are read.
pub fn open(
    input: &Path,
    options: &OpenOptions,
) -> Result<(CellSource, Option<tempfile::NamedTempFile>), CellsError> {
    if input.is_dir() {
        let m = tenx::read_10x_mtx(input, options.tenx_column)?;
        return Ok((CellSource::Memory(m), None));
    }
    if !input.exists() {
        return Err(CellsError::invalid(input, "no such file or folder"));
    }
    // `x.h5ad.gz` / `x.loom.gz`: decompress to a temporary file and read that.
    let decompressed = decompress_if_gzip(input)?;
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name).to_string();
    let extension = name.rsplit('.').next().unwrap_or("");
    let shown = input;
    let input = decompressed.as_ref().map(|t| t.path()).unwrap_or(input);
    let named = |e: CellsError| e.shown_as(input, shown);
    match extension {
        "h5ad" => {
            let h5ad_options = h5ad::H5adOptions {
                layer: options.layer.clone(),
                use_raw: options.use_raw,
                gene_id_column: options.gene_id_column.clone(),
                obs_columns: options.obs_columns.clone(),
                optional_obs_columns: options.optional_obs_columns.clone(),
            };
            let mut source = h5ad::open_h5ad(input, &h5ad_options).map_err(named)?;
            if let CellSource::Blocks(b) = &mut source {
                b.show_as(shown);
            }
            Ok((source, decompressed))
        }
        "loom" => {
            let m = loom::read_loom(input, options.gene_id_column.as_deref(), &options.obs_columns)
                .map_err(named)?;
            Ok((CellSource::Memory(m), None))
        }
        _ => Err(CellsError::invalid(
            shown,
            "unknown input format; give an .h5ad or .loom file or a 10x MatrixMarket folder",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_index_out_of_range_is_found() {
        let mut v: Vec<u32> = (0..1_000_000).map(|i| i % 977).collect();
        assert_eq!(first_out_of_range(&v, 977), None);
        assert_eq!(first_out_of_range(&[], 0), None);
        v[700_000] = 5000;
        v[900_000] = 977;
        assert_eq!(first_out_of_range(&v, 977), Some(5000));
        assert_eq!(first_out_of_range(&v, 5000), Some(5000));
        assert_eq!(first_out_of_range(&v, 5001), None);
        let mut m = test_matrix(vec!["a".into(), "b".into()], &[vec![(0, 1.0), (1, 2.0)]]);
        m.indices.to_mut()[1] = 2;
        assert_eq!(
            m.validate().unwrap_err().to_string(),
            "gene index 2 out of range (2 genes)"
        );
    }

    #[test]
    fn slice_rows_copies_cells_names_and_obs() {
        let mut m = test_matrix(
            vec!["a".into(), "b".into(), "c".into()],
            &[vec![(0, 1.0)], vec![], vec![(1, 2.0), (2, 3.0)], vec![(2, 4.0)]],
        );
        m.obs
            .insert("n".into(), ObsColumn::Number(vec![1.0, 0.0, 5.0, 4.0]));
        let s = m.slice_rows(1..3);
        s.validate().unwrap();
        assert_eq!((s.n_cells, s.n_genes), (2, 3));
        assert_eq!(s.indptr, vec![0, 0, 2]);
        assert_eq!(
            (s.indices.clone().into_vec(), s.values.clone().into_vec()),
            (vec![1, 2], vec![2.0, 3.0])
        );
        assert_eq!(s.cell_names, vec!["cell1".to_string(), "cell2".to_string()]);
        assert_eq!(s.obs["n"], ObsColumn::Number(vec![0.0, 5.0]));
        assert_eq!(m.slice_rows(3..9).n_cells, 1);
        assert_eq!(m.slice_rows(0..0).n_cells, 0);
    }
}
