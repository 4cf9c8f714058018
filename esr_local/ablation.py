"""Zero-ablation of SAE latents inside llama.cpp's graph, token by token, while generating.

At the steering layer L every row (every position, prefill and decode) of the graph tensor `l_out-L` is
rewritten in the eval callback as

    h' = h - sum_j f_j(h_enc) * d_j

with `d_j` the raw decoder row of latent j and `f_j` the SAE's own encoder. Order `pre` (the paper's):
`h_enc = l_out-L - v`, the residual before the steering vector v at layer L was added (llama.cpp adds the
control vector inside block L, before the tensor is named `l_out-L`). Order `post` (the public
replication's): `h_enc = l_out-L` as it is. `encode_layer` lets the encoder read another (earlier) block's
output, as the paper's Llama-3.3-70B stack does (layer-50 ablation encoded from the layer-33 residual).

Writing the tensor back with `ggml_backend_tensor_set` in the `ask=False` call changes what block L+1
reads; this equals a control vector exactly on CPU and CUDA (research notes, llama-cpp-notes §9-10).
An eval callback can only be installed when a context is created, so `SteeredModel.set_ablation`
rebuilds its context; without an ablation the generation context has no callback at all.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import llama_cpp
import numpy as np
from llama_cpp._ggml import libggml

from .errors import UserInputError
from .layers import residual_tensor_name
from .readout import _GGML_TYPE_F32, _GgmlTensor

libggml.ggml_backend_tensor_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
libggml.ggml_backend_tensor_set.restype = None
libggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
libggml.ggml_backend_tensor_get.restype = None

ORDERS = ("pre", "post")
_NAME_OFFSET = _GgmlTensor.name.offset


@dataclass
class AblationStats:
    """What the callback did so far: rows seen, rows where some ablated latent fired, summed activation removed."""

    rows: int = 0
    rows_fired: int = 0
    removed: float = 0.0
    fired_per_latent: dict[int, int] = field(default_factory=dict)


class Ablation:
    """Zero-ablates `latents` of `sae` at `layer` of the model this is bound to (see module docstring).

    `record=True` keeps, per callback call, `(h_before, f, h_after)` with h_after read back from the
    tensor after the write (what block L+1 consumes) — for tests and traces, not for runs.
    """

    def __init__(
        self,
        sae,
        latents: Sequence[int],
        layer: int,
        *,
        order: str = "pre",
        encode_layer: int | None = None,
        record: bool = False,
    ) -> None:
        if order not in ORDERS:
            raise UserInputError(f"ablation order must be 'pre' or 'post', got {order!r}")
        lat = sorted({int(j) for j in latents})
        if not lat:
            raise UserInputError("give at least one latent to ablate")
        for j in lat:
            if not 0 <= j < sae.d_sae:
                raise UserInputError(f"latent {j} to ablate is out of range: this SAE has latents 0 to {sae.d_sae - 1}")
        self.sae = sae
        self.latents = tuple(lat)
        self.layer = int(layer)
        self.encode_layer = int(encode_layer) if encode_layer is not None else self.layer
        if self.encode_layer > self.layer:
            raise UserInputError(
                f"the encoder layer ({self.encode_layer}) must not come after the ablation layer ({self.layer})")
        self.order = order
        self.record = record
        self.decoder = np.stack([sae.decoder_row(j) for j in self.latents]).astype(np.float32)  # [k, d]
        self._target = residual_tensor_name(self.layer).encode()
        self._source = residual_tensor_name(self.encode_layer).encode()
        self._pending: np.ndarray | None = None  # encoder input captured at an earlier layer
        self._model_ref = None
        self.error: str | None = None
        self.stats = AblationStats(fired_per_latent={j: 0 for j in self.latents})
        self.records: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        # Kept referenced as long as any context uses it, or the process crashes.
        self.c_callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)

    def describe(self) -> dict:
        """What a result depends on: latents, layers, order, SAE."""
        return {"latents": list(self.latents), "layer": self.layer, "encode_layer": self.encode_layer,
                "order": self.order, "sae": self.sae.info.source, "sae_path": self.sae.info.resolved_path}

    def bind(self, model) -> None:
        """Attach to a SteeredModel (read for its residual width and current steering vector)."""
        if model.n_embd != self.sae.d_model:
            raise UserInputError(f"the SAE's d_model is {self.sae.d_model} but the model's residual width is {model.n_embd}")
        if not 1 <= self.layer <= model.n_layer - 2:
            raise UserInputError(
                f"cannot ablate at layer {self.layer}: llama.cpp computes every row of blocks 1 to {model.n_layer - 2} "
                "only (the last block keeps only its output rows)")
        self._model_ref = weakref.ref(model)

    def reset(self) -> None:
        """Forget statistics and records."""
        self.stats = AblationStats(fired_per_latent={j: 0 for j in self.latents})
        self.records = []
        self.error = None

    # -- the edit -------------------------------------------------------------------------------------

    def _steering_vector(self) -> np.ndarray | None:
        model = self._model_ref() if self._model_ref is not None else None
        return None if model is None else model.directions.get(self.layer)

    def ablate_rows(self, h: np.ndarray, h_enc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(h', f): `h - f @ D` with f the activations of the ablated latents on `h_enc`."""
        f = self.sae.encode(h_enc, self.latents).astype(np.float32)
        if not f.any():
            return h, f
        return (h - f @ self.decoder).astype(np.float32), f

    def _on_tensor(self, tensor_ptr: int, ask: bool, _user_data) -> bool:
        try:
            name = ctypes.string_at(tensor_ptr + _NAME_OFFSET)
            if name != self._target and name != self._source:
                return not ask  # ask: "not wanted"; a computed tensor we never asked for: go on
            if ask:
                return True
            h = self._read(tensor_ptr, name)
            if name == self._source and self._source != self._target:
                self._pending = h
                return True
            h_enc = self._pending if self._pending is not None else h
            self._pending = None
            if self.order == "pre" and self.encode_layer == self.layer:
                v = self._steering_vector()
                if v is not None:
                    h_enc = h - v
            h_new, f = self.ablate_rows(h, h_enc)
            if h_new is not h:
                libggml.ggml_backend_tensor_set(tensor_ptr, h_new.ctypes.data, 0, h_new.nbytes)
            self._count(f)
            if self.record:
                back = np.empty_like(h)
                libggml.ggml_backend_tensor_get(tensor_ptr, back.ctypes.data, 0, back.nbytes)
                self.records.append((h, f, back))
            return True
        except Exception as exc:  # noqa: BLE001 - an exception must not cross the C callback boundary
            self.error = f"{type(exc).__name__}: {exc}"
            return False

    def _read(self, tensor_ptr: int, name: bytes) -> np.ndarray:
        t = _GgmlTensor.from_address(tensor_ptr)
        if t.type != _GGML_TYPE_F32 or t.ne[2] != 1 or t.ne[3] != 1 or t.nb[1] != t.ne[0] * 4:
            raise ValueError(f"{name.decode()} is not a contiguous 2-D float32 tensor")
        h = np.empty((int(t.ne[1]), int(t.ne[0])), dtype=np.float32)
        libggml.ggml_backend_tensor_get(tensor_ptr, h.ctypes.data, 0, h.nbytes)
        return h

    def _count(self, f: np.ndarray) -> None:
        s = self.stats
        s.rows += f.shape[0]
        fired = f > 0
        s.rows_fired += int(fired.any(axis=1).sum())
        s.removed += float(f.sum())
        for k, j in enumerate(self.latents):
            s.fired_per_latent[j] += int(fired[:, k].sum())


def span_projector(decoder: np.ndarray) -> np.ndarray:
    """[d, d] orthogonal projector onto the complement of the rows' span (float64)."""
    q, _ = np.linalg.qr(np.asarray(decoder, np.float64).T)
    return np.eye(decoder.shape[1]) - q @ q.T
