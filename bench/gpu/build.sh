#!/usr/bin/env bash
# Builds, on a machine with the Rust toolchain, everything the GPU host runs (it has none): the scinterp
# binary, every GPU test binary (engine/tests/cuda_*.rs, tests/cuda_*.rs, the kernels crate's unit tests)
# and every CUDA criterion bench (bench/benches/cuda_*.rs), optimised and stripped (profile `gpu`), into
# bench/gpu/bin/ (git-ignored). Then carry that folder to the GPU host and run bench/gpu/run.sh there:
#
#   bench/gpu/build.sh                 # here
#   run: carry ["bench/gpu/bin"], command "bash bench/gpu/run.sh"   # on the GPU host
#
# The kernels are compiled by NVRTC 13.0 at build time and embedded as sm_90 CUBIN + compute_90 PTX, so the
# GPU host needs only the driver (and libcublasLt for the cuBLASLt GEMMs; without it the in-house GEMM
# runs). This script therefore refuses to build without NVRTC: run `bash .ci/run` once (it installs the
# NVRTC 13.0 wheels into .ci/cuda) or set SCINTERP_NVRTC_LIB.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

if [[ -z "${SCINTERP_NVRTC_LIB:-}" && -e .ci/cuda/nvidia/cu13/lib/libnvrtc.so.13 ]]; then
    export SCINTERP_NVRTC_LIB="$ROOT/.ci/cuda/nvidia/cu13/lib"
fi
if [[ -z "${SCINTERP_NVRTC_LIB:-}" ]]; then
    echo "error: no NVRTC 13.0: run 'bash .ci/run' once (it installs it into .ci/cuda) or set SCINTERP_NVRTC_LIB" >&2
    exit 1
fi
export LD_LIBRARY_PATH="$SCINTERP_NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

out="$ROOT/bench/gpu/bin"
rm -rf "$out"
mkdir -p "$out"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

benches=()
for f in bench/benches/cuda_*.rs; do benches+=(--bench "$(basename "$f" .rs)"); done

# One cargo call per package (cargo would look for every --test in every -p given).
build_tests() {
    cargo test --profile gpu --no-run --message-format=json-render-diagnostics "$@" >>"$log"
}
build_tests -p scinterp-kernels --lib
engine_tests=(); for f in engine/tests/cuda_*.rs; do engine_tests+=(--test "$(basename "$f" .rs)"); done
build_tests -p scinterp-engine "${engine_tests[@]}"
root_tests=(); for f in tests/cuda_*.rs; do root_tests+=(--test "$(basename "$f" .rs)"); done
build_tests -p scinterp "${root_tests[@]}"
cargo bench --profile gpu --no-run --message-format=json-render-diagnostics -p scinterp-bench "${benches[@]}" >>"$log"
cargo build --profile gpu --bin scinterp --message-format=json-render-diagnostics >>"$log"

# Copy every executable cargo reported, named by kind and target: test-<name>, bench-<name>, scinterp.
python3 - "$log" "$out" <<'PY'
import json, shutil, sys
log, out = sys.argv[1], sys.argv[2]
for line in open(log):
    try:
        m = json.loads(line)
    except json.JSONDecodeError:
        continue
    exe = m.get("executable")
    if m.get("reason") != "compiler-artifact" or not exe:
        continue
    kind, name = m["target"]["kind"][0], m["target"]["name"]
    dest = "scinterp" if kind == "bin" else f"{'bench' if kind == 'bench' else 'test'}-{name}"
    if kind == "lib":
        dest = f"test-{name}-lib"
    shutil.copy2(exe, f"{out}/{dest}")
    print(f"  {dest}")
PY
# One gzip bundle (about a third of the size): the device tool carries at most 64 MiB. run.sh unpacks it.
tar -C "$out" -czf "$ROOT/bench/gpu/bundle.tar.gz" .
rm -rf "$out"
mkdir -p "$out"
mv "$ROOT/bench/gpu/bundle.tar.gz" "$out/"
du -sh "$out/bundle.tar.gz"
size=$(du -sm "$out" | cut -f1)
if (( size > 60 )); then
    echo "warning: bench/gpu/bin is ${size} MiB; the device tool carries at most 64 MiB in all" >&2
fi
