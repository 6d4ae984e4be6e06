#!/usr/bin/env python3
"""Writes the `scinterp trace` parity fixtures in tests/fixtures/trace/ (seeded).

  1. `tokens/`: a Geneformer V2 token store (tokens.npy int32, offsets.npy int64, manifest.json, cells.tsv) of
     --n-cells distinct cells [2, distinct genes from 4..95, 3] of total lengths 10–60 (numpy
     default_rng(--seed)); they fit the model tests/fixtures/geneformer/tiny_v2 (vocab 96, 64 positions),
     which the fixtures use in place (not copied);
  2. `saes/blocks.0.hook_resid_post/`, `saes/blocks.2.hook_resid_post/`: TopK SAEs (d_sae 64, k 4) trained
     by scinterp on these cells (`scinterp extract --dtype f32`, then `scinterp sae train --seed`, one
     thread); only cfg.json and sae_weights.safetensors are kept, and cfg.json's metadata is reduced to
     the hook name and the training settings (no paths or timings);
  3. `expected_edges.tsv`: tests/reference/trace_reference.py (a hooked HF forward per (feature, cell)) on
     all cells, all source features, target blocks.2.hook_resid_post, --max-q 1 (every tested edge), computed
     in float64 (--dtype float64) from the f32 weights: the exact answer for these weights, so that a test
     measures scinterp's own f32 rounding, not the sum of two f32 engines' rounding. (The float32 reference
     is as far from it as scinterp is: p within 1.0e-4, see tests/reference/README.md.)

The SAEs depend on scinterp's trainer, so regenerating them with another scinterp version may give other
weights; the expected edges always come from the Python reference alone.

    /tmp/pyenv/venv/bin/python tests/reference/make_trace_fixtures.py [--scinterp target/release/scinterp]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import trace_reference  # noqa: E402

SOURCE = "blocks.0.hook_resid_post"
TARGET = "blocks.2.hook_resid_post"


def make_cells(n_cells: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    cells: list[list[int]] = []
    while len(cells) < n_cells:
        length = int(rng.integers(10, 61))  # total, with <cls> and <eos>
        genes = rng.choice(np.arange(4, 96), size=length - 2, replace=False)
        cell = [2] + [int(g) for g in genes] + [3]
        if cell not in cells:
            cells.append(cell)
    return cells


def write_store(cells: list[list[int]], out: Path, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tokens = np.concatenate([np.asarray(c, dtype=np.int32) for c in cells])
    offsets = np.zeros(len(cells) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in cells])
    np.save(out / "tokens.npy", tokens)
    np.save(out / "offsets.npy", offsets)
    manifest = {
        "format": "scinterp-token-store", "format_version": 1, "tokenizer": "geneformer",
        "tokenizer_version": "V2", "options": {"trace_fixture_seed": seed}, "dictionaries": {},
        "source_path": "tests/reference/make_trace_fixtures.py (seeded synthetic cells)", "source_sha256": "",
        "n_cells": len(cells), "n_tokens": int(tokens.size), "max_len": max(len(c) for c in cells),
        "has_values": False, "n_cells_dropped": 0, "scinterp_version": "0.1.0",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "cells.tsv").write_text("cell\n" + "".join(f"trace_cell_{i}\n" for i in range(len(cells))))


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def train_saes(scinterp: str, model: Path, store: Path, out: Path, args) -> None:
    with tempfile.TemporaryDirectory(prefix="trace_fixture_") as tmp:
        acts = Path(tmp) / "acts"
        run([scinterp, "extract", "--model", str(model), "--input", str(store), "--hooks", f"{SOURCE},{TARGET}",
             "--out", str(acts), "--dtype", "f32", "--threads", "1", "-q"])
        for hook in (SOURCE, TARGET):
            dest = Path(tmp) / hook
            run([scinterp, "sae", "train", "--acts", str(acts), "--hook", hook, "--d-sae", str(args.d_sae),
                 "--k", str(args.k), "--out", str(dest), "--tokens", str(args.train_tokens), "--batch-size",
                 str(args.batch_size), "--splice-cells", "0", "--holdout", "0", "--seed", str(args.seed), "--threads", "1", "-q"])
            final = out / hook
            final.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dest / "sae_weights.safetensors", final / "sae_weights.safetensors")
            cfg = json.loads((dest / "cfg.json").read_text())
            cfg["metadata"] = {
                "hook_name": hook,
                "trained_by": f"scinterp sae train --d-sae {args.d_sae} --k {args.k} --tokens {args.train_tokens} "
                              f"--batch-size {args.batch_size} --splice-cells 0 --holdout 0 --seed {args.seed} --threads 1",
                "generator": "tests/reference/make_trace_fixtures.py",
            }
            (final / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests/fixtures/trace")
    ap.add_argument("--model", type=Path, default=REPO / "tests/fixtures/geneformer/tiny_v2")
    ap.add_argument("--scinterp", default=str(REPO / "target/release/scinterp"))
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--n-cells", type=int, default=16)
    ap.add_argument("--d-sae", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--train-tokens", type=int, default=60000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--skip-saes", action="store_true", help="keep the existing SAEs; rewrite tokens and edges")
    args = ap.parse_args()

    out: Path = args.out
    cells = make_cells(args.n_cells, args.seed)
    if out.exists():
        shutil.rmtree(out / "tokens", ignore_errors=True)
        if not args.skip_saes:
            shutil.rmtree(out / "saes", ignore_errors=True)
    write_store(cells, out / "tokens", args.seed)
    if not args.skip_saes:
        train_saes(args.scinterp, args.model, out / "tokens", out / "saes", args)

    trace_reference.main([
        "--model", str(args.model), "--tokens", str(out / "tokens"), "--saes", str(out / "saes"),
        "--source", SOURCE, "--targets", TARGET, "--features", "all", "--out", str(out / "expected_edges.tsv"),
        "--max-q", "1", "--threads", "1", "--dtype", "float64",
    ])

    # Health: how many features fire, how many edges, and the file sizes.
    import torch  # noqa: F401  (already imported by the reference)
    lens = [len(c) for c in cells]
    print(f"cells: {len(cells)}, lengths {min(lens)}–{max(lens)}, {sum(lens)} tokens")
    edges = (out / "expected_edges.tsv").read_text().splitlines()[1:]
    qs = np.array([float(e.split("\t")[-1]) for e in edges])
    print(f"expected edges: {len(edges)} tested, {(qs <= 0.05).sum()} with q ≤ 0.05")
    total = 0
    for p in sorted(out.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.relative_to(out)}: {p.stat().st_size:,} B")
    print(f"total {total:,} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
