//! Co-activation of features within a layer, tested for significance (methods.md §6 and A14).
//!
//! Positions of one cell are not independent, and two features that both prefer the same cells
//! co-occur at positions for that reason alone. So the test conditions on the cell: under the null,
//! within each cell c (n_c positions, feature i active at a_ic of them, j at a_jc) the co-occurrences
//! are hypergeometric, and their sum over cells is compared with its null mean and variance,
//!
//! ```text
//! E_ij = Σ_c a_ic·a_jc / n_c        V_ij = Σ_c a_ic(n_c − a_ic)·a_jc(n_c − a_jc) / (n_c²(n_c − 1))
//! z    = (O_ij − E_ij − ½) / √V_ij  (one-sided: more co-activation than the cells explain)
//! ```
//!
//! which is the Cochran–Mantel–Haenszel test with cells as strata (`statsmodels`' `StratifiedTable`
//! gives the same statistic; its two-sided p is twice ours when O > E). E and V are two GEMMs over
//! blocks of cells, so all d² pairs cost `2·d²·n_cells` flops each. BH runs over every pair of alive
//! features. PMI (log₂ O·N / (f_i·f_j)) over positions is reported beside the test, as published.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use crate::sae::SparseCodes;
use crate::stats::{bh_qvalues, normal_sf};

/// Cells per GEMM block.
const BLOCK_CELLS: usize = 256;

/// Co-activation counts and the cell-conditional null, accumulated chunk by chunk.
pub struct CoactBuilder {
    d: usize,
    /// `[d, d]`, entry (i, j) for i < j: positions where both are active.
    pair_counts: Vec<u32>,
    fire: Vec<u64>,
    rows: u64,
    /// `[BLOCK_CELLS, d]`: a_ic/√n_c and a_ic(n_c − a_ic)/(n_c·√(n_c − 1)) for the current block.
    block_mean: Vec<f64>,
    block_var: Vec<f64>,
    block_cells: usize,
    expected: Vec<f64>,
    variance: Vec<f64>,
    cell_count: Vec<u32>,
    cell_touched: Vec<u32>,
    active: Vec<u32>,
}

/// A significant co-activation edge.
#[derive(Clone, Debug, PartialEq)]
pub struct CoactEdge {
    pub a: u32,
    pub b: u32,
    pub cocount: u64,
    pub expected: f64,
    /// The null variance V; z = (cocount − expected − ½)/√V and p = P[Z > z] (scipy: `norm.sf(z)`).
    pub variance: f64,
    pub z: f64,
    pub p_value: f64,
    pub q_value: f64,
    pub pmi: f64,
    pub npmi: f64,
}

/// All pairs' test results, reduced to the edges that pass.
#[derive(Clone, Debug)]
pub struct CoactResult {
    pub edges: Vec<CoactEdge>,
    /// Pairs in the BH family (every pair of alive features).
    pub tests: u64,
    /// Pairs with q ≤ alpha before the co-count and PMI filters.
    pub significant: u64,
}

/// Which pairs become edges.
#[derive(Clone, Debug)]
pub struct CoactRule {
    pub alpha: f64,
    pub min_cocount: u64,
    pub min_pmi: f64,
}

impl CoactBuilder {
    pub fn new(d: usize) -> Self {
        CoactBuilder {
            d,
            pair_counts: vec![0; d * d],
            fire: vec![0; d],
            rows: 0,
            block_mean: vec![0.0; BLOCK_CELLS * d],
            block_var: vec![0.0; BLOCK_CELLS * d],
            block_cells: 0,
            expected: vec![0.0; d * d],
            variance: vec![0.0; d * d],
            cell_count: vec![0; d],
            cell_touched: Vec::new(),
            active: Vec::new(),
        }
    }

    /// Adds a chunk of whole cells (`cells[r]` = the cell of code row r).
    pub fn push(&mut self, cells: &[u32], codes: &SparseCodes) {
        let d = self.d;
        let mut r = 0;
        while r < cells.len() {
            let start = r;
            while r < cells.len() && cells[r] == cells[start] {
                r += 1;
            }
            for row in start..r {
                let (idx, val) = codes.row(row);
                self.active.clear();
                self.active
                    .extend(idx.iter().zip(val).filter(|(_, &v)| v > 0.0).map(|(&f, _)| f));
                self.active.sort_unstable();
                for (n, &i) in self.active.iter().enumerate() {
                    let i = i as usize;
                    self.fire[i] += 1;
                    if self.cell_count[i] == 0 {
                        self.cell_touched.push(i as u32);
                    }
                    self.cell_count[i] += 1;
                    for &j in &self.active[n + 1..] {
                        self.pair_counts[i * d + j as usize] += 1;
                    }
                }
            }
            self.finish_cell((r - start) as f64);
        }
        self.rows += cells.len() as u64;
    }

    fn finish_cell(&mut self, n: f64) {
        let d = self.d;
        let row = self.block_cells;
        for &f in &self.cell_touched {
            let f = f as usize;
            let a = self.cell_count[f] as f64;
            self.block_mean[row * d + f] = a / n.sqrt();
            // A one-position cell has no variance (and n − 1 = 0): it adds to E only.
            if n > 1.0 {
                self.block_var[row * d + f] = a * (n - a) / (n * (n - 1.0).sqrt());
            }
            self.cell_count[f] = 0;
        }
        self.cell_touched.clear();
        self.block_cells += 1;
        if self.block_cells == BLOCK_CELLS {
            self.flush();
        }
    }

    /// E += Mᵀ·M and V += Wᵀ·W over the block, then clears it.
    fn flush(&mut self) {
        let (d, b) = (self.d, self.block_cells);
        if b == 0 {
            return;
        }
        for (acc, block) in [
            (&mut self.expected, &mut self.block_mean),
            (&mut self.variance, &mut self.block_var),
        ] {
            let m = MatRef::from_row_major_slice(&block[..b * d], b, d);
            let out = MatMut::from_row_major_slice_mut(acc, d, d);
            matmul(out, Accum::Add, m.transpose(), m, 1.0, Par::rayon(0));
            block[..b * d].iter_mut().for_each(|x| *x = 0.0);
        }
        self.block_cells = 0;
    }

    /// Tests every pair of alive features and keeps the pairs that pass `rule`.
    pub fn finish(mut self, rule: &CoactRule) -> CoactResult {
        self.flush();
        let d = self.d;
        let n = self.rows as f64;
        let alive: Vec<usize> = (0..d).filter(|&f| self.fire[f] > 0).collect();
        let mut pairs = Vec::with_capacity(alive.len() * alive.len().saturating_sub(1) / 2);
        let mut p = Vec::with_capacity(pairs.capacity());
        for (x, &i) in alive.iter().enumerate() {
            for &j in &alive[x + 1..] {
                let (o, e, v) = (
                    self.pair_counts[i * d + j] as f64,
                    self.expected[i * d + j],
                    self.variance[i * d + j],
                );
                let z = if v > 0.0 {
                    (o - e - 0.5) / v.sqrt()
                } else {
                    f64::NAN
                };
                pairs.push((i as u32, j as u32, z));
                p.push(if z.is_nan() { 1.0 } else { normal_sf(z) });
            }
        }
        let q = bh_qvalues(&p).expect("normal tails lie in [0, 1]");
        let mut edges = Vec::new();
        let mut significant = 0;
        for ((&(i, j, z), &p), &q) in pairs.iter().zip(&p).zip(&q) {
            if q > rule.alpha {
                continue;
            }
            significant += 1;
            let (i, j) = (i as usize, j as usize);
            let o = self.pair_counts[i * d + j] as u64;
            if o < rule.min_cocount {
                continue;
            }
            let pmi = (o as f64 * n / (self.fire[i] as f64 * self.fire[j] as f64)).log2();
            if pmi < rule.min_pmi {
                continue;
            }
            let joint = o as f64 / n;
            edges.push(CoactEdge {
                a: i as u32,
                b: j as u32,
                cocount: o,
                expected: self.expected[i * d + j],
                variance: self.variance[i * d + j],
                z,
                p_value: p,
                q_value: q,
                pmi,
                // Normalised PMI in [-1, 1]; 1 when the two always co-occur.
                npmi: if joint < 1.0 { pmi / -joint.log2() } else { 1.0 },
            });
        }
        CoactResult {
            edges,
            tests: p.len() as u64,
            significant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_conditional_null_by_hand() {
        // One cell of 4 positions: feature 0 active at rows 0, 1; feature 1 at rows 1, 2; feature 2
        // at row 3. O_01 = 1, E_01 = 2·2/4 = 1, V_01 = 2·2·2·2/(16·3) = 1/3.
        let codes = SparseCodes {
            k: 2,
            indices: vec![0, 2, 0, 1, 1, 0, 2, 1],
            values: vec![1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0],
        };
        let mut b = CoactBuilder::new(3);
        b.push(&[7, 7, 7, 7], &codes);
        b.flush();
        assert_eq!(b.pair_counts[1], 1);
        assert!((b.expected[1] - 1.0).abs() < 1e-12);
        assert!((b.variance[1] - 1.0 / 3.0).abs() < 1e-12);
        assert!(
            (b.expected[2] - 0.5).abs() < 1e-12 && (b.variance[2] - 2.0 * 2.0 * 3.0 / 48.0).abs() < 1e-12
        );
        let res = b.finish(&CoactRule {
            alpha: 1.0,
            min_cocount: 0,
            min_pmi: f64::NEG_INFINITY,
        });
        assert_eq!(res.tests, 3);
        let e01 = res.edges.iter().find(|e| (e.a, e.b) == (0, 1)).unwrap();
        assert!((e01.z - (-0.5 / (1.0f64 / 3.0).sqrt())).abs() < 1e-12);
        assert!((e01.pmi - (4.0f64 / 4.0).log2()).abs() < 1e-12);
    }

    #[test]
    fn co_firing_beyond_cell_composition_is_found_and_cell_confounding_is_not() {
        // 200 cells of 50 positions. Features 0 and 1 fire together at the same positions (true
        // co-activation). Features 2 and 3 both fire only in even cells, at independent positions
        // (cell-level confounding): many co-occurrences, but no more than the cells explain.
        let mut rng = crate::rng::Rng::new(3, 4);
        let (mut cells, mut idx, mut val) = (Vec::new(), Vec::new(), Vec::new());
        for c in 0..200u32 {
            for _ in 0..50 {
                let mut row = vec![];
                if rng.uniform() < 0.2 {
                    row.extend([0, 1]);
                }
                if c % 2 == 0 {
                    if rng.uniform() < 0.5 {
                        row.push(2);
                    }
                    if rng.uniform() < 0.5 {
                        row.push(3);
                    }
                }
                row.resize(4, 4);
                let n_active = row.iter().filter(|&&f| f != 4).count();
                cells.push(c);
                for (x, &f) in row.iter().enumerate() {
                    idx.push(f);
                    val.push(if x < n_active { 1.0 } else { 0.0 });
                }
            }
        }
        let codes = SparseCodes {
            k: 4,
            indices: idx,
            values: val,
        };
        let mut b = CoactBuilder::new(5);
        b.push(&cells, &codes);
        let res = b.finish(&CoactRule {
            alpha: 0.05,
            min_cocount: 1,
            min_pmi: f64::NEG_INFINITY,
        });
        let pairs: Vec<(u32, u32)> = res.edges.iter().map(|e| (e.a, e.b)).collect();
        assert!(pairs.contains(&(0, 1)), "{pairs:?}");
        assert!(!pairs.contains(&(2, 3)), "{:?}", res.edges);
        // The naive position-level PMI of 2–3 is clearly positive (they share the even cells).
        let mut naive = CoactBuilder::new(5);
        naive.push(&cells, &codes);
        let all = naive.finish(&CoactRule {
            alpha: 1.0,
            min_cocount: 1,
            min_pmi: f64::NEG_INFINITY,
        });
        let e23 = all.edges.iter().find(|e| (e.a, e.b) == (2, 3)).unwrap();
        assert!(e23.pmi > 0.9, "{}", e23.pmi);
    }

    /// Agreement with statsmodels' StratifiedTable (CMH with continuity correction) and multipletests
    /// (fdr_bh) on the committed fixture written by tests/reference/make_coact_fixture.py.
    #[test]
    fn matches_statsmodels_on_the_committed_fixture() {
        let path =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/coact/coact.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
        let nums = |key: &str| -> Vec<f64> {
            fx[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        let cells: Vec<u32> = nums("cells").iter().map(|&c| c as u32).collect();
        let codes = SparseCodes {
            k: fx["k"].as_u64().unwrap() as usize,
            indices: nums("indices").iter().map(|&i| i as u32).collect(),
            values: nums("values").iter().map(|&v| v as f32).collect(),
        };
        let mut b = CoactBuilder::new(fx["d"].as_u64().unwrap() as usize);
        // Two chunks of whole cells, as `scinterp analyze` feeds them.
        let split = cells.iter().position(|&c| c == 20).unwrap();
        let part = |r: std::ops::Range<usize>| SparseCodes {
            k: codes.k,
            indices: codes.indices[r.start * codes.k..r.end * codes.k].to_vec(),
            values: codes.values[r.start * codes.k..r.end * codes.k].to_vec(),
        };
        b.push(&cells[..split], &part(0..split));
        b.push(&cells[split..], &part(split..cells.len()));
        let res = b.finish(&CoactRule {
            alpha: 1.0,
            min_cocount: 0,
            min_pmi: f64::NEG_INFINITY,
        });
        let want = fx["pairs"].as_array().unwrap();
        assert_eq!(res.tests as usize, want.len());
        assert_eq!(res.edges.len(), want.len());
        let rel = |a: f64, b: f64| if a == b { 0.0 } else { ((a - b) / b).abs() };
        for w in want {
            let (a, bb) = (w["a"].as_u64().unwrap() as u32, w["b"].as_u64().unwrap() as u32);
            let e = res.edges.iter().find(|e| (e.a, e.b) == (a, bb)).unwrap();
            let num = |k: &str| w[k].as_f64().unwrap();
            assert_eq!(e.cocount as f64, num("cocount"));
            assert!(
                rel(e.expected, num("expected")) < 1e-12,
                "{a}-{bb}: E {} vs {}",
                e.expected,
                num("expected")
            );
            assert!(
                (e.z - num("z")).abs() < 1e-10 * num("z").abs().max(1.0),
                "{a}-{bb}: z {} vs {}",
                e.z,
                num("z")
            );
            if num("cocount") - num("expected") > 0.5 {
                assert!(
                    rel(e.z * e.z, num("statsmodels_statistic")) < 1e-10,
                    "{a}-{bb}: z² vs statsmodels"
                );
                assert!((e.p_value - num("statsmodels_p_two_sided") / 2.0).abs() < 1e-15);
            }
            assert!(
                rel(e.p_value, num("p")) < 1e-10,
                "{a}-{bb}: p {:e} vs {:e}",
                e.p_value,
                num("p")
            );
            assert!(
                rel(e.q_value, num("q")) < 1e-10,
                "{a}-{bb}: q {:e} vs {:e}",
                e.q_value,
                num("q")
            );
        }
        // The planted pair is significant; the cell-confounded pair is not.
        let q = |a: u32, b: u32| res.edges.iter().find(|e| (e.a, e.b) == (a, b)).unwrap().q_value;
        assert!(q(0, 1) < 1e-6 && q(2, 3) > 0.05, "{} {}", q(0, 1), q(2, 3));
    }
}
