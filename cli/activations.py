"""`esr-local activations`: per-token activations of SAE latents over texts, read through llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import click

from esr_local.activations import feature_layer, latent_activations, strongest_first
from esr_local.engine import SteeredModel
from esr_local.errors import MissingResourceError, UserInputError
from esr_local.latent_labels import attach_catalog_labels
from esr_local.model_files import resolve_model
from esr_local.steering import effective_chat_mode, open_sae, sae_display_source


def _read_texts(text: str | None, texts_file: str | None) -> list[str]:
    if (text is None) == (texts_file is None):
        raise click.UsageError("give exactly one of --text or --texts FILE")
    if text is not None:
        return [text]
    path = Path(texts_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MissingResourceError(f"texts file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"texts file {path} could not be read as UTF-8 text ({exc})") from None
    out = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not out:
        raise UserInputError(f"texts file {path} has no texts (one per line; # starts a comment)")
    return out


def _table(result: dict, top: int, labels: dict[str, str | None]) -> str:
    ids = list(result["max"])
    head = f"# {result['mode']} text, layer {result['layer']}: {result['text'][:70]!r}"
    lines = [head]
    for i in ids:
        lab = labels.get(i)
        lines.append(f"#   latent {i}: max {result['max'][i]:.4g}" + (f"  ({lab})" if lab else ""))
    rows = strongest_first(result["tokens"])
    shown = [t for t in rows if max(t["activations"].values()) > 0][:top]
    lines.append(f"{'pos':>5} {'token':<18} " + " ".join(f"{i:>10}" for i in ids))
    for t in shown:
        lines.append(f"{t['index']:>5} {json.dumps(t['text'])[:18]:<18} "
                     + " ".join(f"{t['activations'][i]:>10.4g}" for i in ids))
    zero = sum(1 for t in rows if max(t["activations"].values()) <= 0)
    hidden = len(rows) - len(shown) - zero
    lines.append(f"# {len(rows)} tokens: {len(rows) - zero} with an active latent"
                 + (f" ({hidden} not shown, see --top)" if hidden else "") + f", {zero} with none")
    return "\n".join(lines)


@click.command(name="activations")
@click.option("--sae", default=None, help="SAE source (default: the model's catalog SAE or shipped dictionary).")
@click.option("--labels", default=None, type=click.Path(), help="Labels file for the SAE.")
@click.option("--latent", "-l", "latents", type=click.IntRange(min=0), multiple=True, required=True,
              help="Latent to read (repeatable).")
@click.option("--text", default=None, help="The text (a user prompt in chat mode).")
@click.option("--texts", "texts_file", default=None, type=click.Path(dir_okay=False), help="File with one text per line.")
@click.option("--response", default=None, help="A response read after the prompt (teacher-forced).")
@click.option("--layer", type=click.IntRange(min=0), default=None, help="Layer to read (default: the SAE's feature layer).")
@click.option("--model", "-m", default=None, help="Catalog name or .gguf path (default: the embedded SmolLM2-135M-Instruct).")
@click.option("--catalog", default=None, type=click.Path(), help="Extra catalog file or folder.")
@click.option("--chat-mode", type=click.Choice(["auto", "chat", "raw"]), default="auto", show_default=True,
              help="chat: the user turn in the chat template (no generation prompt); raw: the text alone.")
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads.")
@click.option("--top", default=20, show_default=True, type=click.IntRange(1), help="Tokens shown per text (table only).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {\"tokens\": [...]} per text.")
def activations_cmd(sae, labels, latents, text, texts_file, response, layer, model, catalog, chat_mode, threads, top, as_json):
    """Per-token activations of SAE latents at the SAE's feature layer (no steering)."""
    texts = _read_texts(text, texts_file)
    resolved = resolve_model(model, None, catalog)
    entry = resolved.entry
    sae_obj = attach_catalog_labels(open_sae(sae, entry, labels), entry, explicit=bool(sae or labels))
    the_layer = feature_layer(sae_obj, entry if not sae else None, layer)
    lm = SteeredModel(resolved.path, n_ctx=512, n_threads=threads, chat_mode=effective_chat_mode(chat_mode, entry),
                      chat_template=entry.chat_template if entry else None)
    try:
        results = latent_activations(lm, sae_obj, latents, texts, layer=the_layer,
                                     responses=[response] * len(texts) if response is not None else None)
    finally:
        lm.close()
    if as_json:
        doc = {"model": resolved.name, "sae": sae_display_source(sae, entry), "layer": the_layer,
               "latents": list(latents), "texts": results}
        if len(results) == 1:
            doc["tokens"] = results[0]["tokens"]
        click.echo(json.dumps(doc, ensure_ascii=False))
        return
    names = {str(i): sae_obj.label(i) for i in latents}
    click.echo("\n\n".join(_table(r, top, names) for r in results))


commands = [activations_cmd]
