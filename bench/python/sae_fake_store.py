#!/usr/bin/env python3
"""Write a small synthetic activation store with numpy alone (a stand-in for `scinterp sae synth`, for testing
the SAE baselines without the scinterp binary).

Rows (the same recipe as engine/src/sae/synth.rs, not the same random numbers):
x = offset + Σ_{a ∈ S} c_a·atom_a + (noise/√d)·N(0, I), S = `--active` distinct atoms drawn uniformly per row,
c_a ~ U[0.5, 2.0], atoms = unit rows of a Gaussian [atoms, d] matrix, offset a fixed random unit vector;
the noise has expected norm `--noise`. Rows are grouped into pseudo-cells of `--cell-rows` rows.

Layout (the activation-store format): STORE/manifest.json, STORE/<hook>.npy ([rows, d] f32 or f16),
STORE/rows.npy (int32 [rows, 3] = cell, position, token), STORE/dictionary.npy (f32 [atoms, d]).

    /tmp/pyenv/venv/bin/python bench/python/sae_fake_store.py --out STORE [--d-in 64] [--atoms 256]
        [--rows 20000] [--active 4] [--noise 0.5] [--cell-rows 100] [--seed 0] [--dtype f32|f16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HOOK = "blocks.0.hook_resid_post"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--d-in", type=int, default=64)
    ap.add_argument("--atoms", type=int, default=256)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--active", type=int, default=4)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--cell-rows", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed)
    atoms = rng.standard_normal((a.atoms, a.d_in)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    offset = rng.standard_normal(a.d_in).astype(np.float32)
    offset /= np.linalg.norm(offset)
    sigma = a.noise / np.sqrt(a.d_in)
    a.out.mkdir(parents=True, exist_ok=True)
    dt = np.float32 if a.dtype == "f32" else np.float16
    X = np.lib.format.open_memmap(a.out / f"{HOOK}.npy", mode="w+", dtype=dt, shape=(a.rows, a.d_in))
    chunk = 8192
    for s in range(0, a.rows, chunk):
        n = min(chunk, a.rows - s)
        idx = np.argsort(rng.random((n, a.atoms)), axis=1)[:, : a.active]
        coef = (0.5 + 1.5 * rng.random((n, a.active))).astype(np.float32)
        x = np.einsum("na,nad->nd", coef, atoms[idx]) + offset
        x += sigma * rng.standard_normal((n, a.d_in)).astype(np.float32)
        X[s:s + n] = x.astype(dt)
    X.flush()
    del X
    r = np.arange(a.rows)
    rows = np.stack([r // a.cell_rows, r % a.cell_rows, rng.integers(0, 1000, a.rows)], axis=1).astype(np.int32)
    np.save(a.out / "rows.npy", rows)
    np.save(a.out / "dictionary.npy", atoms)
    n_cells = int(rows[-1, 0]) + 1
    manifest = {"format": "scinterp-activation-store", "format_version": 1,
                "model": {"kind": "synthetic", "maker": "bench/python/sae_fake_store.py", "seed": a.seed},
                "source": {"synthetic": True}, "hooks": [HOOK], "dtype": a.dtype, "d_model": a.d_in,
                "include_special": False, "n_cells": n_cells, "n_rows": a.rows, "max_batch_tokens": 0,
                "cells_complete": n_cells, "rows_complete": a.rows, "complete": True,
                "scinterp_version": "none"}
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {a.out}: {a.rows} rows x {a.d_in} ({a.dtype}), {a.rows // a.cell_rows} cells")


if __name__ == "__main__":
    main()
