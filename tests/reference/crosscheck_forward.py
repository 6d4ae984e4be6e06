#!/usr/bin/env python3
"""Cross-check `scinterp forward` against Hugging Face BertForMaskedLM on random Geneformer-shaped models.

For each of N random configs (hidden = 64·heads with heads in {1,2,3,4,6}, 1–6 layers, intermediate
2–4× hidden, vocab 30–300, P 16–128, V1 style (genes only) or V2 style ([2] + genes + [3])), this script:

  1. builds a seeded random-weight BertForMaskedLM (HF default init, plus random LayerNorm
     weights/biases, random biases and larger query/key weights so attention is not ~uniform —
     see make_geneformer_fixtures.randomise_params);
  2. saves it in the model folder, alternating between
       - `model.safetensors` via save_pretrained (config.json as written by transformers), and
       - `pytorch_model.bin` via torch.save(state_dict) (+ the int64 `bert.embeddings.position_ids`
         buffer that real V1 files carry; tied decoder keys stored as shared views) with a
         config.json in the published 4.6.0-era layout; the folder holds only these two files;
  3. writes a ragged batch of 1–5 cells (one at full length P) as tokens.json = {"input_ids": [[...], ...]};
  4. runs `<scinterp> forward --model DIR --input tokens.json --hooks all --logits --out out.safetensors`;
  5. compares every hook (hook_embed, blocks.L.hook_{attn_out,resid_mid,mlp_out,resid_post}) and the
     logits at real positions with the HF reference (eager attention, f32, padded batch + attention
     mask): err = max|a−b| / max(1, max|b|) must be ≤ 1e-4. It also checks `lengths`, the shapes
     [n_cells, max_len, H or V] and that positions past each cell's length are exactly zero.

Usage (from the repository root):

    /tmp/pyenv/venv/bin/python tests/reference/crosscheck_forward.py \\
        --scinterp target/release/scinterp [--n-models 6] [--seed 7] [--workdir DIR] [--tol 1e-4]

Prints one line per model and a final "N passed, M failed"; exits 1 on any failure. With --workdir
the model folders and outputs are kept; otherwise a temporary directory is used, and removed
unless a model failed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import BertForMaskedLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_geneformer_fixtures as mgf  # noqa: E402  (shared model building / hooking code)

HEAD_CHOICES = (1, 2, 3, 4, 6)
HEAD_DIM = 64


def legacy_config(cfg: dict) -> dict:
    """The config in the layout of the published V1 files (transformers 4.6.0)."""
    return {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": 0.02,
        "gradient_checkpointing": False,
        "hidden_act": "relu",
        "hidden_dropout_prob": 0.02,
        "hidden_size": cfg["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": cfg["intermediate_size"],
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": cfg["max_position_embeddings"],
        "model_type": "bert",
        "num_attention_heads": cfg["num_attention_heads"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "transformers_version": "4.6.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": cfg["vocab_size"],
    }


def random_config(rng: np.random.Generator) -> dict:
    heads = int(rng.choice(HEAD_CHOICES))
    H = HEAD_DIM * heads
    return legacy_config({
        "hidden_size": H,
        "num_attention_heads": heads,
        "num_hidden_layers": int(rng.integers(1, 7)),
        "intermediate_size": H * int(rng.integers(2, 5)),
        "vocab_size": int(rng.integers(30, 301)),
        "max_position_embeddings": int(rng.integers(16, 129)),
    })


def random_cells(rng: np.random.Generator, V: int, P: int, style: str) -> list[list[int]]:
    """1–5 cells, one of them (at a random index) at full length P; others ragged."""
    n = int(rng.integers(1, 6))
    min_len = 1 if style == "v1" else 3
    lengths = [int(rng.integers(min_len, P + 1)) for _ in range(n)]
    lengths[int(rng.integers(0, n))] = P
    lo = 2 if style == "v1" else 4
    cells = []
    for L in lengths:
        n_genes = L if style == "v1" else L - 2
        # Distinct gene ids like real cells when the vocabulary allows, otherwise with replacement.
        genes = rng.choice(np.arange(lo, V), size=n_genes, replace=n_genes > V - lo).tolist()
        cells.append([int(g) for g in genes] if style == "v1" else [2] + [int(g) for g in genes] + [3])
    return cells


def save_model(model: BertForMaskedLM, cfg: dict, d: Path, fmt: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        model.save_pretrained(d, safe_serialization=True)  # keeps transformers' own config.json
    else:
        # torch.save of the full f32 state dict, like old checkpoints: the tied decoder is stored as a
        # view of the word embeddings, and position_ids (dropped by transformers 5) is added back.
        sd = model.state_dict()
        P = model.config.max_position_embeddings
        sd.setdefault("bert.embeddings.position_ids", torch.arange(P, dtype=torch.int64).unsqueeze(0))
        torch.save(sd, d / "pytorch_model.bin")
        mgf.write_config(d, cfg)
    present = sorted(p.name for p in d.iterdir())
    want = ["config.json", "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"]
    assert present == sorted(want), present


def reference(model: BertForMaskedLM, cells: list[list[int]]):
    """HF outputs for the padded batch: ({hook: [B, Lmax, H]}, logits [B, Lmax, V], lengths)."""
    ids, mask, lengths = mgf.pad_batch(cells)
    hooks, logits, _ = mgf.run_hooked(model, ids, mask)
    return hooks, logits, lengths


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a−b| / max(1, max|b|), in float64."""
    a, b = a.double(), b.double()
    if b.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def compare(out: dict, ref_hooks: dict, ref_logits: torch.Tensor, lengths: torch.Tensor, H: int, V: int):
    """Returns ({name: err}, [problems]). Errors are computed over real positions only."""
    problems: list[str] = []
    errs: dict[str, float] = {}
    B, Lmax = len(lengths), int(lengths.max())
    real = torch.arange(Lmax)[None, :] < lengths[:, None]  # [B, Lmax]

    if "lengths" not in out:
        problems.append("missing `lengths`")
    elif out["lengths"].dtype != torch.int64 or not torch.equal(out["lengths"], lengths):
        problems.append(f"lengths {out['lengths'].dtype} {out['lengths'].tolist()} != {lengths.tolist()}")

    expected = {**ref_hooks, "logits": ref_logits}
    for name, ref in expected.items():
        width = V if name == "logits" else H
        if name not in out:
            problems.append(f"missing {name}")
            continue
        got = out[name]
        if got.dtype != torch.float32 or list(got.shape) != [B, Lmax, width]:
            problems.append(f"{name}: {got.dtype} {list(got.shape)}, want float32 {[B, Lmax, width]}")
            continue
        if not torch.isfinite(got[real]).all():
            problems.append(f"{name}: non-finite values at real positions")
        if (got[~real] != 0).any():
            problems.append(f"{name}: non-zero values past a cell's length")
        errs[name] = rel_err(got[real], ref[real])
    extra = sorted(set(out) - set(expected) - {"lengths"})
    return errs, problems, extra


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scinterp", required=True, help="path to the scinterp binary")
    ap.add_argument("--n-models", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=None, help="keep model folders and outputs here")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--extra-args", default="", help="extra arguments appended to the scinterp command")
    args = ap.parse_args()

    exe = shutil.which(args.scinterp)
    if exe is None:
        ap.error(f"--scinterp {args.scinterp}: not found or not executable (build it: cargo build --release -p scinterp)")
    args.scinterp = exe
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scinterp-crosscheck-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    passed = failed = 0

    for i in range(args.n_models):
        cfg = random_config(rng)
        fmt = "safetensors" if i % 2 == 0 else "bin"
        style = "v1" if (i // 2) % 2 == 0 else "v2"  # covers all four (format, style) pairs
        H, V, P = cfg["hidden_size"], cfg["vocab_size"], cfg["max_position_embeddings"]
        cells = random_cells(rng, V, P, style)
        model_seed = args.seed * 1000 + i
        model = mgf.build_model(cfg, model_seed)
        mgf.randomise_params(model, model_seed + 1)

        mdir = workdir / f"model{i}"
        if mdir.exists():
            shutil.rmtree(mdir)
        save_model(model, cfg, mdir, fmt)
        tokens = workdir / f"tokens{i}.json"
        tokens.write_text(json.dumps({"input_ids": cells}) + "\n")
        out_path = workdir / f"out{i}.safetensors"
        out_path.unlink(missing_ok=True)

        summary = (f"model {i}: H={H} heads={cfg['num_attention_heads']} layers={cfg['num_hidden_layers']} "
                   f"I={cfg['intermediate_size']} V={V} P={P} {style} cells={[len(c) for c in cells]} fmt={fmt}")
        ref_hooks, ref_logits, lengths = reference(model, cells)

        cmd = [args.scinterp, "forward", "--model", str(mdir), "--input", str(tokens),
               "--hooks", "all", "--logits", "--out", str(out_path)] + shlex.split(args.extra_args)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out_path.exists():
            failed += 1
            print(f"{summary}  FAIL (scinterp exit {proc.returncode})")
            print("    $ " + shlex.join(cmd))
            for line in (proc.stderr or proc.stdout).strip().splitlines()[-15:]:
                print("    " + line)
            continue

        errs, problems, extra = compare(load_file(str(out_path)), ref_hooks, ref_logits, lengths, H, V)
        worst = max(errs, key=errs.get) if errs else "-"
        worst_err = errs.get(worst, float("nan"))
        bad = [f"{k} {v:.2e}" for k, v in errs.items() if not v <= args.tol]
        ok = not problems and not bad
        passed += ok
        failed += not ok
        print(f"{summary}  worst={worst} {worst_err:.2e}  {'PASS' if ok else 'FAIL'}")
        for p in problems + [f"over tolerance {args.tol:g}: {b}" for b in bad]:
            print("    " + p)
        if extra:
            print(f"    (ignored extra tensors: {', '.join(extra[:6])}{' …' if len(extra) > 6 else ''})")

    print(f"{passed} passed, {failed} failed")
    if args.workdir is None and not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    else:  # keep the folders of a failing run so that the failing command can be re-run by hand
        print(f"kept model folders and outputs in {workdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
