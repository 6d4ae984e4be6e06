"""Baselines for bench/compare/export_paul15: the exported tools' calls against scanpy DPT, PCA-10 +
readout, raw panel + readout and logistic regression on log1p-CP10k, on the same cells and split.

usage: python export_paul15.py --cells paul15.h5ad.gz --tool NAME=DIR:CALLS.tsv [--tool ...] [--root 840]
       [--labels paul15_clusters] [--stage-order 7MEP,6Ery,...]

Cell types: every method is trained on the tool's training cells and scored on its held-out cells (the
card's metrics.heldout_cell_names): accuracy, balanced accuracy, macro-F1. Pseudotime: Spearman of each
method's pseudotime with the stage rank over all cells whose label is in --stage-order (DPT is fitted on
all cells without labels, as the tools' ordering is). PCA-10 / raw panel + readout use the tools' own
recipe in Python: root-anchored kNN shortest-path ordering (k = 15) on the representation, then a linear
readout fitted on the training cells. Prints one JSON object.
"""
import argparse
import gzip
import json
import pathlib
import shutil
import tempfile
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra
from scipy.stats import rankdata, spearmanr


def log1p_cp10k(x):
    x = sp.csr_matrix(x, dtype=np.float64)
    tot = np.asarray(x.sum(axis=1)).ravel()
    tot[tot == 0] = 1
    y = sp.diags(1e4 / tot) @ x
    y.data = np.log1p(y.data)
    return y.tocsr()


def ordering(z, root, k=15):
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(z)
    d, idx = nn.kneighbors(z)
    n = z.shape[0]
    rows = np.repeat(np.arange(n), k)
    g = sp.csr_matrix((d[:, 1:].ravel(), (rows, idx[:, 1:].ravel())), shape=(n, n))
    g = g.maximum(g.T)
    dist = dijkstra(g, indices=root, directed=False)
    dist[~np.isfinite(dist)] = np.inf
    r = rankdata(np.where(np.isfinite(dist), dist, np.nanmax(dist[np.isfinite(dist)]) + 1), method="average") - 1
    return r / (n - 1)


def readout(z, target, train):
    a = np.c_[z[train], np.ones(len(train))]
    coef, *_ = np.linalg.lstsq(a, target[train], rcond=None)
    return np.c_[z, np.ones(z.shape[0])] @ coef


def classify(xtr, ytr, xte, yte):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler(with_mean=not sp.issparse(xtr)).fit(xtr)
    t0 = time.perf_counter()
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(xtr), ytr)
    fit_s = time.perf_counter() - t0
    p = clf.predict(scaler.transform(xte))
    n_params = clf.coef_.size + clf.intercept_.size
    return {
        "accuracy": accuracy_score(yte, p),
        "balanced_accuracy": balanced_accuracy_score(yte, p),
        "macro_f1": f1_score(yte, p, average="macro"),
        "parameters": int(n_params),
        "fit_seconds": fit_s,
    }


def stage_rho(pt, labels, order):
    rank = {s: i for i, s in enumerate(order)}
    m = np.array([l in rank for l in labels])
    return float(spearmanr(pt[m], [rank[l] for l in labels[m]]).correlation), int(m.sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", required=True)
    ap.add_argument("--tool", action="append", default=[])
    ap.add_argument("--root", type=int, default=840)
    ap.add_argument("--labels", default="paul15_clusters")
    ap.add_argument("--stage-order", default="7MEP,6Ery,5Ery,4Ery,3Ery,2Ery,1Ery")
    args = ap.parse_args()
    import anndata
    import scanpy as sc

    tmp = tempfile.NamedTemporaryFile(suffix=".h5ad")
    with gzip.open(args.cells) as src:
        shutil.copyfileobj(src, tmp)
    tmp.flush()
    ad = anndata.read_h5ad(tmp.name)
    labels = ad.obs[args.labels].astype(str).to_numpy()
    order = args.stage_order.split(",")
    x = log1p_cp10k(ad.X)
    names = ad.obs_names.to_numpy()
    out = {"cells": int(ad.n_obs), "genes": int(ad.n_vars), "methods": {}}

    tools = []
    for spec in args.tool:
        name, rest = spec.split("=", 1)
        tool_dir, calls = rest.split(":", 1)
        card = json.loads((pathlib.Path(tool_dir) / "card.json").read_text())
        tools.append((name, pathlib.Path(tool_dir), card, calls))
    card0 = tools[0][2]
    held = set(card0["metrics"]["heldout_cell_names"])
    test = np.array([n in held for n in names])
    train_idx, test_idx = np.where(~test)[0], np.where(test)[0]
    panel_ids = [g["id"] for g in card0["panel"]]
    human = ad.var["human_symbol"].astype(str).to_numpy() if "human_symbol" in ad.var else ad.var_names.to_numpy()
    pos = {h: i for i, h in reversed(list(enumerate(human)))}
    panel_cols = [pos[g] for g in panel_ids if g in pos]

    for name, tool_dir, card, calls in tools:
        import pandas as pd

        c = pd.read_csv(calls, sep="\t", index_col=0)
        c.index = c.index.astype(str)
        c = c.loc[names]
        pred = c["cell_type"].astype(str).to_numpy()
        from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

        rho, n_stage = stage_rho(c["pseudotime"].to_numpy(), labels, order)
        size = sum((tool_dir / f).stat().st_size for f in ["tool.onnx"])
        out["methods"][name] = {
            "accuracy": accuracy_score(labels[test], pred[test]),
            "balanced_accuracy": balanced_accuracy_score(labels[test], pred[test]),
            "macro_f1": f1_score(labels[test], pred[test], average="macro"),
            "stage_spearman": rho,
            "stage_cells": n_stage,
            "onnx_bytes": size,
            "safetensors_bytes": (tool_dir / "tool.safetensors").stat().st_size,
            "card_heldout": card["metrics"]["cell_type"],
        }

    # DPT, scanpy's recipe on log1p-CP10k: HVGs, PCA, neighbours, diffusion map, DPT from the root.
    t0 = time.perf_counter()
    a2 = anndata.AnnData(X=x.copy(), obs=ad.obs.copy())
    sc.pp.highly_variable_genes(a2, n_top_genes=1000)
    sc.pp.pca(a2, n_comps=50, mask_var="highly_variable")
    sc.pp.neighbors(a2, n_neighbors=15)
    sc.tl.diffmap(a2)
    a2.uns["iroot"] = args.root
    sc.tl.dpt(a2)
    dpt = a2.obs["dpt_pseudotime"].to_numpy()
    rho, n_stage = stage_rho(dpt, labels, order)
    out["methods"]["scanpy DPT (root %d)" % args.root] = {"stage_spearman": rho, "stage_cells": n_stage, "seconds": time.perf_counter() - t0}

    # PCA-10 + readout, raw panel + readout, logistic regression on all genes.
    from sklearn.decomposition import PCA

    pca = PCA(n_components=10, random_state=0).fit(x[train_idx].toarray())
    z = pca.transform(x.toarray())
    res = classify(z[train_idx], labels[train_idx], z[test_idx], labels[test_idx])
    res["stage_spearman"], res["stage_cells"] = stage_rho(readout(z, ordering(z, args.root), train_idx), labels, order)
    res["bytes"] = int(pca.components_.size * 4 + pca.mean_.size * 4)
    out["methods"]["PCA-10 + readout"] = res
    xp = x[:, panel_cols].toarray()
    res = classify(xp[train_idx], labels[train_idx], xp[test_idx], labels[test_idx])
    res["stage_spearman"], res["stage_cells"] = stage_rho(readout(xp, ordering(xp, args.root), train_idx), labels, order)
    out["methods"][f"raw panel ({len(panel_cols)} genes) + readout"] = res
    res = classify(x[train_idx], labels[train_idx], x[test_idx], labels[test_idx])
    out["methods"]["logistic regression, log1p-CP10k all genes"] = res
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
