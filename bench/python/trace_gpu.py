#!/usr/bin/env python3
"""Circuit tracing on the GPU (issue 9): the naive torch loop (the published pattern, as
tests/reference/trace_reference.py and bench/python/trace_naive.py run it on the CPU) on the Geneformer V2-316M
config with random weights and random TopK SAEs; ablations/s, edges/s, and the estimate for exhaustive layer 5
(4,065 features × 1,000 cells). Optionally `scinterp trace` on the same model, SAEs, cells and features.

Self-contained: standard library + torch + transformers + numpy + safetensors; the V2-316M config is embedded.

Setup (seeded):
  model   BertForMaskedLM(V2-316M config), random weights, saved (safetensors) in --workdir/Geneformer-V2-316M/
          (shared with forward_gpu.py; reused if present), loaded as HF eager attention, f32, eval;
  cells   --cells cells of --len tokens, V2 format ([2] + distinct genes from 4..V-1 + [3]);
  SAEs    random TopK SAEs in SAELens layout (--workdir/trace_saes_*/<hook>/{cfg.json, sae_weights.safetensors}):
          W_dec = unit rows of a Gaussian [F, d], W_enc = W_decᵀ, b_enc = 0, b_dec = the mean clean hidden state of
          the hook over the traced cells (so codes are centred like a trained SAE's); k = --k, F = --d-sae. Source
          --source (default blocks.5.hook_resid_post), targets --targets (default layers 6, 11, 17: the downstream
          layers of the published exhaustive layer-5 run, methods.md §9);
  features the first --features source features (by index) active in every traced cell, so the loop runs exactly
          --features × --cells ablations.

The naive loop (timed; torch.no_grad, batch 1, no padding), per cell: one clean full forward with
output_hidden_states=True; the source SAE codes at the gene positions; the clean target codes; then for every
traced feature f active in the cell: a full forward (all 18 layers, from the embeddings) with a forward hook on
bert.encoder.layer[L] adding δ = −a_f(t)·W_dec[f] at the positions t where f is active; every target hook encoded
at those positions; the per-cell observation mean_t(a'_g(t) − a_g(t)) (f64) copied to the host (`.cpu()`) per
(ablation, target), as the published scripts and the reference do. SAE encodes run on the GPU (kinder to the
baseline than the published CPU encodes). Then (timed separately) the per-edge statistics: for every
(f, target hook, g) with a non-zero observation, n, mean, sd (ddof 1), Cohen's d (edges with n ≥ 2 and sd > 0
are "tested"). Reported: ablations/s (loop), edges/s (tested edges / (loop + statistics) seconds).

Exhaustive layer-5 estimate: the measured seconds per ablation (clean passes amortised) × 4,065 × 1,000 × the
active fraction of (feature, cell) pairs; printed for the fraction measured here (random SAEs: most features fire
somewhere in a 2,048-token cell) and for 1.0. The real fraction must come from real data (gpu-and-performance.md
§12). Cell length --len (default 2,048 as the published K562 cells).

scinterp (--scinterp BIN): the cells written as a V2 token store, then `BIN trace --model DIR --input STORE
--saes SAES --source S --targets T --features LIST --cells C --max-q 1 --out TSV --json -q [--device D]`
(`--scinterp-device ''` omits --device); its summary's ablations, seconds (the whole command) and
tests_performed; ratio of ablations/s (issue 9 target ≥ 50×), its own exhaustive estimate (target ≤ 3 h on one
H100), and a comparison of its edge table with the naive statistics (edge-set Jaccard, max |Δd| on common
edges). A failure is reported and the script carries on (exit status 1).

Usage (GPU machine; see bench/gpu/README.md):
    python bench/python/trace_gpu.py --workdir /tmp/scinterp-bench --json-out trace_gpu.json [--scinterp BIN]
CPU smoke test (tiny config: 4 layers, d 64, source blocks.1, targets blocks.2,3, F 256, k 8):
    python bench/python/trace_gpu.py --device cpu --tiny
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
TINY = dict(V2_316M, hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=4)
SPECIALS = (0, 1, 2, 3)  # V2 <pad> <mask> <cls> <eos>
EXHAUSTIVE_FEATURES, EXHAUSTIVE_CELLS = 4065, 1000


def machine_info(device: str) -> dict:
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "host": platform.node(), "device": device,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.startswith("cuda"):
        idx = torch.device(device).index or 0
        info.update({"gpu": torch.cuda.get_device_name(idx), "cuda_runtime": torch.version.cuda,
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


def prepare_model(workdir: Path, cfg_dict: dict, name: str, seed: int, device: str) -> Path:
    """As forward_gpu.py: seeded random weights saved in workdir/name, reused if config.json matches."""
    d = workdir / name
    if (d / "model.safetensors").exists() and (d / "config.json").exists():
        try:
            if json.loads((d / "config.json").read_text()) == cfg_dict:
                return d
        except json.JSONDecodeError:
            pass
    cfg = BertConfig(**cfg_dict)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    with torch.device(device):
        model = BertForMaskedLM(cfg).eval()
    model = model.to("cpu")
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    (d / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    return d


def hook_layer(hook: str) -> int:
    parts = hook.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "hook_resid_post":
        raise SystemExit(f"{hook}: only blocks.L.hook_resid_post hooks")
    return int(parts[1])


class TopKSae:
    def __init__(self, W_enc, b_enc, W_dec, b_dec, k):
        self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.k = W_enc, b_enc, W_dec, b_dec, k

    def encode(self, x):
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        vals, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))


def random_sae(d: int, F_: int, k: int, b_dec: torch.Tensor, gen: torch.Generator) -> TopKSae:
    W = torch.randn(F_, d, generator=gen)
    W /= W.norm(dim=1, keepdim=True)
    return TopKSae(W.t().contiguous(), torch.zeros(F_), W, b_dec.float().cpu(), k)


def save_sae(sae: TopKSae, folder: Path, hook: str) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"W_enc": sae.W_enc.float().cpu().contiguous(), "b_enc": sae.b_enc.float().cpu().contiguous(),
               "W_dec": sae.W_dec.float().cpu().contiguous(), "b_dec": sae.b_dec.float().cpu().contiguous()},
              str(folder / "sae_weights.safetensors"))
    d, F_ = sae.W_enc.shape
    cfg = {"d_in": int(d), "d_sae": int(F_), "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "k": int(sae.k),
           "rescale_acts_by_decoder_norm": False, "architecture": "topk",
           "metadata": {"sae_lens_version": "6.54.12", "hook_name": hook, "model_name": "random",
                        "trainer": "bench/python/trace_gpu.py (random SAE)"}}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")


def write_token_store(cells: list[list[int]], out: Path, seed: int) -> None:
    if (out / "manifest.json").exists():
        return
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tokens = np.concatenate([np.asarray(c, dtype=np.int32) for c in cells])
    offsets = np.zeros(len(cells) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in cells])
    np.save(tmp / "tokens.npy", tokens)
    np.save(tmp / "offsets.npy", offsets)
    manifest = {"format": "scinterp-token-store", "format_version": 1, "tokenizer": "geneformer",
                "tokenizer_version": "V2", "options": {"bench_seed": seed}, "dictionaries": {},
                "source_path": "bench/python/trace_gpu.py (seeded synthetic cells)", "source_sha256": "",
                "n_cells": len(cells), "n_tokens": int(tokens.size), "max_len": max(len(c) for c in cells),
                "has_values": False, "n_cells_dropped": 0, "scinterp_version": "0.1.0"}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (tmp / "cells.tsv").write_text("cell\n" + "".join(f"bench_cell_{i}\n" for i in range(len(cells))))
    tmp.rename(out)


class Ablator:
    """Forward hook on bert.encoder.layer[L] adding `delta` ([len, d]) to its output when armed."""

    def __init__(self, layer_module):
        self.delta = None
        self.handle = layer_module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.delta is None:
            return None
        if isinstance(output, tuple):
            return (output[0] + self.delta.unsqueeze(0),) + tuple(output[1:])
        return output + self.delta.unsqueeze(0)

    def remove(self):
        self.handle.remove()


@torch.no_grad()
def naive_loop(model, cells, L: int, src: TopKSae, targets, features, device: str):
    """The published pattern. Returns (obs {(f, ti): [np arrays]}, ablations, clean_passes)."""
    ablator = Ablator(model.bert.encoder.layer[L])
    wanted = set(features)
    obs: dict = {}
    ablations = 0
    try:
        for cell in cells:
            ids = torch.tensor([cell], dtype=torch.int64).to(device)
            gene_pos = torch.tensor([p for p, t in enumerate(cell) if t not in SPECIALS], dtype=torch.int64).to(device)
            ablator.delta = None
            clean = model.bert(input_ids=ids, output_hidden_states=True).hidden_states
            src_codes = src.encode(clean[L + 1][0, gene_pos])
            clean_tgt = [sae.encode(clean[layer + 1][0, gene_pos]) for layer, sae in targets]
            active = sorted(f for f in torch.nonzero((src_codes > 0).any(0)).flatten().tolist() if f in wanted)
            for f in active:
                rows = torch.nonzero(src_codes[:, f] > 0).flatten()
                pos = gene_pos[rows]
                delta = torch.zeros_like(clean[L + 1][0])
                delta[pos] = -src_codes[rows, f].unsqueeze(1) * src.W_dec[f].unsqueeze(0)
                ablator.delta = delta
                hs = model.bert(input_ids=ids, output_hidden_states=True).hidden_states
                ablator.delta = None
                ablations += 1
                for ti, (layer, sae) in enumerate(targets):
                    abl = sae.encode(hs[layer + 1][0, pos])
                    change = (abl.double() - clean_tgt[ti][rows].double()).mean(0).cpu().numpy()
                    obs.setdefault((f, ti), []).append(change)
    finally:
        ablator.remove()
    sync(device)
    return obs, ablations, len(cells)


def edge_stats(obs: dict, target_hooks: list[str]) -> dict:
    """{(f, target_hook, g): (n, mean, sd, d)} for every tested edge (a non-zero observation, n ≥ 2, sd > 0)."""
    out = {}
    for (f, ti), lst in obs.items():
        mat = np.stack(lst)  # [n, F]
        n = mat.shape[0]
        if n < 2:
            continue
        cols = np.nonzero((mat != 0).any(0))[0]
        x = mat[:, cols]
        mean = x.mean(0)
        sd = x.std(0, ddof=1)
        for g, m, s in zip(cols.tolist(), mean.tolist(), sd.tolist()):
            if s > 0:
                out[(int(f), target_hooks[ti], int(g))] = (n, m, s, m / s)
    return out


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


def read_edge_tsv(path: Path) -> dict:
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    ci = {c: i for i, c in enumerate(head)}
    out = {}
    for line in lines[1:]:
        f = line.split("\t")
        out[(int(f[ci["source_feature"]]), f[ci["target_hook"]], int(f[ci["target_feature"]]))] = \
            float(f[ci["cohens_d"]])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config (4 layers, d 64): smoke test")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scinterp-bench"))
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--len", type=int, default=2048, dest="length")
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--source", default=None, help="default blocks.5.hook_resid_post (tiny: blocks.1)")
    ap.add_argument("--targets", default=None, help="default blocks.{6,11,17}.hook_resid_post (tiny: blocks.2,3)")
    ap.add_argument("--d-sae", type=int, default=None, help="default 4608 (tiny: 256)")
    ap.add_argument("--k", type=int, default=None, help="default 32 (tiny: 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scinterp", default=os.environ.get("SCINTERP_BIN"))
    ap.add_argument("--scinterp-device", default="cuda", help="`--device` given to scinterp ('' to omit it)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()

    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False (use --device cpu --tiny)")
    cfg_dict = TINY if args.tiny else V2_316M
    name = "Geneformer-V2-316M-tiny4" if args.tiny else "Geneformer-V2-316M"
    source = args.source or ("blocks.1.hook_resid_post" if args.tiny else "blocks.5.hook_resid_post")
    targets_s = args.targets or ("blocks.2.hook_resid_post,blocks.3.hook_resid_post" if args.tiny else
                                 "blocks.6.hook_resid_post,blocks.11.hook_resid_post,blocks.17.hook_resid_post")
    target_hooks = [t.strip() for t in targets_s.split(",") if t.strip()]
    d_sae = args.d_sae or (256 if args.tiny else 4608)
    k = args.k or (8 if args.tiny else 32)
    d, n_layers = cfg_dict["hidden_size"], cfg_dict["num_hidden_layers"]
    info = machine_info(dev)
    print(json.dumps(info), file=sys.stderr)

    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(args.workdir, cfg_dict, name, args.seed, dev)
    model = BertForMaskedLM.from_pretrained(str(model_dir), attn_implementation="eager").to(dev).float().eval()
    rng = np.random.default_rng(args.seed + 7)
    V = cfg_dict["vocab_size"]
    cells = [[2] + rng.choice(np.arange(4, V), size=args.length - 2, replace=False).astype(int).tolist() + [3]
             for _ in range(args.cells)]

    # Random SAEs; b_dec = the mean clean state of the hook over the traced cells.
    L = hook_layer(source)
    layers = [L] + [hook_layer(h) for h in target_hooks]
    assert all(0 <= x < n_layers for x in layers) and all(t > L for t in layers[1:]), layers
    sums = {l: torch.zeros(d, dtype=torch.float64) for l in layers}
    n_pos = 0
    with torch.no_grad():
        for cell in cells:
            hs = model.bert(input_ids=torch.tensor([cell]).to(dev), output_hidden_states=True).hidden_states
            for l in layers:
                sums[l] += hs[l + 1][0, 1:-1].double().sum(0).cpu()
            n_pos += len(cell) - 2
    gen = torch.Generator().manual_seed(args.seed + 11)
    saes = {l: random_sae(d, d_sae, k, (sums[l] / n_pos).float(), gen) for l in layers}
    saes_dir = args.workdir / f"trace_saes_{name}_f{d_sae}_k{k}_s{args.seed}_c{args.cells}x{args.length}"
    for h, l in zip([source] + target_hooks, layers):
        save_sae(saes[l], saes_dir / h, h)  # always rewritten: they depend on the model folder's weights
    on_dev = {l: TopKSae(s.W_enc.to(dev), s.b_enc.to(dev), s.W_dec.to(dev), s.b_dec.to(dev), k)
              for l, s in saes.items()}
    src = on_dev[L]
    targets = [(l, on_dev[l]) for l in layers[1:]]

    # Features active in every traced cell; active fraction of all (feature, cell) pairs.
    fires_all, active_pairs = None, 0
    with torch.no_grad():
        for cell in cells:
            hs = model.bert(input_ids=torch.tensor([cell]).to(dev), output_hidden_states=True).hidden_states
            act = (src.encode(hs[L + 1][0, 1:-1]) > 0).any(0)
            active_pairs += int(act.sum())
            fires_all = act if fires_all is None else fires_all & act
    active_fraction = active_pairs / (d_sae * len(cells))
    features = torch.nonzero(fires_all).flatten().tolist()[: args.features]
    if len(features) < args.features:
        print(f"warning: only {len(features)} features fire in all {args.cells} cells", file=sys.stderr)

    # Warm-up (one cell, two features), then the timed naive loop.
    naive_loop(model, cells[:1], L, src, targets, features[:2], dev)
    t0 = time.perf_counter()
    obs, ablations, clean = naive_loop(model, cells, L, src, targets, features, dev)
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = edge_stats(obs, target_hooks)
    t_stats = time.perf_counter() - t0
    per_abl = t_loop / ablations
    naive = {"ablations": ablations, "clean_passes": clean, "loop_seconds": t_loop, "stats_seconds": t_stats,
             "ablations_per_s": ablations / t_loop, "tested_edges": len(stats),
             "edges_per_s": len(stats) / (t_loop + t_stats),
             "exhaustive_l5_hours_measured_fraction":
                 per_abl * EXHAUSTIVE_FEATURES * EXHAUSTIVE_CELLS * active_fraction / 3600,
             "exhaustive_l5_hours_all_active": per_abl * EXHAUSTIVE_FEATURES * EXHAUSTIVE_CELLS / 3600}
    print(f"naive: {ablations} ablations in {t_loop:.2f} s ({ablations / t_loop:.2f}/s), stats {t_stats:.2f} s, "
          f"{len(stats)} tested edges", file=sys.stderr)

    result = {"machine": info, "model": name, "cells": args.cells, "len": args.length, "source": source,
              "targets": target_hooks, "d_sae": d_sae, "k": k, "features": features,
              "active_pair_fraction": active_fraction, "naive": naive}
    ok = True
    if args.scinterp:
        store = args.workdir / f"trace_tokens_{name}_{args.cells}x{args.length}_s{args.seed}"
        write_token_store(cells, store, args.seed)
        tsv = args.workdir / f"trace_edges_scinterp_{name}.tsv"
        cmd = [args.scinterp, "trace", "--model", str(model_dir), "--input", str(store), "--saes", str(saes_dir),
               "--source", source, "--targets", ",".join(target_hooks), "--features", ",".join(map(str, features)),
               "--cells", str(args.cells), "--max-q", "1", "--out", str(tsv), "--json", "-q"]
        if args.scinterp_device:
            cmd += ["--device", args.scinterp_device]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        try:
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
            js = parse_json_stdout(proc.stdout)
            sa, ss = int(js["ablations"]), float(js["seconds"])
            sc = {"ablations": sa, "seconds": ss, "process_wall": wall, "ablations_per_s": sa / ss,
                  "tested_edges": int(js["tests_performed"]), "edges_per_s": int(js["tests_performed"]) / ss,
                  "exhaustive_l5_hours_measured_fraction":
                      ss / sa * EXHAUSTIVE_FEATURES * EXHAUSTIVE_CELLS * active_fraction / 3600,
                  "exhaustive_l5_hours_all_active": ss / sa * EXHAUSTIVE_FEATURES * EXHAUSTIVE_CELLS / 3600,
                  "summary": js}
            theirs = read_edge_tsv(tsv)
            common = [e for e in theirs if e in stats]
            union = set(theirs) | set(stats)
            sc["edge_jaccard"] = len(common) / len(union) if union else 1.0
            sc["max_abs_d_diff"] = max((abs(theirs[e] - stats[e][3]) for e in common), default=0.0)
            sc["ratio_ablations_per_s"] = sc["ablations_per_s"] / naive["ablations_per_s"]
            if sa != ablations:
                ok = False
                sc["ablation_count_mismatch"] = [sa, ablations]
            result["scinterp"] = sc
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            result["scinterp_error"] = str(e)
            ok = False
            print(f"scinterp FAILED: {e}", file=sys.stderr)

    print()
    where = f"GPU: {info.get('gpu')}  driver {info.get('driver')}  CUDA {info.get('cuda_runtime')}" \
        if dev.startswith("cuda") else f"CPU ({info.get('threads')} threads)"
    print(f"{where}  torch {info['torch']}  transformers {info['transformers']}  {info['date']}")
    print(f"model {name} (random weights), {args.cells} cells × {args.length} tokens, source {source}, targets "
          f"{','.join(target_hooks)}, random TopK SAEs F {d_sae} k {k}, {len(features)} features; "
          f"active (feature, cell) fraction {active_fraction:.3f}")
    hdr = f"{'engine':<32} {'ablations':>9} {'seconds':>9} {'ablations/s':>12} {'edges':>9} {'edges/s':>11} " \
          f"{'exh. L5 h (meas. frac / all)':>30}"
    print(hdr)
    print("-" * len(hdr))
    print(f"{'naive torch loop (b1, eager f32)':<32} {ablations:>9} {t_loop + t_stats:>9.2f} "
          f"{naive['ablations_per_s']:>12.2f} {len(stats):>9} {naive['edges_per_s']:>11,.0f} "
          f"{naive['exhaustive_l5_hours_measured_fraction']:>14.1f} / {naive['exhaustive_l5_hours_all_active']:>13.1f}")
    if "scinterp" in result:
        s = result["scinterp"]
        print(f"{'scinterp trace':<32} {s['ablations']:>9} {s['seconds']:>9.2f} {s['ablations_per_s']:>12.2f} "
              f"{s['tested_edges']:>9} {s['edges_per_s']:>11,.0f} "
              f"{s['exhaustive_l5_hours_measured_fraction']:>14.1f} / {s['exhaustive_l5_hours_all_active']:>13.1f}")
        print(f"ratio scinterp/naive ablations/s: {s['ratio_ablations_per_s']:.1f}x (target ≥ 50); exhaustive L5 "
              f"target ≤ 3 h; edges Jaccard {s['edge_jaccard']:.4f}, max |Δd| on common edges {s['max_abs_d_diff']:.2e}")
    if "scinterp_error" in result:
        print(f"{'scinterp trace':<32} FAILED: {result['scinterp_error'][:300]}")
    print(f"(naive loop: {per_abl * 1e3:.1f} ms per ablation incl. amortised clean passes; statistics "
          f"{t_stats:.2f} s; L = {args.length})")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
