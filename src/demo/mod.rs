//! `scinterp demo`: the main job on the embedded default. By default it runs the pipeline on the
//! models of `models/assets` (trained on real blood cells) beside their random-weight controls
//! ([`embedded`]); `--planted` runs the older fixture with planted gene programs ([`planted`]).

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

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

/// Parses a subcommand's arguments exactly as the command line would.
#[derive(clap::Parser)]
struct Parsed<T: clap::Args> {
    #[command(flatten)]
    args: T,
}

fn parse<T: clap::Args>(argv: &[&str]) -> Result<T> {
    use clap::Parser;
    Ok(Parsed::<T>::try_parse_from(std::iter::once("scinterp").chain(argv.iter().copied()))?.args)
}

/// The demo's SAE training settings (batches of 1,024 rows, a 32k-row shuffle buffer, dead after
/// 50k tokens, 10 % of cells held out).
#[allow(clippy::too_many_arguments)]
fn sae_args(
    acts: &Path,
    hook: &str,
    d_sae: usize,
    k: usize,
    out: &Path,
    tokens: u64,
    splice_cells: usize,
    seed: u64,
) -> crate::sae::TrainArgs {
    crate::sae::TrainArgs {
        acts: acts.to_path_buf(),
        hook: hook.into(),
        d_sae,
        k,
        out: out.to_path_buf(),
        tokens: Some(tokens),
        batch_size: 1024,
        lr: None,
        warmup_steps: None,
        aux_k: None,
        aux_coef: 1.0 / 32.0,
        dead_after_tokens: Some(50_000),
        no_normalize: false,
        holdout: 0.1,
        shuffle_buffer_rows: 1 << 15,
        splice_cells,
        seed,
        overwrite: true,
        device: scinterp_engine::device::DeviceChoice::Cpu,
        gpu_precision: crate::forward::GpuPrecisionArg::Bf16,
        skip_nonfinite_rows: false,
        checkpoint_every: 0,
        stop_after_steps: None,
        json: false,
    }
}
