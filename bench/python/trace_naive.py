#!/usr/bin/env python3
"""Circuit-tracing CPU benchmark: `scinterp trace` vs the naive published loop (one hooked full HF forward per
(feature, cell), batch 1) on the same model, SAEs, cells and (feature, cell) set.

  1. model: the real Geneformer-V1-10M config (6 layers, d 256, 4 heads, FFN 512, vocab 25,426, 2,048
     positions), seeded random weights, `save_pretrained` (safetensors) into bench/compare/.work/
     Geneformer-V1-10M/ (shared with bench/compare/forward_cpu; reused if present);
  2. cells: a V1 token store (tokens.npy / offsets.npy / manifest.json / cells.tsv) of --train-cells cells of
     --len distinct gene ids from 2..25,425 (seeded); the first --cells are traced;
  3. SAEs (cached): `scinterp extract --dtype f32` of the source and target hooks on all --train-cells cells,
     then `scinterp sae train --d-sae D --k K --tokens N --batch-size 1024 --splice-cells 0` per hook;
  4. features: the first --features source features (by index) that fire in every traced cell (HF clean
     forward + the source SAE), so both engines run exactly --features × --cells ablations;
  5. torch: tests/reference/trace_reference.py's naive loop (torch.set_num_threads(T), eager, f32, eval,
     no_grad; per cell one clean forward, then per active feature one full forward with a forward hook on
     bert.encoder.layer[L] adding −a_f·W_dec[f] at the active positions; target SAEs encoded in torch);
     time = the whole loop (clean runs, ablated runs, encodes), statistics excluded;
  6. scinterp: `scinterp trace --threads T --features LIST --cells C --max-q 1 --json`; its summary's
     `seconds` covers the whole command (model load, clean runs, tail passes, statistics, writing);
     the wall time of the process is recorded too;
  7. ablations/s of each, the ratio scinterp/torch, and the two edge tables compared (every column's
     max|a−b|/max(1, max|b|); both are f32, so this is a sanity check, not the parity test).

Usually run through bench/compare/trace_cpu (which builds the binary). Directly, from the repo root:

    /tmp/pyenv/venv/bin/python bench/python/trace_naive.py --scinterp target/release/scinterp \\
        [--threads 2] [--cells 4] [--len 2048] [--features 16] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench/python"))
sys.path.insert(0, str(REPO / "tests/reference"))
import forward_cpu  # noqa: E402  (prepare_model, machine_info)
import trace_reference as ref  # noqa: E402

MODEL = "Geneformer-V1-10M"


def write_store(cells: list[list[int]], out: Path, seed: int) -> None:
    if (out / "manifest.json").exists():
        return
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tokens = np.concatenate([np.asarray(c, dtype=np.int32) for c in cells])
    offsets = np.zeros(len(cells) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in cells])
    np.save(tmp / "tokens.npy", tokens)
    np.save(tmp / "offsets.npy", offsets)
    manifest = {
        "format": "scinterp-token-store", "format_version": 1, "tokenizer": "geneformer",
        "tokenizer_version": "V1", "options": {"bench_seed": seed}, "dictionaries": {},
        "source_path": "bench/python/trace_naive.py (seeded synthetic cells)", "source_sha256": "",
        "n_cells": len(cells), "n_tokens": int(tokens.size), "max_len": max(len(c) for c in cells),
        "has_values": False, "n_cells_dropped": 0, "scinterp_version": "0.1.0",
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (tmp / "cells.tsv").write_text("cell\n" + "".join(f"bench_cell_{i}\n" for i in range(len(cells))))
    tmp.rename(out)


def sh(cmd: list[str]) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def prepare_saes(binary: str, model_dir: Path, store: Path, saes: Path, hooks: list[str], args) -> None:
    todo = [h for h in hooks if not (saes / h / "cfg.json").exists()]
    if not todo:
        return
    acts = saes.with_name(saes.name + "_acts")
    if acts.exists():
        subprocess.run(["rm", "-rf", str(acts)], check=True)
    sh([binary, "extract", "--model", str(model_dir), "--input", str(store), "--hooks", ",".join(todo), "--out",
        str(acts), "--dtype", "f32", "--threads", str(args.threads), "-q"])
    for h in todo:
        sh([binary, "sae", "train", "--acts", str(acts), "--hook", h, "--d-sae", str(args.d_sae), "--k",
            str(args.k), "--out", str(saes / h), "--tokens", str(args.sae_tokens), "--batch-size", "1024",
            "--splice-cells", "0", "--seed", str(args.seed), "--threads", str(args.threads), "-q", "--overwrite"])
    subprocess.run(["rm", "-rf", str(acts)], check=True)


def compare_tables(a_path: Path, b_path: Path) -> dict:
    def load(p):
        lines = p.read_text().splitlines()
        out = {}
        for line in lines[1:]:
            f = line.split("\t")
            out[(f[0], int(f[1]), f[2], int(f[3]))] = [float(x) for x in f[4:]]
        return lines[0].split("\t")[4:], out
    cols, a = load(a_path)
    _, b = load(b_path)
    common = [k for k in b if k in a]
    res = {"edges_scinterp": len(a), "edges_torch": len(b),
           "only_scinterp_abs_mean_ge_1e-6": sum(1 for k in a if k not in b and abs(a[k][1]) >= 1e-6),
           "only_torch_abs_mean_ge_1e-6": sum(1 for k in b if k not in a and abs(b[k][1]) >= 1e-6),
           "worst_rel": {}}
    for i, c in enumerate(cols):
        pairs = [(a[k][i], b[k][i]) for k in common if np.isfinite(b[k][i]) and np.isfinite(a[k][i])]
        if not pairs:
            continue
        scale = max(1.0, max(abs(y) for _, y in pairs))
        res["worst_rel"][c] = max(abs(x - y) for x, y in pairs) / scale
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scinterp", default=os.environ.get("SCINTERP_BIN"), required=False)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cells", type=int, default=4, help="cells traced")
    ap.add_argument("--train-cells", type=int, default=16, help="cells the SAEs are trained on (≥ --cells)")
    ap.add_argument("--len", type=int, default=2048, dest="length")
    ap.add_argument("--features", type=int, default=16, help="source features traced (each fires in every cell)")
    ap.add_argument("--source", default="blocks.1.hook_resid_post")
    ap.add_argument("--targets", default="blocks.2.hook_resid_post,blocks.3.hook_resid_post,"
                                         "blocks.4.hook_resid_post,blocks.5.hook_resid_post")
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--sae-tokens", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs-dir", type=Path, default=REPO.parent / "shared/data/geneformer/configs")
    ap.add_argument("--workdir", type=Path, default=REPO / "bench/compare/.work")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    if not args.scinterp:
        ap.error("give --scinterp BIN or set SCINTERP_BIN")
    assert args.train_cells >= args.cells

    torch.set_num_threads(args.threads)
    info = forward_cpu.machine_info()
    model_dir = forward_cpu.prepare_model(args.configs_dir, MODEL, args.workdir, args.seed)
    cfg = json.loads((model_dir / "config.json").read_text())
    V = cfg["vocab_size"]
    rng = np.random.default_rng(args.seed + 7)
    cells = [rng.choice(np.arange(2, V), size=args.length, replace=False).astype(int).tolist()
             for _ in range(args.train_cells)]
    tag = f"trace_v1_{args.train_cells}x{args.length}_s{args.seed}"
    store = args.workdir / f"{tag}_tokens"
    write_store(cells, store, args.seed)
    target_hooks = [h.strip() for h in args.targets.split(",") if h.strip()]
    saes = args.workdir / f"{tag}_saes_f{args.d_sae}_k{args.k}_t{args.sae_tokens}"
    prepare_saes(args.scinterp, model_dir, store, saes, [args.source] + target_hooks, args)

    # Features that fire in every traced cell (HF clean forward + source SAE), first N by index.
    model = ref.load_model(model_dir)
    L = ref.resid_post_layer(args.source)
    src = ref.find_sae(saes, args.source)
    targets = [(ref.resid_post_layer(h), ref.find_sae(saes, h)) for h in target_hooks]
    traced = cells[: args.cells]
    fires_everywhere = None
    with torch.no_grad():
        for cell in traced:
            hs = model.bert(input_ids=torch.tensor([cell]), output_hidden_states=True).hidden_states
            active = (src.encode(hs[L + 1][0]) > 0).any(0)  # V1 cells hold genes only
            fires_everywhere = active if fires_everywhere is None else fires_everywhere & active
    candidates = torch.nonzero(fires_everywhere).flatten().tolist()
    features = candidates[: args.features]
    if len(features) < args.features:
        print(f"warning: only {len(features)} features fire in all {args.cells} cells", file=sys.stderr)
    feat_list = ",".join(map(str, features))

    # Torch: the naive loop.
    load_torch = os.getloadavg()[0]
    t0 = time.perf_counter()
    cells_active, obs, abl_torch, fwd = ref.trace_observations(model, traced, {0, 1}, L, src, targets, features)
    t_torch = time.perf_counter() - t0
    rows = ref.edge_table(cells_active, obs, args.source, target_hooks)
    torch_tsv = args.workdir / f"{tag}_edges_torch.tsv"
    ref.write_tsv(rows, torch_tsv)
    print(f"torch: {abl_torch} ablations in {t_torch:.1f} s ({abl_torch / t_torch:.2f}/s; forwards {fwd:.1f} s)",
          file=sys.stderr)

    # scinterp.
    sci_tsv = args.workdir / f"{tag}_edges_scinterp.tsv"
    load_sci = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = sh([args.scinterp, "trace", "--model", str(model_dir), "--input", str(store), "--saes", str(saes),
               "--source", args.source, "--targets", ",".join(target_hooks), "--features", feat_list, "--cells",
               str(args.cells), "--max-q", "1", "--out", str(sci_tsv), "--threads", str(args.threads), "--json",
               "-q"])
    wall_sci = time.perf_counter() - t0
    summary = forward_cpu.parse_json_stdout(proc.stdout)
    abl_sci, t_sci = int(summary["ablations"]), float(summary["seconds"])
    print(f"scinterp: {abl_sci} ablations in {t_sci:.2f} s ({abl_sci / t_sci:.2f}/s; process wall {wall_sci:.2f} s)",
          file=sys.stderr)

    check = compare_tables(sci_tsv, torch_tsv)
    ratio = (abl_sci / t_sci) / (abl_torch / t_torch)
    print()
    print(f"CPU: {info['cpu']}  nproc={info['nproc']}  threads={args.threads}  torch {info['torch']}  "
          f"transformers {info['transformers']}  {info['date']}")
    print(f"model {MODEL} (random weights), {args.cells} cells × {args.length} tokens, source {args.source}, "
          f"targets {','.join(target_hooks)}, SAEs d_sae {args.d_sae} k {args.k}, {len(features)} features")
    print(f"{'engine':<28} {'ablations':>9} {'seconds':>9} {'ablations/s':>12} {'load(1m) before':>16}")
    print(f"{'torch naive (published)':<28} {abl_torch:>9} {t_torch:>9.2f} {abl_torch / t_torch:>12.2f} {load_torch:>16.2f}")
    print(f"{'scinterp trace':<28} {abl_sci:>9} {t_sci:>9.2f} {abl_sci / t_sci:>12.2f} {load_sci:>16.2f}")
    print(f"ratio scinterp/torch ablations/s: {ratio:.1f}x  (scinterp process wall {wall_sci:.2f} s: "
          f"{abl_sci / wall_sci:.2f}/s, {(abl_sci / wall_sci) / (abl_torch / t_torch):.1f}x)")
    print(f"edge tables: {check['edges_scinterp']} vs {check['edges_torch']} edges; only one side with |mean| ≥ 1e-6: "
          f"{check['only_scinterp_abs_mean_ge_1e-6']} / {check['only_torch_abs_mean_ge_1e-6']}; worst rel: "
          + ", ".join(f"{c} {v:.1e}" for c, v in check["worst_rel"].items()))
    ok = abl_sci == abl_torch
    if not ok:
        print(f"MISMATCH: ablation counts differ ({abl_sci} vs {abl_torch})")
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": info,
            "threads": args.threads, "cells": args.cells, "len": args.length, "features": features,
            "source": args.source, "targets": target_hooks, "d_sae": args.d_sae, "k": args.k,
            "torch": {"ablations": abl_torch, "seconds": t_torch, "forward_seconds": fwd, "load_1m": load_torch},
            "scinterp": {"ablations": abl_sci, "seconds": t_sci, "process_wall": wall_sci, "load_1m": load_sci,
                         "summary": summary},
            "ratio_ablations_per_second": ratio, "edge_check": check}, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
