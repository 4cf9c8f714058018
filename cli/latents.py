"""`esr-local latents search|show|select|sets|RUN`: labels of an SAE, the paper's latent selection, a run's latents."""

from __future__ import annotations

import json

import click

from esr_local.activations import feature_layer
from esr_local.latent_labels import all_labels, attach_catalog_labels, is_placeholder, search_labels
from esr_local.latent_sets import list_latent_sets, save_latent_set
from esr_local.model_files import resolve_model
from esr_local.steering import open_sae, sae_display_source

from .options import db_option, open_store


def _sae_options(f):
    f = click.option("--catalog", default=None, type=click.Path(), help="Extra catalog file or folder.")(f)
    f = click.option("--model", "-m", default=None, help="Catalog name or .gguf path (default: the embedded model).")(f)
    f = click.option("--labels", default=None, type=click.Path(), help="Labels file (CSV index_in_sae,label or Neuronpedia jsonl).")(f)
    f = click.option("--sae", default=None, help="SAE source (default: the model's catalog SAE).")(f)
    return f


def _open(sae, labels, model, catalog):
    resolved = resolve_model(model, None, catalog)
    entry = resolved.entry
    sae_obj = attach_catalog_labels(open_sae(sae, entry, labels), entry, explicit=bool(sae or labels))
    return resolved, entry, sae_obj


def _open_labels_only(sae, labels, model, catalog):
    """The SAE and catalog entry without fetching the model's weights (labels need none)."""
    from esr_local.catalog import DEFAULT_MODEL, get_entry

    entry = None if (model or "").endswith(".gguf") else get_entry(model or DEFAULT_MODEL, catalog)
    sae_obj = attach_catalog_labels(open_sae(sae, entry, labels), entry, explicit=bool(sae or labels))
    return None, entry, sae_obj


class LatentsGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, is a run (`latents RUN` = `latents run RUN`)."""

    def resolve_command(self, ctx, args):  # noqa: D102
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


@click.group(name="latents", cls=LatentsGroup)
def latents_group() -> None:
    """Search and show SAE latent labels; choose latents as the paper does (`select`); `latents RUN` lists a
    run's latents with their labels, boosts and calibration flags."""


@latents_group.command(name="run")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of the run's latent rows.")
@db_option
def run_latents(db, run_id, as_json):
    """A run's latents: label, boost and where it came from, re-measured score, calibration flags, errors."""
    store = open_store(db, create=False)
    run = store.get_run(run_id)
    rows = store.latents(run["id"])
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    click.echo(f"run {run['id']}: {len(rows)} latent(s)")
    for r in rows:
        boost = "-" if r.get("boost") is None else f"{r['boost']:g} ({r.get('boost_source') or '?'})"
        achieved = "" if r.get("achieved_score") is None else f"  re-measured {r['achieved_score']:.2f}"
        tail = f"  FLAGGED: {r['flags']}" if r.get("flags") else ""
        tail += f"  ERROR: {r['error']}" if r.get("error") else ""
        click.echo(f"  {r['latent']:>6}  {r.get('label') or ''}  boost {boost}{achieved}{tail}")


@latents_group.command(name="search")
@click.argument("text")
@_sae_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {latent, label}.")
def search_cmd(text, sae, labels, model, catalog, as_json):
    """Latents whose label contains TEXT (substring first, then all-words matches)."""
    _, _, sae_obj = _open_labels_only(sae, labels, model, catalog)
    matches = search_labels(all_labels(sae_obj), text)
    if as_json:
        click.echo(json.dumps([{"latent": m.latent, "label": m.label} for m in matches], ensure_ascii=False))
        return
    for m in matches:
        click.echo(f"{m.latent:>7}  {m.label}")
    click.echo(f"# {len(matches)} match(es)", err=True)


@latents_group.command(name="show")
@click.argument("latent", type=click.IntRange(min=0))
@_sae_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(latent, sae, labels, model, catalog, as_json):
    """One latent: its label, decoder row norm and the SAE it belongs to."""
    _, entry, sae_obj = _open_labels_only(sae, labels, model, catalog)
    label = sae_obj.label(latent)
    info = {"latent": latent, "label": label, "placeholder": is_placeholder(label), "row_norm": sae_obj.row_norm(latent),
            "sae": sae_display_source(sae, entry), "family": sae_obj.info.family, "d_sae": sae_obj.d_sae,
            "layer": sae_obj.info.layer, "labels_file": str(sae_obj.labels_path) if sae_obj.labels_path else None,
            "label_source": entry.sae.label_source() if entry is not None and not sae else None}
    if as_json:
        click.echo(json.dumps(info, ensure_ascii=False))
        return
    click.echo(f"latent {latent}: {label if label else '(no label)'}")
    click.echo(f"  decoder row norm {info['row_norm']:.4g}; {info['family']} SAE {info['sae']} ({info['d_sae']} latents, layer {info['layer']})")


@latents_group.command(name="select")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="How many latents to choose.")
@click.option("--name", default=None, help="Name of the stored set (default: <model>-n<N>-seed<SEED>).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the candidate draw.")
@click.option("--judge", "judge_spec", default=None, help="Judge that rates label concreteness (offline, local[:...], openai:M, anthropic[:M]).")
@click.option("--threshold", type=click.FloatRange(0, 100), default=65.0, show_default=True, help="Minimum concreteness.")
@click.option("--relevance", default="strict", show_default=True, help="strict (max exactly 0 on every prompt) or top-k:K.")
@click.option("--prompts", default=None, help="Prompt file (default: the shipped set; `paper` for the paper's).")
@click.option("--layer", type=click.IntRange(min=0), default=None, help="Feature layer (default: the SAE's).")
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads.")
@click.option("--replace", is_flag=True, help="Replace a stored set with the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored set as JSON.")
@_sae_options
@db_option
def select_cmd(n, name, seed, judge_spec, threshold, relevance, prompts, layer, threads, replace, as_json, sae, labels,
               model, catalog, db):
    """Choose N concrete, irrelevant latents (paper §1.3) and store them as a named set for `run --latent-set`."""
    from esr_local.engine import SteeredModel
    from esr_local.prompts import load_prompts
    from esr_local.selection import Relevance, select_latents
    from esr_local.steering import effective_chat_mode

    rel = Relevance.parse(relevance)
    resolved, entry, sae_obj = _open(sae, labels, model, catalog)
    prompt_set = load_prompts(prompts)
    the_layer = feature_layer(sae_obj, entry if not sae else None, layer)
    judge = None
    if judge_spec:
        from esr_local.judge import make_judge

        judge = make_judge(judge_spec)
    lm = SteeredModel(resolved.path, n_ctx=512, n_threads=threads, chat_mode=effective_chat_mode("auto", entry),
                      chat_template=entry.chat_template if entry else None)
    try:
        sel = select_latents(lm, sae_obj, n=n, seed=seed, prompts=prompt_set.prompts, layer=the_layer, judge=judge,
                             threshold=threshold, relevance=rel, echo=lambda m: click.echo(m, err=True))
    finally:
        lm.close()
        if judge is not None:
            judge.close()
    sel.settings.update(prompts_file=prompt_set.path, prompts_sha256=prompt_set.sha256, model_path=str(resolved.path))
    name = name or f"{resolved.name}-n{n}-seed{seed}"
    with open_store(db) as store:
        saved = save_latent_set(store, name, sel, sae=sae_obj, sae_source=sae_display_source(sae, entry) or "",
                                model_name=resolved.name, replace=replace)
    f = saved.funnel
    click.echo(f"candidates {f['candidates']} -> labelled {f['labelled']} -> concrete {f['concrete']} -> "
               f"irrelevant {f['irrelevant']} -> chosen {f['chosen']}" + (f"  ({f['dead']} dead excluded)" if f["dead"] else ""),
               err=True)
    for e in sel.errors:
        click.echo(f"warning: concreteness {e} (scored 0)", err=True)
    if f["chosen"] < n:
        click.echo(f"warning: only {f['chosen']} of {n} latents survived; draw more with another --seed", err=True)
    if as_json:
        click.echo(json.dumps({"id": saved.id, "name": saved.name, "latents": saved.latents,
                               "labels": {str(k): v for k, v in saved.labels.items()}, "funnel": saved.funnel,
                               "settings": saved.settings}, ensure_ascii=False, default=str))
    else:
        click.echo(f"stored latent set {saved.name!r} ({saved.id}): " + ", ".join(map(str, saved.latents)))


@latents_group.command(name="sets")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sets_cmd(db, as_json):
    """The stored latent sets."""
    with open_store(db, create=False) as store:
        sets = list_latent_sets(store)
    if as_json:
        click.echo(json.dumps([{"id": s.id, "name": s.name, "latents": s.latents, "funnel": s.funnel} for s in sets]))
        return
    for s in sets:
        click.echo(f"{s.name:<32} {len(s.latents):>4} latents  {s.sae_source}  {s.created_utc}")


commands = [latents_group]
