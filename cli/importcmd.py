"""`esr-local import`: load a result file of the paper's reference implementation."""

from __future__ import annotations

import json
from pathlib import Path

import click

from esr_local.importer import import_reference, read_reference
from esr_local.metrics import metrics_for_store

from .metrics import format_metrics_table, metrics_records
from .options import db_option, json_option, open_store


@click.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@json_option
def import_command(file: Path, db: Path | None, json_: bool) -> None:
    """Import FILE, a JSON result file written by the ESR reference implementation
    (experiment_config + results_by_feature), as a new run; prints the run id and its metrics."""
    parsed = read_reference(file)  # checked first so a missing or malformed file does not create an empty database
    with open_store(db) as store:
        run_id = import_reference(store, parsed)
        rows = metrics_for_store(store, [run_id])
    if json_:
        click.echo(json.dumps({"run_id": run_id, "metrics": metrics_records(rows)}, indent=2))
        return
    click.echo(run_id)
    if rows:
        click.echo(format_metrics_table(rows))


commands: list[click.Command] = [import_command]
