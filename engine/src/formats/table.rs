//! Tables (edges, feature catalogues, annotations): named, typed columns written as Parquet
//! (Snappy-compressed, row groups of 1M rows; `pandas.read_parquet` opens them) or as TSV, chosen by the
//! file's extension. Written atomically ([`super::atomic`]: temporary name, fsync, rename).
//!
//! [`Table::read`] reads either format back: Parquet columns keep their type (INT32/INT64/BOOLEAN as
//! integers, FLOAT/DOUBLE as floats, byte arrays as text; optional columns are accepted, a null reads as
//! an empty text or NaN); TSV columns are text, converted by the typed getters, whose errors name the
//! file, the column and the row.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, ConvertedType, Repetition, Type as PhysicalType};
use parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use parquet::data_type::{ByteArray, ByteArrayType, DataType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use super::atomic::{AtomicFile, FileError};

/// A table that cannot be written or read; every message names the file (and the column and row
/// where it applies).
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{}: the table format is chosen by the extension; use .parquet or .tsv", .0.display())]
    WriteExtension(PathBuf),
    #[error("{}: tables are read by their extension; expected .parquet or .tsv", .0.display())]
    ReadExtension(PathBuf),
    #[error("column {name} has {rows} rows, expected {expected} (internal error)")]
    Ragged {
        name: String,
        rows: usize,
        expected: usize,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("writing {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("reading {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{}: column {name} has {rows} rows, expected {expected}", path.display())]
    RaggedFile {
        path: PathBuf,
        name: String,
        rows: usize,
        expected: usize,
    },
    #[error("{table}: no column `{name}` (columns: {columns})")]
    NoColumn {
        table: String,
        name: String,
        columns: String,
    },
    #[error("{table}: column `{name}`, row {row}: `{value}` is not {what}")]
    BadValue {
        table: String,
        name: String,
        row: usize,
        value: String,
        what: &'static str,
    },
    #[error("{table}: column `{name}` holds floats, expected integers")]
    NotIntegers { table: String, name: String },
}

type Result<T, E = TableError> = std::result::Result<T, E>;

/// Why a file could not be parsed (wrapped with its path by [`Table::read`]).
type Reason = String;

fn reason(e: impl std::fmt::Display) -> Reason {
    e.to_string()
}

/// The format of a command's output tables (`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    Parquet,
    Tsv,
}

impl TableFormat {
    pub fn ext(self) -> &'static str {
        match self {
            TableFormat::Parquet => "parquet",
            TableFormat::Tsv => "tsv",
        }
    }

    /// `name.<ext>` in `dir`.
    pub fn path(self, dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.{}", self.ext()))
    }
}

/// One column's values.
pub enum Column {
    Str(Vec<String>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Str(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn cell(&self, row: usize) -> String {
        match self {
            Column::Str(v) => v[row].replace(['\t', '\n'], " "),
            Column::I64(v) => v[row].to_string(),
            // Shortest text that reads back to the same f64.
            Column::F64(v) => format!("{:?}", v[row]),
        }
    }
}

/// Named columns of equal length.
#[derive(Default)]
pub struct Table {
    columns: Vec<(String, Column)>,
    /// The file a table was read from (for messages).
    source: Option<PathBuf>,
}

const ROW_GROUP_ROWS: usize = 1 << 20;

impl Table {
    pub fn new() -> Self {
        Table::default()
    }

    pub fn column(mut self, name: &str, values: Column) -> Self {
        self.columns.push((name.to_string(), values));
        self
    }

    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, |(_, c)| c.len())
    }

    /// Writes `.parquet` or `.tsv` by the extension of `path`, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some((name, c)) = self.columns.iter().find(|(_, c)| c.len() != self.rows()) {
            return Err(TableError::Ragged {
                name: name.clone(),
                rows: c.len(),
                expected: self.rows(),
            });
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "parquet" | "tsv") {
            return Err(TableError::WriteExtension(path.to_path_buf()));
        }
        let mut file = AtomicFile::create(path)?;
        let written = if ext == "parquet" {
            self.write_parquet(file.file())
        } else {
            self.write_tsv(file.file())
        };
        written.map_err(|reason| TableError::Write {
            path: file.temporary().to_path_buf(),
            reason,
        })?;
        Ok(file.commit()?)
    }

    fn write_tsv(&self, file: &mut std::fs::File) -> Result<(), Reason> {
        let mut w = std::io::BufWriter::new(file);
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| n.as_str()).collect();
        writeln!(w, "{}", names.join("\t")).map_err(reason)?;
        for row in 0..self.rows() {
            let line: Vec<String> = self.columns.iter().map(|(_, c)| c.cell(row)).collect();
            writeln!(w, "{}", line.join("\t")).map_err(reason)?;
        }
        w.flush().map_err(reason)
    }

    fn write_parquet(&self, file: &mut std::fs::File) -> Result<(), Reason> {
        self.write_parquet_inner(file).map_err(reason)
    }

    fn write_parquet_inner(&self, file: &mut std::fs::File) -> parquet::errors::Result<()> {
        let fields = self
            .columns
            .iter()
            .map(|(name, c)| {
                let (physical, converted) = match c {
                    Column::Str(_) => (PhysicalType::BYTE_ARRAY, ConvertedType::UTF8),
                    Column::I64(_) => (PhysicalType::INT64, ConvertedType::NONE),
                    Column::F64(_) => (PhysicalType::DOUBLE, ConvertedType::NONE),
                };
                Type::primitive_type_builder(name, physical)
                    .with_repetition(Repetition::REQUIRED)
                    .with_converted_type(converted)
                    .build()
                    .map(Arc::new)
            })
            .collect::<parquet::errors::Result<Vec<_>>>()?;
        let schema = Arc::new(Type::group_type_builder("table").with_fields(fields).build()?);
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build(),
        );
        let mut writer = SerializedFileWriter::new(file, schema, props)?;
        let mut start = 0;
        loop {
            let end = (start + ROW_GROUP_ROWS).min(self.rows());
            let mut group = writer.next_row_group()?;
            let mut index = 0;
            while let Some(mut col) = group.next_column()? {
                match &self.columns[index].1 {
                    Column::Str(v) => {
                        let values: Vec<ByteArray> = v[start..end]
                            .iter()
                            .map(|s| ByteArray::from(s.as_str()))
                            .collect();
                        col.typed::<ByteArrayType>().write_batch(&values, None, None)?;
                    }
                    Column::I64(v) => {
                        col.typed::<Int64Type>().write_batch(&v[start..end], None, None)?;
                    }
                    Column::F64(v) => {
                        col.typed::<DoubleType>()
                            .write_batch(&v[start..end], None, None)?;
                    }
                }
                col.close()?;
                index += 1;
            }
            group.close()?;
            start = end;
            if start >= self.rows() {
                break;
            }
        }
        writer.close()?;
        Ok(())
    }
}

impl Table {
    /// Reads a `.parquet` or `.tsv` table (by the extension).
    pub fn read(path: &Path) -> Result<Table> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let columns = match ext {
            "parquet" => read_parquet(path),
            "tsv" => read_tsv(path),
            _ => return Err(TableError::ReadExtension(path.to_path_buf())),
        }
        .map_err(|reason| TableError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        let table = Table {
            columns,
            source: Some(path.to_path_buf()),
        };
        if let Some((name, c)) = table.columns.iter().find(|(_, c)| c.len() != table.rows()) {
            return Err(TableError::RaggedFile {
                path: path.to_path_buf(),
                name: name.clone(),
                rows: c.len(),
                expected: table.rows(),
            });
        }
        Ok(table)
    }

    fn source(&self) -> String {
        self.source
            .as_ref()
            .map_or_else(|| "table".to_string(), |p| p.display().to_string())
    }

    pub fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The column `name`, as stored.
    pub fn get(&self, name: &str) -> Result<&Column> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
            .ok_or_else(|| TableError::NoColumn {
                table: self.source(),
                name: name.to_string(),
                columns: self.names().join(", "),
            })
    }

    /// An integer column (TSV text is parsed; a float column is refused).
    pub fn i64s(&self, name: &str) -> Result<Cow<'_, [i64]>> {
        match self.get(name)? {
            Column::I64(v) => Ok(Cow::Borrowed(v)),
            Column::Str(v) => v
                .iter()
                .enumerate()
                .map(|(row, s)| {
                    s.trim().parse::<i64>().map_err(|_| TableError::BadValue {
                        table: self.source(),
                        name: name.to_string(),
                        row: row + 1,
                        value: s.clone(),
                        what: "an integer",
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Cow::Owned),
            Column::F64(_) => Err(TableError::NotIntegers {
                table: self.source(),
                name: name.to_string(),
            }),
        }
    }

    /// A float column (integers are converted; TSV text is parsed, `NaN`/`inf` included).
    pub fn f64s(&self, name: &str) -> Result<Cow<'_, [f64]>> {
        match self.get(name)? {
            Column::F64(v) => Ok(Cow::Borrowed(v)),
            Column::I64(v) => Ok(Cow::Owned(v.iter().map(|&x| x as f64).collect())),
            Column::Str(v) => v
                .iter()
                .enumerate()
                .map(|(row, s)| {
                    s.trim().parse::<f64>().map_err(|_| TableError::BadValue {
                        table: self.source(),
                        name: name.to_string(),
                        row: row + 1,
                        value: s.clone(),
                        what: "a number",
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Cow::Owned),
        }
    }

    /// A text column (numbers are formatted).
    pub fn strs(&self, name: &str) -> Result<Cow<'_, [String]>> {
        match self.get(name)? {
            Column::Str(v) => Ok(Cow::Borrowed(v)),
            c => Ok(Cow::Owned((0..c.len()).map(|r| c.cell(r)).collect())),
        }
    }
}

fn read_tsv(path: &Path) -> Result<Vec<(String, Column)>, Reason> {
    let text = std::fs::read_to_string(path).map_err(reason)?;
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let header = lines
        .next()
        .filter(|h| !h.is_empty())
        .ok_or("empty file, no header line")?;
    let names: Vec<String> = header.split('\t').map(|s| s.trim().to_string()).collect();
    let mut values: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    for (i, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != names.len() {
            return Err(format!(
                "line {}: {} fields, but the header names {} columns",
                i + 2,
                fields.len(),
                names.len()
            ));
        }
        for (col, f) in values.iter_mut().zip(fields) {
            col.push(f.to_string());
        }
    }
    Ok(names
        .into_iter()
        .zip(values.into_iter().map(Column::Str))
        .collect())
}

/// All values of one column chunk: the non-null values and, for optional columns, the levels.
fn read_chunk<T: DataType>(
    reader: &mut ColumnReaderImpl<T>,
    rows: usize,
) -> Result<(Vec<T::T>, Vec<i16>), Reason> {
    let mut values = Vec::with_capacity(rows);
    let mut defs = Vec::with_capacity(rows);
    loop {
        let (records, _, _) = reader
            .read_records(rows.max(1), Some(&mut defs), None, &mut values)
            .map_err(reason)?;
        if records == 0 {
            break;
        }
    }
    Ok((values, defs))
}

/// Spreads the non-null `values` over the rows marked defined in `defs` (all rows when `defs` is
/// empty, i.e. the column is required), filling nulls with `null`.
fn with_nulls<T: Clone>(values: Vec<T>, defs: &[i16], max_def: i16, null: T) -> Vec<T> {
    if max_def == 0 || defs.is_empty() {
        return values;
    }
    let mut it = values.into_iter();
    defs.iter()
        .map(|&d| {
            if d == max_def {
                it.next().unwrap_or_else(|| null.clone())
            } else {
                null.clone()
            }
        })
        .collect()
}

fn read_parquet(path: &Path) -> Result<Vec<(String, Column)>, Reason> {
    let file = std::fs::File::open(path).map_err(reason)?;
    let reader = SerializedFileReader::new(file).map_err(reason)?;
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema_descr();
    let n = schema.num_columns();
    let mut columns: Vec<(String, Option<Column>)> = (0..n)
        .map(|j| (schema.column(j).name().to_string(), None))
        .collect();
    for j in 0..n {
        if schema.column(j).max_rep_level() > 0 {
            return Err(format!(
                "column {} is nested (a list); expected flat columns",
                schema.column(j).path()
            ));
        }
    }
    for g in 0..meta.num_row_groups() {
        let group = reader.get_row_group(g).map_err(reason)?;
        let rows = group.metadata().num_rows().max(0) as usize;
        for (j, (name, slot)) in columns.iter_mut().enumerate() {
            let max_def = schema.column(j).max_def_level();
            let part = match group.get_column_reader(j).map_err(reason)? {
                ColumnReader::Int64ColumnReader(mut r) => {
                    let (v, d) = read_chunk(&mut r, rows)?;
                    if max_def > 0 && d.iter().any(|&x| x < max_def) {
                        return Err(format!("column {name} has nulls; expected integers in every row"));
                    }
                    Column::I64(v)
                }
                ColumnReader::Int32ColumnReader(mut r) => {
                    let (v, d) = read_chunk(&mut r, rows)?;
                    if max_def > 0 && d.iter().any(|&x| x < max_def) {
                        return Err(format!("column {name} has nulls; expected integers in every row"));
                    }
                    Column::I64(v.into_iter().map(i64::from).collect())
                }
                ColumnReader::BoolColumnReader(mut r) => {
                    let (v, d) = read_chunk(&mut r, rows)?;
                    if max_def > 0 && d.iter().any(|&x| x < max_def) {
                        return Err(format!("column {name} has nulls; expected values in every row"));
                    }
                    Column::I64(v.into_iter().map(i64::from).collect())
                }
                ColumnReader::DoubleColumnReader(mut r) => {
                    let (v, d) = read_chunk(&mut r, rows)?;
                    Column::F64(with_nulls(v, &d, max_def, f64::NAN))
                }
                ColumnReader::FloatColumnReader(mut r) => {
                    let (v, d) = read_chunk(&mut r, rows)?;
                    let v: Vec<f64> = v.into_iter().map(f64::from).collect();
                    Column::F64(with_nulls(v, &d, max_def, f64::NAN))
                }
                ColumnReader::ByteArrayColumnReader(mut r) => {
                    let (v, d) = read_chunk(&mut r, rows)?;
                    let v: Vec<String> = v
                        .iter()
                        .map(|b| String::from_utf8_lossy(b.data()).into_owned())
                        .collect();
                    Column::Str(with_nulls(v, &d, max_def, String::new()))
                }
                _ => {
                    return Err(format!(
                        "column {name}: unsupported Parquet type (expected int, float, bool or text)"
                    ))
                }
            };
            match (slot.as_mut(), part) {
                (None, part) => *slot = Some(part),
                (Some(Column::I64(a)), Column::I64(b)) => a.extend(b),
                (Some(Column::F64(a)), Column::F64(b)) => a.extend(b),
                (Some(Column::Str(a)), Column::Str(b)) => a.extend(b),
                _ => return Err(format!("column {name} changes type between row groups")),
            }
        }
    }
    Ok(columns
        .into_iter()
        .map(|(name, c)| (name, c.unwrap_or(Column::Str(Vec::new()))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    #[test]
    fn parquet_and_tsv_hold_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::new()
            .column("hook", Column::Str(vec!["a".into(), "b\tc".into(), "d".into()]))
            .column("feature", Column::I64(vec![1, -2, 3]))
            .column("p", Column::F64(vec![0.5, 1e-300, f64::NAN]));
        let pq = dir.path().join("t.parquet");
        table.write(&pq).unwrap();
        let reader = SerializedFileReader::new(std::fs::File::open(&pq).unwrap()).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 3);
        let rows: Vec<_> = reader.get_row_iter(None).unwrap().map(|r| r.unwrap()).collect();
        let fields: Vec<Vec<Field>> = rows
            .iter()
            .map(|r| r.get_column_iter().map(|(_, f)| f.clone()).collect())
            .collect();
        assert_eq!(fields[1][0], Field::Str("b\tc".into()));
        assert_eq!(fields[1][1], Field::Long(-2));
        assert_eq!(fields[1][2], Field::Double(1e-300));
        let tsv = dir.path().join("t.tsv");
        table.write(&tsv).unwrap();
        let text = std::fs::read_to_string(&tsv).unwrap();
        assert_eq!(text.lines().nth(2).unwrap(), "b c\t-2\t1e-300");
        assert!(table.write(&dir.path().join("t.csv")).is_err());
        assert!(!dir.path().join("t.csv.partial").exists());
    }

    #[test]
    fn reads_back_parquet_and_tsv() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::new()
            .column("name", Column::Str(vec!["a".into(), "".into(), "c".into()]))
            .column("n", Column::I64(vec![1, -2, 3]))
            .column("x", Column::F64(vec![0.5, 1e-300, f64::NAN]));
        for ext in ["parquet", "tsv"] {
            let path = dir.path().join(format!("t.{ext}"));
            table.write(&path).unwrap();
            let back = Table::read(&path).unwrap();
            assert_eq!(back.rows(), 3);
            assert_eq!(back.names(), ["name", "n", "x"]);
            assert_eq!(&*back.strs("name").unwrap(), ["a", "", "c"]);
            assert_eq!(&*back.i64s("n").unwrap(), [1, -2, 3]);
            let x = back.f64s("x").unwrap();
            assert_eq!((x[0], x[1]), (0.5, 1e-300));
            assert!(x[2].is_nan());
            assert_eq!(&*back.f64s("n").unwrap(), [1.0, -2.0, 3.0]);
            assert_eq!(&*back.strs("n").unwrap(), ["1", "-2", "3"]);
            let err = back.i64s("missing").unwrap_err().to_string();
            assert!(
                err.contains(&format!("t.{ext}")) && err.contains("columns: name, n, x"),
                "{err}"
            );
        }
        let bad = dir.path().join("bad.tsv");
        std::fs::write(&bad, "a\tb\n1\tx\n").unwrap();
        let t = Table::read(&bad).unwrap();
        let err = t.i64s("b").unwrap_err().to_string();
        assert!(
            err.contains("bad.tsv") && err.contains("row 1") && err.contains("`x`"),
            "{err}"
        );
        std::fs::write(&bad, "a\tb\n1\n").unwrap();
        assert!(Table::read(&bad).is_err());
        // A table that spans row groups reads back whole.
        let big = Table::new().column("i", Column::I64((0..(ROW_GROUP_ROWS as i64 + 5)).collect()));
        let path = dir.path().join("big.parquet");
        big.write(&path).unwrap();
        let back = Table::read(&path).unwrap();
        assert_eq!(back.rows(), ROW_GROUP_ROWS + 5);
        assert_eq!(
            back.i64s("i").unwrap()[ROW_GROUP_ROWS + 4],
            ROW_GROUP_ROWS as i64 + 4
        );
    }
}
