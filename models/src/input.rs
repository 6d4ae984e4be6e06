//! Cells given to a model directly: the `--input` JSON of `scinterp forward` (`{"input_ids": [[...], ...]}`
//! for Geneformer, `{"gene_ids": [[...], ...], "values": [[...], ...]}` for scGPT; one list per cell,
//! lengths may differ), or a token store, checked against what the model reads.

use std::path::{Path, PathBuf};

use scinterp_engine::cuda::GpuPrecision;
use scinterp_engine::device::{forward_on, Backend};
use scinterp_engine::executor::Forward;
use scinterp_engine::EngineError;

use crate::registry::{InputKind, LoadedModel};
use crate::token_store::{TokenStore, TokenStoreError};

/// Cells that cannot be given to the model. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] TokenStoreError),
}

fn invalid(path: &Path, reason: String) -> InputError {
    InputError::Invalid {
        path: path.to_path_buf(),
        reason,
    }
}

/// Cells as token lists, with one value per token for models that read values (scGPT).
#[derive(Clone, Debug, PartialEq)]
pub struct InputCells {
    pub tokens: Vec<Vec<u32>>,
    pub values: Option<Vec<Vec<f32>>>,
}

/// Reads ragged cells. Every cell must be non-empty, every id a non-negative integer, every value a
/// number, and each cell's values as long as its ids.
pub fn read_input_cells(path: &Path) -> Result<InputCells, InputError> {
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|source| InputError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let ids_key = ["input_ids", "gene_ids"]
        .into_iter()
        .find(|k| value.get(*k).is_some_and(|v| v.is_array()));
    let Some(ids_key) = ids_key else {
        return Err(invalid(
            path,
            "expected {\"input_ids\": [[...], ...]} (Geneformer) or {\"gene_ids\": [[...], ...], \
             \"values\": [[...], ...]} (scGPT), one list per cell"
                .into(),
        ));
    };
    let tokens = read_lists(path, &value[ids_key], ids_key, |v| {
        v.as_u64().and_then(|v| u32::try_from(v).ok())
    })?;
    let values = match value.get("values") {
        None => None,
        Some(v) => {
            let values = read_lists(path, v, "values", |v| v.as_f64().map(|x| x as f32))?;
            if values.len() != tokens.len() {
                return Err(invalid(
                    path,
                    format!(
                        "{} cells in \"{ids_key}\" but {} in \"values\"",
                        tokens.len(),
                        values.len()
                    ),
                ));
            }
            for (c, (t, v)) in tokens.iter().zip(&values).enumerate() {
                if t.len() != v.len() {
                    return Err(invalid(
                        path,
                        format!("cell {c} has {} ids but {} values", t.len(), v.len()),
                    ));
                }
            }
            Some(values)
        }
    };
    if ids_key == "gene_ids" && values.is_none() {
        return Err(invalid(
            path,
            "\"gene_ids\" without \"values\"; scGPT needs one expression value per gene".into(),
        ));
    }
    Ok(InputCells { tokens, values })
}

/// Cells from a JSON file or a token store folder, checked against what `model` reads.
pub fn read_cells(input: &Path, model: &LoadedModel) -> Result<InputCells, InputError> {
    let cells = if input.is_dir() {
        let store = TokenStore::read(input)?;
        if store.manifest.tokenizer != model.tokenizer {
            return Err(invalid(
                input,
                format!(
                    "a {} token store, but --model is a {} model; tokenize the cells for this model \
                     (scinterp tokenize --model-kind ...)",
                    store.manifest.tokenizer, model.tokenizer
                ),
            ));
        }
        if store.cells.is_empty() {
            return Err(invalid(input, "the token store holds no cells".into()));
        }
        InputCells {
            tokens: store.cells,
            values: store.values,
        }
    } else {
        read_input_cells(input)?
    };
    match (model.input, cells.values.is_some()) {
        (InputKind::GeneValues, false) => {
            return Err(invalid(
                input,
                "scGPT needs an expression value for every gene: give {\"gene_ids\": [[...]], \"values\": \
                 [[...]]} or an scGPT token store"
                    .into(),
            ))
        }
        (InputKind::RankTokens, true) => {
            return Err(invalid(
                input,
                "these cells carry expression values (scGPT input), but --model is a Geneformer model, \
                 which reads rank-ordered token ids only ({\"input_ids\": [[...]]} or a Geneformer token store)"
                    .into(),
            ))
        }
        _ => {}
    }
    // Checked here, before any output exists, rather than in the middle of a run (which would leave a
    // half-written store behind).
    if let Some(max) = model.encoder.dims().max_len {
        if let Some((c, cell)) = cells.tokens.iter().enumerate().find(|(_, t)| t.len() > max) {
            let over = cells.tokens.iter().filter(|t| t.len() > max).count();
            return Err(invalid(
                input,
                format!(
                    "cell {c} has {} tokens but the model accepts at most {max} (max_position_embeddings; \
                     {over} cells are too long); tokenize the cells again with --max-len {max}",
                    cell.len()
                ),
            ));
        }
    }
    if let Some(cls) = model.embedding_token {
        let without = cells.tokens.iter().filter(|c| c[0] != cls).count();
        if without > 0 {
            tracing::warn!(
                "{}: {without} of {} cells do not start with <cls> (id {cls}); their cell_embedding is \
                 the state of their first gene",
                input.display(),
                cells.tokens.len()
            );
        }
    }
    Ok(cells)
}

/// A list of non-empty lists, each element parsed by `parse` (which returns `None` for a bad element).
fn read_lists<T>(
    path: &Path,
    value: &serde_json::Value,
    key: &str,
    parse: impl Fn(&serde_json::Value) -> Option<T>,
) -> Result<Vec<Vec<T>>, InputError> {
    let Some(cells) = value.as_array() else {
        return Err(invalid(path, format!("\"{key}\" is not a list of lists")));
    };
    if cells.is_empty() {
        return Err(invalid(path, format!("\"{key}\" holds no cells")));
    }
    let mut out = Vec::with_capacity(cells.len());
    for (c, cell) in cells.iter().enumerate() {
        let Some(items) = cell.as_array() else {
            return Err(invalid(path, format!("{key} of cell {c} is not a list")));
        };
        if items.is_empty() {
            return Err(invalid(
                path,
                format!("cell {c} is empty; drop cells without tokens before running the model"),
            ));
        }
        let mut row = Vec::with_capacity(items.len());
        for (p, item) in items.iter().enumerate() {
            match parse(item) {
                Some(v) => row.push(v),
                None => {
                    return Err(invalid(
                        path,
                        format!("cell {c} position {p}: {item} is not a valid entry of \"{key}\""),
                    ))
                }
            }
        }
        out.push(row);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<InputCells, InputError> {
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

/// A model with the cells of a token store and what runs its blocks: what `trace` and `effects` read.
pub struct ModelOnCells {
    pub model: LoadedModel,
    pub cells: InputCells,
    /// Token ids whose positions the SAEs never read (from the store's tokenizer and the model).
    pub special_ids: Vec<u32>,
    /// The CPU, or the model's weights on a GPU.
    pub forward: Box<dyn Forward>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelOnCellsError {
    #[error(transparent)]
    Model(#[from] crate::ModelError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    TokenStore(#[from] TokenStoreError),
    #[error("uploading the model to the GPU (--device cpu avoids the GPU): {0}")]
    Upload(#[source] EngineError),
}

impl ModelOnCells {
    /// Loads the model folder (with its MLM head when `with_head`), the store's cells (checked against the
    /// model's tokenizer) and their special ids, and places the model on `backend`.
    pub fn open(
        model: &Path,
        store: &Path,
        with_head: bool,
        backend: Backend,
        precision: GpuPrecision,
    ) -> Result<Self, ModelOnCellsError> {
        let model = crate::load(model, with_head)?;
        let cells = read_cells(store, &model)?;
        let special_ids = crate::extract::special_token_ids(store, &model)?;
        let forward =
            forward_on(backend, model.encoder.as_ref(), precision).map_err(ModelOnCellsError::Upload)?;
        if backend == Backend::Cuda {
            tracing::info!("forward pass: {}", forward.name());
        }
        Ok(ModelOnCells {
            model,
            cells,
            special_ids,
            forward,
        })
    }
    /// The model, its backend and the cells, as the engine's pipelines read them.
    pub fn view(&self) -> scinterp_engine::ModelAndCells<'_> {
        scinterp_engine::ModelAndCells {
            encoder: self.model.encoder.as_ref(),
            forward: self.forward.as_ref(),
            tokens: &self.cells.tokens,
            values: self.cells.values.as_deref(),
            special_ids: &self.special_ids,
        }
    }
}
