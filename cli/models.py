"""`esr-local models`: the model catalog."""

from __future__ import annotations

import json

import click

from esr_local.catalog import DEFAULT_MODEL, load_catalog


@click.command(name="models")
@click.option("--catalog", default=None, type=click.Path(), help="Extra catalog file or folder (also ESR_LOCAL_CATALOG).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_cmd(catalog, as_json):
    """List catalog models: GGUF source, chat handling, SAE, layers and paper defaults."""
    entries = load_catalog(catalog)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries.values()], indent=2))
        return
    for e in entries.values():
        d = e.defaults
        star = " (default)" if e.name == DEFAULT_MODEL else ""
        click.echo(f"{e.name}{star}: {e.description}")
        click.echo(f"  gguf:     {e.gguf.describe()}")
        click.echo(f"  chat:     {'chat template from the GGUF' if e.chat == 'gguf' else 'raw completion only'}")
        click.echo(f"  sae:      {e.sae.source} ({e.sae.family})")
        click.echo(f"  layers:   {e.n_layer} blocks, d_model {e.d_model}; features at {e.sae.feature_layer}, steering at {e.sae.steering_layer}")
        click.echo(
            f"  defaults: boost prior N({d.boost_prior_mean:g}, {d.boost_prior_std:g}) on [{d.boost_lower:g}, {d.boost_upper:g}], "
            f"{d.calibration_samples_per_step} prompt(s)/step, repetition penalty {d.repetition_penalty:g}, T {d.temperature:g}, {d.max_tokens} tokens"
        )
        click.echo("")


commands = [models_cmd]
