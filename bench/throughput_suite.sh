#!/usr/bin/env bash
# Every throughput figure of BENCHMARKS.md in one sitting, one process at a time (~15-20 min on 2 idle cores).
#
#   bash bench/throughput_suite.sh [OUTDIR]          (default /tmp/esr-throughput; HF_PYTHON=... for transformers)
#
# HF_PYTHON: a python with torch + transformers (`pip install .[bench]`); without it the transformers side is
# skipped. PARTS: which parts to run (default "engines bandwidth overlap inprocess trials decode").
# THREADS: llama.cpp/torch threads for every part (default: all cores). On a machine other jobs load, use 1:
# llama.cpp's spinning worker threads slow down by 10x or more when they have to share cores.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-/tmp/esr-throughput}"
PY="${PY:-$ROOT/.venv/bin/python}"
HF_PYTHON="${HF_PYTHON:-}"
PARTS="${PARTS:-engines bandwidth overlap inprocess trials decode}"
THREADS="${THREADS:-$(nproc)}"
export ESR_LOCAL_THREADS="$THREADS"
mkdir -p "$OUT"
cd "$ROOT"
say() { echo "== $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg): $*" | tee -a "$OUT/suite.log"; }
engines="esr,llama"
if [[ -n "$HF_PYTHON" ]] && "$HF_PYTHON" -c "import torch, transformers" 2>/dev/null; then engines="esr,llama,hf"; fi
for part in $PARTS; do
  case "$part" in
    engines)
      for m in smollm2 gemma; do
        say "bench_engines $m ($engines)"
        "$PY" bench/bench_engines.py --model "$m" --threads "$THREADS" --runs 3 --engines "$engines" ${HF_PYTHON:+--hf-python "$HF_PYTHON"} \
          --json "$OUT/engines_$m.json" 2>&1 | tee "$OUT/engines_$m.txt"
      done ;;
    bandwidth)
      for m in smollm2 gemma; do
        say "bench_bandwidth $m"
        "$PY" bench/bench_bandwidth.py --model "$m" --threads "$THREADS" --profile --json "$OUT/bandwidth_$m.json" 2>&1 | tee "$OUT/bandwidth_$m.txt"
      done ;;
    overlap)
      say "bench_trials overlap"
      "$PY" bench/bench_trials.py --suite overlap --threads "$THREADS" --json "$OUT/overlap.json" 2>&1 | tee "$OUT/overlap.txt" ;;
    inprocess)
      say "bench_inprocess_judge"
      "$PY" bench/bench_inprocess_judge.py --threads "$THREADS" --json "$OUT/inprocess.json" 2>&1 | tee "$OUT/inprocess.txt" ;;
    trials)
      say "bench_trials paper"
      "$PY" bench/bench_trials.py --suite paper --threads "$THREADS" --json "$OUT/trials.json" 2>&1 | tee "$OUT/trials.txt" ;;
    decode)
      say "bench_decode (steering overhead)"
      "$PY" bench/bench_decode.py --pairs 10 --parallel --json "$OUT/decode.json" 2>&1 | tee "$OUT/decode.txt" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
say "done"
