#!/usr/bin/env python3
"""GPU forward/extraction benchmark on the Geneformer V2-316M config (issue 8): HF transformers, batched bf16
SDPA with every layer captured, vs the published way (batch 1, eager, f32, `.cpu()` every cell), and optionally
scinterp on the same weights and cells.

Self-contained: standard library + torch + transformers + numpy + safetensors; the V2-316M config is embedded
below (the GPU machine has no /work/shared and no network).

Model. `BertForMaskedLM(BertConfig(**V2_316M))` with seeded random weights (torch.manual_seed(--seed), built on
--device), `save_pretrained` (safetensors) into --workdir/<name>/ with the embedded config.json written next to
it (the published layout, which scinterp reads). An existing folder whose config.json equals the embedded config
is reused, so HF and scinterp always read the same weights.

Cells (V2 format: [2] + distinct gene ids drawn from 4..V-1 + [3], lengths counting CLS and EOS; seeded):
  fixed2048   --cells cells of exactly 2,048 tokens;
  fixed4096   --cells cells of exactly 4,096 tokens (the V2 context);
  ragged      --cells "real-looking" lengths capped at the context C = 4,096: 60 % of the cells exactly at the
              cap (K562 controls mostly hit the cap: mean 2,028 genes of a 2,046 cap, methods.md §2.1) and 40 %
              log-uniform on [300, C) (the long tail of small cells: few expressed genes). Seeded by --seed.
  --workloads picks a subset (comma list).

Measured (each after a warm-up; best of --repeats; torch.cuda.synchronize() before every clock read):
  (a) hf_bf16_sdpa_batched: HF BertModel (`model.bert`, no MLM head), bf16 weights, attn_implementation="sdpa",
      torch.inference_mode(). Cells sorted by length (descending) and packed greedily into batches whose padded
      size n_cells × max_len ≤ --batch-tokens, padded to the batch max with attention_mask. Every batch:
      input_ids/mask copied host→device (pinned, non_blocking), forward with output_hidden_states=True, then
      every hidden state (embeddings + each of the 18 layers = 19 tensors) has its real-token rows gathered
      (index_select with a precomputed flat index) and copied device→host into a pinned staging buffer
      (non_blocking, on a side copy stream so the copy of batch i overlaps the compute of batch i+1; two
      staging buffers used alternately, and the host waits on a buffer's event before reusing it). The clock
      stops after torch.cuda.synchronize(), i.e. after the last copy has landed.
  (b) published: HF BertForMaskedLM (the full model, MLM head included, as published), f32,
      attn_implementation="eager", batch 1, no padding, torch.no_grad(), output_hidden_states=True, and
      `[h[0].cpu() for h in hidden_states]` every cell (19 synchronous copies). TF32 is left at PyTorch's default
      (off for matmuls). Run on the first --published-cells cells of each workload (it is slow); rates are per cell.
      The published scripts' `torch.mps.empty_cache()` per cell is not imitated.
  (c) scinterp (--scinterp BIN): the same cells as (a), written as {"input_ids": [...]} JSON in chunks of
      --scinterp-chunk cells, one process per chunk (its output file holds every hook in f32, so it is bounded):
      `BIN forward --model DIR --input tokens.json --hooks H --out OUT --device D --max-batch-tokens T --json -q`
      (H = hook_embed + blocks.{0..17}.hook_resid_post, the same 19 tensors as (a), or `--scinterp-hooks`);
      forward_seconds and tokens are read from its JSON stdout (forward passes only: no model load, no file
      write), best of --scinterp-repeats per chunk, summed over chunks. Its blocks.17.hook_resid_post is
      compared with HF f32 (eager, from (b)) on the first --check-cells cells: rel = ‖a − b‖_F / ‖b‖_F per cell (max over cells), required ≤ 2e-2; the max
      elementwise |a − b| / max|b| is printed too. The same numbers are printed for HF bf16 SDPA batched vs
      HF f32, as the yardstick for what bf16 costs. A failing scinterp (e.g. `--device cuda` not built yet) is
      reported and the script carries on (exit status 1).

Ratios: scinterp / HF batched uses cells/s (same cells). Anything / published uses model FLOP/s, because (b)
runs only the first cells of a workload (for fixed lengths this equals the cells/s ratio).

FLOPs (model FLOPs, real tokens only, no MLM head, padding not counted): per cell of L tokens,
  n_layers · L · (2·(4·d² + 2·d·d_ff) + 4·L·d)   [GEMMs + QKᵀ and PV]
MFU = FLOP/s ÷ (--peak-tflops · 1e12); default 989 (dense bf16, H100/H200 SXM; ≈756 for H100 PCIe). The published
way runs f32 and its MFU is still quoted against the bf16 peak (the point is what the GPU could do).

Usage (GPU machine, from the repository root; see bench/gpu/README.md):
    python bench/python/forward_gpu.py --workdir /tmp/scinterp-bench --json-out forward_gpu.json \\
        [--scinterp target/release/scinterp] [--cells 64] [--published-cells 16] [--repeats 2]
CPU smoke test (tiny config: 2 layers, d = 64; HF parts only):
    python bench/python/forward_gpu.py --device cpu --tiny --workdir /tmp/fg-smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import BertConfig, BertForMaskedLM

# /work/shared/data/geneformer/configs/Geneformer-V2-316M/config.json, verbatim.
V2_316M = {
    "architectures": ["BertForMaskedLM"],
    "attention_probs_dropout_prob": 0.1,
    "classifier_dropout": None,
    "hidden_act": "relu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 1152,
    "initializer_range": 0.02,
    "intermediate_size": 4608,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 4096,
    "model_type": "bert",
    "num_attention_heads": 18,
    "num_hidden_layers": 18,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "torch_dtype": "float32",
    "transformers_version": "4.44.2",
    "type_vocab_size": 2,
    "use_cache": True,
    "vocab_size": 20275,
}
# Smoke-test config: V2 vocabulary and context (so the cell recipe is unchanged), 2 layers, d 64, 2 heads.
TINY = dict(V2_316M, hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2)

CHECK_TOL = 2e-2
RAGGED_AT_CAP = 0.6
RAGGED_MIN = 300


# ------------------------------------------------------------------------------------------------ machine
def machine_info(device: str) -> dict:
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "host": platform.node(), "nproc": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device}
    if device.startswith("cuda"):
        idx = torch.device(device).index or 0
        p = torch.cuda.get_device_properties(idx)
        info.update({"gpu": torch.cuda.get_device_name(idx), "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                     "sm_count": p.multi_processor_count, "capability": f"{p.major}.{p.minor}",
                     "cuda_runtime": torch.version.cuda})
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = out.stdout.strip()
            info["driver"] = out.stdout.split(",")[0].strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
        info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    else:
        info["cpu"] = platform.processor() or "?"
        info["threads"] = torch.get_num_threads()
    return info


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ model
def prepare_model(workdir: Path, cfg_dict: dict, name: str, seed: int, device: str) -> Path:
    """Seeded random-weight BertForMaskedLM saved (safetensors) in workdir/name; reused if the config matches."""
    d = workdir / name
    cfg_path, w_path = d / "config.json", d / "model.safetensors"
    if w_path.exists() and cfg_path.exists():
        try:
            if json.loads(cfg_path.read_text()) == cfg_dict:
                print(f"reusing {d}", file=sys.stderr)
                return d
        except json.JSONDecodeError:
            pass
        print(f"{d}: config differs from the embedded one; rebuilding", file=sys.stderr)
    t0 = time.perf_counter()
    cfg = BertConfig(**cfg_dict)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    with torch.device(device):  # initialising 316 M parameters on the GPU takes a fraction of the CPU's time
        model = BertForMaskedLM(cfg).eval()
    model = model.to("cpu")
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    cfg_path.write_text(json.dumps(cfg_dict, indent=2) + "\n")  # the published config.json, verbatim
    del model
    print(f"built {d} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return d


def load_hf(model_dir: Path, attn: str, dtype: torch.dtype, device: str) -> BertForMaskedLM:
    # Load in f32 and cast: `dtype=` / `torch_dtype=` differ between transformers 4.x and 5.x.
    model = BertForMaskedLM.from_pretrained(str(model_dir), attn_implementation=attn)
    return model.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------------------------------ cells
def make_cells(lengths: list[int], vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    genes = np.arange(4, vocab)
    return [[2] + rng.choice(genes, size=n - 2, replace=False).astype(int).tolist() + [3] for n in lengths]


def workload_lengths(name: str, n: int, context: int, seed: int) -> list[int]:
    if name == "fixed2048":
        return [min(2048, context)] * n
    if name == "fixed4096":
        return [min(4096, context)] * n
    if name == "ragged":
        rng = np.random.default_rng(seed + 1000)
        at_cap = rng.random(n) < RAGGED_AT_CAP
        lo = min(RAGGED_MIN, context - 1)
        tail = np.exp(rng.uniform(math.log(lo), math.log(context), n)).astype(int)
        return [int(context) if c else int(min(max(t, lo), context - 1)) for c, t in zip(at_cap, tail)]
    raise SystemExit(f"unknown workload {name!r} (fixed2048, fixed4096, ragged)")


def model_flops(lengths, n_layers: int, d: int, d_ff: int) -> float:
    return float(sum(n_layers * L * (2 * (4 * d * d + 2 * d * d_ff) + 4 * L * d) for L in lengths))


# ------------------------------------------------------------------------------------------------ (a) HF batched
def pack_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Cell indices sorted by length (descending), greedily grouped so that n × max_len ≤ budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[cur[0]] > budget:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


class BatchedHF:
    """HF bf16 SDPA batched run with every hidden state's real-token rows staged to pinned host memory."""

    def __init__(self, model, cells, batch_tokens: int, device: str, n_states: int, d: int, dtype):
        self.model, self.device = model, device
        lengths = [len(c) for c in cells]
        self.batches = []
        max_real = 0
        pin = device.startswith("cuda")
        for idx in pack_batches(lengths, batch_tokens):
            Lmax = lengths[idx[0]]
            ids = torch.zeros((len(idx), Lmax), dtype=torch.int64)
            mask = torch.zeros((len(idx), Lmax), dtype=torch.int64)
            flat = []
            for r, i in enumerate(idx):
                ids[r, : lengths[i]] = torch.tensor(cells[i])
                mask[r, : lengths[i]] = 1
                flat.append(torch.arange(lengths[i]) + r * Lmax)
            flat = torch.cat(flat)
            if pin:
                ids, mask, flat = ids.pin_memory(), mask.pin_memory(), flat.pin_memory()
            self.batches.append((idx, ids, mask, flat))
            max_real = max(max_real, flat.numel())
        self.n_states = n_states
        self.pinned = pin
        try:
            self.staging = [torch.empty((n_states, max_real, d), dtype=dtype, pin_memory=pin) for _ in range(2)]
        except RuntimeError as e:  # pinning several GB can fail in a sandbox: fall back to pageable, and say so
            print(f"warning: pinned staging failed ({e}); using pageable host memory", file=sys.stderr)
            self.pinned = False
            self.staging = [torch.empty((n_states, max_real, d), dtype=dtype) for _ in range(2)]
        self.copy_stream = torch.cuda.Stream() if pin else None
        self.events = [None, None]
        self.bytes_to_host = 0

    @torch.inference_mode()
    def run(self, limit: int | None = None) -> None:
        dev = self.device
        self.bytes_to_host = 0
        for bi, (_, ids, mask, flat) in enumerate(self.batches[:limit]):
            ids_d = ids.to(dev, non_blocking=True)
            mask_d = mask.to(dev, non_blocking=True)
            flat_d = flat.to(dev, non_blocking=True)
            hs = self.model.bert(input_ids=ids_d, attention_mask=mask_d, output_hidden_states=True).hidden_states
            buf = self.staging[bi % 2]
            if self.events[bi % 2] is not None:
                self.events[bi % 2].synchronize()  # the host has "consumed" this buffer's previous batch
            n = flat.numel()
            if self.copy_stream is None:
                for li, h in enumerate(hs):
                    buf[li, :n].copy_(h.reshape(-1, h.shape[-1]).index_select(0, flat_d))
            else:
                rows = [h.reshape(-1, h.shape[-1]).index_select(0, flat_d) for h in hs]
                self.copy_stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self.copy_stream):
                    for li, r in enumerate(rows):
                        r.record_stream(self.copy_stream)
                        buf[li, :n].copy_(r, non_blocking=True)
                    ev = torch.cuda.Event()
                    ev.record(self.copy_stream)
                self.events[bi % 2] = ev
            self.bytes_to_host += len(hs) * n * hs[0].shape[-1] * hs[0].element_size()
        sync(dev)


@torch.inference_mode()
def final_hidden_batched(model, cells, device: str) -> list[torch.Tensor]:
    """Untimed: the last hidden state of `cells` run through `model.bert` as one padded batch (f32, host)."""
    L = max(len(c) for c in cells)
    ids = torch.zeros((len(cells), L), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for r, c in enumerate(cells):
        ids[r, : len(c)] = torch.tensor(c)
        mask[r, : len(c)] = 1
    out = model.bert(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    return [out[r, : len(c)].float().cpu() for r, c in enumerate(cells)]


# ------------------------------------------------------------------------------------------------ (b) published
@torch.no_grad()
def run_published(model, cells, device: str, keep_final: int = 0):
    """Batch 1, full BertForMaskedLM, output_hidden_states=True, every hidden state `.cpu()`'d every cell."""
    finals = []
    for ci, cell in enumerate(cells):
        ids = torch.tensor([cell], dtype=torch.int64).to(device)
        out = model(input_ids=ids, output_hidden_states=True)
        host = [h[0].cpu() for h in out.hidden_states]
        if ci < keep_final:
            finals.append(host[-1].float())
        del out, host
    sync(device)
    return finals


# ------------------------------------------------------------------------------------------------ (c) scinterp
def parse_json_stdout(text: str) -> dict:
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


def run_scinterp(args, model_dir: Path, cells, hooks: str, tag: str, n_layers: int):
    """scinterp forward over `cells` in chunks of --scinterp-chunk cells (one process each: its output file holds
    every hook as f32 [chunk, max_len, d]); per chunk the best forward_seconds of --scinterp-repeats runs, summed.
    Returns (seconds, tokens, final hidden of the first --check-cells cells, the JSON of each chunk)."""
    from safetensors import safe_open

    work = args.workdir / "scinterp_runs"
    work.mkdir(parents=True, exist_ok=True)
    final_hook = f"blocks.{n_layers - 1}.hook_resid_post"
    if final_hook not in hooks.split(","):
        hooks = hooks + "," + final_hook
    total_s, total_tok, finals, jsons = 0.0, 0, [], []
    chunk = max(1, args.scinterp_chunk)
    for ci, start in enumerate(range(0, len(cells), chunk)):
        part = cells[start:start + chunk]
        tokens = work / f"tokens_{tag}_{ci}.json"
        tokens.write_text(json.dumps({"input_ids": part}) + "\n")
        out = work / f"out_{tag}_{ci}.safetensors"
        cmd = [args.scinterp, "forward", "--model", str(model_dir), "--input", str(tokens), "--hooks", hooks,
               "--out", str(out), "--device", args.scinterp_device, "--max-batch-tokens",
               str(args.scinterp_batch_tokens), "--json", "-q"]
        if args.scinterp_threads:
            cmd += ["--threads", str(args.scinterp_threads)]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        best, last = float("inf"), None
        for rep in range(max(1, args.scinterp_repeats)):
            out.unlink(missing_ok=True)  # the file is written atomically: never hold two copies on disk
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
            last = parse_json_stdout(proc.stdout)
            best = min(best, float(last["forward_seconds"]))
            if rep == 0 and len(finals) < args.check_cells:
                with safe_open(str(out), framework="pt") as fh:  # reads only the final hook
                    h = fh.get_tensor(final_hook)
                for i, c in enumerate(part[: args.check_cells - len(finals)]):
                    finals.append(h[i, : len(c)].float().clone())
                del h
        out.unlink(missing_ok=True)
        tokens.unlink(missing_ok=True)
        total_s += best
        total_tok += int(last["tokens"])
        jsons.append(last)
    return total_s, total_tok, finals, jsons


def rel_errors(got: list[torch.Tensor], ref: list[torch.Tensor]) -> dict:
    fro, mx = 0.0, 0.0
    for a, b in zip(got, ref):
        a, b = a.double(), b.double()
        fro = max(fro, float((a - b).norm() / b.norm()))
        mx = max(mx, float((a - b).abs().max() / b.abs().max()))
    return {"rel_fro": fro, "rel_max": mx, "cells": len(ref), "ok": fro <= CHECK_TOL}


# ------------------------------------------------------------------------------------------------ main
def best_time(fn, repeats: int, device: str) -> float:
    best = float("inf")
    for _ in range(max(1, repeats)):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config (2 layers, d 64): smoke test")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scinterp-bench"))
    ap.add_argument("--workloads", default="fixed2048,fixed4096,ragged")
    ap.add_argument("--cells", type=int, default=None, help="cells per workload for (a) and (c) (default 64; --tiny 8)")
    ap.add_argument("--published-cells", type=int, default=None, help="cells per workload for (b) (default 16; --tiny 4)")
    ap.add_argument("--scinterp-chunk", type=int, default=32, help="(c): cells per scinterp process (its output "
                    "file is f32 [chunk, max_len, d] per hook: 32 × 4,096 × 19 hooks ≈ 11.5 GB, deleted after reading)")
    ap.add_argument("--scinterp-repeats", type=int, default=1, help="(c): runs per chunk (best kept)")
    ap.add_argument("--check-cells", type=int, default=4)
    ap.add_argument("--batch-tokens", type=int, default=65536, help="(a): padded tokens per batch")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scinterp", default=os.environ.get("SCINTERP_BIN"), help="scinterp binary (optional)")
    ap.add_argument("--scinterp-device", default="cuda")
    ap.add_argument("--scinterp-hooks", default="resid", help="`resid` (hook_embed + every resid_post, as (a)), "
                    "`final`, or a comma list")
    ap.add_argument("--scinterp-batch-tokens", type=int, default=65536)
    ap.add_argument("--scinterp-threads", type=int, default=0)
    ap.add_argument("--skip-published", action="store_true")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()

    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False (use --device cpu --tiny)")
    if args.cells is None:
        args.cells = 8 if args.tiny else 64
    if args.published_cells is None:
        args.published_cells = 4 if args.tiny else 16
    cfg_dict = TINY if args.tiny else V2_316M
    name = "Geneformer-V2-316M-tiny" if args.tiny else "Geneformer-V2-316M"
    n_layers, d, d_ff = cfg_dict["num_hidden_layers"], cfg_dict["hidden_size"], cfg_dict["intermediate_size"]
    context, vocab = cfg_dict["max_position_embeddings"], cfg_dict["vocab_size"]
    info = machine_info(dev)
    print(json.dumps(info), file=sys.stderr)

    model_dir = prepare_model(args.workdir, cfg_dict, name, args.seed, dev)
    hf_bf16 = load_hf(model_dir, "sdpa", torch.bfloat16, dev)
    hf_f32 = None if args.skip_published else load_hf(model_dir, "eager", torch.float32, dev)
    if args.scinterp_hooks == "resid":
        sc_hooks = ",".join(["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in range(n_layers)])
    elif args.scinterp_hooks == "final":
        sc_hooks = f"blocks.{n_layers - 1}.hook_resid_post"
    else:
        sc_hooks = args.scinterp_hooks

    ok, results = True, []
    for wi, wl in enumerate([w.strip() for w in args.workloads.split(",") if w.strip()]):
        lengths = workload_lengths(wl, args.cells, context, args.seed)
        cells = make_cells(lengths, vocab, args.seed + 1 + wi)
        row = {"workload": wl, "cells": len(cells), "tokens": sum(lengths),
               "len_min": min(lengths), "len_mean": float(np.mean(lengths)), "len_max": max(lengths),
               "at_cap": sum(1 for L in lengths if L == context)}
        flops_per_cell = model_flops(lengths, n_layers, d, d_ff) / len(cells)
        row["model_tflop_per_cell"] = flops_per_cell / 1e12

        def rates(n_cells: int, n_tokens: int, flops: float, seconds: float) -> dict:
            return {"cells": n_cells, "tokens": n_tokens, "seconds": seconds, "cells_per_s": n_cells / seconds,
                    "tokens_per_s": n_tokens / seconds, "tflops": flops / seconds / 1e12,
                    "mfu": flops / seconds / (args.peak_tflops * 1e12)}

        # (a) HF bf16 SDPA batched, every hidden state to pinned host memory.
        runner = BatchedHF(hf_bf16, cells, args.batch_tokens, dev, n_layers + 1, d, torch.bfloat16)
        runner.run(limit=2)  # warm-up (kernels, allocator, cuBLAS heuristics)
        t_a = best_time(runner.run, args.repeats, dev)
        row["hf_batched"] = rates(len(cells), sum(lengths), model_flops(lengths, n_layers, d, d_ff), t_a)
        row["hf_batched"].update({"batches": len(runner.batches), "batch_tokens": args.batch_tokens,
                                  "pinned_staging": runner.pinned,
                                  "padded_tokens": sum(len(b[0]) * b[1].shape[1] for b in runner.batches),
                                  "host_gb_per_s": runner.bytes_to_host / t_a / 1e9})
        print(f"[{wl}] (a) HF bf16 SDPA batched: {t_a:.3f} s, {len(cells) / t_a:.1f} cells/s, "
              f"MFU {row['hf_batched']['mfu']:.1%}", file=sys.stderr)
        del runner

        # (b) published way.
        finals = []
        if not args.skip_published:
            pub = cells[: max(args.published_cells, args.check_cells)]
            run_published(hf_f32, pub[:1], dev)  # warm-up
            t0 = time.perf_counter()
            finals = run_published(hf_f32, pub, dev, keep_final=args.check_cells)
            t_b = time.perf_counter() - t0
            pl = [len(c) for c in pub]
            row["published"] = rates(len(pub), sum(pl), model_flops(pl, n_layers, d, d_ff), t_b)
            print(f"[{wl}] (b) published (batch 1, eager f32, .cpu()): {t_b:.3f} s, {len(pub) / t_b:.2f} cells/s",
                  file=sys.stderr)
            # (b) runs the first cells only: compare model-FLOP rates (= the cells/s ratio for fixed lengths)
            row["ratio_hf_batched_over_published"] = row["hf_batched"]["tflops"] / row["published"]["tflops"]
            # yardstick: HF bf16 batched vs HF f32 on the check cells
            got = final_hidden_batched(hf_bf16, cells[: args.check_cells], dev)
            row["hf_bf16_vs_f32"] = rel_errors(got, finals)

        # (c) scinterp.
        if args.scinterp:
            sub = cells  # the same cells as (a)
            sl = [len(c) for c in sub]
            try:
                t_c, n_tok, sc_finals, last = run_scinterp(args, model_dir, sub, sc_hooks, wl, n_layers)
                row["scinterp"] = rates(len(sub), n_tok, model_flops(sl, n_layers, d, d_ff), t_c)
                row["scinterp"].update({"hooks": len(sc_hooks.split(",")), "json": last})
                if n_tok != sum(sl):
                    ok = False
                    row["scinterp"]["token_mismatch"] = [n_tok, sum(sl)]
                if finals:
                    chk = rel_errors(sc_finals[: len(finals)], finals)
                    row["scinterp_check"] = chk
                    ok &= chk["ok"]
                row["ratio_scinterp_over_hf_batched"] = row["scinterp"]["cells_per_s"] / row["hf_batched"]["cells_per_s"]
                if "published" in row:
                    row["ratio_scinterp_over_published"] = row["scinterp"]["tflops"] / row["published"]["tflops"]
                print(f"[{wl}] (c) scinterp: {t_c:.3f} s, {len(sub) / t_c:.1f} cells/s, MFU {row['scinterp']['mfu']:.1%}",
                      file=sys.stderr)
            except (RuntimeError, ValueError, KeyError, OSError) as e:
                row["scinterp_error"] = str(e)
                ok = False
                print(f"[{wl}] (c) scinterp FAILED: {e}", file=sys.stderr)
        results.append(row)
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()

    # ---- report ----
    print()
    if dev.startswith("cuda"):
        print(f"GPU: {info['gpu']} ({info['gpu_memory_gib']} GiB, {info['sm_count']} SMs)  driver {info.get('driver')}  "
              f"CUDA runtime {info['cuda_runtime']}  torch {info['torch']}  transformers {info['transformers']}  "
              f"{info['date']}")
    else:
        print(f"CPU: {info['cpu']}  threads {info['threads']}  torch {info['torch']}  "
              f"transformers {info['transformers']}  {info['date']}")
    print(f"model {name} (random weights, seed {args.seed}); peak {args.peak_tflops:g} TFLOP/s for MFU; "
          f"best of {args.repeats}; HF batch budget {args.batch_tokens} padded tokens")
    hdr = f"{'workload':<10} {'engine':<28} {'cells':>6} {'cells/s':>10} {'tok/s':>12} {'TFLOP/s':>8} {'MFU':>7}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        for key, label in (("hf_batched", "HF bf16 SDPA batched+hooks"), ("published", "published (b1 eager f32)"),
                           ("scinterp", "scinterp")):
            if key in r:
                x = r[key]
                print(f"{r['workload']:<10} {label:<28} {x['cells']:>6} {x['cells_per_s']:>10.2f} "
                      f"{x['tokens_per_s']:>12,.0f} {x['tflops']:>8.2f} {x['mfu']:>7.1%}")
        if "scinterp_error" in r:
            print(f"{r['workload']:<10} {'scinterp':<28} FAILED: {r['scinterp_error'][:200]}")
        extras = []
        if "ratio_hf_batched_over_published" in r:
            extras.append(f"HF batched/published {r['ratio_hf_batched_over_published']:.1f}x")
        if "ratio_scinterp_over_hf_batched" in r:
            extras.append(f"scinterp/HF batched {r['ratio_scinterp_over_hf_batched']:.2f}x (target ≥ 1.3)")
        if "ratio_scinterp_over_published" in r:
            extras.append(f"scinterp/published {r['ratio_scinterp_over_published']:.1f}x (target ≥ 10)")
        if "hf_bf16_vs_f32" in r:
            c = r["hf_bf16_vs_f32"]
            extras.append(f"HF bf16 vs f32 final hidden: rel_fro {c['rel_fro']:.2e}, rel_max {c['rel_max']:.2e}")
        if "scinterp_check" in r:
            c = r["scinterp_check"]
            extras.append(f"scinterp vs HF f32 final hidden: rel_fro {c['rel_fro']:.2e}, rel_max {c['rel_max']:.2e} "
                          f"({'ok' if c['ok'] else 'MISMATCH'}, tol {CHECK_TOL})")
        for e in extras:
            print(f"{'':<10} {e}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": info, "model": name, "config": cfg_dict,
                                             "args": {k: str(v) for k, v in vars(args).items()},
                                             "peak_tflops": args.peak_tflops, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
