"""Everything a report shows, read from the store once and put in a fixed order.

The numbers come from `esr_local.metrics` (the same code as `esr-local metrics`): per-run rows from
`metrics_for_store`, and pooled rows (several runs of one model, as the paper aggregates result
files) from `compute_metrics` over the pooled trials. Nothing here depends on the clock or on the
order SQLite returns rows in, so the same database gives the same report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserInputError
from ..metrics import compute_metrics, metrics_for_store, trial_outcome, trial_scores_from_row
from ..store import Store

# Condition families, in display order.
FAMILIES = ("steered", "baseline", "meta", "ablation", "prefill", "sweep", "other")


def condition_family(condition: str) -> str:
    """`steered`, `baseline`, `meta`, `ablation`, `prefill`, `sweep` or `other` for a condition name."""
    head = condition.split(":", 1)[0]
    return head if head in FAMILIES else "other"


def condition_sort_key(condition: str) -> tuple:
    """Conditions ordered by family, sweep levels by their index, the rest by name."""
    family = condition_family(condition)
    tail = condition.split(":", 1)[1] if ":" in condition else ""
    index = int(tail) if family == "sweep" and tail.isdigit() else -1
    return FAMILIES.index(family), index, condition


@dataclass
class RunData:
    """One run as stored: its row, executions, latents, trials, calibrations and metrics."""

    run: dict[str, Any]
    sessions: list[dict[str, Any]]
    latents: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    calibrations: dict[int, dict[str, Any]]
    metrics: list[dict[str, Any]]
    judges: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.run["id"]

    @property
    def model_key(self) -> str:
        """What pools runs: the model file's sha256, else its name (imported runs), else the run id."""
        return self.run.get("model_sha256") or self.run.get("model_name") or self.id

    @property
    def model_label(self) -> str:
        return self.run.get("model_name") or (self.run.get("model_sha256") or "")[:12] or self.id


@dataclass
class ModelGroup:
    """The runs of one model and their pooled metrics per condition."""

    key: str
    label: str
    run_ids: list[str]
    metrics: list[dict[str, Any]] = field(default_factory=list)  # condition + METRIC_KEYS


@dataclass
class ReportData:
    """All runs of a report, grouped by model."""

    runs: list[RunData]
    groups: list[ModelGroup]

    def conditions(self) -> list[str]:
        """Every condition of any run, in display order."""
        names = {t["condition"] for r in self.runs for t in r.trials}
        return sorted(names, key=condition_sort_key)


def _calibrations(store: Store, ids: list[int]) -> dict[int, dict[str, Any]]:
    """`calibrations` rows by id, each with `steps` (steps_json parsed)."""
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = list(store.db.query(f"SELECT * FROM calibrations WHERE id IN ({marks}) ORDER BY id", ids))
    for row in rows:
        row["steps"] = json.loads(row.get("steps_json") or "[]")
    return {int(row["id"]): row for row in rows}


def load_run(store: Store, run_id: str, *, judge: str | None = None, exclude_flagged: bool = False) -> RunData:
    """Read one run (id or unique prefix) with everything the report shows. `judge` and `exclude_flagged`
    mean what they mean for `esr-local metrics` (whose judgments count; leave out flagged latents), and the
    trials shown carry that judge's judgments."""
    run = store.get_run(run_id)
    # display_status tells an interrupted run (no live process) from a running one.
    listed = {row["id"]: row for row in store.list_runs()}
    run["display_status"] = listed.get(run["id"], {}).get("display_status", run.get("status"))
    latents = store.latents(run["id"])
    metrics = metrics_for_store(store, [run["id"]], judge=judge, exclude_flagged=exclude_flagged)
    judge_key = metrics[0].get("judge_key") if metrics else store.run_judge_key(run["id"])
    trials = store.trials(run["id"], judge_key=judge_key)
    if exclude_flagged:
        flagged = {l["latent"] for l in latents if l.get("flags")}
        trials = [t for t in trials if t["latent"] not in flagged]
    cal_ids = sorted({int(l["calibration_id"]) for l in latents if l.get("calibration_id") is not None})
    return RunData(
        run=run,
        sessions=store.sessions(run["id"]),
        latents=latents,
        trials=trials,
        calibrations=_calibrations(store, cal_ids),
        metrics=metrics,
        judges=store.judge_keys(run["id"]),
    )


def pooled_metrics(runs: list[RunData]) -> list[dict[str, Any]]:
    """Metrics per condition over the trials of several runs together (compute_metrics, the paper's rules)."""
    by_condition: dict[str, list] = {}
    for run in runs:
        latent_errors = {row["latent"]: row.get("error") for row in run.latents}
        for trial in run.trials:
            scores = trial_scores_from_row(trial, latent_errors.get(trial["latent"]))
            by_condition.setdefault(trial["condition"], []).append(scores)
    return [{"condition": c, **compute_metrics(by_condition[c])} for c in sorted(by_condition, key=condition_sort_key)]


def load_report_data(store: Store, run_ids: list[str], *, judge: str | None = None,
                     exclude_flagged: bool = False) -> ReportData:
    """The report's data for the given runs (ids or unique prefixes; duplicates are dropped)."""
    if not run_ids:
        raise UserInputError("name at least one run (see `esr-local runs`)")
    seen: dict[str, RunData] = {}
    for run_id in run_ids:
        data = load_run(store, run_id, judge=judge, exclude_flagged=exclude_flagged)
        seen.setdefault(data.id, data)
    runs = [seen[k] for k in sorted(seen)]
    groups: dict[str, ModelGroup] = {}
    for run in runs:
        group = groups.setdefault(run.model_key, ModelGroup(run.model_key, run.model_label, []))
        group.run_ids.append(run.id)
    for group in groups.values():
        group.metrics = pooled_metrics([r for r in runs if r.id in group.run_ids])
    return ReportData(runs=runs, groups=sorted(groups.values(), key=lambda g: (g.label, g.key)))


# -- derived views used by the figures and tables ----------------------------------------------------


def trial_latent_errors(run: RunData) -> dict[int, str | None]:
    return {row["latent"]: row.get("error") for row in run.latents}


def score_distributions(runs: list[RunData], condition: str) -> tuple[list[float], list[float]]:
    """First-attempt scores of the counted trials, and last-attempt scores of the multi-attempt ones."""
    first: list[float] = []
    last: list[float] = []
    for run in runs:
        errors = trial_latent_errors(run)
        for trial in run.trials:
            if trial["condition"] != condition:
                continue
            outcome = trial_outcome(*trial_scores_from_row(trial, errors.get(trial["latent"])))
            if outcome.counted:
                first.append(outcome.first_score)
                if outcome.is_multi_attempt:
                    last.append(outcome.last_score)
    return first, last


def sweep_points(run: RunData) -> list[dict[str, Any]]:
    """One point per `sweep:<k>` condition of a run: its boost, the boost in sd units of the run's latent
    boosts (the paper's sigma axis; None when fewer than two latents have a boost or they are all equal),
    and the condition's metrics."""
    boosts = [float(l["boost"]) for l in run.latents if l.get("boost") is not None and not l.get("error")]
    mean = sum(boosts) / len(boosts) if boosts else 0.0
    sd = math.sqrt(sum((b - mean) ** 2 for b in boosts) / len(boosts)) if len(boosts) >= 2 else 0.0
    levels: dict[str, float] = {}
    for trial in run.trials:
        if condition_family(trial["condition"]) == "sweep" and trial.get("boost") is not None:
            levels.setdefault(trial["condition"], float(trial["boost"]))
    points = []
    for row in run.metrics:
        if row["condition"] in levels:
            boost = levels[row["condition"]]
            points.append({"condition": row["condition"], "boost": boost,
                           "sigma": (boost - mean) / sd if sd > 0 else None, **row})
    return sorted(points, key=lambda p: (p["boost"], p["condition"]))


def failures(run: RunData) -> list[dict[str, Any]]:
    """Latents, trials and judgments of a run that failed, with their error text."""
    out: list[dict[str, Any]] = []
    for latent in run.latents:
        if latent.get("error"):
            out.append({"what": "latent", "id": f"latent {latent['latent']}", "error": latent["error"]})
    for trial in run.trials:
        if trial.get("error"):
            out.append({"what": "generation", "id": trial["id"], "error": trial["error"]})
        judgment = trial.get("judgment")
        if judgment is not None and judgment.get("parse_status") != "ok":
            out.append({"what": "judgment", "id": trial["id"], "error": judgment.get("error") or "unparsed"})
    return out


def flagged_latents(run: RunData) -> list[dict[str, Any]]:
    """Latents with an error or any non-empty flag column (calibration flags), in latent order."""
    flagged = []
    for latent in run.latents:
        flags = {k: v for k, v in latent.items() if "flag" in k and v not in (None, "", "[]", "{}", 0)}
        if flags or latent.get("error"):
            flagged.append({"latent": latent["latent"], "label": latent.get("label"), "error": latent.get("error"),
                            "flags": flags})
    return flagged


def example_trials(runs: list[RunData], limit: int = 6) -> list[dict[str, Any]]:
    """Up to `limit` trials to read: multi-attempt ones first (improved before not), then single-attempt
    ones, each group in trial-id order; every trial with its attempts and run id."""
    ranked = []
    for run in runs:
        errors = trial_latent_errors(run)
        for trial in run.trials:
            outcome = trial_outcome(*trial_scores_from_row(trial, errors.get(trial["latent"])))
            if not outcome.counted:
                continue
            rank = 0 if outcome.is_improved else 1 if outcome.is_multi_attempt else 2
            ranked.append((rank, trial["id"], trial, outcome))
    ranked.sort(key=lambda item: (item[0], item[1]))
    picked = ranked[:limit]
    return [{"trial": t, "outcome": o._asdict()} for _, _, t, o in picked]


def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def paired_comparisons(runs: list[RunData], reference: str = "steered") -> list[dict[str, Any]]:
    """Each non-sweep condition against `reference` on the same (latent, base prompt, replicate), both
    counted: the number of pairs and the mean paired difference (condition minus reference, percentage
    points) in multi-attempt and ESR indicators, with SE std(ddof=1)/sqrt(pairs)."""
    by_condition: dict[str, dict[tuple, Any]] = {}
    for run in runs:
        errors = trial_latent_errors(run)
        for trial in run.trials:
            outcome = trial_outcome(*trial_scores_from_row(trial, errors.get(trial["latent"])))
            if outcome.counted:
                key = (trial["latent"], trial.get("base_prompt") or trial["prompt_index"], trial["replicate"])
                by_condition.setdefault(trial["condition"], {}).setdefault(key, outcome)
    base = by_condition.get(reference)
    if not base:
        return []
    out = []
    for condition in sorted(by_condition, key=condition_sort_key):
        if condition == reference or condition_family(condition) == "sweep":
            continue
        keys = sorted(set(base) & set(by_condition[condition]), key=repr)
        multi = [100.0 * (by_condition[condition][k].is_multi_attempt - base[k].is_multi_attempt) for k in keys]
        esr = [100.0 * (by_condition[condition][k].is_improved - base[k].is_improved) for k in keys]
        (dm, dm_se), (de, de_se) = _mean_se(multi), _mean_se(esr)
        out.append({"condition": condition, "reference": reference, "pairs": len(keys),
                    "multi_attempt_diff": dm, "multi_attempt_diff_se": dm_se, "esr_diff": de, "esr_diff_se": de_se})
    return out
