#!/usr/bin/env bash
# Runs on the GPU host (no Rust toolchain, no network) from the repository root: the GPU tests and the
# CUDA benchmarks built elsewhere by bench/gpu/build.sh (carried in bench/gpu/bin/), then the Python
# baselines side by side with scinterp (bench/python/*_gpu.py, when present). Everything it prints and
# writes under $OUT (default bench/gpu/out/) is the record for BENCHMARKS.md.
#
#   bash bench/gpu/run.sh [tests|benches|baselines|all]   (default all)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
bin="$ROOT/bench/gpu/bin"
out="${OUT:-$ROOT/bench/gpu/out}"
what="${1:-all}"
mkdir -p "$out"
if [[ -f "$bin/bundle.tar.gz" && ! -x "$bin/scinterp" ]]; then
    tar -C "$bin" -xzf "$bin/bundle.tar.gz"
fi
if [[ ! -x "$bin/scinterp" ]]; then
    echo "error: $bin/scinterp missing: run bench/gpu/build.sh on a machine with the Rust toolchain and carry bench/gpu/bin" >&2
    exit 1
fi
# Test binaries read fixtures relative to the repository they were built in; point them here.
export SCINTERP_TEST_ROOT="$ROOT"
# ...and at the carried binary (the build machine's target/ path does not exist here).
export SCINTERP_BIN="$bin/scinterp"
status=0

{
    echo "== machine"
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    echo "libcublasLt: $(ldconfig -p 2>/dev/null | grep -c 'libcublasLt.so.13') entries (ldconfig)"
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1
} | tee "$out/machine.txt"

# PyTorch ships libcublasLt.so.13 in its nvidia wheels; let cudarc find it when the system has none.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublasLt.so.13'; then
    lt_dir="$(python3 - <<'PY' 2>/dev/null
import glob, os, site
for base in site.getsitepackages():
    hits = glob.glob(os.path.join(base, "nvidia", "*", "lib", "libcublasLt.so.13"))
    if hits:
        print(os.path.dirname(hits[0]))
        break
PY
)"
    if [[ -n "$lt_dir" ]]; then
        export LD_LIBRARY_PATH="$lt_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "using libcublasLt from $lt_dir" | tee -a "$out/machine.txt"
    fi
fi

if [[ "$what" == all || "$what" == tests ]]; then
    for t in "$bin"/test-*; do
        name="$(basename "$t")"
        echo "== $name"
        if ! "$t" --test-threads=1 --nocapture >"$out/$name.log" 2>&1; then
            status=1
            echo "FAILED: $name (see $out/$name.log)"
        fi
        grep -E "^test result|skipped|error|max|error " "$out/$name.log" | tail -40
    done
fi

if [[ "$what" == all || "$what" == benches ]]; then
    for b in "$bin"/bench-*; do
        name="$(basename "$b")"
        echo "== $name"
        "$b" --bench --noplot 2>&1 | tee "$out/$name.log" | grep -E "time:|thrpt:|skipped|^[a-z_]+/" || status=1
    done
fi

if [[ "$what" == all || "$what" == baselines ]]; then
    for script in forward_gpu sae_gpu trace_gpu; do
        py="bench/python/$script.py"
        [[ -f "$py" ]] || continue
        echo "== $script"
        python3 "$py" --scinterp "$bin/scinterp" --workdir "$out/work" --json-out "$out/$script.json" 2>&1 |
            tee "$out/$script.log" || status=1
    done
fi
exit "$status"
