"""Benchmark: all-latent encoding of a 65,536-latent Goodfire-layout SAE, and residual readout speed.

Part 1 writes (once) a torch.save-compatible file shaped like Goodfire's Llama-3.1-8B SAE (d_model 4096,
d_sae 65536, float32; a real 1 GiB encoder with a deterministic pattern, the decoder left as a sparse
hole since encoding never reads it), then in a FRESH Python process opens it and computes every latent's
max activation over 38 "prompts" of 36 tokens each (random residuals of realistic scale), the relevance
filter's workload, streaming encoder blocks. Reports wall time and peak RSS (VmHWM). The file is written by
a separate child so the measuring process stays small.

Part 2 reads the residual at layer 12 of the embedded SmolLM2-135M-Instruct for the 38 shipped prompts
(user turn, chat template) through the eval-callback reader and reports tokens/s.

    python bench/bench_encode.py                       # temp file in /tmp, deleted afterwards
    python bench/bench_encode.py --path /tmp/gf-enc.pth --keep

Targets (part 1): < 120 s and < 1 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TARGET_S, TARGET_MB = 120.0, 1024.0
D_MODEL, D_SAE, N_PROMPTS, N_TOKENS = 4096, 65536, 38, 36  # 36: the shipped prompts' mean chat-templated length


def write_file(path: Path, d_model: int, d_sae: int) -> None:
    from esr_local.saes.torch_zip import LazyTensor, write_state_dict

    block = max(1, (16 << 20) // (4 * d_model))

    def enc_chunks():
        cols = np.arange(d_model, dtype=np.int64)[None, :]
        for r0 in range(0, d_sae, block):
            rows = np.arange(r0, min(r0 + block, d_sae), dtype=np.int64)[:, None]
            yield ((((rows * 131 + cols * 7) % 1021) / 1021.0 - 0.5) * 0.05).astype(np.float32)

    write_state_dict(path, {
        "encoder_linear.weight": LazyTensor((d_sae, d_model), chunks=enc_chunks),
        "encoder_linear.bias": np.full(d_sae, -2.0, np.float32),
        "decoder_linear.weight": LazyTensor((d_model, d_sae)),
        "decoder_linear.bias": np.zeros(d_model, np.float32),
    })


def measure_encode(path: str, block_size: int) -> dict:
    """Runs in a fresh process: open the SAE and compute [38, 65536] maxima."""
    from esr_local.activations import max_over_texts
    from esr_local.saes import load_sae

    rng = np.random.default_rng(0)
    residuals = [(rng.standard_normal((N_TOKENS, D_MODEL)) * 2.0).astype(np.float32) for _ in range(N_PROMPTS)]
    import resource

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    sae = load_sae(path)
    maxima = max_over_texts(sae, residuals, block_size=block_size)
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    load = open("/proc/loadavg").read().split()[0]
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "load_average_1m": float(load),
            "peak_rss_mb": round(hwm / 1024, 1), "shape": list(maxima.shape), "tokens": N_PROMPTS * N_TOKENS,
            "active_fraction": round(float((maxima > 0).mean()), 4), "block_size": block_size}


def measure_readout() -> dict:
    from esr_local.engine import SteeredModel
    from esr_local.model_files import resolve_model
    from esr_local.prompts import load_prompts
    from esr_local.text_readout import read_residuals

    prompts = load_prompts().prompts
    model = SteeredModel(resolve_model(None).path, n_ctx=512)
    try:
        read_residuals(model, prompts[:2], 12)  # warm-up
        t0 = time.perf_counter()
        res = read_residuals(model, prompts, 12)
        seconds = time.perf_counter() - t0
    finally:
        model.close()
    n = sum(len(r.token_ids) for r in res)
    return {"texts": len(res), "tokens": n, "seconds": round(seconds, 2), "tokens_per_s": round(n / seconds, 1),
            "threads": model.n_threads, "load_average_1m": float(open("/proc/loadavg").read().split()[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--skip-readout", action="store_true")
    ap.add_argument("--child", choices=["write", "encode"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "write":
        write_file(args.path, D_MODEL, D_SAE)
        return
    if args.child == "encode":
        print(json.dumps(measure_encode(str(args.path), args.block_size)))
        return

    path = args.path or Path(tempfile.mkdtemp(prefix="esr-bench-enc-", dir="/tmp")) / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    me = [sys.executable, str(Path(__file__).resolve())]
    try:
        if not path.exists():
            t0 = time.perf_counter()
            subprocess.run(me + ["--child", "write", "--path", str(path)], check=True)
            print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        out = subprocess.run(me + ["--child", "encode", "--path", str(path), "--block-size", str(args.block_size)],
                             check=True, capture_output=True, text=True)
        enc = json.loads(out.stdout)
        enc["ok"] = enc["seconds"] < TARGET_S and enc["peak_rss_mb"] < TARGET_MB
        result = {"encode_all_latents": enc, "cpu_count": os.cpu_count(),
                  "threads_env": os.environ.get("ESR_LOCAL_THREADS")}
        if not args.skip_readout:
            result["readout"] = measure_readout()
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep and args.path is None:
            path.unlink(missing_ok=True)
            path.parent.rmdir()


if __name__ == "__main__":
    main()
