#!/usr/bin/env python3
"""Write fake feature catalogs (the `scinterp analyze` layout) over the real Geneformer V2 gene universe, for
benchmarking `scinterp annotate` and the published annotation procedure on the same input.

Per catalog (one per layer, hooks blocks.{L}.hook_resid_post):
  catalog.json     format scinterp-catalog v1, hook, token_store (absolute), table_format
  genes.EXT        token, gene_id (Ensembl), symbol, n_positions, n_cells: `--background` genes drawn (seeded)
                   from the Geneformer V2 token dictionary, symbols from its gene_name_id dictionary (or, with
                   --gencode, from GENCODE v44's id -> name table)
  features.EXT     feature, alive (about 1 % dead), fire_count
  top_genes.EXT    feature, ranking (conditional_mean and mass), rank, token, gene_id, symbol, n_fired,
                   n_positions, mean_when_fired, mass, fire_rate: `--top-n` genes per alive feature, drawn at
                   random from the background, except that a `--planted` fraction of features take
                   `--planted-genes` of them from one random term of the given GMT files (the rest random).
                   The mass ranking, by `--rankings`:
                     shuffled (default; the files of earlier runs): the same genes in another order, but each
                       rank keeps the numbers of the conditional_mean row at that rank, so a gene's numbers
                       differ between its two rows (no row is shared; not a consistent catalog)
                     disjoint: `--top-n` other genes (none in the conditional_mean list), each with its own
                       numbers, ordered by mass: 2 × top-n distinct rows, the most a catalog can hold
                     same: the conditional_mean rows themselves (same genes, same numbers) ordered by mass, as
                       in a catalog whose two top lists hold the same genes
                     one: no mass rows (top-n rows by one ranking, as the published atlas shows)
                   Except with shuffled, mass = mean_when_fired × n_fired (the catalog's definition; shuffled
                   keeps mean_when_fired × fire_rate). Every choice writes the same conditional_mean genes (and the same other tables) for a seed;
                   the extra draws of `disjoint` come from a second generator seeded (seed, layer).
  feature_cells.EXT feature, cell, n_active, mean_when_active: `--active-cells` (20-80) random cells per alive
                   feature. With `--cell-types F` > 0 (default 0: the random cells of earlier runs), a fraction F
                   of the alive features draw their strongest cells from 1-3 labels (1, 2 or 3 with
                   probabilities 0.4 / 0.35 / 0.25): of the top ceil(10 %) of the feature's active cells (the
                   cells `scinterp annotate --obs-column cell_type` tests), a share `--cell-purity` (0.8) come
                   from those labels' cells and the rest at random, and they get the feature's highest
                   mean_when_active values; the other active cells are random. The rows of a feature are then
                   written strongest first (as `scinterp analyze` writes them). These draws come from a third
                   generator seeded (seed, layer, 1), so the other tables stay those of F = 0 for a seed.
  top_cells.EXT    with `--top-cells N` > 0 (default 0: no table): feature, rank (0-based), cell, cell_id
                   (the store's barcode), n_active, mean_when_active of each alive feature's N strongest cells
                   (as `scinterp analyze --top-cells N` writes them)
and one shared token store folder `store/` holding only `cells.tsv` (barcode, cell_type: `--labels` labels,
type_0 ... type_{N-1}, label i drawn with weight 2 - i / (N - 1): the first twice as common as the last).

    /tmp/pyenv/venv/bin/python bench/python/make_fake_catalogs.py --out DIR [--catalogs 18] [--features 4608]
        [--background 18000] [--top-n 20] [--planted 0.2] [--planted-genes 10] [--cells 2000]
        [--format parquet|tsv] [--gene-sets a.gmt,b.gmt] [--seed 0] [--data ../shared/data]
        [--rankings shuffled|disjoint|same|one] [--labels 8] [--active-cells 20,80] [--cell-types 0]
        [--cell-purity 0.8] [--top-cells 0]

The atlas benchmark with cell-type structure (BENCHMARKS.md, "Atlas at full scale", cell-type follow-up) used
`--rankings one --labels 40 --active-cells 50,400 --cell-types 0.6 --top-cells 10`.

Seeded: the same arguments write the same files. The Geneformer dictionaries are Python pickles of plain str/int
objects, read with `pickle` (a benchmark script on trusted reference files).
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd


def gene_universe(data: Path, gencode: bool) -> pd.DataFrame:
    """Token, Ensembl id and symbol of every Geneformer V2 gene token."""
    with open(data / "geneformer/v2/token_dictionary_gc104M.pkl", "rb") as f:
        tokens = pickle.load(f)
    if gencode:
        t = pd.read_csv(data / "orthologs/GENCODEv44_Gene_id2name.csv", header=None, names=["id", "name"])
        to_symbol = dict(zip(t["id"], t["name"]))
    else:
        with open(data / "geneformer/v2/gene_name_id_dict_gc104M.pkl", "rb") as f:
            name_to_id = pickle.load(f)
        to_symbol = {}
        for name, ens in sorted(name_to_id.items()):
            to_symbol.setdefault(ens, name)
    rows = [(int(tok), ens, to_symbol.get(ens, "")) for ens, tok in tokens.items() if str(ens).startswith("ENSG")]
    df = pd.DataFrame(rows, columns=["token", "gene_id", "symbol"]).sort_values("token").reset_index(drop=True)
    return df


def read_terms(paths: list[Path]) -> list[list[str]]:
    terms = []
    for p in paths:
        for line in p.read_text().splitlines():
            f = line.split("\t")
            if len(f) > 2:
                terms.append([g.split(",")[0].strip().upper() for g in f[2:] if g.strip()])
    return terms


def write(df: pd.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        df.to_parquet(path.with_suffix(".parquet"), index=False)
    else:
        df.to_csv(path.with_suffix(".tsv"), sep="\t", index=False)


def plant_cell_types(fc: pd.DataFrame, alive_ids: np.ndarray, n_cells_f: np.ndarray,
                     cells_of_label: list[np.ndarray], a: argparse.Namespace, layer: int) -> tuple[pd.DataFrame, int]:
    """Redraws the cells of a fraction of the features so that their strongest cells come mostly from 1-3
    labels (the module docstring says how); the other features keep their random cells. Rows come out per
    feature, strongest first."""
    rng = np.random.default_rng([a.seed, layer, 1])
    n_all = len(np.concatenate(cells_of_label))
    typed = rng.random(len(alive_ids)) < a.cell_types
    k_labels = rng.choice([1, 2, 3], size=len(alive_ids), p=[0.4, 0.35, 0.25])
    starts = np.concatenate([[0], np.cumsum(n_cells_f)])
    cell = fc["cell"].to_numpy().copy()
    mean = fc["mean_when_active"].to_numpy().copy()
    for r in np.flatnonzero(typed):
        n = int(n_cells_f[r])
        top = -(-n // 10)
        chosen = rng.choice(len(cells_of_label), size=min(int(k_labels[r]), len(cells_of_label)), replace=False)
        pool = np.concatenate([cells_of_label[c] for c in chosen])
        from_pool = min(int(rng.binomial(top, a.cell_purity)), len(pool))
        first = rng.choice(pool, size=from_pool, replace=False)
        rest = np.setdiff1d(np.arange(n_all), first, assume_unique=False)
        others = rng.choice(rest, size=n - from_pool, replace=False)
        # The pool cells first, then the others, so the pool cells get the highest values.
        lo_, hi_ = starts[r], starts[r + 1]
        cell[lo_:hi_] = np.concatenate([first, others])
        mean[lo_:hi_] = np.sort(mean[lo_:hi_])[::-1]
    fc = fc.assign(cell=cell, mean_when_active=mean)
    fc = fc.sort_values(["feature", "mean_when_active", "cell"], ascending=[True, False, True], kind="stable")
    return fc.reset_index(drop=True), int(typed.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--catalogs", type=int, default=18)
    ap.add_argument("--features", type=int, default=4608)
    ap.add_argument("--background", type=int, default=18000)
    ap.add_argument("--top-n", type=int, default=20)
    ap.add_argument("--planted", type=float, default=0.2)
    ap.add_argument("--planted-genes", type=int, default=10)
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--format", choices=["parquet", "tsv"], default="parquet")
    ap.add_argument("--gene-sets", default="")
    ap.add_argument("--gencode", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rankings", choices=["shuffled", "disjoint", "same", "one"], default="shuffled")
    ap.add_argument("--labels", type=int, default=8, help="cell labels in store/cells.tsv (default 8)")
    ap.add_argument("--active-cells", default="20,80",
                    help="LO,HI: active cells per alive feature, uniform in [LO, HI] (default 20,80)")
    ap.add_argument("--cell-types", type=float, default=0.0,
                    help="fraction of alive features whose strongest cells come mostly from 1-3 labels "
                         "(default 0: random cells, the files of earlier runs)")
    ap.add_argument("--cell-purity", type=float, default=0.8,
                    help="share of such a feature's top 10 %% cells drawn from its labels (default 0.8)")
    ap.add_argument("--top-cells", type=int, default=0,
                    help="write top_cells with this many cells per feature (default 0: no table)")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data")
    a = ap.parse_args()
    try:
        lo, hi = (int(x) for x in a.active_cells.split(","))
    except ValueError:
        ap.error(f"--active-cells {a.active_cells!r}: expected LO,HI (two integers)")
    if not 1 <= lo <= hi <= a.cells:
        ap.error(f"--active-cells {a.active_cells}: need 1 <= LO <= HI <= --cells ({a.cells})")
    if a.labels < 1:
        ap.error("--labels must be at least 1")
    if not 0.0 <= a.cell_types <= 1.0 or not 0.0 <= a.cell_purity <= 1.0:
        ap.error("--cell-types and --cell-purity are fractions in [0, 1]")

    rng = np.random.default_rng(a.seed)
    universe = gene_universe(a.data, a.gencode)
    pick = np.sort(rng.choice(len(universe), size=min(a.background, len(universe)), replace=False))
    genes = universe.iloc[pick].reset_index(drop=True)
    n_bg = len(genes)
    genes["n_positions"] = rng.integers(10, 100_000, size=n_bg)
    genes["n_cells"] = np.minimum(genes["n_positions"], a.cells)
    by_symbol = {s.upper(): i for i, s in enumerate(genes["symbol"]) if s}
    terms = []
    for t in read_terms([Path(p) for p in a.gene_sets.split(",") if p]):
        idx = sorted({by_symbol[g] for g in t if g in by_symbol})
        if 15 <= len(idx) <= 300:
            terms.append(np.array(idx))

    a.out.mkdir(parents=True, exist_ok=True)
    store = (a.out / "store").resolve()
    store.mkdir(exist_ok=True)
    labels = [f"type_{i}" for i in range(a.labels)]
    weights = np.linspace(2, 1, a.labels)
    cell_labels = rng.choice(labels, size=a.cells, p=weights / weights.sum())
    cells_of_label = [np.flatnonzero(cell_labels == lab) for lab in labels]
    barcodes = np.array([f"cell{i:06d}" for i in range(a.cells)])
    with open(store / "cells.tsv", "w") as f:
        f.write("barcode\tcell_type\n")
        for i, lab in enumerate(cell_labels):
            f.write(f"cell{i:06d}\t{lab}\n")

    tok = genes["token"].to_numpy()
    gid = genes["gene_id"].to_numpy()
    sym = genes["symbol"].to_numpy()
    for layer in range(a.catalogs):
        d = a.out / f"layer{layer:02d}"
        d.mkdir(exist_ok=True)
        hook = f"blocks.{layer}.hook_resid_post"
        alive = (rng.random(a.features) > 0.01).astype(np.int64)
        fire = np.where(alive == 1, rng.integers(100, 1_000_000, size=a.features), 0)
        write(pd.DataFrame({"feature": np.arange(a.features), "alive": alive, "fire_count": fire}),
              d / "features", a.format)
        alive_ids = np.flatnonzero(alive)
        n_top = a.top_n
        top_idx = np.empty((len(alive_ids), n_top), dtype=np.int64)
        planted = rng.random(len(alive_ids)) < a.planted
        for r in range(len(alive_ids)):
            chosen: list[int] = []
            if planted[r] and terms:
                t = terms[rng.integers(len(terms))]
                k = min(a.planted_genes, len(t))
                chosen = list(rng.choice(t, size=k, replace=False))
            seen = set(chosen)
            while len(chosen) < n_top:
                g = int(rng.integers(n_bg))
                if g not in seen:
                    seen.add(g)
                    chosen.append(g)
            rng.shuffle(chosen)
            top_idx[r] = chosen
        feats = np.repeat(alive_ids, n_top)
        flat = top_idx.ravel()
        n_pos = genes["n_positions"].to_numpy()[flat]
        n_fired = np.maximum(1, (n_pos * rng.random(len(flat))).astype(np.int64))
        mean = np.sort(rng.gamma(2.0, 1.0, size=(len(alive_ids), n_top)), axis=1)[:, ::-1].ravel()
        rate = n_fired / n_pos
        ranks = np.tile(np.arange(n_top), len(alive_ids))
        base = {
            "feature": feats, "rank": ranks, "token": tok[flat], "gene_id": gid[flat], "symbol": sym[flat],
            "n_fired": n_fired, "n_positions": n_pos, "mean_when_fired": mean, "mass": mean * rate,
            "fire_rate": rate,
        }
        if a.rankings != "shuffled":
            # The catalog's definition (a sum over the fired positions); the shuffled files keep mean × rate.
            base["mass"] = mean * n_fired
        cm = pd.DataFrame({**base, "ranking": "conditional_mean"})
        n_alive = len(alive_ids)
        if a.rankings == "shuffled":
            # The same genes in another order, the numbers left at their rank (the earlier files).
            order = np.argsort(-(mean * rate).reshape(n_alive, n_top), axis=1)
            mass_flat = (top_idx[np.arange(n_alive)[:, None], order]).ravel()
            ms = cm.copy()
            ms["ranking"] = "mass"
            ms["token"], ms["gene_id"], ms["symbol"] = tok[mass_flat], gid[mass_flat], sym[mass_flat]
        elif a.rankings == "same":
            # The conditional_mean rows, reordered by mass.
            order = np.argsort(-(mean * n_fired).reshape(n_alive, n_top), axis=1, kind="stable")
            rows = (np.arange(n_alive)[:, None] * n_top + order).ravel()
            ms = cm.iloc[rows].reset_index(drop=True)
            ms["ranking"] = "mass"
            ms["rank"] = ranks
        elif a.rankings == "disjoint":
            # top-n other genes per feature with their own numbers, ranked by mass.
            rng2 = np.random.default_rng([a.seed, layer])
            other = np.empty((n_alive, n_top), dtype=np.int64)
            for r in range(n_alive):
                seen = set(int(g) for g in top_idx[r])
                chosen = []
                while len(chosen) < n_top:
                    g = int(rng2.integers(n_bg))
                    if g not in seen:
                        seen.add(g)
                        chosen.append(g)
                other[r] = chosen
            oflat = other.ravel()
            o_pos = genes["n_positions"].to_numpy()[oflat]
            o_fired = np.maximum(1, (o_pos * rng2.random(len(oflat))).astype(np.int64))
            o_mean = rng2.gamma(2.0, 1.0, size=len(oflat))
            o_rate = o_fired / o_pos
            order = np.argsort(-(o_mean * o_fired).reshape(n_alive, n_top), axis=1, kind="stable")
            rows = (np.arange(n_alive)[:, None] * n_top + order).ravel()
            oflat, o_pos, o_fired, o_mean, o_rate = (x[rows] for x in (oflat, o_pos, o_fired, o_mean, o_rate))
            ms = pd.DataFrame({
                "feature": feats, "rank": ranks, "token": tok[oflat], "gene_id": gid[oflat], "symbol": sym[oflat],
                "n_fired": o_fired, "n_positions": o_pos, "mean_when_fired": o_mean, "mass": o_mean * o_fired,
                "fire_rate": o_rate, "ranking": "mass",
            })
        else:
            ms = cm.iloc[:0]
        top = pd.concat([cm, ms], ignore_index=True)[
            ["feature", "ranking", "rank", "token", "gene_id", "symbol", "n_fired", "n_positions",
             "mean_when_fired", "mass", "fire_rate"]]
        write(top, d / "top_genes", a.format)
        write(genes, d / "genes", a.format)
        n_cells_f = rng.integers(lo, hi + 1, size=len(alive_ids))
        fc_feat = np.repeat(alive_ids, n_cells_f)
        fc_cell = np.concatenate([rng.choice(a.cells, size=n, replace=False) for n in n_cells_f])
        fc = pd.DataFrame({
            "feature": fc_feat, "cell": fc_cell,
            "n_active": rng.integers(1, 50, size=len(fc_feat)),
            "mean_when_active": rng.gamma(2.0, 1.0, size=len(fc_feat)),
        })
        n_typed = 0
        if a.cell_types > 0:
            fc, n_typed = plant_cell_types(fc, alive_ids, n_cells_f, cells_of_label, a, layer)
        write(fc, d / "feature_cells", a.format)
        if a.top_cells > 0:
            top_c = fc.sort_values(["feature", "mean_when_active", "cell"], ascending=[True, False, True],
                                   kind="stable")
            top_c = top_c.groupby("feature", sort=True).head(a.top_cells).copy()
            top_c.insert(1, "rank", top_c.groupby("feature").cumcount())
            top_c.insert(3, "cell_id", barcodes[top_c["cell"].to_numpy()])
            write(top_c.reset_index(drop=True), d / "top_cells", a.format)
        (d / "catalog.json").write_text(json.dumps({
            "format": "scinterp-catalog", "format_version": 1, "hook": hook, "token_store": str(store),
            "table_format": a.format, "generator": "bench/python/make_fake_catalogs.py", "seed": a.seed,
        }, indent=1))
        typed = f", {n_typed} with cell-type structure" if a.cell_types > 0 else ""
        print(f"{d}: {len(alive_ids)} alive features, {int(planted.sum())} planted{typed}, {n_bg} background "
              "genes", flush=True)


if __name__ == "__main__":
    main()
