//! `scinterp demo`: the whole pipeline as a sequence of library calls ([`crate::steps`]). By default
//! it runs on the models of `models/assets` (trained on real blood cells) beside their random-weight
//! controls ([`embedded`]); the planted-program fixture ([`planted`]) is a synthetic model whose known
//! gene programs the pipeline must recover. Both report their steps to an [`Observer`]: progress as
//! counted parts, and one line per step through [`Observer::say`].
//!
//! The demo is an application of the library rather than a building block, so it returns
//! `anyhow::Result`: its errors are the steps' own typed errors with the step they stopped.

use std::path::Path;

use scinterp_engine::sae::pipeline::TrainRequest;

pub mod embedded;
pub mod planted;

pub use crate::steps::Observer;

/// `obs.say(&format!(…))`: one line of the demo's report.
macro_rules! say {
    ($obs:expr, $($arg:tt)*) => {
        $obs.say(&format!($($arg)*))
    };
}
pub(crate) use say;

/// The demo's SAE training settings (batches of 1,024 rows, a 32k-row shuffle buffer, dead after
/// 50k tokens, 10 % of cells held out).
#[allow(clippy::too_many_arguments)]
fn sae_request(
    acts: &Path,
    hook: &str,
    d_sae: usize,
    k: usize,
    out: &Path,
    tokens: u64,
    splice_cells: usize,
    seed: u64,
) -> TrainRequest {
    TrainRequest {
        tokens: Some(tokens),
        batch_size: 1024,
        dead_after_tokens: Some(50_000),
        shuffle_buffer_rows: 1 << 15,
        splice_cells,
        seed,
        overwrite: true,
        checkpoint_every_steps: 0,
        ..TrainRequest::new(acts, hook, d_sae, k, out)
    }
}
