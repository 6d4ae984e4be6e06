//! The hypergeometric distribution and one-sided Fisher exact tests, in log space.
//!
//! X ~ Hypergeom(population N, successes K, draws n): the number of successes among n items drawn without
//! replacement from N items of which K are successes. Its support is max(0, n + K − N) ..= min(n, K).
//!
//! - The log pmf uses Loader's saddle-point form (R's `dhyper`): three binomial terms built from `stirlerr`
//!   and `bd0`, never from differences of large ln-factorials, so its absolute error is a few ulps of
//!   |ln p| rather than of ln N!.
//! - A tail is summed from its largest term outwards (the mode when the mode lies inside the tail, else
//!   the tail's end next to the mode), each term obtained from the previous one by the exact ratio of
//!   consecutive pmf values; the sum is scaled by that largest term, so nothing underflows and the
//!   result's log is exact even far below f64's range (`*_ln_*` functions). Summation stops when the
//!   remaining terms are provably below 1e-17 of the sum (the ratios decrease away from the mode because
//!   the pmf is log-concave), so the cost is the number of terms that matter, not the support's width.
//! - Tails are never computed as 1 − (other tail), so both keep full relative accuracy everywhere: against
//!   exact integer arithmetic (fixtures: N up to 10⁶, tails down to e⁻¹⁵⁰⁰) the worst relative error is
//!   7e-13 (at ln p ≈ −690; it grows with |ln p| and the number of terms summed).
//!
//! Cost: ~200 ns per tail for the enrichment shape (N = 20,000, n = 20), a handful of `ln` calls plus
//! one multiply-add per term that matters. The number of terms grows with the standard deviation of X
//! (≈ 9 sd at most), and so does the rounding accumulated along the ratio products (~sd · 1e-16): below
//! 1e-11 for any sd ≤ 10⁵, i.e. any population of genes or cells in practice; at N ~ 2⁵³ with n ~ N/2 a
//! tail near the mode costs ~10⁸ terms and ~1e-9 relative error.
//!
//! Invalid arguments (successes > population, draws > population, population > 2⁵³) give NaN.

use super::special::ln_dbinom_raw;

/// Largest population accepted: integers up to 2⁵³ are exact in f64.
const MAX_POPULATION: u64 = 1 << 53;

#[derive(Clone, Copy)]
struct Hyper {
    big_n: f64,
    big_k: f64,
    n: f64,
    lo: u64,
    hi: u64,
    mode: u64,
}

impl Hyper {
    fn new(population: u64, successes: u64, draws: u64) -> Option<Hyper> {
        if population > MAX_POPULATION || successes > population || draws > population {
            return None;
        }
        let lo = (draws + successes).saturating_sub(population);
        let hi = draws.min(successes);
        // A mode: floor((n + 1)(K + 1)/(N + 2)); pmf(k+1)/pmf(k) ≥ 1 exactly when k + 1 ≤ that ratio.
        let mode =
            ((u128::from(draws) + 1) * (u128::from(successes) + 1) / (u128::from(population) + 2)) as u64;
        Some(Hyper {
            big_n: population as f64,
            big_k: successes as f64,
            n: draws as f64,
            lo,
            hi,
            mode: mode.clamp(lo, hi),
        })
    }

    /// ln pmf(x) for x in the support (Loader: dbinom(x; K, p)·dbinom(n−x; N−K, p)/dbinom(n; N, p), p = n/N).
    fn ln_pmf(&self, x: u64) -> f64 {
        if x < self.lo || x > self.hi {
            return f64::NEG_INFINITY;
        }
        if self.big_n == 0.0 {
            return 0.0;
        }
        let x = x as f64;
        let p = self.n / self.big_n;
        let q = (self.big_n - self.n) / self.big_n;
        let p1 = ln_dbinom_raw(x, self.big_k, p, q);
        let p2 = ln_dbinom_raw(self.n - x, self.big_n - self.big_k, p, q);
        let p3 = ln_dbinom_raw(self.n, self.big_n, p, q);
        p1 + p2 - p3
    }

    /// pmf(k + 1) / pmf(k).
    fn ratio_up(&self, k: u64) -> f64 {
        let k = k as f64;
        ((self.big_k - k) * (self.n - k)) / ((k + 1.0) * (self.big_n - self.big_k - self.n + k + 1.0))
    }

    /// pmf(k − 1) / pmf(k).
    fn ratio_down(&self, k: u64) -> f64 {
        let k = k as f64;
        (k * (self.big_n - self.big_k - self.n + k)) / ((self.big_k - k + 1.0) * (self.n - k + 1.0))
    }

    /// ln Σ_{k=a}^{b} pmf(k) for lo ≤ a ≤ b ≤ hi, summed outwards from the largest term.
    fn ln_sum(&self, a: u64, b: u64) -> f64 {
        let start = self.mode.clamp(a, b);
        let mut s = 1.0;
        // Upwards from start: the terms decrease, since start ≥ mode or start = b.
        let mut t = 1.0;
        let mut k = start;
        while k < b {
            let r = self.ratio_up(k);
            t *= r;
            s += t;
            k += 1;
            if t == 0.0 || (r < 1.0 && t * r / (1.0 - r) < 1e-17 * s) {
                break;
            }
        }
        // Downwards from start: the terms decrease, since start ≤ mode or start = a.
        let mut t = 1.0;
        let mut k = start;
        while k > a {
            let r = self.ratio_down(k);
            t *= r;
            s += t;
            k -= 1;
            if t == 0.0 || (r < 1.0 && t * r / (1.0 - r) < 1e-17 * s) {
                break;
            }
        }
        self.ln_pmf(start) + s.ln()
    }
}

/// ln P(X = x) for X ~ Hypergeom(population, successes, draws); −∞ outside the support, NaN for invalid
/// arguments. Equals `scipy.stats.hypergeom(M=population, n=successes, N=draws).logpmf(x)`.
pub fn hypergeom_ln_pmf(x: u64, population: u64, successes: u64, draws: u64) -> f64 {
    match Hyper::new(population, successes, draws) {
        Some(h) => h.ln_pmf(x),
        None => f64::NAN,
    }
}

/// P(X = x); see [`hypergeom_ln_pmf`].
pub fn hypergeom_pmf(x: u64, population: u64, successes: u64, draws: u64) -> f64 {
    hypergeom_ln_pmf(x, population, successes, draws).exp()
}

/// ln P(X ≥ x): the log of the upper tail, accurate (≲1e-12 relative in P) even where P underflows f64.
/// 0 for x ≤ the support's minimum, −∞ above its maximum, NaN for invalid arguments.
pub fn hypergeom_ln_upper_tail(x: u64, population: u64, successes: u64, draws: u64) -> f64 {
    let Some(h) = Hyper::new(population, successes, draws) else {
        return f64::NAN;
    };
    if x <= h.lo {
        0.0
    } else if x > h.hi {
        f64::NEG_INFINITY
    } else {
        h.ln_sum(x, h.hi).min(0.0)
    }
}

/// P(X ≥ x) (= `scipy.stats.hypergeom.sf(x − 1, population, successes, draws)`); see
/// [`hypergeom_ln_upper_tail`]. Underflows to 0 (or a subnormal) below ~1e-308: use the ln form there.
pub fn hypergeom_upper_tail(x: u64, population: u64, successes: u64, draws: u64) -> f64 {
    hypergeom_ln_upper_tail(x, population, successes, draws).exp()
}

/// ln P(X ≤ x): the log of the lower tail. 0 for x ≥ the support's maximum, −∞ below its minimum,
/// NaN for invalid arguments.
pub fn hypergeom_ln_lower_tail(x: u64, population: u64, successes: u64, draws: u64) -> f64 {
    let Some(h) = Hyper::new(population, successes, draws) else {
        return f64::NAN;
    };
    if x >= h.hi {
        0.0
    } else if x < h.lo {
        f64::NEG_INFINITY
    } else {
        h.ln_sum(h.lo, x).min(0.0)
    }
}

/// P(X ≤ x) (= `scipy.stats.hypergeom.cdf(x, population, successes, draws)`); see
/// [`hypergeom_ln_lower_tail`].
pub fn hypergeom_lower_tail(x: u64, population: u64, successes: u64, draws: u64) -> f64 {
    hypergeom_ln_lower_tail(x, population, successes, draws).exp()
}

/// The hypergeometric parameters of the 2×2 table [[a, b], [c, d]] with fixed margins:
/// X = a, population a+b+c+d, successes a+b (first row), draws a+c (first column).
fn table(a: u64, b: u64, c: u64, d: u64) -> Option<(u64, u64, u64)> {
    let row = a.checked_add(b)?;
    let col = a.checked_add(c)?;
    let total = row.checked_add(c)?.checked_add(d)?;
    Some((total, row, col))
}

/// ln of the one-sided Fisher exact p-value, alternative "greater" (odds ratio > 1), for the 2×2 table
/// [[a, b], [c, d]]: ln P(X ≥ a). NaN if the margins overflow u64 or exceed 2⁵³.
///
/// For enrichment of a query set in a term: a = overlap, b = query − a, c = term − a,
/// d = background − a − b − c.
pub fn fisher_exact_ln_greater(a: u64, b: u64, c: u64, d: u64) -> f64 {
    match table(a, b, c, d) {
        Some((n, k, draws)) => hypergeom_ln_upper_tail(a, n, k, draws),
        None => f64::NAN,
    }
}

/// One-sided Fisher exact p-value, alternative "greater" = `scipy.stats.fisher_exact([[a, b], [c, d]],
/// alternative="greater").pvalue`; see [`fisher_exact_ln_greater`].
pub fn fisher_exact_greater(a: u64, b: u64, c: u64, d: u64) -> f64 {
    fisher_exact_ln_greater(a, b, c, d).exp()
}

/// ln of the one-sided Fisher exact p-value, alternative "less": ln P(X ≤ a).
pub fn fisher_exact_ln_less(a: u64, b: u64, c: u64, d: u64) -> f64 {
    match table(a, b, c, d) {
        Some((n, k, draws)) => hypergeom_ln_lower_tail(a, n, k, draws),
        None => f64::NAN,
    }
}

/// One-sided Fisher exact p-value, alternative "less"; see [`fisher_exact_ln_less`].
pub fn fisher_exact_less(a: u64, b: u64, c: u64, d: u64) -> f64 {
    fisher_exact_ln_less(a, b, c, d).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_exact_values() {
        // N = 10, K = 4, n = 3: pmf(k) = C(4,k) C(6,3−k) / 120 = 20, 60, 36, 4 over 120.
        let pmf = [20.0, 60.0, 36.0, 4.0].map(|v| v / 120.0);
        for (k, &p) in pmf.iter().enumerate() {
            let got = hypergeom_pmf(k as u64, 10, 4, 3);
            assert!((got - p).abs() <= 1e-15 * p, "k={k} {got} {p}");
        }
        assert!((hypergeom_upper_tail(2, 10, 4, 3) - 40.0 / 120.0).abs() < 1e-15);
        assert!((hypergeom_lower_tail(1, 10, 4, 3) - 80.0 / 120.0).abs() < 1e-15);
        assert_eq!(hypergeom_upper_tail(0, 10, 4, 3), 1.0);
        assert_eq!(hypergeom_upper_tail(4, 10, 4, 3), 0.0);
        assert_eq!(hypergeom_lower_tail(3, 10, 4, 3), 1.0);
        // Degenerate populations.
        assert_eq!(hypergeom_pmf(0, 0, 0, 0), 1.0);
        assert_eq!(hypergeom_pmf(5, 5, 5, 5), 1.0);
        assert_eq!(hypergeom_pmf(0, 5, 0, 5), 1.0);
        // Lower bound of the support above 0: N = 10, K = 8, n = 5 ⇒ X ≥ 3.
        assert_eq!(hypergeom_pmf(2, 10, 8, 5), 0.0);
        assert_eq!(hypergeom_upper_tail(3, 10, 8, 5), 1.0);
        assert_eq!(hypergeom_ln_lower_tail(2, 10, 8, 5), f64::NEG_INFINITY);
    }

    #[test]
    fn invalid_arguments_are_nan() {
        assert!(hypergeom_pmf(1, 10, 11, 3).is_nan());
        assert!(hypergeom_upper_tail(1, 10, 4, 11).is_nan());
        assert!(hypergeom_lower_tail(1, (1 << 53) + 1, 4, 3).is_nan());
        assert!(fisher_exact_greater(u64::MAX, 1, 0, 0).is_nan());
    }

    #[test]
    fn tails_sum_to_one() {
        for &(n, k, d) in &[(20_000u64, 500u64, 20u64), (57, 13, 40), (1000, 999, 500)] {
            let h = Hyper::new(n, k, d).unwrap();
            for x in h.lo..=h.hi {
                let up = hypergeom_upper_tail(x + 1, n, k, d);
                let low = hypergeom_lower_tail(x, n, k, d);
                assert!((up + low - 1.0).abs() < 1e-14, "{n} {k} {d} {x}: {up} + {low}");
            }
        }
    }

    #[test]
    fn random_shapes_are_consistent() {
        // Seeded xorshift; for every x: P(X ≥ x) + P(X ≤ x − 1) = 1, and each tail equals the plain sum of
        // the pmf (both summed here naively in f64, fine where the tail is not tiny).
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        for _ in 0..200 {
            let n = 1 + next(3000);
            let k = next(n + 1);
            let d = next(n + 1);
            let h = Hyper::new(n, k, d).unwrap();
            let pmf: Vec<f64> = (h.lo..=h.hi).map(|x| hypergeom_pmf(x, n, k, d)).collect();
            let total: f64 = pmf.iter().sum();
            assert!((total - 1.0).abs() < 1e-12, "{n} {k} {d}: Σ pmf = {total}");
            let mut below = 0.0;
            for (i, x) in (h.lo..=h.hi).enumerate() {
                let up = hypergeom_upper_tail(x, n, k, d);
                let low = if x == 0 {
                    0.0
                } else {
                    hypergeom_lower_tail(x - 1, n, k, d)
                };
                assert!((up + low - 1.0).abs() < 1e-13, "{n} {k} {d} {x}: {up} + {low}");
                if below > 1e-3 {
                    assert!(
                        (low / below - 1.0).abs() < 1e-11,
                        "{n} {k} {d} {x}: {low} vs {below}"
                    );
                }
                below += pmf[i];
            }
        }
    }
}
