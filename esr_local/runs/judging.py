"""Judging stored or fresh responses: the judgment row a judge's verdict becomes, re-grading a run with
another judge, and agreement between two judges (the paper's Experiment 7)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserInputError
from .spec import JudgeRef, judge_key


def judgment_record(judge, ref: JudgeRef | None, prompt: str, response: str, label: str) -> tuple[dict, list[dict]]:
    """Judge one response; the judgments row (keyed by the judge) and its attempts."""
    j = judge.judge(prompt, response, label)
    desc = ref.description if ref is not None else judge.describe()
    errors = list(getattr(j, "errors", None) or ([j.error] if j.error else []))
    rec = {
        "judge_key": ref.key if ref is not None else judge_key(desc), "judge_spec": ref.spec if ref is not None else None,
        "judge_backend": desc.get("backend"), "judge_model": desc.get("model"),
        "rubric_version": desc.get("rubric_id") or desc.get("rubric_version"),
        "raw_output": j.raw_output, "parse_status": j.parse_status, "error": j.error, "errors": errors,
        "tries": j.tries, "latency_ms": round(j.latency_ms, 1), "restart_gating": int(bool(desc.get("restart_gating"))),
        "n_attempts_raw": j.n_attempts_raw,
    }
    attempts = [{"attempt_index": i, "text": a.text, "score": a.score} for i, a in enumerate(j.attempts or [])]
    return rec, attempts


def regrade_run(store, run_id: str, judge, spec_text: str, *, retry_failed: bool = False,
                progress: Callable[[str], None] | None = None) -> dict:
    """Grade a run's stored responses with `judge` (nothing is regenerated). Trials already graded by this
    judge are skipped; with retry_failed only its failed judgments are graded again. Returns counts."""
    run = store.get_run(run_id)
    desc = judge.describe()
    key = judge_key(desc)
    ref = JudgeRef(spec=spec_text, model_path=None, base_url=None, rubric=None, timeout=None,
                   restart_gating=bool(desc.get("restart_gating")), description=desc, key=key, check={})
    todo = store.trials_to_judge(run["id"], key, only_failed=retry_failed)
    labels = {r["latent"]: r["label"] for r in store.latents(run["id"])}
    failed = 0
    for i, t in enumerate(todo, 1):
        rec, attempts = judgment_record(judge, ref, t["prompt"], t["response"], labels.get(t["latent"]) or f"latent {t['latent']}")
        store.record_judgment(t["id"], rec, attempts)
        failed += rec["parse_status"] != "ok"
        if progress:
            progress(f"[{i}/{len(todo)}] judged")
    return {"run_id": run["id"], "judge_key": key, "judged": len(todo), "failed": failed}


def resolve_judge_key(store, run_id: str, judge: str | None) -> str | None:
    """The judge key a `--judge` value names among a run's judgments: an exact key, a key prefix, or the
    spec string it was graded with. None: the run's own judge."""
    if judge is None:
        return None
    keys = store.judge_keys(run_id)
    hits = [k["judge_key"] for k in keys if k["judge_key"] == judge]
    hits = hits or [k["judge_key"] for k in keys if k["judge_spec"] == judge or k["judge_key"].startswith(judge + ":")]
    if len(set(hits)) == 1:
        return hits[0]
    known = ", ".join(f"{k['judge_key']} ({k['judge_spec'] or 'imported'})" for k in keys) or "none"
    if not hits:
        raise UserInputError(f"run {run_id} has no judgments by {judge!r}; its judges: {known}")
    raise UserInputError(f"{judge!r} matches several judges of run {run_id} ({', '.join(sorted(set(hits)))}); give the full key")


def _outcomes(store, run_id: str, key: str) -> dict[str, tuple[bool, int]]:
    """trial id -> (multi-attempt, improvement direction +1/0/-1) for the judge's usable judgments."""
    out: dict[str, tuple[bool, int]] = {}
    for t in store.trials(run_id, judge_key=key):
        j = t["judgment"]
        scores = [a["score"] for a in t["attempts"] if a["score"] is not None]
        if t["error"] or j is None or j["parse_status"] != "ok" or not scores:
            continue
        d = scores[-1] - scores[0]
        out[t["id"]] = (len(scores) > 1, (d > 0) - (d < 0))
    return out


def judge_agreement(store, run_id: str, judge_a: str, judge_b: str) -> dict[str, Any]:
    """Agreement of two judges on one run's responses: on multi-attempt detection (all trials both judged),
    and on the direction of improvement (last vs first score) over trials both call multi-attempt."""
    run_id = store.get_run(run_id)["id"]
    ka, kb = resolve_judge_key(store, run_id, judge_a), resolve_judge_key(store, run_id, judge_b)
    a, b = _outcomes(store, run_id, ka), _outcomes(store, run_id, kb)
    both = sorted(set(a) & set(b))
    multi_agree = sum(a[t][0] == b[t][0] for t in both)
    multi_both = [t for t in both if a[t][0] and b[t][0]]
    dir_agree = sum(a[t][1] == b[t][1] for t in multi_both)
    return {
        "run_id": run_id, "judge_a": ka, "judge_b": kb, "n_both": len(both),
        "multi_attempt_agreement": multi_agree / len(both) if both else None,
        "multi_attempt_a": sum(a[t][0] for t in both), "multi_attempt_b": sum(b[t][0] for t in both),
        "n_multi_both": len(multi_both),
        "direction_agreement": dir_agree / len(multi_both) if multi_both else None,
    }
