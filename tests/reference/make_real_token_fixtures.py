"""Real-data reference fixtures for scinterp's tokenizers (Geneformer V1/V2 and scGPT).

The tokenizers are re-implemented here, independently and with numpy only, from the published algorithms:

* **Geneformer** (``geneformer/tokenizer.py``, ``TranscriptomeTokenizer``): the Ensembl mapping dictionary is
  filtered to targets that are vocabulary genes (in the token dictionary and the median dictionary); gene ids
  (symbols first through ``gene_name_id_dict``, passed on unchanged when absent) are upper-cased and mapped;
  unmapped genes are dropped and genes mapping to the same target are summed (``sum_ensembl_ids``);
  ``x = count / n_counts * 10_000 / median`` in float64 in that order, with ``n_counts`` the obs column when
  present, else the cell's total over all columns; genes with ``x > 0`` ranked descending; V2
  ``[<cls>] + genes[:4094] + [<eos>]``, V1 ``genes[:2048]``; cells without a token are dropped.
  Upstream's ``argsort(-x)`` is unstable, so its tie order is numpy-version dependent; the fixtures use the
  order scinterp documents (descending ``x``, ties by ascending index of the collapsed gene's first source
  column), which is one of the orders upstream can produce (the set of genes within each tie run is the same).
* **scGPT** (``scgpt/tasks/cell_emb.py`` ``embed_data``, ``scgpt/data_collator.py``, ``scgpt/preprocess.py``
  ``binning`` / ``_digitize``): symbols looked up exactly in ``vocab.json`` (specials and unmatched columns
  dropped, duplicates kept); non-zero genes in column order, ``<cls>`` first with value -2; per cell
  ``edges = np.quantile(nonzero_f32, np.linspace(0, 1, n_bins - 1))``, ``left = digitize(x, edges)``,
  ``right = digitize(x, edges, right=True)``, bin ``ceil(left - r * (left - right))``; cells longer than
  ``max_seq_len`` keep ``<cls>`` plus ``max_seq_len - 1`` sampled genes.

  The **randomness** (the draw ``r`` and the sampling) is NOT upstream's (which uses the global numpy/torch
  RNG and cannot be reproduced): it is scinterp's documented rule (``models/src/tokenize/scgpt.rs``), implemented
  here so that the comparison can be exact: ``r = (splitmix64(splitmix64(splitmix64(seed ^ BIN_TAG) ^ cell) ^
  column) >> 11) * 2**-53``; sampling keeps the ``max_seq_len - 1`` genes with the smallest priority
  ``splitmix64(splitmix64(splitmix64(seed ^ SAMPLE_TAG) ^ cell) ^ column)`` (ties by column), in column order.
  Everything else follows scGPT's binning.

Inputs (real data under /work/shared/data):

* ``cells/10x_chr21_v3`` (10x v3 MatrixMarket, 1,107 cells x 507 genes): Geneformer V1 and V2 on the Ensembl
  ids (no ``n_counts``: row totals), scGPT on the symbols (column 2 of features.tsv), seed 0;
* ``cells/pbmc68k_reduced.zarr.zip`` ``layers/counts`` (raw integer counts, var index = symbols), written as
  ``tests/fixtures/real_tokens/pbmc68k_counts.h5ad`` (X = CSR int32, gzip; obs ``bulk_labels`` and
  ``n_counts`` = per-cell total of those counts, float64); Geneformer V1 and V2 on the symbols, scGPT seed 0.

Outputs, per case ``tests/fixtures/real_tokens/<case>/``: ``tokens.npy`` (packed token ids as uint16, i.e. the
store's int32 ``tokens.npy`` in a smaller lossless dtype), ``offsets.npy`` (int64, n_kept + 1), ``kept.npy``
(int32, input indices of the kept cells) and for scGPT ``values.npy`` (the store's f32 values, all integers
-2..50, as int16). ``tests/tokenize_parity.rs`` runs ``scinterp tokenize`` on the same inputs and compares.

How to run (from the repository root; numpy, scipy, anndata, h5py, zarr)::

    /tmp/pyenv/venv/bin/python tests/reference/make_real_token_fixtures.py \
        [--data /work/shared/data] [--out tests/fixtures/real_tokens]

Deterministic: running it again gives identical arrays (numpy 2.4.6, anndata 0.12.19, zarr 3.1.6 used).
"""

import argparse
import gzip
import json
import os
import pickle

import numpy as np
import scipy.io
import scipy.sparse as sp

TARGET_SUM = 10_000.0
GF = {"V1": ("v1", "gc30M", 2048), "V2": ("v2", "gc104M", 4096)}
SCGPT_SPECIALS = ("<pad>", "<cls>", "<eoc>")
MASK64 = (1 << 64) - 1
BIN_TAG = 0x62696E6E696E6731  # "binning1"
SAMPLE_TAG = 0x73616D706C655F31  # "sample_1"


# ---------------------------------------------------------------------------------------------- inputs


def read_10x(folder):
    """(counts CSR cells x genes float64, ensembl ids, symbols, barcodes)."""
    m = scipy.io.mmread(os.path.join(folder, "matrix.mtx.gz")).tocsr().T.tocsr()
    with gzip.open(os.path.join(folder, "features.tsv.gz"), "rt") as f:
        feats = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    with gzip.open(os.path.join(folder, "barcodes.tsv.gz"), "rt") as f:
        bcs = [line.strip() for line in f if line.strip()]
    assert m.shape == (len(bcs), len(feats))
    return m.astype(np.float64), [r[0] for r in feats], [r[1] for r in feats], bcs


def write_pbmc_h5ad(zip_path, out_path):
    import anndata as ad
    import zarr

    # anndata.read_zarr fails on this store (zarr 3.1.6 cannot parse the struct dtype of uns in the
    # consolidated metadata), so the needed elements are read one by one, without consolidated metadata.
    store = zarr.storage.ZipStore(zip_path, mode="r")
    g = zarr.open_group(store, mode="r", use_consolidated=False)
    counts = ad.io.read_elem(g["layers"]["counts"])
    a_obs = ad.io.read_elem(g["obs"])
    a_var = ad.io.read_elem(g["var"])
    counts = sp.csr_matrix(counts) if not sp.issparse(counts) else counts.tocsr()
    dense_check = counts.data
    assert np.all(dense_check == np.round(dense_check)) and np.all(dense_check >= 0), "counts not integer"
    X = sp.csr_matrix(counts.astype(np.int32))
    X.sort_indices()
    X.eliminate_zeros()
    import pandas as pd

    obs = pd.DataFrame(index=pd.Index([str(s) for s in a_obs.index]))
    obs["bulk_labels"] = a_obs["bulk_labels"].values
    obs["n_counts"] = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    var = pd.DataFrame(index=pd.Index([str(s) for s in a_var.index]))
    out = ad.AnnData(X=X, obs=obs, var=var)
    out.write_h5ad(out_path, compression="gzip")
    store.close()
    return X.astype(np.float64), list(var.index), obs["n_counts"].to_numpy()


# ----------------------------------------------------------------------------------------- Geneformer


def load_gf(root, version):
    sub, suf, _ = GF[version]

    def load(name):
        with open(os.path.join(root, sub, f"{name}_{suf}.pkl"), "rb") as f:
            return pickle.load(f)

    tok = {k: int(v) for k, v in load("token_dictionary").items()}
    med = {k: float(v) for k, v in load("gene_median_dictionary").items()}
    return tok, med, load("gene_name_id_dict"), load("ensembl_mapping_dict")


def geneformer(root, version, X, gene_ids, kind, n_counts=None):
    tok, med, names, mapping = load_gf(root, version)
    size = GF[version][2]
    specials = {"<pad>", "<mask>", "<cls>", "<eos>"}
    vocab_genes = {k for k in tok if k in med and k not in specials}
    mapping = {k: v for k, v in mapping.items() if v in vocab_genes}
    ids = [names.get(g, g) for g in gene_ids] if kind == "symbol" else list(gene_ids)
    targets = [mapping.get(str(g).upper()) for g in ids]
    # collapse: one column per target; a target's position = its first source column
    first = {}
    for j, t in enumerate(targets):
        if t is not None and t not in first:
            first[t] = j
    order = sorted(first, key=first.get)
    pos = {t: i for i, t in enumerate(order)}
    rows, cols = [], []
    for j, t in enumerate(targets):
        if t is not None:
            rows.append(j)
            cols.append(pos[t])
    P = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(gene_ids), len(order)))
    if n_counts is None:
        n_counts = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()  # all columns, before dropping
    Xc = (X @ P).toarray().astype(np.float64)
    med_vec = np.array([med[t] for t in order], dtype=np.float64)
    tok_vec = np.array([tok[t] for t in order], dtype=np.int64)
    first_col = np.array([first[t] for t in order], dtype=np.int64)
    seqs, kept, n_tie_cells = [], [], 0
    for c in range(Xc.shape[0]):
        x = Xc[c] / n_counts[c] * TARGET_SUM / med_vec
        nz = np.nonzero(x > 0)[0]
        if len(nz) == 0:
            continue
        ranked = nz[np.lexsort((first_col[nz], -x[nz]))]
        xs = x[ranked]
        if np.any(xs[1:] == xs[:-1]):
            n_tie_cells += 1
        genes = tok_vec[ranked]
        if version == "V2":
            seq = np.concatenate([[tok["<cls>"]], genes[: size - 2], [tok["<eos>"]]])
        else:
            seq = genes[:size]
        seqs.append(seq.astype(np.int32))
        kept.append(c)
    info = {"n_targets": len(order), "n_cols_mapped": len(rows), "n_tie_cells": n_tie_cells}
    return seqs, None, kept, info


# --------------------------------------------------------------------------------------------- scGPT


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def scgpt(vocab_dir, X, symbols, seed):
    with open(os.path.join(vocab_dir, "vocab.json")) as f:
        vocab = json.load(f)
    n_bins, max_seq_len = 51, 1200
    ap = os.path.join(vocab_dir, "args.json")
    if os.path.exists(ap):
        with open(ap) as f:
            args = json.load(f)
        n_bins = int(args.get("n_bins") or n_bins)
        max_seq_len = int(args.get("max_seq_len") or max_seq_len)
    col_id = np.array([vocab[s] if (s in vocab and s not in SCGPT_SPECIALS) else -1 for s in symbols])
    matched = np.nonzero(col_id >= 0)[0]
    Xf = X.astype(np.float32).tocsr()
    seqs, vals, kept = [], [], []
    n_random, n_sampled = 0, 0
    for c in range(Xf.shape[0]):
        row = np.asarray(Xf[c].toarray()).ravel()[matched]  # float32, matched columns in column order
        nzi = np.nonzero(row)[0]
        if len(nzi) == 0:
            continue
        cols = matched[nzi]
        x = row[nzi]
        edges = np.quantile(x, np.linspace(0, 1, n_bins - 1))
        left = np.digitize(x, edges)
        right = np.digitize(x, edges, right=True)
        n_random += int(np.sum(left - right > 1))
        bkey = splitmix64(splitmix64(seed ^ BIN_TAG) ^ c)
        r = np.array([(splitmix64(bkey ^ int(j)) >> 11) * 2.0**-53 for j in cols])
        bins = np.ceil(left - r * (left - right)).astype(np.int64)
        tied = left - right > 1
        assert np.all(bins[~tied] == left[~tied])
        assert np.all((bins[tied] >= right[tied] + 1) & (bins[tied] <= left[tied]))
        idx = np.arange(len(cols))
        if len(cols) > max_seq_len - 1:
            n_sampled += 1
            skey = splitmix64(splitmix64(seed ^ SAMPLE_TAG) ^ c)
            prio = [(splitmix64(skey ^ int(j)), int(j), i) for i, j in enumerate(cols)]
            idx = np.sort([p[2] for p in sorted(prio)[: max_seq_len - 1]])
        seqs.append(np.concatenate([[vocab["<cls>"]], col_id[cols[idx]]]).astype(np.int32))
        vals.append(np.concatenate([[-2.0], bins[idx]]).astype(np.float32))
        kept.append(c)
    info = {"n_matched": int(len(matched)), "n_random_bins": n_random, "n_cells_sampled": n_sampled}
    return seqs, vals, kept, info


# --------------------------------------------------------------------------------------------- output


def save(out_root, name, result):
    seqs, vals, kept, info = result
    d = os.path.join(out_root, name)
    os.makedirs(d, exist_ok=True)
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    tokens = np.concatenate(seqs)
    assert tokens.min() >= 0 and tokens.max() < 1 << 16
    # compact but lossless dtypes (the store has int32 tokens and f32 values), to keep the fixtures small
    np.save(os.path.join(d, "tokens.npy"), tokens.astype(np.uint16))
    np.save(os.path.join(d, "offsets.npy"), offsets)
    np.save(os.path.join(d, "kept.npy"), np.asarray(kept, dtype=np.int32))
    if vals is not None:
        v = np.concatenate(vals)
        assert np.array_equal(v.astype(np.int16).astype(np.float32), v)
        np.save(os.path.join(d, "values.npy"), v.astype(np.int16))
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {len(kept)} cells kept, {offsets[-1]} tokens, {size} bytes, {info}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--out", default="tests/fixtures/real_tokens")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    dicts = os.path.join(a.data, "geneformer")
    vocab_dir = os.path.join(a.data, "scgpt", "whole-human")

    X, ens, sym, _ = read_10x(os.path.join(a.data, "cells", "10x_chr21_v3"))
    for v in ("V1", "V2"):
        save(a.out, f"10x_chr21_gf_{v.lower()}", geneformer(dicts, v, X, ens, "ensembl"))
    save(a.out, "10x_chr21_scgpt", scgpt(vocab_dir, X, sym, 0))

    h5 = os.path.join(a.out, "pbmc68k_counts.h5ad")
    P, psym, pn = write_pbmc_h5ad(os.path.join(a.data, "cells", "pbmc68k_reduced.zarr.zip"), h5)
    print(f"{h5}: {P.shape[0]} cells x {P.shape[1]} genes, {os.path.getsize(h5)} bytes")
    for v in ("V1", "V2"):
        save(a.out, f"pbmc68k_gf_{v.lower()}", geneformer(dicts, v, P, psym, "symbol", n_counts=pn))
    save(a.out, "pbmc68k_scgpt", scgpt(vocab_dir, P, psym, 0))


if __name__ == "__main__":
    main()
