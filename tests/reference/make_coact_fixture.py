#!/usr/bin/env python3
"""Write tests/fixtures/coact/coact.json: seeded SAE codes over cells, and for every pair of alive features
the co-activation test as statsmodels computes it, for engine/src/analyze/coact.rs to match.

For features i < j, each cell is one stratum with the 2x2 table [[both, i only], [j only, neither]] over its
positions; statsmodels' StratifiedTable.test_null_odds(correction=True) is the Cochran-Mantel-Haenszel
test with a continuity correction. scinterp's test is its one-sided version (more co-activation than the
cells explain): z = (O - E - 1/2)/sqrt(V), whose square is statsmodels' statistic when O - E > 1/2, and
p = scipy's norm.sf(z). (statsmodels' own p is 1 - chi2.cdf, which loses everything below ~1e-16: it is
stored, and equals 2p only to that absolute precision.) q-values are statsmodels'
multipletests(method='fdr_bh') over every pair of alive features.

Usage (from the repository root): /tmp/pyenv/venv/bin/python tests/reference/make_coact_fixture.py
"""

import json
import os

import numpy as np
import scipy.stats as st
import statsmodels
from statsmodels.stats.contingency_tables import StratifiedTable
from statsmodels.stats.multitest import multipletests

SEED = 20261129
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "coact", "coact.json")


def main():
    rng = np.random.default_rng(SEED)
    d, k, n_cells = 10, 4, 40
    cells, indices, values = [], [], []
    for c in range(n_cells):
        n = int(rng.integers(2, 30))
        # Features 0-1 co-fire at the same positions; 2-3 share cells (both prefer even cells) only;
        # feature 9 never fires (dead: outside the family).
        prefer = c % 2 == 0
        for _ in range(n):
            active = []
            if rng.random() < 0.3:
                active += [0, 1]
            if prefer and rng.random() < 0.5:
                active.append(2)
            if prefer and rng.random() < 0.5:
                active.append(3)
            for f in range(4, 9):
                if rng.random() < 0.15 and len(active) < k:
                    active.append(f)
            active = active[:k]
            filler = [f for f in range(d) if f not in active][: k - len(active)]
            vals = [float(rng.uniform(0.1, 2.0)) for _ in active] + [0.0] * len(filler)
            cells.append(c)
            indices += active + filler
            values += vals
    idx = np.array(indices).reshape(-1, k)
    val = np.array(values).reshape(-1, k)
    cell = np.array(cells)
    act = np.zeros((len(cells), d), dtype=bool)
    for r in range(len(cells)):
        for f, v in zip(idx[r], val[r]):
            if v > 0:
                act[r, f] = True
    alive = [f for f in range(d) if act[:, f].any()]
    pairs = []
    for x, i in enumerate(alive):
        for j in alive[x + 1:]:
            tables = []
            for c in range(n_cells):
                rows = cell == c
                a, b = act[rows, i], act[rows, j]
                both = int((a & b).sum())
                tables.append([[both, int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]])
            t = np.array(tables, dtype=float).transpose(1, 2, 0)
            o = float(t[0, 0, :].sum())
            n = t.sum(axis=(0, 1))
            row1, col1 = t[0, :, :].sum(axis=0), t[:, 0, :].sum(axis=0)
            e = float((row1 * col1 / n).sum())
            v = float((row1 * (n - row1) * col1 * (n - col1) / (n * n * (n - 1))).sum())
            z = (o - e - 0.5) / np.sqrt(v)
            test = StratifiedTable(t).test_null_odds(correction=True)
            p = float(st.norm.sf(z))
            pairs.append({"a": i, "b": j, "cocount": o, "expected": e, "variance": v, "z": float(z),
                          "statsmodels_statistic": float(test.statistic),
                          "statsmodels_p_two_sided": float(test.pvalue), "p": p})
    q = multipletests([p["p"] for p in pairs], method="fdr_bh")[1]
    for p, qv in zip(pairs, q):
        p["q"] = float(qv)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"seed": SEED, "statsmodels": statsmodels.__version__, "d": d, "k": k, "cells": cells,
                   "indices": [int(x) for x in indices], "values": values, "pairs": pairs}, f)
    print(f"wrote {OUT}: {len(cells)} rows, {len(pairs)} pairs")


if __name__ == "__main__":
    main()
