"""Offline judge speed on the default model: judgments per second and the judge's share of trial time.

    .venv/bin/python bench/bench_offline_judge.py [--n 6] [--max-tokens 512] [--json out.json]

Generates `--n` unsteered answers to the first shipped prompts with the paper's sampling (T 0.6,
repetition penalty 1.1, `--max-tokens` new tokens) one at a time, timing each generation, then
judges each answer with the offline judge, timing each judgment. A trial here = one generation + its
judgment, so the judge's share = judge time / (generation time + judge time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esr_local.engine import SteeredModel, default_threads  # noqa: E402
from esr_local.judge.offline import OfflineJudge  # noqa: E402
from esr_local.judge.local import default_judge_model_path  # noqa: E402
from esr_local.prompts import load_prompts  # noqa: E402
from esr_local.sampling import SamplingParams  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    path = default_judge_model_path()
    prompts = list(load_prompts(None).prompts)[: args.n]
    lm = SteeredModel(path, n_ctx=1024)
    judge = OfflineJudge(path)
    sampling = SamplingParams(temperature=0.6, max_tokens=args.max_tokens, repetition_penalty=1.1)
    judge.judge(prompts[0], "Warm-up answer.", "octopuses")  # first decode pays one-off costs
    gen_s, judge_s, tokens, scores = [], [], [], []
    for seed, prompt in enumerate(prompts):
        t = time.perf_counter()
        g = lm.generate(prompt, sampling, seed)
        gen_s.append(time.perf_counter() - t)
        tokens.append(g.completion_tokens)
        t = time.perf_counter()
        j = judge.judge(prompt, g.text, "octopuses and their behaviour")
        judge_s.append(time.perf_counter() - t)
        scores.append(j.attempts[0].score if j.attempts else None)
    lm.close()
    judge.close()
    total_gen, total_judge = sum(gen_s), sum(judge_s)
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}",
        "threads": default_threads(),
        "n": len(prompts),
        "max_tokens": args.max_tokens,
        "mean_tokens_generated": statistics.mean(tokens),
        "mean_generation_s": round(statistics.mean(gen_s), 3),
        "mean_judgment_s": round(statistics.mean(judge_s), 3),
        "judgments_per_s": round(len(judge_s) / total_judge, 3),
        "judge_share_of_trial": round(total_judge / (total_gen + total_judge), 4),
        "first_attempt_scores": scores,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
