//! `scinterp effects`: feature → output. Ablate (α = 0) or steer (α > 1, a dose list) SAE features in
//! the residual stream, replay the rest of the model and its MLM head, and read the change in the logit
//! of each position's own token (readout gene set vs the other genes) and, optionally, along a given
//! direction of the final state, and optionally an exported tool's pseudotime; every edit is repeated with a norm-matched random direction.
//! Arguments → [`EffectsConfig`] → [`scinterp_export::steering::effects`] → the summary, printed.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use scinterp_engine::effects::pipeline::DEFAULT_MAX_BATCH_TOKENS;
use scinterp_engine::effects::EffectsConfig;
use scinterp_export::steering::EffectsFiles;
use scinterp_export::steps;

use crate::args::{print_json, DeviceArgs};
use crate::progress::Bars;

#[derive(Args, Debug)]
pub struct EffectsArgs {
    /// Model folder (its MLM head is read).
    #[arg(long)]
    model: PathBuf,
    /// Token store of the cells.
    #[arg(long)]
    input: PathBuf,
    /// SAE folders: `<saes>/<hook>/cfg.json`, or any subfolder whose cfg.json names the hook.
    #[arg(long)]
    saes: PathBuf,
    /// Source hook (`blocks.L.hook_resid_post`).
    #[arg(long)]
    source: String,
    /// `all` or a comma list of source features.
    #[arg(long)]
    features: String,
    /// First N cells of the store (default all).
    #[arg(long)]
    cells: Option<usize>,
    /// Scales of a_f (comma list): 0 ablates, values above 1 amplify (steering doses).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0",
        allow_negative_numbers = true
    )]
    alphas: Vec<f32>,
    /// Readout gene set: token ids, as a comma list or a file with one id per line (optional with
    /// --pseudotime-tool).
    #[arg(long, required_unless_present = "pseudotime_tool")]
    readout_tokens: Option<String>,
    /// Optional readout direction on the final state: a .npy of d_model f32 values.
    #[arg(long)]
    direction: Option<PathBuf>,
    /// An exported tool (`scinterp export operator`) of this model whose pseudotime is read on the edited
    /// cells: adds the pseudotime_shift columns (README, "scinterp effects").
    #[arg(long)]
    pseudotime_tool: Option<PathBuf>,
    /// Seed of the norm-matched random control directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip the random-direction control (halves the work).
    #[arg(long)]
    no_control: bool,
    /// Tokens per tail pass (the logits are tokens × vocabulary floats).
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH_TOKENS)]
    max_batch_tokens: usize,
    /// Output table (.parquet or .tsv), one row per (feature, α).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out table; without it one is refused.
    #[arg(long)]
    overwrite: bool,
    /// Where the clean runs and edited tail replays run (the MLM-head readouts stay on the CPU).
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: EffectsArgs, json: bool) -> Result<()> {
    let backend = args.device.backend()?;
    let config = EffectsConfig {
        cells: args.cells,
        alphas: args.alphas.clone(),
        readout_tokens: match &args.readout_tokens {
            Some(spec) => read_tokens(spec)?,
            None => HashSet::new(),
        },
        direction: args.direction.clone(),
        control_seed: (!args.no_control).then_some(args.seed),
        max_batch_tokens: args.max_batch_tokens,
        overwrite: args.overwrite,
        ..EffectsConfig::new(&args.source, &args.features, &args.out)
    };
    let files = EffectsFiles {
        model: &args.model,
        input: &args.input,
        saes: &args.saes,
        pseudotime_tool: args.pseudotime_tool.as_deref(),
    };
    print_json(
        json,
        &steps::effects(
            &files,
            config,
            backend,
            args.device.precision(),
            &mut Bars::default(),
        )?,
    )
}

fn read_tokens(spec: &str) -> Result<HashSet<u32>> {
    let path = std::path::Path::new(spec);
    let text = if path.is_file() {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    } else {
        spec.replace(',', "\n")
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<u32>().with_context(|| {
                format!("--readout-tokens: `{l}` is not a token id (give ids, one per line)")
            })
        })
        .collect()
}
