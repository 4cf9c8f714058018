"""Paired comparison of two conditions whose trials share (latent, prompt, replicate, seed): an ablation
or prefill run against the run it replays. Each pair's multi-attempt and ESR outcomes (paper rules,
`metrics.trial_outcome`) are differenced; the interval is the normal one on the mean paired difference."""

from __future__ import annotations

import math
import statistics

from .errors import UserInputError
from .metrics import trial_outcome, trial_scores_from_row

Z95 = 1.959963984540054


def _by_key(store, run_id: str, condition: str | None, judge_key: str | None) -> tuple[str, dict]:
    run = store.get_run(run_id)
    key = judge_key or store.run_judge_key(run["id"])
    trials = list(store.trials(run["id"], judge_key=key))
    conds = sorted({t["condition"] for t in trials})
    if condition is None:
        if len(conds) != 1:
            raise UserInputError(f"run {run['id']} has conditions {', '.join(conds)}; name one as RUN:CONDITION")
        condition = conds[0]
    out = {}
    for t in trials:
        if t["condition"] == condition:
            out[(t["latent"], t["prompt_index"], t["replicate"], t["seed"])] = t
    if not out:
        raise UserInputError(f"run {run['id']} has no trials under condition {condition!r} (it has {', '.join(conds)})")
    return condition, out


def _diff(xs: list[int], ys: list[int]) -> dict:
    d = [y - x for x, y in zip(xs, ys)]
    n = len(d)
    mean = sum(d) / n
    se = statistics.stdev(d) / math.sqrt(n) if n > 1 else None
    return {"a_rate": 100 * sum(xs) / n, "b_rate": 100 * sum(ys) / n, "difference": 100 * mean,
            "se": None if se is None else 100 * se,
            "ci95": None if se is None else [100 * (mean - Z95 * se), 100 * (mean + Z95 * se)]}


def paired_comparison(store, run_a: str, run_b: str, *, condition_a: str | None = None,
                      condition_b: str | None = None, judge_key: str | None = None) -> dict:
    """B minus A in multi-attempt and ESR rates (percentage points) over the pairs both judged."""
    ca, a = _by_key(store, run_a, condition_a, judge_key)
    cb, b = _by_key(store, run_b, condition_b, judge_key)
    keys = sorted(set(a) & set(b))
    pairs = []
    for k in keys:
        oa, ob = (trial_outcome(*trial_scores_from_row(t[k])) for t in (a, b))
        if oa.counted and ob.counted:
            pairs.append((oa, ob))
    if not pairs:
        raise UserInputError(f"no trial of {run_a}:{ca} pairs with a judged trial of {run_b}:{cb} "
                             "(same latent, prompt, replicate and seed); compare a run with its replay")
    multi = _diff([int(p[0].is_multi_attempt) for p in pairs], [int(p[1].is_multi_attempt) for p in pairs])
    esr = _diff([int(p[0].is_improved) for p in pairs], [int(p[1].is_improved) for p in pairs])
    return {"a": {"run": store.get_run(run_a)["id"], "condition": ca}, "b": {"run": store.get_run(run_b)["id"], "condition": cb},
            "pairs": len(pairs), "unpaired": len(set(a) ^ set(b)) + (len(keys) - len(pairs)),
            "multi_attempt": multi, "esr": esr, "interval": "normal, on the mean paired difference"}


def paired_cli(store, runs, *, judge=None, exclude_flagged=False, as_json=False) -> str:
    """`metrics --paired RUN_A[:COND] RUN_B[:COND]` as text or JSON."""
    import json

    if len(runs) != 2:
        raise UserInputError("--paired compares exactly two runs: RUN_A[:CONDITION] RUN_B[:CONDITION]")
    if judge or exclude_flagged:
        raise UserInputError("--paired counts each run's own judge over every pair; drop --judge/--exclude-flagged")
    (ra, _, ca), (rb, _, cb) = (r.partition(":") for r in runs)
    res = paired_comparison(store, ra, rb, condition_a=ca or None, condition_b=cb or None)
    if as_json:
        return json.dumps(res, indent=2)

    def line(name, d):
        ci = "-" if d["ci95"] is None else f"[{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"
        return f"  {name}: {d['a_rate']:.1f}% -> {d['b_rate']:.1f}%  difference {d['difference']:+.1f} pts  95% CI {ci}"

    return "\n".join([f"{res['a']['run']}:{res['a']['condition']} vs {res['b']['run']}:{res['b']['condition']}: "
                      f"{res['pairs']} pairs ({res['unpaired']} unpaired)",
                      line("multi-attempt", res["multi_attempt"]), line("ESR", res["esr"])])
