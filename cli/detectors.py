"""`esr-local detectors find`: off-topic detector latents (paper §3.1), stored as a named set."""

from __future__ import annotations

import json

import click

from esr_local.activations import feature_layer
from esr_local.model_files import resolve_model
from esr_local.steering import effective_chat_mode, open_sae, sae_display_source

from .options import db_option, open_store


@click.group(name="detectors")
def detectors_group() -> None:
    """Find off-topic detector latents (mismatched prompt/response pairs) and store them for ablation runs."""


@detectors_group.command(name="find")
@click.option("--name", default=None, help="Name of the stored set (default: <model>-detectors-seed<SEED>).")
@click.option("--prompts", default=None, help="Prompt file (default: the shipped set; `paper` for the paper's).")
@click.option("--limit", type=click.IntRange(min=2), default=None, help="Use only the first N prompts.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of responses and derangement.")
@click.option("--rule", type=click.Choice(["strict", "auc"]), default="strict", show_default=True,
              help="Which ranking forms the stored set: strict (0 on matched, >= --min-active on mismatched) or auc.")
@click.option("--min-active", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Strict rule: fraction of mismatched pairs a detector must fire on.")
@click.option("--top", type=click.IntRange(min=1), default=50, show_default=True, help="How many latents the AUC ranking keeps.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=128, show_default=True, help="Length of each unsteered response.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Sampling temperature of the responses.")
@click.option("--layer", type=click.IntRange(min=0), default=None, help="Feature layer (default: the SAE's).")
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads.")
@click.option("--replace", is_flag=True, help="Replace a stored set with the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored set as JSON.")
@click.option("--sae", default=None, help="SAE source (default: the model's catalog SAE).")
@click.option("--labels", default=None, type=click.Path(), help="Labels file for the SAE.")
@click.option("--model", "-m", default=None, help="Catalog name or .gguf path (default: the embedded model).")
@click.option("--catalog", default=None, type=click.Path(), help="Extra catalog file or folder.")
@db_option
def find_cmd(name, prompts, limit, seed, rule, min_active, top, max_tokens, temperature, layer, threads, replace,
             as_json, sae, labels, model, catalog, db):
    """Rank latents that fire on mismatched (prompt, response) pairs and never on matched ones; store the set."""
    from esr_local.detectors import find_detectors, save_detector_set
    from esr_local.engine import SteeredModel
    from esr_local.prompts import load_prompts
    from esr_local.sampling import SamplingParams

    resolved = resolve_model(model, None, catalog)
    entry = resolved.entry
    sae_obj = open_sae(sae, entry, labels)
    prompt_set = load_prompts(prompts)
    chosen = list(prompt_set.prompts)[:limit] if limit else list(prompt_set.prompts)
    the_layer = feature_layer(sae_obj, entry if not sae else None, layer)
    sampling = SamplingParams(temperature=temperature, max_tokens=max_tokens)
    lm = SteeredModel(resolved.path, n_ctx=1024, n_threads=threads, chat_mode=effective_chat_mode("auto", entry),
                      chat_template=entry.chat_template if entry else None)
    try:
        search = find_detectors(lm, sae_obj, chosen, layer=the_layer, sampling=sampling, seed=seed,
                                min_active=min_active, top=top, echo=lambda m: click.echo(m, err=True))
    finally:
        lm.close()
    name = name or f"{resolved.name}-detectors-seed{seed}"
    with open_store(db) as store:
        saved = save_detector_set(store, name, search, rule=rule, sae=sae_obj,
                                  sae_source=sae_display_source(sae, entry) or "", model_name=resolved.name,
                                  extra_settings={"prompts_file": prompt_set.path, "prompts_sha256": prompt_set.sha256,
                                                  "model_path": str(resolved.path)}, replace=replace)
    if as_json:
        click.echo(json.dumps({"id": saved.id, "name": saved.name, "rule": saved.rule, "latents": saved.latents,
                               "strict": saved.strict, "by_auc": saved.by_auc, "stats": saved.stats,
                               "layer": saved.feature_layer}, default=str))
    else:
        click.echo(f"stored detector set {saved.name!r} ({saved.id}), rule {rule}: " + (", ".join(map(str, saved.latents)) or "(empty)"))
        click.echo(f"strict: {len(saved.strict)} latents; top AUC: " +
                   ", ".join(f"{s['latent']} ({s['auc']:.2f})" for s in sorted(saved.stats, key=lambda s: -s["auc"])[:10]))


commands = [detectors_group]
