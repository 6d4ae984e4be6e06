//! The `--input` JSON of `scinterp forward`: `{"input_ids": [[...], ...]}` for Geneformer, or
//! `{"gene_ids": [[...], ...], "values": [[...], ...]}` for scGPT; one list per cell, lengths may differ.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Cells as token lists, with one value per token for models that read values (scGPT).
#[derive(Clone, Debug, PartialEq)]
pub struct InputCells {
    pub tokens: Vec<Vec<u32>>,
    pub values: Option<Vec<Vec<f32>>>,
}

/// Reads ragged cells. Every cell must be non-empty, every id a non-negative integer, every value a
/// number, and each cell's values as long as its ids.
pub fn read_input_cells(path: &Path) -> Result<InputCells> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let ids_key = ["input_ids", "gene_ids"]
        .into_iter()
        .find(|k| value.get(*k).is_some_and(|v| v.is_array()));
    let Some(ids_key) = ids_key else {
        bail!(
            "{}: expected {{\"input_ids\": [[...], ...]}} (Geneformer) or {{\"gene_ids\": [[...], ...], \
             \"values\": [[...], ...]}} (scGPT), one list per cell",
            path.display()
        );
    };
    let tokens = read_lists(path, &value[ids_key], ids_key, |v| {
        v.as_u64().and_then(|v| u32::try_from(v).ok())
    })?;
    let values = match value.get("values") {
        None => None,
        Some(v) => {
            let values = read_lists(path, v, "values", |v| v.as_f64().map(|x| x as f32))?;
            if values.len() != tokens.len() {
                bail!(
                    "{}: {} cells in \"{ids_key}\" but {} in \"values\"",
                    path.display(),
                    tokens.len(),
                    values.len()
                );
            }
            for (c, (t, v)) in tokens.iter().zip(&values).enumerate() {
                if t.len() != v.len() {
                    bail!(
                        "{}: cell {c} has {} ids but {} values",
                        path.display(),
                        t.len(),
                        v.len()
                    );
                }
            }
            Some(values)
        }
    };
    if ids_key == "gene_ids" && values.is_none() {
        bail!(
            "{}: \"gene_ids\" without \"values\"; scGPT needs one expression value per gene",
            path.display()
        );
    }
    Ok(InputCells { tokens, values })
}

/// A list of non-empty lists, each element parsed by `parse` (which returns `None` for a bad element).
fn read_lists<T>(
    path: &Path,
    value: &serde_json::Value,
    key: &str,
    parse: impl Fn(&serde_json::Value) -> Option<T>,
) -> Result<Vec<Vec<T>>> {
    let Some(cells) = value.as_array() else {
        bail!("{}: \"{key}\" is not a list of lists", path.display());
    };
    if cells.is_empty() {
        bail!("{}: \"{key}\" holds no cells", path.display());
    }
    let mut out = Vec::with_capacity(cells.len());
    for (c, cell) in cells.iter().enumerate() {
        let Some(items) = cell.as_array() else {
            bail!("{}: {key} of cell {c} is not a list", path.display());
        };
        if items.is_empty() {
            bail!(
                "{}: cell {c} is empty; drop cells without tokens before running the model",
                path.display()
            );
        }
        let mut row = Vec::with_capacity(items.len());
        for (p, item) in items.iter().enumerate() {
            match parse(item) {
                Some(v) => row.push(v),
                None => bail!(
                    "{}: cell {c} position {p}: {item} is not a valid entry of \"{key}\"",
                    path.display()
                ),
            }
        }
        out.push(row);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<InputCells> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, text).unwrap();
        read_input_cells(&path)
    }

    #[test]
    fn reads_ragged_cells_and_rejects_bad_ones() {
        let cells = parse(r#"{"input_ids": [[2, 5, 3], [7]]}"#).unwrap();
        assert_eq!(cells.tokens, vec![vec![2, 5, 3], vec![7]]);
        assert_eq!(cells.values, None);
        let cells = parse(r#"{"gene_ids": [[9, 5], [7]], "values": [[-2, 3.5], [900]]}"#).unwrap();
        assert_eq!(cells.tokens, vec![vec![9, 5], vec![7]]);
        assert_eq!(cells.values, Some(vec![vec![-2.0, 3.5], vec![900.0]]));
        for bad in [
            r#"{"input_ids": []}"#,
            r#"{"input_ids": [[1], []]}"#,
            r#"{"input_ids": [[-1]]}"#,
            r#"{"input_ids": [[1.5]]}"#,
            r#"{"ids": [[1]]}"#,
            r#"{"gene_ids": [[1]]}"#,
            r#"{"gene_ids": [[1, 2]], "values": [[1]]}"#,
            r#"{"gene_ids": [[1], [2]], "values": [[1]]}"#,
            r#"{"gene_ids": [[1]], "values": [["a"]]}"#,
            "[[1]]",
            "nope",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("t.json"), "{bad}: {err}");
        }
    }
}
