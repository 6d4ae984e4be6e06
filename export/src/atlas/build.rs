//! The atlas builder: reads the inputs (through `input`), checks that they belong together, and writes the
//! site's data files (through `encode`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::{json, Value};

use super::encode::{columnise, num, nums, quantise_top_cell_means, script, write_file};
use super::error::{AtlasError, Result};
use super::input::{
    self, AnnotationIn, CatalogIn, EdgesIn, EffectsIn, GenericTable, LayersIn, EDGE_TEST_VALUES, EDGE_VALUES,
    EFFECT_VALUES, FEATURE_STATS, TERM_VALUES,
};
use super::{AtlasConfig, AtlasReport, ASSETS};
use scinterp_engine::stats::hypergeom_upper_tail;

/// Bins of the per-feature histogram of per-cell mean activation (log-spaced over the layer's range).
const HIST_BINS: usize = 20;
/// The data layout (the manifest's `format_version`; the page, `export/atlas/atlas.js`, reads this one only).
/// 4: top cells' mean_when_active quantised to one byte of the first's; top genes (their mean_when_fired as
/// decimal steps), top cells, histograms, term rows and cell types column-wise per detail shard
/// (`encode::columnise`); a term's p_value left to the page where it is the hypergeometric tail.
const FORMAT_VERSION: u64 = 4;
/// Gene and term index entries per shard file (by dictionary index).
const INDEX_SHARD: usize = 256;
/// Statistics in the layer table (a detail record leaves them out: the feature page reads the table).
const TABLE_STATS: [&str; 5] = [
    "fire_count",
    "fire_freq",
    "mean_when_active",
    "max_activation",
    "svd_max_abs_cos",
];
/// Genes per feature in the layer table (the explorer's "top genes" column).
const TABLE_GENES: usize = 3;

/// One layer of the atlas: a catalog's hook, or a hook that only edges, effects or layer matches name.
struct Layer {
    name: String,
    hook: String,
    catalog: Option<usize>,
    /// Feature ids of the layer table, in row order (a catalog's `features` rows, or the referenced ids).
    ids: Vec<u32>,
    row_of: HashMap<u32, usize>,
    /// Ids referenced by other inputs in a layer without a catalog.
    extra: BTreeSet<u32>,
}

/// (feature, input index, row) references grouped per layer.
type Refs = Vec<(u32, usize, usize)>;

#[derive(Default)]
struct LayerRefs {
    terms: Refs,
    best: Refs,
    edge_tests: Refs,
    cell_types: Refs,
    down: Refs,
    up: Refs,
    effects: Refs,
    match_fwd: Refs,
    match_back: Refs,
    highway_fwd: Refs,
    highway_back: Refs,
    lifespan: HashMap<u32, f64>,
    tools: Vec<(u32, usize)>,
}

/// The rows of `refs` for feature `f` (refs sorted by feature).
fn rows_of(refs: &[(u32, usize, usize)], f: u32) -> &[(u32, usize, usize)] {
    let lo = refs.partition_point(|r| r.0 < f);
    let hi = refs.partition_point(|r| r.0 <= f);
    &refs[lo..hi]
}

/// Block number and position in the block of a TransformerLens hook name, for ordering layers.
fn hook_order(hook: &str) -> (usize, usize) {
    if hook == "hook_embed" {
        return (0, 0);
    }
    let mut parts = hook.split('.');
    if let (Some("blocks"), Some(n), Some(point)) = (parts.next(), parts.next(), parts.next()) {
        if let Ok(n) = n.parse::<usize>() {
            let sub = [
                "hook_resid_pre",
                "hook_attn_out",
                "hook_resid_mid",
                "hook_mlp_out",
                "hook_resid_post",
            ]
            .iter()
            .position(|p| *p == point)
            .unwrap_or(5);
            return (n + 1, sub);
        }
    }
    (usize::MAX, 0)
}

struct Layers {
    layers: Vec<Layer>,
    by_hook: HashMap<String, Vec<usize>>,
}

impl Layers {
    /// Catalog layers named by hook (or `folder:hook` when two catalogs share a hook, as `annotate` names
    /// them), plus a layer for every other hook in `hooks`; ordered by model, block and hook point.
    fn new(catalogs: &[CatalogIn], hooks: &BTreeSet<String>) -> Result<Layers> {
        let mut layers = Vec::new();
        for (i, c) in catalogs.iter().enumerate() {
            let shared = catalogs.iter().filter(|d| d.hook == c.hook).count() > 1;
            let name = if shared {
                let folder = c.dir.file_name().and_then(|s| s.to_str()).unwrap_or("catalog");
                format!("{folder}:{}", c.hook)
            } else {
                c.hook.clone()
            };
            if layers.iter().any(|l: &Layer| l.name == name) {
                return Err(AtlasError::Usage(format!(
                    "--catalogs: two catalogs of {} have the same folder name; give each catalog once",
                    c.hook
                )));
            }
            layers.push(Layer {
                name,
                hook: c.hook.clone(),
                catalog: Some(i),
                ids: c.feature.clone(),
                row_of: c.feature.iter().enumerate().map(|(r, &f)| (f, r)).collect(),
                extra: BTreeSet::new(),
            });
        }
        for h in hooks {
            if !catalogs.iter().any(|c| &c.hook == h) {
                layers.push(Layer {
                    name: h.clone(),
                    hook: h.clone(),
                    catalog: None,
                    ids: Vec::new(),
                    row_of: HashMap::new(),
                    extra: BTreeSet::new(),
                });
            }
        }
        layers.sort_by(|a, b| {
            let prefix = |l: &Layer| l.name.strip_suffix(l.hook.as_str()).unwrap_or("").to_string();
            (prefix(a), hook_order(&a.hook), &a.name).cmp(&(prefix(b), hook_order(&b.hook), &b.name))
        });
        let mut by_hook: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, l) in layers.iter().enumerate() {
            by_hook.entry(l.hook.clone()).or_default().push(i);
        }
        Ok(Layers { layers, by_hook })
    }

    fn of_hook(&self, hook: &str, file: &Path) -> Result<usize> {
        match self.by_hook.get(hook).map(Vec::as_slice) {
            Some([l]) => Ok(*l),
            Some(many) => {
                Err(AtlasError::Mismatch(format!(
                "{}: hook {hook} belongs to {} catalogs ({}); build one atlas per model, or pass only one \
                 model's catalogs with this file",
                file.display(),
                many.len(),
                many.iter().map(|&l| self.layers[l].name.as_str()).collect::<Vec<_>>().join(", ")
            )))
            }
            None => Err(AtlasError::input(
                file,
                format!("hook {hook} is not in the atlas (internal error)"),
            )),
        }
    }

    /// Checks that feature `f` of layer `l`, as `file` refers to it, exists in the layer's catalog (and,
    /// with `must_fire`, that the catalog saw it fire); in a layer without a catalog it is recorded.
    fn check(
        &mut self,
        catalogs: &[CatalogIn],
        l: usize,
        f: u32,
        file: &Path,
        what: &str,
        must_fire: bool,
    ) -> Result<()> {
        let layer = &mut self.layers[l];
        let Some(ci) = layer.catalog else {
            layer.extra.insert(f);
            return Ok(());
        };
        let c = &catalogs[ci];
        let mismatch = |why: String| {
            AtlasError::Mismatch(format!(
                "{} and {}: {what} refers to feature {f} of {}, but {why}; the catalog and this file come \
                 from different SAEs (or stores): build the atlas from the outputs of one run",
                file.display(),
                c.dir.display(),
                c.hook
            ))
        };
        match layer.row_of.get(&f) {
            None => Err(mismatch(match c.d_sae {
                Some(d) if f as usize >= d => format!("that SAE has only {d} features"),
                _ => "the catalog has no such feature".to_string(),
            })),
            Some(&row) if must_fire && !c.alive[row] => Err(mismatch(
                "the catalog says it never fired on the catalog's store".into(),
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Same path, ignoring how it was spelled.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Refuses to write over anything but an earlier atlas, and that only with `overwrite`.
fn check_out(out: &Path, overwrite: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let is_atlas = out.join("data/atlas.js").is_file() && out.join("index.html").is_file();
    let empty = out.read_dir().map(|mut d| d.next().is_none()).unwrap_or(false);
    if empty {
        return Ok(());
    }
    if !is_atlas {
        return Err(AtlasError::Usage(format!(
            "--out {}: exists and is not an atlas; choose a new folder",
            out.display()
        )));
    }
    if !overwrite {
        return Err(AtlasError::Usage(format!(
            "--out {}: an atlas is already there; pass --overwrite to replace it",
            out.display()
        )));
    }
    Ok(())
}

/// Dictionary of distinct strings (genes, terms, labels) → dense indices.
#[derive(Default)]
struct Dict {
    index: HashMap<String, u32>,
    names: Vec<String>,
}

impl Dict {
    fn add(&mut self, key: &str) -> u32 {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        self.names.push(key.to_string());
        self.index.insert(key.to_string(), (self.names.len() - 1) as u32);
        (self.names.len() - 1) as u32
    }
}

fn gene_key(g: &input::TopGene) -> String {
    if !g.gene_id.is_empty() {
        g.gene_id.clone()
    } else if !g.symbol.is_empty() {
        g.symbol.clone()
    } else {
        format!("token {}", g.token)
    }
}

pub fn build(cfg: &AtlasConfig) -> Result<AtlasReport> {
    let started = Instant::now();
    if cfg.catalogs.is_empty() && cfg.edges.is_empty() {
        return Err(AtlasError::Usage(
            "nothing to build: give --catalogs (folders of `scinterp analyze`) and/or --edges".into(),
        ));
    }
    check_out(&cfg.out, cfg.overwrite)?;
    let shard = cfg.shard_features.max(1);

    // Read everything (catalogs and edge tables in parallel: they are the large inputs).
    let catalogs: Vec<CatalogIn> = cfg
        .catalogs
        .par_iter()
        .map(|d| input::read_catalog(d))
        .collect::<Result<_>>()?;
    let annotations: Vec<AnnotationIn> = cfg
        .annotations
        .iter()
        .map(|d| input::read_annotation(d))
        .collect::<Result<_>>()?;
    let edges: Vec<EdgesIn> = cfg
        .edges
        .par_iter()
        .map(|p| input::read_edges(p))
        .collect::<Result<_>>()?;
    let effects: Vec<EffectsIn> = cfg
        .effects
        .iter()
        .map(|p| input::read_effects(p))
        .collect::<Result<_>>()?;
    let layer_sets: Vec<LayersIn> = cfg
        .layers
        .iter()
        .map(|d| input::read_layers(d))
        .collect::<Result<_>>()?;
    let consensus: Vec<GenericTable> = cfg
        .consensus
        .iter()
        .map(|p| input::read_generic_table(p))
        .collect::<Result<_>>()?;
    let mut cards = Vec::new();
    for p in &cfg.tools {
        cards.extend(input::read_tool_cards(p)?);
    }

    // Layers: every hook any input names.
    let mut hooks: BTreeSet<String> = BTreeSet::new();
    edges.iter().for_each(|e| hooks.extend(e.hooks.iter().cloned()));
    effects.iter().for_each(|e| hooks.extend(e.hook.iter().cloned()));
    for s in &layer_sets {
        hooks.extend(s.matches.iter().flat_map(|m| [m.0.clone(), m.1.clone()]));
        hooks.extend(s.highways.iter().flat_map(|m| [m.0.clone(), m.1.clone()]));
    }
    let mut layers = Layers::new(&catalogs, &hooks)?;
    let n_layers = layers.layers.len();
    let mut refs: Vec<LayerRefs> = (0..n_layers).map(|_| LayerRefs::default()).collect();

    // Annotations: match each annotated catalog to a --catalogs folder.
    let mut alphas = Vec::new();
    for (ai, a) in annotations.iter().enumerate() {
        alphas.push(a.alpha);
        let mut layer_of_name: HashMap<&str, usize> = HashMap::new();
        for (name, hook, dir) in &a.catalogs {
            let found = layers
                .layers
                .iter()
                .position(|l| l.catalog.is_some_and(|c| same_dir(&catalogs[c].dir, dir)));
            let found = found.or_else(|| {
                let by_name: Vec<usize> = (0..n_layers)
                    .filter(|&l| layers.layers[l].catalog.is_some() && &layers.layers[l].name == name)
                    .collect();
                (by_name.len() == 1).then(|| by_name[0])
            });
            let Some(l) = found else {
                return Err(AtlasError::Mismatch(format!(
                    "{}: it annotates the catalog {} ({hook}), which is not among --catalogs ({}); pass that \
                     catalog too, or the annotation of these catalogs",
                    a.dir.join("annotate.json").display(),
                    dir.display(),
                    cfg.catalogs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                )));
            };
            if layers.layers[l].hook != *hook {
                return Err(AtlasError::Mismatch(format!(
                    "{} annotates {hook} in {}, but that catalog is of {}",
                    a.dir.display(),
                    dir.display(),
                    layers.layers[l].hook
                )));
            }
            layer_of_name.insert(name.as_str(), l);
        }
        let layer_of = |catalog: &str, table: &str| -> Result<usize> {
            layer_of_name.get(catalog).copied().ok_or_else(|| {
                AtlasError::input(
                    &a.dir.join(table),
                    format!("catalog `{catalog}` is not listed in annotate.json's catalogs"),
                )
            })
        };
        for (r, t) in a.terms.iter().enumerate() {
            let l = layer_of(&t.catalog, "enrichment")?;
            layers.check(&catalogs, l, t.feature, &a.dir, "the enrichment table", false)?;
            refs[l].terms.push((t.feature, ai, r));
        }
        for (r, (catalog, f, _, _)) in a.best.iter().enumerate() {
            let l = layer_of(catalog, "best_terms")?;
            layers.check(&catalogs, l, *f, &a.dir, "the best_terms table", false)?;
            refs[l].best.push((*f, ai, r));
        }
        for (r, t) in a.edge_tests.iter().enumerate() {
            let l = layer_of(&t.catalog, "edge_enrichment")?;
            layers.check(
                &catalogs,
                l,
                t.feature,
                &a.dir,
                "the edge_enrichment table",
                false,
            )?;
            refs[l].edge_tests.push((t.feature, ai, r));
        }
        for (r, t) in a.cell_types.iter().enumerate() {
            let l = layer_of(&t.catalog, "cell_types")?;
            layers.check(&catalogs, l, t.feature, &a.dir, "the cell_types table", false)?;
            refs[l].cell_types.push((t.feature, ai, r));
        }
    }

    // Edges: each under its source (downstream) and its target (upstream).
    let mut edge_count = 0usize;
    let mut edge_pairs: BTreeMap<(usize, usize), [usize; 3]> = BTreeMap::new();
    for (ei, e) in edges.iter().enumerate() {
        let layer_of: Vec<usize> = e
            .hooks
            .iter()
            .map(|h| layers.of_hook(h, &e.path))
            .collect::<Result<_>>()?;
        for r in 0..e.source.len() {
            let (ls, lt) = (
                layer_of[e.source_hook[r] as usize],
                layer_of[e.target_hook[r] as usize],
            );
            layers.check(&catalogs, ls, e.source[r], &e.path, "an edge's source", true)?;
            layers.check(&catalogs, lt, e.target[r], &e.path, "an edge's target", false)?;
            refs[ls].down.push((e.source[r], ei, r));
            refs[lt].up.push((e.target[r], ei, r));
            let pair = edge_pairs.entry((ls, lt)).or_default();
            pair[0] += 1;
            // mean_change = ablated − clean: > 0 the source lowers the target, < 0 it raises it; 0 neither.
            let mean = e.values[r][1];
            if mean > 0.0 {
                pair[1] += 1;
            } else if mean < 0.0 {
                pair[2] += 1;
            }
        }
        edge_count += e.source.len();
    }
    for (xi, x) in effects.iter().enumerate() {
        for r in 0..x.feature.len() {
            let l = layers.of_hook(&x.hook[r], &x.path)?;
            layers.check(&catalogs, l, x.feature[r], &x.path, "an effects row", false)?;
            refs[l].effects.push((x.feature[r], xi, r));
        }
    }
    for (si, s) in layer_sets.iter().enumerate() {
        let file = s.dir.clone();
        for (r, m) in s.matches.iter().enumerate() {
            let (a, b) = (layers.of_hook(&m.0, &file)?, layers.of_hook(&m.1, &file)?);
            layers.check(&catalogs, a, m.2, &file, "a decoder match", false)?;
            layers.check(&catalogs, b, m.3, &file, "a decoder match", false)?;
            refs[a].match_fwd.push((m.2, si, r));
            refs[b].match_back.push((m.3, si, r));
        }
        for (r, h) in s.highways.iter().enumerate() {
            let (a, b) = (layers.of_hook(&h.0, &file)?, layers.of_hook(&h.1, &file)?);
            layers.check(&catalogs, a, h.2, &file, "a highway", false)?;
            layers.check(&catalogs, b, h.3, &file, "a highway", false)?;
            refs[a].highway_fwd.push((h.2, si, r));
            refs[b].highway_back.push((h.3, si, r));
        }
        for (hook, f, n) in &s.lifespans {
            if let Ok(l) = layers.of_hook(hook, &file) {
                refs[l].lifespan.insert(*f, *n);
            }
        }
    }
    // Tool cards name the features they were built from (any object with a hook and feature(s)).
    let mut tools = Vec::new();
    for (ti, (path, card)) in cards.iter().enumerate() {
        let mut links = Vec::new();
        collect_links(card, 0, &mut links);
        let mut linked = Vec::new();
        for (hook, f) in links {
            if let Some(&[l]) = layers.by_hook.get(&hook).map(Vec::as_slice) {
                if layers.layers[l].row_of.contains_key(&f) || layers.layers[l].catalog.is_none() {
                    layers.layers[l].extra.insert(f);
                    refs[l].tools.push((f, ti));
                    linked.push(json!([l, f]));
                }
            }
        }
        let fields: serde_json::Map<String, Value> = card
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(_, v)| !v.is_object() && !v.is_array())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let name = card["name"].as_str().map(str::to_string).unwrap_or_else(|| {
            path.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("tool")
                .to_string()
        });
        tools.push(
            json!({"name": name, "path": path.display().to_string(), "fields": fields, "features": linked}),
        );
    }
    // Layers without a catalog hold the features others refer to.
    for l in layers.layers.iter_mut().filter(|l| l.catalog.is_none()) {
        l.ids = l.extra.iter().copied().collect();
        l.row_of = l.ids.iter().enumerate().map(|(r, &f)| (f, r)).collect();
    }
    for r in refs.iter_mut() {
        for v in [
            &mut r.terms,
            &mut r.best,
            &mut r.edge_tests,
            &mut r.cell_types,
            &mut r.down,
            &mut r.up,
            &mut r.effects,
            &mut r.match_fwd,
            &mut r.match_back,
            &mut r.highway_fwd,
            &mut r.highway_back,
        ] {
            v.sort_unstable();
        }
        r.tools.sort_unstable();
    }

    // Dictionaries: genes (over every top-gene list), terms and libraries, cell-type labels.
    let mut genes = Dict::default();
    let mut gene_symbol: Vec<String> = Vec::new();
    let mut gene_id: Vec<String> = Vec::new();
    // n_positions of a gene is a count over the token store, the same in every row of every layer that
    // reads that store: the dictionary holds it once (from the gene's first row) and a top-gene row
    // repeats it only where it differs (a catalog of another store).
    let mut gene_positions: Vec<f64> = Vec::new();
    let gene_of: Vec<Vec<u32>> = catalogs
        .iter()
        .map(|c| {
            c.top_genes
                .iter()
                .map(|g| {
                    let before = genes.names.len();
                    let i = genes.add(&gene_key(g));
                    if genes.names.len() > before {
                        gene_symbol.push(g.symbol.clone());
                        gene_id.push(g.gene_id.clone());
                        gene_positions.push(g.values[1]);
                    }
                    i
                })
                .collect()
        })
        .collect();
    let mut libraries = Dict::default();
    let mut terms = Dict::default();
    let mut term_library: Vec<u32> = Vec::new();
    let mut term_name: Vec<String> = Vec::new();
    let mut term_key = |lib: &str, term: &str| {
        let li = libraries.add(lib);
        let before = terms.names.len();
        let t = terms.add(&format!("{lib}\u{1f}{term}"));
        if terms.names.len() > before {
            term_library.push(li);
            term_name.push(term.to_string());
        }
        t
    };
    let term_of: Vec<Vec<u32>> = annotations
        .iter()
        .map(|a| a.terms.iter().map(|t| term_key(&t.library, &t.term)).collect())
        .collect();
    let best_of: Vec<Vec<u32>> = annotations
        .iter()
        .map(|a| {
            a.best
                .iter()
                .map(|(_, _, lib, term)| term_key(lib, term))
                .collect()
        })
        .collect();
    let mut labels = Dict::default();
    let label_of: Vec<Vec<u32>> = annotations
        .iter()
        .map(|a| a.cell_types.iter().map(|c| labels.add(&c.label)).collect())
        .collect();
    // Top cells name their cells by index into one dictionary of cell ids (data/cells/<k>.js).
    let mut cell_ids = Dict::default();
    let cell_of: Vec<Vec<u32>> = catalogs
        .iter()
        .map(|c| c.top_cells.iter().map(|t| cell_ids.add(&t.cell_id)).collect())
        .collect();
    let mut networks = Dict::default();
    let network_of: Vec<Vec<u32>> = annotations
        .iter()
        .map(|a| a.edge_tests.iter().map(|t| networks.add(&t.network)).collect())
        .collect();

    // Per layer: the feature table and the detail shards, written in parallel.
    let staging = staging_dir(&cfg.out)?;
    let guard = Staging(staging.clone());
    let layer_of_hook: HashMap<String, usize> = layers
        .by_hook
        .iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(h, v)| (h.clone(), v[0]))
        .collect();
    let ctx = Ctx {
        layer_of_hook: &layer_of_hook,
        catalogs: &catalogs,
        annotations: &annotations,
        edges: &edges,
        effects: &effects,
        layer_sets: &layer_sets,
        layers: &layers.layers,
        gene_of: &gene_of,
        gene_positions: &gene_positions,
        cell_of: &cell_of,
        term_of: &term_of,
        best_of: &best_of,
        label_of: &label_of,
        network_of: &network_of,
        alphas: &alphas,
        shard,
    };
    let written: Vec<LayerOut> = (0..n_layers)
        .into_par_iter()
        .map(|l| write_layer(&ctx, &refs[l], l, &staging))
        .collect::<Result<_>>()?;

    let mut bytes_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut files = 0usize;
    let mut add = |kind: &str, bytes: u64, n: usize| {
        *bytes_by_kind.entry(kind.to_string()).or_default() += bytes;
        files += n;
    };
    for w in &written {
        add("features", w.table_bytes, 1);
        add("details", w.detail_bytes, w.detail_files);
    }

    // Gene index: gene → (layer, feature, rank by conditional mean, rank by mass, mean when fired),
    // written per gene as one flat list grouped by layer: [layer, n, then n × (feature − the previous
    // feature of that layer (the first: the feature), rank code, mean_when_fired), next layer, …]; the rank
    // code is rank_cm + rank_base × rank_mass (1-based ranks, 0: not in that list). The page decodes it and
    // orders the features itself (best rank, then mean when fired).
    let mut gene_rows: Vec<(u32, u16, u32, u8, u32, f64)> = Vec::new();
    let mut rank_base = 1u64;
    for (l, layer) in layers.layers.iter().enumerate() {
        if let Some(c) = layer.catalog {
            for (i, g) in catalogs[c].top_genes.iter().enumerate() {
                gene_rows.push((gene_of[c][i], l as u16, g.feature, g.ranking, g.rank, g.values[2]));
                rank_base = rank_base.max(u64::from(g.rank) + 2);
            }
        }
    }
    gene_rows.par_sort_unstable_by(|a, b| (a.0, a.1, a.2, a.3).cmp(&(b.0, b.1, b.2, b.3)));
    let mut by_gene: Vec<Vec<Value>> = vec![Vec::new(); genes.names.len()];
    let mut i = 0;
    let (mut last_layer, mut count_at, mut last_f) = (u16::MAX, 0usize, 0u32);
    while i < gene_rows.len() {
        let (g, l, f) = (gene_rows[i].0, gene_rows[i].1, gene_rows[i].2);
        let list = &mut by_gene[g as usize];
        if list.is_empty() || l != last_layer {
            last_layer = l;
            last_f = 0;
            list.push(json!(l));
            count_at = list.len();
            list.push(json!(0));
        }
        let mean = gene_rows[i].5;
        let mut code = 0u64;
        while i < gene_rows.len() && (gene_rows[i].0, gene_rows[i].1, gene_rows[i].2) == (g, l, f) {
            let rank = u64::from(gene_rows[i].4) + 1;
            code += if gene_rows[i].3 == 0 {
                rank
            } else {
                rank * rank_base
            };
            i += 1;
        }
        list.extend([json!(f - last_f), json!(code), num(mean)]);
        last_f = f;
        list[count_at] = json!(list[count_at].as_u64().unwrap_or(0) + 1);
    }
    let gene_index = write_keyed(&staging, "gidx", by_gene.into_iter().map(Value::Array).collect())?;
    add("gene_index", gene_index.1, gene_index.0);

    // Term index: term → (layer, feature, p, q_value_atlas, overlap, fold).
    let mut by_term: Vec<Vec<[f64; 6]>> = vec![Vec::new(); terms.names.len()];
    for (l, r) in refs.iter().enumerate() {
        for &(f, ai, row) in &r.terms {
            let v = &annotations[ai].terms[row].values;
            by_term[term_of[ai][row] as usize].push([l as f64, f as f64, v[4], v[5], v[0], v[7]]);
        }
    }
    let term_shards = write_index(&staging, "tidx", &mut by_term, |a, b| a[2].total_cmp(&b[2]))?;
    add("term_index", term_shards.1, term_shards.0);

    let cells = write_keyed(
        &staging,
        "cells",
        cell_ids.names.iter().map(|s| json!(s)).collect(),
    )?;
    if !cell_ids.names.is_empty() {
        add("cells", cells.1, cells.0);
    }
    let genes_js = script(
        "genes",
        &json!({"symbol": gene_symbol, "gene_id": gene_id, "n_positions": nums(&gene_positions)}),
    );
    add(
        "genes",
        write_file(&staging, "data/genes.js", genes_js.as_bytes())?,
        1,
    );
    let terms_js = script(
        "terms",
        &json!({"library": term_library, "name": term_name, "features": by_term.iter().map(Vec::len).collect::<Vec<_>>()}),
    );
    add(
        "terms",
        write_file(&staging, "data/terms.js", terms_js.as_bytes())?,
        1,
    );

    let extra = json!({
        "consensus": consensus.iter().map(|t| json!({
            "path": t.path.display().to_string(),
            "columns": t.columns,
            "rows": t.rows.iter().map(|r| r.iter().map(|v| v.as_f64().filter(|_| v.is_f64()).map_or(v.clone(), num)).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "summary": t.summary,
        })).collect::<Vec<_>>(),
        "tools": tools,
    });
    add(
        "extra",
        write_file(&staging, "data/extra.js", script("extra", &extra).as_bytes())?,
        1,
    );

    // The manifest.
    let layer_json: Vec<Value> = layers
        .layers
        .iter()
        .zip(&written)
        .enumerate()
        .map(|(l, (layer, w))| {
            let c = layer.catalog.map(|c| &catalogs[c]);
            json!({
                "id": l,
                "name": layer.name,
                "hook": layer.hook,
                "catalog": c.map(|c| c.dir.display().to_string()),
                "d_sae": c.and_then(|c| c.d_sae),
                "rows": layer.ids.len(),
                "alive": w.alive,
                "annotated": w.annotated,
                "modules": w.modules,
                "edges_out": refs[l].down.len(),
                "edges_in": refs[l].up.len(),
                "shards": layer.ids.iter().max().map_or(0, |&m| m as usize / shard + 1),
                "hist": w.hist_range.map(|(lo, hi)| json!([num(lo), num(hi), HIST_BINS])),
                "cells": w.cells.as_ref().map(|(n, per_label)| {
                    let mut lc = vec![Value::Null; labels.names.len()];
                    for (&l, &c) in per_label {
                        lc[l as usize] = num(c);
                    }
                    json!({"n": num(*n), "lc": lc})
                }),
                "summary": c.map(|c| catalog_summary(&c.summary)),
            })
        })
        .collect();
    let manifest = json!({
        "format": "scinterp-atlas",
        "format_version": FORMAT_VERSION,
        "title": cfg.title.clone().unwrap_or_else(|| "scinterp atlas".into()),
        "scinterp_version": env!("CARGO_PKG_VERSION"),
        "shard": shard,
        "index_shard": INDEX_SHARD,
        "rank_base": rank_base,
        "alpha": alphas.first().copied().unwrap_or(0.05),
        "layers": layer_json,
        "edge_pairs": edge_pairs.iter().map(|(&(a, b), c)| json!([a, b, c[0], c[1], c[2]])).collect::<Vec<_>>(),
        "edges": edges.iter().map(|e| json!({"path": e.path.display().to_string(), "rows": e.source.len(), "summary": e.summary})).collect::<Vec<_>>(),
        "annotations": annotations.iter().map(|a| json!({"path": a.dir.display().to_string(), "alpha": a.alpha, "settings": a.summary["settings"], "families": a.summary["families"]})).collect::<Vec<_>>(),
        "layer_comparisons": layer_sets.iter().map(|s| json!({"path": s.dir.display().to_string(), "summary": s.summary})).collect::<Vec<_>>(),
        "effects": effects.iter().map(|x| json!({"path": x.path.display().to_string(), "rows": x.feature.len()})).collect::<Vec<_>>(),
        "consensus": consensus.len(),
        "tools": tools.len(),
        "libraries": libraries.names,
        "labels": labels.names,
        "networks": networks.names,
        "genes": genes.names.len(),
        "terms": terms.names.len(),
        "columns": {
            "feature_stats": FEATURE_STATS,
            "gene_columns": {"id": "gene (after the first it, which are the layer table's top)", "it": "leading genes left to the layer table's top (absent: 0)", "nf": "n_fired", "m": "mean_when_fired", "np": "n_positions (null: genes.js's)"},
            "term_row": ([&["term"][..], &TERM_VALUES[..], &["overlap_genes"][..]].concat()),
            "edge_test_row": ([&["network"][..], &EDGE_TEST_VALUES[..], &["edges"][..]].concat()),
            "cell_type_columns": {"l": "label", "k": "in_top", "t": "top_size (one number: every row's)", "q": "q_value", "lc": "label_cells (absent or null: the layer's cells.lc)", "n": "n_cells (absent or null: the layer's cells.n)", "p": "p_value (absent or null: P(X >= in_top), X ~ Hypergeom(n_cells, label_cells, top_size), computed by the page)"},
            "top_cell_columns": {"c": "cell_id (index into data/cells/<index / index_shard>.js)", "a": "n_active", "s": "mean_when_active of the first row (4 significant digits)", "q": "mean_when_active of the later rows, quantised: steps q[k-1] - q[k] of q[k] = round(255 * m[k] / s), q[0] = 255; shown as q[k] * s / 255", "m": "mean_when_active (instead of s and q, where they do not apply)", "r": "rank (absent: 0, 1, 2, … in order)"},
            "detail_shard_columns": {"_g": "top genes (g) of the shard's features: f (features), n (rows of each), nf, m (n rows each, one feature after another), id (n - it each), e and it (one per feature); mean_when_fired of row k = M_k × 10^e with M_0 = m[0], M_k = M_(k-1) - m[k]; the first it ids are the layer table's top of the feature", "_tc": "top cells (tc): f, n, c and a (n rows each), s (one per feature), q (n - 1 each)", "_h": "histograms (h): f, n (length of each), h", "_t": "term rows (t): f, n (rows of each), t0 … t(L-1) (n each; row j = [t0[j], t1[j], …])", "_c": "cell types (c) with just l, k, q, t: f, n, l, k, q (n each), t (one per feature)"},
            "edge_row": ([&["layer", "feature"][..], &EDGE_VALUES[..]].concat()),
            "match_row": ["layer", "feature", "abs_cos"],
            "highway_row": ["layer", "feature", "source_fires", "cocount", "pmi", "npmi", "pmi_permuted_pairing", "highway"],
            "effect_row": EFFECT_VALUES,
            "gene_index_row": ["layer", "n", "feature − previous feature", "rank_conditional_mean + rank_base × rank_mass", "mean_when_fired"],
            "term_index_row": ["layer", "feature", "p_value", "q_value_atlas", "overlap", "fold_enrichment"],
        },
    });
    add(
        "manifest",
        write_file(&staging, "data/atlas.js", script("atlas", &manifest).as_bytes())?,
        1,
    );
    for (rel, text) in ASSETS {
        add("assets", write_file(&staging, rel, text.as_bytes())?, 1);
    }
    let out = publish(&staging, &cfg.out)?;
    std::mem::forget(guard);

    let alive: usize = written.iter().map(|w| w.alive).sum();
    Ok(AtlasReport {
        index: out.join("index.html"),
        out,
        layers: n_layers,
        features: layers
            .layers
            .iter()
            .filter(|l| l.catalog.is_some())
            .map(|l| l.ids.len())
            .sum(),
        alive,
        annotated: written.iter().map(|w| w.annotated).sum(),
        genes: genes.names.len(),
        terms: terms.names.len(),
        edges: edge_count,
        files,
        bytes: bytes_by_kind.values().sum(),
        bytes_by_kind,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Removes the staging folder unless the build finished (then it has become the site).
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The parts of catalog.json the overview shows.
fn catalog_summary(s: &Value) -> Value {
    json!({
        "n_cells": s["n_cells"], "n_rows": s["n_rows"], "n_genes": s["n_genes"], "d_in": s["d_in"], "k": s["k"],
        "fvu": s["reconstruction"]["fvu_all_rows"],
        "svd_variance_explained": s["svd"]["variance_explained"],
        "svd_aligned_0_5": s["svd"]["aligned_max_abs_cos_gt_0_5"],
        "coactivation_edges": s["coactivation"]["edges"],
        "modules": s["modules"]["count"],
        "sae": s["sae"], "acts": s["acts"],
    })
}

/// Every (hook, feature) a tool card names: an object with `hook`/`source_hook`/`hook_name` and
/// `feature`/`source_feature`/`features`.
fn collect_links(v: &Value, depth: usize, out: &mut Vec<(String, u32)>) {
    if depth > 4 {
        return;
    }
    match v {
        Value::Object(o) => {
            let hook = ["hook", "source_hook", "hook_name"]
                .iter()
                .find_map(|k| o.get(*k)?.as_str());
            if let Some(hook) = hook {
                for k in ["feature", "source_feature", "features"] {
                    match o.get(k) {
                        Some(Value::Number(n)) => {
                            out.extend(n.as_u64().map(|f| (hook.to_string(), f as u32)))
                        }
                        Some(Value::Array(a)) => out.extend(
                            a.iter()
                                .filter_map(|x| x.as_u64())
                                .map(|f| (hook.to_string(), f as u32)),
                        ),
                        _ => {}
                    }
                }
            }
            o.values().for_each(|x| collect_links(x, depth + 1, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_links(x, depth + 1, out)),
        _ => {}
    }
}

/// A fresh folder beside `out` to build in (renamed into place at the end).
fn staging_dir(out: &Path) -> Result<PathBuf> {
    let name = out.file_name().and_then(|s| s.to_str()).unwrap_or("site");
    let staging = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| AtlasError::io(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| AtlasError::io(&staging, e))?;
    Ok(staging)
}

/// Moves the finished site into place (an earlier atlas there, checked by `check_out`, is replaced).
fn publish(staging: &Path, out: &Path) -> Result<PathBuf> {
    if out.exists() {
        let old = staging.with_extension("old");
        std::fs::rename(out, &old).map_err(|e| AtlasError::io(out, e))?;
        std::fs::rename(staging, out).map_err(|e| AtlasError::io(out, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| AtlasError::io(&old, e))?;
    } else {
        std::fs::rename(staging, out).map_err(|e| AtlasError::io(out, e))?;
    }
    Ok(out.canonicalize().unwrap_or_else(|_| out.to_path_buf()))
}

/// Writes an index (entries per dictionary key, sorted by `order`) as shards of [`INDEX_SHARD`] keys;
/// returns (files, bytes).
fn write_index<const N: usize>(
    staging: &Path,
    dir: &str,
    entries: &mut [Vec<[f64; N]>],
    order: impl Fn(&[f64; N], &[f64; N]) -> std::cmp::Ordering + Sync,
) -> Result<(usize, u64)> {
    let values: Vec<Value> = entries
        .par_iter_mut()
        .map(|list| {
            list.sort_by(&order);
            Value::Array(list.iter().map(|e| nums(e)).collect())
        })
        .collect();
    write_keyed(staging, dir, values)
}

/// Writes one value per dictionary key (an empty array: none) as shards of [`INDEX_SHARD`] keys;
/// returns (files, bytes).
fn write_keyed(staging: &Path, dir: &str, values: Vec<Value>) -> Result<(usize, u64)> {
    let results: Vec<u64> = values
        .par_chunks(INDEX_SHARD)
        .enumerate()
        .map(|(k, chunk)| {
            let mut map = serde_json::Map::new();
            for (j, v) in chunk.iter().enumerate() {
                if v.as_array().is_some_and(Vec::is_empty) {
                    continue;
                }
                map.insert((k * INDEX_SHARD + j).to_string(), v.clone());
            }
            let text = script(&format!("{dir}/{k}"), &Value::Object(map));
            write_file(staging, &format!("data/{dir}/{k}.js"), text.as_bytes())
        })
        .collect::<Result<_>>()?;
    Ok((results.len(), results.iter().sum()))
}

struct Ctx<'a> {
    catalogs: &'a [CatalogIn],
    annotations: &'a [AnnotationIn],
    edges: &'a [EdgesIn],
    effects: &'a [EffectsIn],
    layer_sets: &'a [LayersIn],
    layers: &'a [Layer],
    gene_of: &'a [Vec<u32>],
    /// n_positions of each dictionary gene (as genes.js holds it).
    gene_positions: &'a [f64],
    /// Per catalog, per top_cells row: the index of its cell id in the cell dictionary.
    cell_of: &'a [Vec<u32>],
    term_of: &'a [Vec<u32>],
    best_of: &'a [Vec<u32>],
    /// The layer of each hook that names exactly one layer.
    layer_of_hook: &'a HashMap<String, usize>,
    label_of: &'a [Vec<u32>],
    network_of: &'a [Vec<u32>],
    alphas: &'a [f64],
    shard: usize,
}

struct LayerOut {
    alive: usize,
    annotated: usize,
    modules: usize,
    hist_range: Option<(f64, f64)>,
    table_bytes: u64,
    detail_bytes: u64,
    detail_files: usize,
    /// The layer's cell-type counts (labelled cells, cells per label index), when it has cell-type rows.
    cells: Option<(f64, BTreeMap<u32, f64>)>,
}

/// Indices of `items` grouped by feature: (feature, index), sorted.
fn by_feature<T>(items: &[T], feature: impl Fn(&T) -> u32) -> Vec<(u32, usize, usize)> {
    let mut v: Vec<(u32, usize, usize)> = items
        .iter()
        .enumerate()
        .map(|(i, x)| (feature(x), 0, i))
        .collect();
    v.sort_unstable();
    v
}

fn write_layer(ctx: &Ctx, refs: &LayerRefs, l: usize, staging: &Path) -> Result<LayerOut> {
    let layer = &ctx.layers[l];
    let cat = layer.catalog.map(|c| (c, &ctx.catalogs[c]));
    let n = layer.ids.len();

    // Per-feature annotation summary: significant tests, best q, best term, best cell type.
    let mut n_sig = vec![0u32; n];
    let mut best_q = vec![f64::NAN; n];
    let mut best_term = vec![-1i64; n];
    let mut best_p = vec![f64::INFINITY; n];
    let mut best_label = vec![-1i64; n];
    let mut best_label_q = vec![f64::INFINITY; n];
    let row = |f: u32| layer.row_of.get(&f).copied();
    for &(f, ai, r) in &refs.terms {
        let Some(i) = row(f) else { continue };
        let v = &ctx.annotations[ai].terms[r].values;
        if v[5] <= ctx.alphas[ai] {
            n_sig[i] += 1;
        }
        if best_q[i].is_nan() || v[5] < best_q[i] {
            best_q[i] = v[5];
        }
        if v[4] < best_p[i] {
            best_p[i] = v[4];
            best_term[i] = ctx.term_of[ai][r] as i64;
        }
    }
    for &(f, ai, r) in &refs.edge_tests {
        let Some(i) = row(f) else { continue };
        let v = &ctx.annotations[ai].edge_tests[r].values;
        if v[3] <= ctx.alphas[ai] {
            n_sig[i] += 1;
        }
        if best_q[i].is_nan() || v[3] < best_q[i] {
            best_q[i] = v[3];
        }
    }
    // annotate's own best term wins where it named one.
    for &(f, ai, r) in &refs.best {
        if let Some(i) = row(f) {
            best_term[i] = ctx.best_of[ai][r] as i64;
        }
    }
    for &(f, ai, r) in &refs.cell_types {
        let Some(i) = row(f) else { continue };
        let q = ctx.annotations[ai].cell_types[r].values[5];
        if q < best_label_q[i] {
            best_label_q[i] = q;
            best_label[i] = ctx.label_of[ai][r] as i64;
        }
    }
    // Cell types: the store's labelled cells and each label's cells belong to the layer (one token store per
    // catalog), so the manifest holds them once; a record repeats them only where a row's differ.
    let mut cells: Option<(f64, BTreeMap<u32, f64>)> = None;
    for &(_, ai, r) in &refs.cell_types {
        let v = &ctx.annotations[ai].cell_types[r].values;
        let (_, per_label) = cells.get_or_insert_with(|| (v[3], BTreeMap::new()));
        per_label.entry(ctx.label_of[ai][r]).or_insert(v[2]);
    }
    let alpha = ctx.alphas.first().copied().unwrap_or(0.05);
    let annotated_flag: Vec<bool> = (0..n).map(|i| n_sig[i] > 0 || best_q[i] <= alpha).collect();

    // Top genes per feature (catalog rows, grouped).
    let top = cat
        .map(|(_, c)| by_feature(&c.top_genes, |g| g.feature))
        .unwrap_or_default();
    let top_cells = cat
        .map(|(_, c)| by_feature(&c.top_cells, |t| t.feature))
        .unwrap_or_default();
    // Histogram of per-cell mean activation, log-spaced over the layer's positive range.
    let mut hist_range = None;
    let mut hist: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Some((_, c)) = cat {
        if let Some((feats, means)) = &c.cell_means {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for &m in means.iter().filter(|m| **m > 0.0 && m.is_finite()) {
                lo = lo.min(m);
                hi = hi.max(m);
            }
            if lo.is_finite() {
                let (a, b) = (lo.log10(), hi.log10().max(lo.log10() + 1e-9));
                hist_range = Some((lo, hi));
                for (&f, &m) in feats.iter().zip(means) {
                    if m > 0.0 && m.is_finite() {
                        let bin = (((m.log10() - a) / (b - a)) * HIST_BINS as f64) as usize;
                        hist.entry(f).or_insert_with(|| vec![0; HIST_BINS])[bin.min(HIST_BINS - 1)] += 1;
                    }
                }
            }
        }
    }

    // The layer table (column-wise).
    let mut cols = serde_json::Map::new();
    cols.insert("f".into(), json!(layer.ids));
    let mut alive = 0;
    let mut modules = 0;
    // The `top` column: each feature's first TABLE_GENES genes (the explorer shows them; the detail records
    // leave them out of their top-gene ids).
    let mut table_top: Vec<Vec<u32>> = Vec::new();
    if let Some((ci, c)) = cat {
        alive = c.alive.iter().filter(|&&a| a).count();
        cols.insert(
            "alive".into(),
            json!(c.alive.iter().map(|&a| a as u8).collect::<Vec<_>>()),
        );
        for (k, name) in FEATURE_STATS.iter().enumerate() {
            if TABLE_STATS.contains(name) && c.stats[k].iter().any(|x| x.is_finite()) {
                cols.insert((*name).into(), nums(&c.stats[k]));
            }
        }
        cols.insert("module".into(), json!(c.module));
        modules = c
            .module
            .iter()
            .filter(|&&m| m >= 0)
            .collect::<BTreeSet<_>>()
            .len();
        let mut genes3 = Vec::with_capacity(n);
        for &f in &layer.ids {
            let rows = rows_of(&top, f);
            let pick = |ranking: u8| -> Vec<u32> {
                let mut v: Vec<(u32, u32)> = rows
                    .iter()
                    .filter(|r| c.top_genes[r.2].ranking == ranking)
                    .map(|r| (c.top_genes[r.2].rank, ctx.gene_of[ci][r.2]))
                    .collect();
                v.sort_unstable();
                v.into_iter().take(TABLE_GENES).map(|x| x.1).collect()
            };
            let cm = pick(0);
            genes3.push(if cm.is_empty() { pick(1) } else { cm });
        }
        cols.insert("top".into(), json!(genes3));
        table_top = genes3;
    }
    let count_of =
        |refs: &Refs| -> Vec<u32> { layer.ids.iter().map(|&f| rows_of(refs, f).len() as u32).collect() };
    cols.insert("out".into(), json!(count_of(&refs.down)));
    cols.insert("in".into(), json!(count_of(&refs.up)));
    cols.insert("nt".into(), json!(n_sig));
    cols.insert("bq".into(), nums(&best_q));
    cols.insert("bt".into(), json!(best_term));
    if !refs.cell_types.is_empty() {
        cols.insert("ct".into(), json!(best_label));
    }
    if !refs.lifespan.is_empty() {
        let ls: Vec<f64> = layer
            .ids
            .iter()
            .map(|f| refs.lifespan.get(f).copied().unwrap_or(f64::NAN))
            .collect();
        cols.insert("ls".into(), nums(&ls));
    }
    let table_key = format!("L{l}/f");
    let table_bytes = write_file(
        staging,
        &format!("data/L{l}/features.js"),
        script(&table_key, &json!({"cols": cols})).as_bytes(),
    )?;
    let annotated = annotated_flag
        .iter()
        .zip(0..n)
        .filter(|(a, i)| **a && cat.is_none_or(|(_, c)| c.alive[*i]))
        .count();

    // Detail shards.
    let mut shards: BTreeMap<usize, serde_json::Map<String, Value>> = BTreeMap::new();
    for (i, &f) in layer.ids.iter().enumerate() {
        let mut rec = serde_json::Map::new();
        // Symbol or gene id → index of the feature's top-gene row (for the terms' overlap genes).
        let mut row_of_gene: HashMap<&str, usize> = HashMap::new();
        if let Some((ci, c)) = cat {
            // Statistics in FEATURE_STATS order, null where the layer table has the column (and where
            // the catalog has no value), trailing nulls left out; alive and module are in the table.
            let mut stats: Vec<Value> = FEATURE_STATS
                .iter()
                .zip(&c.stats)
                .map(|(name, col)| {
                    if TABLE_STATS.contains(name) {
                        Value::Null
                    } else {
                        num(col[i])
                    }
                })
                .collect();
            while stats.last().is_some_and(Value::is_null) {
                stats.pop();
            }
            rec.insert("s".into(), Value::Array(stats));
            // Top genes: each distinct (gene, numbers) row once, conditional-mean list first, then the
            // rows only the mass list has; the two rankings index into them. Rows are column-wise: `id`
            // (gene), `nf` (n_fired), `m` (mean_when_fired) and `np` (n_positions, only when some row's
            // differs from genes.js's; null: genes.js's). The page derives mass = mean × n_fired (the
            // catalog's mass is that sum) and fire_rate = n_fired / n_positions. `cm` is left out when it
            // lists every row in order (the usual case) and is a count n when it lists rows 0 … n − 1,
            // `mass` is left out when the catalog has no mass list.
            let mut rows: Vec<usize> = Vec::new();
            let mut seen: HashMap<(u32, [u64; 5]), usize> = HashMap::new();
            let mut ranked: [Vec<(u32, usize)>; 2] = [Vec::new(), Vec::new()];
            let mut listed: Vec<(u8, u32, usize)> = rows_of(&top, f)
                .iter()
                .map(|r| (c.top_genes[r.2].ranking, c.top_genes[r.2].rank, r.2))
                .collect();
            listed.sort_unstable();
            for (ranking, rank, r) in listed {
                let g = &c.top_genes[r];
                let gi = ctx.gene_of[ci][r];
                let key = (gi, g.values.map(f64::to_bits));
                let at = *seen.entry(key).or_insert_with(|| {
                    rows.push(r);
                    rows.len() - 1
                });
                for name in [&g.symbol, &g.gene_id] {
                    if !name.is_empty() {
                        row_of_gene.entry(name.as_str()).or_insert(at);
                    }
                }
                ranked[ranking as usize].push((rank, at));
            }
            if !rows.is_empty() {
                let order = |mut v: Vec<(u32, usize)>| {
                    v.sort_unstable();
                    v.into_iter().map(|x| x.1).collect::<Vec<_>>()
                };
                let [a, b] = ranked;
                let (cm, mass) = (order(a), order(b));
                let mut g = serde_json::Map::new();
                let gene = |r: usize| ctx.gene_of[ci][r];
                let v = |r: usize, j: usize| c.top_genes[r].values[j];
                // The first ids, when they are the layer table's `top` genes of the feature (its first
                // conditional-mean genes), are left out: `it` says how many the page takes from there.
                let ids: Vec<u32> = rows.iter().map(|&r| gene(r)).collect();
                let top = table_top.get(i).map_or(&[][..], Vec::as_slice);
                let it = if !top.is_empty() && ids.starts_with(top) {
                    top.len()
                } else {
                    0
                };
                g.insert("id".into(), json!(ids[it..]));
                if it > 0 {
                    g.insert("it".into(), json!(it));
                }
                g.insert(
                    "nf".into(),
                    Value::Array(rows.iter().map(|&r| num(v(r, 0))).collect()),
                );
                g.insert(
                    "m".into(),
                    Value::Array(rows.iter().map(|&r| num(v(r, 2))).collect()),
                );
                let own = |r: usize| ctx.gene_positions[gene(r) as usize].to_bits() == v(r, 1).to_bits();
                if !rows.iter().all(|&r| own(r)) {
                    let np = rows
                        .iter()
                        .map(|&r| if own(r) { Value::Null } else { num(v(r, 1)) });
                    g.insert("np".into(), Value::Array(np.collect()));
                }
                if !cm.iter().enumerate().all(|(k, &x)| k == x) {
                    g.insert("cm".into(), json!(cm));
                } else if cm.len() < rows.len() {
                    g.insert("cm".into(), json!(cm.len()));
                }
                if !mass.is_empty() {
                    g.insert("mass".into(), json!(mass));
                }
                rec.insert("g".into(), Value::Object(g));
            }
            // Top cells column-wise, by rank: `c` (the cell id's index in data/cells/), `a` (n_active), and
            // mean_when_active quantised (`s`, the first cell's to 4 digits, and `q`, the steps of
            // round(255 · m / s) down from 255: encode::quantise_top_cell_means), or as numbers (`m`) where
            // it does not apply; `r` (rank) only when the ranks are not 0, 1, 2, … in order.
            let mut tc_rows: Vec<usize> = rows_of(&top_cells, f).iter().map(|r| r.2).collect();
            if !tc_rows.is_empty() {
                tc_rows.sort_by_key(|&r| c.top_cells[r].rank);
                let t = |r: usize| &c.top_cells[r];
                let mut tc = serde_json::Map::new();
                tc.insert(
                    "c".into(),
                    json!(tc_rows.iter().map(|&r| ctx.cell_of[ci][r]).collect::<Vec<_>>()),
                );
                tc.insert(
                    "a".into(),
                    Value::Array(tc_rows.iter().map(|&r| num(t(r).n_active)).collect()),
                );
                let means: Vec<f64> = tc_rows.iter().map(|&r| t(r).mean_when_active).collect();
                match quantise_top_cell_means(&means) {
                    Some((s, q)) => {
                        tc.insert("s".into(), s);
                        tc.insert("q".into(), json!(q));
                    }
                    None => {
                        tc.insert("m".into(), nums(&means));
                    }
                }
                if !tc_rows.iter().enumerate().all(|(k, &r)| t(r).rank as usize == k) {
                    tc.insert(
                        "r".into(),
                        json!(tc_rows.iter().map(|&r| t(r).rank).collect::<Vec<_>>()),
                    );
                }
                rec.insert("tc".into(), Value::Object(tc));
            }
            // The histogram from its first non-empty bin: [first bin, counts … up to the last non-empty].
            if let Some(h) = hist.get(&f) {
                let lo = h.iter().position(|&x| x > 0).unwrap_or(0);
                let hi = h.iter().rposition(|&x| x > 0).map_or(lo, |i| i + 1);
                let mut v = vec![lo as u32];
                v.extend(&h[lo..hi]);
                rec.insert("h".into(), json!(v));
            }
        }
        let mut terms: Vec<(f64, Value)> = rows_of(&refs.terms, f)
            .iter()
            .map(|&(_, ai, r)| {
                let t = &ctx.annotations[ai].terms[r];
                let mut v = vec![json!(ctx.term_of[ai][r])];
                v.extend(t.values.iter().map(|&x| num(x)));
                // fold_enrichment = (overlap / query_size) / (term_size / background_size), as annotate
                // computes it: null where the page can derive it from the four counts.
                let w = &t.values;
                let fold = (w[0] / w[1]) / (w[2] / w[3]);
                if (fold - w[7]).abs() <= 1e-9 * w[7].abs() {
                    v[8] = Value::Null;
                }
                // p_value = P(X ≥ overlap), X ~ Hypergeom(background_size, term_size, query_size)
                // (annotate's test): null where the page can compute it to 1e-9 (as for cell types).
                if p_derivable(&[w[0], w[1], w[2], w[3], w[4], w[5]]) {
                    v[5] = Value::Null;
                }
                // Overlap genes as indices of the feature's top-gene rows when every one is among
                // them (they are the query genes), else as annotate wrote them (a comma list).
                let idx: Option<Vec<usize>> = t
                    .overlap_genes
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| row_of_gene.get(s).copied())
                    .collect();
                v.push(idx.map_or_else(|| json!(t.overlap_genes), |i| json!(i)));
                (t.values[4], Value::Array(v))
            })
            .collect();
        terms.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !terms.is_empty() {
            rec.insert("t".into(), Value::Array(terms.into_iter().map(|x| x.1).collect()));
        }
        let tests: Vec<Value> = rows_of(&refs.edge_tests, f)
            .iter()
            .map(|&(_, ai, r)| {
                let t = &ctx.annotations[ai].edge_tests[r];
                let mut v = vec![json!(ctx.network_of[ai][r])];
                v.extend(t.values.iter().map(|&x| num(x)));
                v.push(json!(t.edges));
                Value::Array(v)
            })
            .collect();
        if !tests.is_empty() {
            rec.insert("e".into(), Value::Array(tests));
        }
        if let Some(c) = cell_type_record(ctx, rows_of(&refs.cell_types, f), cells.as_ref()) {
            rec.insert("c".into(), c);
        }
        for (key, list, downstream) in [("dn", &refs.down, true), ("up", &refs.up, false)] {
            let mut es: Vec<(f64, Value)> = rows_of(list, f)
                .iter()
                .map(|&(_, ei, r)| {
                    let e = &ctx.edges[ei];
                    let (hook, other) = if downstream {
                        (e.target_hook[r], e.target[r])
                    } else {
                        (e.source_hook[r], e.source[r])
                    };
                    let other_layer = ctx.layer_of_hook.get(&e.hooks[hook as usize]);
                    let mut v = vec![json!(other_layer), json!(other)];
                    v.extend(e.values[r].iter().map(|&x| num(x)));
                    (-e.values[r][2].abs(), Value::Array(v))
                })
                .collect();
            es.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !es.is_empty() {
                rec.insert(key.into(), Value::Array(es.into_iter().map(|x| x.1).collect()));
            }
        }
        let fx: Vec<Value> = rows_of(&refs.effects, f)
            .iter()
            .map(|&(_, xi, r)| nums(&ctx.effects[xi].values[r]))
            .collect();
        if !fx.is_empty() {
            rec.insert("fx".into(), Value::Array(fx));
        }
        for (key, list, forward) in [("mf", &refs.match_fwd, true), ("mb", &refs.match_back, false)] {
            let ms: Vec<Value> = rows_of(list, f)
                .iter()
                .map(|&(_, si, r)| {
                    let m = &ctx.layer_sets[si].matches[r];
                    let (hook, other) = if forward { (&m.1, m.3) } else { (&m.0, m.2) };
                    json!([ctx.layer_of_hook.get(hook), other, num(m.4)])
                })
                .collect();
            if !ms.is_empty() {
                rec.insert(key.into(), Value::Array(ms));
            }
        }
        for (key, list, forward) in [("hf", &refs.highway_fwd, true), ("hb", &refs.highway_back, false)] {
            let hs: Vec<Value> = rows_of(list, f)
                .iter()
                .map(|&(_, si, r)| {
                    let h = &ctx.layer_sets[si].highways[r];
                    let (hook, other) = if forward { (&h.1, h.3) } else { (&h.0, h.2) };
                    let mut v = vec![json!(ctx.layer_of_hook.get(hook)), json!(other)];
                    v.extend(h.4.iter().map(|&x| num(x)));
                    Value::Array(v)
                })
                .collect();
            if !hs.is_empty() {
                rec.insert(key.into(), Value::Array(hs));
            }
        }
        if let Some(&ls) = refs.lifespan.get(&f) {
            rec.insert("ls".into(), num(ls));
        }
        let tl: Vec<usize> = refs.tools.iter().filter(|t| t.0 == f).map(|t| t.1).collect();
        if !tl.is_empty() {
            rec.insert("tl".into(), json!(tl));
        }
        if !rec.is_empty() {
            shards
                .entry(f as usize / ctx.shard)
                .or_default()
                .insert(f.to_string(), Value::Object(rec));
        }
    }
    let mut detail_bytes = 0;
    let detail_files = shards.len();
    for (k, features) in shards {
        let key = format!("L{l}/d{k}");
        detail_bytes += write_file(
            staging,
            &format!("data/L{l}/d{k}.js"),
            script(&key, &Value::Object(columnise(features))).as_bytes(),
        )?;
    }
    Ok(LayerOut {
        alive,
        annotated,
        modules,
        hist_range,
        table_bytes,
        detail_bytes,
        detail_files,
        cells,
    })
}

/// A feature's cell-type rows, by p, column-wise: `l` (label index), `k` (in_top), `t` (top_size: one number
/// when every row has the same, as rows of one annotation do), `q`; `lc` (label_cells) and `n` (n_cells)
/// only when some row's differ from the layer's (null where equal); `p` only when the page cannot derive
/// some row's (null where it can: see [`p_derivable`]).
fn cell_type_record(
    ctx: &Ctx,
    refs: &[(u32, usize, usize)],
    layer: Option<&(f64, BTreeMap<u32, f64>)>,
) -> Option<Value> {
    if refs.is_empty() {
        return None;
    }
    let mut rows: Vec<(&[f64; 6], u32)> = refs
        .iter()
        .map(|&(_, ai, r)| (&ctx.annotations[ai].cell_types[r].values, ctx.label_of[ai][r]))
        .collect();
    rows.sort_by(|a, b| a.0[4].total_cmp(&b.0[4]));
    let col = |j: usize| -> Vec<Value> { rows.iter().map(|(v, _)| num(v[j])).collect() };
    let mut c = serde_json::Map::new();
    c.insert("l".into(), json!(rows.iter().map(|r| r.1).collect::<Vec<_>>()));
    c.insert("k".into(), Value::Array(col(0)));
    let top = rows[0].0[1];
    if rows.iter().all(|(v, _)| v[1].to_bits() == top.to_bits()) {
        c.insert("t".into(), num(top));
    } else {
        c.insert("t".into(), Value::Array(col(1)));
    }
    c.insert("q".into(), Value::Array(col(5)));
    let (n_layer, per_label) = layer.map_or((None, None), |(n, m)| (Some(*n), Some(m)));
    let same = |x: f64, y: Option<f64>| y.is_some_and(|y| y.to_bits() == x.to_bits());
    let lc: Vec<Value> = rows
        .iter()
        .map(|(v, l)| {
            let own = per_label.and_then(|m| m.get(l).copied());
            if same(v[2], own) {
                Value::Null
            } else {
                num(v[2])
            }
        })
        .collect();
    if lc.iter().any(|x| !x.is_null()) {
        c.insert("lc".into(), Value::Array(lc));
    }
    let n: Vec<Value> = rows
        .iter()
        .map(|(v, _)| {
            if same(v[3], n_layer) {
                Value::Null
            } else {
                num(v[3])
            }
        })
        .collect();
    if n.iter().any(|x| !x.is_null()) {
        c.insert("n".into(), Value::Array(n));
    }
    let p: Vec<Value> = rows
        .iter()
        .map(|(v, _)| if p_derivable(v) { Value::Null } else { num(v[4]) })
        .collect();
    if p.iter().any(|x| !x.is_null()) {
        c.insert("p".into(), Value::Array(p));
    }
    Some(Value::Object(c))
}

/// Whether the page may derive a cell-type row's p (values: in_top, top_size, label_cells, n_cells, p, q;
/// a term row's overlap, query_size, term_size, background_size, p_value, q are the same test) as annotate
/// defines it, P(X ≥ in_top) for X ~ Hypergeom(n_cells, label_cells, top_size): the counts are
/// integers, in_top lies above the mode (the page sums the tail upwards from in_top, which is stable only
/// there), the tail is well inside f64's range, and it equals the stored p to 1e-9.
fn p_derivable(v: &[f64; 6]) -> bool {
    if !v[..4]
        .iter()
        .all(|x| x.fract() == 0.0 && (0.0..9.0e15).contains(x))
    {
        return false;
    }
    let (a, draws, successes, population) = (v[0] as u64, v[1] as u64, v[2] as u64, v[3] as u64);
    let mode = (u128::from(draws) + 1) * (u128::from(successes) + 1) / (u128::from(population) + 2);
    if u128::from(a) <= mode {
        return false;
    }
    let p = hypergeom_upper_tail(a, population, successes, draws);
    p >= 1e-300 && (p - v[4]).abs() <= 1e-9 * v[4]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_reads_the_format_version_written() {
        let page = ASSETS.iter().find(|a| a.0 == "assets/atlas.js").unwrap().1;
        assert!(
            page.contains(&format!("const FORMAT_VERSION = {FORMAT_VERSION};")),
            "export/atlas/atlas.js and build.rs name different format versions"
        );
    }

    #[test]
    fn cell_p_left_to_the_page_only_where_it_can_derive_it() {
        // 14 of 38 top cells carry a label that 36 of 2,000 cells have (a row of the benchmark's annotation).
        let p = hypergeom_upper_tail(14, 2000, 36, 38);
        assert!((p - 1.591e-16).abs() < 1e-19, "{p}");
        assert!(p_derivable(&[14.0, 38.0, 36.0, 2000.0, p, 2.574e-14]));
        // A p that is not this tail (another rule, or rounded) is stored.
        assert!(!p_derivable(&[14.0, 38.0, 36.0, 2000.0, p * 1.001, 2.574e-14]));
        // At or below the mode (38 draws of a label with 200 cells: mode 3) the page's upward sum is not
        // used; above it, it is.
        let at = hypergeom_upper_tail(3, 2000, 200, 38);
        assert!(!p_derivable(&[3.0, 38.0, 200.0, 2000.0, at, 1.0]));
        let above = hypergeom_upper_tail(4, 2000, 200, 38);
        assert!(p_derivable(&[4.0, 38.0, 200.0, 2000.0, above, 1.0]));
        // Non-integer counts, and tails that underflow.
        assert!(!p_derivable(&[14.5, 38.0, 36.0, 2000.0, p, 1.0]));
        let tiny = hypergeom_upper_tail(200, 100_000, 200, 200);
        assert!(!p_derivable(&[200.0, 200.0, 200.0, 100_000.0, tiny, 0.0]));
    }
}
