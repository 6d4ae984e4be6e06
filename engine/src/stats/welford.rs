//! Running mean and variance in f64 (Welford 1962), with the pairwise merge of Chan, Golub & LeVeque
//! (1979) so that batches, threads or shards can be reduced in any grouping.
//!
//! The state is (n, mean, M2 = Σ (x − mean)²). Pushing one value and merging two states are both
//! numerically stable (no Σx² − n·mean² cancellation). A NaN or infinite value propagates into the mean
//! and variance (it is not skipped); filter first if that is not wanted.

use super::ttest::{one_sample_t_test, TTest};

/// Count, mean and sum of squared deviations of the values seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunningStats {
    n: u64,
    mean: f64,
    m2: f64,
}

impl RunningStats {
    /// An empty accumulator.
    pub fn new() -> RunningStats {
        RunningStats::default()
    }

    /// The raw state (n, mean, M2), e.g. to store it.
    pub fn parts(&self) -> (u64, f64, f64) {
        (self.n, self.mean, self.m2)
    }

    /// An accumulator from a stored state (see [`RunningStats::parts`]).
    pub fn from_parts(n: u64, mean: f64, m2: f64) -> RunningStats {
        RunningStats { n, mean, m2 }
    }

    /// `n` values equal to 0 (sparse data whose zeros are implicit).
    pub fn zeros(n: u64) -> RunningStats {
        RunningStats {
            n,
            mean: 0.0,
            m2: 0.0,
        }
    }

    /// Adds one value.
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Adds every value of `xs`.
    pub fn extend<I: IntoIterator<Item = f64>>(&mut self, xs: I) {
        for x in xs {
            self.push(x);
        }
    }

    /// Combines another accumulator into this one: the result equals pushing all of `other`'s values
    /// (up to rounding), whichever order the pieces are merged in.
    pub fn merge(&mut self, other: &RunningStats) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let n = self.n + other.n;
        let (na, nb, nf) = (self.n as f64, other.n as f64, n as f64);
        let delta = other.mean - self.mean;
        self.mean += delta * (nb / nf);
        self.m2 += other.m2 + delta * delta * (na * nb / nf);
        self.n = n;
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Mean (NaN when empty).
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.mean
        }
    }

    /// Σ (x − mean)².
    pub fn sum_sq_dev(&self) -> f64 {
        self.m2
    }

    /// Sample variance, ddof = 1 (NaN for fewer than 2 values).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            f64::NAN
        } else {
            self.m2 / (self.n - 1) as f64
        }
    }

    /// Population variance, ddof = 0 (NaN when empty).
    pub fn population_variance(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.m2 / self.n as f64
        }
    }

    /// Sample standard deviation, ddof = 1 (NaN for fewer than 2 values).
    pub fn sd(&self) -> f64 {
        self.variance().sqrt()
    }

    /// One-sample t-test of H₀: mean = `mu0` on the values seen (see [`one_sample_t_test`]).
    pub fn one_sample_t_test(&self, mu0: f64) -> TTest {
        one_sample_t_test(self.n, self.mean(), self.sd(), mu0)
    }
}

impl FromIterator<f64> for RunningStats {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> RunningStats {
        let mut s = RunningStats::new();
        s.extend(iter);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_pass(xs: &[f64]) -> (f64, f64) {
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let ss = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>();
        (mean, ss / (xs.len() - 1) as f64)
    }

    #[test]
    fn matches_two_pass_and_merges_in_any_grouping() {
        // A large offset defeats the naive Σx² formula; Welford keeps full precision.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let xs: Vec<f64> = (0..10_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                1e9 + (state >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect();
        let (m, v) = two_pass(&xs);
        let all: RunningStats = xs.iter().copied().collect();
        assert_eq!(all.count(), 10_000);
        assert!((all.mean() - m).abs() <= 1e-13 * m);
        assert!((all.variance() / v - 1.0).abs() < 1e-6, "{} {v}", all.variance());
        for &chunk in &[1usize, 7, 1000, 3333] {
            let mut merged = RunningStats::new();
            for c in xs.chunks(chunk) {
                merged.merge(&c.iter().copied().collect());
            }
            assert_eq!(merged.count(), all.count());
            assert!((merged.mean() - m).abs() <= 1e-13 * m);
            assert!((merged.variance() / all.variance() - 1.0).abs() < 1e-6);
        }
        // Small values: tight agreement with two-pass.
        let ys: Vec<f64> = xs.iter().map(|x| x - 1e9).collect();
        let (m, v) = two_pass(&ys);
        let s: RunningStats = ys.iter().copied().collect();
        assert!((s.mean() - m).abs() < 1e-14 && (s.variance() / v - 1.0).abs() < 1e-12);
        let mut a: RunningStats = ys[..4000].iter().copied().collect();
        a.merge(&ys[4000..].iter().copied().collect());
        assert!((a.mean() - m).abs() < 1e-14 && (a.variance() / v - 1.0).abs() < 1e-12);
        let t = a.one_sample_t_test(0.4);
        assert_eq!(t, one_sample_t_test(10_000, a.mean(), a.sd(), 0.4));
        assert!(t.t.is_finite() && t.p_two_sided > 0.0);
    }

    #[test]
    fn empty_and_single() {
        let e = RunningStats::new();
        assert!(e.mean().is_nan() && e.variance().is_nan() && e.population_variance().is_nan());
        let mut one = RunningStats::new();
        one.push(3.0);
        assert_eq!(one.mean(), 3.0);
        assert!(one.variance().is_nan());
        assert_eq!(one.population_variance(), 0.0);
        let mut m = e;
        m.merge(&one);
        assert_eq!(m, one);
        m.merge(&e);
        assert_eq!(m, one);
    }
}
