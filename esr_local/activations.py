"""Per-token activations of chosen SAE latents over texts (the library side of `esr-local activations`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import UserInputError
from .text_readout import read_residuals


def feature_layer(sae, entry=None, layer: int | None = None) -> int:
    """The layer to read: `layer`, else the catalog's feature layer, else the SAE's own hook layer."""
    if layer is None and entry is not None and entry.sae.feature_layer is not None:
        layer = int(entry.sae.feature_layer)
    if layer is None and sae.info.layer is not None:
        layer = int(sae.info.layer)
    if layer is None:
        raise UserInputError("the SAE does not say which layer it reads; pass --layer N")
    return int(layer)


def latent_activations(
    model,
    sae,
    latents: Sequence[int],
    texts: Sequence[str],
    *,
    layer: int,
    responses: Sequence[str | None] | None = None,
    mode: str | None = None,
) -> list[dict]:
    """For each text: `{"text", "response", "mode", "layer", "tokens": [{"index", "token_id", "text",
    "activations": {"N": value}}]}`, latent ids as string keys, values float32 rounded to 6 digits."""
    if not latents:
        raise UserInputError("give at least one --latent")
    if sae.d_model != model.n_embd:
        raise UserInputError(
            f"the SAE reads a residual of width {sae.d_model} but {model.model_path.name} has width {model.n_embd}"
        )
    ids = [int(i) for i in latents]
    out = []
    for res in read_residuals(model, texts, layer, responses=responses, mode=mode):
        acts = sae.encode(res.residual, ids)
        tokens = [
            {"index": t, "token_id": int(tok), "text": piece,
             "activations": {str(i): round(float(acts[t, k]), 6) for k, i in enumerate(ids)}}
            for t, (tok, piece) in enumerate(zip(res.token_ids, res.pieces))
        ]
        out.append({"text": res.text, "response": res.response, "mode": res.mode, "layer": layer, "tokens": tokens,
                    "max": {str(i): round(float(acts[:, k].max()), 6) for k, i in enumerate(ids)}})
    return out


def strongest_first(tokens: list[dict]) -> list[dict]:
    """Tokens ordered by their largest activation over the chosen latents, strongest first (stable)."""
    return sorted(tokens, key=lambda t: -max(t["activations"].values()))


def max_over_texts(sae, residuals: Sequence[np.ndarray], block_size: int = 4096) -> np.ndarray:
    """float32 [n_texts, d_sae]: each latent's max activation over the tokens of each text.

    All texts' tokens are encoded together, one block of latents at a time, so the encoder is read
    once and memory stays at [n_tokens, block_size].
    """
    if not residuals:
        raise UserInputError("no texts to encode")
    lengths = [int(r.shape[0]) for r in residuals]
    if min(lengths) < 1:
        raise UserInputError("every text needs at least one token")
    x = np.concatenate([np.asarray(r, np.float32) for r in residuals], axis=0)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    out = np.empty((len(residuals), sae.d_sae), np.float32)
    for start, acts in sae.encode_blocks(x, block_size=block_size):
        out[:, start : start + acts.shape[1]] = np.maximum.reduceat(acts, starts, axis=0)
    return out
