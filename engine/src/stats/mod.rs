//! Statistics in f64 for feature annotation and circuit tracing: exact hypergeometric / Fisher tails,
//! Student t tails, BH/BY q-values, effect sizes, and streaming mean/variance.
//!
//! Hand-written, dependency-free, and in log space where tails can underflow: every p-value function has
//! a `*_ln_*` twin that stays finite far below f64's smallest positive value (≈1e-308), and both agree
//! with scipy/statsmodels to 1e-10 relative on the committed fixtures (`tests/fixtures/stats/`, made by
//! `tests/reference/make_stats_fixtures.py`; exact references come from integer arithmetic and mpmath).
//!
//! - [`hypergeom`]: pmf, upper/lower tails, one-sided Fisher exact tests.
//! - [`ttest`]: Student t survival function and two-sided p-value, one-sample t-test from (n, mean, sd),
//!   Cohen's d, Hedges' g (exact correction).
//! - [`multitest`]: Benjamini–Hochberg and Benjamini–Yekutieli q-values; BH over huge families whose
//!   untested members have p = 1 ([`BhFamily`], [`bh_qvalues_with_ones`]).
//! - [`welford`]: running mean/variance with merge.
//! - [`special`]: ln Γ, ln B and the log-space building blocks.
//!
//! Invalid arguments to the distribution functions give NaN (documented per function); the q-value
//! functions return [`StatsError`] for p-values outside [0, 1]. Nothing here panics on any input.

pub mod hypergeom;
pub mod multitest;
pub mod normal;
pub mod special;
pub mod ttest;
pub mod welford;

#[cfg(test)]
mod fixture_tests;

pub use hypergeom::{
    fisher_exact_greater, fisher_exact_less, fisher_exact_ln_greater, fisher_exact_ln_less,
    hypergeom_ln_lower_tail, hypergeom_ln_pmf, hypergeom_ln_upper_tail, hypergeom_lower_tail, hypergeom_pmf,
    hypergeom_upper_tail,
};
pub use multitest::{bh_qvalues, bh_qvalues_with_ones, by_qvalues, fdr_adjust, BhFamily, FdrMethod};
pub use normal::{normal_ln_sf, normal_sf};
pub use special::{ln_beta, ln_gamma};
pub use ttest::{
    cohens_d, hedges_g, hedges_j, hedges_j_approx, one_sample_t_test, student_t_cdf, student_t_ln_sf,
    student_t_ln_two_sided, student_t_sf, student_t_two_sided, TTest,
};
pub use welford::RunningStats;

/// Errors of the statistics functions that take collections.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("p-value #{index} is {value}, outside [0, 1] (NaN is allowed and left out of the family)")]
    InvalidPValue { index: usize, value: f64 },
    #[error("{explicit} explicit p-values in a family of {m} tests: the family must count every test")]
    FamilyTooSmall { explicit: u64, m: u64 },
}
