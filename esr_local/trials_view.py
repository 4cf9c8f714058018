"""Browsing trials: the responses of a run with their attempts, scores and how the metrics count them.

`trial_records` is what `esr-local trials` prints (as text or JSON). "Multi-attempt" and "improved" are
decided by `esr_local.metrics.trial_outcome`, the same code the metrics use.
"""

from __future__ import annotations

from typing import Any

from .errors import UserInputError
from .metrics import trial_outcome, trial_scores_from_row
from .store import Store

_JUDGMENT_FIELDS = ("judge_key", "judge_backend", "judge_model", "rubric_version", "parse_status", "error", "tries",
                    "restart_gating", "n_attempts_raw")
_TRIAL_FIELDS = ("id", "run_id", "condition", "latent", "prompt_index", "replicate", "boost", "seed", "base_prompt",
                 "prompt", "response", "completion_tokens", "stop_reason", "error")


def trial_records(store: Store, run_id: str, *, condition: str | None = None, latent: int | None = None,
                  multi_attempt: bool = False, judge: str | None = None) -> list[dict[str, Any]]:
    """The trials of one run (id or unique prefix) in (condition, latent, prompt, replicate) order, each a
    dict of its trial fields, `label`, `judgment`, `attempts` [{index, text, score}] and `outcome`
    (counted, n_scored_attempts, first_score, last_score, is_multi_attempt, is_improved).

    `condition` and `latent` filter (a value the run does not have is a UserInputError naming the ones it
    has); `multi_attempt` keeps only trials the metrics count as multi-attempt. `judge` (a judge key, key
    prefix or --judge spec, as for `esr-local metrics --judge`) shows that judge's judgments instead of the
    run's own judge's.
    """
    from .runs.judging import resolve_judge_key

    run = store.get_run(run_id)
    trials = store.trials(run["id"], judge_key=resolve_judge_key(store, run["id"], judge))
    latents = {row["latent"]: row for row in store.latents(run["id"])}
    if condition is not None:
        known = sorted({t["condition"] for t in trials})
        if condition not in known:
            raise UserInputError(f"run {run['id']} has no condition {condition!r}; "
                                 f"its conditions: {', '.join(known) or 'none (no trials yet)'}")
    if latent is not None:
        known_latents = sorted({t["latent"] for t in trials} | set(latents))
        if latent not in known_latents:
            raise UserInputError(f"run {run['id']} has no latent {latent}; "
                                 f"its latents: {', '.join(map(str, known_latents)) or 'none'}")
    records = []
    for trial in trials:
        if (condition is not None and trial["condition"] != condition) or (latent is not None and trial["latent"] != latent):
            continue
        latent_row = latents.get(trial["latent"]) or {}
        outcome = trial_outcome(*trial_scores_from_row(trial, latent_row.get("error")))
        if multi_attempt and not outcome.is_multi_attempt:
            continue
        judgment = trial.get("judgment")
        records.append({
            **{k: trial.get(k) for k in _TRIAL_FIELDS},
            "label": latent_row.get("label"),
            "latent_error": latent_row.get("error"),
            "judgment": None if judgment is None else {k: judgment.get(k) for k in _JUDGMENT_FIELDS},
            "attempts": [{"index": a["attempt_index"], "text": a.get("text"), "score": a.get("score")}
                         for a in trial.get("attempts") or []],
            "outcome": outcome._asdict(),
        })
    return records


def _verdict(record: dict[str, Any]) -> str:
    outcome = record["outcome"]
    if record.get("error") or record.get("latent_error"):
        return "error (not counted)"
    if record["judgment"] is None:
        return "not judged"
    if record["judgment"].get("parse_status") != "ok":
        return "judgment failed (not counted)"
    if not outcome["counted"]:
        return "no scored attempt (not counted)"
    n = outcome["n_scored_attempts"]
    if outcome["is_improved"]:
        return f"{n} attempts, improved"
    return f"{n} attempts" if outcome["is_multi_attempt"] else "1 attempt"


def format_trials(records: list[dict[str, Any]]) -> str:
    """Trial records as readable text: one header line per trial, its prompt, then each attempt with its score."""
    blocks = []
    for r in records:
        label = f" ({r['label']})" if r.get("label") else ""
        boost = "-" if r.get("boost") is None else f"{r['boost']:g}"
        lines = [f"{r['id']}  latent {r['latent']}{label}  boost {boost}  seed {r.get('seed')}  - {_verdict(r)}",
                 f"  prompt: {r.get('prompt')}"]
        for problem in (r.get("error"), r.get("latent_error"), (r.get("judgment") or {}).get("error")):
            if problem:
                lines.append(f"  error: {problem}")
        for attempt in r["attempts"]:
            score = "no score" if attempt["score"] is None else f"score {attempt['score']:g}"
            text = (attempt["text"] or "").strip().replace("\n", "\n      ")
            lines.append(f"  [{attempt['index'] + 1}] {score}: {text}")
        if not r["attempts"] and r.get("response"):
            lines.append("  response: " + r["response"].strip().replace("\n", "\n      "))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
