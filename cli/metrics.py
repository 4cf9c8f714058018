"""`esr-local metrics`: the paper's ESR metrics per run and condition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from esr_local.metrics import METRIC_KEYS, flagged_latents, metrics_for_store

from .options import db_option, json_option, open_store

# (header, value key, SE key, decimals) for the table view.
_COLUMNS = (
    ("multi-attempt %", "multi_attempt_rate", "multi_attempt_rate_se", 1),
    ("ESR %", "esr_rate", "esr_rate_se", 1),
    ("improved|multi %", "improvement_rate", "improvement_rate_se", 1),
    ("first score", "mean_first_score", "mean_first_score_se", 1),
    ("score gain", "mean_score_improvement", "mean_score_improvement_se", 1),
)


def _cell(value: float | None, se: float | None, decimals: int) -> str:
    if value is None:
        return "-"
    text = f"{value:.{decimals}f}"
    return text if se is None else f"{text} ± {se:.{decimals}f}"


def format_metrics_table(rows: list[dict[str, Any]]) -> str:
    """Metrics rows (run_id, condition and METRIC_KEYS) as an aligned text table."""
    header = ["run", "condition", "n", "multi", "improved"] + [c[0] for c in _COLUMNS]
    lines = [header]
    for row in rows:
        lines.append(
            [row["run_id"], row["condition"]]
            + [str(row[k]) for k in ("n", "multi_attempt_count", "improved_count")]
            + [_cell(row[key], row[se], decimals) for _, key, se, decimals in _COLUMNS]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def metrics_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics rows reduced to run_id, condition and exactly METRIC_KEYS (the --json shape)."""
    return [{"run_id": r["run_id"], "condition": r["condition"], **{k: r[k] for k in METRIC_KEYS},
             **{k: r[k] for k in ("judge_key", "flagged_latents", "excluded_latents") if k in r}} for r in rows]


@click.command(name="metrics")
@click.argument("runs", nargs=-1, metavar="[RUN]...")
@click.option("--judge", "judge", default=None,
              help="Count this judge's judgments (a judge key, key prefix or the --judge spec it graded with); "
                   "default: each run's own judge.")
@click.option("--exclude-flagged", is_flag=True, help="Leave out latents flagged by calibration (boost at a bound, "
              "or re-measured score more than 0.15 from the target).")
@click.option("--paired", is_flag=True, help="Compare two runs' paired trials: RUN_A[:CONDITION] RUN_B[:CONDITION] "
              "(e.g. a run and its ablation replay): B - A in multi-attempt and ESR rates with a 95% interval.")
@db_option
@json_option
def metrics_command(runs: tuple[str, ...], judge: str | None, exclude_flagged: bool, db: Path | None, json_: bool,
                    paired: bool = False) -> None:
    """Multi-attempt rate, ESR rate, conditional improvement rate and mean scores (with standard errors)
    per run and condition. RUN is a run id or a unique prefix; without RUN, every run is shown.

    A trial counts only when it, its latent and its judgment have no error and at least one attempt has a
    score. Rates are percentages; '-' (null in JSON) marks values that are undefined.
    """
    if paired:
        from esr_local.paired import paired_cli

        with open_store(db, create=False) as store:
            click.echo(paired_cli(store, runs, judge=judge, exclude_flagged=exclude_flagged, as_json=json_))
        return
    with open_store(db, create=False) as store:
        rows = metrics_for_store(store, list(runs) if runs else None, judge=judge, exclude_flagged=exclude_flagged)
        flagged = flagged_latents(store, sorted({r["run_id"] for r in rows}))
    if json_:
        click.echo(json.dumps(metrics_records(rows), indent=2))
        return
    if not rows:
        click.echo("No trials recorded yet.", err=True)
        return
    click.echo(format_metrics_table(rows))
    for f in flagged:
        what = "left out" if exclude_flagged else "counted; --exclude-flagged leaves it out"
        click.echo(f"flagged: run {f['run_id']} latent {f['latent']} ({f['label']}): {f['flags']} [{what}]")


commands: list[click.Command] = [metrics_command]
