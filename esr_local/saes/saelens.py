"""SAELens folders: `cfg.json` + `sae_weights.safetensors` (W_enc [d_in, d_sae], W_dec [d_sae, d_in])."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FormatError
from .base import LinearSae, SaeInfo, check_shapes, decoder_dims, layer_or_none
from .gemmascope2 import read_json_config
from .tensors import open_safetensors

WEIGHTS, CONFIG = "sae_weights.safetensors", "cfg.json"


class SaeLensSae(LinearSae):
    """SAELens layout. Encoding follows the cfg's architecture (standard/relu, jumprelu, topk, gated)."""

    def __init__(self, info: SaeInfo, *, cfg: dict, extra: dict, **kw):
        super().__init__(info, **kw)
        self._cfg, self._extra = cfg, extra

    def _encode(self, x: np.ndarray, indices: list[int]) -> np.ndarray:
        norm = self._cfg.get("normalize_activations") or "none"
        if norm != "none":
            raise FormatError(
                f"encode() does not support SAELens normalize_activations={norm!r}: the input scaling is not stored with the weights"
            )
        arch = self.info.activation
        if arch in ("standard", "relu"):
            return self._relu(self._pre_activations(x, indices))
        if arch in ("jumprelu", "jump_relu"):
            if self._threshold is None:
                raise FormatError(f"{self.info.resolved_path}: a jumprelu SAE needs a 'threshold' tensor")
            return self._jumprelu(self._pre_activations(x, indices), indices)
        if arch == "topk":
            return self._topk(x, indices)
        if arch == "gated":
            return self._gated(x, indices)
        raise FormatError(f"encode() does not support SAELens architecture {arch!r}")

    def _topk(self, x: np.ndarray, indices: list[int]) -> np.ndarray:
        k = self._cfg.get("k") or (self._cfg.get("activation_fn_kwargs") or {}).get("k")
        if not k:
            raise FormatError(f"{self.info.resolved_path}: a topk SAE needs 'k' in cfg.json")
        # Which latents survive depends on all of them, so this reads the whole encoder.
        pre = self._pre_activations(x, list(range(self.d_sae)))
        k = min(int(k), self.d_sae)
        keep = np.argpartition(-pre, k - 1, axis=1)[:, :k]
        acts = np.zeros_like(pre)
        rows = np.arange(pre.shape[0])[:, None]
        acts[rows, keep] = np.maximum(pre[rows, keep], 0.0)
        return acts[:, indices]

    def _gated(self, x: np.ndarray, indices: list[int]) -> np.ndarray:
        try:
            b_gate, r_mag, b_mag = (self._extra[n] for n in ("b_gate", "r_mag", "b_mag"))
        except KeyError:
            raise FormatError(f"{self.info.resolved_path}: a gated SAE needs b_gate, r_mag and b_mag tensors") from None
        if self._subtract_b_dec and self._b_dec is not None:
            x = x - self._b_dec.read().astype(np.float64)
        w = self._encoder_columns(indices).astype(np.float64)
        gate = x @ w + b_gate.take(indices)
        mag = x @ (w * np.exp(r_mag.take(indices).astype(np.float64))) + b_mag.take(indices)
        return np.where(gate > 0, np.maximum(mag, 0.0), 0.0)


def _describe(cfg: dict) -> tuple[str | None, str | None, str | None, str]:
    """(hook, model, neuronpedia_id, activation) from a v6 (nested metadata) or pre-6 (flat) cfg."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    model = meta.get("model_name") or cfg.get("model_name")
    np_id = meta.get("neuronpedia_id") or cfg.get("neuronpedia_id")
    arch = cfg.get("architecture")
    act_fn = cfg.get("activation_fn_str") or cfg.get("activation_fn")
    if not isinstance(act_fn, str):
        act_fn = None
    if arch in (None, "standard") and act_fn == "topk":
        activation = "topk"  # pre-6 top-k SAEs were "standard" with a topk activation function
    else:
        activation = arch or act_fn or "standard"
    return hook, model, np_id, str(activation)


def open_saelens(folder: Path, *, source: str, labels: Path | None) -> SaeLensSae:
    """Open a SAELens folder (v6 or pre-6 cfg)."""
    cfg = read_json_config(folder / CONFIG)
    tensors = open_safetensors(folder / WEIGHTS)
    if "W_dec" not in tensors or "W_enc" not in tensors:
        raise FormatError(
            f"{folder / WEIGHTS} is not a SAELens weights file: needs W_enc and W_dec (found: {', '.join(sorted(tensors))})"
        )
    w_dec, w_enc = tensors["W_dec"], tensors["W_enc"]
    d_sae, d_model = decoder_dims(str(folder / WEIGHTS), w_dec)
    for key, want in (("d_in", d_model), ("d_sae", d_sae)):
        if cfg.get(key) is not None and int(cfg[key]) != want:
            raise FormatError(f"{folder / CONFIG} says {key}={cfg[key]} but W_dec has shape {list(w_dec.shape)}")
    check_shapes(str(folder / WEIGHTS), {name: (tensors.get(name), shape) for name, shape in
                                         (("W_enc", (d_model, d_sae)), ("b_enc", (d_sae,)), ("b_dec", (d_model,)), ("threshold", (d_sae,)))})
    hook, model, np_id, activation = _describe(cfg)
    info = SaeInfo(
        family="saelens",
        source=source,
        resolved_path=str(folder),
        d_model=d_model,
        d_sae=d_sae,
        activation=activation,
        hook_name=hook,
        layer=layer_or_none(hook),
        model_name=model,
        dtype=w_dec.dtype,
        neuronpedia_id=np_id,
    )
    return SaeLensSae(
        info,
        cfg=cfg,
        extra={k: tensors[k] for k in ("b_gate", "r_mag", "b_mag") if k in tensors},
        w_dec=w_dec,
        dec_by_rows=True,
        w_enc=w_enc,
        enc_by_cols=True,
        b_enc=tensors.get("b_enc"),
        b_dec=tensors.get("b_dec"),
        threshold=tensors.get("threshold"),
        subtract_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
        labels_path=labels,
    )
