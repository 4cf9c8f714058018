"""`esr-local trace TRIAL`: per-token activations of chosen latents along a trial's response."""

from __future__ import annotations

import click

from .options import db_option, open_store


@click.command(name="trace")
@click.argument("trial")
@click.option("--latents", "latents", default="", help="Comma-separated latents (default: the trial's steered latent).")
@click.option("--unsteered", is_flag=True, help="Teacher-force without the trial's steering vector.")
@click.option("--json", "as_json", is_flag=True, help="Print the trace as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the trace as CSV (one row per response token).")
@db_option
def trace_cmd(trial, latents, unsteered, as_json, as_csv, db):
    """Teacher-force a trial's response and print each token's activations, with attempt boundaries."""
    from esr_local.errors import UserInputError
    from esr_local.traces import trace_trial

    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    try:
        ids = [int(x) for x in latents.split(",") if x.strip()]
    except ValueError:
        raise UserInputError(f"--latents must be comma-separated integers, got {latents!r}") from None
    with open_store(db, create=False) as store:
        tr = trace_trial(store, trial, ids, steered=not unsteered)
    if as_json:
        click.echo(tr.to_json())
    elif as_csv:
        click.echo(tr.to_csv(), nl=False)
    else:
        click.echo(f"# trial {tr.trial_id} layer {tr.layer} {'steered x%g' % tr.boost if tr.steered else 'unsteered'}")
        click.echo("pos\tattempt\t" + "\t".join(f"L{j}" for j in tr.latents) + "\tpiece")
        last = None
        for r in tr.records():
            if r["attempt"] != last:
                click.echo(f"--- attempt {r['attempt']} ---" if r["attempt"] >= 0 else "--- outside attempts ---")
                last = r["attempt"]
            click.echo(f"{r['position']}\t{r['attempt']}\t" + "\t".join(f"{r[f'latent_{j}']:.3f}" for j in tr.latents)
                       + f"\t{r['piece']!r}")


commands = [trace_cmd]
