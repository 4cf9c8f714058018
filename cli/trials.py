"""`esr-local trials`: read a run's responses with their attempts and scores."""

from __future__ import annotations

import json
from pathlib import Path

import click

from esr_local.trials_view import format_trials, trial_records

from .options import db_option, json_option, open_store


@click.command(name="trials")
@click.argument("run", metavar="RUN")
@click.option("--condition", "-c", default=None, help="Only this condition (steered, baseline, meta:<id>, sweep:<k>...).")
@click.option("--latent", "-l", type=click.IntRange(min=0), default=None, help="Only this latent.")
@click.option("--multi-attempt", is_flag=True, help="Only trials the metrics count as multi-attempt.")
@click.option("--judge", "judge", default=None,
              help="Show this judge's judgments (a judge key, key prefix or --judge spec); default: the run's own judge.")
@db_option
@json_option
def trials_command(run: str, condition: str | None, latent: int | None, multi_attempt: bool, judge: str | None,
                   db: Path | None, json_: bool) -> None:
    """Show the trials of RUN (an id or unique prefix): prompt, each attempt the judge found with its score,
    and how the metrics count the trial (improved = more than one scored attempt, last score > first)."""
    with open_store(db, create=False) as store:
        records = trial_records(store, run, condition=condition, latent=latent, multi_attempt=multi_attempt,
                                judge=judge)
    if json_:
        click.echo(json.dumps(records, indent=2))
    elif not records:
        click.echo("No trials match.", err=True)
    else:
        click.echo(format_trials(records))


commands: list[click.Command] = [trials_command]
