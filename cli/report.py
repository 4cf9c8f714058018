"""`esr-local report`: a self-contained HTML report (figures, metrics, example trials, provenance)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import folder_path
from .options import db_option, json_option, open_store


@click.command(name="report")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--output", "-o", "output", required=True, type=click.Path(file_okay=False),
              callback=folder_path, help="Folder for index.html and report.json (created if missing; files in it are replaced).")
@click.option("--title", default=None, help="Page title (default: the run ids).")
@click.option("--judge", "judge", default=None,
              help="Count this judge's judgments (as for `esr-local metrics --judge`); default: each run's own judge.")
@click.option("--exclude-flagged", is_flag=True, help="Leave out latents flagged by calibration (as `metrics --exclude-flagged`).")
@db_option
@json_option
def report_command(runs: tuple[str, ...], output: Path, title: str | None, judge: str | None, exclude_flagged: bool,
                   db: Path | None, json_: bool) -> None:
    """Write an HTML report of RUN... (ids or unique prefixes) to a folder: rates with error bars, score
    distributions, boost sweeps, meta-prompt comparisons, calibration curves, example trials, settings and
    provenance, flagged latents and failures. Runs of one model are pooled. Works offline; open
    OUTPUT/index.html in any browser. Needs matplotlib (`pip install 'esr-local[report]'`)."""
    from esr_local.report import build_report

    with open_store(db, create=False) as store:
        summary = build_report(store, list(runs), output, title=title, judge=judge, exclude_flagged=exclude_flagged)
    if json_:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(summary["index"])


@click.command(name="datasette-metadata")
@db_option
def datasette_metadata_command(db: Path | None) -> None:
    """Print Datasette metadata for the database (table and column descriptions, canned queries: which
    latents made the model restart, scores by boost level, judge agreement, failures). Use it as
    `esr-local datasette-metadata > meta.json && datasette esr.db -m meta.json`."""
    from esr_local.paths import default_db_path
    from esr_local.report.datasette import datasette_metadata

    path = db if db is not None else default_db_path()
    with open_store(path, create=False):  # the database must exist (and is migrated, so the views are there)
        pass
    click.echo(json.dumps(datasette_metadata(path), indent=2))


commands: list[click.Command] = [report_command, datasette_metadata_command]
