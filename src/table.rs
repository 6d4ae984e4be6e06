//! Output tables (edges, and later feature catalogues and annotations): named, typed columns written
//! as Parquet (Snappy-compressed, row groups of 1M rows; `pandas.read_parquet` opens them) or as TSV,
//! chosen by the file's extension. Written to a temporary name, fsynced and renamed into place.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use parquet::basic::{Compression, ConvertedType, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

/// One column's values.
pub enum Column {
    Str(Vec<String>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Str(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::F64(v) => v.len(),
        }
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

    /// Writes `.parquet` or `.tsv` by the extension of `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some((name, c)) = self.columns.iter().find(|(_, c)| c.len() != self.rows()) {
            bail!(
                "column {name} has {} rows, expected {} (internal error)",
                c.len(),
                self.rows()
            );
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "parquet" | "tsv") {
            bail!(
                "{}: the table format is chosen by the extension; use .parquet or .tsv",
                path.display()
            );
        }
        let tmp = path.with_extension(format!("{ext}.partial"));
        let file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let written = if ext == "parquet" {
            self.write_parquet(file)
        } else {
            self.write_tsv(file)
        };
        written.with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", tmp.display()))
    }

    fn write_tsv(&self, file: std::fs::File) -> Result<()> {
        let mut w = std::io::BufWriter::new(file);
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| n.as_str()).collect();
        writeln!(w, "{}", names.join("\t"))?;
        for row in 0..self.rows() {
            let line: Vec<String> = self.columns.iter().map(|(_, c)| c.cell(row)).collect();
            writeln!(w, "{}", line.join("\t"))?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    }

    fn write_parquet(&self, file: std::fs::File) -> Result<()> {
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
            .collect::<Result<Vec<_>, _>>()?;
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
}
