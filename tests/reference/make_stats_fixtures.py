#!/usr/bin/env python3
"""Write the statistics fixtures in tests/fixtures/stats/ (seeded, deterministic).

Every case carries two references:

- the exact value: hypergeometric tails from integer arithmetic (sums of C(K,k)·C(N−K,n−k) over C(N,n)),
  Student t tails, ln Γ, ln B and Hedges' J from mpmath at 50 significant digits;
- the value scipy / statsmodels return (keys prefixed `scipy_` / `statsmodels_`).

The script checks that scipy agrees with the exact value and prints the worst relative error it saw, so a
scipy regression is visible here and not only in the Rust tests. Logarithms are stored so that tails far
below f64's range (1e-308) are still checkable. JSON has no NaN/inf: NaN p-values are written as null.

Usage (from the repository root): /tmp/pyenv/venv/bin/python tests/reference/make_stats_fixtures.py
"""

import json
import math
import os
import sys

import mpmath as mp
import numpy as np
import scipy
import scipy.stats as st
import statsmodels
from statsmodels.stats.multitest import multipletests

mp.mp.dps = 50
SEED = 20261129
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "stats")

worst = {}


def note(kind, got, want):
    """Track the worst relative error of scipy/statsmodels against the exact value."""
    if want == 0 or not math.isfinite(want) or want < 1e-300:
        return
    rel = abs(got - want) / abs(want)
    worst[kind] = max(worst.get(kind, 0.0), rel)


def ln_ratio(num, den):
    """ln(num/den) for positive integers, to 50 digits."""
    return mp.log(mp.mpf(num)) - mp.log(mp.mpf(den))


def f(x):
    return float(x)


# ---------------------------------------------------------------------------------------------------------
# Hypergeometric
# ---------------------------------------------------------------------------------------------------------


def support(N, K, n):
    return max(0, n + K - N), min(n, K)


def term(N, K, n, k):
    return math.comb(K, k) * math.comb(N - K, n - k)


def mode(N, K, n):
    lo, hi = support(N, K, n)
    return min(max((n + 1) * (K + 1) // (N + 2), lo), hi)


def tail_sum(N, K, n, a, b):
    """Exact Σ_{k=a}^{b} term(k), but terms below 1e-60 of the running sum are dropped (they are
    decreasing away from the mode, so the dropped remainder is < 1e-55 relative)."""
    m = min(max(mode(N, K, n), a), b)
    s = term(N, K, n, m)
    for direction in (1, -1):
        k = m + direction
        while a <= k <= b:
            t = term(N, K, n, k)
            s += t
            if t * 10**60 < s:
                break
            k += direction
    return s


def hyper_case(N, K, n, x):
    lo, hi = support(N, K, n)
    assert lo <= x <= hi
    den = math.comb(N, n)
    pm = term(N, K, n, x)
    # Upper tail P(X ≥ x): sum directly, or as the exact integer complement when the other side is shorter.
    m = mode(N, K, n)
    if x > m:
        up = tail_sum(N, K, n, x, hi)
    else:
        up = den - (tail_sum(N, K, n, lo, x - 1) if x > lo else 0)
    if x < m:
        low = tail_sum(N, K, n, lo, x)
    else:
        low = den - (tail_sum(N, K, n, x + 1, hi) if x < hi else 0)
    c = {
        "x": x,
        "population": N,
        "successes": K,
        "draws": n,
        "ln_pmf": f(ln_ratio(pm, den)),
        "ln_upper": f(ln_ratio(up, den)),
        "upper": f(mp.mpf(up) / den),
        "ln_lower": f(ln_ratio(low, den)),
        "lower": f(mp.mpf(low) / den),
    }
    with np.errstate(all="ignore"):
        c["scipy_upper"] = float(st.hypergeom.sf(x - 1, N, K, n))
        c["scipy_lower"] = float(st.hypergeom.cdf(x, N, K, n))
        c["scipy_ln_pmf"] = float(st.hypergeom.logpmf(x, N, K, n))
    note("hypergeom upper (scipy sf)", c["scipy_upper"], c["upper"])
    note("hypergeom lower (scipy cdf)", c["scipy_lower"], c["lower"])
    if c["ln_pmf"] < -1e-3:
        note("hypergeom ln pmf (scipy logpmf)", c["scipy_ln_pmf"], c["ln_pmf"])
    return c


def find_x_for_ln_upper(N, K, n, target):
    """Smallest x above the mode with ln P(X ≥ x) ≤ target (estimated with lgamma; then exact)."""
    lo, hi = support(N, K, n)

    def lpmf(k):
        lc = lambda a, b: math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)
        return lc(K, k) + lc(N - K, n - k) - lc(N, n)

    for x in range(mode(N, K, n), hi + 1):
        if lpmf(x) <= target:
            return x
    return None


def find_x_for_ln_lower(N, K, n, target):
    lo, hi = support(N, K, n)

    def lpmf(k):
        lc = lambda a, b: math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)
        return lc(K, k) + lc(N - K, n - k) - lc(N, n)

    for x in range(mode(N, K, n), lo - 1, -1):
        if lpmf(x) <= target:
            return x
    return None


def hypergeom_fixture(rng):
    cases = []
    # 1. Small random populations, x anywhere in the support.
    for _ in range(80):
        N = int(rng.integers(1, 300))
        K = int(rng.integers(0, N + 1))
        n = int(rng.integers(0, N + 1))
        lo, hi = support(N, K, n)
        cases.append(hyper_case(N, K, n, int(rng.integers(lo, hi + 1))))
    # 2. Gene-set enrichment shape: 20,000 genes, a feature's top 20 genes, terms of 5–500 genes.
    for _ in range(60):
        K = int(np.exp(rng.uniform(np.log(5), np.log(500))))
        lo, hi = support(20000, K, 20)
        cases.append(hyper_case(20000, K, 20, int(rng.integers(lo, hi + 1))))
    for K in (5, 15, 120, 500):
        for x in (0, 1, 2, 3, min(5, K), min(20, K)):
            cases.append(hyper_case(20000, K, 20, x))
    # 3. Large draws, x spread over mode ± 12 sd.
    for _ in range(40):
        N = int(rng.choice([5000, 20000, 100000]))
        K = int(rng.integers(50, 5000))
        n = int(rng.integers(50, 5000))
        lo, hi = support(N, K, n)
        mean = n * K / N
        sd = math.sqrt(max(mean * (N - K) / N * (N - n) / max(N - 1, 1), 1e-9))
        x = int(round(mean + rng.uniform(-12, 12) * sd))
        cases.append(hyper_case(N, K, n, min(max(x, lo), hi)))
    # 4. Extreme tails: ln P near −690 (1e-300), −700 (just below f64's normal range), −1500 (ln only).
    for N, K, n in [(20000, 500, 500), (20000, 2000, 300), (1000000, 5000, 1000), (20000, 5000, 5000),
                    (500, 250, 250), (20000, 20, 20)]:
        for target in (-40.0, -300.0, -690.0, -700.0, -1500.0):
            x = find_x_for_ln_upper(N, K, n, target)
            if x is not None:
                cases.append(hyper_case(N, K, n, x))
            x = find_x_for_ln_lower(N, K, n, target)
            if x is not None:
                cases.append(hyper_case(N, K, n, x))
    return cases


def fisher_fixture(rng):
    cases = []

    def add(a, b, c, d):
        N, K, n = a + b + c + d, a + b, a + c
        exact = hyper_case(N, K, n, a)
        with np.errstate(all="ignore"):
            g = float(st.fisher_exact([[a, b], [c, d]], alternative="greater").pvalue)
            l = float(st.fisher_exact([[a, b], [c, d]], alternative="less").pvalue)
        note("fisher greater (scipy)", g, exact["upper"])
        note("fisher less (scipy)", l, exact["lower"])
        cases.append({
            "table": [a, b, c, d],
            "greater": exact["upper"], "ln_greater": exact["ln_upper"],
            "less": exact["lower"], "ln_less": exact["ln_lower"],
            "scipy_greater": g, "scipy_less": l,
        })

    for _ in range(40):
        a, b, c, d = (int(v) for v in rng.integers(0, 60, size=4))
        add(a, b, c, d)
    # Annotation shape: overlap a of a 20-gene query with a term, background of 3,000–20,000 genes.
    for _ in range(40):
        bg = int(rng.choice([3000, 20000]))
        term_size = int(rng.integers(5, 501))
        a = int(rng.integers(0, min(20, term_size) + 1))
        add(a, 20 - a, term_size - a, bg - 20 - term_size + a)
    add(20, 0, 0, 19980)
    add(20, 0, 480, 19500)
    add(0, 20, 500, 19480)
    add(150, 350, 350, 19150)
    return cases


# ---------------------------------------------------------------------------------------------------------
# Student t
# ---------------------------------------------------------------------------------------------------------


def t_two_sided_quad(t, df):
    """P(|T| ≥ |t|) by tanh-sinh quadrature of the density (the fallback where betainc fails)."""
    t, df = abs(mp.mpf(t)), mp.mpf(df)
    lnc = mp.loggamma((df + 1) / 2) - mp.loggamma(df / 2) - mp.log(df * mp.pi) / 2
    lf = lambda s: lnc - (df + 1) / 2 * mp.log1p(s * s / df)
    if t < 1:
        return 1 - 2 * mp.quad(lambda s: mp.exp(lf(s)), [0, t])
    l0 = lf(t)
    w = df * (1 + t * t / df) / ((df + 1) * t)  # the density's decay length at t
    return 2 * mp.exp(l0) * mp.quad(lambda u: mp.exp(lf(t + u) - l0), [0, w, 10 * w, 100 * w, mp.inf])


def t_exact(t, df):
    """(P(|T| ≥ |t|), P(T > t)) to ~50 digits: mpmath betainc, or quadrature where betainc does not
    converge (large df and far tails). The two are cross-checked where both work (t_fixture)."""
    t, df = mp.mpf(t), mp.mpf(df)
    try:
        two = mp.betainc(df / 2, mp.mpf(1) / 2, 0, df / (df + t * t), regularized=True)
    except ValueError:
        two = t_two_sided_quad(t, df)
    sf = two / 2 if t >= 0 else 1 - two / 2
    return two, sf


def t_case(t, df):
    two, sf = t_exact(t, df)
    c = {
        "t": t, "df": df,
        "sf": f(sf), "ln_sf": f(mp.log(sf)),
        "two_sided": f(two), "ln_two_sided": f(mp.log(two)),
        "scipy_sf": float(st.t.sf(t, df)),
        "scipy_two_sided": float(min(1.0, 2 * st.t.sf(abs(t), df))),
    }
    note("t sf (scipy)", c["scipy_sf"], c["sf"])
    note("t two-sided (scipy)", c["scipy_two_sided"], c["two_sided"])
    return c


def t_for_ln_sf(df, target):
    """t with ln P(T > t) ≈ target, by bisection on the exact log survival function."""
    lo, hi = mp.mpf(0), mp.mpf(10)
    while mp.log(t_exact(hi, df)[1]) > target:
        hi *= 10
    for _ in range(60):
        mid = (lo + hi) / 2
        if mp.log(t_exact(mid, df)[1]) > target:
            lo = mid
        else:
            hi = mid
    return float(hi)


def t_fixture():
    cases = []
    dfs = [1, 1.5, 2, 3, 4.7, 5, 9, 10, 19, 29, 50, 99, 200, 999, 5000, 100000]
    ts = [0.001, 0.1, 0.5, 1.0, 1.96, 3.0, 5.0, 10.0, 30.0]
    for df in dfs:
        for t in (0.5, 3.0, 30.0):  # the two exact methods agree
            a = mp.betainc(mp.mpf(df) / 2, mp.mpf(1) / 2, 0, df / (df + mp.mpf(t) ** 2), regularized=True)
            b = t_two_sided_quad(t, df)
            assert abs(a / b - 1) < 1e-30, (df, t, a, b)
        for t in ts:
            cases.append(t_case(t, float(df)))
            cases.append(t_case(-t, float(df)))
        for target in (-50.0, -300.0, -690.0, -700.0, -1000.0):
            t = t_for_ln_sf(float(df), target)
            if math.isfinite(t):  # df = 1 needs t ≈ e^1000 for the last target: beyond f64
                cases.append(t_case(t, float(df)))
    return cases


def ttest_fixture(rng):
    cases = []
    for n in (2, 3, 5, 10, 30, 100, 1000):
        for shift in (0.0, 0.3, -1.0, 3.0):
            x = rng.normal(shift, 1.0 + rng.uniform(0, 2), size=n)
            r = st.ttest_1samp(x, 0.0)
            rg = st.ttest_1samp(x, 0.0, alternative="greater")
            rl = st.ttest_1samp(x, 0.0, alternative="less")
            mean, sd = float(np.mean(x)), float(np.std(x, ddof=1))
            df = n - 1
            if df > 1:
                J = mp.gamma(mp.mpf(df) / 2) / (mp.sqrt(mp.mpf(df) / 2) * mp.gamma(mp.mpf(df - 1) / 2))
                J = f(J)
            else:
                J = None
            d = mean / sd
            cases.append({
                "n": n, "mean": mean, "sd": sd, "mu0": 0.0,
                "scipy_t": float(r.statistic), "scipy_p_two_sided": float(r.pvalue),
                "scipy_p_greater": float(rg.pvalue), "scipy_p_less": float(rl.pvalue),
                "cohens_d": d, "hedges_j": J, "hedges_j_approx": 1 - 3 / (4 * df - 1) if df > 1 else None,
                "hedges_g": d * J if J is not None else None,
            })
    # Summary statistics giving tiny p-values (mean/sd large), and large df.
    for n, mean, sd in [(1000, 2.0, 1.0), (1000, 2.6, 1.0), (50, 9.0, 1.0), (20000, 0.5, 1.0), (5000, -0.9, 1.0)]:
        t = mean / math.sqrt(sd * sd / n)
        df = n - 1
        two, sf = t_exact(t, df)
        J = f(mp.gamma(mp.mpf(df) / 2) / (mp.sqrt(mp.mpf(df) / 2) * mp.gamma(mp.mpf(df - 1) / 2)))
        cases.append({
            "n": n, "mean": mean, "sd": sd, "mu0": 0.0,
            "scipy_t": t, "scipy_p_two_sided": float(2 * st.t.sf(abs(t), df)),
            "scipy_p_greater": float(st.t.sf(t, df)), "scipy_p_less": float(st.t.cdf(t, df)),
            "exact_p_two_sided": f(two), "exact_ln_p_two_sided": f(mp.log(two)),
            "cohens_d": mean / sd, "hedges_j": J, "hedges_j_approx": 1 - 3 / (4 * df - 1),
            "hedges_g": mean / sd * J,
        })
    return cases


# ---------------------------------------------------------------------------------------------------------
# BH / BY
# ---------------------------------------------------------------------------------------------------------


def fdr_fixture(rng):
    vectors = []
    for m in (1, 2, 3, 5, 10, 100, 1000, 2000):
        vectors.append(rng.uniform(size=m))
        # A mixture: mostly null, some signal down to 1e-300.
        sig = 10.0 ** (-rng.uniform(0, 300, size=max(1, m // 5)))
        vectors.append(np.concatenate([rng.uniform(size=m - len(sig)), sig])[rng.permutation(m)])
        # Ties: p-values rounded to 2 decimals (many exact duplicates), plus exact 0 and 1.
        tied = np.round(rng.uniform(size=m) ** 2, 2)
        if m >= 3:
            tied[0], tied[1] = 0.0, 1.0
        vectors.append(tied)
    vectors.append(np.full(7, 0.03))
    vectors.append(np.array([1e-300, 5e-324, 0.0, 1.0, 1.0, 0.5]))
    cases = []
    for p in vectors:
        bh = multipletests(p, method="fdr_bh")[1]
        by = multipletests(p, method="fdr_by")[1]
        cases.append({"p": [float(v) for v in p], "bh": [float(v) for v in bh], "by": [float(v) for v in by],
                      "nan_positions": []})
    # NaN: scinterp leaves NaN out of the family (R's p.adjust); statsmodels turns every q into NaN.
    for m in (5, 200):
        p = rng.uniform(size=m) ** 3
        nan_pos = sorted(int(i) for i in rng.choice(m, size=max(1, m // 10), replace=False))
        keep = np.array([i not in nan_pos for i in range(m)])
        bh = np.full(m, np.nan)
        by = np.full(m, np.nan)
        bh[keep] = multipletests(p[keep], method="fdr_bh")[1]
        by[keep] = multipletests(p[keep], method="fdr_by")[1]
        with_nan = p.copy()
        with_nan[~keep] = np.nan
        assert np.all(np.isnan(multipletests(with_nan, method="fdr_bh")[1]))  # statsmodels' behaviour
        cases.append({
            "p": [None if np.isnan(v) else float(v) for v in with_nan],
            "bh": [None if np.isnan(v) else float(v) for v in bh],
            "by": [None if np.isnan(v) else float(v) for v in by],
            "nan_positions": nan_pos,
        })
    return cases


# ---------------------------------------------------------------------------------------------------------
# Special functions and Welford
# ---------------------------------------------------------------------------------------------------------


def special_fixture():
    xs = [1e-10, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 7.3, 9.99, 10.0, 10.5, 33.0, 100.25, 1e4, 1e6, 1e10]
    pairs = [(0.5, 0.5), (0.5, 3.0), (2.5, 0.5), (10.0, 0.5), (500.0, 0.5), (5e5, 0.5), (1e7, 0.5),
             (3.0, 4.0), (12.0, 15.0), (200.0, 300.0), (1e4, 2e4), (0.01, 50.0), (7.5, 9.5)]
    return {
        "ln_gamma": [[x, f(mp.loggamma(x))] for x in xs],
        "ln_beta": [[a, b, f(mp.log(mp.beta(a, b)))] for a, b in pairs],
    }


def welford_fixture(rng):
    x = 1e6 + rng.normal(0, 1, size=5000)
    return {"x": [float(v) for v in x], "mean": float(np.mean(x)), "var_ddof1": float(np.var(x, ddof=1)),
            "var_ddof0": float(np.var(x, ddof=0))}


def write(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w") as fh:
        json.dump(obj, fh, separators=(",", ":"), allow_nan=False)
        fh.write("\n")
    print(f"  {name}: {os.path.getsize(path):,} bytes")


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"statsmodels {statsmodels.__version__}, mpmath {mp.__version__}")
    meta = {"seed": SEED, "numpy": np.__version__, "scipy": scipy.__version__,
            "statsmodels": statsmodels.__version__, "mpmath": mp.__version__}
    write("hypergeom.json", {"meta": meta, "cases": hypergeom_fixture(rng)})
    write("fisher.json", {"meta": meta, "cases": fisher_fixture(rng)})
    write("student_t.json", {"meta": meta, "cases": t_fixture()})
    write("ttest_1samp.json", {"meta": meta, "cases": ttest_fixture(rng)})
    write("fdr.json", {"meta": meta, "cases": fdr_fixture(rng)})
    write("special.json", {"meta": meta, **special_fixture()})
    write("welford.json", {"meta": meta, **welford_fixture(rng)})
    print("worst relative error of scipy against the exact value (values ≥ 1e-300):")
    for k, v in sorted(worst.items()):
        print(f"  {k}: {v:.2e}")


if __name__ == "__main__":
    main()
