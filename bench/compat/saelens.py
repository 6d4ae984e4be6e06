#!/usr/bin/env python3
"""SAELens compatibility check: SAELens loads an scinterp SAE folder and encodes exactly what `scinterp sae encode`
writes.

Usage (from the repository root; needs `pip install sae-lens` in the venv, checked with sae-lens 6.54.12):

    /tmp/pyenv/venv/bin/python bench/compat/saelens.py --sae SAE_DIR --acts STORE \\
        (--scinterp target/release/scinterp | --codes CODES_DIR) [--hook HOOK] [--rows 20000] [--seed 0] \\
        [--tol 1e-3] [--tie-tol 1e-4] [--workdir DIR] [--json-out FILE] [--allow-metadata-loss]

  --scinterp BIN  runs `BIN sae encode --sae SAE_DIR --acts STORE --out WORKDIR/codes [--hook HOOK]` first
                  (WORKDIR defaults to a temporary folder, removed on success);
  --codes DIR     compares an existing CODES folder (indices.npy, values.npy) instead.

What it does:
  1. reads SAE_DIR/cfg.json and checks the SAELens fields scinterp promises (architecture "topk", k, d_in, d_sae,
     apply_b_dec_to_input true, normalize_activations "none", metadata.hook_name); loads the folder with
     `sae_lens.SAE.load_from_disk(SAE_DIR, device="cpu")` and checks that SAELens kept metadata.hook_name
     (sae-lens 6 treats a cfg.json without metadata.sae_lens_version >= 6.0 as a pre-6.0 config and rebuilds
     metadata from top-level keys, dropping hook_name; a failure unless --allow-metadata-loss);
  2. checks CODES: indices.npy int16 when d_sae <= 32767 else int32, values.npy f16, both [n_rows, k] with
     n_rows = the store's rows; per row: indices in [0, d_sae) and distinct, values >= 0 and sorted descending;
  3. on --rows rows of the store's hook array (all rows if fewer; otherwise a seeded random sample), encodes
     with SAELens (`sae.encode`, f32, dense [B, d_sae]) and also computes the pre-activations in f64 from the
     loaded weights; then per row compares the active sets (value > 0) and the values:
       - a latent active in one and not the other is excused when its f64 value is within --tol of 0
         (a ReLU boundary) or its f64 pre-activation is within --tie-tol·max(1,|p_k|) of the k-th largest
         pre-activation p_k (a top-k tie); otherwise the row is a set mismatch;
       - on latents active in both, |v_scinterp − v_saelens| must be <= tol·max(1, |v|) + half an f16 ulp of v
         (values.npy is f16, so a value of 10 cannot be closer than 0.004);
       - entries scinterp stores with value 0 (selected pre-activation <= 0) must have f64 pre <= tol;
  4. prints a summary (rows compared, rows with identical sets, excused differences, mismatches, worst value
     error, mean L0 of each, FVU of the SAELens reconstruction on those rows) and exits 1 on any mismatch or
     format error, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def f16_half_ulp(v: np.ndarray) -> np.ndarray:
    a = np.abs(v).astype(np.float16)
    return np.spacing(a).astype(np.float64) / 2.0


def main() -> int:
    ap = argparse.ArgumentParser(description="SAELens vs scinterp sae encode")
    ap.add_argument("--sae", type=Path, required=True)
    ap.add_argument("--acts", type=Path, required=True)
    ap.add_argument("--hook", default=None)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--scinterp", default=None)
    g.add_argument("--codes", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--tie-tol", type=float, default=1e-4)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--allow-metadata-loss", action="store_true",
                    help="report, but do not fail on, SAELens dropping cfg.json's metadata")
    args = ap.parse_args()

    import torch
    import sae_lens
    from sae_lens import SAE

    problems: list[str] = []
    warnings: list[str] = []

    # ---- 1. cfg.json and loading
    cfg = json.loads((args.sae / "cfg.json").read_text())
    meta = cfg.get("metadata") or {}
    expect = {"architecture": "topk", "apply_b_dec_to_input": True, "normalize_activations": "none"}
    for key, val in expect.items():
        if cfg.get(key) != val:
            problems.append(f"cfg.json: {key} = {cfg.get(key)!r}, expected {val!r}")
    for key in ("d_in", "d_sae", "k"):
        if not isinstance(cfg.get(key), int):
            problems.append(f"cfg.json: {key} missing or not an integer ({cfg.get(key)!r})")
    hook = args.hook or meta.get("hook_name") or cfg.get("hook_name")
    if not meta.get("hook_name"):
        problems.append("cfg.json: metadata.hook_name missing")
    sae = SAE.load_from_disk(str(args.sae), device="cpu")
    sae.eval()
    if meta.get("hook_name") and sae.cfg.metadata.hook_name != meta.get("hook_name"):
        (warnings if args.allow_metadata_loss else problems).append(f"SAELens dropped metadata.hook_name (loaded metadata: {sae.cfg.metadata.to_dict()}); "
                        "write metadata.sae_lens_version (>= 6.0.0) in cfg.json so that SAELens keeps metadata")
    d_in, d_sae, k = sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k
    if hook is None:
        sys.exit("error: no hook (pass --hook)")

    # ---- store
    X = np.load(args.acts / f"{hook}.npy", mmap_mode="r")
    n_rows = X.shape[0]
    if X.shape[1] != d_in:
        sys.exit(f"error: {args.acts}/{hook}.npy has d = {X.shape[1]}, SAE d_in = {d_in}")

    # ---- codes
    tmp = None
    encode_seconds = None
    if args.scinterp:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="saelens_compat_"))
        tmp = None if args.workdir else work
        codes_dir = work / "codes"
        if codes_dir.exists():
            shutil.rmtree(codes_dir)
        cmd = [args.scinterp, "sae", "encode", "--sae", str(args.sae), "--acts", str(args.acts),
               "--out", str(codes_dir)]
        if args.hook:
            cmd += ["--hook", args.hook]
        print("$", shlex.join(cmd), flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        encode_seconds = time.perf_counter() - t0
        if r.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-3000:], sep="\n")
            print(f"FAIL: scinterp sae encode exited {r.returncode}")
            return 1
    else:
        codes_dir = args.codes
    I = np.load(codes_dir / "indices.npy", mmap_mode="r")
    V = np.load(codes_dir / "values.npy", mmap_mode="r")
    want_idx = np.int16 if d_sae <= 32767 else np.int32
    if I.dtype != want_idx:
        problems.append(f"indices.npy dtype {I.dtype}, expected {np.dtype(want_idx)}")
    if V.dtype != np.float16:
        problems.append(f"values.npy dtype {V.dtype}, expected float16")
    if I.shape != (n_rows, k) or V.shape != (n_rows, k):
        problems.append(f"codes shapes indices {I.shape}, values {V.shape}, expected ({n_rows}, {k})")
        print("\n".join("FAIL: " + p for p in problems))
        return 1

    # ---- rows to compare
    if n_rows <= args.rows:
        rows = np.arange(n_rows)
    else:
        rows = np.sort(np.random.default_rng(args.seed).choice(n_rows, args.rows, replace=False))

    W_enc = sae.W_enc.detach().double().numpy()
    b_enc = sae.b_enc.detach().double().numpy()
    b_dec = sae.b_dec.detach().double().numpy()
    apply_bdec = bool(sae.cfg.apply_b_dec_to_input)

    n_same = n_excused_rows = n_set_bad = n_val_bad = n_zero_bad = n_fmt_bad = 0
    worst_abs = 0.0
    worst_rel = 0.0
    n_both = 0
    l0_ref = l0_sci = 0
    sse = 0.0
    sum_x = np.zeros(d_in)
    sum_x2 = 0.0
    examples: list[str] = []
    B = 2048
    for s in range(0, len(rows), B):
        rb = rows[s:s + B]
        xb = np.asarray(X[rb], dtype=np.float32)
        with torch.no_grad():
            z = sae.encode(torch.from_numpy(xb))
            if z.is_sparse:
                z = z.to_dense()
            xhat = sae.decode(z).double().numpy()
            z = z.double().numpy()
        x64 = xb.astype(np.float64)
        pre = (x64 - (b_dec if apply_bdec else 0.0)) @ W_enc + b_enc  # f64 reference
        sse += float(((x64 - xhat) ** 2).sum())
        sum_x += x64.sum(axis=0)
        sum_x2 += float((x64 ** 2).sum())
        ib = np.asarray(I[rb]).astype(np.int64)
        vb = np.asarray(V[rb]).astype(np.float64)
        kth = -np.partition(-pre, k - 1, axis=1)[:, k - 1]
        for j in range(len(rb)):
            idx, val = ib[j], vb[j]
            row = int(rb[j])
            if (idx < 0).any() or (idx >= d_sae).any() or len(np.unique(idx)) != k \
                    or (val < 0).any() or (np.diff(val) > 0).any() or not np.isfinite(val).all():
                n_fmt_bad += 1
                if len(examples) < 10:
                    examples.append(f"row {row}: bad codes (range/distinct/sorted/sign): idx {idx[:8]}..., "
                                    f"val {val[:8]}...")
                continue
            ref_act = np.flatnonzero(z[j] > 0)
            sci_act = idx[val > 0]
            l0_ref += len(ref_act)
            l0_sci += len(sci_act)
            A, S = set(ref_act.tolist()), set(sci_act.tolist())
            diff = A ^ S
            bad = []
            for f in diff:
                pv = pre[j, f]
                if max(pv, 0.0) <= args.tol or abs(pv - kth[j]) <= args.tie_tol * max(1.0, abs(kth[j])):
                    continue
                bad.append(f)
            if bad:
                n_set_bad += 1
                if len(examples) < 10:
                    examples.append(f"row {row}: active sets differ on latents {sorted(bad)[:8]} "
                                    f"(pre {[round(float(pre[j, f]), 5) for f in sorted(bad)[:8]]}, "
                                    f"k-th pre {kth[j]:.5f}; in scinterp: {[f in S for f in sorted(bad)[:8]]})")
            elif diff:
                n_excused_rows += 1
            else:
                n_same += 1
            pos = {int(f): i for i, f in enumerate(idx)}
            both = sorted(A & S)
            if both:
                vs = np.array([val[pos[f]] for f in both])
                vr = z[j, both]
                err = np.abs(vs - vr)
                lim = args.tol * np.maximum(1.0, np.abs(vr)) + f16_half_ulp(vr)
                n_both += len(both)
                worst_abs = max(worst_abs, float(err.max()))
                worst_rel = max(worst_rel, float((err / np.maximum(1.0, np.abs(vr))).max()))
                if (err > lim).any():
                    n_val_bad += 1
                    if len(examples) < 10:
                        m = int(np.argmax(err - lim))
                        examples.append(f"row {row}: latent {both[m]} value scinterp {vs[m]:.6g} vs SAELens "
                                        f"{vr[m]:.6g} (|diff| {err[m]:.3g} > {lim[m]:.3g})")
            zero_idx = idx[val == 0]
            if len(zero_idx) and (pre[j, zero_idx] > args.tol).any():
                n_zero_bad += 1
                if len(examples) < 10:
                    examples.append(f"row {row}: scinterp stores value 0 for latents with pre "
                                    f"{pre[j, zero_idx][pre[j, zero_idx] > args.tol][:4]}")

    n = len(rows)
    sst = sum_x2 - float(sum_x @ sum_x) / n  # Σ‖x − mean‖² over the compared rows
    summary = {
        "sae_lens_version": sae_lens.__version__,
        "sae": str(args.sae), "acts": str(args.acts), "hook": hook,
        "d_in": d_in, "d_sae": d_sae, "k": k, "store_rows": int(n_rows), "rows_compared": int(n),
        "rows_identical_sets": n_same, "rows_excused_differences": n_excused_rows,
        "rows_set_mismatch": n_set_bad, "rows_value_mismatch": n_val_bad, "rows_zero_entry_mismatch": n_zero_bad,
        "rows_bad_codes": n_fmt_bad, "values_compared": n_both,
        "worst_abs_value_err": worst_abs, "worst_rel_value_err": worst_rel,
        "l0_saelens": l0_ref / n, "l0_scinterp": l0_sci / n,
        "fvu_saelens_on_compared_rows": sse / sst if sst > 0 else None,
        "encode_seconds": encode_seconds, "format_problems": problems, "warnings": warnings,
    }
    ok = not problems and n_set_bad == 0 and n_val_bad == 0 and n_zero_bad == 0 and n_fmt_bad == 0
    summary["ok"] = ok
    print(f"sae-lens {sae_lens.__version__}: SAE {args.sae} ({d_in} -> {d_sae}, k {k}), hook {hook}")
    print(f"  rows compared {n:,} of {n_rows:,}: identical active sets {n_same:,}, excused (ties / ~0) "
          f"{n_excused_rows:,}, set mismatches {n_set_bad:,}, value mismatches {n_val_bad:,}, "
          f"zero-entry mismatches {n_zero_bad:,}, malformed rows {n_fmt_bad:,}")
    print(f"  values compared {n_both:,}: worst |diff| {worst_abs:.3g}, worst |diff|/max(1,|v|) {worst_rel:.3g}")
    print(f"  mean L0: SAELens {l0_ref / n:.3f}, scinterp {l0_sci / n:.3f}; SAELens FVU on these rows "
          f"{summary['fvu_saelens_on_compared_rows']:.4f}"
          + (f"; scinterp sae encode took {encode_seconds:.2f} s" if encode_seconds is not None else ""))
    for p in problems:
        print("  FORMAT:", p)
    for w in warnings:
        print("  WARNING:", w)
    for e in examples:
        print("  e.g.", e)
    print("PASS" if ok else "FAIL")
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    if ok and tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
