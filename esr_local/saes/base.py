"""The SAE interface every format implements: decoder rows, norms, labels and selective encoding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError, UserInputError
from ..layers import layer_from_hook
from .labels import load_labels
from .tensors import Tensor


@dataclass(frozen=True)
class SaeInfo:
    """What was loaded and from where. `layer` is the llama.cpp layer (`direction.N`), None if unknown."""

    family: str  # "goodfire" | "gemmascope" | "gemmascope2" | "saelens"
    source: str  # the source string as the user gave it
    resolved_path: str  # local file or folder actually read
    d_model: int
    d_sae: int
    activation: str  # "relu" | "jumprelu" | "topk" | "standard" | ... as the file says
    hook_name: str | None
    layer: int | None
    model_name: str | None
    dtype: str  # on-disk dtype of the decoder
    neuronpedia_id: str | None = None  # "model/source" when the file names it (SAELens v6 metadata)


def decoder_dims(where: str, w_dec, name: str = "W_dec") -> tuple[int, int]:
    """(d_sae, d_model) of a decoder stored [d_sae, d_model]; FormatError if it is not 2-D."""
    if len(w_dec.shape) != 2:
        raise FormatError(f"{where}: {name} has shape {list(w_dec.shape)}, expected [d_sae, d_model]")
    return int(w_dec.shape[0]), int(w_dec.shape[1])


def check_shapes(where: str, expected: dict) -> None:
    """FormatError for the first present tensor whose shape is not the one the decoder implies.

    `expected` maps a tensor name to (tensor or None, shape); None (an optional tensor that is absent) passes.
    """
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != tuple(shape):
            raise FormatError(f"{where}: {name} has shape {list(tensor.shape)}, expected {list(shape)}")


def layer_or_none(hook: str | None) -> int | None:
    """llama.cpp layer of a residual-stream hook, or None when the hook is missing or not residual."""
    if not hook:
        return None
    try:
        return layer_from_hook(hook)
    except UserInputError:
        return None


def _as_index(index, d_sae: int) -> int:
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        raise UserInputError(f"latent index must be an integer, got {index!r}")
    i = int(index)
    if not 0 <= i < d_sae:
        raise UserInputError(f"latent index {i} is out of range: this SAE has {d_sae} latents (valid 0 to {d_sae - 1})")
    return i


class Sae:
    """Abstract SAE. Subclasses provide `_decoder_row` and `_encode`."""

    info: SaeInfo

    def __init__(self, info: SaeInfo, labels_path: str | Path | None = None):
        self.info = info
        self._labels_path = Path(labels_path) if labels_path is not None else None
        self._labels: dict[int, str] | None = None

    def __repr__(self) -> str:
        i = self.info
        return f"<{type(self).__name__} {i.family} d_model={i.d_model} d_sae={i.d_sae} layer={i.layer} {i.resolved_path}>"

    @property
    def d_model(self) -> int:
        """Width of the residual stream the SAE reads and writes."""
        return self.info.d_model

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.info.d_sae

    @property
    def labels_path(self) -> Path | None:
        """The labels file or folder in use, if any."""
        return self._labels_path

    def set_labels_path(self, path: str | Path | None) -> None:
        """Use another labels file or folder (read on the next `label` call)."""
        self._labels_path = Path(path) if path is not None else None
        self._labels = None

    def decoder_row(self, index: int) -> np.ndarray:
        """Raw decoder direction of latent `index` (SAELens `W_dec[index]`), float32 [d_model], without b_dec."""
        return self._decoder_row(_as_index(index, self.d_sae))

    def row_norm(self, index: int) -> float:
        """L2 norm of `decoder_row(index)` (steering strengths are in units of this norm)."""
        return float(np.linalg.norm(self.decoder_row(index).astype(np.float64)))

    def label(self, index: int) -> str | None:
        """Human label of latent `index` from the labels file, or None when there is none."""
        i = _as_index(index, self.d_sae)
        if self._labels_path is None:
            return None
        if self._labels is None:
            self._labels = load_labels(self._labels_path)
        return self._labels.get(i)

    def encode(self, h: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        """Activations of the latents `indices` for residual rows `h` [n, d_model] -> float32 [n, len(indices)].

        A 1-D `h` [d_model] gives a 1-D result [len(indices)]. Only the encoder columns of the requested
        latents are read (except for top-k SAEs, whose selection needs every latent).
        """
        idx = [_as_index(i, self.d_sae) for i in indices]
        single = np.ndim(h) == 1
        x = self._as_rows(h)
        acts = self._encode(x, idx).astype(np.float32)
        return acts[0] if single else acts

    def encode_blocks(self, h: np.ndarray, block_size: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
        """Activations of every latent, one block of `block_size` latents at a time.

        Yields `(start, acts)` with `acts` float32 [n, stop - start] for latents `start..stop-1`, in
        order. Only one block of encoder weights and one [n, block_size] array live at a time, so
        memory stays bounded whatever d_sae is. Matrix products are float32 here (float64 in `encode`),
        so values agree with `encode` to float32 rounding.
        """
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise UserInputError(f"block_size must be a positive integer, got {block_size!r}")
        yield from self._encode_blocks(self._as_rows(h), block_size)

    def _as_rows(self, h) -> np.ndarray:
        x = np.asarray(h, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.d_model:
            raise UserInputError(f"h must have shape [n, {self.d_model}] (or [{self.d_model}]), got {np.shape(h)}")
        if not np.all(np.isfinite(x)):
            raise UserInputError("h holds NaN or infinite values; cannot encode them")
        return x

    # -- to implement ------------------------------------------------------------------------------

    def _decoder_row(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _encode(self, x: np.ndarray, indices: list[int]) -> np.ndarray:
        raise NotImplementedError

    def _encode_blocks(self, x: np.ndarray, block_size: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.d_sae, block_size):
            idx = list(range(start, min(self.d_sae, start + block_size)))
            yield start, self._encode(x, idx).astype(np.float32)


class LinearSae(Sae):
    """An SAE stored as named arrays: pre = (x - b_dec?) @ W_enc + b_enc, then a per-family activation.

    `dec_by_rows`: True when the decoder array is [d_sae, d_model] (SAELens/GemmaScope), False for the
    torch nn.Linear layout [d_model, d_sae] (Goodfire). `enc_by_cols` likewise for the encoder:
    True for [d_model, d_sae], False for [d_sae, d_model].
    """

    def __init__(
        self,
        info: SaeInfo,
        *,
        w_dec: Tensor,
        dec_by_rows: bool,
        w_enc: Tensor,
        enc_by_cols: bool,
        b_enc: Tensor | None,
        b_dec: Tensor | None,
        threshold: Tensor | None = None,
        subtract_b_dec: bool = False,
        labels_path: str | Path | None = None,
    ):
        super().__init__(info, labels_path)
        self._w_dec, self._dec_by_rows = w_dec, dec_by_rows
        self._w_enc, self._enc_by_cols = w_enc, enc_by_cols
        self._b_enc, self._b_dec, self._threshold = b_enc, b_dec, threshold
        self._subtract_b_dec = subtract_b_dec

    def _decoder_row(self, index: int) -> np.ndarray:
        return self._w_dec.row(index) if self._dec_by_rows else self._w_dec.col(index)

    # -- the family's pieces: input handling and activation ------------------------------------------

    def _input(self, x: np.ndarray) -> np.ndarray:
        """What the encoder multiplies: `x`, minus b_dec when the family centres its input."""
        if self._subtract_b_dec and self._b_dec is not None:
            x = x - self._vector("b_dec", self._b_dec).astype(np.float64)
        return x

    def _activate(self, pre: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """The family's activation of pre-activations `pre` [n, k] of latents `indices` [k]."""
        raise NotImplementedError

    # -- shared machinery ------------------------------------------------------------------------------

    def _vector(self, name: str, tensor: Tensor) -> np.ndarray:
        """A small 1-D tensor (bias, threshold) read once and kept."""
        cache = self.__dict__.setdefault("_vectors", {})
        if name not in cache:
            cache[name] = tensor.read().astype(np.float32)
        return cache[name]

    def _encoder_columns(self, indices: list[int]) -> np.ndarray:
        """[d_model, k] encoder weights of the given latents (one block read when they are a contiguous run)."""
        if len(indices) > 1 and indices[-1] - indices[0] == len(indices) - 1 and all(
            b - a == 1 for a, b in zip(indices, indices[1:])
        ):
            return self._encoder_block(indices[0], indices[-1] + 1)
        if self._enc_by_cols:
            return self._w_enc.cols(indices)
        return self._w_enc.rows(indices).T

    def _encoder_block(self, start: int, stop: int) -> np.ndarray:
        """[d_model, stop - start] encoder weights of a contiguous range of latents."""
        if self._enc_by_cols:
            return self._w_enc.col_block(start, stop)
        return self._w_enc.row_block(start, stop).T

    def _pre_activations(self, x: np.ndarray, indices: list[int]) -> np.ndarray:
        pre = self._input(x) @ self._encoder_columns(indices).astype(np.float64)
        if self._b_enc is not None and indices:
            pre = pre + self._vector("b_enc", self._b_enc)[indices].astype(np.float64)
        return pre

    def _pre_block(self, xin32: np.ndarray, start: int, stop: int) -> np.ndarray:
        pre = xin32 @ self._encoder_block(start, stop)
        if self._b_enc is not None:
            pre += self._vector("b_enc", self._b_enc)[start:stop]
        return pre

    def _encode(self, x: np.ndarray, indices: list[int]) -> np.ndarray:
        return self._activate(self._pre_activations(x, indices), np.asarray(indices, dtype=np.int64))

    def _encode_blocks(self, x: np.ndarray, block_size: int) -> Iterator[tuple[int, np.ndarray]]:
        xin = self._input(x).astype(np.float32)
        for start in range(0, self.d_sae, block_size):
            stop = min(self.d_sae, start + block_size)
            pre = self._pre_block(xin, start, stop)
            yield start, self._activate(pre, np.arange(start, stop)).astype(np.float32, copy=False)

    def _relu(self, pre: np.ndarray) -> np.ndarray:
        return np.maximum(pre, 0.0)

    def _jumprelu(self, pre: np.ndarray, indices) -> np.ndarray:
        """relu(pre) where pre > threshold, else 0 (GemmaScope, Gemma Scope 2, SAELens jumprelu)."""
        if self._threshold is None or len(indices) == 0:
            return np.maximum(pre, 0.0)
        thr = self._vector("threshold", self._threshold)[np.asarray(indices, dtype=np.int64)].astype(pre.dtype)
        return np.where(pre > thr, np.maximum(pre, 0.0), 0.0).astype(pre.dtype, copy=False)
