//! `scinterp demo`: the main job on the embedded default. By default it runs the pipeline on the
//! models of `models/assets` (trained on real blood cells) beside their random-weight controls
//! ([`embedded`]); `--planted` runs the older fixture with planted gene programs ([`planted`]).

use std::path::PathBuf;

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
