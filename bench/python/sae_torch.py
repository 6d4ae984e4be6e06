#!/usr/bin/env python3
"""PyTorch TopK SAE trainer written the way the published code does it: the CPU baseline for `scinterp sae train`.

The model and the step follow the published `sae_model.py` (methods.md §3.1; flaws kept on purpose):

  - inputs centred by the mean μ of the training rows (computed in f64 over the training rows, as published);
  - encoder nn.Linear(d, F) (Kaiming-uniform 'relu', zero bias); pre = W_enc(x − μ) + b_enc;
  - top-k of pre, ReLU on the k selected values, DENSE scatter into a zero [B, F] tensor;
  - decoder nn.Linear(F, d) with bias, dense decode x̂_c = W_dec·h + b_dec (in centred space);
  - loss: plain MSE(x − μ, x̂_c); Adam lr 3e-4, default betas; no AuxK, no clipping, no schedule;
  - after every step `W_dec.weight = F.normalize(W_dec.weight, dim=1)` on the [d, F] weight, i.e. the ROWS
    are made unit-norm (flaw A1, kept because that is what the published step costs and trains);
  - fp32, batch 4,096, a new permutation of the training rows every epoch; training rows preloaded into RAM
    and centred before the loop (the published < 8 GB branch); each batch is gathered from that array with a
    fancy index inside the loop, as published.

Data: an activation store folder (manifest.json, `<hook>.npy` [n_rows, d] f16/f32, rows.npy int32
[n_rows, 3] = cell, position, token), opened with np.load(mmap_mode="r"). Rows of held-out cells are
excluded from training and used for evaluation. Held-out cells come from (first that applies):

  --heldout-cells FILE.npy   int64 list of held-out cell ids (e.g. SAE_DIR/heldout_cells.npy written by
                             `scinterp sae train`, so that both trainers use the same split);
  --holdout FRAC             otherwise: scinterp's rule (engine/src/sae/train.rs `is_heldout`, as of this
                             writing): cell c is held out iff
                             unit(splitmix64(splitmix64(seed ^ 0x48454C444F5554AA) ^ c)) < FRAC,
                             unit(h) = (h >> 11) / 2^53. Prefer --heldout-cells: it cannot drift.

Training runs for --tokens rows (the last batch is trimmed so that exactly that many are seen; default: one
epoch of the training rows), with torch.set_num_threads(--threads).

Reported (one JSON object on stdout with --json, else a readable summary):
  tokens_trained, steps, train_seconds (the training loop only: gather, forward, backward, Adam, decoder
  normalisation), tokens_per_second, train_cpu_seconds (process CPU time of the loop, all threads), load_seconds (reading + centring, not in train_seconds), and
  heldout = {rows, cells, fvu, ve, l0, dead_fraction, mse}:
    fvu  = Σ‖x − x̂‖² / Σ‖x − mean_heldout‖² over held-out rows (x̂ in the original, un-centred space);
    ve   = 1 − fvu;  l0 = mean number of latents with value > 0 per held-out row;
    dead_fraction = fraction of the F latents never > 0 on any held-out row.

--save SAE_DIR writes the trained SAE in SAELens layout (cfg.json + sae_weights.safetensors), converted
exactly as gpu-and-performance.md §8.2 says (W_enc = W_eᵀ, W_dec = W_dᵀ, b_dec = b_d + μ, b_enc = b_e + W_e·b_d,
apply_b_dec_to_input true); the decoder rows are then NOT unit-norm (flaw A1), which SAELens accepts.

Usage (from the repository root):

    /tmp/pyenv/venv/bin/python bench/python/sae_torch.py --acts STORE [--hook blocks.0.hook_resid_post] \\
        [--d-sae 4608] [--k 32] [--tokens 300000] [--batch-size 4096] [--lr 3e-4] [--seed 0] \\
        [--threads 2] [--heldout-cells SAE_DIR/heldout_cells.npy | --holdout 0.1] [--save DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class PublishedTopKSAE(nn.Module):
    """TopK SAE as in the published code (centring outside, dense scatter and decode)."""

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

    def encode(self, xc: torch.Tensor) -> torch.Tensor:
        pre = self.W_enc(xc)
        vals, idx = torch.topk(pre, self.k, dim=-1)
        vals = F.relu(vals)
        h = torch.zeros_like(pre)
        h.scatter_(-1, idx, vals)
        return h

    def forward(self, xc: torch.Tensor):
        h = self.encode(xc)
        return self.W_dec(h), h

    @torch.no_grad()
    def normalize_decoder(self):
        # Published: rows of the [d, n] weight (the wrong axis, methods.md §14 A1).
        self.W_dec.weight.data = F.normalize(self.W_dec.weight.data, dim=1)


def open_store(store: Path, hook: str | None):
    manifest = {}
    mpath = store / "manifest.json"
    if mpath.exists():
        manifest = json.loads(mpath.read_text())
    if hook is None:
        hooks = manifest.get("hooks")
        if isinstance(hooks, list) and hooks:
            h0 = hooks[0]
            hook = h0 if isinstance(h0, str) else h0.get("name")
        else:
            cands = sorted(p.stem for p in store.glob("*.npy") if p.stem.startswith(("blocks.", "hook_")))
            if not cands:
                sys.exit(f"error: {store}: no hook .npy found; pass --hook")
            hook = cands[0]
    apath = store / f"{hook}.npy"
    if not apath.exists():
        sys.exit(f"error: {apath} not found (hook {hook!r}); pass --hook with one of the store's hooks")
    acts = np.load(apath, mmap_mode="r")
    rows = np.load(store / "rows.npy", mmap_mode="r")
    if manifest.get("complete") is False and isinstance(manifest.get("rows_complete"), int):
        # An interrupted store: only rows 0..rows_complete are written.
        n_ok = manifest["rows_complete"]
        print(f"warning: {store} is incomplete; using its first {n_ok} rows", file=sys.stderr)
        acts, rows = acts[:n_ok], rows[:n_ok]
    if acts.ndim != 2 or rows.ndim != 2 or rows.shape[0] != acts.shape[0] or rows.shape[1] != 3:
        sys.exit(f"error: {store}: activations {acts.shape} and rows.npy {rows.shape} do not match "
                 "([n, d] and [n, 3])")
    return hook, acts, rows


M64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def scinterp_is_heldout(cell: int, seed: int, fraction: float) -> bool:
    h = splitmix64(splitmix64((seed ^ 0x48454C444F5554AA) & M64) ^ (cell & M64))
    return (h >> 11) / float(1 << 53) < fraction


def choose_heldout(cells: np.ndarray, args) -> np.ndarray:
    if args.heldout_cells:
        return np.asarray(np.load(args.heldout_cells), dtype=np.int64)
    if args.holdout <= 0:
        return np.zeros(0, dtype=np.int64)
    uniq = np.unique(cells)
    return np.array([c for c in uniq.tolist() if scinterp_is_heldout(int(c), args.seed, args.holdout)],
                    dtype=np.int64)


def gather_rows(acts, idx: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """acts[idx] as f32, read in sorted chunks from the memory map."""
    out = np.empty((len(idx), acts.shape[1]), dtype=np.float32)
    for s in range(0, len(idx), chunk):
        out[s:s + chunk] = acts[idx[s:s + chunk]]
    return out


@torch.no_grad()
def evaluate(sae: PublishedTopKSAE, x_eval: np.ndarray, mu: np.ndarray, n: int, batch: int = 8192) -> dict:
    if len(x_eval) == 0:
        return {"rows": 0}
    mean_h = x_eval.astype(np.float64).mean(axis=0)
    mu_t = torch.from_numpy(mu)
    sse = 0.0
    sst = 0.0
    active_total = 0
    fired = torch.zeros(n, dtype=torch.bool)
    for s in range(0, len(x_eval), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x_eval[s:s + batch]))
        xhat_c, h = sae(xb - mu_t)
        xhat = xhat_c + mu_t
        sse += float(((xb.double() - xhat.double()) ** 2).sum())
        sst += float(((xb.double() - torch.from_numpy(mean_h)) ** 2).sum())
        act = h > 0
        active_total += int(act.sum())
        fired |= act.any(dim=0)
    fvu = sse / sst if sst > 0 else float("nan")
    return {
        "rows": int(len(x_eval)),
        "fvu": fvu,
        "ve": 1.0 - fvu,
        "mse": sse / (len(x_eval) * x_eval.shape[1]),
        "l0": active_total / len(x_eval),
        "dead_fraction": float((~fired).sum()) / n,
    }


def save_saelens(sae: PublishedTopKSAE, mu: np.ndarray, out: Path, hook: str, k: int, meta: dict):
    from safetensors.numpy import save_file

    We = sae.W_enc.weight.detach().double().numpy()  # [n, d]
    be = sae.W_enc.bias.detach().double().numpy()  # [n]
    Wd = sae.W_dec.weight.detach().double().numpy()  # [d, n]
    bd = sae.W_dec.bias.detach().double().numpy()  # [d]
    tensors = {
        "W_enc": np.ascontiguousarray(We.T.astype(np.float32)),
        "b_enc": (be + We @ bd).astype(np.float32),
        "W_dec": np.ascontiguousarray(Wd.T.astype(np.float32)),
        "b_dec": (bd + mu.astype(np.float64)).astype(np.float32),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "sae_weights.safetensors"))
    cfg = {
        "d_in": int(We.shape[1]), "d_sae": int(We.shape[0]), "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "k": int(k), "rescale_acts_by_decoder_norm": False, "architecture": "topk",
        # sae_lens_version must be in metadata (>= 6.0): without it SAELens 6 treats the file as a pre-6.0
        # config and rebuilds metadata from top-level keys, dropping hook_name and the rest.
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": hook, "model_name": "synthetic",
                     "trainer": "bench/python/sae_torch.py", **meta},
    }
    (out / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--acts", required=True, type=Path, help="activation store folder")
    ap.add_argument("--hook", default=None, help="hook name (default: the store's first hook)")
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=0, help="training rows to process (default: one epoch)")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--heldout-cells", type=Path, default=None, help="int64 .npy of held-out cell ids")
    ap.add_argument("--holdout", type=float, default=0.1, help="fraction of cells held out (no --heldout-cells)")
    ap.add_argument("--max-eval-rows", type=int, default=0, help="evaluate on at most this many held-out rows")
    ap.add_argument("--save", type=Path, default=None, help="write the SAE here in SAELens layout")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.RandomState(args.seed)

    t_load0 = time.perf_counter()
    hook, acts, rows = open_store(args.acts, args.hook)
    cells = np.asarray(rows[:, 0], dtype=np.int64)
    heldout = choose_heldout(cells, args)
    is_out = np.isin(cells, heldout)
    train_idx = np.flatnonzero(~is_out)
    eval_idx = np.flatnonzero(is_out)
    if args.max_eval_rows and len(eval_idx) > args.max_eval_rows:
        eval_idx = eval_idx[: args.max_eval_rows]
    if len(train_idx) == 0:
        sys.exit("error: no training rows left after removing held-out cells")
    d = acts.shape[1]
    x_train = gather_rows(acts, train_idx)
    mu = (x_train.astype(np.float64).sum(axis=0) / len(x_train)).astype(np.float32)
    x_train -= mu[None, :]
    x_eval = gather_rows(acts, eval_idx)
    load_seconds = time.perf_counter() - t_load0

    sae = PublishedTopKSAE(d, args.d_sae, args.k)
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    total = args.tokens if args.tokens > 0 else len(x_train)
    B = args.batch_size

    seen = 0
    steps = 0
    loss_last = float("nan")
    sae.train()
    t0 = time.perf_counter()
    c0 = time.process_time()
    while seen < total:
        perm = rng.permutation(len(x_train))
        for s in range(0, len(perm), B):
            take = min(B, len(perm) - s, total - seen)
            if take <= 0:
                break
            batch = torch.tensor(x_train[perm[s:s + take]], dtype=torch.float32)
            xhat, _ = sae(batch)
            loss = F.mse_loss(xhat, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sae.normalize_decoder()
            loss_last = loss.item()
            seen += take
            steps += 1
            if seen >= total:
                break
    train_seconds = time.perf_counter() - t0
    train_cpu_seconds = time.process_time() - c0
    sae.eval()

    t_eval0 = time.perf_counter()
    held = evaluate(sae, x_eval, mu, args.d_sae)
    held["cells"] = int(len(heldout))
    eval_seconds = time.perf_counter() - t_eval0

    result = {
        "trainer": "torch (published TopK SAE step)",
        "torch_version": torch.__version__,
        "threads": args.threads,
        "hook": hook,
        "d_in": int(d),
        "d_sae": args.d_sae,
        "k": args.k,
        "batch_size": B,
        "lr": args.lr,
        "seed": args.seed,
        "train_rows": int(len(train_idx)),
        "tokens_trained": int(seen),
        "steps": steps,
        "epochs": seen / len(x_train),
        "train_seconds": train_seconds,
        "tokens_per_second": seen / train_seconds if train_seconds > 0 else float("nan"),
        "train_cpu_seconds": train_cpu_seconds,
        "final_batch_mse_centred": loss_last,
        "load_seconds": load_seconds,
        "eval_seconds": eval_seconds,
        "heldout": held,
    }
    if args.save:
        save_saelens(sae, mu, args.save, hook, args.k, {"seed": args.seed, "tokens_trained": int(seen)})
        result["saved"] = str(args.save)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"torch TopK SAE ({d} -> {args.d_sae}, k {args.k}), {args.threads} threads, torch {torch.__version__}")
        print(f"  trained {seen:,} tokens in {steps} steps, {train_seconds:.2f} s: {result['tokens_per_second']:,.0f} tok/s"
              f" (load {load_seconds:.1f} s)")
        if held.get("rows"):
            print(f"  held-out: {held['rows']:,} rows of {held['cells']} cells: FVU {held['fvu']:.4f}, "
                  f"L0 {held['l0']:.2f}, dead {held['dead_fraction']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
