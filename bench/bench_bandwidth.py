"""Benchmark: the hardware bound of decoding, and how close esr-local's loop comes to it.

    .venv/bin/python bench/bench_bandwidth.py [--model smollm2|gemma|PATH.gguf] [--threads 2] [--tokens 128]
        [--runs 5] [--mib 1024] [--profile] [--json OUT]

1. Read bandwidth: numpy over a buffer far larger than the L3 cache (default 1 GiB), best of 5:
   `sum` (read only) and `copyto` (read + write, counted as bytes read + bytes written), on 1 thread and on
   `--threads` threads (each summing its own slice; numpy releases the GIL).
2. Bytes read per decoded token: every weight tensor of the GGUF at its stored (quantized) size, except the
   token embedding when a separate output head exists (then only one row of it is read per token). Models
   that tie the head to the embedding read the whole embedding matrix every token.
3. Bound = bandwidth / bytes per token (tok/s); fraction reached = esr-local's steered decode tok/s (median of
   `--runs` greedy generations of `--tokens` tokens) over the bound at `--threads` threads.
4. `--profile`: cProfile of one generation: where the per-token time goes outside llama_decode.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from bench_engines import PROMPT, RAW_PROMPT, SETTINGS, model_path, steering_vector


def _best(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bandwidth(mib: int, threads: int) -> dict:
    """GB/s (1e9 bytes/s) of numpy read (sum) and copy (read+write) on 1 and `threads` threads."""
    n = mib * 2**20 // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    out = {"buffer_mib": mib}
    out["read_1t_gbs"] = src.nbytes / _best(lambda: src.sum()) / 1e9
    out["copy_1t_gbs"] = 2 * src.nbytes / _best(lambda: np.copyto(dst, src)) / 1e9
    parts = np.array_split(np.arange(n), threads)
    slices = [slice(int(p[0]), int(p[-1]) + 1) for p in parts]

    def parallel(fn):
        ts = [threading.Thread(target=fn, args=(s,)) for s in slices]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    out[f"read_{threads}t_gbs"] = src.nbytes / _best(lambda: parallel(lambda s: src[s].sum())) / 1e9
    out[f"copy_{threads}t_gbs"] = 2 * src.nbytes / _best(lambda: parallel(lambda s: np.copyto(dst[s], src[s]))) / 1e9
    del src, dst
    return out


def bytes_per_token(path: Path) -> dict:
    """Weight bytes a decode step reads, from the GGUF's tensor table."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    sizes = {t.name: int(t.n_bytes) for t in r.tensors}
    tied = "output.weight" not in sizes
    total = sum(sizes.values())
    emb = sizes.get("token_embd.weight", 0)
    per_token = total if tied else total - emb
    return {"file_bytes": path.stat().st_size, "tensor_bytes": total, "embedding_bytes": emb, "tied_head": tied,
            "bytes_per_token": per_token}


def decode_speed(path: Path, threads: int, tokens: int, runs: int, layer: int, scale: float, profile: bool) -> dict:
    from esr_local.engine import SamplingParams, SteeredModel

    m = SteeredModel(path, n_ctx=1024, n_threads=threads)
    m.set_directions({layer: steering_vector(m.n_embd, scale)})
    text = PROMPT if m.chat_mode == "chat" else RAW_PROMPT
    sp = SamplingParams(temperature=0.0, max_tokens=tokens, repetition_penalty=1.0)
    m.generate(text, sp, 0)
    gens = [m.generate(text, sp, 0) for _ in range(runs)]
    speeds = [(len(g.token_ids) - 1) / (g.generation_ms / 1000) for g in gens]
    out = {"decode_tok_s": statistics.median(speeds), "decode_all": speeds, "tokens": len(gens[0].token_ids)}
    if profile:
        out["profile"] = time_split(m, text, sp)
        pr = cProfile.Profile()
        pr.enable()
        m.generate(text, sp, 0)
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(8)
        out["profile"]["cprofile_top"] = buf.getvalue()
    m.close()
    return out


def time_split(m, text: str, sp) -> dict:
    """One generation with llama_decode and llama_sampler_sample timed (wrappers on the llama_cpp module
    attributes the engine calls through; cProfile cannot see ctypes calls): the rest is our Python loop."""
    import llama_cpp

    spent = {"llama_decode": 0.0, "llama_sampler_sample": 0.0}
    originals = {name: getattr(llama_cpp, name) for name in spent}

    def timed(name):
        fn = originals[name]

        def wrapper(*args):
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    for name in spent:
        setattr(llama_cpp, name, timed(name))
    try:
        t = time.perf_counter()
        g = m.generate(text, sp, 0)
        wall = time.perf_counter() - t
    finally:
        for name, fn in originals.items():
            setattr(llama_cpp, name, fn)
    n = len(g.token_ids)
    other = wall - sum(spent.values())
    return {"tokens": n, "wall_s": wall, "llama_decode_s": spent["llama_decode"],
            "llama_sampler_sample_s": spent["llama_sampler_sample"], "python_and_other_s": other,
            "per_token_overhead_ms": other / max(1, n) * 1000,
            "sampler_ms_per_token": spent["llama_sampler_sample"] / max(1, n) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    preset = SETTINGS.get(a.model, SETTINGS["smollm2"])
    path = model_path(a.model)
    bw = bandwidth(a.mib, a.threads)
    bpt = bytes_per_token(path)
    dec = decode_speed(path, a.threads, a.tokens, a.runs, preset["layer"], preset["scale"], a.profile)
    t = a.threads
    bounds = {k.replace("_gbs", "_bound_tok_s"): v * 1e9 / bpt["bytes_per_token"] for k, v in bw.items() if k.endswith("_gbs")}
    frac = dec["decode_tok_s"] / bounds[f"read_{t}t_bound_tok_s"]
    res = {"meta": {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "threads": t, "model": str(path), "loadavg": os.getloadavg()},
           "bandwidth": bw, "bytes": bpt, "bounds": bounds, "decode": dec, "fraction_of_read_bound": frac}
    mb = bpt["bytes_per_token"] / 1e6
    print(f"{path.name}: {mb:.1f} MB read per token ({'head tied to the embedding' if bpt['tied_head'] else 'separate head'}); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"bandwidth GB/s: read 1t {bw['read_1t_gbs']:.1f}, read {t}t {bw[f'read_{t}t_gbs']:.1f}, "
          f"copy 1t {bw['copy_1t_gbs']:.1f}, copy {t}t {bw[f'copy_{t}t_gbs']:.1f}")
    print(f"bound at read {t}t: {bounds[f'read_{t}t_bound_tok_s']:.0f} tok/s; esr-local steered decode "
          f"{dec['decode_tok_s']:.1f} tok/s = {100 * frac:.0f}% of it ({dec['decode_tok_s'] * mb / 1000:.1f} GB/s effective)")
    if "profile" in dec:
        p = dec["profile"]
        print(f"one generation ({p['tokens']} tokens, {p['wall_s']:.3f} s): llama_decode {p['llama_decode_s']:.3f} s, "
              f"llama_sampler_sample {p['llama_sampler_sample_s']:.3f} s ({p['sampler_ms_per_token']:.3f} ms/token), "
              f"everything else (prompt formatting, our loop) {p['python_and_other_s']:.3f} s "
              f"({p['per_token_overhead_ms']:.3f} ms/token)")
        print(p["cprofile_top"])
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
