//! Cell-type enrichment of features' strongest cells (methods §4.6 and A13).
//!
//! The rule, stated in the output:
//! - a feature is tested when it is active in at least `min_active_cells` cells (10);
//! - its top cells are the first ⌈`top_percent` % ⌉ (10 %) of its active cells by mean activation when
//!   active (ties: lower cell index first);
//! - every label with at least `min_label_cells` (3) cells in the store is tested with a one-sided
//!   Fisher test: a = top cells with the label, population = the store's labelled cells, successes =
//!   the label's cells, draws = the labelled top cells; p = `hypergeom.sf(a − 1, n_cells, label_cells,
//!   top_size)`;
//! - one BH family over every (tested feature, tested label) pair of all catalogs; pairs with a = 0 have
//!   p = 1 and are counted without being computed.
//!
//! A cell is unlabelled when its value is empty or `nan`/`NA`/`None` (any case).

use super::AnnotateError;
use crate::stats::{hypergeom_upper_tail, BhFamily};

/// The labels of a token store's cells (one obs column).
#[derive(Clone, Debug)]
pub struct CellLabels {
    /// Every label, sorted.
    pub names: Vec<String>,
    /// Cells per label.
    pub counts: Vec<u64>,
    /// Per cell: its label's index, or `u32::MAX` when unlabelled.
    pub of_cell: Vec<u32>,
    /// Cells with a label.
    pub labelled: u64,
}

/// Values that mean "no label".
pub fn is_missing_label(value: &str) -> bool {
    let v = value.trim();
    v.is_empty()
        || ["nan", "na", "none", "<na>"]
            .iter()
            .any(|m| v.eq_ignore_ascii_case(m))
}

impl CellLabels {
    /// From one value per cell.
    pub fn new(values: &[String]) -> Self {
        let mut names: Vec<String> = values
            .iter()
            .filter(|v| !is_missing_label(v))
            .map(|v| v.trim().to_string())
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut counts = vec![0u64; names.len()];
        let of_cell: Vec<u32> = values
            .iter()
            .map(|v| {
                if is_missing_label(v) {
                    return u32::MAX;
                }
                let i = names.binary_search_by(|n| n.as_str().cmp(v.trim())).unwrap_or(0);
                counts[i] += 1;
                i as u32
            })
            .collect();
        let labelled = counts.iter().sum();
        CellLabels {
            names,
            counts,
            of_cell,
            labelled,
        }
    }
}

/// The rows of one feature in a catalog's feature-cells table: (cell index, mean activation when active).
#[derive(Clone, Debug)]
pub struct FeatureCells {
    pub feature: i64,
    pub cells: Vec<(u32, f64)>,
}

/// One catalog's input: its name, the labels of its token store's cells, and its features.
pub struct CellTypeCatalog<'a> {
    pub name: String,
    pub labels: &'a CellLabels,
    pub features: Vec<FeatureCells>,
}

#[derive(Clone, Debug)]
pub struct CellTypeSettings {
    pub min_active_cells: usize,
    pub top_percent: usize,
    pub min_label_cells: u64,
    pub alpha: f64,
}

impl Default for CellTypeSettings {
    fn default() -> Self {
        CellTypeSettings {
            min_active_cells: 10,
            top_percent: 10,
            min_label_cells: 3,
            alpha: 0.05,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CellTypeRow {
    pub catalog: usize,
    pub feature: i64,
    pub label: String,
    pub in_top: u64,
    /// Labelled top cells (the draws).
    pub top_size: u64,
    pub label_cells: u64,
    /// Labelled cells of the store (the population).
    pub n_cells: u64,
    pub p_value: f64,
    pub q_value: f64,
}

#[derive(Clone, Debug)]
pub struct CellTypeCatalogStats {
    pub features_tested: usize,
    pub labels_tested: usize,
    pub significant: u64,
    pub features_enriched: usize,
}

#[derive(Clone, Debug)]
pub struct CellTypeResult {
    /// The pairs with q ≤ alpha, by catalog, feature, then p.
    pub rows: Vec<CellTypeRow>,
    pub m: u64,
    pub explicit: u64,
    pub significant: u64,
    pub catalogs: Vec<CellTypeCatalogStats>,
}

/// Runs the test of every catalog's features (see the module documentation).
pub fn cell_type_enrichment(
    catalogs: &[CellTypeCatalog],
    settings: &CellTypeSettings,
) -> Result<CellTypeResult, AnnotateError> {
    struct Pair {
        catalog: usize,
        feature: i64,
        label: u32,
        in_top: u64,
        top_size: u64,
        p: f64,
    }
    let mut pairs = Vec::new();
    let mut m = 0u64;
    let mut stats = Vec::with_capacity(catalogs.len());
    for (c, cat) in catalogs.iter().enumerate() {
        let labels = cat.labels;
        let tested_labels: Vec<u32> = (0..labels.names.len() as u32)
            .filter(|&l| labels.counts[l as usize] >= settings.min_label_cells)
            .collect();
        let mut features_tested = 0;
        let mut in_top = vec![0u64; labels.names.len()];
        for f in &cat.features {
            if f.cells.len() < settings.min_active_cells {
                continue;
            }
            if let Some(&(cell, _)) = f
                .cells
                .iter()
                .find(|(cell, _)| *cell as usize >= labels.of_cell.len())
            {
                return Err(AnnotateError::Invalid(format!(
                    "catalog {}: feature {} lists cell {cell}, but the token store has {} cells; the catalog was \
                     made from another store",
                    cat.name,
                    f.feature,
                    labels.of_cell.len()
                )));
            }
            features_tested += 1;
            let mut order = f.cells.clone();
            // Strongest first; NaN last; ties by cell index.
            order.sort_by(|a, b| {
                let (x, y) = (
                    if a.1.is_nan() { f64::NEG_INFINITY } else { a.1 },
                    if b.1.is_nan() { f64::NEG_INFINITY } else { b.1 },
                );
                y.total_cmp(&x).then(a.0.cmp(&b.0))
            });
            let top = (order.len() * settings.top_percent).div_ceil(100);
            in_top.fill(0);
            let mut top_size = 0u64;
            for &(cell, _) in &order[..top] {
                let l = labels.of_cell[cell as usize];
                if l != u32::MAX {
                    in_top[l as usize] += 1;
                    top_size += 1;
                }
            }
            for &l in &tested_labels {
                let a = in_top[l as usize];
                if a > 0 {
                    let p = hypergeom_upper_tail(a, labels.labelled, labels.counts[l as usize], top_size);
                    pairs.push(Pair {
                        catalog: c,
                        feature: f.feature,
                        label: l,
                        in_top: a,
                        top_size,
                        p,
                    });
                }
            }
        }
        m += features_tested as u64 * tested_labels.len() as u64;
        stats.push(CellTypeCatalogStats {
            features_tested,
            labels_tested: tested_labels.len(),
            significant: 0,
            features_enriched: 0,
        });
    }
    let family = BhFamily::from_counts(pairs.iter().map(|p| (p.p, 1)), m)
        .map_err(|e| AnnotateError::Invalid(format!("BH: {e} (internal error)")))?;
    let mut rows: Vec<CellTypeRow> = pairs
        .iter()
        .filter_map(|p| {
            let q = family.q_value(p.p);
            let labels = catalogs[p.catalog].labels;
            (q <= settings.alpha).then(|| CellTypeRow {
                catalog: p.catalog,
                feature: p.feature,
                label: labels.names[p.label as usize].clone(),
                in_top: p.in_top,
                top_size: p.top_size,
                label_cells: labels.counts[p.label as usize],
                n_cells: labels.labelled,
                p_value: p.p,
                q_value: q,
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.catalog, a.feature)
            .cmp(&(b.catalog, b.feature))
            .then(a.p_value.total_cmp(&b.p_value))
            .then(a.label.cmp(&b.label))
    });
    for (i, r) in rows.iter().enumerate() {
        stats[r.catalog].significant += 1;
        if i == 0 || (rows[i - 1].catalog, rows[i - 1].feature) != (r.catalog, r.feature) {
            stats[r.catalog].features_enriched += 1;
        }
    }
    Ok(CellTypeResult {
        m,
        explicit: family.explicit(),
        significant: family.significant(settings.alpha),
        rows,
        catalogs: stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::bh_qvalues;

    #[test]
    fn labels_skip_missing_values() {
        let values: Vec<String> = ["B", "T", "", "nan", "T", "NA", " B "].map(String::from).to_vec();
        let l = CellLabels::new(&values);
        assert_eq!(l.names, ["B", "T"]);
        assert_eq!(l.counts, [2, 2]);
        assert_eq!(l.labelled, 4);
        assert_eq!(l.of_cell, [0, 1, u32::MAX, u32::MAX, 1, u32::MAX, 0]);
    }

    #[test]
    fn top_cells_rule_and_bh_over_every_pair() {
        // 200 cells: 100 "A", 60 "B", 30 "C", 8 "D", 2 "E" (E has < 3 cells: not tested).
        let mut values = Vec::new();
        for (label, n) in [("A", 100), ("B", 60), ("C", 30), ("D", 8), ("E", 2)] {
            values.extend(std::iter::repeat_n(label.to_string(), n));
        }
        let labels = CellLabels::new(&values);
        // Feature 1: active in 50 cells; its 5 strongest are C cells (160..165).
        let mut cells: Vec<(u32, f64)> = (0..45).map(|c| (c, 0.5)).collect();
        cells.extend((160..165).map(|c| (c, 2.0)));
        // Feature 2: 9 active cells: not tested. Feature 3: 30 cells, spread evenly.
        let f2: Vec<(u32, f64)> = (0..9).map(|c| (c, 1.0)).collect();
        let f3: Vec<(u32, f64)> = (0..30).map(|c| (c * 6, 1.0 + c as f64)).collect();
        let cat = CellTypeCatalog {
            name: "c".into(),
            labels: &labels,
            features: vec![
                FeatureCells { feature: 1, cells },
                FeatureCells {
                    feature: 2,
                    cells: f2,
                },
                FeatureCells {
                    feature: 3,
                    cells: f3,
                },
            ],
        };
        let settings = CellTypeSettings {
            alpha: 1.0,
            ..CellTypeSettings::default()
        };
        let out = cell_type_enrichment(&[cat], &settings).unwrap();
        // 2 tested features × 4 tested labels.
        assert_eq!(out.m, 8);
        assert_eq!(out.catalogs[0].features_tested, 2);
        let c = out
            .rows
            .iter()
            .find(|r| r.feature == 1 && r.label == "C")
            .unwrap();
        assert_eq!((c.in_top, c.top_size, c.label_cells, c.n_cells), (5, 5, 30, 200));
        assert_eq!(c.p_value, hypergeom_upper_tail(5, 200, 30, 5));
        // Feature 3: top 3 of 30 cells are cells 174, 168, 162 (all C).
        let c3 = out.rows.iter().find(|r| r.feature == 3).unwrap();
        assert_eq!((c3.label.as_str(), c3.in_top, c3.top_size), ("C", 3, 3));
        // q: BH over the 8 pairs, the untested ones at p = 1.
        let mut p: Vec<f64> = out.rows.iter().map(|r| r.p_value).collect();
        p.resize(8, 1.0);
        let q = bh_qvalues(&p).unwrap();
        for (r, q) in out.rows.iter().zip(q) {
            assert_eq!(r.q_value, q);
        }
        // A cell outside the store is an error.
        let bad = CellTypeCatalog {
            name: "c".into(),
            labels: &labels,
            features: vec![FeatureCells {
                feature: 9,
                cells: (190..210).map(|c| (c, 1.0)).collect(),
            }],
        };
        let err = cell_type_enrichment(&[bad], &settings).unwrap_err().to_string();
        assert!(err.contains("200 cells"), "{err}");
    }
}
