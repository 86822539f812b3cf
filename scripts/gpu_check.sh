#!/usr/bin/env bash
# GPU verification of wsss-fast in one call (issue 15), for a CUDA host with
# torch, nvcc and compute-sanitizer installed and no network: nothing is
# downloaded, nothing is pip-installed.
#
#   scripts/gpu_check.sh [--out DIR]            phases 1-5 (about 6 minutes on an H100/H200)
#   scripts/gpu_check.sh --bench [--out DIR]    phases 1, 2 and 6 (6: about 4 minutes)
#   scripts/gpu_check.sh --all [--out DIR]      phases 1-6
#   scripts/gpu_check.sh --dry-run              phases 3-4's harness on the CPU (no GPU)
#
#   1 environment   nvidia-smi, python, torch / torch CUDA / nvcc / compute-sanitizer
#                   versions; fails when torch has no CUDA or its CUDA major version
#                   differs from nvcc's
#   2 build         setup.py build_ext --inplace (TORCH_CUDA_ARCH_LIST default 9.0,
#                   MAX_JOBS default: the cores); fails unless backend_info()["cuda"]
#   3 cuda tests    every pytest test marked cuda, with WSSS_REQUIRE_CUDA=1: a cuda
#                   test that skips counts as failed (tests/conftest.py)
#   4 regressions   scripts/gpu_regressions.py --device cuda
#   5 sanitizer     compute-sanitizer memcheck, racecheck and synccheck (in parallel)
#                   on scripts/gpu_regressions.py --tiny, our kernels only
#   6 benchmarks    every benchmark with --device cuda, within a 240 s budget; writes
#                   benchmarks/results/*-cuda.json (the GPU named inside)
#
# Each phase prints its own seconds and has a time limit; the script goes on
# after a failed phase (except 1 and 2) and exits 1 if any phase failed.
# --out DIR: the log (gpu_check.log) and the benchmark results are copied there.
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST, MAX_JOBS,
# COMPUTE_SANITIZER (default: on PATH, else $CUDA_HOME/bin), BENCH_BUDGET (s, 240).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
MODE=check
OUT=""
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --bench) MODE=bench ;;
    --all) MODE=all ;;
    --dry-run) MODE=dry ;;
    --out) [ $# -ge 2 ] || { echo "gpu_check: --out needs a folder" >&2; exit 2; }
           OUT=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$OUT" ]; then
  mkdir -p "$OUT" || exit 2
  exec > >(tee -a "$OUT/gpu_check.log") 2>&1
fi

FAILED=()
START=$SECONDS

# phase NAME LIMIT_S FUNCTION: runs FUNCTION (defined below, exported) in a
# child shell with a time limit (timeout ends its whole process group), prints
# its seconds.
phase() {
  local name=$1 limit=$2 fn=$3
  echo
  echo "=== phase $name (limit ${limit} s)"
  local start=$SECONDS rc
  timeout --kill-after=10 "$limit" bash -c "$fn"
  rc=$?
  local took=$((SECONDS - start))
  if [ $rc -eq 0 ]; then
    echo "=== phase $name: ok in ${took} s"
  else
    [ $rc -eq 124 ] && echo "=== phase $name: TIMED OUT after ${limit} s"
    echo "=== phase $name: FAILED (exit $rc) in ${took} s"
    FAILED+=("$name")
  fi
  return $rc
}

finish() {
  echo
  echo "=== total $((SECONDS - START)) s"
  if [ -n "$OUT" ] && compgen -G "benchmarks/results/*-cuda.json" >/dev/null; then
    cp benchmarks/results/*-cuda.json "$OUT"/
  fi
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo "gpu_check: FAILED phases: ${FAILED[*]}"
    exit 1
  fi
  echo "gpu_check: all phases passed"
  exit 0
}

# ------------------------------------------------------------------ phases

environment() {
  nvidia-smi || { echo "nvidia-smi failed: no NVIDIA driver or GPU here"; return 1; }
  echo "cores: $(nproc)"
  "$PYTHON" - <<'EOF' || return 1
import platform, re, shutil, subprocess, sys
import torch
print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, built with CUDA {torch.version.cuda}, "
      f"cuda available: {torch.cuda.is_available()}")
if torch.version.cuda is None:
    sys.exit("torch is a CPU build: the CUDA kernels need a CUDA build of torch")
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
print(f"device: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}")
from torch.utils.cpp_extension import CUDA_HOME
nvcc = shutil.which("nvcc") or (CUDA_HOME and f"{CUDA_HOME}/bin/nvcc")
if not nvcc:
    sys.exit("nvcc not found on PATH or in CUDA_HOME: the CUDA kernels cannot be built")
text = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
release = re.search(r"release (\d+)\.(\d+)", text)
print(f"nvcc: {nvcc}: {release.group(0) if release else text.strip()}")
if release is None or release.group(1) != torch.version.cuda.split(".")[0]:
    sys.exit(f"CUDA major version mismatch: torch was built with CUDA {torch.version.cuda}, "
             f"nvcc is {release.group(0) if release else 'unknown'}: use an nvcc of the same "
             "major version (CUDA_HOME) or a torch built for this nvcc")
EOF
  sanitizer >/dev/null && "$(sanitizer)" --version | tail -1 || echo "compute-sanitizer: not found (phase 5 will fail)"
}

sanitizer() {
  if [ -n "${COMPUTE_SANITIZER:-}" ]; then echo "$COMPUTE_SANITIZER"; return; fi
  command -v compute-sanitizer && return
  local home=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
  [ -x "$home/bin/compute-sanitizer" ] && echo "$home/bin/compute-sanitizer" && return
  return 1
}

build() {
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  mkdir -p build
  "$PYTHON" setup.py -q build_ext --inplace > build/gpu_check_build.log 2>&1 || {
    tail -60 build/gpu_check_build.log; return 1; }
  "$PYTHON" - <<'EOF'
import json, sys
import wsss_fast
info = wsss_fast.backend_info()
print(json.dumps(info))
if not info["cuda"]:
    sys.exit("the extension has no CUDA kernels: backend_info()['cuda'] is false")
EOF
}

cuda_tests() {
  WSSS_REQUIRE_CUDA=1 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests
}

regressions() {
  "$PYTHON" scripts/gpu_regressions.py --device cuda
}

run_sanitizers() {
  local san
  san=$(sanitizer) || { echo "compute-sanitizer not found (set COMPUTE_SANITIZER)"; return 1; }
  local seed=$RANDOM tool rc=0 logs
  logs=$(mktemp -d)
  declare -A pids
  for tool in memcheck racecheck synccheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$san" --tool "$tool" --kernel-name kns=wsss_fast \
      --error-exitcode 1 --print-limit 20 \
      "$PYTHON" scripts/gpu_regressions.py --device cuda --tiny --seed "$seed" \
      > "$logs/$tool.log" 2>&1 &
    pids[$tool]=$!
  done
  for tool in memcheck racecheck synccheck; do
    if wait "${pids[$tool]}"; then
      echo "--- $tool: ok"
    else
      echo "--- $tool: FAILED"
      rc=1
    fi
    tail -40 "$logs/$tool.log"
  done
  rm -rf "$logs"
  return $rc
}

# bench NAME LIMIT COMMAND...: one benchmark within what is left of BENCH_BUDGET.
bench() {
  local name=$1 limit=$2 left
  shift 2
  left=$((BENCH_END - SECONDS))
  if [ "$left" -lt 15 ]; then
    echo "--- $name: skipped, the ${BENCH_BUDGET} s budget of phase 6 is spent"
    BENCH_FAILED=1
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "--- $name (limit ${limit} s)"
  local start=$SECONDS
  if timeout --kill-after=10 "$limit" "$@"; then
    echo "--- $name: ok in $((SECONDS - start)) s"
  else
    echo "--- $name: FAILED or timed out after $((SECONDS - start)) s"
    BENCH_FAILED=1
  fi
}

benchmarks() {
  BENCH_BUDGET=${BENCH_BUDGET:-240}
  BENCH_END=$((SECONDS + BENCH_BUDGET))
  BENCH_FAILED=0
  bench drs 100 "$PYTHON" benchmarks/bench_drs.py --device cuda
  bench random_walk 50 "$PYTHON" benchmarks/bench_random_walk.py --device cuda
  bench kmeans 60 "$PYTHON" benchmarks/bench_kmeans.py --device cuda --dims 4096 512
  bench cam 40 "$PYTHON" benchmarks/bench_cam.py --device cuda --amp
  if "$PYTHON" -c "import pydensecrf.densecrf" 2>/dev/null; then
    bench crf 40 "$PYTHON" benchmarks/bench_crf.py --device cuda --n 32
    bench pipeline 60 "$PYTHON" benchmarks/bench_pipeline.py --device cuda --n 8
  else
    echo "--- crf, pipeline: skipped, pydensecrf is not installed on this host (the dense CRF)"
  fi
  ls -l benchmarks/results/*-cuda.json 2>/dev/null
  return $BENCH_FAILED
}

dry_cuda_tests() {
  # The selection phase 3 runs: every cuda test must collect (imports, parameters).
  local out count
  out=$("$PYTHON" -m pytest -q -p no:cacheprovider -m cuda --collect-only tests 2>&1) || {
    echo "$out" | tail -30; return 1; }
  count=$(echo "$out" | grep -c '::')
  echo "$count cuda tests collected (phase 3 runs them on a GPU host)"
  [ "$count" -gt 0 ]
}

dry_regressions() {
  "$PYTHON" scripts/gpu_regressions.py --device cpu && \
    "$PYTHON" scripts/gpu_regressions.py --device cpu --tiny
}

# ------------------------------------------------------------------- main

export PYTHON
export -f environment sanitizer build cuda_tests regressions run_sanitizers bench benchmarks \
  dry_cuda_tests dry_regressions

if [ "$MODE" = dry ]; then
  phase "3 (dry run: collect the cuda tests)" 120 dry_cuda_tests
  phase "4 (dry run: gpu_regressions.py on the CPU, full and --tiny)" 300 dry_regressions
  finish
fi
phase "1 environment" 60 environment || finish
phase "2 build" 240 build || finish
if [ "$MODE" != bench ]; then
  phase "3 cuda tests" 150 cuda_tests
  phase "4 regressions" 150 regressions
  phase "5 compute-sanitizer" 180 run_sanitizers
fi
if [ "$MODE" != check ]; then
  phase "6 benchmarks" 270 benchmarks
fi
finish
