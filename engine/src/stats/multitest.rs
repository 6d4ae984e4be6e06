//! Multiple-testing adjustment: Benjamini–Hochberg and Benjamini–Yekutieli q-values, and BH over huge
//! families whose untested members have p = 1 ([`BhFamily`]).
//!
//! The arithmetic mirrors `statsmodels.stats.multitest.multipletests(p, method="fdr_bh" | "fdr_by")[1]`
//! operation for operation (sort ascending, p₍ᵢ₎ / (i/m) [BY: / ((i/m)/c(m)), c(m) = Σ 1/j], running
//! minimum from the largest p down, clip at 1, unsort), so results agree to the last ulp or two (fixtures:
//! worst 7e-16 relative, three quarters bit-identical; c(m) is summed in order, numpy sums pairwise).
//!
//! - **Ties**: tied p-values get equal q-values (the running minimum makes the order within a tie
//!   irrelevant), as in statsmodels and R's `p.adjust`.
//! - **NaN**: a NaN p-value is *not* a test: it is left out of the family (m counts only the non-NaN
//!   p-values) and its q-value is NaN. This is R's `p.adjust` convention. statsmodels differs: any NaN
//!   makes every q-value NaN (because `np.minimum.accumulate` propagates NaN).
//! - **Invalid p-values** (< 0, > 1, or infinite) are refused with [`StatsError::InvalidPValue`].

use super::StatsError;

/// Which false-discovery-rate adjustment to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdrMethod {
    /// Benjamini–Hochberg (1995), valid under independence or positive dependence (PRDS).
    BenjaminiHochberg,
    /// Benjamini–Yekutieli (2001), valid under arbitrary dependence (BH scaled by c(m) = Σ_{j≤m} 1/j).
    BenjaminiYekutieli,
}

/// FDR-adjusted q-values of `p` in the input order; see the module documentation for ties and NaN.
pub fn fdr_adjust(p: &[f64], method: FdrMethod) -> Result<Vec<f64>, StatsError> {
    for (index, &value) in p.iter().enumerate() {
        if !value.is_nan() && !(0.0..=1.0).contains(&value) {
            return Err(StatsError::InvalidPValue { index, value });
        }
    }
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    // Stable sort on the total order; no NaN remain, so this is the numeric order (−0 before +0 is harmless).
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let m = order.len();
    let mut q = vec![f64::NAN; p.len()];
    if m == 0 {
        return Ok(q);
    }
    let mf = m as f64;
    let c_m = match method {
        FdrMethod::BenjaminiHochberg => 1.0,
        FdrMethod::BenjaminiYekutieli => (1..=m).map(|j| 1.0 / j as f64).sum::<f64>(),
    };
    let mut running = f64::INFINITY;
    for (rank0, &i) in order.iter().enumerate().rev() {
        let ecdf = (rank0 + 1) as f64 / mf;
        let raw = match method {
            FdrMethod::BenjaminiHochberg => p[i] / ecdf,
            FdrMethod::BenjaminiYekutieli => p[i] / (ecdf / c_m),
        };
        running = running.min(raw);
        q[i] = running.min(1.0);
    }
    Ok(q)
}

/// Benjamini–Hochberg q-values (= statsmodels `multipletests(p, method="fdr_bh")[1]` when `p` has no NaN).
pub fn bh_qvalues(p: &[f64]) -> Result<Vec<f64>, StatsError> {
    fdr_adjust(p, FdrMethod::BenjaminiHochberg)
}

/// Benjamini–Yekutieli q-values (= statsmodels `multipletests(p, method="fdr_by")[1]` when `p` has no NaN).
pub fn by_qvalues(p: &[f64]) -> Result<Vec<f64>, StatsError> {
    fdr_adjust(p, FdrMethod::BenjaminiYekutieli)
}

/// A Benjamini–Hochberg family given as a multiset of explicit p-values plus implicit p = 1 entries.
///
/// Built for families far larger than memory allows as a plain vector (feature annotation: every
/// (feature, term) pair, ~7·10⁸, of which only pairs that share a gene have p < 1): the explicit
/// p-values come as (value, count) pairs, so identical p-values (the hypergeometric tail depends on four
/// small integers only) take one entry. The q-value of an explicit p equals, bit for bit, what
/// [`bh_qvalues`] gives it on the vector padded with ones to `m` entries: within a tie the smallest of
/// p·m/rank is at the tie's last rank, so q(v) = min(1, min over values w ≥ v of w / (C(w)/m)), with C(w)
/// the number of tests with p ≤ w, computed with the same operations as [`fdr_adjust`].
#[derive(Clone, Debug)]
pub struct BhFamily {
    /// Distinct explicit p-values, ascending.
    values: Vec<f64>,
    /// Number of tests with p ≤ values[i].
    cumulative: Vec<u64>,
    /// q-value of values[i].
    q: Vec<f64>,
    m: u64,
}

impl BhFamily {
    /// The family of `m` tests whose p-values below 1 (and any explicit ones) are `counts`
    /// ((p, number of tests with that p); pairs may repeat a p). The other tests have p = 1.
    /// NaN p-values are not tests (as in [`fdr_adjust`]): they are skipped and must not be counted in `m`.
    pub fn from_counts(counts: impl IntoIterator<Item = (f64, u64)>, m: u64) -> Result<Self, StatsError> {
        let mut pairs: Vec<(f64, u64)> = Vec::new();
        for (index, (value, count)) in counts.into_iter().enumerate() {
            if value.is_nan() || count == 0 {
                continue;
            }
            if !(0.0..=1.0).contains(&value) {
                return Err(StatsError::InvalidPValue { index, value });
            }
            pairs.push((value, count));
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut values: Vec<f64> = Vec::with_capacity(pairs.len());
        let mut cumulative: Vec<u64> = Vec::with_capacity(pairs.len());
        let mut total = 0u64;
        for (value, count) in pairs {
            total += count;
            // Equal values (−0 and +0 included) form one tie.
            if values.last() == Some(&value) {
                *cumulative.last_mut().expect("non-empty") = total;
            } else {
                values.push(value);
                cumulative.push(total);
            }
        }
        if total > m {
            return Err(StatsError::FamilyTooSmall { explicit: total, m });
        }
        let mf = m as f64;
        // The implicit ones: their smallest p·m/rank is 1/(m/m) = 1, at rank m.
        let mut running = if total < m { 1.0 } else { f64::INFINITY };
        let mut q = vec![0.0; values.len()];
        for i in (0..values.len()).rev() {
            let ecdf = cumulative[i] as f64 / mf;
            running = running.min(values[i] / ecdf);
            q[i] = running.min(1.0);
        }
        Ok(BhFamily {
            values,
            cumulative,
            q,
            m,
        })
    }

    /// Number of tests in the family.
    pub fn m(&self) -> u64 {
        self.m
    }

    /// Number of explicit tests (p-values given, ones included).
    pub fn explicit(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The q-value of `p`, a p-value of the family (1 for p = 1); NaN if `p` is not one of its p-values.
    pub fn q_value(&self, p: f64) -> f64 {
        let i = self.values.partition_point(|&v| v < p);
        if i < self.values.len() && self.values[i] == p {
            self.q[i]
        } else if p == 1.0 && self.explicit() < self.m {
            1.0
        } else {
            f64::NAN
        }
    }

    /// The largest p-value of the family whose q-value is ≤ `alpha` (None if none is): a test is
    /// significant at `alpha` exactly when its p is at most this.
    pub fn p_threshold(&self, alpha: f64) -> Option<f64> {
        if alpha >= 1.0 {
            return (self.m > 0).then_some(1.0);
        }
        // q is non-decreasing in p.
        let i = self.q.partition_point(|&q| q <= alpha);
        (i > 0).then(|| self.values[i - 1])
    }

    /// Number of tests with q-value ≤ `alpha`.
    pub fn significant(&self, alpha: f64) -> u64 {
        if alpha >= 1.0 {
            return self.m;
        }
        let i = self.q.partition_point(|&q| q <= alpha);
        if i > 0 {
            self.cumulative[i - 1]
        } else {
            0
        }
    }
}

/// BH q-values of `p_explicit` in a family of `m_total` tests whose other members have p = 1: equal
/// to the first `p_explicit.len()` entries of [`bh_qvalues`] on `p_explicit` padded with ones to
/// `m_total`, without building that vector (memory and time follow the explicit p-values alone).
/// NaN p-values get NaN and are not tests (they must not be counted in `m_total`).
pub fn bh_qvalues_with_ones(p_explicit: &[f64], m_total: u64) -> Result<Vec<f64>, StatsError> {
    for (index, &value) in p_explicit.iter().enumerate() {
        if !value.is_nan() && !(0.0..=1.0).contains(&value) {
            return Err(StatsError::InvalidPValue { index, value });
        }
    }
    let family = BhFamily::from_counts(p_explicit.iter().map(|&p| (p, 1)), m_total)?;
    Ok(p_explicit
        .iter()
        .map(|&p| if p.is_nan() { f64::NAN } else { family.q_value(p) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        // m = 4: raw = p·4/i = 0.04, 0.04, 0.04, 0.8 → running min from the top.
        let q = bh_qvalues(&[0.01, 0.02, 0.03, 0.8]).unwrap();
        let want = [0.04, 0.04, 0.04, 0.8];
        for (a, b) in q.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{q:?}");
        }
        // Ties get equal q-values, whatever their input order.
        let q = bh_qvalues(&[0.05, 0.01, 0.05, 0.05]).unwrap();
        assert_eq!(q[0], q[2]);
        assert_eq!(q[0], q[3]);
        assert!((q[0] - 0.05).abs() < 1e-15 && (q[1] - 0.04).abs() < 1e-15);
    }

    #[test]
    fn nan_is_left_out_and_invalid_is_refused() {
        let q = bh_qvalues(&[0.01, f64::NAN, 0.02]).unwrap();
        assert!(q[1].is_nan());
        assert!((q[0] - 0.02).abs() < 1e-15 && (q[2] - 0.02).abs() < 1e-15);
        assert!(bh_qvalues(&[f64::NAN]).unwrap()[0].is_nan());
        assert!(bh_qvalues(&[]).unwrap().is_empty());
        assert!(matches!(
            bh_qvalues(&[0.5, 1.5]),
            Err(StatsError::InvalidPValue { index: 1, .. })
        ));
        assert!(by_qvalues(&[-0.1]).is_err());
        assert!(by_qvalues(&[f64::INFINITY]).is_err());
    }

    #[test]
    fn implicit_ones_equal_the_padded_vector() {
        // Seeded draws with many ties (values on a coarse grid), explicit ones and zeros, and families from
        // no padding to mostly padding: bit-identical to bh_qvalues on the padded vector.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for case in 0..60 {
            let explicit = 1 + next(300) as usize;
            let p: Vec<f64> = (0..explicit)
                .map(|_| match next(10) {
                    0 => 1.0,
                    1 => 0.0,
                    2 => (next(20) as f64) / 20.0,
                    _ => (next(1_000_000) as f64 + 1.0) * 1e-9 * 10f64.powi(next(6) as i32),
                })
                .map(|v: f64| v.min(1.0))
                .collect();
            let pad = [0, 1, 5, 1000][case % 4] + next(50) as usize;
            let m = (explicit + pad) as u64;
            let mut padded = p.clone();
            padded.resize(explicit + pad, 1.0);
            let want = bh_qvalues(&padded).unwrap();
            let got = bh_qvalues_with_ones(&p, m).unwrap();
            for i in 0..explicit {
                assert_eq!(
                    got[i].to_bits(),
                    want[i].to_bits(),
                    "case {case} i {i}: {} vs {}",
                    got[i],
                    want[i]
                );
            }
            let family = BhFamily::from_counts(p.iter().map(|&v| (v, 1)), m).unwrap();
            assert_eq!(
                family.q_value(1.0),
                if pad > 0 || p.contains(&1.0) {
                    1.0
                } else {
                    f64::NAN
                }
            );
            for alpha in [0.001, 0.05, 0.3] {
                let n_sig = want.iter().filter(|&&q| q <= alpha).count() as u64;
                assert_eq!(family.significant(alpha), n_sig, "case {case} alpha {alpha}");
                match family.p_threshold(alpha) {
                    Some(t) => {
                        let max_p = (0..padded.len())
                            .filter(|&i| want[i] <= alpha)
                            .map(|i| padded[i])
                            .fold(f64::NEG_INFINITY, f64::max);
                        assert_eq!(t, max_p);
                    }
                    None => assert_eq!(n_sig, 0),
                }
            }
        }
        // Counts: the same family given as (value, count) pairs.
        let family = BhFamily::from_counts([(0.01, 2), (0.02, 1), (0.01, 1)], 10).unwrap();
        let padded = [0.01, 0.01, 0.01, 0.02, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let want = bh_qvalues(&padded).unwrap();
        assert_eq!(family.q_value(0.01), want[0]);
        assert_eq!(family.q_value(0.02), want[3]);
        assert!(family.q_value(0.5).is_nan());
        assert_eq!(family.explicit(), 4);
        assert!(matches!(
            BhFamily::from_counts([(0.5, 3)], 2),
            Err(StatsError::FamilyTooSmall { explicit: 3, m: 2 })
        ));
        assert!(bh_qvalues_with_ones(&[0.1, 2.0], 5).is_err());
        let q = bh_qvalues_with_ones(&[f64::NAN, 0.01], 4).unwrap();
        assert!(q[0].is_nan() && (q[1] - 0.04).abs() < 1e-15);
    }
}
