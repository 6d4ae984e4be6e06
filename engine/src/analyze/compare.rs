//! Features across layers as one library call: decoder-cosine matching between every pair of the SAEs
//! given (in layer order), lifespans along the chain, and PMI "highways" between consecutive SAEs over
//! the same rows of one activation store, each next to the same statistic on a permuted pairing, and
//! the different-seed control of the matches (SAEs of the same hooks trained from another seed).
//! Writes the tables and `layers.json`.

use std::path::PathBuf;
use std::time::Instant;

use super::layers::within_token_pairing;
use super::{best_matches, lifespans, DecoderMatch, Highway, HighwayCounts};
use crate::formats::layers::{
    ControlLifespanSummary, ControlPairSummary, HighwayPairSummary, HighwaysSummary, LayersSummary,
    LifespanSummary, MatchPairSummary, MatchingSummary, SeedControlHook, SeedControlSummary, LAYERS_FILE,
    LAYERS_FORMAT,
};
use crate::formats::{absolute, write_json, Column, JsonFileError, Table, TableError, TableFormat};
use crate::sae::io::{load as load_sae, SaeFileError, SaeFolder};
use crate::sae::TopKSae;
use crate::store::{ActStore, HookArray, StoreError};

/// What to compare and how (the command line's `scinterp layers`).
#[derive(Clone, Debug)]
pub struct LayersConfig {
    /// Activation store holding every SAE's hook.
    pub acts: PathBuf,
    /// SAE folders in layer order (each names its hook in cfg.json).
    pub saes: Vec<PathBuf>,
    /// The different-seed control: SAE folders trained on hooks of `saes` from another seed, at most
    /// one per hook (each stands beside the SAE of `saes` with its hook). Empty: no control is run, and
    /// `layers.json` says so.
    pub control_saes: Vec<PathBuf>,
    /// Output folder.
    pub out: PathBuf,
    pub format: TableFormat,
    /// |cos| of a match, and of a strong match.
    pub match_threshold: f64,
    pub strong_threshold: f64,
    /// Fires a source or target needs to enter the highway statistics.
    pub highway_min_fires: u64,
    /// Co-activated rows a (source, target) pair needs.
    pub highway_min_cocount: u64,
    /// PMI (log2) above which a source's best target makes it a highway.
    pub highway_pmi: f64,
    /// Rows encoded at a time (rounded up to whole cells).
    pub chunk_rows: usize,
    pub overwrite: bool,
}

/// Why a layer comparison stopped; messages name the file or flag.
#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    #[error(transparent)]
    Output(#[from] crate::formats::OutputError),
    #[error(transparent)]
    File(#[from] crate::formats::FileError),
    #[error("--saes needs at least two SAE folders (in layer order), got {0}")]
    TooFewSaes(usize),
    #[error("{}: cfg.json names no hook (metadata.hook_name)", .0.display())]
    NoHook(PathBuf),
    #[error("--control-saes: {} is an SAE of {hook}, which no SAE of --saes is on ({hooks}); a control must be \
             trained on the hook of the SAE it stands beside", control.display())]
    ControlHook {
        control: PathBuf,
        hook: String,
        hooks: String,
    },
    #[error("--control-saes: {} and {} are both SAEs of {hook}; give at most one control per hook", first.display(), second.display())]
    DuplicateControl {
        hook: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("the SAE in {} reads d_in = {d_in} but the store {} has width {width}", sae.display(), acts.display())]
    Width {
        sae: PathBuf,
        d_in: usize,
        acts: PathBuf,
        width: usize,
    },
    #[error(transparent)]
    Sae(#[from] SaeFileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Json(#[from] JsonFileError),
}

/// Compares the SAEs, writes the tables and `layers.json`, and returns the summary. `progress(rows,
/// total)` follows the pass over the store.
pub fn compare_layers(
    args: &LayersConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LayersSummary, LayersError> {
    if args.saes.len() < 2 {
        return Err(LayersError::TooFewSaes(args.saes.len()));
    }
    let started = Instant::now();
    let store = ActStore::open(&args.acts)?;
    let rows = store.rows()?;
    let load = |dir: &PathBuf| -> Result<(SaeFolder, String), LayersError> {
        let folder = load_sae(dir)?;
        let hook = folder
            .hook_name()
            .ok_or_else(|| LayersError::NoHook(dir.clone()))?
            .to_string();
        if folder.sae.d_in != store.manifest.d_model {
            return Err(LayersError::Width {
                sae: dir.clone(),
                d_in: folder.sae.d_in,
                acts: args.acts.clone(),
                width: store.manifest.d_model,
            });
        }
        Ok((folder, hook))
    };
    let saes: Vec<(SaeFolder, String)> = args.saes.iter().map(load).collect::<Result<_, _>>()?;
    let controls: Vec<(SaeFolder, String)> = args.control_saes.iter().map(load).collect::<Result<_, _>>()?;
    for (c, (_, hook)) in controls.iter().enumerate() {
        if !saes.iter().any(|(_, h)| h == hook) {
            return Err(LayersError::ControlHook {
                control: args.control_saes[c].clone(),
                hook: hook.clone(),
                hooks: saes.iter().map(|s| s.1.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        if let Some(first) = controls[..c].iter().position(|(_, h)| h == hook) {
            return Err(LayersError::DuplicateControl {
                hook: hook.clone(),
                first: args.control_saes[first].clone(),
                second: args.control_saes[c].clone(),
            });
        }
    }
    // control_of[l]: the control standing beside primary l (the one on its hook).
    let control_of: Vec<Option<usize>> = saes
        .iter()
        .map(|(_, h)| controls.iter().position(|(_, ch)| ch == h))
        .collect();
    let arrays = saes
        .iter()
        .map(|(_, h)| store.hook(h))
        .collect::<Result<Vec<_>, _>>()?;
    let control_arrays = controls
        .iter()
        .map(|(_, h)| store.hook(h))
        .collect::<Result<Vec<_>, _>>()?;
    // Written in a staging folder and swapped in whole (an existing comparison needs --overwrite).
    let staged = crate::formats::StagedDir::begin(&args.out, args.overwrite, "a layer comparison")?;
    let dir = staged.path().to_path_buf();

    // One pass: encode each chunk with every SAE; count fires and, for consecutive SAEs, co-activations
    // at the same row and on the within-token null pairing (the same gene token in another cell). The
    // controls are encoded too, for their fires (which of their features are alive).
    let n = rows.len();
    let d = store.manifest.d_model;
    let mut fires: Vec<Vec<u64>> = saes.iter().map(|(f, _)| vec![0; f.sae.d_sae]).collect();
    let mut control_fires: Vec<Vec<u64>> = controls.iter().map(|(f, _)| vec![0; f.sae.d_sae]).collect();
    let pairs = saes.len() - 1;
    let mut observed: Vec<HighwayCounts> = (0..pairs)
        .map(|l| HighwayCounts::new(saes[l].0.sae.d_sae, saes[l + 1].0.sae.d_sae))
        .collect();
    let mut permuted: Vec<HighwayCounts> = (0..pairs)
        .map(|l| HighwayCounts::new(saes[l].0.sae.d_sae, saes[l + 1].0.sae.d_sae))
        .collect();
    progress(0, n);
    let (mut x, mut start) = (Vec::new(), 0);
    while start < n {
        let mut end = (start + args.chunk_rows.max(1)).min(n);
        while end < n && rows[end][0] == rows[end - 1][0] {
            end += 1;
        }
        let m = end - start;
        x.resize(m * d, 0.0);
        let pairing = within_token_pairing(
            &rows[start..end].iter().map(|r| r[0]).collect::<Vec<_>>(),
            &rows[start..end].iter().map(|r| r[2]).collect::<Vec<_>>(),
        );
        let active: Vec<Vec<Vec<u32>>> = saes
            .iter()
            .zip(&arrays)
            .zip(&mut fires)
            .map(|(((folder, _), array), fires)| encode_active(&folder.sae, array, start, &mut x, fires))
            .collect();
        for (((folder, _), array), fires) in controls.iter().zip(&control_arrays).zip(&mut control_fires) {
            encode_active(&folder.sae, array, start, &mut x, fires);
        }
        for l in 0..pairs {
            for r in 0..m {
                observed[l].push(&active[l][r], &active[l + 1][r]);
                if let Some(j) = pairing[r] {
                    permuted[l].push(&active[l][r], &active[l + 1][j]);
                }
            }
        }
        progress(end, n);
        start = end;
    }
    let alive_of = |f: &Vec<u64>| f.iter().map(|&c| c > 0).collect::<Vec<bool>>();
    let alive: Vec<Vec<bool>> = fires.iter().map(alive_of).collect();
    let control_alive: Vec<Vec<bool>> = control_fires.iter().map(alive_of).collect();

    // Decoder matching for every ordered pair i < j; lifespans from the adjacent ones.
    let mut match_rows: Vec<(usize, usize, DecoderMatch)> = Vec::new();
    let mut pair_summaries = Vec::new();
    let mut adjacent = Vec::new();
    for i in 0..saes.len() {
        for j in i + 1..saes.len() {
            let matches = best_matches(&saes[i].0.sae, &alive[i], &saes[j].0.sae, &alive[j]);
            let st = MatchStats::of(&matches, args.match_threshold, args.strong_threshold);
            pair_summaries.push(MatchPairSummary {
                from: saes[i].1.clone(),
                to: saes[j].1.clone(),
                alive_from: matches.len(),
                matches: st.matches,
                strong_matches: st.strong,
                mean_matched_abs_cos: st.mean_matched_abs_cos,
                same_index_matches: st.same_index,
            });
            if j == i + 1 {
                adjacent.push(matches.clone());
            }
            match_rows.extend(matches.into_iter().map(|m| (i, j, m)));
        }
    }
    let spans = lifespans(&adjacent, &alive, args.match_threshold as f32);
    let transient = |spans: &[Vec<(u32, u32)>]| -> Vec<LifespanSummary> {
        spans
            .iter()
            .enumerate()
            .map(|(l, s)| LifespanSummary {
                hook: saes[l].1.clone(),
                alive: s.len(),
                transient_at_most_3_layers: s.iter().filter(|x| x.1 <= 3).count(),
                mean_lifespan: s.iter().map(|x| x.1 as f64).sum::<f64>() / s.len().max(1) as f64,
            })
            .collect()
    };
    let primary_lifespans = transient(&spans);

    // The different-seed control. (a) Each control against its primary (same hook): the share of the
    // primary's features another seed reproduces. (b) The chain with every control in place of its
    // primary: cross-layer matches of each pair with a control on at least one side, and lifespans.
    let mut control_rows: Vec<ControlRow> = Vec::new();
    let seed_control = (!controls.is_empty()).then(|| {
        let mut hooks = Vec::new();
        for (l, c) in control_of.iter().enumerate() {
            let Some(c) = *c else { continue };
            // Primaries sharing one hook share its control; report it once, beside the first.
            if control_of[..l].contains(&Some(c)) {
                continue;
            }
            let matches = best_matches(&saes[l].0.sae, &alive[l], &controls[c].0.sae, &control_alive[c]);
            let st = MatchStats::of(&matches, args.match_threshold, args.strong_threshold);
            let alive_primary = alive[l].iter().filter(|&&a| a).count();
            let sorted = |m: &[DecoderMatch]| {
                let mut v: Vec<f64> = m.iter().map(|m| m.abs_cos as f64).collect();
                v.sort_by(f64::total_cmp);
                v
            };
            let best = sorted(&matches);
            let alive_control = control_alive[c].iter().filter(|&&a| a).count();
            let random = random_directions(alive_control, saes[l].0.sae.d_in);
            let chance = sorted(&best_matches(
                &saes[l].0.sae,
                &alive[l],
                &random,
                &vec![true; alive_control],
            ));
            hooks.push(SeedControlHook {
                hook: saes[l].1.clone(),
                control_sae: absolute(&args.control_saes[c]),
                primary_sae: absolute(&args.saes[l]),
                primary_seed: training_seed(&saes[l].0),
                control_seed: training_seed(&controls[c].0),
                alive_primary,
                alive_control,
                reproduced: st.matches,
                reproduced_fraction: st.matches as f64 / alive_primary.max(1) as f64,
                strong_reproduced: st.strong,
                strong_reproduced_fraction: st.strong as f64 / alive_primary.max(1) as f64,
                median_best_abs_cos: median_sorted(&best),
                chance_median_best_abs_cos: median_sorted(&chance),
                same_index_matches: st.same_index,
            });
            control_rows.extend(matches.into_iter().map(|m| ControlRow {
                same_hook: true,
                from: l,
                to: l,
                from_control: false,
                to_control: true,
                m,
            }));
        }
        // The substituted chain: (SAE, alive, is it a control) per layer.
        let chain: Vec<(&TopKSae, &[bool], bool)> = (0..saes.len())
            .map(|l| match control_of[l] {
                Some(c) => (&controls[c].0.sae, control_alive[c].as_slice(), true),
                None => (&saes[l].0.sae, alive[l].as_slice(), false),
            })
            .collect();
        let label = |control: bool| if control { "control" } else { "primary" }.to_string();
        let mut pairs_out = Vec::new();
        let mut chain_adjacent = Vec::new();
        let mut p = 0;
        for i in 0..saes.len() {
            for j in i + 1..saes.len() {
                let primary = &pair_summaries[p];
                p += 1;
                if !chain[i].2 && !chain[j].2 {
                    if j == i + 1 {
                        chain_adjacent.push(adjacent[i].clone());
                    }
                    continue;
                }
                let matches = best_matches(chain[i].0, chain[i].1, chain[j].0, chain[j].1);
                let st = MatchStats::of(&matches, args.match_threshold, args.strong_threshold);
                pairs_out.push(ControlPairSummary {
                    from: saes[i].1.clone(),
                    to: saes[j].1.clone(),
                    from_sae: label(chain[i].2),
                    to_sae: label(chain[j].2),
                    alive_from: matches.len(),
                    matches: st.matches,
                    strong_matches: st.strong,
                    mean_matched_abs_cos: st.mean_matched_abs_cos,
                    same_index_matches: st.same_index,
                    primary_alive_from: primary.alive_from,
                    primary_matches: primary.matches,
                    primary_strong_matches: primary.strong_matches,
                });
                if j == i + 1 {
                    chain_adjacent.push(matches.clone());
                }
                control_rows.extend(matches.into_iter().map(|m| ControlRow {
                    same_hook: false,
                    from: i,
                    to: j,
                    from_control: chain[i].2,
                    to_control: chain[j].2,
                    m,
                }));
            }
        }
        let chain_alive: Vec<Vec<bool>> = chain.iter().map(|c| c.1.to_vec()).collect();
        let chain_spans = lifespans(&chain_adjacent, &chain_alive, args.match_threshold as f32);
        let lifespans_out = transient(&chain_spans)
            .into_iter()
            .zip(&primary_lifespans)
            .enumerate()
            .map(|(l, (c, p))| ControlLifespanSummary {
                hook: c.hook,
                sae: label(chain[l].2),
                alive: c.alive,
                transient_at_most_3_layers: c.transient_at_most_3_layers,
                mean_lifespan: c.mean_lifespan,
                primary_transient_at_most_3_layers: p.transient_at_most_3_layers,
                primary_mean_lifespan: p.mean_lifespan,
            })
            .collect();
        SeedControlSummary {
            rule: SEED_CONTROL_RULE.into(),
            hooks,
            pairs: pairs_out,
            lifespans: lifespans_out,
        }
    });
    let warnings = seed_warnings(
        &saes,
        &controls,
        &args.control_saes,
        &pair_summaries,
        seed_control.as_ref(),
    );

    let mut highway_rows: Vec<(usize, Highway, Option<Highway>)> = Vec::new();
    let mut highway_summaries = Vec::new();
    for l in 0..pairs {
        let obs = observed[l].best_targets(args.highway_min_fires, args.highway_min_cocount);
        let chance = permuted[l].best_targets(args.highway_min_fires, args.highway_min_cocount);
        let mut null_of = vec![None; saes[l].0.sae.d_sae];
        for h in &chance {
            null_of[h.source as usize] = Some(*h);
        }
        let eligible = observed[l].eligible_sources(args.highway_min_fires);
        let count = |hs: &[Highway]| hs.iter().filter(|h| h.pmi > args.highway_pmi).count();
        highway_summaries.push(HighwayPairSummary {
            from: saes[l].1.clone(),
            to: saes[l + 1].1.clone(),
            eligible_sources: eligible,
            highways: count(&obs),
            highway_fraction: count(&obs) as f64 / eligible.max(1) as f64,
            highways_permuted_pairing: count(&chance),
            highway_fraction_permuted_pairing: count(&chance) as f64 / eligible.max(1) as f64,
            mean_best_npmi: obs.iter().map(|h| h.npmi).sum::<f64>() / obs.len().max(1) as f64,
            mean_best_npmi_permuted_pairing: chance.iter().map(|h| h.npmi).sum::<f64>()
                / chance.len().max(1) as f64,
        });
        highway_rows.extend(obs.into_iter().map(|h| (l, h, null_of[h.source as usize])));
    }

    let path = |name: &str| dir.join(format!("{name}.{}", args.format.ext()));
    let hook = |l: usize| saes[l].1.clone();
    Table::new()
        .column(
            "from_hook",
            Column::Str(match_rows.iter().map(|r| hook(r.0)).collect()),
        )
        .column(
            "to_hook",
            Column::Str(match_rows.iter().map(|r| hook(r.1)).collect()),
        )
        .column(
            "feature",
            Column::I64(match_rows.iter().map(|r| r.2.feature as i64).collect()),
        )
        .column(
            "best_match",
            Column::I64(match_rows.iter().map(|r| r.2.best as i64).collect()),
        )
        .column(
            "abs_cos",
            Column::F64(match_rows.iter().map(|r| r.2.abs_cos as f64).collect()),
        )
        .write(&path("matches"))?;
    let span_rows: Vec<(usize, u32, u32)> = spans
        .iter()
        .enumerate()
        .flat_map(|(l, s)| s.iter().map(move |&(f, n)| (l, f, n)))
        .collect();
    Table::new()
        .column("hook", Column::Str(span_rows.iter().map(|r| hook(r.0)).collect()))
        .column(
            "feature",
            Column::I64(span_rows.iter().map(|r| r.1 as i64).collect()),
        )
        .column(
            "lifespan_layers",
            Column::I64(span_rows.iter().map(|r| r.2 as i64).collect()),
        )
        .write(&path("lifespans"))?;
    let hw = &highway_rows;
    Table::new()
        .column("from_hook", Column::Str(hw.iter().map(|r| hook(r.0)).collect()))
        .column("to_hook", Column::Str(hw.iter().map(|r| hook(r.0 + 1)).collect()))
        .column(
            "source",
            Column::I64(hw.iter().map(|r| r.1.source as i64).collect()),
        )
        .column(
            "source_fires",
            Column::I64(hw.iter().map(|r| r.1.fires as i64).collect()),
        )
        .column(
            "best_target",
            Column::I64(hw.iter().map(|r| r.1.target as i64).collect()),
        )
        .column(
            "cocount",
            Column::I64(hw.iter().map(|r| r.1.cocount as i64).collect()),
        )
        .column("pmi", Column::F64(hw.iter().map(|r| r.1.pmi).collect()))
        .column("npmi", Column::F64(hw.iter().map(|r| r.1.npmi).collect()))
        .column(
            "pmi_permuted_pairing",
            Column::F64(hw.iter().map(|r| r.2.map_or(f64::NAN, |h| h.pmi)).collect()),
        )
        .column(
            "highway",
            Column::I64(hw.iter().map(|r| (r.1.pmi > args.highway_pmi) as i64).collect()),
        )
        .write(&path("highways"))?;
    if !controls.is_empty() {
        let cr = &control_rows;
        let sae_label = |control: bool| if control { "control" } else { "primary" }.to_string();
        Table::new()
            .column(
                "comparison",
                Column::Str(
                    cr.iter()
                        .map(|r| if r.same_hook { "same_hook" } else { "cross_layer" }.to_string())
                        .collect(),
                ),
            )
            .column(
                "from_hook",
                Column::Str(cr.iter().map(|r| hook(r.from)).collect()),
            )
            .column(
                "from_sae",
                Column::Str(cr.iter().map(|r| sae_label(r.from_control)).collect()),
            )
            .column("to_hook", Column::Str(cr.iter().map(|r| hook(r.to)).collect()))
            .column(
                "to_sae",
                Column::Str(cr.iter().map(|r| sae_label(r.to_control)).collect()),
            )
            .column(
                "feature",
                Column::I64(cr.iter().map(|r| r.m.feature as i64).collect()),
            )
            .column(
                "best_match",
                Column::I64(cr.iter().map(|r| r.m.best as i64).collect()),
            )
            .column(
                "abs_cos",
                Column::F64(cr.iter().map(|r| r.m.abs_cos as f64).collect()),
            )
            .write(&path(SEED_CONTROL_TABLE))?;
    }

    let summary = LayersSummary {
        format: LAYERS_FORMAT.into(),
        format_version: 2,
        acts: absolute(&args.acts),
        saes: args.saes.iter().map(|p| absolute(p)).collect(),
        hooks: saes.iter().map(|s| s.1.clone()).collect(),
        rows: n,
        table_format: args.format,
        matching: MatchingSummary {
            rule: "best |cos| of unit decoder directions among alive features of the other SAE".into(),
            match_threshold: args.match_threshold,
            strong_threshold: args.strong_threshold,
            pairs: pair_summaries,
        },
        lifespans: primary_lifespans,
        highways: HighwaysSummary {
            rule: "a source (≥ min_fires fires) is a highway when its best target (≥ min_fires fires, co-count ≥ \
                   min_cocount) has PMI > threshold"
                .into(),
            null: "within token: the same statistic with each row's target codes taken from a row of the same gene \
                   token in another cell of the same chunk (the token's rows rotated by half their count); rows \
                   whose token occurs in no other cell of the chunk are left out of the null. Features that both \
                   respond to the gene token co-fire under this null too, so a highway must beat the \
                   shared-token effect"
                .into(),
            min_fires: args.highway_min_fires,
            min_cocount: args.highway_min_cocount,
            pmi_threshold: args.highway_pmi,
            pairs: highway_summaries,
        },
        training_seeds: saes.iter().map(|(f, _)| training_seed(f)).collect(),
        seed_control,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
        scinterp_version: env!("CARGO_PKG_VERSION").into(),
    };
    write_json(&dir.join(LAYERS_FILE), &summary)?;
    staged.commit()?;
    Ok(summary)
}

/// The table of the control's matches (`seed_control_matches.<ext>`), written when controls are given.
pub const SEED_CONTROL_TABLE: &str = "seed_control_matches";

const SEED_CONTROL_RULE: &str = "each --control-saes SAE was trained on the hook of one --saes SAE from another seed. \
    hooks: the primary's alive features whose best |cos| among the control's alive features is ≥ match_threshold \
    (strong: ≥ strong_threshold), over the primary's alive features: the share of features another seed \
    reproduces at all, a ceiling for any cross-layer match rate; the median best |cos| is given beside its chance \
    level (as many seeded random unit directions as the control has alive features). pairs and lifespans: the matching and lifespans \
    repeated with every control in place of its hook's primary, for each pair with a control on at least one \
    side, beside the primaries' figures: cross-layer matches that a shared initialisation made do not survive \
    the change of seed";

/// The active (value > 0) features of each row of a chunk at `start` (`x` holds the chunk's rows), with
/// their fires counted.
fn encode_active(
    sae: &TopKSae,
    array: &HookArray,
    start: usize,
    x: &mut [f32],
    fires: &mut [u64],
) -> Vec<Vec<u32>> {
    array.read_rows(start, x);
    let codes = sae.encode(x);
    (0..x.len() / sae.d_in)
        .map(|r| {
            let (idx, val) = codes.row(r);
            let act: Vec<u32> = idx
                .iter()
                .zip(val)
                .filter(|(_, &v)| v > 0.0)
                .map(|(&f, _)| f)
                .collect();
            act.iter().for_each(|&f| fires[f as usize] += 1);
            act
        })
        .collect()
}

/// Counts of one list of best matches.
struct MatchStats {
    matches: usize,
    strong: usize,
    mean_matched_abs_cos: Option<f64>,
    same_index: usize,
}

impl MatchStats {
    fn of(matches: &[DecoderMatch], threshold: f64, strong: f64) -> Self {
        let hits: Vec<&DecoderMatch> = matches.iter().filter(|m| m.abs_cos as f64 >= threshold).collect();
        MatchStats {
            matches: hits.len(),
            strong: matches.iter().filter(|m| m.abs_cos as f64 >= strong).count(),
            mean_matched_abs_cos: (!hits.is_empty())
                .then(|| hits.iter().map(|m| m.abs_cos as f64).sum::<f64>() / hits.len() as f64),
            same_index: hits.iter().filter(|m| m.feature == m.best).count(),
        }
    }
}

/// One row of the control's match table: primary or control SAE of layer `from` against `to`.
struct ControlRow {
    same_hook: bool,
    from: usize,
    to: usize,
    from_control: bool,
    to_control: bool,
    m: DecoderMatch,
}

/// `metadata.scinterp.training.seed` of a cfg.json written by `scinterp sae train`: the seed the
/// decoder was initialised from (SAEs made elsewhere may not record one).
pub fn training_seed(folder: &SaeFolder) -> Option<u64> {
    folder.metadata.pointer("/scinterp/training/seed")?.as_u64()
}

/// `n` seeded random unit directions of width `d` as the decoder of an SAE (the chance level of a
/// best |cos|).
fn random_directions(n: usize, d: usize) -> TopKSae {
    let mut rng = crate::rng::Rng::new(0x5EED_C0A7, 0);
    let w_dec: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
    TopKSae {
        d_in: d,
        d_sae: n,
        k: 1,
        w_enc: Vec::new(),
        b_enc: Vec::new(),
        w_dec,
        b_dec: Vec::new(),
    }
}

fn median_sorted(v: &[f64]) -> Option<f64> {
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some(0.5 * (v[n / 2 - 1] + v[n / 2])),
    }
}

/// Same-index matches beyond this share of a pair's matches (and at least [`SAME_INDEX_MIN`] of them)
/// are flagged: chance gives about one in d_sae.
const SAME_INDEX_SHARE: f64 = 0.5;
const SAME_INDEX_MIN: usize = 10;

/// What a reader must know before trusting the matches: no control run; two SAEs of different hooks (or
/// a control and its primary) trained from one seed, whose decoders start identical (`sae train` draws
/// decoder rows in order from the seed, so equal seeds and widths give equal first rows); a control
/// that is its primary's very decoder; pairs where feature i matches feature i.
fn seed_warnings(
    saes: &[(SaeFolder, String)],
    controls: &[(SaeFolder, String)],
    control_dirs: &[PathBuf],
    pairs: &[MatchPairSummary],
    control: Option<&SeedControlSummary>,
) -> Vec<String> {
    let mut out = Vec::new();
    if controls.is_empty() {
        out.push(
            "no different-seed control was run (no --control-saes): the cross-layer decoder matches and lifespans \
             are not compared with SAEs trained from another seed, so matches made by a shared initialisation \
             cannot be told from features that persist across layers"
                .to_string(),
        );
    }
    for i in 0..saes.len() {
        for j in i + 1..saes.len() {
            let (a, b) = (&saes[i], &saes[j]);
            if a.1 == b.1 {
                continue;
            }
            if let (Some(sa), Some(sb)) = (training_seed(&a.0), training_seed(&b.0)) {
                if sa == sb && a.0.sae.d_in == b.0.sae.d_in {
                    out.push(format!(
                        "the SAEs of {} and {} were trained from the same seed (training.seed = {sa}) and start from \
                         the same decoder rows (the first {} of them): their matches of feature i to feature i are \
                         an artefact of the initialisation; retrain with `scinterp sae train`, whose per-hook seed \
                         rule gives each hook its own seed",
                        a.1,
                        b.1,
                        a.0.sae.d_sae.min(b.0.sae.d_sae)
                    ));
                }
            }
        }
    }
    for ((c, hook), dir) in controls.iter().zip(control_dirs) {
        let Some((p, _)) = saes.iter().find(|(_, h)| h == hook) else {
            continue;
        };
        if p.sae.w_dec == c.sae.w_dec {
            out.push(format!(
                "the control {} has the very decoder of its primary SAE of {hook}: it is no different-seed control",
                dir.display()
            ));
        } else if let (Some(sp), Some(sc)) = (training_seed(p), training_seed(c)) {
            if sp == sc {
                out.push(format!(
                    "the control {} of {hook} was trained from the same seed as its primary (training.seed = {sp}): \
                     it is no different-seed control; train it with another `--seed`",
                    dir.display()
                ));
            }
        }
    }
    let same_index = |from: &str, to: &str, what: &str, n: usize, matches: usize| {
        (n >= SAME_INDEX_MIN && n as f64 >= SAME_INDEX_SHARE * matches as f64).then(|| {
            format!(
                "{what}{from} → {to}: {n} of {matches} decoder matches pair feature i with feature i (chance: about \
                 one in d_sae): the two SAEs probably started from one decoder, and those matches are an artefact \
                 of the shared initialisation"
            )
        })
    };
    for p in pairs {
        out.extend(same_index(&p.from, &p.to, "", p.same_index_matches, p.matches));
    }
    if let Some(c) = control {
        for h in &c.hooks {
            out.extend(same_index(
                &h.hook,
                &h.hook,
                "control: ",
                h.same_index_matches,
                h.reproduced,
            ));
        }
        for p in &c.pairs {
            let what = format!("control ({} → {}): ", p.from_sae, p.to_sae);
            out.extend(same_index(&p.from, &p.to, &what, p.same_index_matches, p.matches));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::rng::Rng;
    use crate::store::{ActDtype, OpenedStore, StoreManifest, StoreWriter, STORE_FORMAT};

    const D: usize = 32;
    const D_SAE: usize = 48;
    const L1: &str = "blocks.1.hook_resid_post";
    const L2: &str = "blocks.2.hook_resid_post";

    fn unit_rows(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = Rng::new(seed, 1);
        let mut w: Vec<f32> = (0..n * D).map(|_| rng.normal() as f32).collect();
        for row in w.chunks_mut(D) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        w
    }

    /// A store whose two hooks hold the same rows: positive mixtures of 4 atoms of `dict`.
    fn store(dir: &Path, dict: &[f32]) -> PathBuf {
        let (cells, per_cell) = (60usize, 20usize);
        let rows: Vec<[i32; 3]> = (0..cells * per_cell)
            .map(|r| [(r / per_cell) as i32, (r % per_cell) as i32, (r % 7) as i32])
            .collect();
        let mut rng = Rng::new(5, 2);
        let mut data = vec![0.0f32; rows.len() * D];
        for x in data.chunks_mut(D) {
            for _ in 0..4 {
                let a = rng.below(D_SAE);
                let c = 1.0 + rng.uniform() as f32;
                x.iter_mut()
                    .zip(&dict[a * D..(a + 1) * D])
                    .for_each(|(v, w)| *v += c * w);
            }
        }
        let manifest = StoreManifest {
            format: STORE_FORMAT.into(),
            format_version: 1,
            model: crate::store::StoreModelRecord::Other(json!({"name": "test"})),
            source: crate::store::StoreSourceRecord::Other(json!({})),
            hooks: vec![L1.into(), L2.into()],
            dtype: ActDtype::F32,
            d_model: D,
            include_special: false,
            n_cells: cells,
            n_rows: 0,
            max_batch_tokens: per_cell,
            cells_complete: 0,
            rows_complete: 0,
            complete: false,
            scinterp_version: "test".into(),
        };
        let out = dir.join("acts");
        let OpenedStore::Writer(mut w) = StoreWriter::open(&out, manifest, &rows).unwrap() else {
            panic!("new store")
        };
        let bytes = ActDtype::F32.encode(&data);
        w.write_rows(0, &[bytes.clone(), bytes]).unwrap();
        w.checkpoint(cells, rows.len()).unwrap();
        out
    }

    /// An SAE folder with encoder rows `enc` and decoder rows `dec`, on `hook`, trained from `seed`.
    fn sae(dir: &Path, name: &str, hook: &str, seed: u64, enc: Vec<f32>, dec: Vec<f32>) -> PathBuf {
        let sae = TopKSae {
            d_in: D,
            d_sae: D_SAE,
            k: 4,
            w_enc: enc,
            b_enc: vec![0.0; D_SAE],
            w_dec: dec,
            b_dec: vec![0.0; D],
        };
        let path = dir.join(name);
        let metadata = json!({"hook_name": hook, "scinterp": {"training": {"seed": seed}}});
        crate::sae::io::save(&path, &sae, &metadata).unwrap();
        path
    }

    fn config(dir: &Path, acts: &Path, saes: Vec<PathBuf>, controls: Vec<PathBuf>) -> LayersConfig {
        LayersConfig {
            acts: acts.to_path_buf(),
            saes,
            control_saes: controls,
            out: dir.join("layers"),
            format: TableFormat::Tsv,
            match_threshold: 0.7,
            strong_threshold: 0.9,
            highway_min_fires: 5,
            highway_min_cocount: 3,
            highway_pmi: 3.0,
            chunk_rows: 300,
            overwrite: true,
        }
    }

    /// The artefact the control exists for: two layers' SAEs that share their decoder (feature i ≈
    /// feature i) match 100 %. A control that is the primary with its features permuted and signs
    /// flipped reproduces every feature and keeps every cross-layer match; an unrelated SAE of the same
    /// hook (another seed that learned nothing in common) reproduces none, and the cross-layer matches
    /// vanish with it. Without controls, layers.json says no control was run.
    #[test]
    fn the_seed_control_separates_shared_initialisation_from_reproducible_features() {
        let tmp = tempfile::tempdir().unwrap();
        let dict = unit_rows(1, D_SAE);
        let acts = store(tmp.path(), &dict);
        let a = sae(tmp.path(), "a", L1, 11, dict.clone(), dict.clone());
        // Layer 2: the same decoder, slightly perturbed, from the same seed.
        let noise = unit_rows(2, D_SAE);
        let near: Vec<f32> = dict.iter().zip(&noise).map(|(w, e)| w + 0.05 * e).collect();
        let b = sae(tmp.path(), "b", L2, 11, dict.clone(), near);

        // No control.
        let s = compare_layers(
            &config(tmp.path(), &acts, vec![a.clone(), b.clone()], vec![]),
            &mut |_, _| {},
        )
        .unwrap();
        assert!(s.seed_control.is_none());
        assert!(
            s.warnings[0].starts_with("no different-seed control was run"),
            "{:?}",
            s.warnings
        );
        assert_eq!(s.training_seeds, vec![Some(11), Some(11)]);
        let alive = s.matching.pairs[0].alive_from;
        assert!(alive >= D_SAE - 2, "{alive} alive");
        assert_eq!(s.matching.pairs[0].matches, alive);
        assert_eq!(s.matching.pairs[0].same_index_matches, alive);
        assert!(s
            .warnings
            .iter()
            .any(|w| w.contains("trained from the same seed (training.seed = 11)")));
        assert!(s
            .warnings
            .iter()
            .any(|w| w.contains(&format!("{alive} of {alive} decoder matches pair feature i"))));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join("layers/layers.json")).unwrap())
                .unwrap();
        assert!(json["seed_control"].is_null());
        assert!(!tmp.path().join("layers/seed_control_matches.tsv").exists());

        // A planted control: feature f of A is feature D_SAE-1-f of A', decoder sign flipped on odd f.
        let (mut enc, mut dec) = (vec![0.0f32; D_SAE * D], vec![0.0f32; D_SAE * D]);
        for f in 0..D_SAE {
            let g = D_SAE - 1 - f;
            let sign = if f % 2 == 1 { -1.0 } else { 1.0 };
            enc[g * D..(g + 1) * D].copy_from_slice(&dict[f * D..(f + 1) * D]);
            for i in 0..D {
                dec[g * D + i] = sign * dict[f * D + i];
            }
        }
        let planted = sae(tmp.path(), "a_planted", L1, 99, enc, dec);
        let cfg = config(tmp.path(), &acts, vec![a.clone(), b.clone()], vec![planted]);
        let s = compare_layers(&cfg, &mut |_, _| {}).unwrap();
        let c = s.seed_control.as_ref().unwrap();
        assert_eq!(c.hooks.len(), 1);
        let h = &c.hooks[0];
        assert_eq!(
            (h.hook.as_str(), h.primary_seed, h.control_seed),
            (L1, Some(11), Some(99))
        );
        assert_eq!((h.alive_primary, h.alive_control), (alive, alive));
        assert_eq!(
            (h.reproduced, h.strong_reproduced, h.same_index_matches),
            (alive, alive, 0)
        );
        assert_eq!(h.reproduced_fraction, 1.0);
        assert!((h.median_best_abs_cos.unwrap() - 1.0).abs() < 1e-5);
        assert!(h.chance_median_best_abs_cos.unwrap() < 0.7);
        assert_eq!(c.pairs.len(), 1);
        let p = &c.pairs[0];
        assert_eq!((p.from_sae.as_str(), p.to_sae.as_str()), ("control", "primary"));
        assert_eq!(
            (p.matches, p.primary_matches, p.same_index_matches),
            (alive, alive, 0)
        );
        assert_eq!(c.lifespans[0].sae, "control");
        assert_eq!(c.lifespans[1].sae, "primary");
        assert_eq!(c.lifespans[0].mean_lifespan, c.lifespans[0].primary_mean_lifespan);
        assert_eq!(c.lifespans[0].mean_lifespan, 2.0);
        assert!(!s.warnings.iter().any(|w| w.starts_with("no different-seed")));
        // The table: one same-hook row per alive primary feature, one cross-layer row per alive
        // control feature.
        let table = std::fs::read_to_string(tmp.path().join("layers/seed_control_matches.tsv")).unwrap();
        let lines: Vec<&str> = table.lines().skip(1).collect();
        assert_eq!(lines.len(), 2 * alive);
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("same_hook\t")).count(),
            alive
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join("layers/layers.json")).unwrap())
                .unwrap();
        assert_eq!(json["seed_control"]["hooks"][0]["reproduced_fraction"], 1.0);
        assert_eq!(json["format_version"], 2);

        // An unrelated control (random directions): nothing is reproduced, and the cross-layer matches do
        // not survive the change of seed.
        let other = unit_rows(7, D_SAE);
        let unrelated = sae(tmp.path(), "a_other", L1, 12, other.clone(), other);
        let cfg = config(
            tmp.path(),
            &acts,
            vec![a.clone(), b.clone()],
            vec![unrelated.clone()],
        );
        let s = compare_layers(&cfg, &mut |_, _| {}).unwrap();
        let c = s.seed_control.as_ref().unwrap();
        assert!(c.hooks[0].alive_control > D_SAE / 2);
        assert!(c.hooks[0].reproduced <= 2, "{:?}", c.hooks[0]);
        assert!(c.hooks[0].reproduced_fraction < 0.05);
        // An unrelated SAE is as close as random directions are.
        let (med, chance) = (
            c.hooks[0].median_best_abs_cos.unwrap(),
            c.hooks[0].chance_median_best_abs_cos.unwrap(),
        );
        assert!(
            chance > 0.2 && chance < 0.7 && (med - chance).abs() < 0.1,
            "{med} vs chance {chance}"
        );
        assert!(
            c.pairs[0].matches <= 2 && c.pairs[0].primary_matches == alive,
            "{:?}",
            c.pairs[0]
        );
        assert!(c.lifespans[0].mean_lifespan < 1.1 && c.lifespans[0].primary_mean_lifespan == 2.0);

        // A control that is its primary, one of the same seed, and bad controls.
        let s = compare_layers(
            &config(tmp.path(), &acts, vec![a.clone(), b.clone()], vec![a.clone()]),
            &mut |_, _| {},
        )
        .unwrap();
        assert!(s
            .warnings
            .iter()
            .any(|w| w.contains("has the very decoder of its primary")));
        assert_eq!(s.seed_control.unwrap().hooks[0].same_index_matches, alive);
        let same_seed = sae(
            tmp.path(),
            "a_same_seed",
            L1,
            11,
            unit_rows(8, D_SAE),
            unit_rows(9, D_SAE),
        );
        let s = compare_layers(
            &config(tmp.path(), &acts, vec![a.clone(), b.clone()], vec![same_seed]),
            &mut |_, _| {},
        )
        .unwrap();
        assert!(s
            .warnings
            .iter()
            .any(|w| w.contains("trained from the same seed as its primary")));
        let wrong_hook = sae(
            tmp.path(),
            "c3",
            "blocks.3.hook_resid_post",
            5,
            unit_rows(3, D_SAE),
            unit_rows(3, D_SAE),
        );
        let err = compare_layers(
            &config(tmp.path(), &acts, vec![a.clone(), b.clone()], vec![wrong_hook]),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, LayersError::ControlHook { .. }), "{err}");
        assert!(
            err.to_string().contains("c3") && err.to_string().contains("--control-saes"),
            "{err}"
        );
        let err = compare_layers(
            &config(
                tmp.path(),
                &acts,
                vec![a.clone(), b.clone()],
                vec![unrelated.clone(), unrelated],
            ),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("at most one control per hook"), "{err}");
    }
}
