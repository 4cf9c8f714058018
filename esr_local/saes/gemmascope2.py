"""Gemma Scope 2 (Gemma 3) SAEs: a folder with `params.safetensors` (lowercase w_enc/w_dec/...) and `config.json`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import FormatError
from .base import LinearSae, SaeInfo, check_shapes, decoder_dims, layer_or_none
from .tensors import Tensor, open_safetensors
from .validate import cfg_int, cfg_str

WEIGHTS, CONFIG = "params.safetensors", "config.json"
_MAX_CONFIG_BYTES = 16 * 2**20  # configs are a few KB; refuse to read anything absurd


class GemmaScope2Sae(LinearSae):
    """Gemma Scope 2 layout: w_enc [d_model, width], w_dec [width, d_model], JumpReLU."""

    def _activate(self, pre: np.ndarray, indices: np.ndarray) -> np.ndarray:
        arch = self.info.activation
        if arch not in ("jump_relu", "jumprelu"):
            raise FormatError(f"encode() does not support Gemma Scope 2 architecture {arch!r} (only jump_relu)")
        return self._jumprelu(pre, indices)


def read_json_config(path: Path) -> dict:
    """A JSON object from `path`, or FormatError."""
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise FormatError(f"{path} is {path.stat().st_size} bytes, far too large for an SAE config; is it the right file?")
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise FormatError(f"{path} must hold a JSON object")
    return cfg


def _pick(tensors: dict[str, Tensor], *names: str) -> Tensor | None:
    return next((tensors[n] for n in names if n in tensors), None)


def open_gemmascope2(folder: Path, *, source: str, labels: Path | None) -> GemmaScope2Sae:
    """Open a Gemma Scope 2 folder."""
    cfg = read_json_config(folder / CONFIG)
    tensors = open_safetensors(folder / WEIGHTS)
    w_enc, w_dec = _pick(tensors, "w_enc", "W_enc"), _pick(tensors, "w_dec", "W_dec")
    b_enc, b_dec = _pick(tensors, "b_enc"), _pick(tensors, "b_dec")
    threshold = _pick(tensors, "threshold")
    if w_enc is None or w_dec is None:
        raise FormatError(
            f"{folder / WEIGHTS} is not a Gemma Scope 2 params file: needs w_enc and w_dec (found: {', '.join(sorted(tensors))})"
        )
    d_sae, d_model = decoder_dims(str(folder / WEIGHTS), w_dec, "w_dec")
    check_shapes(str(folder / WEIGHTS), {"w_enc": (w_enc, (d_model, d_sae)), "b_enc": (b_enc, (d_sae,)),
                                         "b_dec": (b_dec, (d_model,)), "threshold": (threshold, (d_sae,))})
    where = str(folder / CONFIG)
    width = cfg_int(cfg, "width", where)
    if width is not None and width != d_sae:
        raise FormatError(f"{folder / CONFIG} says width {width} but w_dec has {d_sae} rows")
    # The decoder writes to hf_hook_point_out (equal to hook_point_in for plain SAEs; differs for transcoders).
    hook = cfg_str(cfg, "hf_hook_point_out", where) or cfg_str(cfg, "hf_hook_point_in", where)
    cfg_str(cfg, "architecture", where), cfg_str(cfg, "model_name", where)  # type checks only
    info = SaeInfo(
        family="gemmascope2",
        source=source,
        resolved_path=str(folder),
        d_model=d_model,
        d_sae=d_sae,
        activation=str(cfg.get("architecture") or "jump_relu"),
        hook_name=hook,
        layer=layer_or_none(hook),
        model_name=cfg.get("model_name"),
        dtype=w_dec.dtype,
    )
    return GemmaScope2Sae(
        info,
        w_dec=w_dec,
        dec_by_rows=True,
        w_enc=w_enc,
        enc_by_cols=True,
        b_enc=b_enc,
        b_dec=b_dec,
        threshold=threshold,
        labels_path=labels,
    )
