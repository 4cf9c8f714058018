"""Apply and clear llama.cpp control vectors on a context, always with the full buffer.

llama.cpp keeps the rows of layers beyond `len` from an earlier call, so a short buffer could leave a stale
vector behind: every call here passes all (n_layer - 1) * n_embd floats, zero rows included.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping

import llama_cpp
import numpy as np

from .errors import BackendError, UserInputError
from .layers import check_steerable, cvec_buffer_len, cvec_row_slice


def build_buffer(directions: Mapping[int, np.ndarray], n_layer: int, n_embd: int) -> np.ndarray:
    """Flat float32 buffer for llama_set_adapter_cvec; directions on the same layer add up."""
    buf = np.zeros(cvec_buffer_len(n_layer, n_embd), dtype=np.float32)
    for layer, vec in directions.items():
        check_steerable(int(layer), n_layer)
        arr = np.asarray(vec, dtype=np.float32).reshape(-1)
        if arr.shape[0] != n_embd:
            raise UserInputError(
                f"steering vector for layer {layer} has {arr.shape[0]} values but the model's residual width "
                f"(n_embd) is {n_embd}; use an SAE or vector made for this model"
            )
        if not np.all(np.isfinite(arr)):
            raise UserInputError(f"steering vector for layer {layer} contains NaN or infinite values")
        buf[cvec_row_slice(int(layer), n_embd)] += arr
    return buf


def apply_to_context(ctx, directions: Mapping[int, np.ndarray] | None, n_layer: int, n_embd: int) -> None:
    """Set (or, with None/empty, clear) the control vector of a llama.cpp context.

    The caller must drop any KV cache computed under the previous vector.
    """
    if not directions:
        rc = llama_cpp.llama_set_adapter_cvec(ctx, None, 0, n_embd, -1, -1)
    else:
        buf = build_buffer(directions, n_layer, n_embd)
        ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        rc = llama_cpp.llama_set_adapter_cvec(ctx, ptr, buf.size, n_embd, 1, n_layer - 1)
    if rc != 0:
        raise BackendError(f"llama.cpp rejected the control vector (rc={rc}); check that n_embd={n_embd} matches the model")


def check_scale(scale: float) -> float:
    """Reject NaN and infinite steering scales."""
    if not math.isfinite(float(scale)):
        raise UserInputError(f"scale {scale} is not a finite number; give a real value such as 8 or -2.5")
    return float(scale)
