//! `scinterp`: the command line. One module per subcommand; each parses its arguments, calls the
//! libraries and reports. No science lives here.

mod analyze;
mod annotate;
mod apply;
mod args;
mod atlas;
mod consensus;
mod demo;
mod effects;
mod export;
mod extract;
mod forward;
mod layers;
mod progress;
mod sae;
mod tokenize;
mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "scinterp",
    version,
    about = "Mechanistic interpretability of single-cell foundation models (Geneformer, scGPT)"
)]
struct Cli {
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print the command's summary as one line of JSON on stdout (keys sorted).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a forward pass with hook points and write the captured tensors (safetensors).
    Forward(forward::ForwardArgs),
    /// Run the pipeline on the embedded default model and cells; writes to a folder.
    Demo(demo::DemoArgs),
    /// Tokenize real cells for a model; writes a token store.
    Tokenize(tokenize::TokenizeArgs),
    /// Run a model over a token store and write hook activations to a (resumable) activation store
    /// (`--shard i/n`; `extract merge` joins the shards).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Extract(extract::ExtractCli),
    /// TopK sparse autoencoders: train, encode, eval, synth.
    Sae(sae::SaeArgs),
    /// Trace causal edges between SAE features by ablation with tail replay (`trace run`; `trace
    /// merge` combines shards).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Trace(trace::TraceArgs),
    /// Build the feature catalogue of an SAE over an activation store: statistics, top genes and cells,
    /// SVD comparison, co-activation modules.
    Analyze(analyze::AnalyzeArgs),
    /// Compare SAEs across layers: decoder matching, lifespans, PMI highways with a permuted-pairing null.
    Layers(layers::LayersArgs),
    /// Feature → output: ablate or steer SAE features and read the MLM logits (gene set vs others) and a
    /// direction, against a norm-matched random-direction control.
    Effects(effects::EffectsArgs),
    /// Annotate a feature catalog: gene-set, TRRUST/PPI edge and cell-type enrichment with BH over every test
    Annotate(annotate::AnnotateArgs),
    /// Build the static web atlas (works from file://); `atlas serve DIR` serves one on 127.0.0.1.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Atlas(atlas::AtlasArgs),
    /// Export an operator read out of a model as a standalone pseudotime + cell-type tool (ONNX,
    /// safetensors + card).
    Export(export::ExportArgs),
    /// Run an exported tool on new cells (.h5ad, 10x folder, .loom): latent, pseudotime and cell type per cell.
    Apply(apply::ApplyArgs),
    /// Compare two models' annotated circuit graphs: term pairs conserved in both, against a null that
    /// permutes term labels among features (degrees kept).
    Consensus(consensus::ConsensusArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    progress::set_hidden(cli.quiet);
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
        {
            eprintln!("error: cannot set up {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Forward(args) => forward::run(args, cli.json),
        Command::Demo(args) => demo::run(args),
        Command::Tokenize(args) => tokenize::run(args, cli.json),
        Command::Extract(args) => extract::run(args, cli.json),
        Command::Sae(args) => sae::run(args, cli.json),
        Command::Trace(args) => trace::run(args, cli.json),
        Command::Analyze(args) => analyze::run(args, cli.json),
        Command::Layers(args) => layers::run(args, cli.json),
        Command::Effects(args) => effects::run(args, cli.json),
        Command::Annotate(args) => annotate::run(args, cli.json),
        Command::Atlas(args) => atlas::run(args, cli.json),
        Command::Export(args) => export::run(args, cli.json),
        Command::Apply(args) => apply::run(args, cli.json),
        Command::Consensus(args) => consensus::run(args, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message before it already
/// contains (many errors quote their source, e.g. "cannot open x: No such file…" over the io::Error).
fn error_report(e: &anyhow::Error) -> String {
    let mut report = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || report.contains(&text) {
            continue;
        }
        if !report.is_empty() {
            report.push_str(": ");
        }
        report.push_str(&text);
    }
    report
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SCINTERP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: in batch logs they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}

#[cfg(test)]
mod tests {
    use super::error_report;

    #[test]
    fn a_cause_quoted_by_its_message_is_printed_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "No such file or directory (os error 2)",
        );
        let quoted = format!("cannot open x.npy: {io}");
        let e = anyhow::Error::new(io)
            .context(quoted)
            .context("reading the store");
        assert_eq!(
            error_report(&e),
            "reading the store: cannot open x.npy: No such file or directory (os error 2)"
        );
        let plain = anyhow::Error::new(std::io::Error::other("disk full")).context("writing y");
        assert_eq!(error_report(&plain), "writing y: disk full");
    }
}
