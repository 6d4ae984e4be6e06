//! The feature catalogue: per-feature statistics streamed over every row of an activation store.
//!
//! Rows arrive in cell order, in chunks of whole cells, with their SAE codes. A latent is active on a
//! row iff its value is > 0 (methods.md A6). Everything kept is a count, a sum or a histogram, so the
//! store can be any size; memory is `d_sae × n_genes × 12` bytes for the per-(feature, gene) sums.

use crate::sae::SparseCodes;

/// What the catalogue keeps per feature.
#[derive(Clone, Debug)]
pub struct CatalogSettings {
    /// Genes listed per feature and ranking.
    pub top_genes: usize,
    /// Positions on which a feature must fire on a gene before the gene can rank by conditional mean
    /// (methods.md A7: a gene seen once would otherwise rank as high as one seen 10,000 times).
    pub min_support: u64,
    /// Cells listed per feature.
    pub top_cells: usize,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        CatalogSettings {
            top_genes: 20,
            min_support: 5,
            top_cells: 10,
        }
    }
}

/// Log-spaced histogram of active values: 64 bins per decade over [1e-4, 1e4) plus an under- and an
/// overflow bin, so quantiles are exact to a factor 10^(1/64) (3.7 %).
const HIST_LOG10_MIN: f64 = -4.0;
const HIST_BINS_PER_DECADE: f64 = 64.0;
const HIST_INNER_BINS: usize = 8 * 64;
const HIST_BINS: usize = HIST_INNER_BINS + 2;

fn hist_bin(v: f32) -> usize {
    let pos = ((v as f64).log10() - HIST_LOG10_MIN) * HIST_BINS_PER_DECADE;
    if pos < 0.0 {
        0
    } else {
        (pos as usize + 1).min(HIST_BINS - 1)
    }
}

/// The geometric centre of a histogram bin.
fn hist_value(bin: usize) -> f64 {
    let centre = (bin as f64 - 0.5) / HIST_BINS_PER_DECADE + HIST_LOG10_MIN;
    10f64.powf(centre)
}

/// One feature's row of `features.parquet`.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    pub feature: u32,
    pub fire_count: u64,
    /// fire_count / rows.
    pub fire_freq: f64,
    pub cells_fired: u64,
    /// Mean over all rows, zeros included.
    pub mean_activation: f64,
    pub mean_when_active: f64,
    /// Quantiles of the active values (histogram-based, see [`HIST_BINS_PER_DECADE`]).
    pub q50_when_active: f64,
    pub q90_when_active: f64,
    pub q99_when_active: f64,
    pub max_activation: f64,
    pub decoder_norm: f64,
}

impl FeatureStats {
    pub fn alive(&self) -> bool {
        self.fire_count > 0
    }
}

/// A gene observed at the store's positions: the annotation background.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneStats {
    pub token: u32,
    pub n_positions: u64,
    pub n_cells: u64,
}

/// How a feature's genes are ranked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneRanking {
    /// Mean activation over the positions of the gene where the feature fired (with min support).
    ConditionalMean,
    /// Total activation on the gene (mean × fires: frequency-weighted).
    Mass,
}

impl GeneRanking {
    pub fn name(self) -> &'static str {
        match self {
            GeneRanking::ConditionalMean => "conditional_mean",
            GeneRanking::Mass => "mass",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopGene {
    pub feature: u32,
    pub ranking: GeneRanking,
    pub rank: u32,
    pub token: u32,
    /// Positions of this gene on which the feature fired.
    pub n_fired: u64,
    /// Positions of this gene in the store.
    pub n_positions: u64,
    pub mean_when_fired: f64,
    pub mass: f64,
    /// n_fired / n_positions.
    pub fire_rate: f64,
}

/// A feature's activity in one cell (only cells where it fired).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeatureCell {
    pub feature: u32,
    pub cell: u32,
    pub n_active: u32,
    pub mean_when_active: f32,
}

/// The finished catalogue.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub n_rows: u64,
    pub n_cells: u64,
    pub features: Vec<FeatureStats>,
    pub genes: Vec<GeneStats>,
    pub top_genes: Vec<TopGene>,
    /// Sorted by feature, then by mean_when_active descending.
    pub feature_cells: Vec<FeatureCell>,
}

impl Catalog {
    /// The `top_cells` entries of each feature (highest mean activation when active first).
    pub fn top_cells(&self, per_feature: usize) -> Vec<(u32, FeatureCell)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.feature_cells.len() {
            let f = self.feature_cells[i].feature;
            let mut rank = 0;
            while i < self.feature_cells.len() && self.feature_cells[i].feature == f {
                if rank < per_feature {
                    out.push((rank as u32, self.feature_cells[i]));
                }
                rank += 1;
                i += 1;
            }
        }
        out
    }
}

const NO_GENE: u32 = u32::MAX;

/// Accumulates the catalogue chunk by chunk.
pub struct CatalogBuilder {
    settings: CatalogSettings,
    d_sae: usize,
    gene_of_token: Vec<u32>,
    gene_tokens: Vec<u32>,
    fire_count: Vec<u64>,
    act_sum: Vec<f64>,
    act_max: Vec<f32>,
    hist: Vec<u32>,
    /// `[d_sae, n_genes]`: activation sums and fire counts per (feature, gene).
    gene_act_sum: Vec<f64>,
    gene_fired: Vec<u32>,
    gene_positions: Vec<u64>,
    gene_cells: Vec<u64>,
    gene_last_cell: Vec<u32>,
    cells_fired: Vec<u64>,
    feature_cells: Vec<FeatureCell>,
    rows: u64,
    cells: u64,
    /// Per-cell scratch: active positions and activation sum per feature, and which features were touched.
    cell_count: Vec<u32>,
    cell_sum: Vec<f64>,
    cell_touched: Vec<u32>,
}

impl CatalogBuilder {
    /// `gene_tokens`: every token that occurs at the store's rows (sorted, distinct).
    pub fn new(d_sae: usize, gene_tokens: Vec<u32>, settings: CatalogSettings) -> Self {
        let max_token = gene_tokens.iter().copied().max().map_or(0, |t| t as usize + 1);
        let mut gene_of_token = vec![NO_GENE; max_token];
        for (g, &t) in gene_tokens.iter().enumerate() {
            gene_of_token[t as usize] = g as u32;
        }
        let n_genes = gene_tokens.len();
        CatalogBuilder {
            settings,
            d_sae,
            gene_of_token,
            gene_tokens,
            fire_count: vec![0; d_sae],
            act_sum: vec![0.0; d_sae],
            act_max: vec![0.0; d_sae],
            hist: vec![0; d_sae * HIST_BINS],
            gene_act_sum: vec![0.0; d_sae * n_genes],
            gene_fired: vec![0; d_sae * n_genes],
            gene_positions: vec![0; n_genes],
            gene_cells: vec![0; n_genes],
            gene_last_cell: vec![u32::MAX; n_genes],
            cells_fired: vec![0; d_sae],
            feature_cells: Vec::new(),
            rows: 0,
            cells: 0,
            cell_count: vec![0; d_sae],
            cell_sum: vec![0.0; d_sae],
            cell_touched: Vec::new(),
        }
    }

    /// The distinct tokens of `rows` (cell, position, token), sorted.
    pub fn observed_tokens(rows: &[[i32; 3]]) -> Vec<u32> {
        let mut seen = Vec::<bool>::new();
        for r in rows {
            let t = r[2] as usize;
            if t >= seen.len() {
                seen.resize(t + 1, false);
            }
            seen[t] = true;
        }
        (0..seen.len() as u32).filter(|&t| seen[t as usize]).collect()
    }

    /// Adds a chunk of whole cells: `rows[i]` = (cell, position, token) of code row i.
    pub fn push(&mut self, rows: &[[i32; 3]], codes: &SparseCodes) {
        assert_eq!(rows.len(), codes.n_rows(), "one code row per store row");
        let n_genes = self.gene_tokens.len();
        let mut r = 0;
        while r < rows.len() {
            let cell = rows[r][0] as u32;
            let start = r;
            while r < rows.len() && rows[r][0] as u32 == cell {
                r += 1;
            }
            for (row, meta) in rows.iter().enumerate().take(r).skip(start) {
                let gene = self.gene_of_token[meta[2] as usize] as usize;
                self.gene_positions[gene] += 1;
                if self.gene_last_cell[gene] != cell {
                    self.gene_last_cell[gene] = cell;
                    self.gene_cells[gene] += 1;
                }
                let (idx, val) = codes.row(row);
                for (&f, &v) in idx.iter().zip(val) {
                    if v <= 0.0 {
                        continue;
                    }
                    let f = f as usize;
                    self.fire_count[f] += 1;
                    self.act_sum[f] += v as f64;
                    self.act_max[f] = self.act_max[f].max(v);
                    self.hist[f * HIST_BINS + hist_bin(v)] += 1;
                    self.gene_act_sum[f * n_genes + gene] += v as f64;
                    self.gene_fired[f * n_genes + gene] += 1;
                    if self.cell_count[f] == 0 {
                        self.cell_touched.push(f as u32);
                    }
                    self.cell_count[f] += 1;
                    self.cell_sum[f] += v as f64;
                }
            }
            self.finish_cell(cell);
        }
        self.rows += rows.len() as u64;
    }

    fn finish_cell(&mut self, cell: u32) {
        for &f in &self.cell_touched {
            let f = f as usize;
            self.cells_fired[f] += 1;
            self.feature_cells.push(FeatureCell {
                feature: f as u32,
                cell,
                n_active: self.cell_count[f],
                mean_when_active: (self.cell_sum[f] / self.cell_count[f] as f64) as f32,
            });
            self.cell_count[f] = 0;
            self.cell_sum[f] = 0.0;
        }
        self.cell_touched.clear();
        self.cells += 1;
    }

    /// Finishes the statistics; `decoder_norms[f]` is ‖W_dec[f]‖.
    pub fn finish(mut self, decoder_norms: &[f32]) -> Catalog {
        let n_genes = self.gene_tokens.len();
        let rows = self.rows.max(1) as f64;
        let features = (0..self.d_sae)
            .map(|f| {
                let n = self.fire_count[f];
                let hist = &self.hist[f * HIST_BINS..(f + 1) * HIST_BINS];
                let quantile = |q: f64| -> f64 {
                    if n == 0 {
                        return 0.0;
                    }
                    let target = (q * n as f64).ceil().max(1.0) as u64;
                    let mut seen = 0u64;
                    for (bin, &c) in hist.iter().enumerate() {
                        seen += c as u64;
                        if seen >= target {
                            return hist_value(bin).min(self.act_max[f] as f64);
                        }
                    }
                    self.act_max[f] as f64
                };
                FeatureStats {
                    feature: f as u32,
                    fire_count: n,
                    fire_freq: n as f64 / rows,
                    cells_fired: self.cells_fired[f],
                    mean_activation: self.act_sum[f] / rows,
                    mean_when_active: if n > 0 { self.act_sum[f] / n as f64 } else { 0.0 },
                    q50_when_active: quantile(0.5),
                    q90_when_active: quantile(0.9),
                    q99_when_active: quantile(0.99),
                    max_activation: self.act_max[f] as f64,
                    decoder_norm: decoder_norms[f] as f64,
                }
            })
            .collect();
        let mut top_genes = Vec::new();
        for f in 0..self.d_sae {
            let sums = &self.gene_act_sum[f * n_genes..(f + 1) * n_genes];
            let fired = &self.gene_fired[f * n_genes..(f + 1) * n_genes];
            let make = |g: usize, ranking: GeneRanking, rank: usize| TopGene {
                feature: f as u32,
                ranking,
                rank: rank as u32,
                token: self.gene_tokens[g],
                n_fired: fired[g] as u64,
                n_positions: self.gene_positions[g],
                mean_when_fired: sums[g] / fired[g] as f64,
                mass: sums[g],
                fire_rate: fired[g] as f64 / self.gene_positions[g] as f64,
            };
            let candidates: Vec<usize> = (0..n_genes).filter(|&g| fired[g] > 0).collect();
            // Ties are broken by token id so that the lists do not depend on anything else.
            let mut by_mean: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&g| fired[g] as u64 >= self.settings.min_support)
                .collect();
            by_mean.sort_by(|&a, &b| {
                let (ma, mb) = (sums[a] / fired[a] as f64, sums[b] / fired[b] as f64);
                mb.total_cmp(&ma).then(a.cmp(&b))
            });
            for (rank, &g) in by_mean.iter().take(self.settings.top_genes).enumerate() {
                top_genes.push(make(g, GeneRanking::ConditionalMean, rank));
            }
            let mut by_mass = candidates;
            by_mass.sort_by(|&a, &b| sums[b].total_cmp(&sums[a]).then(a.cmp(&b)));
            for (rank, &g) in by_mass.iter().take(self.settings.top_genes).enumerate() {
                top_genes.push(make(g, GeneRanking::Mass, rank));
            }
        }
        let genes = self
            .gene_tokens
            .iter()
            .enumerate()
            .map(|(g, &token)| GeneStats {
                token,
                n_positions: self.gene_positions[g],
                n_cells: self.gene_cells[g],
            })
            .collect();
        self.feature_cells.sort_by(|a, b| {
            a.feature
                .cmp(&b.feature)
                .then(b.mean_when_active.total_cmp(&a.mean_when_active))
                .then(a.cell.cmp(&b.cell))
        });
        Catalog {
            n_rows: self.rows,
            n_cells: self.cells,
            features,
            genes,
            top_genes,
            feature_cells: self.feature_cells,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Codes with k = 2 built from (index, value) pairs per row.
    fn codes(rows: &[[(u32, f32); 2]]) -> SparseCodes {
        SparseCodes {
            k: 2,
            indices: rows.iter().flat_map(|r| r.iter().map(|p| p.0)).collect(),
            values: rows.iter().flat_map(|r| r.iter().map(|p| p.1)).collect(),
        }
    }

    #[test]
    fn counts_means_and_rankings_by_hand() {
        // Two cells; genes (tokens) 10, 11, 12. Feature 0 fires on gene 10 twice (1.0, 3.0) and on 11
        // once (5.0); feature 1 fires once on 12 (0.5); feature 2 has value 0 (not active) somewhere.
        let rows = [[0, 1, 10], [0, 2, 11], [1, 1, 10], [1, 2, 12]];
        let c = codes(&[
            [(0, 1.0), (2, 0.0)],
            [(0, 5.0), (1, 0.0)],
            [(0, 3.0), (2, 0.0)],
            [(1, 0.5), (0, 0.0)],
        ]);
        let settings = CatalogSettings {
            top_genes: 5,
            min_support: 2,
            top_cells: 5,
        };
        let tokens = CatalogBuilder::observed_tokens(&rows);
        assert_eq!(tokens, vec![10, 11, 12]);
        let mut b = CatalogBuilder::new(3, tokens, settings);
        b.push(
            &rows[..2],
            &SparseCodes {
                k: 2,
                indices: c.indices[..4].to_vec(),
                values: c.values[..4].to_vec(),
            },
        );
        b.push(
            &rows[2..],
            &SparseCodes {
                k: 2,
                indices: c.indices[4..].to_vec(),
                values: c.values[4..].to_vec(),
            },
        );
        let cat = b.finish(&[1.0, 1.0, 1.0]);
        assert_eq!((cat.n_rows, cat.n_cells), (4, 2));
        let f0 = &cat.features[0];
        assert_eq!((f0.fire_count, f0.cells_fired), (3, 2));
        assert!((f0.mean_activation - 9.0 / 4.0).abs() < 1e-12);
        assert!((f0.mean_when_active - 3.0).abs() < 1e-12);
        assert_eq!(f0.max_activation, 5.0);
        // The median of {1, 3, 5} is 3, to the histogram's resolution.
        assert!(
            (f0.q50_when_active / 3.0 - 1.0).abs() < 0.04,
            "{}",
            f0.q50_when_active
        );
        assert!(!cat.features[2].alive());
        // Conditional mean with support ≥ 2: only gene 10 (mean 2.0) qualifies, not gene 11 (5.0, once).
        let by_mean: Vec<_> = cat
            .top_genes
            .iter()
            .filter(|t| t.feature == 0 && t.ranking == GeneRanking::ConditionalMean)
            .collect();
        assert_eq!(by_mean.len(), 1);
        assert_eq!(
            (by_mean[0].token, by_mean[0].n_fired, by_mean[0].mean_when_fired),
            (10, 2, 2.0)
        );
        // By mass: gene 11 (5.0) before gene 10 (4.0).
        let by_mass: Vec<u32> = cat
            .top_genes
            .iter()
            .filter(|t| t.feature == 0 && t.ranking == GeneRanking::Mass)
            .map(|t| t.token)
            .collect();
        assert_eq!(by_mass, vec![11, 10]);
        assert_eq!(
            cat.genes[0],
            GeneStats {
                token: 10,
                n_positions: 2,
                n_cells: 2
            }
        );
        // Feature 0: cell 0 mean 3.0 (1, 5), cell 1 mean 3.0 (3): ties by cell id.
        let cells: Vec<(u32, u32)> = cat
            .top_cells(5)
            .iter()
            .map(|(_, c)| (c.feature, c.cell))
            .collect();
        assert_eq!(cells, vec![(0, 0), (0, 1), (1, 1)]);
    }

    #[test]
    fn histogram_bins_are_monotone_and_centred() {
        let mut last = 0;
        for i in 0..2000 {
            let v = 1e-5f32 * 1.02f32.powi(i);
            let b = hist_bin(v);
            assert!(b >= last);
            last = b;
            if (1e-4..1e4).contains(&v) {
                let centre = hist_value(b);
                assert!((centre / v as f64).log10().abs() <= 0.5 / 64.0 + 1e-9);
            }
        }
    }
}
