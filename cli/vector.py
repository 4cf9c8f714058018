"""`esr-local vector export|inspect|build-dictionary`: GGUF control vectors from SAE latents."""

from __future__ import annotations

import json
from pathlib import Path

import click

from esr_local.catalog import get_entry
from esr_local.errors import UserInputError
from esr_local.paths import default_vector_out_dir
from esr_local.steering import choose_layer, open_sae, pair_terms, sae_display_source, vector_for_terms
from esr_local.vectors import describe, read_gguf, write_gguf

from .common import finite_float, folder_path, non_empty


@click.group(name="vector")
def vector_group() -> None:
    """Export and inspect llama.cpp control vectors made from SAE latents."""


@vector_group.command(name="export")
@click.option("--sae", default=None, callback=non_empty, help="SAE source: local path or hf://owner/repo/path (default: --model's catalog SAE).")
@click.option("--model", "-m", default=None, callback=non_empty, help="Catalog model whose SAE, steering layer and name to use.")
@click.option("--latent", "-l", "latents", type=click.IntRange(min=0), multiple=True, required=True, help="Latent index (repeatable).")
@click.option("--scale", "-s", "scales", type=float, multiple=True, required=True, callback=finite_float,
              help="Scale per latent (repeatable, or one for all), raw SAE units.")
@click.option("--layer", type=int, default=None, help="llama.cpp layer (direction.N = output of block N).")
@click.option("--labels", default=None, type=click.Path(), help="Labels file for the SAE.")
@click.option("--model-hint", default=None, help="controlvector.model_hint (default: the catalog architecture).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Output .gguf (default: ./vectors/...).")
@click.option("--catalog", default=None, type=click.Path(), help="Extra catalog file.")
def vector_export(sae, model, latents, scales, layer, labels, model_hint, output, catalog):
    """Write scale x W_dec[latent] (summed over latents) as a GGUF control vector."""
    entry = get_entry(model, catalog) if model else None
    if not sae and not entry:
        raise click.UsageError("give --sae or --model (whose catalog SAE is used)")
    sae_obj = open_sae(sae, entry, labels)
    # Without a model the SAE itself sets the width and any layer >= 1 is accepted.
    n_layer = entry.n_layer if entry else None
    layer = choose_layer(layer, entry, sae_obj, n_layer)
    terms = pair_terms(tuple(latents), tuple(scales), 1.0)
    hint = model_hint or (entry.architecture if entry else "")
    cv = vector_for_terms(sae_obj, terms, layer, hint, entry.d_model if entry else sae_obj.d_model,
                          entry.name if entry else "the SAE")
    cv.provenance["sae_source"] = sae_display_source(sae, entry)
    if entry:
        cv.provenance["model"] = entry.name
    if output is None:
        stem = Path(str(cv.provenance["sae_source"]).rstrip("/")).name or "sae"
        ids = "-".join(f"{t.latent}x{t.scale:g}" for t in terms)
        output = default_vector_out_dir() / f"{stem}-L{layer}-{ids}.gguf"
    path = write_gguf(cv, output)
    click.echo(str(path))


@vector_group.command(name="inspect")
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def vector_inspect(file, as_json):
    """Show a control vector's layers, norms and provenance."""
    info = describe(read_gguf(file), file)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"file:        {info['path']}")
    click.echo(f"model hint:  {info['model_hint']}")
    click.echo(f"n_embd:      {info['n_embd']}")
    for layer in info["layers"]:
        click.echo(f"direction.{layer}: norm {info['norms'][str(layer)]:.4f}")
    prov = info["provenance"]
    if prov.get("latents"):
        click.echo(f"SAE:         {prov.get('sae_source')} ({prov.get('sae_family')})")
        for lat, sc, lab, nrm in zip(prov["latents"], prov["scales"], prov.get("labels", []), prov.get("row_norms", [])):
            click.echo(f"  latent {lat} x {sc:g}  |W_dec| {nrm:.4f}  {lab}")
    for key in ("created_utc", "esr_local_version"):
        if key in prov:
            click.echo(f"{key}: {prov[key]}")


@vector_group.command(name="build-dictionary")
@click.option("--model", "-m", default=None, help="GGUF path or catalog name (default: the embedded SmolLM2).")
@click.option("--layer", type=int, default=None, help="Layer to read (default: the catalog's steering layer).")
@click.option("--concepts", type=click.Path(exists=True, dir_okay=False), default=None, help="Concepts TOML (default: the shipped one).")
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True, callback=folder_path,
              help="Output folder (SAELens layout).")
def vector_build_dictionary(model, layer, concepts, output):
    """Rebuild a contrastive concept dictionary (the embedded default's recipe) from text."""
    from esr_local.dictionary import build_concept_dictionary
    from esr_local.model_files import resolve_model

    resolved = resolve_model(model)
    if layer is None:
        if not (resolved.entry and resolved.entry.sae.steering_layer):
            raise UserInputError("pass --layer N for a model without a catalog steering layer")
        layer = resolved.entry.sae.steering_layer
    path = build_concept_dictionary(resolved.path, int(layer), output, concepts_file=concepts)
    click.echo(str(path))


commands = [vector_group]
