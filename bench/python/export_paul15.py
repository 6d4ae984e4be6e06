"""bench/compare/export_paul15: exported tools against DPT, Palantir, CellTypist and simple baselines on the
embedded real cells (paul15 for pseudotime and cell types, pbmc68k for cell types), plus the tools' speed
against "frozen model forward + MLP probe". One run, one JSON object and one Markdown table.

usage: python export_paul15.py --scinterp BIN --assets models/assets --work DIR [--folds 5] [--hvg 500]
       [--rank 64] [--max-reference-cells 500] [--threads 2] [--json-out FILE] [--table-out FILE]

Protocol (the same folds for every method):
- Cell types: stratified k-fold CV (sklearn StratifiedKFold, shuffled, seed 0) over each data set's labels;
  the paul15 root cell (840) is kept in every training fold (it anchors the tools' ordering), so it is never
  scored. Per fold, each tool is exported by `scinterp export operator` from the training cells only (a
  .h5ad of those cells; `--heldout 0`, which still keeps one cell per label out of the fits) and applied by
  `scinterp apply` to the test cells, which it never saw. Baselines are trained on the same training cells.
  Accuracy, balanced accuracy and macro-F1 on the test cells, mean (± sd) over folds.
- Pseudotime (paul15): Spearman of each method's pseudotime with the stage rank, on each fold's test cells
  whose label is in the lineage, mean over folds. The inductive methods (tools, PCA-10 / raw panel +
  readout) predict the test cells; DPT and Palantir are fitted once on all cells without labels (that is how
  they are used) and scored on the same test subsets. Lineages: erythroid 7MEP → 6Ery → … → 1Ery (stage
  ranks), and the coarse two-step myeloid ones GMP (9GMP, 10GMP) → Mo (14Mo, 15Mo) and GMP → Neu (16Neu,
  17Neu). "all cells" columns: the same Spearman over all cells (DPT's 0.83 in the issue is this number).
- Sizes: bytes of what must ship to predict new cells (f32 parameters; the tool's .onnx file; CellTypist's
  model pickle; the frozen model's safetensors + the probe for the probe).
- Speed: `scinterp apply` end to end (read .h5ad, normalise, tool, write TSV) on paul15 tiled to
  --tile × 2,730 cells; the tool's ONNX in onnxruntime on the panel matrix (compute only); against the
  frozen model: `scinterp tokenize` + `scinterp forward` (its `forward_seconds`) + the MLP probe's predict,
  on all 2,730 paul15 cells, same thread count. The tool and the two frozen models are timed in turn
  --speed-repeats times (default 3) and the medians kept. `--speed-only` runs just this part.
"""
import argparse
import gzip
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra
from scipy.stats import rankdata, spearmanr

ERY = ["7MEP", "6Ery", "5Ery", "4Ery", "3Ery", "2Ery", "1Ery"]
LINEAGES = {
    "erythroid": [[s] for s in ERY],
    "GMP→Mo": [["9GMP", "10GMP"], ["14Mo", "15Mo"]],
    "GMP→Neu": [["9GMP", "10GMP"], ["16Neu", "17Neu"]],
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_h5ad(path):
    import anndata

    with tempfile.NamedTemporaryFile(suffix=".h5ad") as tmp:
        with gzip.open(path) as src:
            shutil.copyfileobj(src, tmp)
        tmp.flush()
        return anndata.read_h5ad(tmp.name)


def gene_ids(ad):
    """The ids the tools' panels use: human symbols for the mouse cells (scinterp maps them through the
    ortholog table; the file's human_symbol column is the same first-ortholog mapping), else var names."""
    col = ad.var["human_symbol"] if "human_symbol" in ad.var else ad.var_names
    return np.asarray(col).astype(str)


def log1p_cp10k(x):
    x = sp.csr_matrix(x, dtype=np.float64)
    tot = np.asarray(x.sum(axis=1)).ravel()
    tot[tot == 0] = 1
    y = sp.diags(1e4 / tot) @ x
    y.data = np.log1p(y.data)
    return y.tocsr()


def ordering(z, root, k=15):
    """The tools' pseudotime target in Python: ranks of the shortest-path distance from the root over the
    symmetrised kNN graph of z, scaled to [0, 1] (unreachable cells last)."""
    from sklearn.neighbors import NearestNeighbors

    d, idx = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    n = z.shape[0]
    g = sp.csr_matrix((d[:, 1:].ravel(), (np.repeat(np.arange(n), k), idx[:, 1:].ravel())), shape=(n, n))
    dist = dijkstra(g.maximum(g.T), indices=root, directed=False)
    fin = np.isfinite(dist)
    dist[~fin] = dist[fin].max() + 1
    return (rankdata(dist) - 1) / (n - 1)


def readout_pseudotime(ztr, zte, root_in_train, k=15):
    """Root-anchored ordering on the training cells, linear readout fitted there, applied to the test cells."""
    target = ordering(ztr, root_in_train, k)
    a = np.c_[ztr, np.ones(ztr.shape[0])]
    coef, *_ = np.linalg.lstsq(a, target, rcond=None)
    return np.c_[zte, np.ones(zte.shape[0])] @ coef, coef.size


def cls_metrics(yte, pred):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(yte, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(yte, pred)),
        "macro_f1": float(f1_score(yte, pred, average="macro")),
    }


def logreg(xtr, ytr, xte):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if sp.issparse(xtr):  # log1p-CP10k as it is (CellTypist is the scaled variant)
        clf = LogisticRegression(max_iter=2000, C=1.0).fit(xtr, ytr)
        return clf.predict(xte), int(clf.coef_.size + clf.intercept_.size)
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(xtr), ytr)
    return clf.predict(scaler.transform(xte)), int(clf.coef_.size + clf.intercept_.size + 2 * xtr.shape[1])


def lineage_rhos(pt, labels):
    """Spearman of pt with the stage rank, per lineage, over the cells of that lineage."""
    out = {}
    for name, groups in LINEAGES.items():
        rank = {s: i for i, g in enumerate(groups) for s in g}
        m = np.array([l in rank for l in labels])
        if m.sum() >= 3 and len({rank[l] for l in labels[m]}) >= 2:
            out[name] = float(spearmanr(pt[m], [rank[l] for l in labels[m]]).correlation)
        else:
            out[name] = float("nan")
    return out


class Acc:
    """Per-method collection of per-fold numbers."""

    def __init__(self):
        self.m = {}

    def add(self, method, key, value):
        self.m.setdefault(method, {}).setdefault(key, []).append(value)

    def summary(self):
        out = {}
        for method, d in self.m.items():
            out[method] = {}
            for k, v in d.items():
                if isinstance(v[0], (int, float, np.floating, np.integer)):
                    a = np.asarray(v, dtype=float)
                    out[method][k] = {"mean": float(np.nanmean(a)), "sd": float(np.nanstd(a)), "folds": a.tolist()}
                else:
                    out[method][k] = v
        return out


def run(cmd, **kw):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr[-3000:]}")
    return p.stdout, dt


def tool_variants(assets, rank):
    """(name, model folder, shuffled-control seed, adaptor): per model, the supervised-adaptor tool, its
    shuffled-weight control, and the unsupervised-adaptor tool."""
    out = []
    for model, label in [("scgpt", "scGPT"), ("geneformer", "Geneformer")]:
        for control, adaptor in [(None, "supervised"), (7, "supervised"), (None, "unsupervised")]:
            name = f"tool: {label} drift rank-{rank}, {adaptor} adaptor" + (", SHUFFLED-WEIGHT CONTROL" if control else "")
            out.append((name, assets / model, control, adaptor))
    return out


def record_pt(ds, acc, method, test, pt, yte):
    """Per-fold lineage Spearman on the test cells, and the out-of-fold pseudotime for the pooled one."""
    for lin, r in lineage_rhos(pt, yte).items():
        acc.add(method, f"{ds['name']}.rho.{lin}", r)
    ds.setdefault("oof", {}).setdefault(method, np.full(ds["adata"].n_obs, np.nan))[test] = pt


def bench_dataset(ds, args, acc, sizes, timings):
    """CV of every method on one data set; fills acc (per-fold numbers) and sizes."""
    from sklearn.model_selection import StratifiedKFold

    ad = ds["adata"]
    labels = ad.obs[ds["labels"]].astype(str).to_numpy()
    names = ad.obs_names.to_numpy()
    x = log1p_cp10k(ad.X)
    root = ds["root"]
    idx_all = np.arange(ad.n_obs)
    cand = idx_all[idx_all != root]
    skf = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=0)
    work = args.work / ds["name"]
    work.mkdir(parents=True, exist_ok=True)
    key = ds["name"]
    for fold, (tr_c, te_c) in enumerate(skf.split(cand, labels[cand])):
        if fold >= args.max_folds:
            break
        train = np.sort(np.r_[cand[tr_c], root])
        test = np.sort(cand[te_c])
        root_tr = int(np.searchsorted(train, root))
        ytr, yte = labels[train], labels[test]
        log(f"{key} fold {fold + 1}/{args.folds}: {len(train)} training, {len(test)} test cells")
        ftr, fte = work / f"fold{fold}_train.h5ad", work / f"fold{fold}_test.h5ad"
        ad[train].copy().write_h5ad(ftr)
        ad[test].copy().write_h5ad(fte)
        orth = ["--orthologs", str(ds["orthologs"])] if ds.get("orthologs") else []
        panel_cols = None
        for name, model_dir, control, adaptor in tool_variants(args.assets, args.rank):
            tdir = work / f"fold{fold}_{model_dir.name}_{adaptor}{'_control' if control else ''}"
            cmd = [args.scinterp, "-q", "--threads", str(args.threads), "export", "operator", "--model", str(model_dir),
                   "--input", str(ftr), *orth, "--labels", ds["labels"], "--root", str(names[root]),
                   "--hvg", str(args.hvg), "--construction", "attention", "--drift", "auto", "--rank", str(args.rank),
                   "--max-len", "256", "--max-reference-cells", str(args.max_reference_cells), "--heldout", "0",
                   "--adaptor", adaptor,
                   "--out", str(tdir), "--overwrite", "--json"]
            if control is not None:
                cmd += ["--shuffled-control", str(control)]
            _, dt_export = run(cmd)
            log(f"  export {name}: {dt_export:.1f} s")
            calls = tdir.with_suffix(".tsv")
            run([args.scinterp, "-q", "--threads", str(args.threads), "apply", "--tool", str(tdir), "--input", str(fte),
                 *orth, "--out", str(calls), "--overwrite", "--json"])
            import pandas as pd

            c = pd.read_csv(calls, sep="\t", index_col=0)
            c.index = c.index.astype(str)
            c = c.loc[names[test]]
            for k, v in cls_metrics(yte, c["cell_type"].astype(str).to_numpy()).items():
                acc.add(name, f"{key}.{k}", v)
            if ds.get("pseudotime"):
                record_pt(ds, acc, name, test, c["pseudotime"].to_numpy(), yte)
            acc.add(name, f"{key}.export_seconds", dt_export)
            sizes.setdefault(name, {})[key] = (tdir / "tool.onnx").stat().st_size
            if panel_cols is None and control is None:
                card = json.loads((tdir / "card.json").read_text())
                ids = [g["id"] for g in card["panel"]]
                pos = {g: i for i, g in reversed(list(enumerate(gene_ids(ad))))}
                panel_cols = [pos[g] for g in ids if g in pos]
                if len(panel_cols) < len(ids):
                    log(f"raw panel: {len(ids) - len(panel_cols)} of {len(ids)} panel genes not found")

        t_base = time.perf_counter()
        xtr, xte = x[train], x[test]
        # Logistic regression on log1p-CP10k, all genes.
        m = "logistic regression, log1p-CP10k all genes"
        pred, n_par = logreg(xtr, ytr, xte)
        for k, v in cls_metrics(yte, pred).items():
            acc.add(m, f"{key}.{k}", v)
        sizes.setdefault(m, {})[key] = 4 * n_par
        log(f"  logistic regression: {time.perf_counter() - t_base:.1f} s")
        # PCA-10 + readout.
        from sklearn.decomposition import PCA

        m = "PCA-10 + readout"
        pca = PCA(n_components=10, random_state=0).fit(xtr.toarray())
        ztr, zte = pca.transform(xtr.toarray()), pca.transform(xte.toarray())
        pred, n_par = logreg(ztr, ytr, zte)
        for k, v in cls_metrics(yte, pred).items():
            acc.add(m, f"{key}.{k}", v)
        pt, n_ro = readout_pseudotime(ztr, zte, root_tr)
        if ds.get("pseudotime"):
            record_pt(ds, acc, m, test, pt, yte)
        sizes.setdefault(m, {})[key] = 4 * (pca.components_.size + pca.mean_.size + n_par + n_ro)
        # Raw panel (the scGPT tool's panel of this fold) + readout.
        m = f"raw panel ({args.hvg} HVG) + readout"
        ptr, pte = xtr[:, panel_cols].toarray(), xte[:, panel_cols].toarray()
        pred, n_par = logreg(ptr, ytr, pte)
        for k, v in cls_metrics(yte, pred).items():
            acc.add(m, f"{key}.{k}", v)
        pt, n_ro = readout_pseudotime(ptr, pte, root_tr)
        if ds.get("pseudotime"):
            record_pt(ds, acc, m, test, pt, yte)
        sizes.setdefault(m, {})[key] = 4 * (n_par + n_ro)
        log(f"  PCA / raw panel: {time.perf_counter() - t_base:.1f} s")
        # CellTypist, trained on this fold (its default: logistic regression on log1p-CP10k, all genes).
        m = "CellTypist (trained on the fold)"
        try:
            import anndata
            import celltypist

            atr = anndata.AnnData(X=xtr.astype(np.float32), obs={"label": ytr})
            atr.var_names = ad.var_names.astype(str)
            ate = anndata.AnnData(X=xte.astype(np.float32))
            ate.var_names = atr.var_names
            ct = celltypist.train(atr, labels="label", n_jobs=args.threads, check_expression=False)
            pred = celltypist.annotate(ate, model=ct, majority_voting=False).predicted_labels["predicted_labels"]
            for k, v in cls_metrics(yte, pred.astype(str).to_numpy()).items():
                acc.add(m, f"{key}.{k}", v)
            mp = work / "celltypist.pkl"
            ct.write(str(mp))
            sizes.setdefault(m, {})[key] = mp.stat().st_size
        except Exception as e:  # reported, not fatal
            acc.add(m, f"{key}.error", repr(e))
        log(f"  CellTypist: {time.perf_counter() - t_base:.1f} s")
        # Frozen model embedding + MLP probe.
        for model, emb in ds["embeddings"].items():
            m = f"frozen {model} embedding + MLP probe"
            from sklearn.neural_network import MLPClassifier
            from sklearn.preprocessing import StandardScaler

            sc_ = StandardScaler().fit(emb[train])
            # Integer classes: sklearn 1.7's early-stopping score fails on string labels.
            classes, ytr_i = np.unique(ytr, return_inverse=True)
            mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=500, early_stopping=True, random_state=0)
            mlp.fit(sc_.transform(emb[train]), ytr_i)
            pred = classes[mlp.predict(sc_.transform(emb[test]))]
            for k, v in cls_metrics(yte, pred).items():
                acc.add(m, f"{key}.{k}", v)
            n_par = sum(w.size for w in mlp.coefs_) + sum(b.size for b in mlp.intercepts_)
            sizes.setdefault(m, {})[key] = (args.assets / model / "model.safetensors").stat().st_size + 4 * n_par
            ds.setdefault("probes", {})[model] = (sc_, mlp)

        log(f"  MLP probes: {time.perf_counter() - t_base:.1f} s")
        if ds.get("pseudotime"):
            for m, pt in ds["transductive"].items():
                for lin, r in lineage_rhos(pt[test], yte).items():
                    acc.add(m, f"{key}.rho.{lin}", r)


def transductive(ad, labels, root, threads):
    """DPT (scanpy) and Palantir on all cells, no labels; returns {method: pseudotime}, timings."""
    import anndata
    import scanpy as sc

    out, secs = {}, {}
    x = log1p_cp10k(ad.X)
    t0 = time.perf_counter()
    a2 = anndata.AnnData(X=x.copy())
    sc.pp.highly_variable_genes(a2, n_top_genes=1000)
    sc.pp.pca(a2, n_comps=50, mask_var="highly_variable", random_state=0)
    sc.pp.neighbors(a2, n_neighbors=15, random_state=0)
    sc.tl.diffmap(a2)
    a2.uns["iroot"] = root
    sc.tl.dpt(a2)
    out[f"scanpy DPT (root {root})"] = a2.obs["dpt_pseudotime"].to_numpy()
    secs[f"scanpy DPT (root {root})"] = time.perf_counter() - t0
    try:
        import palantir

        t0 = time.perf_counter()
        a3 = anndata.AnnData(X=x.copy())
        a3.obs_names = [f"c{i}" for i in range(a3.n_obs)]
        sc.pp.highly_variable_genes(a3, n_top_genes=1000)
        sc.pp.pca(a3, n_comps=50, mask_var="highly_variable", random_state=0)
        palantir.utils.run_diffusion_maps(a3, n_components=10)
        palantir.utils.determine_multiscale_space(a3)
        palantir.core.run_palantir(a3, early_cell=f"c{root}", num_waypoints=500, n_jobs=threads, seed=0)
        out[f"Palantir (early cell {root})"] = a3.obs["palantir_pseudotime"].to_numpy()
        secs[f"Palantir (early cell {root})"] = time.perf_counter() - t0
    except Exception as e:
        log(f"Palantir failed: {e!r}")
        secs["Palantir error"] = repr(e)
    return out, secs


def frozen_forward(args, ds, model):
    """`scinterp tokenize` + `scinterp forward` of every cell for `model`: (the last layer's hook tensor file,
    tokenize wall seconds, forward wall seconds, the forward's own summary)."""
    orth = ["--orthologs", str(ds["orthologs"])] if ds.get("orthologs") else []
    tok = args.work / ds["name"] / f"tokens_{model}"
    if model == "scgpt":
        kind = ["--model-kind", "scgpt", "--vocab", str(args.assets / "scgpt"), "--seed", "19"]
    else:
        kind = ["--model-kind", "geneformer-v2", "--dictionaries", str(args.assets / "geneformer"), "--gene-ids", "symbol"]
    _, dt_tok = run([args.scinterp, "-q", "--threads", str(args.threads), "tokenize", "--input", str(ds["path"]), *kind,
                     *orth, "--max-len", "256", "--out", str(tok), "--overwrite", "--json"])
    f = args.work / ds["name"] / f"forward_{model}.safetensors"
    if f.exists():
        f.unlink()
    so, dt_fwd = run([args.scinterp, "-q", "--threads", str(args.threads), "forward", "--model", str(args.assets / model),
                      "--input", str(tok), "--hooks", "blocks.2.hook_resid_post", "--out", str(f), "--json"])
    return f, dt_tok, dt_fwd, json.loads(so.strip().splitlines()[-1])


def embeddings(args, ds, timings):
    """Frozen-model cell embeddings of every cell (scGPT: its cell embedding; Geneformer: the mean of the last
    layer's gene positions), with the time of tokenize + forward."""
    from safetensors.numpy import load_file

    out = {}
    for model in ["scgpt", "geneformer"]:
        f, dt_tok, dt_fwd, summ = frozen_forward(args, ds, model)
        t = load_file(str(f))
        h = t["blocks.2.hook_resid_post"]
        lens = t["lengths"].astype(int)
        # The mean of the last layer over the gene positions (Geneformer: <cls>, genes, <eos>; scGPT: <cls>,
        # genes). A probe on scGPT's own cell embedding (its <cls> state) did worse on these small models.
        end = 1 if model == "geneformer" else 0
        e = np.stack([h[i, 1: lens[i] - end].mean(axis=0) for i in range(h.shape[0])])
        f.unlink()
        out[model] = e.astype(np.float64)
        timings[f"frozen {model}"] = {"cells": int(e.shape[0]), "tokenize_wall_s": dt_tok, "forward_wall_s": dt_fwd,
                                      "forward_seconds": summ.get("forward_seconds"), "tokens": summ.get("tokens")}
    return out


def speed(args, ds, timings):
    """Tool inference vs frozen forward + MLP probe on paul15."""
    import anndata
    import onnxruntime as ort

    ad = ds["adata"]
    work = args.work / ds["name"]
    tool = work / "fold0_scgpt_supervised"
    orth = ["--orthologs", str(ds["orthologs"])]
    # scinterp apply end to end, on all cells and on a tiled copy.
    so, dt = run([args.scinterp, "-q", "--threads", str(args.threads), "apply", "--tool", str(tool), "--input", str(ds["path"]),
                  *orth, "--out", str(work / "speed.tsv"), "--overwrite", "--json"])
    timings["apply_all_cells"] = {"cells": int(ad.n_obs), "wall_s": dt, "report": json.loads(so.strip().splitlines()[-1])}
    big = anndata.AnnData(X=sp.vstack([ad.X] * args.tile).tocsr(), var=ad.var.copy())
    big.obs_names = [f"t{i}" for i in range(big.n_obs)]
    fbig = work / "tiled.h5ad"
    big.write_h5ad(fbig)
    # The tool and the frozen models timed in turn, --speed-repeats times, medians kept: on a shared machine
    # the load changes over minutes, and alternating exposes both sides to the same load.
    tool_runs, frozen_runs = [], {"scgpt": [], "geneformer": []}
    for _ in range(args.speed_repeats):
        so, dt = run([args.scinterp, "-q", "--threads", str(args.threads), "apply", "--tool", str(tool), "--input", str(fbig),
                      *orth, "--out", str(work / "speed_tiled.tsv"), "--overwrite", "--json"])
        tool_runs.append((dt, json.loads(so.strip().splitlines()[-1])))
        for model in frozen_runs:
            f, dt_tok, dt_fwd, summ = frozen_forward(args, ds, model)
            f.unlink()
            frozen_runs[model].append((dt_tok, summ.get("forward_seconds")))
    tool_runs.sort(key=lambda r: r[0])
    dt, report = tool_runs[len(tool_runs) // 2]
    timings["apply_tiled"] = {"cells": int(big.n_obs), "wall_s": dt, "cells_per_min": big.n_obs / dt * 60,
                              "report": report, "all_wall_s": [r[0] for r in tool_runs]}
    for model, runs in frozen_runs.items():
        runs.sort(key=lambda r: r[0] + r[1])
        dt_tok, fwd = runs[len(runs) // 2]
        timings[f"frozen {model}"].update({"tokenize_wall_s": dt_tok, "forward_seconds": fwd,
                                           "all_tokenize_forward_s": [r[0] + r[1] for r in runs]})
    fbig.unlink()
    (work / "speed_tiled.tsv").unlink()
    # The ONNX alone (onnxruntime, same threads) on the panel matrix of all cells.
    card = json.loads((tool / "card.json").read_text())
    pos = {g: i for i, g in reversed(list(enumerate(gene_ids(ad))))}
    cols = [pos[g["id"]] for g in card["panel"]]
    xp = log1p_cp10k(ad.X)[:, cols].toarray().astype(np.float32)
    so_ = ort.SessionOptions()
    so_.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(tool / "tool.onnx"), so_, providers=["CPUExecutionProvider"])
    sess.run(None, {"expression": xp})
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        sess.run(None, {"expression": xp})
    dt = (time.perf_counter() - t0) / reps
    timings["tool_onnxruntime"] = {"cells": int(xp.shape[0]), "seconds": dt, "cells_per_s": xp.shape[0] / dt}
    # Probe predict on all cells (the fold-5 probes; any fold's probe costs the same).
    for model, (sc_, mlp) in ds["probes"].items():
        e = ds["embeddings"][model]
        t0 = time.perf_counter()
        for _ in range(reps):
            mlp.predict(sc_.transform(e))
        timings[f"frozen {model}"]["probe_predict_s"] = (time.perf_counter() - t0) / reps


def speed_only(args, ds, timings):
    """The speed part alone: embeddings, probes fitted on all cells, then `speed`."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    tool = args.work / ds["name"] / "fold0_scgpt_supervised"
    if not (tool / "tool.onnx").exists():
        raise SystemExit(f"--speed-only needs {tool} from an earlier full run with the same --work")
    ds["adata"] = read_h5ad(ds["path"])
    labels = ds["adata"].obs[ds["labels"]].astype(str).to_numpy()
    ds["embeddings"] = embeddings(args, ds, timings)
    classes, y = np.unique(labels, return_inverse=True)
    for model, emb in ds["embeddings"].items():
        sc_ = StandardScaler().fit(emb)
        mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=500, early_stopping=True, random_state=0)
        mlp.fit(sc_.transform(emb), y)
        ds.setdefault("probes", {})[model] = (sc_, mlp)
    log("speed")
    speed(args, ds, timings)


def speed_summary(t):
    """Cells/s of the tool and of frozen forward + probe; end to end and compute only."""
    tool_e2e = t["apply_tiled"]["cells"] / t["apply_tiled"]["wall_s"]
    tool_compute = t["tool_onnxruntime"]["cells_per_s"]
    out = {"tool end to end (scinterp apply, tiled paul15) cells/s": tool_e2e,
           "tool end to end cells/min": tool_e2e * 60,
           "tool compute (scinterp apply compute_seconds) cells/s":
               t["apply_tiled"]["cells"] / t["apply_tiled"]["report"]["compute_seconds"],
           "tool compute (onnxruntime) cells/s": tool_compute}
    for model in ["scgpt", "geneformer"]:
        f = t.get(f"frozen {model}")
        if not f:
            continue
        e2e = f["cells"] / (f["tokenize_wall_s"] + f["forward_seconds"] + f["probe_predict_s"])
        comp = f["cells"] / (f["forward_seconds"] + f["probe_predict_s"])
        out[f"frozen {model} + probe end to end (tokenize + forward + probe) cells/s"] = e2e
        out[f"frozen {model} + probe compute (forward + probe) cells/s"] = comp
        out[f"ratio end to end, {model}"] = tool_e2e / e2e
        out[f"ratio compute, {model}"] = tool_compute / comp
    return out


def fmt(d, key, sd=False):
    v = d.get(key)
    if v is None:
        return "–"
    if isinstance(v, dict):
        s = f"{v['mean']:.3f}"
        return s + (f" ± {v['sd']:.3f}" if sd else "")
    return f"{v:.3f}"


def table(summary, sizes, all_rho, order):
    cols = ["paul15 acc", "paul15 bal. acc", "paul15 macro-F1", "pbmc68k acc", "pbmc68k bal. acc", "pbmc68k macro-F1",
            "ery ρ (CV)", "ery ρ (all)", "GMP→Mo ρ", "GMP→Neu ρ", "bytes (paul15)"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in order:
        d = summary.get(m, {})
        row = [fmt(d, "paul15.accuracy", True), fmt(d, "paul15.balanced_accuracy"), fmt(d, "paul15.macro_f1"),
               fmt(d, "pbmc68k.accuracy", True), fmt(d, "pbmc68k.balanced_accuracy"), fmt(d, "pbmc68k.macro_f1"),
               fmt(d, "paul15.rho.erythroid", True),
               f"{all_rho[m]['erythroid']:.3f}" if m in all_rho else "–",
               fmt(d, "paul15.rho.GMP→Mo"), fmt(d, "paul15.rho.GMP→Neu"),
               f"{sizes[m]['paul15']:,}" if m in sizes and "paul15" in sizes[m] else "–"]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scinterp", required=True)
    ap.add_argument("--assets", type=pathlib.Path, required=True)
    ap.add_argument("--work", type=pathlib.Path, required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--hvg", type=int, default=500)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--max-reference-cells", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-folds", type=int, default=99, help="testing: run only the first N folds")
    ap.add_argument("--tile", type=int, default=10)
    ap.add_argument("--speed-repeats", type=int, default=3,
                    help="tool and frozen forward timed in turn this many times; medians are reported")
    ap.add_argument("--speed-only", action="store_true",
                    help="only the speed part, on paul15: needs the fold-0 scGPT tool of an earlier run in --work; "
                         "the probes are fitted on all cells (their predict time is what counts)")
    ap.add_argument("--datasets", default="paul15,pbmc68k")
    ap.add_argument("--json-out", type=pathlib.Path)
    ap.add_argument("--table-out", type=pathlib.Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cells = args.assets / "cells"
    datasets = {
        "paul15": {"name": "paul15", "path": cells / "paul15.h5ad.gz", "orthologs": cells / "paul15_orthologs.csv",
                   "labels": "paul15_clusters", "root": 840, "pseudotime": True},
        "pbmc68k": {"name": "pbmc68k", "path": cells / "pbmc68k.h5ad.gz", "labels": "bulk_labels", "root": 0},
    }
    acc, sizes, timings, all_rho = Acc(), {}, {}, {}
    if args.speed_only:
        speed_only(args, datasets["paul15"], timings)
        out = {"speed": speed_summary(timings), "threads": args.threads, "timings": timings,
               "total_seconds": time.perf_counter() - started}
        text = json.dumps(out, indent=1, default=float)
        if args.json_out:
            args.json_out.write_text(text)
        print(text)
        for k, v in out["speed"].items():
            print(f"{k}: {v:,.1f}")
        return
    for key in args.datasets.split(","):
        ds = datasets[key]
        (args.work / key).mkdir(parents=True, exist_ok=True)
        ds["adata"] = read_h5ad(ds["path"])
        labels = ds["adata"].obs[ds["labels"]].astype(str).to_numpy()
        log(f"{key}: {ds['adata'].n_obs} cells × {ds['adata'].n_vars} genes; frozen-model embeddings")
        ds["embeddings"] = embeddings(args, ds, timings if key == "paul15" else {})
        if ds.get("pseudotime"):
            log(f"{key}: DPT and Palantir on all cells")
            ds["transductive"], secs = transductive(ds["adata"], labels, ds["root"], args.threads)
            timings.update({f"{k} seconds": v for k, v in secs.items()})
            for m, pt in ds["transductive"].items():
                all_rho[m] = lineage_rhos(pt, labels)
        bench_dataset(ds, args, acc, sizes, timings)
        for m, pt in ds.get("oof", {}).items():
            ok = ~np.isnan(pt)
            all_rho[m] = lineage_rhos(pt[ok], labels[ok])
        if key == "paul15":
            log("speed")
            speed(args, ds, timings)
    summary = acc.summary()
    order = [v[0] for v in tool_variants(args.assets, args.rank)] + [
        "frozen scgpt embedding + MLP probe", "frozen geneformer embedding + MLP probe",
        "scanpy DPT (root 840)", "Palantir (early cell 840)", "CellTypist (trained on the fold)",
        "logistic regression, log1p-CP10k all genes", "PCA-10 + readout", f"raw panel ({args.hvg} HVG) + readout"]
    order = [m for m in order if m in summary or m in all_rho]
    md = table(summary, sizes, all_rho, order)
    speed_out = speed_summary(timings) if "apply_tiled" in timings else {}
    out = {"speed": speed_out, "folds": args.folds, "hvg": args.hvg, "rank": args.rank, "max_reference_cells": args.max_reference_cells,
           "threads": args.threads, "methods": summary, "sizes": sizes, "all_cells_rho": all_rho, "timings": timings,
           "total_seconds": time.perf_counter() - started, "table": md}
    text = json.dumps(out, indent=1, default=float, ensure_ascii=False)
    if args.json_out:
        args.json_out.write_text(text)
    if args.table_out:
        args.table_out.write_text(md + "\n")
    print(text)
    print(md)
    for k, v in speed_out.items():
        print(f"{k}: {v:,.1f}")


if __name__ == "__main__":
    main()
