#!/usr/bin/env python3
"""Write a fake `scinterp trace` edge table over catalogs made by make_fake_catalogs.py, for the atlas scale
benchmark: `--edges` rows (default 1,000,000) from alive features of a source layer to alive features of a
later layer (source layers 0, 5, 11, 15 → every later layer, as the published tracing), with the trace's
columns and plausible values (Cohen's d of either sign, q < 0.05), plus `<out>.summary.json`.

    /tmp/venv-atlas/bin/python bench/python/make_fake_edges.py --catalogs DIR --out edges.parquet \
        [--edges 1000000] [--sources 0,5,11,15] [--seed 0]

Seeded: the same arguments write the same file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalogs", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--edges", type=int, default=1_000_000)
    ap.add_argument("--sources", default="0,5,11,15")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    dirs = sorted(p for p in a.catalogs.iterdir() if (p / "catalog.json").is_file())
    hooks, alive = [], []
    for d in dirs:
        hooks.append(json.loads((d / "catalog.json").read_text())["hook"])
        f = pd.read_parquet(d / "features.parquet") if (d / "features.parquet").exists() else pd.read_csv(d / "features.tsv", sep="\t")
        alive.append(f.loc[f["alive"] == 1, "feature"].to_numpy())
    sources = [int(s) for s in a.sources.split(",") if int(s) < len(dirs) - 1]
    pairs = [(s, t) for s in sources for t in range(s + 1, len(dirs))]
    per_pair = np.full(len(pairs), a.edges // len(pairs))
    per_pair[: a.edges - per_pair.sum()] += 1
    parts = []
    for (s, t), n in zip(pairs, per_pair):
        # 30 traced source features per source layer, as the published tracing.
        traced = rng.choice(alive[s], size=min(30, len(alive[s])), replace=False)
        # Distinct (source, target) pairs: sample targets per source without replacement.
        per_source = np.full(len(traced), n // len(traced))
        per_source[: n - per_source.sum()] += 1
        src = np.repeat(traced, per_source)
        tgt = np.concatenate([rng.choice(alive[t], size=min(k, len(alive[t])), replace=False) for k in per_source])
        src = src[: len(tgt)]
        m = len(tgt)
        d = rng.normal(0, 1.2, size=m)
        d = np.where(np.abs(d) < 0.5, np.sign(d + 1e-12) * (0.5 + np.abs(d)), d)
        sd = rng.gamma(2.0, 0.2, size=m)
        n_cells = rng.integers(20, 31, size=m)
        p = 10 ** (-rng.uniform(2.5, 20, size=m))
        parts.append(pd.DataFrame({
            "source_hook": hooks[s], "source_feature": src.astype(np.int64), "target_hook": hooks[t],
            "target_feature": tgt.astype(np.int64), "n_cells": n_cells.astype(np.int64), "mean_change": d * sd,
            "sd_change": sd, "cohens_d": d, "hedges_g": d * (1 - 3 / (4 * (n_cells - 1) - 1)),
            "sign_consistency": rng.uniform(0.6, 1.0, size=m), "t": d * np.sqrt(n_cells), "p": p,
            "q": np.minimum(1.0, p * 50),
        }))
    edges = pd.concat(parts, ignore_index=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if a.out.suffix == ".tsv":
        edges.to_csv(a.out, sep="\t", index=False)
    else:
        edges.to_parquet(a.out, index=False)
    summary = {"source": "fake", "edges_written": len(edges), "generator": "bench/python/make_fake_edges.py",
               "seed": a.seed, "pairs": len(pairs)}
    a.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{a.out}: {len(edges)} edges over {len(pairs)} layer pairs")


if __name__ == "__main__":
    main()
