#!/usr/bin/env python3
"""TopK SAE training throughput on the GPU (issue 9): the published trainer vs a strong PyTorch baseline, and
optionally `scinterp sae train`, at d = 1,152, F = 4,608, k = 32, batch 4,096 tokens, on synthetic activations.

Self-contained: standard library + torch + numpy (+ safetensors not needed). Seeded (--seed).

Data: --rows synthetic rows made on --device from a planted dictionary (the recipe of sae_fake_store.py /
`scinterp sae synth`: x = offset + Σ_{a∈S} c_a·atom_a + noise, |S| = --active atoms per row, c ~ U[0.5, 2],
unit atoms, a unit offset, noise of expected norm 0.5). Throughput does not depend on the values; the planted
structure only keeps the training dynamics (dead latents, AuxK) realistic. Final training MSE / FVU are printed
as a sanity check, not as a quality comparison.

Trainers (each: --warmup-steps untimed steps, then a timed run; torch.cuda.synchronize() before each clock read):
  published   the published step, as bench/python/sae_torch.py (methods.md §3.1) but on the GPU: f32 (TF32 left at
              PyTorch's default, off), nn.Linear encoder and decoder, top-k + ReLU scattered into a DENSE [B, F]
              tensor, dense decode, plain MSE on centred inputs, torch.optim.Adam (default settings), decoder
              rows renormalised after every step (the published axis), `loss.item()` every step. Data as
              published: the centred rows preloaded in host RAM (numpy f32), each batch gathered with a fancy
              index of a per-epoch permutation, `torch.tensor(...)` and copied to the device.
  published_device_data
              the same step with the rows resident on the device (index_select per batch), to separate the cost
              of the published data path from the cost of its step.
  strong      a strong baseline in the style of EleutherAI/sparsify (gpu-and-performance.md §8.1): rows resident
              on the device in bf16; bf16 autocast; encoder pre = (x − b_dec)·W_encᵀ + b_enc, ReLU, top-k
              (sorted=False); SPARSE decode x̂ = embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")
              + b_dec (f32 accumulation, W_dec [F, d] f32 master); loss = Σ(x − x̂)² / Σ(x − mean)² (FVU);
              AuxK (Gao et al.): latents that have not fired for --dead-after-tokens tokens are dead; when any
              are, the top k_aux = d/2 pre-activations over the dead latents reconstruct the residual e = x − x̂
              (detached), loss += --aux-coef · min(n_dead/k_aux, 1) · Σ(ê − e)² / Σ(x − mean)²; the AuxK decode
              is a dense bf16 GEMM (k_aux = 576 of 4,608 latents makes a gather slower than the GEMM). As in
              sparsify, whether any latent is dead is read on the host every step (one sync per step).
              Unit-norm decoder rows with the gradient component parallel to each row removed before the step
              and the rows renormalised after it; Adam (fused=True on CUDA), lr --lr.
  scinterp    (--scinterp BIN) the same rows written as an activation store (manifest.json, <hook>.npy f16,
              rows.npy) in --workdir, then `BIN sae train --acts STORE --hook H --d-sae F --k K --out DIR
              --tokens N --batch-size B --splice-cells 0 --holdout 0 --seed S --overwrite --json -q
              --device D` (`--scinterp-device ''` omits --device: the CPU trainer). tokens_per_second and
              train_seconds are read from its JSON stdout. A failure (e.g. no GPU trainer yet) is reported and
              the script carries on (exit status 1).

Reported: tokens/s per trainer, ratios (strong / published, scinterp / published, scinterp / strong), against
the targets of issue 9 (scinterp ≥ 20 M tokens/s and ≥ 10× the published trainer); machine info; --json-out.

Usage (GPU machine; see bench/gpu/README.md):
    python bench/python/sae_gpu.py --json-out sae_gpu.json [--scinterp target/release/scinterp]
CPU smoke test (true shapes, a few steps):
    python bench/python/sae_gpu.py --device cpu --tokens small
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HOOK = "blocks.5.hook_resid_post"


# ------------------------------------------------------------------------------------------------ machine
def machine_info(device: str) -> dict:
    info = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "host": platform.node(), "nproc": os.cpu_count(), "device": device,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.startswith("cuda"):
        idx = torch.device(device).index or 0
        p = torch.cuda.get_device_properties(idx)
        info.update({"gpu": torch.cuda.get_device_name(idx), "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                     "sm_count": p.multi_processor_count, "cuda_runtime": torch.version.cuda,
                     "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)})
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        info["threads"] = torch.get_num_threads()
    return info


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ data
def make_rows(n: int, d: int, atoms: int, active: int, seed: int, device: str) -> torch.Tensor:
    """[n, d] f32 synthetic rows on `device` (planted dictionary, seeded)."""
    g = torch.Generator(device=device).manual_seed(seed)
    A = torch.randn(atoms, d, generator=g, device=device)
    A /= A.norm(dim=1, keepdim=True)
    off = torch.randn(d, generator=g, device=device)
    off /= off.norm()
    sigma = 0.5 / math.sqrt(d)
    out = torch.empty(n, d, device=device)
    chunk = 16384
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        idx = torch.randint(0, atoms, (m, active), generator=g, device=device)  # repeats possible; harmless
        coef = 0.5 + 1.5 * torch.rand(m, active, generator=g, device=device)
        out[s:s + m] = torch.einsum("ma,mad->md", coef, A[idx]) + off + sigma * torch.randn(m, d, generator=g,
                                                                                            device=device)
    return out


# ------------------------------------------------------------------------------------------------ published
class PublishedTopKSAE(nn.Module):
    """TopK SAE as in the published code (and bench/python/sae_torch.py): dense scatter and dense decode."""

    def __init__(self, d: int, n: int, k: int):
        super().__init__()
        self.k = k
        self.W_enc = nn.Linear(d, n, bias=True)
        self.W_dec = nn.Linear(n, d, bias=True)
        nn.init.kaiming_uniform_(self.W_enc.weight, nonlinearity="relu")
        nn.init.zeros_(self.W_enc.bias)
        nn.init.kaiming_uniform_(self.W_dec.weight, nonlinearity="linear")
        with torch.no_grad():
            self.W_dec.weight.data = F.normalize(self.W_dec.weight.data, dim=1)
        nn.init.zeros_(self.W_dec.bias)

    def forward(self, xc):
        pre = self.W_enc(xc)
        vals, idx = torch.topk(pre, self.k, dim=-1)
        h = torch.zeros_like(pre)
        h.scatter_(-1, idx, F.relu(vals))
        return self.W_dec(h), h

    @torch.no_grad()
    def normalize_decoder(self):
        self.W_dec.weight.data = F.normalize(self.W_dec.weight.data, dim=1)  # published axis (flaw A1)


def train_published(x_dev: torch.Tensor, args, device: str, host_data: bool) -> dict:
    torch.manual_seed(args.seed)
    d = x_dev.shape[1]
    mu = x_dev.double().mean(0).float()
    if host_data:
        x_host = (x_dev - mu).cpu().numpy()  # preloaded, centred, in RAM (the published < 8 GB branch)
        n = len(x_host)
    else:
        x_c = x_dev - mu
        n = len(x_c)
    sae = PublishedTopKSAE(d, args.d_sae, args.k).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
    rng = np.random.RandomState(args.seed)
    B = args.batch_size

    def batches():
        while True:
            perm = rng.permutation(n)
            for s in range(0, n - B + 1, B):
                if host_data:
                    yield torch.tensor(x_host[perm[s:s + B]], dtype=torch.float32).to(device)
                else:
                    yield x_c.index_select(0, torch.from_numpy(perm[s:s + B]).to(device))

    it = batches()
    last = float("nan")

    def step():
        nonlocal last
        batch = next(it)
        xhat, _ = sae(batch)
        loss = F.mse_loss(xhat, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.normalize_decoder()
        last = loss.item()

    for _ in range(args.warmup_steps):
        step()
    steps = max(1, args.published_tokens // B)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = time.perf_counter() - t0
    var = float((x_dev - mu).pow(2).sum(1).mean())
    return {"steps": steps, "tokens": steps * B, "seconds": dt, "tokens_per_s": steps * B / dt,
            "final_mse": last, "final_fvu_approx": last * d / var, "data": "host" if host_data else "device"}


# ------------------------------------------------------------------------------------------------ strong
class StrongTopKSAE(nn.Module):
    def __init__(self, d: int, n: int, k: int, x_sample: torch.Tensor):
        super().__init__()
        self.k, self.n = k, n
        W = torch.randn(n, d, device=x_sample.device)
        W /= W.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W)                      # [F, d], unit rows
        self.W_enc = nn.Parameter(W.clone())              # [F, d], encoder starts as the decoder (Gao et al.)
        self.b_enc = nn.Parameter(torch.zeros(n, device=x_sample.device))
        self.b_dec = nn.Parameter(x_sample.float().median(0).values.clone())  # cheap geometric-median stand-in

    def encode(self, x):
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            pre = F.relu(F.linear(x - self.b_dec, self.W_enc, self.b_enc))
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return pre, vals, idx

    def decode(self, vals, idx):
        # Sparse decode: k rows of W_dec gathered per token, weighted, summed (f32).
        return F.embedding_bag(idx, self.W_dec, per_sample_weights=vals.float(), mode="sum") + self.b_dec

    @torch.no_grad()
    def remove_parallel_grad(self):
        g, w = self.W_dec.grad, self.W_dec.data
        g -= (g * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def normalize_decoder(self):
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)


def train_strong(x_dev: torch.Tensor, args, device: str) -> dict:
    torch.manual_seed(args.seed)
    d = x_dev.shape[1]
    x = x_dev.to(torch.bfloat16)  # resident on the device in bf16
    n = len(x)
    B = args.batch_size
    sae = StrongTopKSAE(d, args.d_sae, args.k, x_dev[: min(n, 65536)])
    fused = device.startswith("cuda")
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr, fused=fused) if fused else \
        torch.optim.Adam(sae.parameters(), lr=args.lr)
    k_aux_full = d // 2
    since_fired = torch.zeros(args.d_sae, dtype=torch.int64, device=device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    state = {"perm": torch.randperm(n, generator=g, device=device), "pos": 0, "aux_steps": 0, "last": float("nan")}

    def step():
        if state["pos"] + B > n:
            state["perm"] = torch.randperm(n, generator=g, device=device)
            state["pos"] = 0
        xb = x.index_select(0, state["perm"][state["pos"]:state["pos"] + B]).float()
        state["pos"] += B
        pre, vals, idx = sae.encode(xb)
        xhat = sae.decode(vals, idx)
        e = xb - xhat
        total_var = (xb - xb.mean(0)).pow(2).sum()
        loss = e.pow(2).sum() / total_var
        # dead-latent bookkeeping (device side)
        fired = torch.zeros(args.d_sae, dtype=torch.bool, device=device)
        fired[idx.flatten()] = True
        since_fired.add_(B)
        since_fired.masked_fill_(fired, 0)
        dead = since_fired >= args.dead_after_tokens
        n_dead = int(dead.sum())  # host read, as sparsify does
        if n_dead > 0:
            k_aux = min(k_aux_full, n_dead)
            aux_pre = pre.masked_fill(~dead, 0)  # only dead latents can be picked (ReLU'd pre-acts ≥ 0)
            a_vals, a_idx = aux_pre.topk(k_aux, dim=-1, sorted=False)
            codes = torch.zeros_like(pre).scatter_(-1, a_idx, a_vals)
            with torch.autocast(device_type=xb.device.type, dtype=torch.bfloat16):
                e_hat = codes @ sae.W_dec  # dense bf16 GEMM
            aux = (e_hat.float() - e.detach()).pow(2).sum() / total_var
            loss = loss + args.aux_coef * min(n_dead / k_aux_full, 1.0) * aux
            state["aux_steps"] += 1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalize_decoder()
        state["last"] = loss.detach()

    for _ in range(args.warmup_steps):
        step()
    state["aux_steps"] = 0
    steps = max(1, args.tokens // B)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = time.perf_counter() - t0
    return {"steps": steps, "tokens": steps * B, "seconds": dt, "tokens_per_s": steps * B / dt,
            "final_loss_fvu": float(state["last"]), "aux_steps": state["aux_steps"],
            "dead_at_end": int((since_fired >= args.dead_after_tokens).sum()), "lr": args.lr}


# ------------------------------------------------------------------------------------------------ scinterp
def write_store(x: torch.Tensor, out: Path, rows_per_cell: int = 1000) -> None:
    """Activation store (the layout of `scinterp extract` / sae_fake_store.py), f16 activations."""
    if (out / "manifest.json").exists():
        return
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n, d = x.shape
    X = np.lib.format.open_memmap(tmp / f"{HOOK}.npy", mode="w+", dtype=np.float16, shape=(n, d))
    for s in range(0, n, 65536):
        X[s:s + 65536] = x[s:s + 65536].to(torch.float16).cpu().numpy()
    X.flush()
    del X
    r = np.arange(n)
    rows = np.stack([r // rows_per_cell, r % rows_per_cell, 4 + r % 20000], axis=1).astype(np.int32)
    np.save(tmp / "rows.npy", rows)
    n_cells = int(rows[-1, 0]) + 1
    manifest = {"format": "scinterp-activation-store", "format_version": 1,
                "model": {"kind": "synthetic", "maker": "bench/python/sae_gpu.py"},
                "source": {"synthetic": True}, "hooks": [HOOK], "dtype": "f16", "d_model": d,
                "include_special": False, "n_cells": n_cells, "n_rows": n, "max_batch_tokens": 0,
                "cells_complete": n_cells, "rows_complete": n, "complete": True, "scinterp_version": "none"}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.rename(out)


def parse_json_stdout(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        for line in reversed(text.strip().splitlines()):
            if line.strip().startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
    raise ValueError(f"no JSON object on scinterp stdout: {text[-500:]!r}")


def run_scinterp(x: torch.Tensor, args) -> dict:
    store = args.workdir / f"sae_store_{len(x)}x{x.shape[1]}_s{args.seed}"
    write_store(x, store)
    out = args.workdir / "sae_scinterp_out"
    cmd = [args.scinterp, "sae", "train", "--acts", str(store), "--hook", HOOK, "--d-sae", str(args.d_sae),
           "--k", str(args.k), "--out", str(out), "--tokens", str(args.scinterp_tokens), "--batch-size",
           str(args.batch_size), "--splice-cells", "0", "--holdout", "0", "--seed", str(args.seed),
           "--overwrite", "--json", "-q"]
    if args.scinterp_device:
        cmd += ["--device", args.scinterp_device]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    js = parse_json_stdout(proc.stdout)
    return {"tokens": int(js["tokens_trained"]), "seconds": float(js["train_seconds"]),
            "tokens_per_s": float(js["tokens_per_second"]), "process_wall": wall,
            "final_train_nmse": js.get("final_train_nmse"), "json": js}


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--d-in", type=int, default=1152)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=524288, help="synthetic rows (resident data)")
    ap.add_argument("--active", type=int, default=8, help="planted atoms per row")
    ap.add_argument("--tokens", default="16777216", help="timed tokens for the strong baseline, or `small` "
                    "(smoke test: 2 steps each, 1 warm-up, 4 batches of rows)")
    ap.add_argument("--published-tokens", type=int, default=2097152, help="timed tokens for the published trainer")
    ap.add_argument("--scinterp-tokens", type=int, default=0, help="tokens for scinterp (default: as --tokens)")
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-4 / math.sqrt(4608 / 2**14))
    ap.add_argument("--aux-coef", type=float, default=1 / 32)
    ap.add_argument("--dead-after-tokens", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-published", action="store_true")
    ap.add_argument("--scinterp", default=os.environ.get("SCINTERP_BIN"))
    ap.add_argument("--scinterp-device", default="cuda", help="`--device` given to scinterp ('' to omit it)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scinterp-bench"))
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()

    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False (use --device cpu --tokens small)")
    if args.tokens == "small":
        args.tokens = 2 * args.batch_size
        args.published_tokens = 2 * args.batch_size
        args.warmup_steps = 1
        args.rows = 4 * args.batch_size
    else:
        args.tokens = int(args.tokens)
    if not args.scinterp_tokens:
        args.scinterp_tokens = args.tokens
    args.workdir.mkdir(parents=True, exist_ok=True)
    info = machine_info(dev)
    print(json.dumps(info), file=sys.stderr)

    t0 = time.perf_counter()
    x = make_rows(args.rows, args.d_in, args.d_sae, args.active, args.seed, dev)
    sync(dev)
    print(f"data: {args.rows} × {args.d_in} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    res, ok = {}, True
    if not args.skip_published:
        res["published"] = train_published(x, args, dev, host_data=True)
        print(f"published (host data): {res['published']['tokens_per_s']:,.0f} tok/s", file=sys.stderr)
        res["published_device_data"] = train_published(x, args, dev, host_data=False)
        print(f"published (device data): {res['published_device_data']['tokens_per_s']:,.0f} tok/s", file=sys.stderr)
    res["strong"] = train_strong(x, args, dev)
    print(f"strong: {res['strong']['tokens_per_s']:,.0f} tok/s", file=sys.stderr)
    if args.scinterp:
        try:
            res["scinterp"] = run_scinterp(x, args)
            print(f"scinterp: {res['scinterp']['tokens_per_s']:,.0f} tok/s", file=sys.stderr)
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            res["scinterp_error"] = str(e)
            ok = False
            print(f"scinterp FAILED: {e}", file=sys.stderr)

    ratios = {}
    for a, b in (("strong", "published"), ("scinterp", "published"), ("scinterp", "strong"),
                 ("strong", "published_device_data"), ("scinterp", "published_device_data")):
        if a in res and b in res:
            ratios[f"{a}/{b}"] = res[a]["tokens_per_s"] / res[b]["tokens_per_s"]

    print()
    where = f"GPU: {info.get('gpu')}  driver {info.get('driver')}  CUDA {info.get('cuda_runtime')}" \
        if dev.startswith("cuda") else f"CPU ({info.get('threads')} threads)"
    print(f"{where}  torch {info['torch']}  {info['date']}")
    print(f"TopK SAE d {args.d_in} → F {args.d_sae}, k {args.k}, batch {args.batch_size}, {args.rows} synthetic rows")
    hdr = f"{'trainer':<34} {'tokens':>11} {'seconds':>9} {'tokens/s':>14}"
    print(hdr)
    print("-" * len(hdr))
    labels = {"published": "published (f32 dense, host data)", "published_device_data": "published (device data)",
              "strong": "strong (bf16, embedding_bag, AuxK)", "scinterp": "scinterp sae train"}
    for key, label in labels.items():
        if key in res:
            r = res[key]
            print(f"{label:<34} {r['tokens']:>11,} {r['seconds']:>9.3f} {r['tokens_per_s']:>14,.0f}")
    if "scinterp_error" in res:
        print(f"{'scinterp sae train':<34} FAILED: {res['scinterp_error'][:300]}")
    if "strong" in res:
        print(f"strong: AuxK active in {res['strong']['aux_steps']} of {res['strong']['steps']} timed steps; "
              f"final loss (FVU) {res['strong']['final_loss_fvu']:.4f}")
    for k_, v in ratios.items():
        print(f"ratio {k_}: {v:.2f}x")
    if "scinterp" in res:
        print(f"targets (issue 9): scinterp ≥ 20,000,000 tok/s: {res['scinterp']['tokens_per_s']:,.0f}; "
              f"≥ 10x published: {ratios.get('scinterp/published', float('nan')):.1f}x")
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": info, "args": {k_: str(v) for k_, v in vars(args).items()},
                                             "results": res, "ratios": ratios}, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
