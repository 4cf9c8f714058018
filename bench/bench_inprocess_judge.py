"""Benchmark: scheduling an in-process judge (offline or local llama.cpp) next to generation on the same cores.

    .venv/bin/python bench/bench_inprocess_judge.py [--judge offline] [--trials 8] [--max-tokens 256]
        [--threads 2] [--json OUT]

Each mode runs in its own fresh process, one after another, on the same trials (2 latents' worth of
prompts, a fixed random steering vector, paper sampling, groups of 2 parallel sequences):
- `inline`: generation with all `--threads`, then the group's judgments with all `--threads`, serially
  (what the runner does for in-process judges: `esr_local.runs.judge_pool`, workers = 0);
- `split`:  generation with half the threads while the previous group is judged, on a worker thread, with
  the other half (llama.cpp releases the GIL), so the two overlap without oversubscribing;
- `oversubscribed`: both with all `--threads` at once (what a naive overlap would do).
Reported: wall seconds for generating + judging all trials, and the judge's mean latency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = ["Explain how to change a bike tire.", "How do you boil an egg?", "Explain how to plant a tree.",
           "How do you tie a bowline knot?", "Explain how to make a paper airplane.", "How do you clean a cast iron pan?",
           "Explain how to read a map.", "How do you sew a button?"]


def child(mode: str, judge_spec: str, trials: int, max_tokens: int, threads: int) -> dict:
    import numpy as np

    from esr_local.engine import SamplingParams, SteeredModel
    from esr_local.judge import make_judge
    from esr_local.runs.judge_pool import JudgePool

    gen_threads = max(1, threads // 2) if mode == "split" else threads
    judge_threads = max(1, threads - gen_threads) if mode == "split" else threads
    lm = SteeredModel(Path(__import__("esr_local.judge.local", fromlist=["x"]).default_judge_model_path()),
                      n_ctx=1024, n_seq=2, n_threads=gen_threads)
    judge = make_judge(judge_spec, n_threads=judge_threads)
    vec = np.random.default_rng(0).standard_normal(lm.n_embd).astype(np.float32)
    lm.set_directions({10: vec / np.linalg.norm(vec) * 8})
    sp = SamplingParams(temperature=0.6, max_tokens=max_tokens, repetition_penalty=1.1)
    prompts = (PROMPTS * (trials // len(PROMPTS) + 1))[:trials]
    pool = JudgePool(workers=0 if mode == "inline" else 1)
    lat: list[float] = []
    t = time.perf_counter()
    for i in range(0, trials, 2):
        group = prompts[i:i + 2]
        gens = lm.generate_many(group, sp, list(range(i, i + len(group))))
        calls = [lambda p=p, g=g: judge.judge(p, g.text, "the ocean") for p, g in zip(group, gens)]
        pool.submit_group(calls, lambda js: lat.extend(j.latency_ms for j in js))
    pool.drain()
    wall = time.perf_counter() - t
    pool.close()
    judge.close()
    lm.close()
    return {"mode": mode, "gen_threads": gen_threads, "judge_threads": judge_threads, "wall_s": wall,
            "judge_ms_mean": sum(lat) / len(lat), "trials": trials}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--judge", default="offline")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--modes", default="inline,split,oversubscribed")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.judge, a.trials, a.max_tokens, a.threads)))
        return
    print(f"{a.judge} judge, {a.trials} trials, up to {a.max_tokens} tokens, {a.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| mode | generation threads | judge threads | wall s | judge ms (mean) |")
    print("|---|---|---|---|---|")
    results = []
    for mode in a.modes.split(","):
        cmd = [sys.executable, __file__, "--child", mode, "--judge", a.judge, "--trials", str(a.trials),
               "--max-tokens", str(a.max_tokens), "--threads", str(a.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-2000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"| {mode} | {r['gen_threads']} | {r['judge_threads']} | {r['wall_s']:.1f} | {r['judge_ms_mean']:.0f} |",
              flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
