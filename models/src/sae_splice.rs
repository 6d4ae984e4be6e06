//! The spliced-loss side of `scinterp sae train|eval` that needs the model: the model and token store
//! an activation store records, and the model's pretraining loss on a few of its cells
//! ([`scinterp_engine::sae::pipeline::SpliceModel`]).
//!
//! Geneformer (masked LM): 15 % of the gene positions (seeded) are replaced by `<mask>` and scored by
//! the cross-entropy of the true gene. The SAE is spliced only at the positions the store kept *and*
//! that still hold their gene: a `<mask>` position is never in a store, so the SAE never saw one.
//! scGPT (masked expression): squared error of the expression prediction at the gene positions.

use std::path::PathBuf;

use scinterp_engine::sae::pipeline::{SpliceModel, SpliceModelError};
use scinterp_engine::sae::splice::{splice_losses, SpliceLosses};
use scinterp_engine::sae::TopKSae;
use scinterp_engine::store::ActStore;
use scinterp_engine::{EngineError, HookPoint, Matrix, PackedBatch};

use crate::error::ModelError;
use crate::input::{read_cells, InputCells, InputError};
use crate::registry::{LoadedModel, PretrainingLoss};
use crate::token_store::{TokenStore, TokenStoreError};

/// Why a store has no model to splice into (the spliced loss is then skipped, not an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoStoreModel {
    #[error("the store records no model (synthetic rows?): no spliced loss")]
    NotRecorded,
    #[error(
        "the store's model ({}) or token store ({}) is gone: no spliced loss",
        model.display(),
        tokens.display()
    )]
    Gone { model: PathBuf, tokens: PathBuf },
}

/// Why the model or cells a store records could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StoreModelError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    TokenStore(#[from] TokenStoreError),
}

/// Why the spliced losses could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cell {cell} is not in the token store ({cells} cells)")]
    CellOutOfRange { cell: usize, cells: usize },
}

/// The model and cells behind an activation store.
pub struct StoreModel {
    model: LoadedModel,
    cells: InputCells,
    special: Vec<u32>,
    include_special: bool,
}

impl StoreModel {
    /// The model and token store recorded in `store`'s manifest. `Ok(Err(why))` when there is none to
    /// load (synthetic rows, or the model or token store is gone): the spliced loss is then skipped.
    pub fn open(store: &ActStore) -> Result<Result<StoreModel, NoStoreModel>, StoreModelError> {
        let (Some(model), Some(tokens)) =
            (store.manifest.model.folder(), store.manifest.source.token_store())
        else {
            return Ok(Err(NoStoreModel::NotRecorded));
        };
        let (model_dir, token_dir) = (PathBuf::from(&model.path), PathBuf::from(&tokens.path));
        if !model_dir.is_dir() || !token_dir.is_dir() {
            return Ok(Err(NoStoreModel::Gone {
                model: model_dir,
                tokens: token_dir,
            }));
        }
        let model = crate::load(&model_dir, true)?;
        let cells = read_cells(&token_dir, &model)?;
        let special = model
            .special_tokens(|| TokenStore::read_manifest(&token_dir))?
            .ids();
        Ok(Ok(StoreModel {
            model,
            cells,
            special,
            include_special: store.manifest.include_special,
        }))
    }
}

impl SpliceModel for StoreModel {
    fn spliced_losses(
        &self,
        hook_name: &str,
        sae: &TopKSae,
        mean: &[f32],
        cells: &[u64],
    ) -> Result<SpliceLosses, SpliceModelError> {
        Ok(self.losses(hook_name, sae, mean, cells)?)
    }
}

impl StoreModel {
    fn losses(
        &self,
        hook_name: &str,
        sae: &TopKSae,
        mean: &[f32],
        cells: &[u64],
    ) -> Result<SpliceLosses, SpliceError> {
        let hook = HookPoint::parse(hook_name)?;
        let chosen: Vec<usize> = cells.iter().map(|&c| c as usize).collect();
        if let Some(&bad) = chosen.iter().find(|&&c| c >= self.cells.tokens.len()) {
            return Err(SpliceError::CellOutOfRange {
                cell: bad,
                cells: self.cells.tokens.len(),
            });
        }
        let tokens: Vec<Vec<u32>> = chosen.iter().map(|&c| self.cells.tokens[c].clone()).collect();
        let is_special = |t: &u32| self.special.contains(t);
        let gene_rows: Vec<usize> = tokens
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, t)| !is_special(t))
            .map(|(r, _)| r)
            .collect();
        let mut batch_tokens = tokens.clone();
        let mut labels: Vec<(usize, u32)> = Vec::new();
        if let PretrainingLoss::MaskedLm { mask_id } = self.model.loss {
            let mut rng = scinterp_engine::rng::Rng::new(0, 0x3A5C);
            let mut row_of = Vec::new();
            for (c, cell) in batch_tokens.iter().enumerate() {
                row_of.extend((0..cell.len()).map(|p| (c, p)));
            }
            for &r in &gene_rows {
                if rng.uniform() < 0.15 {
                    let (c, p) = row_of[r];
                    labels.push((r, batch_tokens[c][p]));
                    batch_tokens[c][p] = mask_id;
                }
            }
        }
        let masked: std::collections::HashSet<usize> = labels.iter().map(|l| l.0).collect();
        // The rows the SAE reads: positions the store kept (genes, and specials if it kept them),
        // never a position now holding <mask>.
        let spliced_rows: Vec<usize> = tokens
            .iter()
            .flatten()
            .enumerate()
            .filter(|(r, t)| (self.include_special || !is_special(t)) && !masked.contains(r))
            .map(|(r, _)| r)
            .collect();
        let mut batch = PackedBatch::from_cells(&batch_tokens)?;
        let mut targets = Vec::new();
        if let Some(values) = &self.cells.values {
            targets = chosen.iter().flat_map(|&c| values[c].iter().copied()).collect();
            batch = batch.with_values(targets.clone())?;
        }
        let kind = self.model.loss;
        let loss = move |head: &Matrix| -> f64 {
            match kind {
                PretrainingLoss::MaskedLm { .. } => {
                    let total: f64 = labels
                        .iter()
                        .map(|&(r, label)| {
                            let logits = head.row(r);
                            let max = logits.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
                            let lse = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
                            lse - logits[label as usize] as f64
                        })
                        .sum();
                    total / labels.len().max(1) as f64
                }
                PretrainingLoss::MaskedExpression => {
                    gene_rows
                        .iter()
                        .map(|&r| (head.row(r)[0] as f64 - targets[r] as f64).powi(2))
                        .sum::<f64>()
                        / gene_rows.len().max(1) as f64
                }
            }
        };
        Ok(splice_losses(
            self.model.encoder.as_ref(),
            &batch,
            hook,
            sae,
            &spliced_rows,
            mean,
            &loss,
        )?)
    }
}
