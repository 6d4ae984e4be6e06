#!/usr/bin/env python3
"""CPU forward-pass benchmark: scinterp vs PyTorch on the scGPT whole-human config (random weights).

The model is the real whole-human shape (E 512, 8 heads, d_hid 512, 12 layers, post-norm, vocab 60,697) with
seeded random weights (tests/reference/scgpt_reference.py), and:

  1. it is saved once, in the flash layout of the real checkpoint, as best_model.pt next to the real args.json
     and vocab.json in bench/compare/.work/scgpt-whole-human-seed<S>/ (reused when present); both engines
     read the weights from that folder;
  2. `--cells` cells of `--len` tokens (default 1,200 = <cls> + 1,199 distinct genes, binned values 1..50,
     CLS value -2) are written as input_<cells>x<len>.json = {"gene_ids": [...], "values": [...]};
  3. torch: torch.set_num_threads(T), f32, eval(), no_grad; time the embedding + value encoder + the
     12 layers (no heads) on all cells as one batch (equal lengths: no padding, no mask) after one warm-up;
     best of `--repeats`. Twice: with the MHA fast path enabled (torch's fused inference kernel
     `_transformer_encoder_layer_fwd`, its fastest CPU path) and disabled (the plain module path that the
     parity references use);
  4. scinterp: run `<bin> --threads T forward --model DIR --input INPUT --hooks blocks.11.hook_resid_post
     --out OUT --json` `--repeats` times and take the best `tokens_per_second` of its stdout JSON summary
     (forward pass only: no load, no write);
  5. check that scinterp's blocks.11.hook_resid_post agrees with torch's last-layer output (fast path off):
     max|a−b| / max(1, max|b|) ≤ 1e-3, so that the table cannot compare wrong results.

Prints a table (engine, seconds, tok/s, ratio scinterp/engine) and the machine info; `--json-out FILE` saves
the figures. Exit status 1 if the check failed or scinterp errored.

Usually run through bench/compare/forward_scgpt (which builds the binary). Directly, from the repo root:

    /tmp/pyenv/venv/bin/python bench/python/forward_scgpt.py --scinterp target/release/scinterp \\
        [--threads 2] [--cells 4] [--len 1200] [--repeats 3] [--json-out results.json]
    /tmp/pyenv/venv/bin/python bench/python/forward_scgpt.py --skip-scinterp   # torch half only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/reference"))
import scgpt_reference as ref  # noqa: E402

CHECK_TOL = 1e-3
E, NHEADS, D_HID, NLAYERS = 512, 8, 512, 12


def machine_info() -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"cpu": cpu, "nproc": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            # A busy machine (e.g. a concurrent cargo build) skews both columns; record the load.
            "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def prepare_model(workdir: Path, seed: int, real_dir: Path) -> Path:
    """Random-weight whole-human model as best_model.pt (flash layout) + the real args.json and vocab.json;
    reused if the folder is complete."""
    d = workdir / f"scgpt-whole-human-seed{seed}"
    if all((d / f).exists() for f in ("best_model.pt", "args.json", "vocab.json")):
        return d
    d.mkdir(parents=True, exist_ok=True)
    vocab = ref.copy_real_vocab(d, real_dir / "vocab.json")
    pad_id, _, _ = ref.special_ids(vocab)
    args = ref.write_args_json(d, E, NLAYERS, NHEADS, D_HID, real_dir / "args.json")
    assert (args["embsize"], args["nheads"], args["d_hid"], args["nlayers"]) == (E, NHEADS, D_HID, NLAYERS)
    model = ref.ScGPTRef(len(vocab), E, NHEADS, D_HID, NLAYERS, pad_id)
    ref.randomise_(model, seed)
    tmp = d / "best_model.pt.partial"
    ref.save_checkpoint(model, tmp, "flash", "pt")  # writes tmp/best_model.pt; moved when complete
    (tmp / "best_model.pt").replace(d / "best_model.pt")
    tmp.rmdir()
    print(f"wrote {d / 'best_model.pt'} ({(d / 'best_model.pt').stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return d


def make_cells(vocab: dict, n_cells: int, length: int, seed: int):
    pad_id, cls_id, _ = ref.special_ids(vocab)
    rng = np.random.default_rng(seed)
    return ref.random_cells(rng, pad_id, cls_id, [length] * n_cells)


@torch.no_grad()
def bench_torch(model: ref.ScGPTRef, ids: torch.Tensor, vals: torch.Tensor, fastpath: bool, repeats: int):
    """Best-of-repeats seconds of model.encode (embedding + value encoder + layers) on one batch."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        out = model.encode(ids, vals)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.encode(ids, vals)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.backends.mha.set_fastpath_enabled(was)
    assert not out.is_nested
    return best, out


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


def tokens_per_second(summary: dict) -> float:
    if "tokens_per_second" in summary:
        return float(summary["tokens_per_second"])
    return float(summary["tokens"]) / float(summary["forward_seconds"])


def bench_scinterp(binary: str, model_dir: Path, inp: Path, hook: str, out: Path, threads: int, repeats: int):
    """Best tokens_per_second over `repeats` runs; returns (tok/s, last run's JSON)."""
    # --threads is a global flag: it goes before the subcommand.
    cmd = [binary, "--threads", str(threads), "forward", "--model", str(model_dir), "--input", str(inp),
           "--hooks", hook, "--out", str(out), "--overwrite", "--json"]
    best, last = 0.0, None
    for _ in range(repeats):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        last = parse_json_stdout(proc.stdout)
        best = max(best, tokens_per_second(last))
    return best, last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--len", type=int, default=1200, dest="length", help="tokens per cell incl. <cls> (default 1200)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench/compare/.work")
    ap.add_argument("--real-dir", type=Path, default=ref.REAL_DIR, help="folder with the real args.json and vocab.json")
    ap.add_argument("--scinterp", default=os.environ.get("SCINTERP_BIN"), help="scinterp binary (default $SCINTERP_BIN)")
    ap.add_argument("--skip-scinterp", action="store_true", help="time torch only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    if not args.skip_scinterp and not args.scinterp:
        ap.error("give --scinterp BIN (or set SCINTERP_BIN), or --skip-scinterp")
    if args.length < 2:
        ap.error("--len must be ≥ 2 (<cls> + at least one gene)")
    if args.length > 1200:
        print(f"note: --len {args.length} exceeds scGPT's max_seq_len 1200", file=sys.stderr)

    torch.set_num_threads(args.threads)
    info = machine_info()
    info["threads"] = args.threads
    model_dir = prepare_model(args.workdir, args.seed, args.real_dir)
    vocab = json.loads((model_dir / "vocab.json").read_text())
    cells_ids, cells_vals = make_cells(vocab, args.cells, args.length, args.seed + 1)
    inp = model_dir / f"input_{args.cells}x{args.length}.json"
    ref.write_input_json(inp, cells_ids, cells_vals)
    ids = torch.tensor(cells_ids, dtype=torch.int64)
    vals = torch.tensor(cells_vals, dtype=torch.float32)
    n_tok = args.cells * args.length

    model = ref.load_model_dir(model_dir)
    results: dict = {"model": "scGPT whole-human (random weights)", "cells": args.cells, "len": args.length,
                     "tokens": n_tok, "threads": args.threads, "repeats": args.repeats}
    outs = {}
    for mode, fast in (("torch_fastpath", True), ("torch_no_fastpath", False)):
        t, outs[mode] = bench_torch(model, ids, vals, fast, args.repeats)
        results[mode] = {"seconds": t, "tok_s": n_tok / t}
        print(f"[{mode}] {t:.3f} s  ({n_tok / t:,.0f} tok/s)", file=sys.stderr)
    # The fused kernel computes the same function; a difference of exactly 0 would mean it was not used.
    results["fastpath_vs_no_fastpath_rel_err"] = ref.rel_err(outs["torch_fastpath"], outs["torch_no_fastpath"])

    ok = True
    if not args.skip_scinterp:
        hook = f"blocks.{NLAYERS - 1}.hook_resid_post"
        out = model_dir / "scinterp_out.safetensors"
        try:
            tok_s, last = bench_scinterp(args.scinterp, model_dir, inp, hook, out, args.threads, args.repeats)
            h_sc = load_file(str(out))[hook]
            if list(h_sc.shape) != [args.cells, args.length, E]:
                raise ValueError(f"{hook} has shape {list(h_sc.shape)}, want {[args.cells, args.length, E]}")
            err = ref.rel_err(h_sc, outs["torch_no_fastpath"])
            sc_tokens = int(last.get("tokens", n_tok))
            results["scinterp"] = {"seconds": n_tok / tok_s, "tok_s": tok_s, "final_hidden_rel_err": err,
                                   "check_ok": err <= CHECK_TOL and sc_tokens == n_tok, "json": last}
            for mode in ("torch_fastpath", "torch_no_fastpath"):
                results[f"ratio_vs_{mode}"] = tok_s / results[mode]["tok_s"]
            ok &= results["scinterp"]["check_ok"]
            print(f"[scinterp] {n_tok / tok_s:.3f} s  ({tok_s:,.0f} tok/s)  final-hidden rel err {err:.2e}",
                  file=sys.stderr)
        except (RuntimeError, ValueError, KeyError) as e:
            results["scinterp_error"] = str(e)
            ok = False
            print(f"[scinterp] FAILED: {e}", file=sys.stderr)

    # ---- report ----
    print()
    print(f"CPU: {info['cpu']}  nproc={info['nproc']}  threads={args.threads}  torch {info['torch']}  "
          f"{info['date']}  load(1m)={info['loadavg_1m']}  repeats={args.repeats} (best)")
    print(f"scGPT whole-human shape (E {E}, {NHEADS} heads, d_hid {D_HID}, {NLAYERS} layers, vocab {len(vocab):,}), "
          f"{args.cells} cells × {args.length} tokens = {n_tok:,} tokens; torch fast path vs no fast path: "
          f"rel err {results['fastpath_vs_no_fastpath_rel_err']:.1e}")
    hdr = f"{'engine':<28} {'seconds':>9} {'tok/s':>10} {'scinterp/this':>14}"
    print(hdr)
    print("-" * len(hdr))
    for key, label in (("torch_fastpath", "torch (MHA fast path on)"), ("torch_no_fastpath", "torch (fast path off)"),
                       ("scinterp", "scinterp")):
        if key not in results:
            if key == "scinterp":
                print(f"{label:<28} {'error' if 'scinterp_error' in results else '-':>9}")
            continue
        r = results[key]
        ratio = (f"{results['ratio_vs_' + key]:.2f}" if "ratio_vs_" + key in results
                 else "1.00" if key == "scinterp" else "-")
        print(f"{label:<28} {r['seconds']:>9.3f} {r['tok_s']:>10,.0f} {ratio:>14}")
    if "scinterp" in results:
        s = results["scinterp"]
        print(f"check: scinterp blocks.{NLAYERS - 1}.hook_resid_post vs torch: rel err {s['final_hidden_rel_err']:.1e} "
              f"({'ok' if s['check_ok'] else 'MISMATCH'}, tol {CHECK_TOL:g})")
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
