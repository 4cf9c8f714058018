"""`esr-local judge RUN --judge SPEC` (re-grade a run's stored responses with another judge) and
`esr-local judge agree RUN --judge A --judge B` (cross-judge agreement, the paper's Experiment 7).
Registered on the `judge` group of cli/judge.py."""

from __future__ import annotations

import json

import click

from esr_local.runs.judging import judge_agreement, regrade_run

from .judge_options import judge_from_options, judge_options
from .options import db_option, open_store


@click.command(name="grade")
@click.argument("run")
@click.option("--retry-failed", is_flag=True, help="Grade again only this judge's failed judgments of the run.")
@judge_options
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def grade_command(run, retry_failed, db, as_json, **judge_kw):
    """Grade the stored responses of RUN with a judge (nothing is regenerated). The judgments are kept
    next to the run's own, keyed by judge; `esr-local metrics RUN --judge SPEC` reads them."""
    with open_store(db, create=False) as store:
        judge = judge_from_options(**judge_kw)
        try:
            out = regrade_run(store, run, judge, judge_kw["judge"], retry_failed=retry_failed,
                              progress=lambda line: click.echo(line, err=True))
        finally:
            judge.close()
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"run {out['run_id']}: {out['judged']} response(s) graded by {out['judge_key']}, {out['failed']} failed")


@click.command(name="agree")
@click.argument("run")
@click.option("--judge", "judges", multiple=True, required=True,
              help="A judge of the run: key, key prefix or the spec it graded with (give exactly two).")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the agreement as JSON.")
def agree_command(run, judges, db, as_json):
    """Agreement of two judges on RUN: multi-attempt detection (paper: > 95%) and, where both see several
    attempts, the direction of improvement (paper: 93-97%)."""
    if len(judges) != 2:
        raise click.UsageError("give exactly two --judge options")
    with open_store(db, create=False) as store:
        out = judge_agreement(store, run, *judges)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    click.echo(f"run {out['run_id']}: {out['n_both']} responses judged by both")
    click.echo(f"  multi-attempt agreement: {pct(out['multi_attempt_agreement'])} "
               f"(A finds {out['multi_attempt_a']}, B finds {out['multi_attempt_b']})")
    click.echo(f"  improvement-direction agreement: {pct(out['direction_agreement'])} over {out['n_multi_both']} "
               "responses both call multi-attempt")


commands = [grade_command, agree_command]
