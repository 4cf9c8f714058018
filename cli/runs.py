"""`esr-local runs`: list the runs in the experiment log."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import db_option, json_option, open_store

_FIELDS = ("id", "created_utc", "finished_utc", "status", "experiment", "model_name", "n_trials", "error",
           "failed_calibrations", "failed_generations", "failed_judgments", "flagged_latents", "lease_pid", "lease_host")
_COUNTS = ("failed_calibrations", "failed_generations", "failed_judgments", "flagged_latents")


def _row(run: dict) -> dict:
    """A run as listed: the display status (interrupted / running for a started run) and failure counts."""
    summary = json.loads(run.get("summary_json") or "{}")
    out = {k: run.get(k) for k in _FIELDS if k not in _COUNTS}
    out["status"] = run.get("display_status") or run["status"]
    out.update({k: summary.get(k) for k in _COUNTS})
    return out


@click.command(name="runs")
@db_option
@json_option
def runs_command(db: Path | None, json_: bool) -> None:
    """List runs, oldest first: id, creation time, status, experiment, model, number of trials and the
    failed calibrations/generations/judgments of the last execution. A run whose process died shows as
    `interrupted` (resume it with `esr-local run --resume ID`); one still executing as `running`."""
    with open_store(db, create=False) as store:
        runs = [_row(run) for run in store.list_runs()]
    if json_:
        click.echo(json.dumps(runs, indent=2))
        return
    if not runs:
        click.echo("No runs yet.", err=True)
        return
    header = ("id", "created", "status", "experiment", "model", "trials", "failed cal/gen/judge", "flagged")
    lines = [header] + [
        (r["id"], (r["created_utc"] or "")[:19].replace("T", " "), r["status"], r["experiment"] or "-",
         r["model_name"] or "-", str(r["n_trials"]),
         "-" if r["failed_generations"] is None else
         f"{r['failed_calibrations']}/{r['failed_generations']}/{r['failed_judgments']}",
         str(r["flagged_latents"] or 0))
        for r in runs
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = (c.rjust(w) if i >= 5 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
        click.echo("  ".join(cells).rstrip())


commands: list[click.Command] = [runs_command]
