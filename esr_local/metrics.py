"""ESR metrics (the paper's rules), as pure functions over judged trials.

A trial counts only if it has no error (the trial, its latent and its judgment are all error-free)
and at least one attempt with a score. Null scores are dropped *before* attempts are counted. With
`s_1 .. s_m` the remaining scores in attempt order:

- multi-attempt: m > 1
- improved: m > 1 and s_m > s_1 (strict; middle attempts are ignored)

Rates are percentages. Undefined values (a rate over zero trials, a mean of nothing, the standard
error of a mean of fewer than two values) are None rather than 0, so an empty condition is never
mistaken for a measured 0%. The SQL views `trial_outcomes` and `run_metrics` (see store_schema.py)
implement the same rules and are tested against these functions.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .store import Store

# The output keys of `compute_metrics`, in display order (also the column order of the run_metrics view).
METRIC_KEYS: tuple[str, ...] = (
    "n",
    "multi_attempt_count",
    "improved_count",
    "multi_attempt_rate",
    "multi_attempt_rate_se",
    "esr_rate",
    "esr_rate_se",
    "improvement_rate",
    "improvement_rate_se",
    "mean_first_score",
    "mean_first_score_se",
    "mean_score_improvement",
    "mean_score_improvement_se",
)


class TrialScores(NamedTuple):
    """What the metrics need from one trial: attempt scores in order, and whether anything failed."""

    scores: Sequence[float | None]
    error: bool


class TrialOutcome(NamedTuple):
    """How one trial enters the metrics."""

    counted: bool
    n_scored_attempts: int
    first_score: float | None
    last_score: float | None
    is_multi_attempt: bool
    is_improved: bool


def trial_outcome(scores: Sequence[float | None], error: bool) -> TrialOutcome:
    """Classify one trial by the paper's rules (see the module docstring)."""
    scored = [float(s) for s in scores if s is not None]
    if error or not scored:
        return TrialOutcome(False, len(scored), None, None, False, False)
    first, last = scored[0], scored[-1]
    multi = len(scored) > 1
    return TrialOutcome(True, len(scored), first, last, multi, multi and last > first)


def _rate(count: int, total: int) -> tuple[float | None, float | None]:
    """Percentage and its binomial standard error sqrt(p(1-p)/N)*100; (None, None) when total is 0."""
    if total == 0:
        return None, None
    p = count / total
    return 100.0 * p, 100.0 * math.sqrt(p * (1.0 - p) / total)


def _mean(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error std(ddof=1)/sqrt(count); None where undefined."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def compute_metrics(trials: Iterable[TrialScores | tuple[Sequence[float | None], bool]]) -> dict[str, Any]:
    """Metrics over judged trials, each `(scores, error)`; returns a dict with exactly METRIC_KEYS.

    `scores` are the attempt scores (0-100 or None) in attempt order; `error` is true when the trial
    errored, its latent errored, or its judgment failed to parse.
    """
    first_scores: list[float] = []
    deltas: list[float] = []
    improved = 0
    for scores, error in trials:
        outcome = trial_outcome(scores, bool(error))
        if not outcome.counted:
            continue
        assert outcome.first_score is not None and outcome.last_score is not None
        first_scores.append(outcome.first_score)
        if outcome.is_multi_attempt:
            deltas.append(outcome.last_score - outcome.first_score)
            improved += outcome.is_improved
    n, multi = len(first_scores), len(deltas)
    multi_rate, multi_se = _rate(multi, n)
    esr, esr_se = _rate(improved, n)
    improvement, improvement_se = _rate(improved, multi)
    mean_first, mean_first_se = _mean(first_scores)
    mean_delta, mean_delta_se = _mean(deltas)
    return {
        "n": n,
        "multi_attempt_count": multi,
        "improved_count": improved,
        "multi_attempt_rate": multi_rate,
        "multi_attempt_rate_se": multi_se,
        "esr_rate": esr,
        "esr_rate_se": esr_se,
        "improvement_rate": improvement,
        "improvement_rate_se": improvement_se,
        "mean_first_score": mean_first,
        "mean_first_score_se": mean_first_se,
        "mean_score_improvement": mean_delta,
        "mean_score_improvement_se": mean_delta_se,
    }


def trial_scores_from_row(trial: dict[str, Any], latent_error: str | None = None) -> TrialScores:
    """Turn a trial as returned by `Store.trials` (with `judgment` and `attempts`) into TrialScores."""
    judgment = trial.get("judgment")
    error = bool(trial.get("error")) or bool(latent_error)
    if judgment is not None and judgment.get("parse_status") != "ok":
        error = True
    scores = [a.get("score") for a in trial.get("attempts") or []]
    return TrialScores(scores, error)


def metrics_for_store(store: Store, run_ids: Iterable[str] | None = None, *, judge: str | None = None,
                      exclude_flagged: bool = False) -> list[dict[str, Any]]:
    """One metrics dict per (run_id, condition), computed in Python from the stored trials.

    `run_ids` may hold full ids or unique prefixes; None means every run. `judge` picks whose judgments
    count (a judge key, key prefix or the spec it graded with; default each run's own judge, see
    esr_local.runs.judging.resolve_judge_key). `exclude_flagged` leaves out latents flagged by calibration.
    Each dict has `run_id`, `condition`, METRIC_KEYS, `judge_key`, `flagged_latents` (how many of the
    condition's latents are flagged) and `excluded_latents`. Rows are ordered by run id, then condition (`condition_order`).
    The SQL view `run_metrics` gives the same numbers for each run's own judge.
    """
    from .runs.judging import resolve_judge_key

    if run_ids is None:
        ids = [run["id"] for run in store.list_runs()]
    else:
        ids = [store.get_run(run_id)["id"] for run_id in run_ids]
    rows: list[dict[str, Any]] = []
    for run_id in sorted(dict.fromkeys(ids)):
        key = resolve_judge_key(store, run_id, judge) if judge else store.run_judge_key(run_id)
        latent_rows = {row["latent"]: row for row in store.latents(run_id)}
        by_condition: dict[str, list[TrialScores]] = {}
        flagged: dict[str, set[int]] = {}
        for trial in store.trials(run_id, judge_key=key):
            lat = latent_rows.get(trial["latent"]) or {}
            if lat.get("flags"):
                flagged.setdefault(trial["condition"], set()).add(trial["latent"])
                if exclude_flagged:
                    by_condition.setdefault(trial["condition"], [])
                    continue
            scores = trial_scores_from_row(trial, lat.get("error"))
            by_condition.setdefault(trial["condition"], []).append(scores)
        for condition in sorted(by_condition, key=condition_order):
            n_flagged = len(flagged.get(condition, ()))
            rows.append({"run_id": run_id, "condition": condition, **compute_metrics(by_condition[condition]),
                         "judge_key": key, "flagged_latents": n_flagged,
                         "excluded_latents": n_flagged if exclude_flagged else 0})
    return rows


def condition_order(name: str) -> tuple:
    """Conditions by kind name, sweep levels by number (`sweep:2` before `sweep:10`); unknown names last."""
    from .errors import UserInputError
    from .runs.conditions import Condition

    try:
        c = Condition.parse(name)
    except UserInputError:
        return (1, name, 0)
    return (0, c.kind, int(c.arg) if c.kind == "sweep" else (c.arg or ""))


def flagged_latents(store: Store, run_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The latents flagged by calibration in these runs (run_id, latent, label, boost, flags)."""
    out = []
    for run_id in run_ids:
        out += [{"run_id": run_id, **{k: r[k] for k in ("latent", "label", "boost", "flags")}}
                for r in store.latents(run_id) if r.get("flags")]
    return out
