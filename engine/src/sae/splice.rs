//! The model's own loss with an SAE spliced in: the activation at the SAE's hook is replaced by the
//! SAE's reconstruction (at the positions the SAE was trained on), and, as the floor, zeroed there.
//! `loss_recovered = (zeroed − spliced) / (zeroed − clean)`: 1 when the reconstruction is as good as
//! the real activation for the model, 0 when it is no better than nothing.

use serde::Serialize;

use super::TopKSae;
use crate::encoder::Encoder;
use crate::error::EngineError;
use crate::executor::{run, Start};
use crate::hooks::{Edit, HookPlan, HookPoint};
use crate::matrix::Matrix;
use crate::packed::PackedBatch;

#[derive(Clone, Debug, Default, Serialize)]
pub struct SpliceLosses {
    pub clean: f64,
    pub spliced: f64,
    pub zero_ablated: f64,
    pub loss_recovered: f64,
}

/// Runs `batch` three times (clean, SAE-spliced at `rows`, zeroed at `rows`) and scores each run's
/// head output with `loss`.
pub fn splice_losses(
    encoder: &dyn Encoder,
    batch: &PackedBatch,
    hook: HookPoint,
    sae: &TopKSae,
    rows: &[usize],
    loss: &dyn Fn(&Matrix) -> f64,
) -> Result<SpliceLosses, EngineError> {
    let head_of = |plan: &HookPlan| -> Result<(Matrix, crate::hooks::Captures), EngineError> {
        let out = run(encoder, batch, plan, Start::Embed, true)?;
        let head = out.head.ok_or_else(|| {
            EngineError::InvalidBatch("the model was loaded without its output head".into())
        })?;
        Ok((head, out.captures))
    };
    let (clean_head, mut captures) = head_of(&HookPlan::new().capture(hook))?;
    let activation = captures
        .take(hook)
        .ok_or_else(|| EngineError::InvalidBatch(format!("{hook} was not captured")))?;
    let mut x = Vec::with_capacity(rows.len() * sae.d_in);
    for &r in rows {
        x.extend_from_slice(activation.row(r));
    }
    let reconstruction = sae.decode(&sae.encode(&x));
    let spliced_plan = HookPlan::new().edit(
        hook,
        Edit::Replace {
            rows: rows.to_vec(),
            values: reconstruction,
        },
    );
    let zero_plan = HookPlan::new().edit(hook, Edit::Zero { rows: rows.to_vec() });
    let clean = loss(&clean_head);
    let spliced = loss(&head_of(&spliced_plan)?.0);
    let zero_ablated = loss(&head_of(&zero_plan)?.0);
    Ok(SpliceLosses {
        clean,
        spliced,
        zero_ablated,
        loss_recovered: (zero_ablated - spliced) / (zero_ablated - clean),
    })
}
