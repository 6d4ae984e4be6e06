//! `scinterp demo`: arguments → [`scinterp_export::demo`] (the whole pipeline as library calls, on the
//! embedded models or, with `--planted`, the planted-program fixture) → what came back, printed.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use scinterp_export::demo::{embedded, planted};

use crate::progress::Bars;

mod report;

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
    let mut bars = Bars::default();
    if args.planted {
        let config = planted::PlantedConfig {
            out: args.out,
            seed: args.seed,
            data: args.data,
        };
        planted::run(&config, &mut bars)?;
        return Ok(());
    }
    let config = embedded::EmbeddedConfig {
        out: args.out,
        seed: args.seed,
        // The checkout's models/assets, where `cargo run -- demo` finds the embedded models and cells.
        assets: args
            .assets
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/assets")),
    };
    let report = embedded::run(&config, &mut bars)?;
    report::print(&report);
    Ok(())
}
