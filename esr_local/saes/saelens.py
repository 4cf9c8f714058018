"""SAELens folders: `cfg.json` + `sae_weights.safetensors` (W_enc [d_in, d_sae], W_dec [d_sae, d_in])."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FormatError
from .base import LinearSae, SaeInfo, check_shapes, decoder_dims, layer_or_none
from .gemmascope2 import read_json_config
from .tensors import open_safetensors
from .validate import cfg_bool, cfg_dict, cfg_int, cfg_str

WEIGHTS, CONFIG = "sae_weights.safetensors", "cfg.json"


class SaeLensSae(LinearSae):
    """SAELens layout. Encoding follows the cfg's architecture (standard/relu, jumprelu, topk, gated)."""

    def __init__(self, info: SaeInfo, *, cfg: dict, extra: dict, **kw):
        super().__init__(info, **kw)
        self._cfg, self._extra = cfg, extra

    # -- input handling --------------------------------------------------------------------------------

    def _input(self, x: np.ndarray) -> np.ndarray:
        """SAELens order: normalise the activation (cfg `normalize_activations`), then subtract b_dec
        when `apply_b_dec_to_input` is true."""
        norm = self._cfg.get("normalize_activations") or "none"
        if norm == "constant_norm_rescale":
            # x * sqrt(d_in) / ||x|| per row
            x = x * (np.sqrt(self.d_model) / np.linalg.norm(x, axis=-1, keepdims=True))
        elif norm == "layer_norm":
            mu = x.mean(axis=-1, keepdims=True)
            x = x - mu
            x = x / (x.std(axis=-1, ddof=1, keepdims=True) + 1e-5)  # torch std is the unbiased one
        elif norm != "none":
            raise FormatError(
                f"encode() does not support SAELens normalize_activations={norm!r}: its input scaling factor is not "
                "stored with the weights (fold it into W_enc first, as SAELens' fold_activation_norm_scaling_factor does)"
            )
        return super()._input(x)

    # -- activation ------------------------------------------------------------------------------------

    def _activate(self, pre: np.ndarray, indices: np.ndarray) -> np.ndarray:
        arch = self.info.activation
        if arch in ("standard", "relu"):
            return self._relu(pre)
        if arch in ("jumprelu", "jump_relu"):
            if self._threshold is None:
                raise FormatError(f"{self.info.resolved_path}: a jumprelu SAE needs a 'threshold' tensor")
            return self._jumprelu(pre, indices)
        raise FormatError(f"encode() does not support SAELens architecture {arch!r}")

    def _encode(self, x: np.ndarray, indices: list[int]) -> np.ndarray:
        arch = self.info.activation
        if arch == "topk":
            kth = self._topk_cutoffs(x)
            return self._topk_keep(self._pre_activations(x, indices), kth)
        if arch == "gated":
            return self._gated(x, indices)
        return super()._encode(x, indices)

    def _encode_blocks(self, x: np.ndarray, block_size: int):
        arch = self.info.activation
        if arch == "topk":
            kth = self._topk_cutoffs(x, block_size)
            for start in range(0, self.d_sae, block_size):
                idx = list(range(start, min(self.d_sae, start + block_size)))
                yield start, self._topk_keep(self._pre_activations(x, idx), kth).astype(np.float32)
            return
        if arch == "gated":
            yield from super(LinearSae, self)._encode_blocks(x, block_size)
            return
        yield from super()._encode_blocks(x, block_size)

    # -- top-k: which latents survive depends on all of them ---------------------------------------------

    def _k(self) -> int:
        k = self._cfg.get("k") or (self._cfg.get("activation_fn_kwargs") or {}).get("k")
        if not k:
            raise FormatError(f"{self.info.resolved_path}: a topk SAE needs 'k' in cfg.json")
        return min(int(k), self.d_sae)

    def _topk_cutoffs(self, x: np.ndarray, block_size: int = 4096) -> np.ndarray:
        """Per row, the k-th largest pre-activation over all latents, streamed block by block."""
        k = self._k()
        best = np.full((x.shape[0], 0), -np.inf)
        for start in range(0, self.d_sae, block_size):
            pre = self._pre_activations(x, list(range(start, min(self.d_sae, start + block_size))))
            both = np.concatenate([best, pre], axis=1)
            if both.shape[1] > k:
                both = -np.partition(-both, k - 1, axis=1)[:, :k]
            best = both
        return best.min(axis=1, keepdims=True)

    @staticmethod
    def _topk_keep(pre: np.ndarray, kth: np.ndarray) -> np.ndarray:
        # SAELens TopK: keep the k largest pre-activations of each row, ReLU them, zero the rest.
        return np.where(pre >= kth, np.maximum(pre, 0.0), 0.0)

    def _gated(self, x: np.ndarray, indices: list[int]) -> np.ndarray:
        try:
            b_gate, r_mag, b_mag = (self._extra[n] for n in ("b_gate", "r_mag", "b_mag"))
        except KeyError:
            raise FormatError(f"{self.info.resolved_path}: a gated SAE needs b_gate, r_mag and b_mag tensors") from None
        x = self._input(x)
        w = self._encoder_columns(indices).astype(np.float64)
        gate = x @ w + b_gate.take(indices)
        mag = x @ (w * np.exp(r_mag.take(indices).astype(np.float64))) + b_mag.take(indices)
        return np.where(gate > 0, np.maximum(mag, 0.0), 0.0)


def _describe(cfg: dict, where: str = "cfg.json") -> tuple[str | None, str | None, str | None, str]:
    """(hook, model, neuronpedia_id, activation) from a v6 (nested metadata) or pre-6 (flat) cfg."""
    meta = cfg_dict(cfg, "metadata", where)

    def text(*keys: str) -> str | None:
        return next((v for v in (cfg_str(d, k, where) for d, k in keys) if v), None)

    hook = text((meta, "hook_name"), (cfg, "hook_name"), (cfg, "hook_point"))
    model = text((meta, "model_name"), (cfg, "model_name"))
    np_id = text((meta, "neuronpedia_id"), (cfg, "neuronpedia_id"))
    arch = cfg_str(cfg, "architecture", where)
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
        if cfg_int(cfg, key, str(folder / CONFIG)) not in (None, want):
            raise FormatError(f"{folder / CONFIG} says {key}={cfg[key]} but W_dec has shape {list(w_dec.shape)}")
    check_shapes(str(folder / WEIGHTS), {name: (tensors.get(name), shape) for name, shape in
                                         (("W_enc", (d_model, d_sae)), ("b_enc", (d_sae,)), ("b_dec", (d_model,)), ("threshold", (d_sae,)))})
    hook, model, np_id, activation = _describe(cfg, str(folder / CONFIG))
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
        subtract_b_dec=cfg_bool(cfg, "apply_b_dec_to_input", str(folder / CONFIG), True),
        labels_path=labels,
    )
