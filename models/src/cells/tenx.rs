//! 10x Genomics MatrixMarket folders (Cell Ranger `filtered_feature_bc_matrix/` and the like).
//!
//! Two layouts are recognised, each compressed or not (compression is detected by the gzip magic bytes, not
//! by the file name):
//! - v3: `matrix.mtx.gz`, `features.tsv.gz` (gene id, symbol, feature type), `barcodes.tsv.gz`;
//! - v2: `matrix.mtx`, `genes.tsv` (gene id, symbol), `barcodes.tsv`.
//!
//! The matrix file stores genes as rows and cells as columns with 1-based indices; it is transposed here
//! into a [`CountMatrix`] in CSR layout by cell, duplicate entries summed and explicit zeros dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

use super::{csr_from_triplets, CellsError, CountMatrix};

/// Which column of `features.tsv` / `genes.tsv` becomes [`CountMatrix::gene_ids`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeneIdColumn {
    /// First column: the gene id (Ensembl id in Cell Ranger output).
    #[default]
    Id,
    /// Second column: the gene symbol.
    Symbol,
}

const LAYOUT_HINT: &str =
    "a 10x folder needs matrix.mtx(.gz), features.tsv(.gz) or genes.tsv(.gz), and barcodes.tsv(.gz)";

/// Reads a 10x Genomics MatrixMarket folder (v3 or v2 layout, gzipped or not) into a [`CountMatrix`]
/// (cells × genes, CSR by cell). All features are kept whatever their feature type; `gene_ids` is the
/// column chosen by `gene_id_column`, `gene_symbols` the second column when the file has one, `cell_names`
/// the barcodes; `obs` is empty.
pub fn read_10x_mtx(dir: &Path, gene_id_column: GeneIdColumn) -> Result<CountMatrix, CellsError> {
    if !dir.is_dir() {
        return Err(CellsError::invalid(dir, format!("not a folder; {LAYOUT_HINT}")));
    }
    let matrix_path = find_file(dir, &["matrix.mtx.gz", "matrix.mtx"])?;
    let features_path = find_file(
        dir,
        &["features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"],
    )?;
    let barcodes_path = find_file(dir, &["barcodes.tsv.gz", "barcodes.tsv"])?;

    let features = read_features(&features_path, gene_id_column)?;
    let cell_names = read_barcodes(&barcodes_path)?;
    let mtx = read_mtx(&matrix_path)?;

    if mtx.n_genes != features.ids.len() {
        return Err(CellsError::invalid(
            &matrix_path,
            format!(
                "the header announces {} genes (rows) but {} lists {} genes; the files do not belong together",
                mtx.n_genes,
                features_path.display(),
                features.ids.len()
            ),
        ));
    }
    if mtx.n_cells != cell_names.len() {
        return Err(CellsError::invalid(
            &matrix_path,
            format!(
                "the header announces {} cells (columns) but {} lists {} barcodes; the files do not belong \
                 together",
                mtx.n_cells,
                barcodes_path.display(),
                cell_names.len()
            ),
        ));
    }

    let (indptr, indices, values) = csr_from_triplets(mtx.n_cells, &mtx.cells, &mtx.genes, &mtx.values);
    let matrix = CountMatrix {
        n_cells: cell_names.len(),
        n_genes: features.ids.len(),
        indptr,
        indices: indices.into(),
        values: values.into(),
        gene_ids: features.ids,
        gene_symbols: features.symbols,
        cell_names,
        obs: BTreeMap::new(),
    };
    matrix
        .validate()
        .map_err(|e| CellsError::invalid(dir, format!("internal inconsistency: {e}")))?;
    Ok(matrix)
}

/// The first of `names` that exists in `dir`, or an error naming the missing file.
fn find_file(dir: &Path, names: &[&str]) -> Result<PathBuf, CellsError> {
    for name in names {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(CellsError::invalid(
        &dir.join(names[names.len() - 1]),
        format!("missing (also looked for {}); {LAYOUT_HINT}", names.join(", ")),
    ))
}

/// Line-by-line reader over a plain or gzipped file, keeping the line number for messages.
struct Lines {
    path: PathBuf,
    reader: Box<dyn BufRead>,
    gzip: bool,
    line_no: usize,
    buf: Vec<u8>,
}

impl Lines {
    fn open(path: &Path) -> Result<Self, CellsError> {
        let io_err = |source| CellsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = BufReader::with_capacity(1 << 16, File::open(path).map_err(io_err)?);
        let gzip = file.fill_buf().map_err(io_err)?.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn BufRead> = if gzip {
            Box::new(BufReader::with_capacity(1 << 16, MultiGzDecoder::new(file)))
        } else {
            Box::new(file)
        };
        Ok(Lines {
            path: path.to_path_buf(),
            reader,
            gzip,
            line_no: 0,
            buf: Vec::new(),
        })
    }

    /// The next line without its line terminator (`\n` or `\r\n`), or `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<(usize, &str)>, CellsError> {
        self.buf.clear();
        let n = match self.reader.read_until(b'\n', &mut self.buf) {
            Ok(n) => n,
            Err(e) if self.gzip => {
                return Err(CellsError::invalid(
                    &self.path,
                    format!(
                    "gzip data is truncated or corrupt after line {} ({e}); copy or download the file again",
                    self.line_no
                ),
                ))
            }
            Err(source) => {
                return Err(CellsError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        match std::str::from_utf8(&self.buf) {
            Ok(s) => Ok(Some((self.line_no, s))),
            Err(_) => Err(CellsError::invalid(
                &self.path,
                format!(
                    "line {} is not valid UTF-8; is this really a text file?",
                    self.line_no
                ),
            )),
        }
    }

    fn err(&self, reason: impl std::fmt::Display) -> CellsError {
        err_at(&self.path, self.line_no, reason)
    }
}

fn err_at(path: &Path, line_no: usize, reason: impl std::fmt::Display) -> CellsError {
    CellsError::invalid(path, format!("line {line_no}: {reason}"))
}

/// Reads the non-blank lines of a TSV file, with their line numbers. Blank lines are allowed only at the
/// end of the file (a trailing newline too many); a blank line in the middle would shift every index after
/// it, so it is an error.
fn read_tsv_rows(path: &Path) -> Result<Vec<(usize, String)>, CellsError> {
    let mut lines = Lines::open(path)?;
    let mut rows = Vec::new();
    let mut blank_at = None;
    while let Some((line_no, line)) = lines.next_line()? {
        if line.trim().is_empty() {
            blank_at.get_or_insert(line_no);
            continue;
        }
        if let Some(b) = blank_at {
            return Err(CellsError::invalid(
                path,
                format!("line {b} is blank; every line must describe one entry (remove the blank line)"),
            ));
        }
        rows.push((line_no, line.to_string()));
    }
    Ok(rows)
}

struct Features {
    ids: Vec<String>,
    symbols: Option<Vec<String>>,
}

fn read_features(path: &Path, column: GeneIdColumn) -> Result<Features, CellsError> {
    let rows = read_tsv_rows(path)?;
    if rows.is_empty() {
        return Err(CellsError::invalid(path, "no genes listed (the file is empty)"));
    }
    let mut first_col = Vec::with_capacity(rows.len());
    let mut second_col = Vec::with_capacity(rows.len());
    let has_symbols = rows[0].1.split('\t').nth(1).is_some();
    for (line_no, row) in &rows {
        let mut fields = row.split('\t');
        let id = fields.next().unwrap_or("").trim();
        if id.is_empty() {
            return Err(CellsError::invalid(
                path,
                format!("line {line_no}: the gene id (first column) is empty"),
            ));
        }
        first_col.push(id.to_string());
        match (fields.next(), has_symbols) {
            (Some(sym), true) => second_col.push(sym.trim().to_string()),
            (None, false) => {}
            (Some(_), false) | (None, true) => {
                return Err(CellsError::invalid(
                    path,
                    format!(
                        "line {line_no}: {} columns where line {} has {}; every line needs the same \
                         tab-separated columns (gene id, symbol[, feature type])",
                        if has_symbols { "one column" } else { "several" },
                        rows[0].0,
                        if has_symbols { "several" } else { "one" },
                    ),
                ))
            }
        }
        // The third column (feature type) is not recorded for now; all features are kept.
    }
    let symbols = has_symbols.then_some(second_col);
    let ids = match column {
        GeneIdColumn::Id => first_col,
        GeneIdColumn::Symbol => match &symbols {
            Some(s) => {
                if let Some(i) = s.iter().position(|s| s.is_empty()) {
                    return Err(CellsError::invalid(
                        path,
                        format!("line {}: the gene symbol (second column) is empty", rows[i].0),
                    ));
                }
                s.clone()
            }
            None => {
                return Err(CellsError::invalid(
                    path,
                    "has a single column (gene ids), no symbol column; use GeneIdColumn::Id",
                ))
            }
        },
    };
    Ok(Features { ids, symbols })
}

fn read_barcodes(path: &Path) -> Result<Vec<String>, CellsError> {
    let rows = read_tsv_rows(path)?;
    if rows.is_empty() {
        return Err(CellsError::invalid(
            path,
            "no barcodes listed (the file is empty)",
        ));
    }
    Ok(rows
        .into_iter()
        .map(|(_, row)| row.split('\t').next().unwrap_or("").trim().to_string())
        .collect())
}

/// The coordinate entries of a MatrixMarket file, in file order (0-based).
struct Mtx {
    n_genes: usize,
    n_cells: usize,
    genes: Vec<u32>,
    cells: Vec<u32>,
    values: Vec<f32>,
}

fn read_mtx(path: &Path) -> Result<Mtx, CellsError> {
    let mut lines = Lines::open(path)?;
    let header = match lines.next_line()? {
        Some((_, h)) => h.to_string(),
        None => return Err(CellsError::invalid(path, "the file is empty")),
    };
    let tokens: Vec<String> = header
        .split_whitespace()
        .map(|t| t.to_ascii_lowercase())
        .collect();
    if tokens.first().map(String::as_str) != Some("%%matrixmarket") || tokens.len() != 5 {
        return Err(lines.err(format!(
            "expected a MatrixMarket header `%%MatrixMarket matrix coordinate integer general`, found `{header}`"
        )));
    }
    if tokens[1] != "matrix" || tokens[2] != "coordinate" {
        return Err(lines.err(format!(
            "`{header}`: only sparse `matrix coordinate` files are supported (10x writes these)"
        )));
    }
    match tokens[3].as_str() {
        "integer" | "real" | "double" => {}
        "pattern" => {
            return Err(
                lines.err("a `pattern` matrix has no values, so it holds no counts; export the counts")
            )
        }
        other => {
            return Err(lines.err(format!(
                "unsupported value field `{other}` (expected integer or real)"
            )))
        }
    }
    if tokens[4] != "general" {
        return Err(lines.err(format!(
            "unsupported symmetry `{}` (expected general: a genes × cells matrix is not symmetric)",
            tokens[4]
        )));
    }

    // Size line, after comments.
    let (n_genes, n_cells, nnz) = loop {
        let Some((line_no, line)) = lines.next_line()? else {
            return Err(CellsError::invalid(
                path,
                "the size line `n_genes n_cells n_entries` is missing",
            ));
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('%') {
            continue;
        }
        let parsed: Vec<Option<usize>> = line.split_whitespace().map(|t| t.parse().ok()).collect();
        match parsed.as_slice() {
            [Some(g), Some(c), Some(n)] => break (*g, *c, *n),
            _ => {
                return Err(err_at(
                    path,
                    line_no,
                    format!(
                        "expected the size line `n_genes n_cells n_entries` (three non-negative integers), \
                     found `{line}`"
                    ),
                ))
            }
        }
    };
    if n_genes > u32::MAX as usize || n_cells > u32::MAX as usize {
        return Err(lines.err(format!(
            "{n_genes} × {n_cells} is too large (at most 2^32 - 1 genes and cells)"
        )));
    }

    // Capacity from the header, capped so that a corrupt header cannot make us allocate absurdly.
    let cap = nnz.min(1 << 24);
    let mut genes = Vec::with_capacity(cap);
    let mut cells = Vec::with_capacity(cap);
    let mut values = Vec::with_capacity(cap);
    let mut seen = 0usize;
    while let Some((line_no, line)) = lines.next_line()? {
        let line = line.trim();
        if line.is_empty() || line.starts_with('%') {
            continue;
        }
        seen += 1;
        if seen > nnz {
            return Err(err_at(
                path,
                line_no,
                format!(
                    "more entries than the {nnz} announced by the size line; the header or the file is wrong"
                ),
            ));
        }
        let mut it = line.split_whitespace();
        let (Some(g), Some(c), Some(v), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(err_at(
                path,
                line_no,
                format!("expected `gene cell value` (three fields), found `{line}`"),
            ));
        };
        let g: usize = g.parse().map_err(|_| {
            err_at(
                path,
                line_no,
                format!("gene (row) index `{g}` is not a non-negative integer"),
            )
        })?;
        let c: usize = c.parse().map_err(|_| {
            err_at(
                path,
                line_no,
                format!("cell (column) index `{c}` is not a non-negative integer"),
            )
        })?;
        if g == 0 || g > n_genes {
            return Err(err_at(
                path,
                line_no,
                format!("gene (row) index {g} out of range 1..={n_genes} (indices are 1-based)"),
            ));
        }
        if c == 0 || c > n_cells {
            return Err(err_at(
                path,
                line_no,
                format!("cell (column) index {c} out of range 1..={n_cells} (indices are 1-based)"),
            ));
        }
        let v: f64 = v
            .parse()
            .map_err(|_| err_at(path, line_no, format!("value `{v}` is not a number")))?;
        if !v.is_finite() {
            return Err(err_at(path, line_no, format!("value `{v}` is not finite")));
        }
        genes.push((g - 1) as u32);
        cells.push((c - 1) as u32);
        values.push(v as f32);
    }
    if seen != nnz {
        return Err(CellsError::invalid(
            path,
            format!(
                "the size line announces {nnz} entries but the file has {seen}; the file is probably truncated"
            ),
        ));
    }
    Ok(Mtx {
        n_genes,
        n_cells,
        genes,
        cells,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, content: &str) {
        std::fs::write(dir.join(name), content).unwrap();
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    const GENES: &str = "G1\tA\nG2\tB\nG3\tC\nG4\tD\n";
    const BARCODES: &str = "AAA-1\nCCC-1\nGGG-1\n";
    // 4 genes × 3 cells. Cell 1: gene 2 = 5, gene 4 = 1 + 2 (duplicate); cell 2: gene 1 = 0 (explicit zero,
    // dropped), gene 3 = 7; cell 3: gene 4 = 1, gene 1 = 2 (out of order in the file).
    const MTX: &str = "%%MatrixMarket matrix coordinate integer general\n\
                       % a comment\n\
                       4 3 7\n\
                       4 1 1\n\
                       2 1 5\n\
                       4 1 2\n\
                       1 2 0\n\
                       3 2 7\n\
                       4 3 1\n\
                       1 3 2\n";

    fn v2_dir(mtx: &str, genes: &str, barcodes: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "matrix.mtx", mtx);
        write(dir.path(), "genes.tsv", genes);
        write(dir.path(), "barcodes.tsv", barcodes);
        dir
    }

    fn err_message(dir: &Path) -> String {
        match read_10x_mtx(dir, GeneIdColumn::Id) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn tenx_real_v3_folder() {
        let Some(dir) = crate::test_data::shared_data("cells/10x_chr21_v3") else {
            return;
        };
        let dir = dir.as_path();
        let m = read_10x_mtx(dir, GeneIdColumn::Id).unwrap();
        assert_eq!((m.n_genes, m.n_cells), (507, 1107));
        assert!(m.gene_ids[0].starts_with("ENSG"), "{}", m.gene_ids[0]);
        assert_eq!(m.gene_ids[0], "ENSG00000279493");
        let symbols = m.gene_symbols.as_ref().expect("symbols");
        assert_eq!(symbols[0], "CH507-9B2.2");
        assert_eq!(m.cell_names[0], "AAACCCAAGGAGAGTA-1");
        assert!(m.obs.is_empty());
        m.validate().unwrap();
        assert!(m.looks_like_counts());

        // Reference numbers computed once with python3 (gzip module, plain text parsing of matrix.mtx.gz,
        // no numpy/scipy): 23866 entry lines, all non-zero, no duplicate (gene, cell) pairs; the sum of all
        // values is 41549; the sums of the values with column (cell) 1, 2 and 3 are 36, 24 and 23.
        assert_eq!(m.values.len(), 23866);
        let total: f64 = m.values.iter().map(|&v| v as f64).sum();
        assert_eq!(total, 41549.0);
        let cell_total = |c: usize| m.cell(c).map(|(_, v)| v as f64).sum::<f64>();
        assert_eq!([cell_total(0), cell_total(1), cell_total(2)], [36.0, 24.0, 23.0]);

        let by_symbol = read_10x_mtx(dir, GeneIdColumn::Symbol).unwrap();
        assert_eq!(&by_symbol.gene_ids, symbols);
        assert_eq!(by_symbol.values, m.values);
    }

    #[test]
    fn tenx_v2_uncompressed() {
        let dir = v2_dir(MTX, GENES, BARCODES);
        let m = read_10x_mtx(dir.path(), GeneIdColumn::Id).unwrap();
        assert_eq!((m.n_cells, m.n_genes), (3, 4));
        assert_eq!(m.indptr, vec![0, 2, 3, 5]);
        assert_eq!(m.indices, vec![1, 3, 2, 0, 3]);
        assert_eq!(m.values, vec![5.0, 3.0, 7.0, 2.0, 1.0]);
        assert_eq!(m.gene_ids, vec!["G1", "G2", "G3", "G4"]);
        assert_eq!(
            m.gene_symbols,
            Some(vec!["A".into(), "B".into(), "C".into(), "D".into()])
        );
        assert_eq!(m.cell_names, vec!["AAA-1", "CCC-1", "GGG-1"]);
        assert_eq!(m.cell(0).collect::<Vec<_>>(), vec![(1, 5.0), (3, 3.0)]);
        m.validate().unwrap();
        assert!(m.looks_like_counts());

        let s = read_10x_mtx(dir.path(), GeneIdColumn::Symbol).unwrap();
        assert_eq!(s.gene_ids, vec!["A", "B", "C", "D"]);
        assert_eq!(s.values, m.values);
    }

    #[test]
    fn tenx_v3_gzip_by_magic_and_real_values() {
        let dir = tempfile::tempdir().unwrap();
        let mtx = MTX.replace("integer", "real").replace("2 1 5", "2 1 0.5");
        std::fs::write(dir.path().join("matrix.mtx.gz"), gzip(mtx.as_bytes())).unwrap();
        let features = "G1\tA\tGene Expression\nG2\tB\tGene Expression\nG3\tC\tAntibody Capture\nG4\tD\tGene Expression\n";
        std::fs::write(dir.path().join("features.tsv.gz"), gzip(features.as_bytes())).unwrap();
        // Named .gz but plain text: detected by content.
        write(dir.path(), "barcodes.tsv.gz", BARCODES);
        let m = read_10x_mtx(dir.path(), GeneIdColumn::Id).unwrap();
        assert_eq!(m.n_genes, 4, "all feature types are kept");
        assert_eq!(m.values, vec![0.5, 3.0, 7.0, 2.0, 1.0]);
        assert!(!m.looks_like_counts());
        assert_eq!(m.cell_names[2], "GGG-1");
    }

    #[test]
    fn tenx_single_column_genes() {
        let dir = v2_dir(MTX, "G1\nG2\nG3\nG4\n\n", BARCODES);
        let m = read_10x_mtx(dir.path(), GeneIdColumn::Id).unwrap();
        assert_eq!(m.gene_symbols, None);
        let e = read_10x_mtx(dir.path(), GeneIdColumn::Symbol)
            .unwrap_err()
            .to_string();
        assert!(e.contains("genes.tsv") && e.contains("GeneIdColumn::Id"), "{e}");
    }

    #[test]
    fn tenx_missing_barcodes() {
        let dir = v2_dir(MTX, GENES, BARCODES);
        std::fs::remove_file(dir.path().join("barcodes.tsv")).unwrap();
        let e = err_message(dir.path());
        assert!(
            e.contains("barcodes.tsv") && e.contains("a 10x folder needs"),
            "{e}"
        );
    }

    #[test]
    fn tenx_header_nnz_mismatch() {
        let dir = v2_dir(&MTX.replace("4 3 7", "4 3 8"), GENES, BARCODES);
        let e = err_message(dir.path());
        assert!(
            e.contains("matrix.mtx") && e.contains("announces 8 entries"),
            "{e}"
        );
        let dir = v2_dir(&MTX.replace("4 3 7", "4 3 6"), GENES, BARCODES);
        let e = err_message(dir.path());
        assert!(e.contains("matrix.mtx") && e.contains("line 10"), "{e}");
    }

    #[test]
    fn tenx_index_out_of_range() {
        let dir = v2_dir(&MTX.replace("4 3 1\n", "5 3 1\n"), GENES, BARCODES);
        let e = err_message(dir.path());
        assert!(
            e.contains("matrix.mtx") && e.contains("line 9") && e.contains("gene (row) index 5"),
            "{e}"
        );
        let dir = v2_dir(&MTX.replace("1 3 2\n", "1 0 2\n"), GENES, BARCODES);
        let e = err_message(dir.path());
        assert!(
            e.contains("matrix.mtx") && e.contains("cell (column) index 0"),
            "{e}"
        );
    }

    #[test]
    fn tenx_non_numeric_value() {
        let dir = v2_dir(&MTX.replace("3 2 7", "3 2 seven"), GENES, BARCODES);
        let e = err_message(dir.path());
        assert!(
            e.contains("matrix.mtx") && e.contains("line 8") && e.contains("`seven`"),
            "{e}"
        );
    }

    #[test]
    fn tenx_gene_count_mismatch() {
        let dir = v2_dir(MTX, "G1\tA\nG2\tB\nG3\tC\n", BARCODES);
        let e = err_message(dir.path());
        assert!(
            e.contains("matrix.mtx") && e.contains("genes.tsv") && e.contains("3 genes"),
            "{e}"
        );
        let dir = v2_dir(MTX, GENES, "AAA-1\nCCC-1\n");
        let e = err_message(dir.path());
        assert!(e.contains("barcodes.tsv") && e.contains("2 barcodes"), "{e}");
    }

    #[test]
    fn tenx_truncated_gzip() {
        let dir = v2_dir(MTX, GENES, BARCODES);
        std::fs::remove_file(dir.path().join("matrix.mtx")).unwrap();
        let mut big = String::from("%%MatrixMarket matrix coordinate integer general\n4 3 2000\n");
        for i in 0..2000 {
            big.push_str(&format!("{} {} {}\n", i % 4 + 1, i % 3 + 1, i));
        }
        let gz = gzip(big.as_bytes());
        std::fs::write(dir.path().join("matrix.mtx.gz"), &gz[..gz.len() / 2]).unwrap();
        let e = err_message(dir.path());
        assert!(e.contains("matrix.mtx.gz") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn tenx_bad_headers() {
        let dir = v2_dir(&MTX.replace("integer", "pattern"), GENES, BARCODES);
        let e = err_message(dir.path());
        assert!(e.contains("matrix.mtx") && e.contains("pattern"), "{e}");
        let dir = v2_dir(&MTX.replace("%%MatrixMarket", "hello"), GENES, BARCODES);
        assert!(err_message(dir.path()).contains("MatrixMarket header"));
        let dir = v2_dir("", GENES, BARCODES);
        assert!(err_message(dir.path()).contains("empty"));
        let dir = v2_dir(MTX, "G1\tA\n\nG2\tB\nG3\tC\nG4\tD\n", BARCODES);
        let e = err_message(dir.path());
        assert!(e.contains("genes.tsv") && e.contains("line 2 is blank"), "{e}");
        let e = err_message(Path::new("/nonexistent/folder"));
        assert!(
            e.contains("/nonexistent/folder") && e.contains("not a folder"),
            "{e}"
        );
    }
}
