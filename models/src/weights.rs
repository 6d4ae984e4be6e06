//! Reading a model's named tensors out of a checkpoint, collecting every problem instead of stopping at
//! the first, so that one error lists all missing, mis-shaped and unexpected tensors. Each model states
//! which extra keys it ignores (silently or with a warning); anything else left unread is an error.

use std::collections::BTreeSet;

use scinterp_engine::{LayerNormWeights, LinearWeights, WeightShapeError};

use crate::checkpoint::Checkpoint;
use crate::error::ModelError;

/// Keys a model does not read: exact names ignored silently, and key prefixes ignored with one warning
/// each (with the reason shown to the user).
#[derive(Clone, Copy, Debug, Default)]
pub struct IgnoredKeys<'a> {
    pub silently: &'a [&'a str],
    pub with_warning: &'a [(&'a str, &'a str)],
}

pub struct WeightReader<'a> {
    checkpoint: &'a Checkpoint,
    ignored: IgnoredKeys<'a>,
    used: BTreeSet<String>,
    problems: Vec<String>,
}

impl<'a> WeightReader<'a> {
    pub fn new(checkpoint: &'a Checkpoint, ignored: IgnoredKeys<'a>) -> Self {
        WeightReader {
            checkpoint,
            ignored,
            used: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    pub fn checkpoint(&self) -> &'a Checkpoint {
        self.checkpoint
    }

    pub fn has(&self, name: &str) -> bool {
        self.checkpoint.entry(name).is_some()
    }

    /// The tensor `name` as f32, which must have `shape`; an empty vector (and a recorded problem)
    /// otherwise.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Vec<f32> {
        self.used.insert(name.to_string());
        let Some(entry) = self.checkpoint.entry(name) else {
            self.problems
                .push(format!("missing tensor `{name}` (expected shape {shape:?})"));
            return Vec::new();
        };
        if entry.shape != shape {
            self.problems.push(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                entry.shape
            ));
            return Vec::new();
        }
        match self.checkpoint.to_f32(name) {
            Ok(v) => v,
            Err(e) => {
                self.problems.push(e.to_string());
                Vec::new()
            }
        }
    }

    /// The first of several accepted spellings of one tensor (e.g. flash-attention vs torch names).
    /// Two spellings present at once is a problem: which one the model means would be a guess.
    pub fn take_any(&mut self, names: &[String], shape: &[usize]) -> Vec<f32> {
        let present: Vec<&String> = names.iter().filter(|n| self.has(n)).collect();
        match present.as_slice() {
            [one] => {
                let one = (*one).clone();
                self.take(&one, shape)
            }
            [] => {
                let list = names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(" or ");
                self.problems
                    .push(format!("missing tensor {list} (expected shape {shape:?})"));
                Vec::new()
            }
            several => {
                let list = several
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.used.extend(several.iter().map(|n| n.to_string()));
                self.problems
                    .push(format!("{list} are spellings of the same tensor; keep only one"));
                Vec::new()
            }
        }
    }

    /// A linear layer `{prefix}.weight` `[out, inp]` and `{prefix}.bias` `[out]`.
    pub fn linear(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
    ) -> Result<LinearWeights, WeightShapeError> {
        let weight = self.take(&format!("{prefix}.weight"), &[out, inp]);
        let bias = self.take(&format!("{prefix}.bias"), &[out]);
        LinearWeights::new(weight, Some(bias), out, inp)
    }

    /// A linear layer without bias.
    pub fn linear_no_bias(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
    ) -> Result<LinearWeights, WeightShapeError> {
        let weight = self.take(&format!("{prefix}.weight"), &[out, inp]);
        LinearWeights::new(weight, None, out, inp)
    }

    pub fn layer_norm(
        &mut self,
        prefix: &str,
        width: usize,
        eps: f64,
    ) -> Result<LayerNormWeights, WeightShapeError> {
        let gamma = self.take(&format!("{prefix}.weight"), &[width]);
        let beta = self.take(&format!("{prefix}.bias"), &[width]);
        LayerNormWeights::new(gamma, beta, eps)
    }

    pub fn mark_used(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    pub fn mark_used_prefix(&mut self, prefix: &str) {
        let names: Vec<String> = self
            .checkpoint
            .names()
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect();
        self.used.extend(names);
    }

    /// Fails with every problem seen, plus every key that was neither read nor declared ignorable.
    pub fn finish(mut self) -> Result<(), ModelError> {
        let mut warned = BTreeSet::new();
        for name in self.checkpoint.names() {
            if self.used.contains(name) || self.ignored.silently.contains(&name) {
                continue;
            }
            if let Some((prefix, why)) = self
                .ignored
                .with_warning
                .iter()
                .find(|(p, _)| name.starts_with(p))
            {
                if warned.insert(*prefix) {
                    tracing::warn!(
                        "{}: ignoring `{prefix}*` tensors ({why})",
                        self.checkpoint.path().display()
                    );
                }
                continue;
            }
            self.problems.push(format!("unexpected tensor `{name}`"));
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Weights {
                path: self.checkpoint.path().to_path_buf(),
                problems: std::mem::take(&mut self.problems),
            })
        }
    }
}
