#!/usr/bin/env bash
# Runs on the GPU host (no Rust toolchain, no network) from the repository root: the GPU tests and the
# CUDA benchmarks built elsewhere by bench/gpu/build.sh (carried in bench/gpu/bin/), then the Python
# baselines side by side with scinterp (bench/python/*_gpu.py, when present). Everything it prints and
# writes under $OUT (default bench/gpu/out/) is the record for BENCHMARKS.md.
#
#   bash bench/gpu/run.sh [tests|sanitize|benches|baselines|all]   (default all)
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
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1
} | tee "$out/machine.txt"

# cuBLASLt: cudarc loads libcublasLt.so.13, else .so.12 (a CUDA 12 library runs on driver 580). Use the
# system's when ldconfig knows one, else one from PyTorch's nvidia wheels (cu13/lib or cublas/lib), and
# say which. Without any, the GEMMs fall back to the in-house WMMA kernel (bf16 only).
lt_found=""
for soname in libcublasLt.so.13 libcublasLt.so.12; do
    lt_found="$(ldconfig -p 2>/dev/null | awk -v s="$soname" '$1 == s { print $NF; exit }')"
    [[ -n "$lt_found" ]] && break
done
if [[ -z "$lt_found" ]]; then
    lt_found="$(python3 - <<'PY' 2>/dev/null
import glob, os, site
bases = site.getsitepackages() + [site.getusersitepackages()]
for soname in ("libcublasLt.so.13", "libcublasLt.so.12"):
    for base in bases:
        hits = sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", soname)))
        if hits:
            print(hits[0])
            raise SystemExit
PY
)"
    if [[ -n "$lt_found" ]]; then
        export LD_LIBRARY_PATH="$(dirname "$lt_found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
fi
echo "libcublasLt: ${lt_found:-none found (GEMMs use the in-house WMMA kernel, bf16 only)}" | tee -a "$out/machine.txt"

# NVRTC for the run-time compile tests: the loaded libnvrtc may come without CUDA headers (PyTorch's
# wheel); point NVRTC at a toolkit's headers when there is one (the tests skip with a reason otherwise).
if [[ -z "${SCINTERP_CUDA_INCLUDE:-}" ]]; then
    for inc in "${CUDA_HOME:-/nonexistent}/include" /usr/local/cuda/include; do
        if [[ -f "$inc/cuda_bf16.h" ]]; then
            export SCINTERP_CUDA_INCLUDE="$inc"
            break
        fi
    done
fi
echo "CUDA headers for NVRTC: ${SCINTERP_CUDA_INCLUDE:-none found}" | tee -a "$out/machine.txt"

if [[ "$what" == all || "$what" == tests ]]; then
    for t in "$bin"/test-*; do
        name="$(basename "$t")"
        echo "== $name"
        if ! "$t" --test-threads=1 --nocapture >"$out/$name.log" 2>&1; then
            status=1
            echo "FAILED: $name (see $out/$name.log)"
        fi
        grep -E "^test result|skipped|SKIPPED|error|max|error " "$out/$name.log" | tail -40
    done
fi

# compute-sanitizer over the kernel tests: memcheck (out-of-bounds and misaligned accesses, leaks) and
# racecheck (shared-memory hazards). Each run is capped at SANITIZE_SECS (default 120 s); a cap reached is
# reported, not counted as a failure, since the sanitizer slows kernels by one to two orders of magnitude.
if [[ "$what" == all || "$what" == sanitize ]]; then
    if command -v compute-sanitizer >/dev/null 2>&1; then
        for t in "$bin"/test-cuda_*; do
            [[ -x "$t" ]] || continue
            name="$(basename "$t")"
            for tool in memcheck racecheck; do
                echo "== compute-sanitizer $tool $name"
                timeout "${SANITIZE_SECS:-120}" compute-sanitizer --tool "$tool" --error-exitcode 86 \
                    "$t" --test-threads=1 >"$out/sanitize-$tool-$name.log" 2>&1
                rc=$?
                case "$rc" in
                    0) echo "clean" ;;
                    124) echo "stopped at ${SANITIZE_SECS:-120} s (not a failure)" ;;
                    *) status=1; echo "FAILED ($rc): see $out/sanitize-$tool-$name.log" ;;
                esac
                grep -E "ERROR SUMMARY|Invalid|hazard" "$out/sanitize-$tool-$name.log" | head -5
            done
        done
    else
        echo "compute-sanitizer not found: sanitize skipped"
    fi
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
