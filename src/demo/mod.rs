//! `scinterp demo`: the main job on the embedded default. By default it runs the pipeline on the
//! models of `models/assets` (trained on real blood cells) beside their random-weight controls
//! ([`embedded`]); `--planted` runs the older fixture with planted gene programs ([`planted`]).

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use scinterp_engine::sae::pipeline::TrainRequest;

mod embedded;
mod planted;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Folder for everything the demo writes.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Seed of the random-weight controls, SAEs, nulls (and of the planted model with --planted).
    #[arg(long, default_value_t = 20_261_121)]
    seed: u64,
    /// The embedded assets folder (models and cells; default: this checkout's models/assets).
    #[arg(long)]
    assets: Option<PathBuf>,
    /// Run the planted-program fixture instead: a synthetic model whose known gene programs the
    /// pipeline must recover (fast; used by the tests).
    #[arg(long)]
    planted: bool,
    /// With --planted: also run real cells (a folder laid out like ../shared/data) through the
    /// synthetic model.
    #[arg(long, requires = "planted")]
    data: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> Result<()> {
    if args.planted {
        return planted::run(planted::PlantedArgs {
            out: args.out,
            seed: args.seed,
            data: args.data,
        });
    }
    embedded::run(embedded::EmbeddedArgs {
        out: args.out,
        seed: args.seed,
        assets: args.assets.unwrap_or_else(embedded::default_assets),
    })
}

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
