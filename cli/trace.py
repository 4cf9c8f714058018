"""`esr-local trace TRIAL | --run RUN`: per-token activations of chosen latents along responses, stored."""

from __future__ import annotations

import json

import click

from .options import db_option, open_store


def _latents(text: str) -> list[int]:
    from esr_local.errors import UserInputError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserInputError(f"--latents must be comma-separated integers, got {text!r}") from None


def _print_table(tr, computed: bool) -> None:
    how = "computed and stored" if computed else "read back from the store"
    click.echo(f"# trace {tr.trace_id} ({how}): trial {tr.trial_id} layer {tr.layer} "
               f"{'steered x%g' % tr.boost if tr.steered else 'unsteered'}")
    if tr.regions_note:
        click.echo(f"# {tr.regions_note}: the judge's attempts and the restart finder give no cut (regions '-')")
    click.echo("pos\tattempt\tregion\t" + "\t".join(f"L{j}" for j in tr.latents) + "\tpiece")
    last = None
    for r in tr.records():
        if r["attempt"] != last:
            click.echo(f"--- attempt {r['attempt']} ---" if r["attempt"] >= 0 else "--- outside attempts ---")
            last = r["attempt"]
        click.echo(f"{r['position']}\t{r['attempt']}\t{r['region'] or '-'}\t"
                   + "\t".join(f"{r[f'latent_{j}']:.3f}" for j in tr.latents) + f"\t{r['piece']!r}")


@click.command(name="trace")
@click.argument("trial", required=False)
@click.option("--run", "run_id", default=None, help="Trace every judged trial of this run (stored ones are skipped).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="With --run: only its first N judged trials.")
@click.option("--latents", "latents", default="", help="Comma-separated latents (default: each trial's steered latent).")
@click.option("--detector-set", "detector_set", default=None,
              help="Trace the latents of this stored detector set (esr-local detectors find) instead of --latents.")
@click.option("--unsteered", is_flag=True, help="Teacher-force without the trial's steering vector.")
@click.option("--recompute", is_flag=True,
              help="Compute again and replace stored traces. With --run it prints its start time: an interrupted "
                   "recompute resumes (keeping the traces it already replaced) with --recompute-before THAT_TIME.")
@click.option("--recompute-before", "recompute_before", default=None, metavar="UTC",
              help="With --run: replace only the traces stored before this time (resumes an interrupted --recompute).")
@click.option("--json", "as_json", is_flag=True, help="Print the stored trace(s) as JSON.")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print CSV: one row per token (a trial), or one per token and latent (--run).")
@db_option
def trace_cmd(trial, run_id, limit, latents, detector_set, unsteered, recompute, recompute_before, as_json, as_csv,
              db):
    """Teacher-force a trial's response (or every judged trial of a run), store each token's activations
    with attempts and regions marked (tables traces, trace_values; view trace_region_stats), print them."""
    from esr_local.store_values import utc_now
    from esr_local.trace_store import get_trace, parse_recompute_before, trace_run
    from esr_local.traces import long_csv

    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    if (trial is None) == (run_id is None):
        raise click.UsageError("give a TRIAL id or --run RUN (one of them)")
    if limit is not None and run_id is None:
        raise click.UsageError("--limit goes with --run")
    if recompute_before is not None and (run_id is None or recompute):
        raise click.UsageError("--recompute-before goes with --run, without --recompute")
    before = parse_recompute_before(recompute_before) if recompute_before is not None else None
    if recompute and run_id is not None:
        before = utc_now()
        click.echo(f"recomputing the traces stored before {before}; if interrupted, resume with "
                   f"--recompute-before {before}", err=True)
    ids = _latents(latents)
    with open_store(db, create=False) as store:
        if trial is not None:
            res = get_trace(store, trial, ids, steered=not unsteered, recompute=recompute, detector_set=detector_set)
            if as_json:
                click.echo(res.trace.to_json())
            elif as_csv:
                click.echo(res.trace.to_csv(), nl=False)
            else:
                _print_table(res.trace, res.computed)
            return

        def progress(r) -> None:
            click.echo(f"{'traced' if r.computed else 'stored'}\t{r.trace.trace_id}\t{r.trace.trial_id}", err=True)

        results = trace_run(store, run_id, ids, steered=not unsteered, limit=limit, recompute_before=before,
                            detector_set=detector_set, progress=progress)
    computed = sum(r.computed for r in results)
    if as_json:
        click.echo(json.dumps([r.trace.to_dict() for r in results], ensure_ascii=False))
    elif as_csv:
        click.echo(long_csv([r.trace for r in results]), nl=False)
    else:
        for r in results:
            click.echo(f"{r.trace.trace_id}\t{r.trace.trial_id}")
    click.echo(f"{len(results)} trace{'' if len(results) == 1 else 's'} of run {run_id}: {computed} computed, "
               f"{len(results) - computed} already stored",
               err=True)


commands = [trace_cmd]
