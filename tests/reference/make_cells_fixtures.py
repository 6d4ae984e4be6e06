"""Writes the small h5ad / loom fixtures read by `models/src/cells/{h5ad,loom}.rs` tests.

One seeded 30 cells x 40 genes count matrix is written in every layout the readers support:

- `dense.h5ad`        X dense float32, uncompressed (anndata's current layout)
- `csr_gzip.h5ad`     X csr_matrix with int32 data, gzip-compressed chunks
- `csr_lzf.h5ad`      X csr_matrix float32, lzf-compressed chunks (h5py's own filter, id 32000)
- `csc.h5ad`          X csc_matrix float64
- `raw_layers.h5ad`   X = log1p-normalised first 30 genes, `layers/counts` = counts of those 30 genes,
                      `raw/X` + `raw/var` = counts of all 40 genes
- `legacy_07.h5ad`    hand-written anndata 0.7 layout: dataframe groups with an `_index` attribute,
                      categoricals as integer codes plus `__categories/<col>`, X csr without
                      `encoding-type` but with `h5sparse_format`
- `cells.loom`        loompy file: /matrix genes x cells, row_attrs Gene + Accession, col_attrs CellID
- `expected.json`     the dense counts (cells x genes), gene ids / symbols, cell names and obs columns
- `csr_plain.h5ad`    X csr_matrix float32, uncompressed chunks (anndata's default for sparse counts): the
                      layout read in blocks of cells
- `csr_unsorted.h5ad` as `csr_plain.h5ad`, but the stored rows are not canonical: columns out of order,
                      explicit zeros, and counts split into duplicate entries (which sum to the counts)
- `csr_uint16.h5ad`, `csr_float64.h5ad`: as `csr_plain.h5ad` with the counts stored as uint16 / float64
                      (also read in blocks, decoded to f32 a block at a time)
- `symbol_index.h5ad` real human genes with the var index holding symbols and `var["gene_ids"]` their
                      Ensembl ids (plus a column that maps nothing), 6 cells of which one has no count:
                      for the refusal that names the gene id column to use, and for skipped empty cells.
                      Needs the Geneformer V2 dictionaries (`--dictionaries`, default
                      ../shared/data/geneformer/v2); `--only-symbol-index` writes just this file.

Run (from the repository root):

    python3 -m venv /tmp/pyenv/venv
    /tmp/pyenv/venv/bin/pip install anndata h5py scipy loompy
    /tmp/pyenv/venv/bin/python tests/reference/make_cells_fixtures.py

`--only-csr-plain` writes just `csr_plain.h5ad` and `csr_unsorted.h5ad`; `--only-csr-numbers` just
`csr_uint16.h5ad` and `csr_float64.h5ad`.

Checked with anndata 0.12.19, h5py 3.16.0, loompy 3.0.8.
"""

import json
import os
import pickle
import sys

import anndata as ad
import h5py
try:
    import loompy
except ImportError:  # only needed for cells.loom (not for --only-symbol-index)
    loompy = None
import numpy as np
import pandas as pd
import scipy.sparse as sp

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "cells")
N_CELLS, N_GENES, N_HVG = 30, 40, 30


def make_data():
    rng = np.random.default_rng(20240611)
    counts = rng.poisson(1.2, size=(N_CELLS, N_GENES)) * (rng.random((N_CELLS, N_GENES)) < 0.45)
    counts[3, :] = 0  # one empty cell
    counts[:, 7] = 0  # one gene never seen
    counts[0, 0] = 1234  # one large count
    gene_ids = [f"ENSG{100000 + 37 * g:011d}" for g in range(N_GENES)]
    symbols = [f"GENE{g}" if g % 5 else f"MT-G{g}" for g in range(N_GENES)]
    cells = [f"AAACCTG{c:03d}-1" for c in range(N_CELLS)]
    cell_type = np.array(["B cell", "T cell", "NK cell"])[rng.integers(0, 3, N_CELLS)]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(cell_type, categories=["B cell", "NK cell", "T cell"]),
            "n_counts": counts.sum(axis=1).astype(np.float32),
            "n_genes": (counts > 0).sum(axis=1).astype(np.int64),
            "donor": [f"donor{c % 2}" for c in range(N_CELLS)],
        },
        index=pd.Index(cells, name="barcode"),
    )
    var = pd.DataFrame(
        {"gene_symbols": symbols, "ensembl": gene_ids, "highly_variable": [g < N_HVG for g in range(N_GENES)]},
        index=pd.Index(gene_ids),
    )
    return counts.astype(np.int64), obs, var


def write_legacy_07(path, counts, obs, var):
    """anndata 0.7.x layout, written by hand (anndata >= 0.8 cannot write it any more)."""
    csr = sp.csr_matrix(counts.astype(np.float32))
    vlen = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        x = f.create_group("X")
        x.attrs["h5sparse_format"] = "csr"
        x.attrs["h5sparse_shape"] = np.array(counts.shape)
        x.create_dataset("data", data=csr.data)
        x.create_dataset("indices", data=csr.indices.astype(np.int32))
        x.create_dataset("indptr", data=csr.indptr.astype(np.int32))
        g = f.create_group("obs")
        g.attrs["_index"] = "index"
        g.attrs["column-order"] = np.array(["cell_type", "n_counts", "n_genes", "donor"], dtype=object)
        g.attrs["encoding-type"] = "dataframe"
        g.attrs["encoding-version"] = "0.1.0"
        g.create_dataset("index", data=np.array(obs.index, dtype=object), dtype=vlen)
        cats = g.create_group("__categories")
        cd = cats.create_dataset("cell_type", data=np.array(obs["cell_type"].cat.categories, dtype=object), dtype=vlen)
        codes = g.create_dataset("cell_type", data=obs["cell_type"].cat.codes.to_numpy().astype(np.int8))
        codes.attrs["categories"] = cd.ref
        g.create_dataset("n_counts", data=obs["n_counts"].to_numpy())
        g.create_dataset("n_genes", data=obs["n_genes"].to_numpy())
        g.create_dataset("donor", data=np.array(obs["donor"], dtype=object), dtype=vlen)
        v = f.create_group("var")
        v.attrs["_index"] = "index"
        v.attrs["column-order"] = np.array(["gene_symbols"], dtype=object)
        v.attrs["encoding-type"] = "dataframe"
        v.attrs["encoding-version"] = "0.1.0"
        v.create_dataset("index", data=np.array(var.index, dtype=object), dtype=vlen)
        v.create_dataset("gene_symbols", data=np.array(var["gene_symbols"], dtype=object), dtype=vlen)


def write_symbol_index(dictionaries):
    """12 real V2 genes; the var index holds their symbols except for two genes whose "symbols" are unknown
    names, so the `gene_ids` column (Ensembl ids) maps all 12 and the index (as symbols) only 10."""
    with open(os.path.join(dictionaries, "gene_name_id_dict_gc104M.pkl"), "rb") as f:
        name_id = pickle.load(f)
    with open(os.path.join(dictionaries, "token_dictionary_gc104M.pkl"), "rb") as f:
        tokens = pickle.load(f)
    wanted = ["CD3E", "CD19", "MS4A1", "NKG7", "LYZ", "GAPDH", "ACTB", "B2M", "CD14", "IL7R", "GNLY", "PTPRC"]
    ids = [name_id[s] for s in wanted]
    assert all(i in tokens for i in ids)
    symbols = list(wanted)
    symbols[4], symbols[9] = "NOT_A_GENE_1", "NOT_A_GENE_2"
    rng = np.random.default_rng(20261129)
    counts = rng.poisson(3.0, size=(6, 12)).astype(np.float32)
    counts[2, :] = 0  # a cell without any count: it has no token and is skipped
    var = pd.DataFrame(
        {"gene_ids": ids, "feature_types": ["Gene Expression"] * 12}, index=pd.Index(symbols, name="symbol")
    )
    obs = pd.DataFrame(index=pd.Index([f"cell{c}" for c in range(6)], name="barcode"))
    a = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    a.write_h5ad(os.path.join(OUT, "symbol_index.h5ad"))


def write_csr_plain(counts, obs, var):
    a = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)
    a.write_h5ad(os.path.join(OUT, "csr_plain.h5ad"))

    # Each row: its non-zeros in reversed column order, the first one split into two entries (1 + rest when
    # above 1, else a duplicate entry of 0), and an explicit zero in the first empty column.
    rng = np.random.default_rng(7)
    indptr, indices, data = [0], [], []
    for row in counts:
        cols = [int(g) for g in np.flatnonzero(row)][::-1]
        entries = [(g, float(row[g])) for g in cols]
        if entries:
            g, v = entries[0]
            entries[0:1] = [(g, 1.0), (g, v - 1.0)] if v > 1 else [(g, v), (g, 0.0)]
        empty = np.flatnonzero(row == 0)
        if len(empty):
            entries.insert(int(rng.integers(0, len(entries) + 1)), (int(empty[0]), 0.0))
        indices += [g for g, _ in entries]
        data += [v for _, v in entries]
        indptr.append(len(indices))
    x = sp.csr_matrix(
        (np.array(data, np.float32), np.array(indices, np.int32), np.array(indptr, np.int64)),
        shape=counts.shape,
    )
    x.has_sorted_indices = False
    a = ad.AnnData(X=x, obs=obs, var=var)
    path = os.path.join(OUT, "csr_unsorted.h5ad")
    a.write_h5ad(path)
    with h5py.File(path, "r") as f:
        assert not np.all(np.diff(f["X/indices"][: f["X/indptr"][1]]) > 0), "anndata sorted the rows"


def write_csr_numbers(counts, obs, var):
    for name, dtype in [("csr_uint16.h5ad", np.uint16), ("csr_float64.h5ad", np.float64)]:
        a = ad.AnnData(X=sp.csr_matrix(counts.astype(dtype)), obs=obs, var=var)
        a.write_h5ad(os.path.join(OUT, name))
        with h5py.File(os.path.join(OUT, name), "r") as f:
            assert f["X/data"].dtype == dtype and f["X/data"].compression is None, name


def main():
    os.makedirs(OUT, exist_ok=True)
    if "--only-csr-plain" in sys.argv:
        write_csr_plain(*make_data())
        return
    if "--only-csr-numbers" in sys.argv:
        write_csr_numbers(*make_data())
        return
    dictionaries = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data", "geneformer", "v2")
    if "--dictionaries" in sys.argv:
        dictionaries = sys.argv[sys.argv.index("--dictionaries") + 1]
    write_symbol_index(dictionaries)
    if "--only-symbol-index" in sys.argv:
        return
    counts, obs, var = make_data()

    a = ad.AnnData(X=counts.astype(np.float32), obs=obs, var=var)
    a.write_h5ad(os.path.join(OUT, "dense.h5ad"))

    a = ad.AnnData(X=sp.csr_matrix(counts.astype(np.int32)), obs=obs, var=var)
    a.write_h5ad(os.path.join(OUT, "csr_gzip.h5ad"), compression="gzip")

    a = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)
    a.write_h5ad(os.path.join(OUT, "csr_lzf.h5ad"), compression="lzf")

    a = ad.AnnData(X=sp.csc_matrix(counts.astype(np.float64)), obs=obs, var=var)
    a.write_h5ad(os.path.join(OUT, "csc.h5ad"))

    full = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)
    full.raw = full
    sub = full[:, :N_HVG].copy()
    sub.layers["counts"] = sub.X.copy()
    lib = np.maximum(counts[:, :N_HVG].sum(axis=1, keepdims=True), 1)
    sub.X = sp.csr_matrix(np.log1p(counts[:, :N_HVG] / lib * 1e4).astype(np.float32))
    sub.write_h5ad(os.path.join(OUT, "raw_layers.h5ad"), compression="gzip")

    write_legacy_07(os.path.join(OUT, "legacy_07.h5ad"), counts, obs, var)
    write_csr_plain(counts, obs, var)
    write_csr_numbers(counts, obs, var)

    loom_path = os.path.join(OUT, "cells.loom")
    if os.path.exists(loom_path):
        os.remove(loom_path)
    loompy.create(
        loom_path,
        counts.T.astype(np.float32),
        row_attrs={"Gene": np.array(var["gene_symbols"]), "Accession": np.array(var.index)},
        col_attrs={
            "CellID": np.array(obs.index),
            "cell_type": np.array(obs["cell_type"].astype(str)),
            "n_counts": obs["n_counts"].to_numpy().astype(np.float64),
        },
    )

    expected = {
        "n_cells": N_CELLS,
        "n_genes": N_GENES,
        "n_hvg": N_HVG,
        "counts": counts.tolist(),
        "gene_ids": list(var.index),
        "gene_symbols": list(var["gene_symbols"]),
        "cell_names": list(obs.index),
        "obs": {
            "cell_type": [str(x) for x in obs["cell_type"]],
            "n_counts": [float(x) for x in obs["n_counts"]],
            "n_genes": [float(x) for x in obs["n_genes"]],
            "donor": list(obs["donor"]),
        },
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
