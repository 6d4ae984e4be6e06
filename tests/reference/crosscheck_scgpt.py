#!/usr/bin/env python3
"""Cross-check `scinterp forward` against the torch scGPT reference (scgpt_reference.py) on random
scGPT-shaped models.

For each of N random configs (E = 64·heads or 32·heads with heads in {1,2,4,8}, d_hid 0.75–4 × E (multiples of
8; sometimes odd-sized), 1–4 layers, 30–300 genes + <pad>, <cls>, <eoc>), this script:

  1. builds a seeded random-weight scgpt_reference.ScGPTRef (every tensor random: LayerNorm gamma/beta,
     biases, larger Q/K weights so that attention is not ~uniform; see scgpt_reference.randomise_);
  2. saves it in the model folder with args.json (the real one, sizes overridden) and vocab.json (synthetic
     symbols, specials last, shuffled key order), cycling through the four checkpoint forms
       flash best_model.pt, torch-layout best_model.pt, flash model.safetensors, torch-layout model.safetensors
     (flash = `self_attn.Wqkv.*` + `flag_encoder.weight`, as in the real file; torch = `self_attn.in_proj_*`);
  3. writes 1–5 ragged cells ([<cls>] + distinct genes, CLS value -2, bins 1..50; some cells carry the mask
     value -1 or raw values above the 512 clamp) as input.json = {"gene_ids": [[...]], "values": [[...]]};
  4. runs `<scinterp> forward --model DIR --input DIR/input.json --hooks all --head --out DIR/out.safetensors`;
  5. compares at real positions every hook (hook_embed, blocks.L.hook_{attn_out,resid_mid,mlp_out,resid_post}),
     cell_embedding, expr_pred and (if present) mvc_pred with the torch reference (eval, f32, MHA fast path
     off, padded batch + src_key_padding_mask): err = max|a−b| / max(1, max|b|) must be ≤ --tol. It also
     checks `lengths`, dtypes and shapes, and that positions past each cell's length are exactly 0.

Usage (from the repository root):

    /tmp/pyenv/venv/bin/python tests/reference/crosscheck_scgpt.py \\
        --scinterp target/release/scinterp [--n-models 6] [--seed 11] [--workdir DIR] [--tol 1e-4]
    /tmp/pyenv/venv/bin/python tests/reference/crosscheck_scgpt.py --dry-run [--workdir DIR]

--dry-run builds the models, inputs and torch references (and checks that every saved checkpoint reloads to
the same outputs) without running scinterp. Prints one line per model, the worst error per metric over all
models and a final "N passed, M failed"; exits 1 on any failure. With --workdir the folders are kept;
otherwise a temporary directory is used, removed unless a model failed.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scgpt_reference as ref  # noqa: E402

HEAD_CHOICES = (1, 2, 4, 8)
FORMS = (("flash", "pt"), ("torch", "pt"), ("flash", "safetensors"), ("torch", "safetensors"))
MAX_CELL_LEN = 96


def random_config(rng: np.random.Generator) -> dict:
    heads = int(rng.choice(HEAD_CHOICES))
    E = int(rng.choice((32, 64))) * heads
    # d_hid differs from E on purpose (whole-human has d_hid = E); mostly multiples of 8, sometimes odd,
    # so that a kernel assuming a padded/blocked FFN width shows.
    d_hid = int(round(E * rng.uniform(0.75, 4.0) / 8)) * 8
    if rng.random() < 0.25:
        d_hid += int(rng.integers(1, 8))
    return {"E": E, "nheads": heads, "d_hid": max(8, d_hid), "nlayers": int(rng.integers(1, 5)),
            "n_genes": int(rng.integers(30, 301))}


def random_inputs(rng: np.random.Generator, n_genes: int, cls_id: int):
    """1–5 cells, one at the longest length; some values -1 (mask) and ≥ 512 (clamped), at least one of each
    in the longest cell."""
    n = int(rng.integers(1, 6))
    top = min(n_genes + 1, MAX_CELL_LEN)
    lengths = [int(rng.integers(2, top + 1)) for _ in range(n)]
    longest = int(rng.integers(0, n))
    lengths[longest] = top
    ids, vals = ref.random_cells(rng, n_genes, cls_id, lengths)
    big = lambda: float(rng.choice([512.0, 513.0, 900.0, 5000.0]))  # noqa: E731
    for v in vals:
        for p in range(1, len(v)):
            r = rng.random()
            if r < 0.04:
                v[p] = ref.MASK_VALUE
            elif r < 0.06:
                v[p] = big()
    p_mask, p_big = rng.choice(np.arange(1, top), size=2, replace=False)
    vals[longest][int(p_mask)] = ref.MASK_VALUE
    vals[longest][int(p_big)] = 900.0 if rng.random() < 0.5 else 5000.0
    return ids, vals


def prepare(i: int, seed: int, rng: np.random.Generator, workdir: Path):
    """Model folder + input.json for model i; returns (summary, folder, reference tensors, lengths, cfg)."""
    cfg = random_config(rng)
    layout, fmt = FORMS[i % len(FORMS)]
    vocab = ref.make_vocab([f"G{j:04d}" for j in range(cfg["n_genes"])])
    pad_id, cls_id, _ = ref.special_ids(vocab)
    ids_l, vals_l = random_inputs(rng, cfg["n_genes"], cls_id)

    model = ref.ScGPTRef(len(vocab), cfg["E"], cfg["nheads"], cfg["d_hid"], cfg["nlayers"], pad_id)
    model_seed = seed * 1000 + i
    ref.randomise_(model, model_seed)

    d = workdir / f"model{i}"
    if d.exists():
        shutil.rmtree(d)
    ref.write_args_json(d, cfg["E"], cfg["nlayers"], cfg["nheads"], cfg["d_hid"])
    ref.write_vocab_json(d, vocab, model_seed + 1)
    ref.save_checkpoint(model, d, layout, fmt)
    ref.write_input_json(d / "input.json", ids_l, vals_l)

    ids, vals, pad, lengths = ref.pad_cells(ids_l, vals_l, pad_id)
    out = ref.run_reference(model, ids, vals, pad)
    out.pop("layer_inputs")
    summary = (f"model {i}: E={cfg['E']} heads={cfg['nheads']} d_hid={cfg['d_hid']} layers={cfg['nlayers']} "
               f"V={len(vocab)} cells={lengths.tolist()} {layout} {fmt}")
    return summary, d, out, lengths, cfg, (ids, vals, pad)


def compare(got: dict, want: dict, lengths: torch.Tensor, E: int):
    """({name: err}, [problems], [extra names]); errors over real positions only."""
    problems: list[str] = []
    errs: dict[str, float] = {}
    B, Lmax = len(lengths), int(lengths.max())
    real = torch.arange(Lmax)[None, :] < lengths[:, None]

    if "lengths" not in got:
        problems.append("missing `lengths`")
    elif got["lengths"].dtype != torch.int64 or not torch.equal(got["lengths"], lengths):
        problems.append(f"lengths {got['lengths'].dtype} {got['lengths'].tolist()} != {lengths.tolist()}")

    for name, ref_t in want.items():
        if name not in got:
            if name != "mvc_pred":  # optional in the output
                problems.append(f"missing {name}")
            continue
        t = got[name]
        shape = [B, E] if name == "cell_embedding" else [B, Lmax] if name in ("expr_pred", "mvc_pred") else [B, Lmax, E]
        if t.dtype != torch.float32 or list(t.shape) != shape:
            problems.append(f"{name}: {t.dtype} {list(t.shape)}, want float32 {shape}")
            continue
        if name == "cell_embedding":
            a, b = t, ref_t
        else:
            if (t[~real] != 0).any():
                problems.append(f"{name}: non-zero values past a cell's length")
            a, b = t[real], ref_t[real]
        if not torch.isfinite(a).all():
            problems.append(f"{name}: non-finite values at real positions")
        errs[name] = ref.rel_err(a, b)
    extra = sorted(set(got) - set(want) - {"lengths"})
    return errs, problems, extra


def metric_of(name: str) -> str:
    """Group hook names by kind for the per-metric summary (blocks.3.hook_attn_out -> hook_attn_out)."""
    return name.rsplit(".", 1)[-1] if name.startswith("blocks.") else name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scinterp", help="path to the scinterp binary (not needed with --dry-run)")
    ap.add_argument("--n-models", type=int, default=6)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workdir", type=Path, default=None, help="keep model folders and outputs here")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--extra-args", default="", help="extra arguments appended to the scinterp command")
    ap.add_argument("--dry-run", action="store_true",
                    help="build models, inputs and torch references only (checks the reload), no scinterp")
    args = ap.parse_args()

    if not args.dry_run:
        if not args.scinterp:
            ap.error("give --scinterp BIN (or --dry-run)")
        exe = shutil.which(args.scinterp)
        if exe is None:
            ap.error(f"--scinterp {args.scinterp}: not found or not executable (build it: cargo build --release -p scinterp)")
        args.scinterp = exe
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scinterp-crosscheck-scgpt-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    passed = failed = 0
    worst_by_metric: dict[str, tuple[float, int]] = {}

    for i in range(args.n_models):
        summary, d, want, lengths, cfg, (ids, vals, pad) = prepare(i, args.seed, rng, workdir)

        if args.dry_run:
            # The torch half must be self-consistent: the saved files reload to the same outputs.
            again = ref.run_reference(ref.load_model_dir(d), ids, vals, pad)
            same = all(torch.equal(again[k], v) for k, v in want.items())
            passed += same
            failed += not same
            print(f"{summary}  dry run: folder written, reload {'identical' if same else 'DIFFERS'}")
            continue

        out_path = d / "out.safetensors"
        out_path.unlink(missing_ok=True)
        cmd = [args.scinterp, "forward", "--model", str(d), "--input", str(d / "input.json"),
               "--hooks", "all", "--head", "--out", str(out_path)] + shlex.split(args.extra_args)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out_path.exists():
            failed += 1
            print(f"{summary}  FAIL (scinterp exit {proc.returncode})")
            print("    $ " + shlex.join(cmd))
            for line in (proc.stderr or proc.stdout).strip().splitlines()[-15:]:
                print("    " + line)
            continue

        try:
            got = load_file(str(out_path))
        except Exception as e:  # noqa: BLE001  (a malformed output is a failure of this model, not of the script)
            failed += 1
            print(f"{summary}  FAIL (cannot read {out_path}: {e})")
            continue
        errs, problems, extra = compare(got, want, lengths, cfg["E"])
        for k, e in errs.items():
            m = metric_of(k)
            if m not in worst_by_metric or not e <= worst_by_metric[m][0]:
                worst_by_metric[m] = (e, i)
        worst = max(errs, key=errs.get) if errs else "-"
        worst_err = errs.get(worst, float("nan"))
        bad = [f"{k} {v:.2e}" for k, v in errs.items() if not v <= args.tol]
        ok = not problems and not bad
        passed += ok
        failed += not ok
        mvc = "" if "mvc_pred" in got else "  (no mvc_pred in output)"
        print(f"{summary}  worst={worst} {worst_err:.2e}  {'PASS' if ok else 'FAIL'}{mvc}")
        for p in problems + [f"over tolerance {args.tol:g}: {b}" for b in bad]:
            print("    " + p)
        if extra:
            print(f"    (ignored extra tensors: {', '.join(extra[:6])}{' …' if len(extra) > 6 else ''})")

    if worst_by_metric:
        print("worst per metric (over all models):")
        for m in sorted(worst_by_metric):
            e, i = worst_by_metric[m]
            print(f"    {m:18s} {e:.2e}  (model {i})")
    print(f"{passed} passed, {failed} failed" + ("  [dry run: scinterp not called]" if args.dry_run else ""))
    if args.workdir is None and not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    else:  # keep the folders of a failing run so that the failing command can be re-run by hand
        print(f"kept model folders and inputs in {workdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
