"""Goodfire SAEs: a torch.save'd state_dict with nn.Linear encoder/decoder (ReLU, no input centring)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import FormatError
from .base import LinearSae, SaeInfo, layer_or_none
from .tensors import Tensor
from .torch_zip import read_torch_zip

ENCODER_W, ENCODER_B = "encoder_linear.weight", "encoder_linear.bias"
DECODER_W, DECODER_B = "decoder_linear.weight", "decoder_linear.bias"

# "Llama-3.1-8B-Instruct-SAE-l19.pth" and the older "Llama-3.3-70B-Instruct__model.layers.50.pt"
_NAME = re.compile(r"(?P<model>Llama-\d[^/]*?)(?:-SAE-l|__model\.layers\.)(?P<layer>\d+)(?:\.pth?|/|$)")


class GoodfireSae(LinearSae):
    """Goodfire layout: encoder_linear.weight [d_sae, d_model], decoder_linear.weight [d_model, d_sae]."""

    def _activate(self, pre: np.ndarray, indices: np.ndarray) -> np.ndarray:
        # ReLU(W_enc x + b_enc): no b_dec subtraction and no input scaling (Goodfire's release code).
        return self._relu(pre)


def _shape_check(t: Tensor, shape: tuple[int, ...], name: str, path: Path) -> None:
    if t.shape != shape:
        raise FormatError(f"{path}: {name} has shape {list(t.shape)}, expected {list(shape)} for a Goodfire SAE")


def open_goodfire(path: Path, *, source: str, labels: Path | None) -> GoodfireSae:
    """Open a Goodfire `.pth`/`.pt` file (reads only the pickle and zip directory)."""
    tensors = read_torch_zip(path)
    missing = [k for k in (ENCODER_W, DECODER_W) if k not in tensors]
    if missing:
        raise FormatError(
            f"{path} is a torch state_dict but not a Goodfire SAE: missing {', '.join(missing)} "
            f"(found: {', '.join(sorted(tensors)) or 'nothing'})"
        )
    dec, enc = tensors[DECODER_W], tensors[ENCODER_W]
    if len(dec.shape) != 2:
        raise FormatError(f"{path}: {DECODER_W} has shape {list(dec.shape)}, expected [d_model, d_sae]")
    d_model, d_sae = dec.shape
    _shape_check(enc, (d_sae, d_model), ENCODER_W, path)
    b_enc, b_dec = tensors.get(ENCODER_B), tensors.get(DECODER_B)
    if b_enc is not None:
        _shape_check(b_enc, (d_sae,), ENCODER_B, path)
    if b_dec is not None:
        _shape_check(b_dec, (d_model,), DECODER_B, path)

    hook = model = None
    m = _NAME.search(f"{source}/{path.as_posix()}")
    if m:
        hook = f"blocks.{int(m.group('layer'))}.hook_resid_post"
        model = f"meta-llama/{m.group('model')}"
    info = SaeInfo(
        family="goodfire",
        source=source,
        resolved_path=str(path),
        d_model=d_model,
        d_sae=d_sae,
        activation="relu",
        hook_name=hook,
        layer=layer_or_none(hook),
        model_name=model,
        dtype=dec.dtype,
    )
    return GoodfireSae(
        info, w_dec=dec, dec_by_rows=False, w_enc=enc, enc_by_cols=False, b_enc=b_enc, b_dec=b_dec, labels_path=labels
    )
