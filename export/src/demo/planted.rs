//! `scinterp demo --planted`: the fast test fixture (the demo before the embedded models existed). It
//! makes a small Geneformer-V2-shaped model with planted gene programs and a few cells with our own
//! seeded code, writes them to disk, loads them back through the real readers, runs the forward pass
//! with every hook, shows a tail replay and an edit, then extracts, trains TopK SAEs, traces, analyses
//! and annotates, where the planted programs are the known answer.

use super::say;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use scinterp_engine::analyze::AnalyzeConfig;
use scinterp_engine::annotate::AnnotateConfig;
use scinterp_engine::{run as run_encoder, Edit, HookPlan, HookPoint, Matrix, PackedBatch, Start};
use scinterp_models::forward::forward_to_file;
use scinterp_models::input::InputCells;
use scinterp_models::planted::{
    program_cells, programs, random_cells, unit_direction, write_model, HEADS, HIDDEN, LAYERS, POOL,
    POOL_START, PROGRAMS, PROGRAM_SIZE, VOCAB,
};
use scinterp_models::registry::TokenizerKind;
use scinterp_models::synthetic::splitmix64;
use scinterp_models::token_store::{TokenStore, TokenStoreManifest};
use scinterp_models::tokenize::geneformer::GeneIdKind;
use scinterp_models::tokenize::pipeline::Config as TokenizeConfig;
use serde_json::json;

use crate::steering::EffectsFiles;
use scinterp_engine::cuda::GpuPrecision;
use scinterp_engine::device::Backend;
use scinterp_engine::effects::EffectsConfig;
use scinterp_engine::sae::pipeline::TrainReport;
use scinterp_models::extract::{ExtractConfig, ExtractSummary};

use scinterp_engine::analyze::LayersConfig;
use scinterp_engine::trace::{EdgeFilters, TraceConfig};

use super::sae_request;
use scinterp_models::trace::TraceFiles;

use crate::steps::{self, Observer};

/// Where the planted demo writes, its seed, and optional real cells.
pub struct PlantedConfig {
    pub out: PathBuf,
    pub seed: u64,
    /// Reference data folder (`../shared/data` layout) for the optional real-cells step.
    pub data: Option<PathBuf>,
}

/// Runs the planted-program demo (see the module comment); returns the path of its `summary.json`.
pub fn run(args: &PlantedConfig, obs: &mut dyn Observer) -> Result<PathBuf> {
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    say!(
        obs,
        "scinterp demo --planted (seed {}), writing to {}",
        args.seed,
        out.display()
    );

    let model_dir = out.join("model");
    write_model(&model_dir, args.seed)?;
    say!(
        obs,
        "  model    {}: Geneformer-V2-shaped BertForMaskedLM, {LAYERS} layers, d_model {HIDDEN}, {HEADS} heads, \
         vocab {VOCAB}; seeded synthetic weights",
        model_dir.display()
    );

    let cells = random_cells(args.seed, 8);
    let cells_path = out.join("cells.json");
    std::fs::write(
        &cells_path,
        serde_json::to_string(&json!({ "input_ids": cells }))?,
    )
    .with_context(|| format!("cannot write {}", cells_path.display()))?;
    let n_tokens: usize = cells.iter().map(Vec::len).sum();
    say!(
        obs,
        "  cells    {}: {} cells in V2 form [<cls>, genes…, <eos>], {} tokens, lengths {:?}",
        cells_path.display(),
        cells.len(),
        n_tokens,
        cells.iter().map(Vec::len).collect::<Vec<_>>()
    );

    // 1. The forward pass through the same code as `scinterp forward`: the residual stream after the
    //    embedding and after every block (the logits over 20,275 tokens would be 200 MB, so not here).
    let loaded = scinterp_models::load(&model_dir, true)?;
    let model = loaded.encoder.as_ref();
    let hooks: Vec<HookPoint> = std::iter::once(HookPoint::Embed)
        .chain((0..LAYERS).map(HookPoint::ResidPost))
        .collect();
    let forward_path = out.join("forward.safetensors");
    let input = InputCells {
        tokens: cells.clone(),
        values: None,
    };
    let summary = forward_to_file(
        model,
        &scinterp_engine::CpuForward,
        &input,
        &hooks,
        false,
        &forward_path,
        16_384,
    )?;
    say!(
        obs,
        "  forward  {}: {} hooks (hook_embed, blocks.*.hook_resid_post), {} tokens in {:.3} s ({:.0} tokens/s, {} threads)",
        forward_path.display(),
        hooks.len(),
        summary.tokens,
        summary.forward_seconds,
        summary.tokens_per_second,
        summary.threads
    );

    // 2. Tail replay: the state after block 1, fed to blocks 2.., reproduces the full pass.
    let batch = PackedBatch::from_cells(&cells)?;
    let last = HookPoint::ResidPost(LAYERS - 1);
    let plan = HookPlan::new().capture(HookPoint::ResidPost(1)).capture(last);
    let mut full = run_encoder(model, &batch, &plan, Start::Embed, true)?;
    let state = full
        .captures
        .take(HookPoint::ResidPost(1))
        .context("capture missing")?;
    let replay = run_encoder(
        model,
        &batch,
        &HookPlan::new(),
        Start::BlockInput { layer: 2, state },
        true,
    )?;
    let replay_diff = full.final_state.max_abs_diff(&replay.final_state);
    say!(obs, "  replay   blocks 2..{} from the captured blocks.1.hook_resid_post: max |Δ| vs the full pass = {replay_diff:e}", LAYERS - 1);

    // 3. An edit: push cell 0's first five genes along a fixed direction at blocks.1.hook_resid_post.
    let direction = unit_direction(args.seed, HIDDEN);
    let rows: Vec<usize> = (1..6).map(|p| batch.row(0, p)).collect();
    let edit_plan = HookPlan::new()
        .edit(HookPoint::ResidPost(1), Edit::add_direction(rows, direction, 4.0))
        .capture_many((2..LAYERS).map(HookPoint::ResidPost));
    let edited = run_encoder(model, &batch, &edit_plan, Start::Embed, true)?;
    let clean_plan = HookPlan::new().capture_many((2..LAYERS).map(HookPoint::ResidPost));
    let clean = run_encoder(model, &batch, &clean_plan, Start::Embed, true)?;
    let mut edit_effects = Vec::new();
    for l in 2..LAYERS {
        let h = HookPoint::ResidPost(l);
        let (a, b) = (
            clean.captures.get(h).context("capture")?,
            edited.captures.get(h).context("capture")?,
        );
        let in_cell0 = mean_row_change(a, b, batch.cell_range(0));
        let in_cell1 = mean_row_change(a, b, batch.cell_range(1));
        say!(obs, "  edit     +4·w at 5 genes of cell 0 (blocks.1.hook_resid_post) → {h}: mean |Δ| per position {in_cell0:.4} in cell 0, {in_cell1:.1e} in cell 1");
        edit_effects.push(json!({ "hook": h.to_string(), "cell0": in_cell0, "cell1": in_cell1 }));
    }
    let logit_shift = match (&clean.head, &edited.head) {
        (Some(a), Some(b)) => mean_row_change(a, b, batch.cell_range(0)),
        _ => 0.0,
    };
    say!(
        obs,
        "  edit     mean |Δ logit| per position in cell 0: {logit_shift:.4}"
    );

    // 4. Extract + SAE: a token store of 96 cells, blocks.2.hook_resid_post at gene positions into an
    //    activation store (f16), and a TopK SAE (4× wide, k 16) trained on it.
    let (extract_summary, sae_report, trace_summary) = extract_and_train(out, &model_dir, args.seed, obs)?;
    // 7. Analysis: the catalogue of the blocks.2 SAE and the comparison of the three layers' SAEs.
    let (catalog, layers) = analyze_step(out, args.seed, obs)?;
    // 8. Feature → output: ablate and steer blocks.1 features, read the logits of program 1's genes.
    let output_effects = effects_step(out, &model_dir, args.seed, obs)?;

    let real = match &args.data {
        Some(data) => Some(real_cells_step(out, &model_dir, data, args.seed, obs)?),
        None => None,
    };

    let summary_path = out.join("summary.json");
    let report = json!({
        "extract": extract_summary,
        "sae": sae_report,
        "trace": trace_summary,
        "analyze": catalog,
        "layers": layers,
        "effects": output_effects,
        "real_cells": real,
        "seed": args.seed,
        "model": model_dir.display().to_string(),
        "cells": cells.len(),
        "tokens": n_tokens,
        "forward": summary,
        "tail_replay_max_abs_diff": replay_diff,
        "edit_effects": edit_effects,
        "edit_mean_abs_logit_change_cell0": logit_shift,
    });
    std::fs::write(&summary_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    say!(obs, "  summary  {}", summary_path.display());
    Ok(summary_path)
}

/// Steps 4–6 of the demo: token store → activation store → SAEs → trace.
fn extract_and_train(
    out: &Path,
    model_dir: &Path,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<(
    Option<ExtractSummary>,
    TrainReport,
    scinterp_engine::formats::trace::TraceSummary,
)> {
    let cells = program_cells(seed ^ 0x5A3, 160);
    let n_tokens: usize = cells.iter().map(Vec::len).sum();
    let store_dir = out.join("tokens");
    let store = TokenStore {
        manifest: TokenStoreManifest {
            format: scinterp_models::token_store::FORMAT.into(),
            format_version: scinterp_models::token_store::FORMAT_VERSION,
            tokenizer: "geneformer".into(),
            tokenizer_version: "V2".into(),
            options: json!({"demo_seed": seed}),
            dictionaries: Default::default(),
            source_path: "demo (seeded synthetic cells)".into(),
            hash_algorithm: "blake3".into(),
            source_hash: String::new(),
            n_cells: cells.len(),
            n_tokens,
            max_len: cells.iter().map(Vec::len).max().unwrap_or(0),
            has_values: false,
            n_cells_dropped: 0,
            scinterp_version: env!("CARGO_PKG_VERSION").into(),
        },
        cell_table: (
            vec!["cell".into()],
            (0..cells.len()).map(|c| vec![format!("demo_cell_{c}")]).collect(),
        ),
        cells,
        values: None,
    };
    store.write(&store_dir, true)?;
    let acts = out.join("acts");
    let hook = "blocks.2.hook_resid_post";
    let hooks = "blocks.1.hook_resid_post,blocks.2.hook_resid_post,blocks.3.hook_resid_post";
    // A rerun of the demo starts the store afresh (its settings may differ from an older demo's).
    let extracted = steps::extract(
        &ExtractConfig {
            max_batch_tokens: 4096,
            overwrite: true,
            ..ExtractConfig::new(model_dir, &store_dir, hooks, &acts)
        },
        obs,
    )?;
    if let Some(s) = &extracted {
        say!(
            obs,
            "  extract  {}: {hooks} at {} gene positions of {} cells (f16), {:.1} cells/s",
            acts.display(),
            s.n_rows,
            s.n_cells,
            s.cells_per_second
        );
    }
    let sae_dir = out.join("sae");
    let report = steps::train_sae(
        &sae_request(&acts, hook, 4 * HIDDEN, 16, &sae_dir, 200_000, 8, seed),
        obs,
    )?;
    say!(
        obs,
        "  sae      {}: {}→{} TopK (k {}), {} tokens at {:.0} tokens/s; held-out FVU {:.3}, L0 {:.1}, dead {:.1} %",
        sae_dir.display(),
        report.d_in,
        report.d_sae,
        report.k,
        report.summary.tokens_trained,
        report.summary.tokens_per_second,
        report.heldout.fvu,
        report.heldout.l0,
        100.0 * report.heldout.dead_fraction
    );
    if let Some(s) = &report.spliced {
        say!(
        obs,
            "  sae      masked-gene cross-entropy: clean {:.3}, SAE spliced in {:.3}, zero-ablated {:.3} (loss recovered {:.2})",
            s.clean, s.spliced, s.zero_ablated, s.loss_recovered
        );
    }
    // 6. A small trace: ablate 16 features of an SAE at blocks.1, replay blocks 2–3, and test how the
    //    features of an SAE at blocks.3 change.
    let saes = out.join("saes");
    for h in ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"] {
        steps::train_sae(
            &sae_request(&acts, h, 2 * HIDDEN, 8, &saes.join(h), 100_000, 0, seed),
            obs,
        )?;
    }
    let edges = out.join("edges.tsv");
    let files = TraceFiles {
        model: model_dir,
        input: &store_dir,
        saes: &saes,
    };
    let config = TraceConfig {
        features: (0..16).map(|f| f.to_string()).collect::<Vec<_>>().join(","),
        cells: Some(32),
        filters: EdgeFilters {
            min_abs_d: 0.5,
            ..EdgeFilters::default()
        },
        null_permutations: 20,
        seed,
        overwrite: true,
        ..TraceConfig::new("blocks.1.hook_resid_post", "blocks.3.hook_resid_post", &edges)
    };
    let trace = steps::trace(&files, &config, Backend::Cpu, GpuPrecision::Bf16, obs)?;
    say!(
        obs,
        "  trace    {}: 16 features of blocks.1 × 32 cells = {} ablations ({:.0}/s), {} tests (≥ 3 cells), {} edges at q ≤ 0.05 and |d| ≥ 0.5 to blocks.3 (source raises target {:.2}, lowers {:.2}); sign-flip null of the fixed rule p ≤ {:.2e} and |d| ≥ 0.5 ({} permutations): {:.1} edges, empirical FDR {:.3}",
        edges.display(),
        trace.ablations,
        trace.ablations_per_second,
        trace.tests_performed,
        trace.edges_written,
        trace.source_raises_target_fraction,
        trace.source_lowers_target_fraction,
        trace.null.as_ref().and_then(|n| n.p_threshold).unwrap_or(f64::NAN),
        trace.null.as_ref().map_or(0, |n| n.permutations),
        trace.null.as_ref().map_or(f64::NAN, |n| n.null_edges_mean),
        trace.null.as_ref().map_or(f64::NAN, |n| n.empirical_fdr),
    );
    Ok((extracted, report, trace))
}

/// Step 7: `scinterp analyze` on the blocks.2 SAE (gene names from a TSV the demo writes: gene
/// `DEMO<token>`), then `scinterp layers` over the SAEs of blocks 1, 2 and 3.
fn analyze_step(
    out: &Path,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<(serde_json::Value, serde_json::Value)> {
    let genes = out.join("genes.tsv");
    let mut text = String::from("token\tgene_id\tsymbol\n");
    for t in POOL_START..POOL_START + POOL as u32 {
        text.push_str(&format!("{t}\tDEMO{t}\tDEMO{t}\n"));
    }
    std::fs::write(&genes, text).with_context(|| format!("cannot write {}", genes.display()))?;
    let catalog_dir = out.join("catalog");
    let config = AnalyzeConfig {
        seed,
        overwrite: true,
        ..AnalyzeConfig::new(out.join("acts"), out.join("sae"), catalog_dir.clone())
    };
    let catalog = serde_json::to_value(steps::analyze(&config, Some(&genes), obs)?)?;
    let svd = &catalog["svd"];
    say!(
        obs,
        "  analyze  {}: {} of {} latents alive; SAE at mean L0 {:.1} explains {:.1} % vs {:.1} % for the top {} SVD axes \
         (matched L0; top 50: {:.1} %); {} aligned at |cos| > 0.5 with one axis (published \"invisible\": {}), but {} \
         have ‖P₅₀w‖² ≥ 0.5; {} co-activation edges → {} modules",
        catalog_dir.display(),
        catalog["alive"],
        catalog["d_sae"],
        svd["sae_mean_l0"].as_f64().unwrap_or(f64::NAN),
        100.0 * svd["sae_variance_explained_all_rows"].as_f64().unwrap_or(f64::NAN),
        100.0 * svd["svd_variance_explained_at_matched_rank"].as_f64().unwrap_or(f64::NAN),
        svd["matched_rank"],
        100.0 * svd["variance_explained"].as_f64().unwrap_or(f64::NAN),
        svd["aligned_max_abs_cos_gt_0_5"],
        svd["invisible_published_rule"],
        svd["projected_norm_sq_at_least"]["0.5"],
        catalog["coactivation"]["edges"],
        catalog["modules"]["count"],
    );
    let layers_dir = out.join("layers");
    let saes = out.join("saes");
    let layers = serde_json::to_value(steps::compare_layers(
        &LayersConfig {
            acts: out.join("acts"),
            saes: vec![
                saes.join("blocks.1.hook_resid_post"),
                out.join("sae"),
                saes.join("blocks.3.hook_resid_post"),
            ],
            control_saes: Vec::new(),
            out: layers_dir.clone(),
            format: scinterp_engine::formats::TableFormat::Parquet,
            match_threshold: 0.7,
            strong_threshold: 0.9,
            highway_min_fires: 100,
            highway_min_cocount: 20,
            highway_pmi: 3.0,
            chunk_rows: 8192,
            overwrite: true,
        },
        obs,
    )?)?;
    let pair = &layers["highways"]["pairs"][0];
    say!(
        obs,
        "  layers   {}: blocks.1→2 decoder matches {} of {}; highways {} of {} sources (within-token null: {})",
        layers_dir.display(),
        layers["matching"]["pairs"][0]["matches"],
        layers["matching"]["pairs"][0]["alive_from"],
        pair["highways"],
        pair["eligible_sources"],
        pair["highways_permuted_pairing"],
    );
    let annotation = annotate_programs(out, &catalog_dir, seed, obs)?;
    Ok((json!({ "catalog": catalog, "annotation": annotation }), layers))
}

/// Step 7b: `scinterp annotate` of the blocks.2 catalogue against a GMT of the 12 planted programs plus
/// 36 decoy sets of 20 random pool genes: how many programs come back as some feature's best term.
fn annotate_programs(
    out: &Path,
    catalog_dir: &Path,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<serde_json::Value> {
    let gmt = out.join("programs.gmt");
    let mut text = String::new();
    for (p, genes) in programs().iter().enumerate() {
        let names: Vec<String> = genes.iter().map(|g| format!("DEMO{g}")).collect();
        text.push_str(&format!(
            "PLANTED_PROGRAM_{:02}\tplanted in the demo model\t{}\n",
            p + 1,
            names.join("\t")
        ));
    }
    let mut state = splitmix64(seed ^ 0xDEC0);
    for decoy in 0..36 {
        let mut genes = std::collections::BTreeSet::new();
        while genes.len() < PROGRAM_SIZE {
            state = splitmix64(state);
            genes.insert(POOL_START + (state % POOL as u64) as u32);
        }
        let names: Vec<String> = genes.iter().map(|g| format!("DEMO{g}")).collect();
        text.push_str(&format!(
            "DECOY_{:02}\trandom pool genes\t{}\n",
            decoy + 1,
            names.join("\t")
        ));
    }
    std::fs::write(&gmt, text).with_context(|| format!("cannot write {}", gmt.display()))?;
    let ann_dir = out.join("annotation");
    let config = AnnotateConfig {
        gene_sets: vec![gmt.clone()],
        seed,
        overwrite: true,
        ..AnnotateConfig::new(vec![catalog_dir.to_path_buf()], ann_dir.clone())
    };
    let summary = serde_json::to_value(steps::annotate(&config, obs)?)?;
    let best = scinterp_engine::formats::Table::read(&ann_dir.join("best_terms.parquet"))?;
    let terms = best.strs("term")?;
    let recovered: std::collections::BTreeSet<&str> = terms
        .iter()
        .filter(|t| t.starts_with("PLANTED"))
        .map(String::as_str)
        .collect();
    let decoys = terms.iter().filter(|t| t.starts_with("DECOY")).count();
    say!(
        obs,
        "  annotate {}: {} of {PROGRAMS} planted programs are the best term of some feature ({} features), decoy \
         sets best for {decoys}; BH over all {} (feature, term) pairs (gene_sets family; background {} genes with \
         ≥ {} positions)",
        ann_dir.display(),
        recovered.len(),
        terms.len() - decoys,
        summary["catalogs"][0]["m"],
        summary["catalogs"][0]["background_genes"],
        summary["catalogs"][0]["background_min_positions"],
    );
    Ok(json!({
        "programs_recovered": recovered.len(),
        "features_with_a_program": terms.len() - decoys,
        "features_with_a_decoy": decoys,
        "summary": summary,
    }))
}

/// Step 8: `scinterp effects` on 16 blocks.1 features over 32 cells, ablated (α = 0) and amplified
/// (α = 3), reading the own-token logits of planted program 1's genes against the others, each edit
/// next to a norm-matched random direction.
fn effects_step(
    out: &Path,
    model_dir: &Path,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<serde_json::Value> {
    let table = out.join("effects.parquet");
    let features = (0..16).map(|f| f.to_string()).collect::<Vec<_>>().join(",");
    let files = EffectsFiles {
        model: model_dir,
        input: &out.join("tokens"),
        saes: &out.join("saes"),
        pseudotime_tool: None,
    };
    let config = EffectsConfig {
        cells: Some(32),
        alphas: vec![0.0, 3.0],
        readout_tokens: programs()[0].iter().copied().collect(),
        control_seed: Some(seed),
        overwrite: true,
        ..EffectsConfig::new("blocks.1.hook_resid_post", &features, &table)
    };
    let summary = serde_json::to_value(steps::effects(
        &files,
        config,
        Backend::Cpu,
        GpuPrecision::Bf16,
        obs,
    )?)?;
    let rows = scinterp_engine::formats::Table::read(&table)?;
    let q = rows.f64s("vs_control_q")?;
    say!(
        obs,
        "  effects  {}: {} edits ({:.0}/s) of 16 blocks.1 features at α = 0 and 3 over 32 cells; {} of {} (feature, α) \
         rows differ from the random-direction control at q ≤ 0.05",
        table.display(),
        summary["edits"],
        summary["edits_per_second"].as_f64().unwrap_or(f64::NAN),
        q.iter().filter(|&&q| q <= 0.05).count(),
        q.len(),
    );
    Ok(summary)
}

/// Step 8 (with `--data`): real mouse myeloid progenitors (paul15, mapped to human genes through
/// orthologs) → Geneformer V2 tokens → the demo model → activation store → SAE → catalogue.
fn real_cells_step(
    out: &Path,
    model_dir: &Path,
    data: &Path,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<serde_json::Value> {
    let need = |rel: &str| -> Result<String> {
        let p = data.join(rel);
        if !p.exists() {
            anyhow::bail!(
                "{} is missing: --data must be a folder laid out like ../shared/data (see its README)",
                p.display()
            );
        }
        Ok(p.display().to_string())
    };
    let real = out.join("real");
    let tokens = real.join("tokens");
    let (cells, dictionaries) = (need("cells/paul15.h5ad.gz")?, need("geneformer/v2")?);
    let orthologs = need("orthologs/Ensembl105_Human2Mouse_Genes.csv")?;
    let config = TokenizeConfig {
        dictionaries: Some(PathBuf::from(&dictionaries)),
        orthologs: Some(orthologs.into()),
        gene_ids: GeneIdKind::Symbol,
        obs_columns: vec!["paul15_clusters".into()],
        max_len: Some(256),
        overwrite: true,
        ..TokenizeConfig::new(cells.into(), TokenizerKind::GeneformerV2, tokens.clone())
    };
    steps::tokenize(&config, obs)?;
    let acts = real.join("acts");
    let hook = "blocks.2.hook_resid_post";
    let extracted = steps::extract(
        &ExtractConfig {
            overwrite: true,
            ..ExtractConfig::new(model_dir, &tokens, hook, &acts)
        },
        obs,
    )?;
    let sae_dir = real.join("sae");
    let report = steps::train_sae(
        &sae_request(&acts, hook, 4 * HIDDEN, 16, &sae_dir, 400_000, 0, seed),
        obs,
    )?;
    let catalog_dir = real.join("catalog");
    let config = AnalyzeConfig {
        seed,
        overwrite: true,
        ..AnalyzeConfig::new(acts.clone(), sae_dir.clone(), catalog_dir.clone())
    };
    let catalog = serde_json::to_value(steps::analyze(&config, Some(Path::new(&dictionaries)), obs)?)?;
    let genesets = [
        "h.all.v7.0.symbols.gmt",
        "c2.cp.kegg.v7.5.1.symbols.gmt",
        "c2.cp.reactome.v2023.2.Hs.symbols.gmt",
        "enrichr.GO_Biological_Process_2021.gmt",
    ]
    .iter()
    .map(|g| need(&format!("genesets/{g}")))
    .collect::<Result<Vec<_>>>()?
    .join(",");
    let ann_dir = real.join("annotation");
    let config = AnnotateConfig {
        gene_sets: genesets.split(',').map(PathBuf::from).collect(),
        trrust: Some(need("trrust/trrust_rawdata.human.tsv")?.into()),
        obs_column: Some("paul15_clusters".into()),
        seed,
        overwrite: true,
        ..AnnotateConfig::new(vec![catalog_dir.clone()], ann_dir.clone())
    };
    let annotation = serde_json::to_value(steps::annotate(&config, obs)?)?;
    say!(
        obs,
        "  real     {}: paul15 ({} cells, mouse → human orthologs) tokenized for Geneformer V2 (256 tokens), \
         {hook} of the demo model (synthetic weights) → {} rows; SAE held-out FVU {:.3}; catalogue: {} of {} \
         latents alive over {} genes",
        real.display(),
        catalog["n_cells"],
        extracted.as_ref().map_or(0, |e| e.n_rows),
        report.heldout.fvu,
        catalog["alive"],
        catalog["d_sae"],
        catalog["n_genes"],
    );
    let c = &annotation["catalogs"][0];
    say!(
        obs,
        "  real     {}: Hallmark, KEGG, Reactome, GO BP 2021 and TRRUST over {} (feature, term) pairs (gene_sets \
         family) and {} TRRUST edge tests (network_edges family): {} features annotated at q ≤ 0.05 (synthetic \
         weights: none expected); cell-type enrichment (paul15_clusters): {} of {} features",
        ann_dir.display(),
        c["m"],
        c["m_network_edges"],
        c["annotated_features"],
        c["cell_types"]["features_enriched"],
        c["cell_types"]["features_tested"],
    );
    Ok(
        serde_json::json!({ "catalog": catalog, "annotation": annotation, "sae_heldout_fvu": report.heldout.fvu }),
    )
}

/// Mean over the rows of `range` of the L2 norm of `b − a`.
fn mean_row_change(a: &Matrix, b: &Matrix, range: std::ops::Range<usize>) -> f64 {
    let n = range.len().max(1) as f64;
    range
        .map(|r| {
            a.row(r)
                .iter()
                .zip(b.row(r))
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / n
}
