//! Features across layers (methods.md §4.4, §6 and A15).
//!
//! - Decoder matching: for each alive feature of one SAE, the best |cos| of its unit decoder direction
//!   against the alive features of another (a match at ≥ 0.7, a strong match at ≥ 0.9), and the
//!   lifespan of a feature: how many consecutive layers a chain of matches ≥ 0.7 carries it.
//! - Highways: co-activation of a source feature (layer A) and a target feature (layer B) at the same
//!   rows. Rare features make PMI large by chance, so targets need a minimum co-count, NPMI is reported
//!   beside PMI, and every statistic is also computed on a permuted pairing of the rows to show how many
//!   "highways" chance alone makes. The pairing permutes **within token**: each row's target codes come
//!   from a row of the same gene token in another cell. Features at two layers that both respond to the
//!   gene token co-fire under that null too, so a highway must beat the shared-token effect (a pairing
//!   across tokens would remove it and make almost every pair look like a highway).

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::sae::TopKSae;

/// Decoder rows scaled to unit norm (`[d_sae, d_in]`).
pub fn unit_decoder(sae: &TopKSae) -> Vec<f32> {
    let mut w = sae.w_dec.clone();
    w.par_chunks_mut(sae.d_in).for_each(|row| {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    });
    w
}

/// A feature's best match in another SAE.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecoderMatch {
    pub feature: u32,
    pub best: u32,
    /// |cos| of the two unit decoder directions.
    pub abs_cos: f32,
}

/// For each alive feature of `a`, the alive feature of `b` with the largest |cos|.
pub fn best_matches(a: &TopKSae, alive_a: &[bool], b: &TopKSae, alive_b: &[bool]) -> Vec<DecoderMatch> {
    assert_eq!(a.d_in, b.d_in, "decoders of the same width");
    let (ua, ub) = (unit_decoder(a), unit_decoder(b));
    let d = a.d_in;
    let feats_a: Vec<usize> = (0..a.d_sae).filter(|&f| alive_a[f]).collect();
    let feats_b: Vec<usize> = (0..b.d_sae).filter(|&f| alive_b[f]).collect();
    if feats_b.is_empty() {
        return Vec::new();
    }
    let gather = |u: &[f32], feats: &[usize]| -> Vec<f32> {
        feats
            .iter()
            .flat_map(|&f| u[f * d..(f + 1) * d].iter().copied())
            .collect()
    };
    let mb = gather(&ub, &feats_b);
    let mut out = Vec::with_capacity(feats_a.len());
    const BLOCK: usize = 1024;
    let mut cos = vec![0.0f32; BLOCK * feats_b.len()];
    for block in feats_a.chunks(BLOCK) {
        let ma = gather(&ua, block);
        let rows = block.len();
        let c = &mut cos[..rows * feats_b.len()];
        matmul(
            MatMut::from_row_major_slice_mut(c, rows, feats_b.len()),
            Accum::Replace,
            MatRef::from_row_major_slice(&ma, rows, d),
            MatRef::from_row_major_slice(&mb, feats_b.len(), d).transpose(),
            1.0f32,
            Par::rayon(0),
        );
        for (r, &f) in block.iter().enumerate() {
            let row = &c[r * feats_b.len()..(r + 1) * feats_b.len()];
            let (best, abs_cos) =
                row.iter().enumerate().fold(
                    (0, -1.0f32),
                    |acc, (j, &x)| if x.abs() > acc.1 { (j, x.abs()) } else { acc },
                );
            out.push(DecoderMatch {
                feature: f as u32,
                best: feats_b[best] as u32,
                abs_cos,
            });
        }
    }
    out
}

/// Lifespans along an ordered list of layers: `adjacent[l]` are the matches of layer l into layer l+1.
/// Returns, per layer, (feature, lifespan in layers) for that layer's alive features: 1 + the length
/// of the forward chain of matches with |cos| ≥ `threshold`.
pub fn lifespans(
    adjacent: &[Vec<DecoderMatch>],
    alive: &[Vec<bool>],
    threshold: f32,
) -> Vec<Vec<(u32, u32)>> {
    let layers = alive.len();
    // forward[l][f] = best match into l+1 when it passes the threshold.
    let forward: Vec<Vec<Option<u32>>> = (0..layers.saturating_sub(1))
        .map(|l| {
            let mut next = vec![None; alive[l].len()];
            for m in &adjacent[l] {
                if m.abs_cos >= threshold {
                    next[m.feature as usize] = Some(m.best);
                }
            }
            next
        })
        .collect();
    // Computed from the last layer backwards: span[l][f] = 1 + span[l+1][next].
    let mut spans: Vec<Vec<u32>> = alive.iter().map(|a| vec![1; a.len()]).collect();
    for l in (0..layers.saturating_sub(1)).rev() {
        for f in 0..alive[l].len() {
            if let Some(n) = forward[l][f] {
                spans[l][f] = 1 + spans[l + 1][n as usize];
            }
        }
    }
    (0..layers)
        .map(|l| {
            (0..alive[l].len())
                .filter(|&f| alive[l][f])
                .map(|f| (f as u32, spans[l][f]))
                .collect()
        })
        .collect()
}

/// The within-token null pairing of a block of rows (`cells[r]`, `tokens[r]`): the rows of each token,
/// in order, are rotated by half their count, so each row is paired with a row of the same token in
/// another cell. A row whose only same-token rows are in its own cell (or that has none) gets `None`:
/// it has no partner and stays out of the null counts.
pub fn within_token_pairing(cells: &[i32], tokens: &[i32]) -> Vec<Option<usize>> {
    assert_eq!(cells.len(), tokens.len());
    let mut by_token: std::collections::BTreeMap<i32, Vec<usize>> = std::collections::BTreeMap::new();
    for (r, &t) in tokens.iter().enumerate() {
        by_token.entry(t).or_default().push(r);
    }
    let mut out = vec![None; tokens.len()];
    for rows in by_token.values() {
        let k = rows.len();
        for (i, &r) in rows.iter().enumerate() {
            let j = rows[(i + k.div_ceil(2)) % k];
            if cells[j] != cells[r] {
                out[r] = Some(j);
            }
        }
    }
    out
}

/// Co-activation counts of source (layer A) × target (layer B) features at the same rows.
pub struct HighwayCounts {
    pub d_a: usize,
    pub d_b: usize,
    /// `[d_a, d_b]`.
    pub counts: Vec<u32>,
    pub fire_a: Vec<u64>,
    pub fire_b: Vec<u64>,
    pub rows: u64,
}

/// The best target of one source feature.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Highway {
    pub source: u32,
    pub fires: u64,
    pub target: u32,
    pub cocount: u64,
    pub pmi: f64,
    pub npmi: f64,
}

impl HighwayCounts {
    pub fn new(d_a: usize, d_b: usize) -> Self {
        HighwayCounts {
            d_a,
            d_b,
            counts: vec![0; d_a * d_b],
            fire_a: vec![0; d_a],
            fire_b: vec![0; d_b],
            rows: 0,
        }
    }

    /// One row: the active (value > 0) features of A and of B there.
    pub fn push(&mut self, active_a: &[u32], active_b: &[u32]) {
        for &i in active_a {
            self.fire_a[i as usize] += 1;
            let row = &mut self.counts[i as usize * self.d_b..(i as usize + 1) * self.d_b];
            for &j in active_b {
                row[j as usize] += 1;
            }
        }
        for &j in active_b {
            self.fire_b[j as usize] += 1;
        }
        self.rows += 1;
    }

    /// For each source with ≥ `min_fires` fires, the target with the largest PMI among targets with
    /// ≥ `min_fires` fires and a co-count ≥ `min_cocount` (sources with no such target are left out).
    pub fn best_targets(&self, min_fires: u64, min_cocount: u64) -> Vec<Highway> {
        let n = self.rows as f64;
        (0..self.d_a)
            .filter(|&i| self.fire_a[i] >= min_fires.max(1))
            .filter_map(|i| {
                let row = &self.counts[i * self.d_b..(i + 1) * self.d_b];
                let mut best: Option<Highway> = None;
                for (j, &c) in row.iter().enumerate() {
                    let c = c as u64;
                    if c < min_cocount.max(1) || self.fire_b[j] < min_fires.max(1) {
                        continue;
                    }
                    let pmi = (c as f64 * n / (self.fire_a[i] as f64 * self.fire_b[j] as f64)).log2();
                    if best.is_none_or(|b| pmi > b.pmi) {
                        let joint = c as f64 / n;
                        best = Some(Highway {
                            source: i as u32,
                            fires: self.fire_a[i],
                            target: j as u32,
                            cocount: c,
                            pmi,
                            npmi: if joint < 1.0 { pmi / -joint.log2() } else { 1.0 },
                        });
                    }
                }
                best
            })
            .collect()
    }

    /// Sources with ≥ `min_fires` fires (the denominator of the highway fraction).
    pub fn eligible_sources(&self, min_fires: u64) -> usize {
        self.fire_a.iter().filter(|&&f| f >= min_fires.max(1)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sae_with_decoder(w_dec: Vec<f32>, d_in: usize) -> TopKSae {
        let d_sae = w_dec.len() / d_in;
        TopKSae {
            d_in,
            d_sae,
            k: 1,
            w_enc: vec![0.0; d_sae * d_in],
            b_enc: vec![0.0; d_sae],
            w_dec,
            b_dec: vec![0.0; d_in],
        }
    }

    #[test]
    fn matches_and_lifespans() {
        // Layer 0: e0, e1; layer 1: -2·e0 (same direction, other sign and norm), (e1+e2)/√2;
        // layer 2: e0.
        let s0 = sae_with_decoder(vec![1., 0., 0., 0., 1., 0.], 3);
        let s1 = sae_with_decoder(vec![-2., 0., 0., 0., 1., 1.], 3);
        let s2 = sae_with_decoder(vec![1., 0., 0.], 3);
        let alive = vec![vec![true, true], vec![true, true], vec![true]];
        let m01 = best_matches(&s0, &alive[0], &s1, &alive[1]);
        assert_eq!((m01[0].best, m01[0].abs_cos), (0, 1.0));
        assert_eq!(m01[1].best, 1);
        assert!((m01[1].abs_cos - 0.5f32.sqrt()).abs() < 1e-6);
        let m12 = best_matches(&s1, &alive[1], &s2, &alive[2]);
        let spans = lifespans(&[m01, m12], &alive, 0.7);
        assert_eq!(spans[0], vec![(0, 3), (1, 2)]);
        assert_eq!(spans[1], vec![(0, 2), (1, 1)]);
        // A dead feature of B is never a match.
        let m = best_matches(&s0, &alive[0], &s1, &[false, true]);
        assert_eq!(m[0].best, 1);
    }

    /// Features that respond to the gene token at both layers: the observed pairing makes every source a
    /// highway; the within-token null keeps the shared-token co-firing (each row paired with the same gene
    /// in another cell), so the null makes them highways too (nothing beyond the token), while a pairing
    /// across tokens (like the old null, rows half a chunk away) shows none.
    #[test]
    fn the_within_token_null_keeps_the_shared_token_effect() {
        let (cells, genes) = (40usize, 8usize);
        let (mut cell, mut token) = (Vec::new(), Vec::new());
        for c in 0..cells {
            for g in 0..genes {
                cell.push(c as i32);
                token.push(g as i32);
            }
        }
        let pairing = within_token_pairing(&cell, &token);
        assert!(pairing
            .iter()
            .enumerate()
            .all(|(r, p)| p.is_some_and(|j| token[j] == token[r] && cell[j] != cell[r])));
        // Feature g fires on gene g, at both layers: the whole association is the shared token.
        let active = |r: usize| [token[r] as u32];
        let n = cell.len();
        let mut shuffled: Vec<usize> = (0..n).collect();
        crate::rng::Rng::new(3, 4).shuffle(&mut shuffled);
        let (mut observed, mut within, mut across) = (
            HighwayCounts::new(genes, genes),
            HighwayCounts::new(genes, genes),
            HighwayCounts::new(genes, genes),
        );
        for r in 0..n {
            observed.push(&active(r), &active(r));
            if let Some(j) = pairing[r] {
                within.push(&active(r), &active(j));
            }
            // A pairing across tokens (rows of other cells and other genes).
            across.push(&active(r), &active(shuffled[r]));
        }
        let highways = |h: &HighwayCounts| h.best_targets(1, 1).iter().filter(|x| x.pmi > 2.0).count();
        assert_eq!(highways(&observed), genes);
        assert_eq!(highways(&within), genes);
        assert_eq!(highways(&across), 0);
        // A token seen in one cell only has no partner.
        assert_eq!(
            within_token_pairing(&[0, 0, 1], &[5, 6, 5]),
            vec![Some(2), None, Some(0)]
        );
    }

    #[test]
    fn highway_pmi_by_hand() {
        // 4 rows: source 0 fires at rows 0, 1 with target 1; target 0 fires at every row.
        let mut h = HighwayCounts::new(2, 2);
        h.push(&[0], &[0, 1]);
        h.push(&[0], &[0, 1]);
        h.push(&[1], &[0]);
        h.push(&[], &[0]);
        let best = h.best_targets(1, 1);
        assert_eq!(best.len(), 2);
        assert_eq!((best[0].source, best[0].target, best[0].cocount), (0, 1, 2));
        assert!((best[0].pmi - (2.0f64 * 4.0 / (2.0 * 2.0)).log2()).abs() < 1e-12);
        assert!((best[0].npmi - 1.0 / 1.0).abs() < 1e-12);
        assert!(h.best_targets(1, 3).is_empty());
        assert_eq!(h.eligible_sources(2), 1);
    }
}
