"""`esr-local judge check`: measure a judge on annotated cases (registered on the `judge` group)."""

from __future__ import annotations

import json
import sys

import click

from esr_local.judge.check import THRESHOLDS, default_cases_path, load_cases, run_check, save_check

from .judge_options import judge_from_options, judge_options

#: Exit status when the check ran but the judge missed a threshold (1 = error, 2 = bad usage).
EXIT_WEAK = 3

_NAMES = {
    "multi_attempt_accuracy": "multi-attempt accuracy",
    "attempt_count_accuracy": "attempt-count accuracy",
    "first_auc": "first-attempt AUC (on vs off)",
    "improvement_rate": "improvement found (derail -> answer)",
}


@click.command(name="check")
@click.option("--cases", "cases_file", default=None, type=click.Path(),
              help="JSONL case file (id, prompt, label, response, expect); default: the shipped set.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"summary": {...}, "cases": [{"id", "scores": [first, ..., last], ...}]} as JSON.')
@judge_options
def check_command(cases_file, as_json, **judge_kw):
    """Run a judge on annotated cases and report multi-attempt accuracy, attempt-count accuracy, the AUC of
    first-attempt scores and the share of derail -> answer cases whose last score beats the first.

    Exit status: 0 when every threshold is met (multi-attempt accuracy >= 0.9, AUC >= 0.9, improvement >= 0.8),
    3 when the check ran but the judge missed one, 1 on an error. The result is cached like the check that
    `run` and `calibrate` make, so they reuse it."""
    cases = load_cases(cases_file)  # validated before any model is loaded
    judge = judge_from_options(**judge_kw)
    try:
        progress = (lambda i, n: click.echo(f"\rjudged {i}/{n}", err=True, nl=i == n)) if sys.stderr.isatty() else None
        report = run_check(judge, cases, on_case=progress)
        desc = judge.describe()
        save_check(judge, report.summary, cases_file)  # `run` / `calibrate` reuse it instead of checking again
    finally:
        judge.close()
    s = report.summary
    if as_json:
        # exactly {"summary", "cases"} at the top (issue 6 §4); which judge ran goes inside the summary
        click.echo(json.dumps({"summary": {**s, "judge": desc}, "cases": report.cases}, indent=2, default=str))
    else:
        click.echo(f"Judge {judge_kw['judge']} ({desc.get('model')}, {desc.get('version') or desc.get('rubric_id')}) "
                   f"on {s['n_cases']} cases from {cases_file or default_cases_path()}")
        for key, name in _NAMES.items():
            value = s[key]
            shown = "n/a" if value is None else f"{value:.3f}"
            need = f"needs >= {THRESHOLDS[key]:g}: {'ok' if s['checks'][key] else 'MISSED'}" if key in THRESHOLDS else ""
            click.echo(f"  {name:38s} {shown:>6s}  {need}")
        bad = [r for r in report.cases if _failing(r)]
        if bad:
            click.echo(f"Cases judged wrong ({len(bad)}; attempt count, a score on the wrong side of 50, "
                       "or no improvement):")
            for r in bad:
                got = r["error"] or f"{r['attempts']} attempt(s), scores {r['scores']}"
                click.echo(f"  {r['id']}: expected {r['expected_attempts']} attempt(s) "
                           f"({r['expected_first']} -> {r['expected_last']}), got {got}")
        click.echo("PASSED" if s["passed"] else "BELOW THE THRESHOLDS")
    if not s["passed"]:
        sys.exit(EXIT_WEAK)


def _failing(row: dict) -> bool:
    """A case the judge got wrong: attempt count, first score on the wrong side of 50, or no improvement."""
    if row["error"] or not row["count_ok"]:
        return True
    first = row["scores"][0] if row["scores"] else None
    if first is not None and row["expected_first"] is not None and (first >= 50) != (row["expected_first"] == "on"):
        return True
    last = row["scores"][-1] if row["scores"] else None
    if last is not None and row["expected_last"] is not None and (last >= 50) != (row["expected_last"] == "on"):
        return True
    return row["expected_first"] == "off" and row["expected_last"] == "on" and row["expected_attempts"] > 1 \
        and not row["improved"]
