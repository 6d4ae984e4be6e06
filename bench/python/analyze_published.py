#!/usr/bin/env python3
"""The published feature-catalogue pass (methods.md §4.1-4.2, `03_analyze_features.py`), as a baseline for
`scinterp analyze`: stream an activation store in chunks of 10,000 rows, encode with the TopK SAE in numpy
(float32 GEMM, argpartition top-k, ReLU), and accumulate per feature the fire count (value > 0), the mean
activation, and per (feature, gene token) the activation sum and fire count (np.bincount), then rank each
feature's genes by conditional mean (top 20, no support threshold, as published).

Usage: analyze_published.py --acts STORE --sae SAE_DIR --hook HOOK [--threads N] [--json-out FILE]
Prints one JSON line: rows, seconds, rows_per_second, alive.
"""

import argparse
import json
import os
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--acts", required=True)
    ap.add_argument("--sae", required=True)
    ap.add_argument("--hook", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=10_000)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import numpy as np
    from safetensors.numpy import load_file

    w = load_file(os.path.join(args.sae, "sae_weights.safetensors"))
    w_enc, b_enc, b_dec = w["W_enc"], w["b_enc"], w["b_dec"]
    cfg = json.load(open(os.path.join(args.sae, "cfg.json")))
    k = int(cfg["k"])
    x_all = np.load(os.path.join(args.acts, f"{args.hook}.npy"), mmap_mode="r")
    rows = np.load(os.path.join(args.acts, "rows.npy"))
    n, d_sae = x_all.shape[0], w_enc.shape[1]
    genes, gene_index = np.unique(rows[:, 2], return_inverse=True)
    n_genes = len(genes)
    started = time.perf_counter()
    fire = np.zeros(d_sae, np.int64)
    total = np.zeros(d_sae, np.float64)
    pair_sum = np.zeros(d_sae * n_genes, np.float64)
    pair_count = np.zeros(d_sae * n_genes, np.int64)
    for s in range(0, n, args.chunk):
        x = np.asarray(x_all[s:s + args.chunk], dtype=np.float32)
        pre = (x - b_dec) @ w_enc + b_enc
        idx = np.argpartition(-pre, k - 1, axis=1)[:, :k]
        val = np.maximum(np.take_along_axis(pre, idx, axis=1), 0.0)
        active = val > 0
        f = idx[active]
        v = val[active].astype(np.float64)
        g = np.broadcast_to(gene_index[s:s + args.chunk, None], idx.shape)[active]
        fire += np.bincount(f, minlength=d_sae)
        total += np.bincount(f, weights=v, minlength=d_sae)
        key = f.astype(np.int64) * n_genes + g
        pair_sum += np.bincount(key, weights=v, minlength=d_sae * n_genes)
        pair_count += np.bincount(key, minlength=d_sae * n_genes)
    mean_act = total / n
    cond = np.where(pair_count > 0, pair_sum / np.maximum(pair_count, 1), -np.inf).reshape(d_sae, n_genes)
    top = np.argsort(-cond, axis=1, kind="stable")[:, :20]
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": int(n), "seconds": seconds, "rows_per_second": n / seconds,
                      "alive": int((fire > 0).sum()), "top_gene_of_feature0": int(genes[top[0, 0]]),
                      "mean_activation_sum": float(mean_act.sum())}))


if __name__ == "__main__":
    main()
