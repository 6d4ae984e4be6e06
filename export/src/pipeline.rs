//! `scinterp export operator`: model + reference cells → operator → (surrogate) → fitted tool → tool
//! folder with held-out metrics. One call, [`export_tool`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use crate::cells::{self, CellInput, ModelGenes, PanelChoice};
use crate::error::ExportError;
use crate::files::{self, Card, PREPROCESSING};
use crate::operator::{self, Composition, Construction, Dense, OperatorSvd, TokenCells};
use crate::tool::{self, AdaptorKind, FitInput, Stage};

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub model: PathBuf,
    /// Geneformer: the dictionary folder (default: the model folder).
    pub dictionaries: Option<PathBuf>,
    pub cells: CellInput,
    /// obs column of the cell-type labels.
    pub label_column: String,
    pub panel: PanelChoice,
    pub construction: Construction,
    /// `--heads` (default all) or `--drift`.
    pub heads: Option<String>,
    pub drift: Option<String>,
    /// Rank of the truncated-SVD surrogate (`None`: the full operator).
    pub rank: Option<usize>,
    pub d_latent: usize,
    pub adaptor: AdaptorKind,
    /// Root cell: an index (0-based) or a cell name.
    pub root: String,
    /// Labels in developmental order, for the held-out stage Spearman.
    pub stage_order: Option<Vec<String>>,
    pub heldout: f64,
    pub seed: u64,
    pub knn: usize,
    /// Tokens per cell for the attention construction (`None`: the model's limit).
    pub max_len: Option<usize>,
    /// At most this many training cells are run through the model for the attention construction.
    pub max_reference_cells: usize,
    /// Build the tool from a control model: every weight tensor's elements shuffled with this seed.
    pub shuffled_control: Option<u64>,
    pub out: PathBuf,
    pub overwrite: bool,
    /// Testing: stop after this many batches of the attention pass, its checkpoint saved.
    pub stop_after_batches: Option<usize>,
}

impl ExportConfig {
    /// The defaults of `scinterp export operator`: attention operators pooled over every head, a panel
    /// of the 500 most variable genes, the full operator, a 10-dimensional unsupervised adaptor, 20 % of
    /// each label held out, a 15-neighbour ordering, at most 2,000 reference cells, seed 0.
    pub fn new(model: PathBuf, cells: CellInput, label_column: String, root: String, out: PathBuf) -> Self {
        ExportConfig {
            model,
            dictionaries: None,
            cells,
            label_column,
            panel: PanelChoice::Hvg(Self::HVG),
            construction: Construction::Attention,
            heads: None,
            drift: None,
            rank: None,
            d_latent: Self::D_LATENT,
            adaptor: AdaptorKind::Unsupervised,
            root,
            stage_order: None,
            heldout: Self::HELDOUT,
            seed: 0,
            knn: Self::KNN,
            max_len: None,
            max_reference_cells: Self::MAX_REFERENCE_CELLS,
            shuffled_control: None,
            out,
            overwrite: false,
            stop_after_batches: None,
        }
    }
    pub const HVG: usize = 500;
    pub const D_LATENT: usize = 10;
    pub const HELDOUT: f64 = 0.2;
    pub const KNN: usize = 15;
    pub const MAX_REFERENCE_CELLS: usize = 2000;
}

/// What an export did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportReport {
    pub out: PathBuf,
    pub card: Card,
    /// (rank, retained energy, bytes) of surrogates of the operator.
    pub energy: Vec<(usize, f64, usize)>,
    pub operator_bytes: usize,
    pub seconds: f64,
}

/// Reference cells run through the model at a time in the attention construction (one checkpoint at
/// most per batch).
const ATTENTION_BATCH_CELLS: usize = 64;

/// The checkpoint of an export's attention pass: `<out>.checkpoint`, beside the tool folder; removed
/// once the tool is written.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".checkpoint");
    out.with_file_name(name)
}

/// Progress messages (stage names, cells done).
pub trait Progress: Sync {
    fn stage(&self, _what: &str) {}
    fn cells(&self, _done: usize, _total: usize) {}
}

pub struct Quiet;
impl Progress for Quiet {}

fn resolve_root(root: &str, names: &[String]) -> Result<usize, ExportError> {
    if let Some(i) = names.iter().position(|n| n == root) {
        return Ok(i);
    }
    match root.parse::<usize>() {
        Ok(i) if i < names.len() => Ok(i),
        _ => Err(ExportError::option(
            "--root",
            format!(
                "`{root}` is neither a cell name nor an index below {}",
                names.len()
            ),
        )),
    }
}

/// A copy of the model folder `dir` whose weight tensors have their elements shuffled (seeded): the
/// random-weight control of the same shape and value distribution. Returns the temporary folder.
pub fn shuffled_model(dir: &Path, weights: &Path, seed: u64) -> Result<tempfile::TempDir, ExportError> {
    let tmp =
        tempfile::tempdir().map_err(ExportError::io(std::env::temp_dir(), "cannot create a folder in"))?;
    for entry in std::fs::read_dir(dir).map_err(ExportError::io(dir, "cannot list"))? {
        let entry = entry.map_err(ExportError::io(dir, "cannot list"))?;
        let path = entry.path();
        if path.is_file() && path != weights {
            std::fs::copy(&path, tmp.path().join(entry.file_name()))
                .map_err(ExportError::io(&path, "cannot copy"))?;
        }
    }
    let bytes = std::fs::read(weights).map_err(ExportError::io(weights, "cannot read"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| ExportError::invalid(weights, format!("the control needs safetensors weights: {e}")))?;
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut shuffled = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let t = st
            .tensor(name)
            .map_err(|e| ExportError::invalid(weights, e.to_string()))?;
        let size = t.dtype().bitsize() / 8;
        let mut elems: Vec<&[u8]> = t.data().chunks_exact(size.max(1)).collect();
        scinterp_engine::rng::Rng::new(seed, i as u64).shuffle(&mut elems);
        shuffled.push((name.clone(), t.dtype(), t.shape().to_vec(), elems.concat()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = shuffled
        .iter()
        .map(|(n, dt, shape, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, shape.clone(), data).expect("same shape"),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).map_err(|e| ExportError::Numeric(e.to_string()))?;
    let target = tmp.path().join(weights.file_name().unwrap_or_default());
    std::fs::write(&target, out).map_err(ExportError::io(&target, "cannot write"))?;
    Ok(tmp)
}

/// Builds, fits, evaluates and writes a tool.
pub fn export_tool(config: &ExportConfig, progress: &dyn Progress) -> Result<ExportReport, ExportError> {
    let started = Instant::now();
    if config.d_latent == 0 {
        return Err(ExportError::option("--d-latent", "must be at least 1"));
    }
    if !(0.0..1.0).contains(&config.heldout) {
        return Err(ExportError::option("--heldout", "must be in [0, 1)"));
    }
    if config.out.exists() && !config.overwrite {
        return Err(ExportError::option(
            "--out",
            format!("{} exists; pass --overwrite to replace it", config.out.display()),
        ));
    }
    progress.stage("loading the model");
    let original = scinterp_models::load(&config.model, false)?;
    let weights_hash = blake3::hash(
        &std::fs::read(&original.weights).map_err(ExportError::io(&original.weights, "cannot read"))?,
    )
    .to_hex()
    .to_string();
    let control_dir = match config.shuffled_control {
        Some(seed) => Some(shuffled_model(&config.model, &original.weights, seed)?),
        None => None,
    };
    let model = match &control_dir {
        Some(dir) => scinterp_models::load(dir.path(), false)?,
        None => original,
    };
    let dims = model.encoder.dims().clone();
    let composition = Composition::parse(
        config.heads.as_deref(),
        config.drift.as_deref(),
        dims.n_layers,
        dims.n_heads,
    )?;
    let genes = ModelGenes::load(&model, &config.model, config.dictionaries.as_deref())?;

    progress.stage("reading the reference cells");
    let mut open = config.cells.open.clone();
    if !open.obs_columns.contains(&config.label_column) {
        open.obs_columns.push(config.label_column.clone());
    }
    let input = CellInput {
        open,
        ..config.cells.clone()
    };
    let m = cells::read_cells(&input)?;
    let label_text = cells::labels(&m, &config.label_column, &input.path)?;
    let mut classes: Vec<String> = label_text.clone();
    classes.sort();
    classes.dedup();
    // A stage order naming no label would report a Spearman over no cell as if it were measured.
    if let Some(order) = &config.stage_order {
        let unknown: Vec<&str> = order
            .iter()
            .filter(|s| !classes.contains(s))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(ExportError::option(
                "--stage-order",
                format!(
                    "{} not among the labels of --labels {} ({})",
                    unknown.join(", "),
                    config.label_column,
                    classes.join(", ")
                ),
            ));
        }
    }
    if classes.len() < 2 {
        return Err(ExportError::option(
            "--labels",
            format!(
                "column `{}` has {} distinct label(s); a cell-type readout needs 2 or more",
                config.label_column,
                classes.len()
            ),
        ));
    }
    let labels: Vec<usize> = label_text
        .iter()
        .map(|l| classes.binary_search(l).expect("from the list"))
        .collect();
    let root = resolve_root(&config.root, &m.cell_names)?;
    let (mut train, mut heldout) = tool::split(&labels, classes.len(), config.heldout, config.seed);
    // The root anchors the ordering the readout is fitted to: it is always a training cell, never scored.
    if let Ok(at) = heldout.binary_search(&root) {
        heldout.remove(at);
        let to = train.binary_search(&root).unwrap_or_else(|to| to);
        train.insert(to, root);
    }

    let panel = cells::choose_panel(&m, &genes, &config.panel)?;
    let n = panel.genes.len();
    progress.stage(&format!(
        "{} panel genes; building {} operators",
        n,
        config.construction.name()
    ));
    let heads = composition.heads(dims.n_heads);
    let ops: Vec<Dense> = match config.construction {
        Construction::Attention => {
            let max_len = config
                .max_len
                .unwrap_or(usize::MAX)
                .min(dims.max_len.unwrap_or(usize::MAX));
            let (tokens, values, kept) = genes.tokenize(&m, max_len, config.seed)?;
            let train_set: std::collections::HashSet<usize> = train.iter().copied().collect();
            let pick: Vec<usize> = (0..kept.len())
                .filter(|&i| train_set.contains(&kept[i]))
                .take(config.max_reference_cells)
                .collect();
            let cells = TokenCells {
                tokens: pick.iter().map(|&i| tokens[i].clone()).collect(),
                values: values.map(|v| pick.iter().map(|&i| v[i].clone()).collect()),
            };
            let total = cells.tokens.len();
            // What the attention sums depend on: a checkpoint of anything else is refused.
            let mut cells_hash = blake3::Hasher::new();
            for (i, t) in cells.tokens.iter().enumerate() {
                cells_hash.update(&(t.len() as u64).to_le_bytes());
                cells_hash.update(bytemuck::cast_slice(t));
                if let Some(v) = &cells.values {
                    cells_hash.update(bytemuck::cast_slice(&v[i]));
                }
            }
            let panel_tokens: Vec<u32> = panel.genes.iter().map(|g| g.token).collect();
            let resume = operator::AttentionResume {
                path: checkpoint_path(&config.out),
                settings: json!({
                    "weights_blake3": weights_hash,
                    "shuffled_control": config.shuffled_control,
                    "heads": heads.iter().map(|h| [h.layer, h.head]).collect::<Vec<_>>(),
                    "panel_blake3": blake3::hash(bytemuck::cast_slice(&panel_tokens)).to_hex().to_string(),
                    "cells_blake3": cells_hash.finalize().to_hex().to_string(),
                    "cells": total,
                    "batch_cells": ATTENTION_BATCH_CELLS,
                }),
                every: std::time::Duration::from_secs(60),
                stop_after_batches: config.stop_after_batches,
            };
            if resume.path.exists() {
                progress.stage(&format!("resuming from {}", resume.path.display()));
            }
            operator::attention_operators(
                model.encoder.as_ref(),
                &cells,
                &panel.genes,
                &heads,
                ATTENTION_BATCH_CELLS,
                Some(&resume),
                &|done| progress.cells(done, total),
            )?
        }
        c => {
            let basis = operator::gene_basis(model.encoder.as_ref(), &genes, &panel.genes)?;
            heads
                .iter()
                .map(|&h| operator::weights_operator(model.encoder.as_ref(), &basis, h, c))
                .collect()
        }
    };
    let op = operator::compose(&composition, &heads, &ops);
    let operator_bytes = op.bytes();
    progress.stage("truncated SVD");
    let svd = OperatorSvd::new(&op)?;
    let energy = svd.energy_table();
    let (stage, rank_info) = match config.rank {
        Some(0) => return Err(ExportError::option("--rank", "must be at least 1")),
        Some(k) => {
            let s = svd.surrogate(k);
            let info =
                json!({"rank": s.rank, "retained_energy": s.retained_energy, "bytes": svd.bytes(s.rank)});
            (Stage::Surrogate(s), info)
        }
        None => (Stage::Operator(op), json!(null)),
    };

    progress.stage("fitting the adaptor and readouts");
    let x = cells::panel_expression(
        &m,
        &panel.columns.iter().map(|&c| Some(c)).collect::<Vec<_>>(),
        0..m.n_cells,
    );
    let fitted = tool::fit(
        stage,
        &FitInput {
            x: &x,
            n: m.n_cells,
            labels: &labels,
            n_classes: classes.len(),
            train: &train,
            root,
            d_latent: config.d_latent,
            adaptor: config.adaptor,
            knn: config.knn,
        },
    )?;
    let t = fitted.tool;

    let c = classes.len();
    // Held-out metrics, from the tool's own (f32) evaluation; absent (null) without held-out cells
    // (`--heldout 0`, or classes of one cell each) rather than numbers computed from no cell.
    let metrics = if heldout.is_empty() {
        json!({
            "heldout_cells": 0,
            "training_cells": train.len(),
            "heldout_fraction": config.heldout,
            "heldout_cell_names": [],
            "cell_type": null,
            "pseudotime": null,
        })
    } else {
        let xh: Vec<f32> = heldout
            .iter()
            .flat_map(|&i| x[i * n..(i + 1) * n].iter().copied())
            .collect();
        let out = t.evaluate(&xh, heldout.len());
        let pred: Vec<usize> = (0..heldout.len())
            .map(|i| {
                (0..c)
                    .max_by(|&a, &b| out.probabilities[i * c + a].total_cmp(&out.probabilities[i * c + b]))
                    .unwrap_or(0)
            })
            .collect();
        let truth: Vec<usize> = heldout.iter().map(|&i| labels[i]).collect();
        let (acc, bal, f1) = tool::classification_metrics(&truth, &pred, c);
        let pt: Vec<f64> = out.pseudotime.iter().map(|&v| v as f64).collect();
        let ordering_rho = tool::spearman(
            &pt,
            &heldout.iter().map(|&i| fitted.ordering[i]).collect::<Vec<_>>(),
        );
        let stage_rho = config.stage_order.as_ref().map(|order| {
            let (a, b): (Vec<f64>, Vec<f64>) = heldout
                .iter()
                .enumerate()
                .filter_map(|(k, &i)| {
                    order
                        .iter()
                        .position(|s| *s == label_text[i])
                        .map(|r| (pt[k], r as f64))
                })
                .unzip();
            json!({"order": order, "cells": a.len(), "spearman": tool::spearman(&a, &b)})
        });
        json!({
            "heldout_cells": heldout.len(),
            "training_cells": train.len(),
            "heldout_fraction": config.heldout,
            "heldout_cell_names": heldout.iter().map(|&i| m.cell_names[i].as_str()).collect::<Vec<_>>(),
            "cell_type": {"accuracy": acc, "balanced_accuracy": bal, "macro_f1": f1},
            "pseudotime": {"spearman_with_ordering": ordering_rho, "stage_order": stage_rho},
        })
    };
    let d = t.d_latent();
    let mut card = Card {
        format: files::FORMAT.into(),
        format_version: files::FORMAT_VERSION,
        panel: panel.genes.clone(),
        preprocessing: PREPROCESSING.into(),
        outputs: BTreeMap::from([
            ("latent".to_string(), format!("[n, {d}] adaptor output")),
            (
                "pseudotime".to_string(),
                "[n] linear readout of the root-anchored ordering (0 = root, 1 = farthest)".to_string(),
            ),
            (
                "class_probabilities".to_string(),
                format!("[n, {c}] softmax over `labels`"),
            ),
        ]),
        labels: classes.clone(),
        label_column: config.label_column.clone(),
        d_latent: d,
        operator: json!({
            "construction": config.construction.name(),
            "composition": composition,
            "description": composition.describe(),
            "heads": heads.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            "shape": [n, svd.cols],
            "bytes": operator_bytes,
            "surrogate": rank_info,
            "attention_reference_cells": (config.construction == Construction::Attention).then_some(config.max_reference_cells.min(train.len())),
        }),
        adaptor: json!({"kind": config.adaptor, "d_latent": d, "requested_d_latent": config.d_latent}),
        pseudotime: json!({
            "root_cell": m.cell_names[root], "root_index": root, "knn": config.knn,
            "ordering": "ranks of shortest-path distance from the root over the symmetrised kNN graph of the latent (all reference cells), scaled to [0, 1]; readout: least squares on the training cells",
        }),
        metrics,
        provenance: json!({
            "model": config.model.display().to_string(),
            "model_kind": model.name,
            "weights_blake3": weights_hash,
            "control": config.shuffled_control.map(|s| json!({"kind": "every weight tensor's elements shuffled", "seed": s})),
            "reference_cells": input.path.display().to_string(),
            "orthologs": input.orthologs.as_ref().map(|p| p.display().to_string()),
            "seed": config.seed,
            "scinterp_version": env!("CARGO_PKG_VERSION"),
        }),
        files: BTreeMap::new(),
    };
    let metadata = vec![
        ("panel_size".to_string(), n.to_string()),
        ("labels".to_string(), classes.join(",")),
        ("card".to_string(), files::CARD.to_string()),
    ];
    progress.stage("writing the tool");
    files::write_tool(&config.out, &t, &mut card, &metadata, config.overwrite)?;
    // The tool is complete: its checkpoint has served.
    let checkpoint = checkpoint_path(&config.out);
    if checkpoint.exists() {
        std::fs::remove_file(&checkpoint).map_err(ExportError::io(&checkpoint, "cannot remove"))?;
    }
    Ok(ExportReport {
        out: config.out.clone(),
        card,
        energy,
        operator_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}
