"""`esr-local runs`: list the runs in the experiment log."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import db_option, json_option, open_store

_FIELDS = ("id", "created_utc", "finished_utc", "status", "experiment", "model_name", "n_trials", "error")


@click.command(name="runs")
@db_option
@json_option
def runs_command(db: Path | None, json_: bool) -> None:
    """List runs, oldest first: id, creation time, status, experiment, model and number of trials."""
    with open_store(db, create=False) as store:
        runs = [{k: run.get(k) for k in _FIELDS} for run in store.list_runs()]
    if json_:
        click.echo(json.dumps(runs, indent=2))
        return
    if not runs:
        click.echo("No runs yet.", err=True)
        return
    header = ("id", "created", "status", "experiment", "model", "trials")
    lines = [header] + [
        (r["id"], (r["created_utc"] or "")[:19].replace("T", " "), r["status"], r["experiment"] or "-",
         r["model_name"] or "-", str(r["n_trials"]))
        for r in runs
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = (c.rjust(w) if i == 5 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
        click.echo("  ".join(cells).rstrip())


commands: list[click.Command] = [runs_command]
