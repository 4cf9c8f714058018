"""Glue between a model, its SAE and the layer to steer: resolve them once, check they fit, build vectors."""

from __future__ import annotations

from pathlib import Path

from .catalog import CatalogEntry
from .errors import MissingResourceError, UserInputError
from .layers import check_steerable
from .paths import shipped_vectors_dir
from .vectors import ControlVector, VectorTerm, from_sae

SHIPPED_PREFIX = "shipped:"


def resolve_sae_source(source: str) -> str:
    """Expand `shipped:NAME` to the dictionary folder installed with the package; other sources pass through."""
    if source.startswith(SHIPPED_PREFIX):
        name = source[len(SHIPPED_PREFIX):]
        path = shipped_vectors_dir() / name
        if not path.is_dir():
            raise MissingResourceError(f"shipped dictionary {name!r} not found in {shipped_vectors_dir()}; reinstall esr-local")
        return str(path)
    return source


def open_sae(source: str | None, entry: CatalogEntry | None, labels: str | None = None):
    """Load the SAE given by `--sae`, else the catalog entry's SAE."""
    from .saes import load_sae

    src = source or (entry.sae.source if entry else None)
    if not src:
        raise UserInputError("this model has no catalog SAE; pass --sae (a local path or hf://owner/repo/path)")
    labels = labels or (entry.sae.labels if entry and not source else None)
    return load_sae(resolve_sae_source(src), labels=labels)


def sae_display_source(source: str | None, entry: CatalogEntry | None) -> str | None:
    """The SAE source as the user would write it (kept in provenance, not the expanded install path)."""
    return source or (entry.sae.source if entry else None)


def choose_layer(layer: int | None, entry: CatalogEntry | None, sae, n_layer: int, *, user_sae: bool | None = None) -> int:
    """`--layer`; else, for an SAE the user gave (`user_sae`, or when None: an SAE that is not the catalog
    entry's), the SAE's own hook layer; else the catalog's steering layer, else the SAE's own layer.
    Checked against the model."""
    if user_sae is None:
        user_sae = sae is not None and entry is not None and sae.info.source != entry.sae.source
    if layer is None and user_sae:
        if sae.info.layer is None:
            raise UserInputError(f"the SAE {sae.info.source} does not say which layer it was trained on; pass --layer N")
        layer = int(sae.info.layer)
    if layer is None and entry is not None and entry.sae.steering_layer is not None:
        layer = int(entry.sae.steering_layer)
    if layer is None and sae is not None and sae.info.layer is not None:
        layer = int(sae.info.layer)
    if layer is None:
        raise UserInputError("no steering layer known for this model and SAE; pass --layer N")
    return check_steerable(int(layer), n_layer)


def check_sae_fits(sae, n_embd: int, model_name: str) -> None:
    """An SAE whose width differs from the model's residual cannot steer it."""
    if sae.d_model != n_embd:
        raise UserInputError(
            f"the SAE's d_model is {sae.d_model} but {model_name} has a residual width of {n_embd}; "
            "use an SAE trained on this model"
        )


def pair_terms(latents: tuple[int, ...], scales: tuple[float, ...], default_scale: float) -> list[VectorTerm]:
    """Pair repeated --latent/--scale options: one scale each, one scale for all, or the default."""
    if not latents:
        raise UserInputError("give at least one --latent")
    if not scales:
        scales = (default_scale,)
    if len(scales) == 1:
        scales = scales * len(latents)
    if len(scales) != len(latents):
        raise UserInputError(f"got {len(latents)} --latent and {len(scales)} --scale options; give one scale per latent or one for all")
    return [VectorTerm(int(l), float(s)) for l, s in zip(latents, scales)]


def effective_chat_mode(mode: str, entry: CatalogEntry | None) -> str:
    """`auto` follows the catalog: a model listed as raw-completion-only (chat = "raw") gets raw prompts."""
    if mode == "auto" and entry is not None and entry.chat == "raw":
        return "raw"
    return mode


def vector_for_terms(sae, terms: list[VectorTerm], layer: int, model_hint: str, n_embd: int, model_name: str) -> ControlVector:
    """Validated `sum(scale x W_dec[latent])` at `layer`."""
    check_sae_fits(sae, n_embd, model_name)
    for t in terms:
        if not 0 <= t.latent < sae.d_sae:
            raise UserInputError(f"latent {t.latent} is out of range: this SAE has latents 0 to {sae.d_sae - 1}")
    return from_sae(sae, terms, layer, model_hint)


def vector_file_fits(cv: ControlVector, n_embd: int, n_layer: int, path: str | Path) -> None:
    """A vector file must match the model's width and layers."""
    if cv.n_embd != n_embd:
        raise UserInputError(f"vector {path} has width {cv.n_embd} but the model's residual width is {n_embd}")
    for layer in cv.directions:
        check_steerable(layer, n_layer)
