"""`esr-local calibrate`: find each latent's boost (first-attempt judge score near the target), cached."""

from __future__ import annotations

import json
import sys

import click

from esr_local.paths import default_db_path
from esr_local.runs import RunOptions, create_run, execute_run
from esr_local.runs.create import check_options
from esr_local.store_files import store_kept_only_with_a_run
from esr_local.sampling import MAX_SEED

from .common import calibration_options, finite_float, model_options
from .options import db_option
from .run import judge_options


@click.command(name="calibrate")
@click.option("--latent", "-l", "latents", type=click.IntRange(min=0), multiple=True, required=True, help="Latent (repeatable).")
@click.option("--sae", default=None, help="SAE source (default: the catalog's); calibrated at its own layer unless --layer.")
@click.option("--labels", default=None, type=click.Path(), help="Labels file for the SAE.")
@click.option("--layer", type=int, default=None, help="Steering layer (default: a given SAE's own, else the catalog's).")
@click.option("--prompts", "prompts_file", default=None, type=click.Path(), help="Prompt file (default: the shipped set).")
@click.option("--target-score", type=click.FloatRange(0, 1), callback=finite_float, default=0.30, show_default=True)
@click.option("--steps", "calibration_steps", type=click.IntRange(1), default=10, show_default=True)
@click.option("--samples", "calibration_samples", type=click.IntRange(1), default=None, help="Prompts averaged per step.")
@click.option("--max-tokens", "calibration_max_tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.option("--temperature", "-t", type=float, default=None, help="Sampling temperature (paper: 0.6).")
@click.option("--repetition-penalty", type=float, default=None, help="Repetition penalty over the whole context (paper: 1.1).")
@calibration_options
@judge_options
@model_options
@db_option
def calibrate_cmd(db, as_json, latents, **kw):
    """Calibrate latents by probabilistic bisection; results are cached per model, SAE, latent, layer, judge and settings."""
    echo = lambda s: click.echo(s, err=True)  # noqa: E731
    opts = RunOptions(latents=list(latents), calibrate_only=True, **kw)
    check_options(opts)  # before the database is opened; one this command creates goes if the run is not stored
    with store_kept_only_with_a_run(db if db is not None else default_db_path()) as store:
        run_id, judge = create_run(store, opts, ["esr-local", *sys.argv[1:]], echo=echo)
    out = execute_run(store, run_id, judge=judge, echo=echo)
    rows = store.latents(run_id)
    if as_json:
        click.echo(json.dumps({"run_id": run_id, "layer": out["layer"], "latents": rows, "summary": out}, indent=2, default=str))
        return
    for r in rows:
        status = r.get("error") or f"boost {r['boost']:g} ({r['boost_source']})"
        if r.get("flags"):
            status += f"  FLAGGED: {r['flags']}"
        click.echo(f"latent {r['latent']} ({r['label']}): {status}")


commands = [calibrate_cmd]
