//! The `--input` JSON of `scinterp forward`: `{"input_ids": [[...], [...]]}`, one list per cell.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Reads ragged token lists. Every cell must be non-empty and every id a non-negative integer.
pub fn read_input_ids(path: &Path) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let Some(cells) = value.get("input_ids").and_then(|v| v.as_array()) else {
        bail!(
            "{}: expected an object {{\"input_ids\": [[...], ...]}} with one list of token ids per cell",
            path.display()
        );
    };
    if cells.is_empty() {
        bail!("{}: \"input_ids\" holds no cells", path.display());
    }
    let mut out = Vec::with_capacity(cells.len());
    for (c, cell) in cells.iter().enumerate() {
        let Some(ids) = cell.as_array() else {
            bail!("{}: cell {c} is not a list of token ids", path.display());
        };
        if ids.is_empty() {
            bail!(
                "{}: cell {c} is empty; drop cells without tokens before running the model",
                path.display()
            );
        }
        let mut row = Vec::with_capacity(ids.len());
        for (p, id) in ids.iter().enumerate() {
            match id.as_u64().and_then(|v| u32::try_from(v).ok()) {
                Some(v) => row.push(v),
                None => bail!(
                    "{}: cell {c} position {p}: {id} is not a valid token id (a non-negative integer)",
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

    fn parse(text: &str) -> Result<Vec<Vec<u32>>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, text).unwrap();
        read_input_ids(&path)
    }

    #[test]
    fn reads_ragged_cells_and_rejects_bad_ones() {
        assert_eq!(
            parse(r#"{"input_ids": [[2, 5, 3], [7]]}"#).unwrap(),
            vec![vec![2, 5, 3], vec![7]]
        );
        for bad in [
            r#"{"input_ids": []}"#,
            r#"{"input_ids": [[1], []]}"#,
            r#"{"input_ids": [[-1]]}"#,
            r#"{"input_ids": [[1.5]]}"#,
            r#"{"ids": [[1]]}"#,
            "[[1]]",
            "nope",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("t.json"), "{bad}: {err}");
        }
    }
}
