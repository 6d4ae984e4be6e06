//! The model's own loss with an SAE spliced in: the activation at the SAE's hook is replaced by the
//! SAE's reconstruction at the positions the SAE was trained on (the caller passes them: never a
//! `<mask>` or special position the store left out), and, as floors, zeroed there or replaced by the
//! mean training activation. `loss_recovered = (zeroed − spliced) / (zeroed − clean)` and
//! `loss_recovered_vs_mean = (mean-ablated − spliced) / (mean-ablated − clean)`: 1 when the
//! reconstruction is as good as the real activation for the model, 0 when it is no better than the
//! floor. Zero ablation is a weak floor (a zero vector is far from anything the model saw); the mean
//! is the stricter one.

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
    pub mean_ablated: f64,
    pub loss_recovered: f64,
    pub loss_recovered_vs_mean: f64,
    /// Positions the reconstruction replaced.
    pub rows_spliced: usize,
}

/// Runs `batch` four times (clean; SAE-spliced, zeroed and set to `mean` at `rows`) and scores each
/// run's head output with `loss`.
pub fn splice_losses(
    encoder: &dyn Encoder,
    batch: &PackedBatch,
    hook: HookPoint,
    sae: &TopKSae,
    rows: &[usize],
    mean: &[f32],
    loss: &dyn Fn(&Matrix) -> f64,
) -> Result<SpliceLosses, EngineError> {
    if mean.len() != sae.d_in {
        return Err(EngineError::InvalidBatch(format!(
            "the mean activation has {} values, the SAE reads {}",
            mean.len(),
            sae.d_in
        )));
    }
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
    let mean_plan = HookPlan::new().edit(
        hook,
        Edit::MeanAblate {
            rows: rows.to_vec(),
            mean: mean.to_vec(),
        },
    );
    let clean = loss(&clean_head);
    let spliced = loss(&head_of(&spliced_plan)?.0);
    let zero_ablated = loss(&head_of(&zero_plan)?.0);
    let mean_ablated = loss(&head_of(&mean_plan)?.0);
    Ok(SpliceLosses {
        clean,
        spliced,
        zero_ablated,
        mean_ablated,
        loss_recovered: (zero_ablated - spliced) / (zero_ablated - clean),
        loss_recovered_vs_mean: (mean_ablated - spliced) / (mean_ablated - clean),
        rows_spliced: rows.len(),
    })
}
