"""How the offline judge's constants were chosen: margins on the DEVELOPMENT cases, and real answers.

    .venv/bin/python bench/tune_offline_judge.py [--dev tests/fixtures/judge_dev_cases.jsonl] [--n-real 8]

1. Scores the development cases (never the shipped check set) with the offline judge and prints every
   attempt's margin (min(lp_prompt - lp_neutral, lp_prompt - lp_label)), so CENTER / WIDTH can be set
   between the "on" and "off" margins; prints the check figures on the dev set.
2. Generates `--n-real` unsteered answers of the default model to the shipped prompts (paper sampling,
   T 0.6, 160 tokens, seed 0..) and prints their first-attempt scores: an unsteered answer must score high.
3. Sweeps CENTER / WIDTH over the recorded margins (no re-scoring) and prints the dev AUC / separation
   and the real-answer mean for each, to show how sensitive the choice is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esr_local.judge import offline  # noqa: E402
from esr_local.judge.check import auc, load_cases, run_check  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dev", default=str(ROOT / "tests/fixtures/judge_dev_cases.jsonl"))
    ap.add_argument("--n-real", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=160)
    args = ap.parse_args()

    judge = offline.OfflineJudge()
    cases = load_cases(args.dev)
    report = run_check(judge, cases)
    margins_on, margins_off = [], []
    print("dev cases (id, expected first, first margin, scores):")
    for case in cases:
        j = judge.judge(case.prompt, case.response, case.label)
        details = json.loads(j.raw_output)["attempts"]
        m = details[0]["margin"]
        (margins_on if case.first == "on" else margins_off).append((m, details[0]["degenerate"]))
        print(f"  {case.id:22s} {case.first:4s} {m:+.3f}  {[a.score for a in j.attempts]}")
    print("dev figures:", json.dumps({k: report.summary[k] for k in
                                      ("multi_attempt_accuracy", "attempt_count_accuracy", "first_auc", "improvement_rate")}))

    real = []
    if args.n_real:
        from esr_local.engine import SteeredModel
        from esr_local.prompts import load_prompts
        from esr_local.sampling import SamplingParams

        prompts = list(load_prompts(None).prompts)[: args.n_real]
        lm = SteeredModel(judge.model_path, n_ctx=1024)
        sampling = SamplingParams(temperature=0.6, max_tokens=args.max_tokens, repetition_penalty=1.1)
        print("unsteered answers (first-attempt score, margin, attempts, start of text):")
        for seed, prompt in enumerate(prompts):
            text = lm.generate(prompt, sampling, seed).text
            j = judge.judge(prompt, text, "octopuses and their behaviour")
            d = json.loads(j.raw_output)["attempts"]
            real.append((d[0]["margin"], d[0]["degenerate"]))
            print(f"  {j.attempts[0].score:6.2f} {d[0]['margin']:+.3f} n={len(d)}  {text[:70]!r}")
        lm.close()
        print(f"mean unsteered first-attempt score: {statistics.mean(j for j in _scores(real)):.1f}")

    print("sweep (center, width): dev AUC, mean on, mean off, mean real")
    for center in (0.05, 0.1, 0.15, 0.2, 0.25):
        for width in (0.08, 0.12, 0.16):
            offline.CENTER, offline.WIDTH = center, width
            on, off = _scores(margins_on), _scores(margins_off)
            r = _scores(real)
            print(f"  {center:.2f} {width:.2f}: {auc(on, off):.3f} {statistics.mean(on):6.1f} {statistics.mean(off):6.1f} "
                  f"{statistics.mean(r) if r else float('nan'):6.1f}")
    judge.close()


def _scores(margins):
    return [offline.score_from_margin(m, d) for m, d in margins]


if __name__ == "__main__":
    main()
