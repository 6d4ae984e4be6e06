#!/usr/bin/env python3
"""Driver of bench/compare/annotate_cpu: generates the fake catalogs (cached), times `scinterp annotate` on all of
them and on layer 0, runs the published procedure on layer 0, and prints a table with the ratio."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

LIBRARIES = [
    "genesets/enrichr.GO_Biological_Process_2021.gmt",
    "genesets/c2.cp.reactome.v2023.2.Hs.symbols.gmt",
    "genesets/c2.cp.kegg.v7.5.1.symbols.gmt",
    "genesets/h.all.v7.0.symbols.gmt",
]
TRRUST = "trrust/trrust_rawdata.human.tsv"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    print(f"== load average before: {load()}", file=sys.stderr)
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"command failed ({res.returncode})")
    return dt, res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scinterp", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--catalogs", type=int, default=18)
    ap.add_argument("--features", type=int, default=4608)
    ap.add_argument("--background", type=int, default=18000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=["parquet", "tsv"], default="parquet")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()

    libs = [a.data / p for p in LIBRARIES]
    trrust = a.data / TRRUST
    for p in libs + [trrust]:
        if not p.exists():
            raise SystemExit(f"{p} not found: the benchmark needs the reference data (see ../shared/data/README.md)")
    work = ROOT / "bench/compare/.work/annotate"
    cats = work / "catalogs"
    stamp = {"catalogs": a.catalogs, "features": a.features, "background": a.background, "seed": a.seed,
             "format": a.format, "generator": (HERE / "make_fake_catalogs.py").stat().st_mtime}
    stamp_file = cats / "stamp.json"
    if not stamp_file.exists() or json.loads(stamp_file.read_text()) != stamp:
        cats.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / "make_fake_catalogs.py"), "--out", str(cats),
                        "--catalogs", str(a.catalogs), "--features", str(a.features),
                        "--background", str(a.background), "--seed", str(a.seed), "--format", a.format,
                        "--data", str(a.data), "--gene-sets", ",".join(map(str, libs))], check=True)
        stamp_file.write_text(json.dumps(stamp))
        print(f"generated catalogs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    dirs = [cats / f"layer{i:02d}" for i in range(a.catalogs)]

    def scinterp(catalogs: list[Path], out: Path) -> tuple[float, dict]:
        dt, res = timed([a.scinterp, "annotate", "--catalog", ",".join(map(str, catalogs)),
                         "--gene-sets", ",".join(map(str, libs)), "--trrust", str(trrust),
                         "--permutations", str(a.permutations), "--seed", str(a.seed),
                         "--out", str(out), "--threads", str(a.threads), "--json", "--quiet"])
        return dt, json.loads(res.stdout)

    t_all, s_all = scinterp(dirs, work / "out_all")
    t_one, s_one = scinterp(dirs[:1], work / "out_layer00")
    base = None
    t_base = None
    if not a.skip_baseline:
        env_threads = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "OPENBLAS_NUM_THREADS": str(a.threads)}
        cmd = [sys.executable, str(HERE / "annotate_published.py"), "--catalog", str(dirs[0]),
               "--gene-sets", ",".join(map(str, libs)), "--trrust", str(trrust)]
        print(f"== load average before: {load()}", file=sys.stderr)
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env_threads)
        t_base = time.perf_counter() - t
        if res.returncode != 0:
            sys.stderr.write(res.stderr)
            raise SystemExit("baseline failed")
        base = json.loads(res.stdout)

    fam = s_all["families"]["gene_sets_and_edges"]
    one = s_one["catalogs"][0]
    print()
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, --threads {a.threads}; load now {load()}")
    print(f"input: {a.catalogs} catalogs x {a.features} features, {a.background} background genes; libraries: "
          + ", ".join(Path(p).stem for p in LIBRARIES) + ", TRRUST (TF sets + edges, B = "
          + f"{a.permutations})")
    print()
    print("| run | catalogs | tests (family m) | significant | annotated (layer 0) | seconds |")
    print("|---|---|---|---|---|---|")
    print(f"| scinterp annotate, all layers | {a.catalogs} | {fam['m']:,} | {fam['significant_atlas_q']:,} | "
          f"{s_all['catalogs'][0]['annotated_fraction']:.1%} | {t_all:.1f} |")
    print(f"| scinterp annotate, layer 0 | 1 | {s_one['families']['gene_sets_and_edges']['m']:,} | "
          f"{s_one['families']['gene_sets_and_edges']['significant_atlas_q']:,} | {one['annotated_fraction']:.1%} | "
          f"{t_one:.2f} |")
    if base:
        print(f"| published procedure (Python), layer 0 | 1 | {base['tests']:,} (overlap >= 2 only) | "
              f"{base['significant']:,} | {base['annotated_fraction']:.1%} | {t_base:.1f} "
              f"(load {base['seconds_load']:.1f}, tests {base['seconds_tests']:.1f}) |")
        print()
        print(f"ratio on layer 0 (published wall / scinterp wall): {t_base / t_one:.1f}x")
        print(f"published procedure extrapolated to {a.catalogs} layers: {t_base * a.catalogs / 60:.1f} min; "
              f"scinterp on all {a.catalogs}: {t_all:.1f} s")
    out = {"scinterp_all_seconds": t_all, "scinterp_layer0_seconds": t_one, "baseline_layer0_seconds": t_base,
           "baseline": base, "family_m": fam["m"], "significant_atlas": fam["significant_atlas_q"],
           "scinterp_seconds_split": s_all.get("seconds"), "machine": cpu_name(), "threads": a.threads}
    if a.json_out:
        a.json_out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
