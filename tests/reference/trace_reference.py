#!/usr/bin/env python3
"""Naive reference for `scinterp trace`: the published way, one hooked full forward per (feature, cell).

What it computes (arXiv 2603.01752 §8 as scinterp defines it, issue 7; /work/shared/docs/methods.md §8):

  * model: Hugging Face `BertForMaskedLM` (Geneformer), eager attention, float32, eval, batch 1, no padding;
    `blocks.L.hook_resid_post` = `hidden_states[L+1]` = the output of `bert.encoder.layer[L]`;
  * SAEs: TopK in SAELens' layout (`<saes>/<hook>/cfg.json` + `sae_weights.safetensors`, `W_enc`
    [d_in, d_sae], `b_enc`, `W_dec` [d_sae, d_in], `b_dec`): pre = (x − b_dec)·W_enc + b_enc, keep the k
    largest (ties to the lower index), ReLU on those, every other latent 0. The SAEs read gene positions
    only: Geneformer V2 stores exclude token ids 0–3 (<pad>, <mask>, <cls>, <eos>), V1 stores ids 0–1;
  * per cell: one clean forward; the source SAE codes at the gene positions; for every requested feature f
    that is active (code > 0) at ≥ 1 gene position: a full forward with a forward hook on
    `bert.encoder.layer[L]` that adds δ(t) = −a_f(t)·W_dec[f] to its output at those positions t; every
    target hook is read at the same positions t in the clean and the ablated run and encoded with its SAE;
    the cell's observation for target feature g is mean_t (a'_g(t) − a_g(t));
  * per (f, target hook, g) over the n cells where f fired (cells where g did not change count as 0):
    mean, sd (ddof 1), Cohen's d = mean/sd, Hedges' g = d·J(n−1) with the exact
    J(df) = Γ(df/2) / (√(df/2)·Γ((df−1)/2)), sign consistency = max(#>0, #<0)/n (zeros count for neither),
    one-sample t-test (scipy `ttest_1samp`, two-sided); BH q over every edge with a finite p. Edges whose
    observations are all 0 are not tested and not listed; nor are edges without a finite p (n < 2).

Output: a TSV with scinterp's columns (source_hook source_feature target_hook target_feature n_cells
mean_change sd_change cohens_d hedges_g sign_consistency t p q), sorted by (source feature, target hook in
--targets order, target feature), filtered by --max-q (default 1: every tested edge), --min-abs-d and
--min-consistency. Floats are written with repr() (shortest round-trip).

Usage (from the repository root):

    /tmp/pyenv/venv/bin/python tests/reference/trace_reference.py --model tests/fixtures/geneformer/tiny_v2 \\
        --tokens tests/fixtures/trace/tokens --saes tests/fixtures/trace/saes \\
        --source blocks.0.hook_resid_post --targets blocks.2.hook_resid_post \\
        --features all --cells 16 --out /tmp/edges.tsv

Packages: torch, transformers, safetensors, numpy, scipy (statsmodels optional: its BH is cross-checked).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from scipy import special, stats

COLUMNS = ("source_hook source_feature target_hook target_feature n_cells mean_change sd_change cohens_d "
           "hedges_g sign_consistency t p q").split()


# ----------------------------------------------------------------------------------------------- inputs
def read_token_store(path: Path) -> tuple[list[list[int]], dict]:
    """Cells of a scinterp token store (tokens.npy int32 packed, offsets.npy int64) and its manifest."""
    manifest = json.loads((path / "manifest.json").read_text())
    tokens = np.load(path / "tokens.npy")
    offsets = np.load(path / "offsets.npy")
    assert tokens.dtype == np.int32 and offsets.dtype == np.int64, (tokens.dtype, offsets.dtype)
    cells = [tokens[offsets[i]:offsets[i + 1]].astype(np.int64).tolist() for i in range(len(offsets) - 1)]
    return cells, manifest


def special_ids(manifest: dict) -> set[int]:
    if manifest.get("tokenizer", "geneformer") != "geneformer":
        raise SystemExit("only Geneformer token stores are supported by this reference")
    return {0, 1} if str(manifest.get("tokenizer_version", "V2")).lower() == "v1" else {0, 1, 2, 3}


class TopKSae:
    """TopK SAE in SAELens' layout; encodes in torch, in float32 (or float64 with dtype=torch.float64)."""

    def __init__(self, folder: Path, dtype=torch.float32):
        cfg = json.loads((folder / "cfg.json").read_text())
        assert cfg.get("architecture", "topk") == "topk", cfg.get("architecture")
        assert cfg.get("apply_b_dec_to_input", True) is True
        assert cfg.get("normalize_activations", "none") in ("none", None)
        w = load_file(str(folder / "sae_weights.safetensors"))
        self.k = int(cfg["k"])
        self.W_enc = torch.from_numpy(w["W_enc"].astype(np.float32)).to(dtype)  # [d_in, d_sae]
        self.b_enc = torch.from_numpy(w["b_enc"].astype(np.float32)).to(dtype)
        self.W_dec = torch.from_numpy(w["W_dec"].astype(np.float32)).to(dtype)  # [d_sae, d_in]
        self.b_dec = torch.from_numpy(w["b_dec"].astype(np.float32)).to(dtype)
        self.d_in, self.d_sae = self.W_enc.shape
        assert self.W_dec.shape == (self.d_sae, self.d_in)
        assert int(cfg["d_in"]) == self.d_in and int(cfg["d_sae"]) == self.d_sae

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes [rows, d_sae]: top-k of the pre-activations (ties to the lower index), ReLU."""
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        # A stable descending sort keeps equal values in index order, so ties go to the lower index.
        _, order = torch.sort(pre, dim=-1, descending=True, stable=True)
        keep = order[:, : self.k]
        codes = torch.zeros_like(pre)
        codes.scatter_(1, keep, torch.relu(pre.gather(1, keep)))
        return codes


def find_sae(saes: Path, hook: str, dtype=torch.float32) -> TopKSae:
    if (saes / hook / "cfg.json").exists():
        return TopKSae(saes / hook, dtype)
    for sub in sorted(saes.iterdir()):
        cfg = sub / "cfg.json"
        if cfg.exists() and json.loads(cfg.read_text()).get("metadata", {}).get("hook_name") == hook:
            return TopKSae(sub, dtype)
    raise SystemExit(f"no SAE for {hook} under {saes}")


def resid_post_layer(hook: str) -> int:
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook)
    if not m:
        raise SystemExit(f"{hook}: tracing reads blocks.L.hook_resid_post hooks only")
    return int(m.group(1))


def load_model(model_dir: Path, dtype=torch.float32):
    """HF BertForMaskedLM, eager attention, eval; float32 weights (as stored, widened), optionally run in float64."""
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(str(model_dir), attn_implementation="eager", dtype=torch.float32)
    return model.to(dtype).eval()


# ------------------------------------------------------------------------------------------ ablation loop
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
def trace_observations(model, cells, specials, source_layer, source_sae, targets, features, progress=None):
    """The naive loop. Returns (cells_active {f: n}, obs {(f, t_idx): [per-cell dense float64 arrays]},
    ablations, forward_seconds). `targets` is a list of (layer, TopKSae)."""
    ablator = Ablator(model.bert.encoder.layer[source_layer])
    wanted = set(features)
    cells_active: dict[int, int] = {}
    obs: dict[tuple[int, int], list[np.ndarray]] = {}
    ablations = 0
    fwd_seconds = 0.0
    try:
        for ci, cell in enumerate(cells):
            ids = torch.tensor([cell], dtype=torch.int64)
            gene_pos = torch.tensor([p for p, t in enumerate(cell) if t not in specials], dtype=torch.int64)
            ablator.delta = None
            t0 = time.perf_counter()
            clean = model.bert(input_ids=ids, output_hidden_states=True).hidden_states
            fwd_seconds += time.perf_counter() - t0
            src_codes = source_sae.encode(clean[source_layer + 1][0, gene_pos])  # [genes, d_sae]
            clean_tgt = [sae.encode(clean[layer + 1][0, gene_pos]) for layer, sae in targets]
            active_feats = sorted(f for f in torch.nonzero((src_codes > 0).any(0)).flatten().tolist() if f in wanted)
            for f in active_feats:
                rows = torch.nonzero(src_codes[:, f] > 0).flatten()  # indices into gene_pos
                pos = gene_pos[rows]
                delta = torch.zeros_like(clean[source_layer + 1][0])
                delta[pos] = -src_codes[rows, f].unsqueeze(1) * source_sae.W_dec[f].unsqueeze(0)
                ablator.delta = delta
                t0 = time.perf_counter()
                hs = model.bert(input_ids=ids, output_hidden_states=True).hidden_states
                fwd_seconds += time.perf_counter() - t0
                ablator.delta = None
                ablations += 1
                cells_active[f] = cells_active.get(f, 0) + 1
                for ti, (layer, sae) in enumerate(targets):
                    abl = sae.encode(hs[layer + 1][0, pos])
                    change = (abl.double() - clean_tgt[ti][rows].double()).mean(0).numpy()
                    obs.setdefault((f, ti), []).append(change)
            if progress:
                progress(ci + 1, ablations)
    finally:
        ablator.remove()
    return cells_active, obs, ablations, fwd_seconds


# ------------------------------------------------------------------------------------------- statistics
def hedges_j(df: float) -> float:
    """Exact small-sample correction J(df) = Γ(df/2) / (√(df/2)·Γ((df−1)/2)); J(1) = 0."""
    if not df > 0:
        return math.nan
    if df == 1:
        return 0.0  # Γ(0) = ∞
    return math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values (step-up, cumulative minimum from the largest p, clipped at 1)."""
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(ranked, 1.0)
    return q


def edge_table(cells_active, obs, source_hook, target_hooks):
    """Rows (dicts) of every tested edge, with q over every tested edge."""
    rows = []
    for (f, ti) in sorted(obs):
        mat = np.stack(obs[(f, ti)])  # [n, d_sae]
        n = mat.shape[0]
        assert n == cells_active[f]
        for g in np.nonzero((mat != 0).any(0))[0]:
            x = mat[:, g]
            mean = float(np.mean(x))
            sd = float(np.std(x, ddof=1)) if n > 1 else math.nan
            with np.errstate(all="ignore"):
                res = stats.ttest_1samp(x, 0.0) if n > 1 else None
            t = float(res.statistic) if res is not None else math.nan
            p = float(res.pvalue) if res is not None else math.nan
            if not math.isfinite(p):
                continue  # not tested
            d = mean / sd
            rows.append({
                "source_hook": source_hook, "source_feature": int(f), "target_hook": target_hooks[ti],
                "target_feature": int(g), "n_cells": n, "mean_change": mean, "sd_change": sd, "cohens_d": d,
                "hedges_g": d * hedges_j(n - 1),
                "sign_consistency": max(int((x > 0).sum()), int((x < 0).sum())) / n,
                "t": t, "p": p,
            })
    q = bh(np.array([r["p"] for r in rows], dtype=np.float64))
    try:  # cross-check with statsmodels when it is installed
        from statsmodels.stats.multitest import multipletests

        if len(rows):
            q_sm = multipletests([r["p"] for r in rows], method="fdr_bh")[1]
            assert np.allclose(q, q_sm, rtol=1e-12, atol=0), "BH disagrees with statsmodels"
    except ImportError:
        pass
    for r, qv in zip(rows, q):
        r["q"] = float(qv)
    return rows


def write_tsv(rows, path: Path, max_q=1.0, min_abs_d=0.0, min_consistency=0.0) -> int:
    kept = 0
    with open(path, "w") as fh:
        fh.write("\t".join(COLUMNS) + "\n")
        for r in rows:
            if not (r["q"] <= max_q and abs(r["cohens_d"]) >= min_abs_d and r["sign_consistency"] >= min_consistency):
                continue
            fh.write("\t".join(repr(r[c]) if isinstance(r[c], float) else str(r[c]) for c in COLUMNS) + "\n")
            kept += 1
    return kept


def parse_features(spec: str, d_sae: int) -> list[int]:
    if spec.strip() == "all":
        return list(range(d_sae))
    feats = sorted({int(x) for x in spec.split(",") if x.strip()})
    assert all(0 <= f < d_sae for f in feats), "feature out of range"
    return feats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="Geneformer folder (config.json + weights)")
    ap.add_argument("--tokens", type=Path, required=True, help="scinterp token store")
    ap.add_argument("--saes", type=Path, required=True, help="folder of <hook>/cfg.json SAE folders")
    ap.add_argument("--source", required=True, help="blocks.L.hook_resid_post")
    ap.add_argument("--targets", required=True, help="comma list of later blocks.M.hook_resid_post")
    ap.add_argument("--features", default="all", help="all or a comma list")
    ap.add_argument("--cells", type=int, default=None, help="first N cells (default: all)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-q", type=float, default=1.0)
    ap.add_argument("--min-abs-d", type=float, default=0.0)
    ap.add_argument("--min-consistency", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="compute dtype of the model and SAEs (the weights are f32 either way; float64 gives "
                         "the f32 weights' exact result to ~1e-15, free of the f32 rounding of either engine)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    cells, manifest = read_token_store(args.tokens)
    cells = cells[: args.cells] if args.cells is not None else cells
    specials = special_ids(manifest)
    source_layer = resid_post_layer(args.source)
    target_hooks = [h.strip() for h in args.targets.split(",") if h.strip()]
    dtype = getattr(torch, args.dtype)
    targets = [(resid_post_layer(h), find_sae(args.saes, h, dtype)) for h in target_hooks]
    source_sae = find_sae(args.saes, args.source, dtype)
    model = load_model(args.model, dtype)
    n_layers = model.config.num_hidden_layers
    for layer, _ in targets:
        assert source_layer < layer < n_layers, "targets must be later blocks of the model"
    features = parse_features(args.features, source_sae.d_sae)

    t0 = time.perf_counter()
    cells_active, obs, ablations, fwd = trace_observations(model, cells, specials, source_layer, source_sae,
                                                           targets, features)
    rows = edge_table(cells_active, obs, args.source, target_hooks)
    kept = write_tsv(rows, args.out, args.max_q, args.min_abs_d, args.min_consistency)
    secs = time.perf_counter() - t0
    print(f"{len(cells)} cells, {len(cells_active)} of {len(features)} features fired, {ablations} ablations "
          f"({ablations / max(secs, 1e-9):.1f}/s), {len(rows)} tested edges, {kept} written to {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
