//! Features across layers as one library call: decoder-cosine matching between every pair of the SAEs
//! given (in layer order), lifespans along the chain, and PMI "highways" between consecutive SAEs over
//! the same rows of one activation store, each next to the same statistic on a permuted pairing.
//! Writes the tables and `layers.json`.

use std::path::PathBuf;
use std::time::Instant;

use super::layers::within_token_pairing;
use super::{best_matches, lifespans, DecoderMatch, Highway, HighwayCounts};
use crate::formats::layers::{
    HighwayPairSummary, HighwaysSummary, LayersSummary, LifespanSummary, MatchPairSummary, MatchingSummary,
    LAYERS_FILE, LAYERS_FORMAT,
};
use crate::formats::{absolute, write_json, Column, JsonFileError, Table, TableError, TableFormat};
use crate::sae::io::{load as load_sae, SaeFileError, SaeFolder};
use crate::store::{ActStore, StoreError};

/// What to compare and how (the command line's `scinterp layers`).
#[derive(Clone, Debug)]
pub struct LayersConfig {
    /// Activation store holding every SAE's hook.
    pub acts: PathBuf,
    /// SAE folders in layer order (each names its hook in cfg.json).
    pub saes: Vec<PathBuf>,
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
    #[error("{} already holds a layer comparison; pass --overwrite or choose another --out", .0.display())]
    Exists(PathBuf),
    #[error("--saes needs at least two SAE folders (in layer order), got {0}")]
    TooFewSaes(usize),
    #[error("{}: cfg.json names no hook (metadata.hook_name)", .0.display())]
    NoHook(PathBuf),
    #[error("the SAE in {} reads d_in = {d_in} but the store {} has width {width}", sae.display(), acts.display())]
    Width {
        sae: PathBuf,
        d_in: usize,
        acts: PathBuf,
        width: usize,
    },
    #[error("cannot create {}: {io}", path.display())]
    CreateDir { path: PathBuf, io: std::io::Error },
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
    if args.out.join(LAYERS_FILE).exists() && !args.overwrite {
        return Err(LayersError::Exists(args.out.clone()));
    }
    if args.saes.len() < 2 {
        return Err(LayersError::TooFewSaes(args.saes.len()));
    }
    let started = Instant::now();
    let store = ActStore::open(&args.acts)?;
    let rows = store.rows()?;
    let mut saes: Vec<(SaeFolder, String)> = Vec::new();
    for dir in &args.saes {
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
        saes.push((folder, hook));
    }
    let arrays = saes
        .iter()
        .map(|(_, h)| store.hook(h))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(&args.out).map_err(|io| LayersError::CreateDir {
        path: args.out.clone(),
        io,
    })?;

    // One pass: encode each chunk with every SAE; count fires and, for consecutive SAEs, co-activations
    // at the same row and on the within-token null pairing (the same gene token in another cell).
    let n = rows.len();
    let d = store.manifest.d_model;
    let mut fires: Vec<Vec<u64>> = saes.iter().map(|(f, _)| vec![0; f.sae.d_sae]).collect();
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
            .enumerate()
            .map(|(l, ((folder, _), array))| {
                array.read_rows(start, &mut x);
                let codes = folder.sae.encode(&x);
                (0..m)
                    .map(|r| {
                        let (idx, val) = codes.row(r);
                        let act: Vec<u32> = idx
                            .iter()
                            .zip(val)
                            .filter(|(_, &v)| v > 0.0)
                            .map(|(&f, _)| f)
                            .collect();
                        act.iter().for_each(|&f| fires[l][f as usize] += 1);
                        act
                    })
                    .collect()
            })
            .collect();
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
    let alive: Vec<Vec<bool>> = fires.iter().map(|f| f.iter().map(|&c| c > 0).collect()).collect();

    // Decoder matching for every ordered pair i < j; lifespans from the adjacent ones.
    let mut match_rows: Vec<(usize, usize, DecoderMatch)> = Vec::new();
    let mut pair_summaries = Vec::new();
    let mut adjacent = Vec::new();
    for i in 0..saes.len() {
        for j in i + 1..saes.len() {
            let matches = best_matches(&saes[i].0.sae, &alive[i], &saes[j].0.sae, &alive[j]);
            let hits: Vec<&DecoderMatch> = matches
                .iter()
                .filter(|m| m.abs_cos as f64 >= args.match_threshold)
                .collect();
            pair_summaries.push(MatchPairSummary {
                from: saes[i].1.clone(),
                to: saes[j].1.clone(),
                alive_from: matches.len(),
                matches: hits.len(),
                strong_matches: matches
                    .iter()
                    .filter(|m| m.abs_cos as f64 >= args.strong_threshold)
                    .count(),
                mean_matched_abs_cos: (!hits.is_empty())
                    .then(|| hits.iter().map(|m| m.abs_cos as f64).sum::<f64>() / hits.len() as f64),
            });
            if j == i + 1 {
                adjacent.push(matches.clone());
            }
            match_rows.extend(matches.into_iter().map(|m| (i, j, m)));
        }
    }
    let spans = lifespans(&adjacent, &alive, args.match_threshold as f32);

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

    let path = |name: &str| args.out.join(format!("{name}.{}", args.format.ext()));
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

    let transient: Vec<LifespanSummary> = spans
        .iter()
        .enumerate()
        .map(|(l, s)| LifespanSummary {
            hook: hook(l),
            alive: s.len(),
            transient_at_most_3_layers: s.iter().filter(|x| x.1 <= 3).count(),
            mean_lifespan: s.iter().map(|x| x.1 as f64).sum::<f64>() / s.len().max(1) as f64,
        })
        .collect();
    let summary = LayersSummary {
        format: LAYERS_FORMAT.into(),
        format_version: 1,
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
        lifespans: transient,
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
        seconds: started.elapsed().as_secs_f64(),
        scinterp_version: env!("CARGO_PKG_VERSION").into(),
    };
    write_json(&args.out.join(LAYERS_FILE), &summary)?;
    Ok(summary)
}
