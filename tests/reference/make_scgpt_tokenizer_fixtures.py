"""Reference fixtures for scinterp's scGPT tokenizer (pretraining / zero-shot path, models.md §3.5 A).

This script re-implements, independently and with numpy only, what scGPT does to a cell before the
encoder in ``scgpt/tasks/cell_emb.py`` (``embed_data``'s dataset) and ``scgpt/data_collator.py``
(``DataCollator`` with ``do_binning=True``, ``keep_first_n_tokens=1``), with ``scgpt/preprocess.py``'s
``binning`` and ``_digitize``:

1. map the gene symbols through ``vocab.json`` (exact match) and drop the unmatched columns;
2. per cell, keep the non-zero genes in their original column order and put ``<cls>`` first;
3. bin the non-zero values (CLS excluded), as float32 (the collator hands a float32 tensor to ``binning``):
   ``edges = np.quantile(nonzero, np.linspace(0, 1, n_bins - 1))`` (numpy's default linear method),
   ``left = np.digitize(x, edges)``, ``right = np.digitize(x, edges, right=True)``; upstream then draws
   ``bin = ceil(left - r * (left - right))`` with ``r = np.random.rand()``, i.e. a bin in ``right+1..=left``
   (exactly ``left`` when ``left - right <= 1``).

Because of that random draw the fixtures do not hold bins: they hold, per value, ``(left, right)`` and the
edges (as float64 bit patterns, so that the Rust side can compare them exactly). The Rust tests check that
the bin equals ``left`` where ``left - right <= 1`` and lies in ``right+1..=left`` elsewhere, and that the
gene id sequences are exact (for a cell longer than ``max_seq_len``: a subset of the right size, CLS first).

The inputs are a few small cells over real vocabulary symbols (read from the real ``vocab.json``): unmatched
symbols, a matched symbol with a zero count, integer counts with many ties (repeated edges), a cell with a
single non-zero gene, a cell with no matched non-zero gene (dropped), log1p-normalised float32 values, and a
long cell exceeding the small ``max_seq_len`` set in the fixture. The inputs are drawn from a seeded numpy
generator, so the output is byte-identical on re-runs with the same numpy version (2.4.6 used).

Fixture layout (``tests/fixtures/tokenizer/scgpt/<name>.json``)::

    {"name", "description", "n_bins", "max_seq_len",
     "vocab": {symbol: id, ...},              # the subset of the real vocab the fixture needs (+ specials)
     "gene_symbols": [...],                   # the matrix's columns (some unmatched)
     "cells": [{"cols": [...], "values_f32_bits": [...]}],   # stored values per cell (CSR rows)
     "expected": {"kept_cells": [...], "dropped_cells": [...],
                  "n_genes_matched": int, "n_genes_unmatched": int,
                  "cells": [{"gene_ids": [cls, ...],        # full, untruncated sequence
                             "edges_f64_bits": ["%016x", ...],
                             "left": [...], "right": [...]}]}}   # per gene, CLS excluded

How to run (from the repository root; needs only numpy and the real vocab)::

    /tmp/pyenv/venv/bin/python tests/reference/make_scgpt_tokenizer_fixtures.py \
        [--vocab /work/shared/data/scgpt/whole-human/vocab.json] [--out tests/fixtures/tokenizer/scgpt]
"""

import argparse
import json
import os
import struct

import numpy as np

SPECIALS = ("<pad>", "<cls>", "<eoc>")


def f64_bits(x):
    return "%016x" % struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", np.float32(x)))[0]


def reference(vocab, symbols, cells, n_bins):
    """scGPT's path A on CSR-like cells; returns the expected block."""
    col_ids = [vocab[s] if (s in vocab and s not in SPECIALS) else None for s in symbols]
    matched = [i for i, t in enumerate(col_ids) if t is not None]
    out = {"kept_cells": [], "dropped_cells": [], "cells": [],
           "n_genes_matched": len(matched), "n_genes_unmatched": len(symbols) - len(matched)}
    for c, (cols, vals) in enumerate(cells):
        dense = np.zeros(len(symbols), dtype=np.float32)
        dense[cols] = vals
        row = dense[matched]  # unmatched columns dropped, original order kept
        gene_ids = np.array([col_ids[i] for i in matched], dtype=np.int64)
        nz = np.nonzero(row)[0]
        if len(nz) == 0:
            out["dropped_cells"].append(c)
            continue
        x = row[nz]  # float32, as in the collator
        edges = np.quantile(x, np.linspace(0, 1, n_bins - 1))
        left = np.digitize(x, edges)
        right = np.digitize(x, edges, right=True)
        assert np.all(left >= right)
        out["kept_cells"].append(c)
        out["cells"].append({
            "gene_ids": [vocab["<cls>"]] + [int(g) for g in gene_ids[nz]],
            "edges_f64_bits": [f64_bits(e) for e in edges],
            "left": [int(v) for v in left],
            "right": [int(v) for v in right],
        })
    return out


def write(out_dir, name, description, vocab, symbols, cells, n_bins, max_seq_len):
    expected = reference(vocab, symbols, cells, n_bins)
    sub = {s: vocab[s] for s in symbols if s in vocab}
    for s in SPECIALS:
        sub[s] = vocab[s]
    doc = {
        "name": name,
        "description": description,
        "n_bins": n_bins,
        "max_seq_len": max_seq_len,
        "vocab": dict(sorted(sub.items())),
        "gene_symbols": list(symbols),
        "cells": [{"cols": [int(i) for i in cols], "values_f32_bits": [f32_bits(v) for v in vals]}
                  for cols, vals in cells],
        "expected": expected,
    }
    path = os.path.join(out_dir, name + ".json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    ties = sum(int(np.sum(np.array(c["left"]) - np.array(c["right"]) >= 2)) for c in expected["cells"])
    print(f"{path}: {os.path.getsize(path)} bytes, {len(cells)} cells, {ties} tied values")


def sparse_row(rng, n_cols, n_nz, values):
    cols = np.sort(rng.choice(n_cols, size=n_nz, replace=False))
    return cols, values


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default="/work/shared/data/scgpt/whole-human/vocab.json")
    ap.add_argument("--out", default="tests/fixtures/tokenizer/scgpt")
    args = ap.parse_args()
    with open(args.vocab) as f:
        vocab = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20240611)
    genes = sorted(k for k in vocab if k not in SPECIALS)
    n_bins = 51

    # 1. basic: 40 columns (some unmatched, one special-looking symbol), integer counts with ties.
    real = list(rng.choice(genes, size=36, replace=False))
    symbols = real[:10] + ["NOT_A_GENE_1", "ENSG00000141510"] + real[10:30] + ["<cls>", "not_a_gene_2"] + real[30:]
    n = len(symbols)
    cells = []
    # many ties: small integer counts over 30 genes
    cols = np.sort(rng.choice(n, size=30, replace=False))
    cells.append((cols, rng.integers(1, 5, size=30).astype(np.float32)))
    # a single non-zero matched gene (plus a count on an unmatched column)
    cells.append((np.array([3, 10]), np.array([7.0, 4.0], dtype=np.float32)))
    # only unmatched columns non-zero -> dropped
    cells.append((np.array([10, 11, 32]), np.array([1.0, 2.0, 3.0], dtype=np.float32)))
    # an explicitly stored zero and distinct values (no ties)
    cols = np.sort(rng.choice(n, size=25, replace=False))
    v = rng.permutation(np.arange(1, 26)).astype(np.float32) * 3
    v[4] = 0.0
    cells.append((cols, v))
    # log1p-normalised float values (some equal)
    cols = np.sort(rng.choice(n, size=34, replace=False))
    counts = rng.integers(1, 40, size=34).astype(np.float64)
    cells.append((cols, np.log1p(counts / counts.sum() * 1e4).astype(np.float32)))
    # empty row
    cells.append((np.array([], dtype=np.int64), np.array([], dtype=np.float32)))
    write(args.out, "basic", "mixed cells: ties, single gene, dropped, explicit zero, log1p, empty",
          vocab, symbols, cells, n_bins, 1200)

    # 2. long cell over a small max_seq_len; more than n_bins - 1 genes so edges are interpolated.
    symbols = list(rng.choice(genes, size=150, replace=False)) + ["UNMATCHED_X"]
    cells = [
        (np.arange(0, 151, dtype=np.int64), rng.integers(1, 30, size=151).astype(np.float32)),
        (np.sort(rng.choice(151, size=90, replace=False)), rng.gamma(0.7, 5.0, size=90).astype(np.float32) + 0.01),
        (np.sort(rng.choice(151, size=12, replace=False)), rng.integers(1, 100, size=12).astype(np.float32)),
    ]
    write(args.out, "long", "cells longer than max_seq_len = 16 (CLS included)", vocab, symbols, cells,
          n_bins, 16)


if __name__ == "__main__":
    main()
