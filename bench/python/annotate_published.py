#!/usr/bin/env python3
"""The published annotation procedure (methods.md §5; bio-sae `src/04_annotate_features.py`), re-written for the
catalog layout of `scinterp analyze`, as a speed baseline for `scinterp annotate` on one layer.

What it does, as published:
  - query = an alive feature's top-20 gene symbols (upper case), ranking conditional_mean; < 3 genes: skipped;
  - background = the union of all features' top-20 genes of the layer;
  - libraries: the given GMT files, terms of 5-500 genes (as written in the file);
  - for every (feature, term): overlap by set intersection; only overlap >= 2 is tested, with
    scipy.stats.fisher_exact([[a, b], [c, d]], alternative="greater"), a = overlap, b = |query| - a,
    c = |term| - a, d = background - a - b - c;
  - TRRUST: the count of known pairs among the 20 genes (pairs checked as (min, max), as published), recorded
    without a test; and the "transcription_factors" Fisher test of the query against all TRRUST TFs;
  - BH (statsmodels fdr_bh) over the Fisher tests that were run (overlap >= 2 only);
  - annotated = a significant Fisher test or at least one TRRUST pair.
One liberty, which favours the baseline: the published loop upper-cases every term's genes again for every
feature (`set(g.upper() for g in term_genes)` inside the feature loop); here each term is upper-cased once.

    python annotate_published.py --catalog DIR --gene-sets a.gmt,b.gmt [--trrust t.tsv] [--json-out FILE]

Prints the seconds of the test loop + BH (`seconds_tests`) and in total (`seconds_total`, with loading).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact
from statsmodels.stats.multitest import multipletests

TOP_N = 20
MIN_OVERLAP = 2
MIN_TERM_SIZE = 5
MAX_TERM_SIZE = 500
ALPHA = 0.05


def read_table(d: Path, name: str, fmt: str) -> pd.DataFrame:
    if fmt == "parquet":
        return pd.read_parquet(d / f"{name}.parquet")
    return pd.read_csv(d / f"{name}.tsv", sep="\t", keep_default_na=False)


def load_gmt(path: Path) -> dict[str, list[str]]:
    out = {}
    for line in path.read_text().splitlines():
        f = line.split("\t")
        if len(f) > 2:
            genes = [g.split(",")[0] for g in f[2:] if g]
            if MIN_TERM_SIZE <= len(genes) <= MAX_TERM_SIZE:
                out[f[0]] = genes
    return out


def run(catalog: Path, gene_sets: list[Path], trrust: Path | None) -> dict:
    t0 = time.perf_counter()
    meta = json.loads((catalog / "catalog.json").read_text())
    fmt = meta.get("table_format", "parquet")
    feats = read_table(catalog, "features", fmt)
    top = read_table(catalog, "top_genes", fmt)
    top = top[(top["ranking"] == "conditional_mean") & (top["rank"] < TOP_N)].sort_values(["feature", "rank"])
    alive = set(int(f) for f, a in zip(feats["feature"], feats["alive"]) if a)
    features = {}
    for f, sym in zip(top["feature"].to_numpy(), top["symbol"].astype(str).to_numpy()):
        if int(f) in alive:
            features.setdefault(int(f), []).append(sym.upper())
    ontologies = {}
    for p in gene_sets:
        ontologies[p.stem] = {t: set(g.upper() for g in genes) for t, genes in load_gmt(p).items()}
    trrust_edges, trrust_tfs = set(), set()
    if trrust:
        df = pd.read_csv(trrust, sep="\t", header=None, names=["tf", "target", "mode", "pmid"])
        for tf, tgt in zip(df["tf"], df["target"]):
            trrust_edges.add((str(tf).upper(), str(tgt).upper()))
            trrust_tfs.add(str(tf).upper())
    all_genes = set()
    for genes in features.values():
        all_genes.update(genes)
    background = len(all_genes)
    t1 = time.perf_counter()

    pval_tests, edge_tests = [], []
    for fidx, genes in features.items():
        top_genes = set(genes)
        if len(top_genes) < 3:
            continue
        for ont, terms in ontologies.items():
            for term, term_genes in terms.items():
                overlap = top_genes & term_genes
                if len(overlap) < MIN_OVERLAP:
                    continue
                a = len(overlap)
                b = len(top_genes) - a
                c = len(term_genes) - a
                d = background - a - b - c
                _, p = fisher_exact([[a, b], [c, d]], alternative="greater")
                pval_tests.append((fidx, ont, term, p, a))
        if trrust:
            gl = list(top_genes)
            n_within = 0
            for i in range(len(gl)):
                for j in range(i + 1, len(gl)):
                    x, y = gl[i], gl[j]
                    if (min(x, y), max(x, y)) in trrust_edges:
                        n_within += 1
            if n_within > 0:
                edge_tests.append((fidx, "TRRUST_edges", n_within))
            tf_overlap = top_genes & trrust_tfs
            if len(tf_overlap) >= MIN_OVERLAP:
                tfs_bg = trrust_tfs & all_genes
                a = len(tf_overlap)
                b = len(top_genes) - a
                c = len(tfs_bg) - a
                d = background - a - b - c
                _, p = fisher_exact([[a, b], [c, d]], alternative="greater")
                pval_tests.append((fidx, "TRRUST_TF_enrichment", "transcription_factors", p, a))
    n_sig = 0
    annotated = set()
    if pval_tests:
        reject, _, _, _ = multipletests(np.array([t[3] for t in pval_tests]), alpha=ALPHA, method="fdr_bh")
        n_sig = int(reject.sum())
        annotated.update(t[0] for t, r in zip(pval_tests, reject) if r)
    annotated.update(t[0] for t in edge_tests)
    t2 = time.perf_counter()
    return {
        "catalog": str(catalog),
        "alive_features": len(alive),
        "background": background,
        "terms": {k: len(v) for k, v in ontologies.items()},
        "tests": len(pval_tests),
        "significant": n_sig,
        "annotated": len(annotated),
        "annotated_fraction": len(annotated) / max(len(alive), 1),
        "seconds_load": t1 - t0,
        "seconds_tests": t2 - t1,
        "seconds_total": t2 - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog", type=Path, required=True)
    ap.add_argument("--gene-sets", required=True)
    ap.add_argument("--trrust", type=Path)
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    res = run(a.catalog, [Path(p) for p in a.gene_sets.split(",") if p], a.trrust)
    print(json.dumps(res, indent=1))
    if a.json_out:
        a.json_out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
