"""`esr-local steer`: one steered generation (optionally beside the unsteered one), streamed."""

from __future__ import annotations

import json
import os
import random
import sys

import click

from esr_local.engine import SteeredModel
from esr_local.model_files import resolve_model
from esr_local.steering import (
    choose_layer,
    effective_chat_mode,
    open_sae,
    pair_terms,
    sae_display_source,
    vector_file_fits,
    vector_for_terms,
)
from esr_local.vectors import read_gguf

from .common import SEED, build_sampling, finite_float, model_options, non_empty, sampling_options

DEFAULT_PROMPT = "Explain how to change a bike tire."
_COLORS = {"steered": "\x1b[33m", "unsteered": "\x1b[36m"}  # yellow, cyan
_RESET = "\x1b[0m"


@click.command(name="steer")
@click.option("--latent", "-l", "latents", type=click.IntRange(min=0), multiple=True,
              help="SAE latent to add (repeatable). Default: latent 0 of the model's SAE/dictionary.")
@click.option("--scale", "-s", "scales", type=float, multiple=True, callback=finite_float,
              help="Boost for each --latent, in raw SAE units (one for all, or one each). Default: the catalog's prior mean.")
@click.option("--sae", default=None, callback=non_empty, help="SAE source: local path or hf://owner/repo/path (default: the catalog's).")
@click.option("--labels", default=None, type=click.Path(), help="Labels file for the SAE (CSV index_in_sae,label or Neuronpedia jsonl).")
@click.option("--layer", type=int, default=None, help="llama.cpp layer to steer (= output of block N; default: the catalog's).")
@click.option("--vector", "vector_file", type=click.Path(), default=None, help="Steer with an exported GGUF control vector instead.")
@click.option("--prompt", "-p", default=DEFAULT_PROMPT, show_default=True, callback=non_empty, help="User prompt.")
@click.option("--seed", type=SEED, default=None, help="Sampling seed, 0 to 2^32-1 (default: random, printed).")
@click.option("--compare", is_flag=True, help="Also print the unsteered answer (same seed).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
@click.option("--ablate", "ablate", type=click.IntRange(min=0), multiple=True,
              help="Zero-ablate this SAE latent at the steering layer, every token (repeatable).")
@click.option("--ablate-order", type=click.Choice(["pre", "post"]), default="pre", show_default=True,
              help="Encode the latents to ablate before (pre, the paper's) or after (post) the steering vector is added.")
@click.option("--color/--no-color", "color", default=None,
              help="Colour the steered (yellow) and unsteered (cyan) text (default: on a terminal, unless NO_COLOR is set).")
@model_options
@sampling_options
def steer_cmd(latents, scales, sae, labels, layer, vector_file, prompt, seed, compare, as_json, color, model, quant,
              catalog, n_ctx, threads, gpu_layers, chat_mode, ablate=(), ablate_order="pre", **sampling_kw):
    """Generate an answer while SAE latents are added to the residual stream at one layer."""
    if vector_file:
        given = [name for name, v in (("--latent", latents), ("--sae", sae), ("--labels", labels), ("--layer", layer)) if v not in (None, (), "")]
        if given:
            raise click.UsageError(f"--vector cannot be combined with {'/'.join(given)}: the file fixes the latents and layers")
        if len(scales) > 1:
            raise click.UsageError("--vector takes at most one --scale (it multiplies the whole file)")
        if ablate:
            raise click.UsageError("--ablate needs the SAE (its encoder): use --latent/--sae instead of --vector")
        cv = read_gguf(vector_file)  # checked before the model is loaded
    resolved = resolve_model(model, quant, catalog)
    entry = resolved.entry
    sampling = build_sampling(sampling_kw, entry)
    seed = seed if seed is not None else random.randint(0, 1_000_000)
    lm = SteeredModel(resolved.path, n_ctx=n_ctx, n_threads=threads, n_gpu_layers=gpu_layers,
                      chat_mode=effective_chat_mode(chat_mode, entry), chat_template=entry.chat_template if entry else None)
    if vector_file:
        vector_file_fits(cv, lm.n_embd, lm.n_layer, vector_file)
        if scales:
            cv = cv.scaled(scales[0])
        desc = {"vector_file": str(vector_file), "layers": sorted(cv.directions), "scale": scales[0] if scales else 1.0,
                "provenance": cv.provenance}
        header = f"vector {vector_file} (layers {sorted(cv.directions)})"
    else:
        sae_obj = open_sae(sae, entry, labels)
        the_layer = choose_layer(layer, entry, sae_obj, lm.n_layer)
        default_scale = entry.defaults.boost_prior_mean if entry else None
        if not scales and default_scale is None:
            raise click.UsageError("give --scale (no catalog default for this model)")
        terms = pair_terms(tuple(latents) or (0,), tuple(scales), default_scale or 0.0)
        cv = vector_for_terms(sae_obj, terms, the_layer, lm.architecture, lm.n_embd, resolved.name)
        terms = [
            {"latent": t, "scale": s, "label": lab, "row_norm": n}
            for t, s, lab, n in zip(cv.provenance["latents"], cv.provenance["scales"], cv.provenance["labels"], cv.provenance["row_norms"])
        ]
        desc = {"sae_source": sae_display_source(sae, entry), "layer": the_layer, "terms": terms}
        if ablate:
            from esr_local.ablation import Ablation

            lm.set_ablation(Ablation(sae_obj, ablate, the_layer, order=ablate_order))
            desc["ablation"] = lm.ablation.describe()
        header = ", ".join(f"latent {t['latent']} ({t['label'] or 'no label'}) x {t['scale']:g}" for t in terms) + f" at layer {the_layer}"
        if ablate:
            header += f", ablating {list(lm.ablation.latents)} ({ablate_order})"

    record = {"model": resolved.name, "model_path": str(resolved.path), "prompt": prompt, "seed": seed,
              "sampling": sampling.__dict__, **desc}
    stream = None if as_json else (lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    if not as_json:
        click.echo(f"# {resolved.name} | seed {seed} | {header}", err=True)
    runs = [("steered", cv.directions)] + ([("unsteered", None)] if compare else [])
    use_color = not as_json and (color if color is not None else
                                 sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb")
    for name, directions in runs:
        lm.set_directions(directions)
        if not as_json and compare:
            click.echo(click.style(f"\n=== {name} ===", bold=True) if use_color else f"\n=== {name} ===", color=use_color)
        if use_color:  # raw ANSI around the streamed pieces (click.style needs the whole text)
            sys.stdout.write(_COLORS[name])
        if lm.ablation is not None:
            lm.ablation.reset()
        gen = lm.generate(prompt, sampling, seed, on_text=stream)
        if use_color:
            sys.stdout.write(_RESET)
        if not as_json:
            click.echo("")
            click.echo(f"# {gen.completion_tokens} tokens, {gen.tokens_per_s:.1f} tok/s, stop: {gen.stop_reason}", err=True)
        record[name] = {"text": gen.text, "prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                        "stop_reason": gen.stop_reason, "tokens_per_s": round(gen.tokens_per_s, 2)}
        if lm.ablation is not None:
            record[name]["ablation_rows_fired"] = lm.ablation.stats.rows_fired
    lm.close()
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))


commands = [steer_cmd]
