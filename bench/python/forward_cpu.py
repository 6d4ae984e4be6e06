#!/usr/bin/env python3
"""CPU forward-pass benchmark: scinterp vs PyTorch/transformers on full-size Geneformer configs.

For each model (default: the real Geneformer-V1-10M and Geneformer-V2-104M configs at full size):

  1. build a seeded random-weight BertForMaskedLM and `save_pretrained` it (safetensors) to
     bench/compare/.work/<name>/, with the published config.json copied next to it; an existing
     folder is reused. Both engines then read the same weights from that folder;
  2. make `--cells` cells of exactly `--len` tokens: V1 = distinct gene ids from 2..V-1 (len ≤ 2048),
     V2 = [2] + distinct genes from 4..V-1 + [3] (len ≤ 4096, counting CLS and EOS); write tokens.json;
  3. torch: torch.set_num_threads(T), eager attention, f32, eval(), no_grad; time `model.bert(input_ids)`
     (encoder only, no MLM head) on all cells as one batch (equal lengths, so no padding) after one
     warm-up; best of `--repeats`;
  4. scinterp: run `<bin> forward --model DIR --input tokens.json --hooks blocks.{N-1}.hook_resid_post
     --out OUT --threads T --json` `--repeats` times; its stdout JSON has "tokens" and
     "forward_seconds" (forward pass only, no load/write); take the best;
  5. check that the final hidden states of the two agree: max|a−b| / max(1, max|b|) ≤ 1e-3.

Prints a table (model, cells×len, torch tok/s, scinterp tok/s, ratio = scinterp/torch) and the machine
info; `--json-out FILE` saves the results. Exit status 1 if a check failed or scinterp errored.

Usually run through bench/compare/forward_cpu (which builds the binary). Directly, from the repo root:

    /tmp/pyenv/venv/bin/python bench/python/forward_cpu.py --scinterp target/release/scinterp \\
        [--threads 2] [--cells 4] [--len 2048] [--repeats 3] [--json-out results.json]
    /tmp/pyenv/venv/bin/python bench/python/forward_cpu.py --skip-scinterp   # torch half only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = "Geneformer-V1-10M,Geneformer-V2-104M"
CHECK_TOL = 1e-3


def machine_info() -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"cpu": cpu, "nproc": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            # A busy machine (e.g. a concurrent cargo build) skews both columns; record the load.
            "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def prepare_model(configs_dir: Path, name: str, workdir: Path, seed: int) -> Path:
    """Random-weight model saved in workdir/name (reused if present), with the published config.json."""
    d = workdir / name
    if (d / "model.safetensors").exists() and (d / "config.json").exists():
        return d
    with open(configs_dir / name / "config.json") as f:
        cfg_dict = json.load(f)
    cfg = BertConfig(**cfg_dict)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = BertForMaskedLM(cfg).eval()
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    shutil.copyfile(configs_dir / name / "config.json", d / "config.json")  # published layout
    return d


def make_cells(cfg: BertConfig, n_cells: int, length: int, seed: int) -> list[list[int]]:
    """V1 (vocab 25,426: no specials) or V2 (vocab 20,275: [2] + genes + [3]) cells of exactly `length` tokens."""
    V, P = cfg.vocab_size, cfg.max_position_embeddings
    if length > P:
        raise SystemExit(f"--len {length} > max_position_embeddings {P}")
    v2 = V == 20275 or P == 4096
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n_cells):
        if v2:
            genes = rng.choice(np.arange(4, V), size=length - 2, replace=False)
            cells.append([2] + genes.tolist() + [3])
        else:
            cells.append(rng.choice(np.arange(2, V), size=length, replace=False).tolist())
    return [[int(x) for x in c] for c in cells]


@torch.no_grad()
def bench_torch(model_dir: Path, cells, threads: int, repeats: int):
    """Best-of-repeats wall time of model.bert(input_ids) on one batch; returns (seconds, last_hidden)."""
    torch.set_num_threads(threads)
    model = BertForMaskedLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    ids = torch.tensor(cells, dtype=torch.int64)
    out = model.bert(ids).last_hidden_state  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = model.bert(ids).last_hidden_state
        best = min(best, time.perf_counter() - t0)
    return best, out, model.config


def parse_json_stdout(text: str) -> dict:
    """The JSON object on scinterp's stdout (whole stdout, else the last line that parses)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        for line in reversed(text.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
    raise ValueError(f"no JSON object on scinterp stdout: {text[-500:]!r}")


def bench_scinterp(binary: str, model_dir: Path, tokens: Path, hook: str, out: Path, threads: int, repeats: int):
    """Best forward_seconds over `repeats` runs; returns (seconds, tokens, last run's JSON)."""
    cmd = [binary, "forward", "--model", str(model_dir), "--input", str(tokens), "--hooks", hook,
           "--out", str(out), "--overwrite", "--threads", str(threads), "--json"]
    best, n_tokens, last = float("inf"), None, None
    for _ in range(repeats):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        last = parse_json_stdout(proc.stdout)
        best = min(best, float(last["forward_seconds"]))
        n_tokens = int(last["tokens"])
    return best, n_tokens, last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--len", type=int, default=2048, dest="length")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs-dir", type=Path, default=REPO.parent / "shared/data/geneformer/configs")
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated config names (default {DEFAULT_MODELS})")
    ap.add_argument("--workdir", type=Path, default=REPO / "bench/compare/.work")
    ap.add_argument("--scinterp", default=os.environ.get("SCINTERP_BIN"), help="scinterp binary (default $SCINTERP_BIN)")
    ap.add_argument("--skip-scinterp", action="store_true", help="time torch only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    if not args.skip_scinterp and not args.scinterp:
        ap.error("give --scinterp BIN (or set SCINTERP_BIN), or --skip-scinterp")

    info = machine_info()
    info["threads"] = args.threads
    results, ok = [], True
    for name in args.models.split(","):
        model_dir = prepare_model(args.configs_dir, name, args.workdir, args.seed)
        cfg = BertConfig.from_pretrained(model_dir)
        cells = make_cells(cfg, args.cells, args.length, args.seed + 1)
        tokens = model_dir / f"tokens_{args.cells}x{args.length}.json"
        tokens.write_text(json.dumps({"input_ids": cells}) + "\n")
        n_tok = args.cells * args.length

        t_torch, h_torch, _ = bench_torch(model_dir, cells, args.threads, args.repeats)
        row = {"model": name, "cells": args.cells, "len": args.length, "tokens": n_tok,
               "torch_seconds": t_torch, "torch_tok_s": n_tok / t_torch}
        print(f"[{name}] torch: {t_torch:.3f} s  ({n_tok / t_torch:,.0f} tok/s)", file=sys.stderr)

        if not args.skip_scinterp:
            hook = f"blocks.{cfg.num_hidden_layers - 1}.hook_resid_post"
            out = model_dir / "scinterp_out.safetensors"
            try:
                t_sc, sc_tokens, last = bench_scinterp(args.scinterp, model_dir, tokens, hook, out,
                                                       args.threads, args.repeats)
                h_sc = load_file(str(out))[hook]
                err = float((h_sc.double() - h_torch.double()).abs().max()
                            / max(1.0, float(h_torch.abs().max())))
                row.update({"scinterp_seconds": t_sc, "scinterp_tok_s": sc_tokens / t_sc,
                            "ratio": (sc_tokens / t_sc) / (n_tok / t_torch),
                            "final_hidden_rel_err": err, "check_ok": err <= CHECK_TOL and sc_tokens == n_tok,
                            "scinterp_json": last})
                ok &= row["check_ok"]
                print(f"[{name}] scinterp: {t_sc:.3f} s  ({sc_tokens / t_sc:,.0f} tok/s)  "
                      f"final-hidden rel err {err:.2e}", file=sys.stderr)
            except (RuntimeError, ValueError, KeyError) as e:
                row["scinterp_error"] = str(e)
                ok = False
                print(f"[{name}] scinterp FAILED: {e}", file=sys.stderr)
        results.append(row)

    # ---- report ----
    print()
    print(f"CPU: {info['cpu']}  nproc={info['nproc']}  threads={args.threads}  "
          f"torch {info['torch']}  transformers {info['transformers']}  {info['date']}  "
          f"load(1m)={info['loadavg_1m']}  repeats={args.repeats} (best)")
    hdr = f"{'model':<22} {'cells×len':>11} {'torch tok/s':>12} {'scinterp tok/s':>15} {'ratio':>7}  check"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        sc = f"{r['scinterp_tok_s']:,.0f}" if "scinterp_tok_s" in r else ("error" if "scinterp_error" in r else "-")
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        check = ("ok" if r["check_ok"] else f"MISMATCH (rel err {r['final_hidden_rel_err']:.1e})") \
            if "check_ok" in r else "-"
        print(f"{r['model']:<22} {str(r['cells']) + '×' + str(r['len']):>11} {r['torch_tok_s']:>12,.0f} "
              f"{sc:>15} {ratio:>7}  {check}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": info, "repeats": args.repeats, "results": results},
                                            indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
