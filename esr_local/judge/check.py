"""`judge check`: measure a judge on annotated cases before trusting it.

A case file is JSONL, one object per line: `id`, `prompt`, `label`, `response` (strings) and
`expect = {"attempts": N, "first": "on"|"off"|null, "last": "on"|"off"|null}` ("on" = the attempt
answers the prompt, "off" = it is derailed; null = not annotated). The shipped set is
`esr_local/data/judge_cases.jsonl`, written for this project.

Figures (`CheckReport.summary`):
- `multi_attempt_accuracy`: share of cases where the judge's "more than one attempt" equals the expected one.
- `attempt_count_accuracy`: share of cases with exactly the expected number of attempts.
- `first_auc`: AUC of the first-attempt score separating expected-"on" from expected-"off" first
  attempts (every on/off pair; a tie counts half). A case the judge failed on, or found no attempt
  in, counts as its worst case: below every score when "on", above every score when "off".
- `improvement_rate`: among derail -> answer cases (expected attempts > 1, first "off", last "on"),
  the share the judge splits into several attempts with last score > first score.

A judge passes when all of `THRESHOLDS` are met. `ensure_judge_checked` runs the check once per judge
(its description, minus run-time knobs like timeouts) and case file, and caches the result under
`<data dir>/judge-checks/`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from ..paths import data_dir, package_data_dir

CHECK_VERSION = "judge-check-v1"
THRESHOLDS: dict[str, float] = {"multi_attempt_accuracy": 0.9, "first_auc": 0.9, "improvement_rate": 0.8}
# Settings that change how a judgment is obtained, not what the judge is: left out of the cache key
# (threads follow the machine's load, GPU offload the machine: neither changes the rubric or the weights).
_VOLATILE = ("timeout", "max_retries", "model_path", "retry_backoff", "n_threads", "n_gpu_layers")
_SIDES = ("on", "off", None)


class WeakJudgeError(UserInputError):
    """The judge missed the judge-check thresholds and a weak judge was not allowed."""


@dataclass(frozen=True)
class Case:
    """One annotated response."""

    id: str
    prompt: str
    label: str
    response: str
    attempts: int
    first: str | None
    last: str | None

    @property
    def derail_then_answer(self) -> bool:
        """A case the improvement figure counts: several attempts, the first derailed, the last on topic."""
        return self.attempts > 1 and self.first == "off" and self.last == "on"


@dataclass
class CheckReport:
    """The four figures with pass/fail (`summary`) and one row per case (`cases`)."""

    summary: dict[str, Any]
    cases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.summary.get("passed"))


def default_cases_path() -> Path:
    """The shipped case set."""
    return package_data_dir() / "judge_cases.jsonl"


def load_cases(path: str | os.PathLike[str] | None = None) -> list[Case]:
    """Read and validate a case file; any problem raises UserInputError naming the file and line."""
    p = Path(path) if path is not None else default_cases_path()
    try:
        text = p.read_text(encoding="utf-8-sig")  # a leading BOM (Windows editors) is not part of line 1
    except FileNotFoundError:
        raise UserInputError(f"judge case file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read judge case file {p}: {exc}") from None
    cases: list[Case] = []
    seen: set[str] = set()
    # JSONL lines end at "\n" only: str.splitlines() would also cut at U+2028/U+0085, which JSON strings may hold raw.
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{p} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise UserInputError(f"{where}: not valid JSON (nested too deeply)") from None
        case = _parse_case(obj, where)
        if case.id in seen:
            raise UserInputError(f"{where}: duplicate case id {case.id!r}")
        seen.add(case.id)
        cases.append(case)
    if not cases:
        raise UserInputError(f"judge case file {p} has no cases")
    return cases


def _parse_case(obj: Any, where: str) -> Case:
    if not isinstance(obj, dict):
        raise UserInputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "prompt", "label", "response", "expect"):
        if key not in obj:
            raise UserInputError(f"{where}: missing field {key!r} (need id, prompt, label, response, expect)")
    for key in ("id", "prompt", "label", "response"):
        if not isinstance(obj[key], str):
            raise UserInputError(f"{where}: field {key!r} must be a string")
    expect = obj["expect"]
    if not isinstance(expect, dict):
        raise UserInputError(f"{where}: field 'expect' must be an object like "
                             '{"attempts": 1, "first": "on", "last": "on"}')
    for key in ("attempts", "first", "last"):
        if key not in expect:
            raise UserInputError(f"{where}: expect is missing {key!r}")
    n = expect["attempts"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise UserInputError(f"{where}: expect.attempts must be a whole number >= 0, got {n!r}")
    for key in ("first", "last"):
        if expect[key] not in _SIDES:
            raise UserInputError(f"{where}: expect.{key} must be \"on\", \"off\" or null, got {expect[key]!r}")
    return Case(obj["id"], obj["prompt"], obj["label"], obj["response"], n, expect["first"], expect["last"])


def run_check(judge, cases: Sequence[Case], *, on_case: Callable[[int, int], None] | None = None) -> CheckReport:
    """Judge every case and compute the figures (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    for i, case in enumerate(cases):
        j = judge.judge(case.prompt, case.response, case.label)
        ok = j.parse_status == "ok" and j.attempts is not None
        scores = [a.score for a in j.attempts] if ok else []
        n = len(scores) if ok else None
        rows.append({
            "id": case.id,
            "scores": scores,
            "attempts": n,
            "expected_attempts": case.attempts,
            "expected_first": case.first,
            "expected_last": case.last,
            "multi_ok": ok and (n > 1) == (case.attempts > 1),
            "count_ok": ok and n == case.attempts,
            "improved": (ok and n > 1 and scores[0] is not None and scores[-1] is not None
                         and scores[-1] > scores[0]),
            "error": None if ok else (j.error or "judgment failed"),
        })
        if on_case is not None:
            on_case(i + 1, len(cases))
    return CheckReport(summarise(cases, rows), rows)


def summarise(cases: Sequence[Case], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures, the thresholds and whether they are all met."""
    n = len(cases)
    first = [(c.first, (r["scores"][0] if r["scores"] else None)) for c, r in zip(cases, rows)]
    derail = [r for c, r in zip(cases, rows) if c.derail_then_answer]
    figures = {
        "multi_attempt_accuracy": _share(sum(r["multi_ok"] for r in rows), n),
        "attempt_count_accuracy": _share(sum(r["count_ok"] for r in rows), n),
        "first_auc": auc([s for side, s in first if side == "on"], [s for side, s in first if side == "off"]),
        "improvement_rate": _share(sum(r["improved"] for r in derail), len(derail)),
    }
    checks = {k: figures[k] is not None and figures[k] >= t for k, t in THRESHOLDS.items()}
    return {
        **figures,
        "n_cases": n,
        "n_on_first": sum(1 for side, _ in first if side == "on"),
        "n_off_first": sum(1 for side, _ in first if side == "off"),
        "n_derail_then_answer": len(derail),
        "n_failed": sum(1 for r in rows if r["error"]),
        "thresholds": dict(THRESHOLDS),
        "checks": checks,
        "passed": all(checks.values()),
        "check_version": CHECK_VERSION,
    }


def _share(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def auc(positives: Sequence[float | None], negatives: Sequence[float | None]) -> float | None:
    """P(positive score > negative score) over all pairs, ties half; None scores count as the worst case."""
    if not positives or not negatives:
        return None
    total = 0.0
    for p in positives:
        for q in negatives:
            if p is None or q is None:
                continue  # a missing score loses the pair: adds 0
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return round(total / (len(positives) * len(negatives)), 4)


# ---------------------------------------------------------------------------------------------- cached check


def judge_check_key(judge, cases_path: Path) -> str:
    """Cache key: the judge's description (without run-time knobs), the case file's bytes, the check version."""
    desc = {k: v for k, v in judge.describe().items() if k not in _VOLATILE}
    blob = json.dumps({"judge": desc, "cases_sha256": hashlib.sha256(cases_path.read_bytes()).hexdigest(),
                       "check": CHECK_VERSION}, sort_keys=True, default=str)
    return f"{desc.get('backend')}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def ensure_judge_checked(judge, *, allow_weak: bool, skip: bool, echo: Callable[[str], None] = print,
                         cases_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Check `judge` once (cached per judge + rubric + case file) and refuse a weak one.

    Returns `{"status": "passed"|"weak-allowed"|"skipped", "summary": {...} | None, "key": ...}` for the
    run record. Raises WeakJudgeError when the thresholds are missed and `allow_weak` is False.
    """
    path = Path(cases_path) if cases_path is not None else default_cases_path()
    key = judge_check_key(judge, path)
    if skip:
        return {"status": "skipped", "summary": None, "key": key}
    summary = _read_cached(_cache_path(key))
    if summary is None:
        cases = load_cases(path)
        echo(f"Checking the judge on {len(cases)} annotated cases (once per judge; cached)...")
        summary = run_check(judge, cases).summary
        save_check(judge, summary, path)
    if summary.get("passed"):
        return {"status": "passed", "summary": summary, "key": key}
    text = format_figures(summary)
    if allow_weak:
        echo(f"Warning: weak judge allowed ({text}); the run records it.")
        return {"status": "weak-allowed", "summary": summary, "key": key}
    raise WeakJudgeError(f"the judge misses the judge-check thresholds ({text}); choose a stronger judge, "
                         "or pass --allow-weak-judge to use it anyway (recorded on the run)")


def save_check(judge, summary: dict[str, Any], cases_path: str | os.PathLike[str] | None = None) -> Path:
    """Cache a check's summary for this judge and case file (what `ensure_judge_checked` reads)."""
    path = Path(cases_path) if cases_path is not None else default_cases_path()
    key = judge_check_key(judge, path)
    target = _cache_path(key)
    _write_json(target, {"key": key, "judge": judge.describe(), "summary": summary})
    return target


def _cache_path(key: str) -> Path:
    return data_dir() / "judge-checks" / f"{key}.json"


def format_figures(summary: dict[str, Any]) -> str:
    """One line: each thresholded figure against its threshold."""
    parts = []
    for k, t in THRESHOLDS.items():
        v = summary.get(k)
        parts.append(f"{k} {'n/a' if v is None else f'{v:.2f}'} (needs >= {t:g})")
    return ", ".join(parts)


def _read_cached(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        summary = data["summary"]
        return summary if isinstance(summary, dict) and "passed" in summary else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomic write through the project's shared helper (a failed write leaves no half file)."""
    from ..atomic import atomic_write

    with atomic_write(path, mode="wb") as fh:
        fh.write(json.dumps(obj, indent=1, sort_keys=True, default=str).encode())
