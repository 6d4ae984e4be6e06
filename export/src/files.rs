//! A tool folder: `tool.onnx`, `tool.safetensors` and `card.json`. Written into a staging folder beside
//! the target and renamed into place once complete; read back with every file checked against the card
//! (hashes, sizes, shapes), so that a truncated file or a card from another tool is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::cells::PanelGene;
use crate::error::ExportError;
use crate::operator::{Dense, Surrogate};
use crate::tool::{Stage, Tool};

pub const CARD: &str = "card.json";
pub const WEIGHTS: &str = "tool.safetensors";
pub const ONNX: &str = "tool.onnx";
pub const FORMAT: &str = "scinterp-tool";
pub const FORMAT_VERSION: u32 = 1;

/// The card: what a tool reads, what it outputs, how it was made and how it scored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Card {
    pub format: String,
    pub format_version: u32,
    /// Panel genes in input column order.
    pub panel: Vec<PanelGene>,
    pub preprocessing: String,
    pub outputs: BTreeMap<String, String>,
    /// Cell-type labels in the order of `class_probabilities`.
    pub labels: Vec<String>,
    pub label_column: String,
    pub d_latent: usize,
    pub operator: serde_json::Value,
    pub adaptor: serde_json::Value,
    pub pseudotime: serde_json::Value,
    pub metrics: serde_json::Value,
    pub provenance: serde_json::Value,
    /// File name → {bytes, blake3}.
    pub files: BTreeMap<String, FileEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub bytes: u64,
    pub blake3: String,
}

pub const PREPROCESSING: &str =
    "counts of each cell divided by its total over all genes of the input, × 10,000 \
    (CP10k), then log1p; panel genes in card order (missing genes: 0)";

/// The tensors of a tool, by name (f32, row-major).
fn tensors(tool: &Tool) -> Vec<(&'static str, Vec<usize>, &[f32])> {
    let mut t: Vec<(&'static str, Vec<usize>, &[f32])> = Vec::new();
    match &tool.stage {
        Stage::Operator(op) => t.push(("operator", vec![op.rows, op.cols], &op.data)),
        Stage::Surrogate(s) => {
            t.push(("surrogate_left", vec![s.left.rows, s.left.cols], &s.left.data));
            t.push(("surrogate_right", vec![s.right.rows, s.right.cols], &s.right.data));
        }
    }
    let d = tool.d_latent();
    t.push(("adaptor_weight", vec![tool.adaptor.rows, d], &tool.adaptor.data));
    t.push(("adaptor_bias", vec![d], &tool.adaptor_bias));
    t.push(("pseudotime_weight", vec![d, 1], &tool.pseudotime.data));
    t.push((
        "pseudotime_bias",
        vec![1],
        std::slice::from_ref(&tool.pseudotime_bias),
    ));
    t.push(("classes_weight", vec![d, tool.n_classes()], &tool.classes.data));
    t.push(("classes_bias", vec![tool.n_classes()], &tool.classes_bias));
    t
}

/// The safetensors bytes of a tool.
pub fn safetensors_bytes(tool: &Tool) -> Result<Vec<u8>, ExportError> {
    let list = tensors(tool);
    let bytes: Vec<Vec<u8>> = list
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = list
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (name.to_string(), v))
                .map_err(|e| ExportError::Numeric(format!("tensor {name}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize(views, None).map_err(|e| ExportError::Numeric(format!("safetensors: {e}")))
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Writes the tool folder `out` (refusing an existing one unless `overwrite`): all files go to a staging
/// folder `.<name>.partial` beside it, which is renamed to `out` once every file is written and synced.
pub fn write_tool(
    out: &Path,
    tool: &Tool,
    card: &mut Card,
    onnx_metadata: &[(String, String)],
    overwrite: bool,
) -> Result<(), ExportError> {
    if out.exists() && !overwrite {
        return Err(ExportError::option(
            "--out",
            format!("{} exists; pass --overwrite to replace it", out.display()),
        ));
    }
    let weights = safetensors_bytes(tool)?;
    let onnx = crate::onnx::to_onnx(tool, onnx_metadata);
    card.files = BTreeMap::from([
        (
            WEIGHTS.to_string(),
            FileEntry {
                bytes: weights.len() as u64,
                blake3: hash(&weights),
            },
        ),
        (
            ONNX.to_string(),
            FileEntry {
                bytes: onnx.len() as u64,
                blake3: hash(&onnx),
            },
        ),
    ]);
    let card_text = serde_json::to_string_pretty(card).map_err(|e| ExportError::Numeric(e.to_string()))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tool".into());
    let staging = out.with_file_name(format!(".{name}.partial"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(ExportError::io(
            &staging,
            "cannot remove the stale staging folder",
        ))?;
    }
    std::fs::create_dir_all(&staging).map_err(ExportError::io(&staging, "cannot create"))?;
    for (file, bytes) in [
        (WEIGHTS, &weights),
        (ONNX, &onnx),
        (CARD, &card_text.into_bytes()),
    ] {
        let path = staging.join(file);
        let mut f = std::fs::File::create(&path).map_err(ExportError::io(&path, "cannot create"))?;
        std::io::Write::write_all(&mut f, bytes).map_err(ExportError::io(&path, "cannot write"))?;
        f.sync_all().map_err(ExportError::io(&path, "cannot write"))?;
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(ExportError::io(out, "cannot replace"))?;
    }
    std::fs::rename(&staging, out).map_err(ExportError::io(out, "cannot move into place"))?;
    scinterp_engine::formats::atomic::sync_parent(out);
    Ok(())
}

/// A tool read back from its folder.
pub struct LoadedTool {
    pub dir: PathBuf,
    pub card: Card,
    pub tool: Tool,
}

/// Reads a tool folder, checking the card and the weights against each other.
pub fn read_tool(dir: &Path) -> Result<LoadedTool, ExportError> {
    let card_path = dir.join(CARD);
    let text = std::fs::read_to_string(&card_path).map_err(ExportError::io(
        &card_path,
        "cannot read (is --tool a tool folder written by scinterp export?)",
    ))?;
    let card: Card = serde_json::from_str(&text)
        .map_err(|e| ExportError::invalid(&card_path, format!("not a tool card: {e}")))?;
    if card.format != FORMAT || card.format_version != FORMAT_VERSION {
        return Err(ExportError::invalid(
            &card_path,
            format!(
                "format {} v{}, this version reads {FORMAT} v{FORMAT_VERSION}",
                card.format, card.format_version
            ),
        ));
    }
    let wpath = dir.join(WEIGHTS);
    let bytes = std::fs::read(&wpath).map_err(ExportError::io(&wpath, "cannot read"))?;
    if let Some(entry) = card.files.get(WEIGHTS) {
        if entry.bytes != bytes.len() as u64 {
            return Err(ExportError::invalid(&wpath, format!("{} bytes, the card says {}: the file is truncated or not this card's; export the tool again", bytes.len(), entry.bytes)));
        }
        if entry.blake3 != hash(&bytes) {
            return Err(ExportError::invalid(&wpath, "its hash differs from the card's: the card does not belong to these weights; export the tool again"));
        }
    }
    // `apply` never reads the ONNX file, but a damaged one is a damaged tool: say so before it is shared.
    if let Some(entry) = card.files.get(ONNX) {
        let opath = dir.join(ONNX);
        if let Ok(onnx) = std::fs::read(&opath) {
            if entry.bytes != onnx.len() as u64 || entry.blake3 != hash(&onnx) {
                return Err(ExportError::invalid(
                    &opath,
                    format!(
                        "{} bytes that do not match the card ({} bytes and a hash): the file is truncated or \
                         of another export; export the tool again",
                        onnx.len(),
                        entry.bytes
                    ),
                ));
            }
        }
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        ExportError::invalid(
            &wpath,
            format!("not a readable safetensors file ({e}); it may be truncated"),
        )
    })?;
    let get = |name: &str| -> Result<Dense, ExportError> {
        let t = st
            .tensor(name)
            .map_err(|_| ExportError::invalid(&wpath, format!("no tensor `{name}`")))?;
        if t.dtype() != Dtype::F32 {
            return Err(ExportError::invalid(
                &wpath,
                format!("`{name}` is {:?}, expected F32", t.dtype()),
            ));
        }
        let shape = t.shape().to_vec();
        let (rows, cols) = match shape.as_slice() {
            [r, c] => (*r, *c),
            [r] => (*r, 1),
            _ => {
                return Err(ExportError::invalid(
                    &wpath,
                    format!("`{name}` has shape {shape:?}"),
                ))
            }
        };
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        // A NaN or infinite weight would make every output NaN while `apply` exits 0.
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(ExportError::invalid(
                &wpath,
                format!(
                    "`{name}` value {i} is {}: a tool's weights must be finite; export the tool again",
                    data[i]
                ),
            ));
        }
        Ok(Dense { rows, cols, data })
    };
    let stage = if st.names().contains(&"operator") {
        Stage::Operator(get("operator")?)
    } else {
        let left = get("surrogate_left")?;
        let right = get("surrogate_right")?;
        Stage::Surrogate(Surrogate {
            rank: left.cols,
            left,
            right,
            retained_energy: f64::NAN,
        })
    };
    let adaptor = get("adaptor_weight")?;
    let pseudotime_bias = match get("pseudotime_bias")?.data.as_slice() {
        &[b] => b,
        other => {
            return Err(ExportError::invalid(
                &wpath,
                format!("`pseudotime_bias` holds {} values, expected 1", other.len()),
            ))
        }
    };
    let tool = Tool {
        adaptor_bias: get("adaptor_bias")?.data,
        pseudotime: get("pseudotime_weight")?,
        pseudotime_bias,
        classes: get("classes_weight")?,
        classes_bias: get("classes_bias")?.data,
        adaptor,
        stage,
    };
    check_shapes(&tool, &card).map_err(|reason| {
        ExportError::invalid(
            &card_path,
            format!("does not match {}: {reason}", wpath.display()),
        )
    })?;
    Ok(LoadedTool {
        dir: dir.to_path_buf(),
        card,
        tool,
    })
}

/// A tool whose card and weights disagree; [`read_tool`] adds both paths.
#[derive(Debug, thiserror::Error)]
enum ShapeMismatch {
    #[error("surrogate factors {}×{} and {}×{}", left.0, left.1, right.0, right.1)]
    Surrogate {
        left: (usize, usize),
        right: (usize, usize),
    },
    #[error("no labels: a tool calls at least one cell type")]
    NoLabels,
    #[error("{what}: {got} in the card or weights, {want} expected")]
    Size {
        what: &'static str,
        got: usize,
        want: usize,
    },
}

fn check_shapes(tool: &Tool, card: &Card) -> Result<(), ShapeMismatch> {
    let (n, d, c) = (tool.n_genes(), tool.d_latent(), tool.n_classes());
    let m = tool.stage.n_features();
    if let Stage::Surrogate(s) = &tool.stage {
        if s.left.cols != s.right.rows {
            return Err(ShapeMismatch::Surrogate {
                left: (s.left.rows, s.left.cols),
                right: (s.right.rows, s.right.cols),
            });
        }
    }
    let checks = [
        ("panel genes", card.panel.len(), n),
        ("labels", card.labels.len(), c),
        ("d_latent", card.d_latent, d),
        ("adaptor rows", tool.adaptor.rows, m),
        ("adaptor bias", tool.adaptor_bias.len(), d),
        ("pseudotime weight", tool.pseudotime.rows, d),
        ("pseudotime weight columns", tool.pseudotime.cols, 1),
        ("classes weight rows", tool.classes.rows, d),
        ("classes bias", tool.classes_bias.len(), c),
    ];
    // `apply` names each cell's most probable label: a tool without labels has nothing to call.
    if c == 0 {
        return Err(ShapeMismatch::NoLabels);
    }
    for (what, got, want) in checks {
        if got != want {
            return Err(ShapeMismatch::Size { what, got, want });
        }
    }
    Ok(())
}
