//! Hook points (TransformerLens names) and what can happen at them: capture (copy out) or edit.
//!
//! Edits are plain data so that a GPU kernel can apply thousands of them in one launch. Positions are
//! packed rows of the batch ([`PackedBatch::row`](crate::PackedBatch::row) turns (cell, position) into
//! a row). Edits apply in the order given; a capture sees the value after the edits at that hook.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::error::EngineError;
use crate::matrix::Matrix;

/// A place in the forward pass where the residual stream (or a sub-block output) can be read or edited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookPoint {
    /// Output of the embedding stage = input of block 0 (HF `hidden_states[0]`).
    Embed,
    /// Attention output after its projection, before the residual add and LayerNorm.
    AttnOut(usize),
    /// `LN_attn(x + attn_out)`: the normalised state entering the FFN.
    ResidMid(usize),
    /// FFN output before the residual add and LayerNorm.
    MlpOut(usize),
    /// Block output (HF `hidden_states[L + 1]`).
    ResidPost(usize),
}

impl HookPoint {
    pub fn layer(&self) -> Option<usize> {
        match *self {
            HookPoint::Embed => None,
            HookPoint::AttnOut(l)
            | HookPoint::ResidMid(l)
            | HookPoint::MlpOut(l)
            | HookPoint::ResidPost(l) => Some(l),
        }
    }

    /// Every hook of an `n_layers` model, in execution order.
    pub fn all(n_layers: usize) -> Vec<HookPoint> {
        let mut out = vec![HookPoint::Embed];
        for l in 0..n_layers {
            out.extend([
                HookPoint::AttnOut(l),
                HookPoint::ResidMid(l),
                HookPoint::MlpOut(l),
                HookPoint::ResidPost(l),
            ]);
        }
        out
    }

    /// Parses a hook name such as `blocks.5.hook_resid_post`.
    pub fn parse(name: &str) -> Result<HookPoint, EngineError> {
        let unknown = || EngineError::UnknownHook(name.to_string());
        if name == "hook_embed" {
            return Ok(HookPoint::Embed);
        }
        let rest = name.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, kind) = rest.split_once('.').ok_or_else(unknown)?;
        // Reject "+1", "01" and the like: one spelling per hook.
        if layer.is_empty()
            || !layer.bytes().all(|b| b.is_ascii_digit())
            || layer.len() > 1 && layer.starts_with('0')
        {
            return Err(unknown());
        }
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        match kind {
            "hook_attn_out" => Ok(HookPoint::AttnOut(layer)),
            "hook_resid_mid" => Ok(HookPoint::ResidMid(layer)),
            "hook_mlp_out" => Ok(HookPoint::MlpOut(layer)),
            "hook_resid_post" => Ok(HookPoint::ResidPost(layer)),
            _ => Err(unknown()),
        }
    }

    /// Checks the layer index against the model depth.
    pub fn validate(&self, n_layers: usize) -> Result<(), EngineError> {
        match self.layer() {
            Some(layer) if layer >= n_layers => Err(EngineError::LayerOutOfRange {
                hook: self.to_string(),
                layer,
                n_layers,
            }),
            _ => Ok(()),
        }
    }

    /// (layer + 1, step within the block): sorts hooks in execution order.
    fn order_key(&self) -> (usize, usize) {
        match *self {
            HookPoint::Embed => (0, 0),
            HookPoint::AttnOut(l) => (l + 1, 0),
            HookPoint::ResidMid(l) => (l + 1, 1),
            HookPoint::MlpOut(l) => (l + 1, 2),
            HookPoint::ResidPost(l) => (l + 1, 3),
        }
    }
}

impl Ord for HookPoint {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order_key().cmp(&other.order_key())
    }
}

impl PartialOrd for HookPoint {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HookPoint::Embed => write!(f, "hook_embed"),
            HookPoint::AttnOut(l) => write!(f, "blocks.{l}.hook_attn_out"),
            HookPoint::ResidMid(l) => write!(f, "blocks.{l}.hook_resid_mid"),
            HookPoint::MlpOut(l) => write!(f, "blocks.{l}.hook_mlp_out"),
            HookPoint::ResidPost(l) => write!(f, "blocks.{l}.hook_resid_post"),
        }
    }
}

/// An edit of the tensor at a hook, over packed rows.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// `x[row] += scales[i] · direction` for `row = rows[i]`. SAE-feature ablation is this edit with
    /// `direction = W_dec[f]` and `scales = −a_f(row)`, which keeps the SAE's reconstruction error.
    AddDirection {
        rows: Vec<usize>,
        direction: Vec<f32>,
        scales: Vec<f32>,
    },
    /// `x[row] = 0`.
    Zero { rows: Vec<usize> },
    /// `x[rows[i]] = values[i·d .. (i+1)·d]` (patching from another run).
    Replace { rows: Vec<usize>, values: Vec<f32> },
    /// `x[row] = mean` (a precomputed mean activation).
    MeanAblate { rows: Vec<usize>, mean: Vec<f32> },
}

impl Edit {
    /// `x[row] += scale · direction` at every row, with one scale for all.
    pub fn add_direction(rows: Vec<usize>, direction: Vec<f32>, scale: f32) -> Edit {
        let scales = vec![scale; rows.len()];
        Edit::AddDirection {
            rows,
            direction,
            scales,
        }
    }

    fn rows(&self) -> &[usize] {
        match self {
            Edit::AddDirection { rows, .. }
            | Edit::Zero { rows }
            | Edit::Replace { rows, .. }
            | Edit::MeanAblate { rows, .. } => rows,
        }
    }

    /// Checks rows and vector lengths against a `[tokens, d]` tensor.
    pub fn validate(&self, hook: HookPoint, tokens: usize, d: usize) -> Result<(), EngineError> {
        let bad = |reason: String| EngineError::InvalidEdit {
            hook: hook.to_string(),
            reason,
        };
        if let Some(&r) = self.rows().iter().find(|&&r| r >= tokens) {
            return Err(bad(format!("row {r} is outside the batch ({tokens} tokens)")));
        }
        match self {
            Edit::AddDirection {
                rows,
                direction,
                scales,
            } => {
                if direction.len() != d {
                    return Err(bad(format!(
                        "direction has {} values, expected {d}",
                        direction.len()
                    )));
                }
                if scales.len() != rows.len() {
                    return Err(bad(format!("{} scales for {} rows", scales.len(), rows.len())));
                }
            }
            Edit::Replace { rows, values } => {
                if values.len() != rows.len() * d {
                    return Err(bad(format!(
                        "{} replacement values for {} rows of width {d}",
                        values.len(),
                        rows.len()
                    )));
                }
            }
            Edit::MeanAblate { mean, .. } => {
                if mean.len() != d {
                    return Err(bad(format!("mean has {} values, expected {d}", mean.len())));
                }
            }
            Edit::Zero { .. } => {}
        }
        Ok(())
    }

    /// Applies the edit in place. Call [`Edit::validate`] first.
    pub fn apply(&self, x: &mut Matrix) {
        match self {
            Edit::AddDirection {
                rows,
                direction,
                scales,
            } => {
                for (&r, &s) in rows.iter().zip(scales) {
                    for (v, w) in x.row_mut(r).iter_mut().zip(direction) {
                        *v += s * w;
                    }
                }
            }
            Edit::Zero { rows } => {
                for &r in rows {
                    x.row_mut(r).fill(0.0);
                }
            }
            Edit::Replace { rows, values } => {
                let d = x.cols();
                for (i, &r) in rows.iter().enumerate() {
                    x.row_mut(r).copy_from_slice(&values[i * d..(i + 1) * d]);
                }
            }
            Edit::MeanAblate { rows, mean } => {
                for &r in rows {
                    x.row_mut(r).copy_from_slice(mean);
                }
            }
        }
    }
}

/// What to do at each hook during one run.
#[derive(Clone, Debug, Default)]
pub struct HookPlan {
    captures: BTreeSet<HookPoint>,
    edits: BTreeMap<HookPoint, Vec<Edit>>,
}

impl HookPlan {
    pub fn new() -> Self {
        HookPlan::default()
    }

    pub fn capture(mut self, hook: HookPoint) -> Self {
        self.captures.insert(hook);
        self
    }

    pub fn capture_many(mut self, hooks: impl IntoIterator<Item = HookPoint>) -> Self {
        self.captures.extend(hooks);
        self
    }

    pub fn edit(mut self, hook: HookPoint, edit: Edit) -> Self {
        self.edits.entry(hook).or_default().push(edit);
        self
    }

    pub fn captures(&self) -> impl Iterator<Item = HookPoint> + '_ {
        self.captures.iter().copied()
    }

    pub fn edits(&self) -> impl Iterator<Item = (HookPoint, &Edit)> + '_ {
        self.edits
            .iter()
            .flat_map(|(h, es)| es.iter().map(move |e| (*h, e)))
    }

    pub(crate) fn is_touched(&self, hook: HookPoint) -> bool {
        self.captures.contains(&hook) || self.edits.contains_key(&hook)
    }

    /// The edits at `hook`, in the order they apply (for backends that apply them themselves).
    pub(crate) fn edits_at(&self, hook: HookPoint) -> Option<&[Edit]> {
        self.edits.get(&hook).map(Vec::as_slice)
    }

    pub(crate) fn captures_hook(&self, hook: HookPoint) -> bool {
        self.captures.contains(&hook)
    }

    /// Checks every hook against the model and every edit against a `[tokens, d_model]` batch.
    pub(crate) fn validate(&self, dims: &crate::EncoderDims, tokens: usize) -> Result<(), EngineError> {
        for hook in self.captures() {
            hook.validate(dims.n_layers)?;
        }
        for (hook, edit) in self.edits() {
            hook.validate(dims.n_layers)?;
            edit.validate(hook, tokens, dims.d_model)?;
        }
        Ok(())
    }

    /// Applies this hook's edits to `x`, then records it if it is captured.
    pub(crate) fn visit(&self, hook: HookPoint, x: &mut Matrix, captures: &mut Captures) {
        if let Some(edits) = self.edits.get(&hook) {
            for e in edits {
                e.apply(x);
            }
        }
        if self.captures.contains(&hook) {
            captures.insert(hook, x.clone());
        }
    }
}

/// Tensors captured during a run, `[tokens, width]` each, keyed by hook.
#[derive(Clone, Debug, Default)]
pub struct Captures {
    map: BTreeMap<HookPoint, Matrix>,
}

impl Captures {
    /// Records `x` as the tensor at `hook` (for backends that capture themselves).
    pub(crate) fn insert(&mut self, hook: HookPoint, x: Matrix) {
        self.map.insert(hook, x);
    }

    pub fn get(&self, hook: HookPoint) -> Option<&Matrix> {
        self.map.get(&hook)
    }

    pub fn take(&mut self, hook: HookPoint) -> Option<Matrix> {
        self.map.remove(&hook)
    }

    pub fn iter(&self) -> impl Iterator<Item = (HookPoint, &Matrix)> {
        self.map.iter().map(|(h, m)| (*h, m))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_execution_order() {
        let all = HookPoint::all(3);
        assert_eq!(all.len(), 13);
        for h in &all {
            assert_eq!(HookPoint::parse(&h.to_string()).unwrap(), *h);
        }
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, all);
        for bad in [
            "blocks.x.hook_resid_post",
            "blocks.01.hook_mlp_out",
            "blocks.1.hook_resid_pre",
            "embed",
            "blocks.1",
        ] {
            assert!(HookPoint::parse(bad).is_err(), "{bad}");
        }
        assert!(HookPoint::ResidPost(3).validate(3).is_err());
        assert!(HookPoint::ResidPost(2).validate(3).is_ok());
    }

    #[test]
    fn edits_validate_and_apply() {
        let mut x = Matrix::from_vec(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let h = HookPoint::Embed;
        let add = Edit::AddDirection {
            rows: vec![0, 2],
            direction: vec![1.0, -1.0],
            scales: vec![2.0, 0.5],
        };
        add.validate(h, 3, 2).unwrap();
        add.apply(&mut x);
        assert_eq!(x.as_slice(), &[3.0, 0.0, 3.0, 4.0, 5.5, 5.5]);
        Edit::Zero { rows: vec![1] }.apply(&mut x);
        assert_eq!(x.row(1), &[0.0, 0.0]);
        Edit::Replace {
            rows: vec![2],
            values: vec![9.0, 8.0],
        }
        .apply(&mut x);
        assert_eq!(x.row(2), &[9.0, 8.0]);
        Edit::MeanAblate {
            rows: vec![0],
            mean: vec![0.5, 0.25],
        }
        .apply(&mut x);
        assert_eq!(x.row(0), &[0.5, 0.25]);

        assert!(Edit::Zero { rows: vec![3] }.validate(h, 3, 2).is_err());
        assert!(Edit::add_direction(vec![0], vec![1.0], 1.0)
            .validate(h, 3, 2)
            .is_err());
        assert!(Edit::Replace {
            rows: vec![0, 1],
            values: vec![0.0; 2]
        }
        .validate(h, 3, 2)
        .is_err());
    }
}
