"""Read residual-stream activations (`l_out-N`) through llama.cpp's eval callback.

The reader owns a second llama.cpp context created on the weights of an existing `llama_cpp.Llama`,
so the generation context carries no callback overhead and its KV cache and control vector stay
untouched. Each `read` decodes a whole prompt in one batch with a fresh KV cache, optionally under
a control vector set on the reader's own context.

Limitation: the last block (`n_layer - 1`) only computes the rows that produce logits (llama.cpp
drops the other rows inside that block), so its residual cannot be read for every token and is
rejected here.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence

import llama_cpp
import numpy as np
from llama_cpp._ggml import libggml

from .cvec import apply_to_context, build_buffer
from .errors import BackendError, UserInputError
from .layers import residual_tensor_name

_GGML_TYPE_F32 = 0


class _GgmlTensor(ctypes.Structure):
    """Leading fields of `struct ggml_tensor` (ggml.h of ggml 0.25: 4 dims, 64-byte op params, 10 sources)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


libggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
libggml.ggml_backend_tensor_get.restype = None
libggml.ggml_nbytes.argtypes = [ctypes.c_void_p]
libggml.ggml_nbytes.restype = ctypes.c_size_t


class ResidualReader:
    """Captures `l_out-N` activations of a loaded model on a private llama.cpp context.

    Use as a context manager (or call `close()`); close the reader before the Llama it reads from.
    `n_ctx` bounds the prompt length of one `read`; batch and ubatch are set to `n_ctx` so a
    prompt is decoded in one step. `flash_attn` defaults to the generation context's setting.
    """

    def __init__(
        self,
        llm: llama_cpp.Llama,
        n_ctx: int = 1024,
        n_threads: int | None = None,
        flash_attn: bool | None = None,
    ) -> None:
        if n_ctx < 8:
            raise UserInputError(f"n_ctx={n_ctx} is too small for a residual reader; use 512 or more")
        self._llm = llm  # keeps the model weights alive while this context exists
        self.n_layer = int(llama_cpp.llama_model_n_layer(llm.model))
        self.n_embd = int(llama_cpp.llama_model_n_embd(llm.model))
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm.model)))
        self.n_ctx = int(n_ctx)
        self._want: dict[str, int] = {}
        self._pieces: dict[int, list[np.ndarray]] = {}
        self._error: str | None = None
        self._cvec_key: bytes | None = None
        # The CFUNCTYPE object must stay referenced as long as the context lives, or the process crashes.
        self._callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = self.n_ctx
        params.n_seq_max = 1
        threads = n_threads if n_threads is not None else llm.context_params.n_threads
        params.n_threads = params.n_threads_batch = int(threads)
        if flash_attn is None:
            params.flash_attn_type = llm.context_params.flash_attn_type
        else:
            params.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        params.cb_eval = self._callback
        params.cb_eval_user_data = None
        self._ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self._ctx:
            raise BackendError("llama.cpp could not create the activation-reading context; try a smaller n_ctx")
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------
    def _model_alive(self) -> bool:
        # Llama.close() frees the weights and sets its model pointer to None.
        return getattr(getattr(self._llm, "_model", None), "model", None) is not None

    def close(self) -> None:
        """Free the reader's llama.cpp context (idempotent). Close the reader before the Llama."""
        if not getattr(self, "_closed", True):
            if self._model_alive():
                llama_cpp.llama_free(self._ctx)
            # else: the weights were freed first; freeing the context now could touch freed memory, so it leaks.
            self._ctx = None
            self._closed = True

    def __enter__(self) -> ResidualReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn down llama_cpp already
            pass

    # -- reading ---------------------------------------------------------------------------------
    def readable_layers(self) -> range:
        """Blocks whose output has a row for every token: 0 .. n_layer - 2."""
        return range(0, self.n_layer - 1)

    def read(
        self,
        tokens: Sequence[int],
        layers: Sequence[int],
        directions: Mapping[int, np.ndarray] | None = None,
    ) -> dict[int, np.ndarray]:
        """Decode `tokens` from an empty KV cache and return `{layer: float32 [n_tokens, n_embd]}`.

        `directions` (layer -> vector) is set as this context's control vector for the read; None
        or empty clears it. Row i of each array is the residual after block `layer` at token i.
        """
        if self._closed:
            raise BackendError("this ResidualReader is closed; create a new one")
        if not self._model_alive():
            raise BackendError("the model behind this ResidualReader was closed; close the reader before the Llama")
        toks = self._check_tokens(tokens)
        wanted = self._check_layers(layers)
        self._set_directions(directions)

        self._want = {residual_tensor_name(layer): layer for layer in wanted}
        self._pieces = {layer: [] for layer in wanted}
        self._error = None
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        arr = (llama_cpp.llama_token * len(toks))(*toks)
        try:
            rc = llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(arr, len(toks)))
        finally:
            self._want = {}
        if self._error is not None:
            raise BackendError(f"reading activations failed: {self._error}")
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc} while reading activations")

        out: dict[int, np.ndarray] = {}
        for layer in wanted:
            pieces = self._pieces[layer]
            if not pieces:
                raise BackendError(
                    f"llama.cpp never produced {residual_tensor_name(layer)}; this architecture may name its "
                    "residual tensors differently"
                )
            acts = np.concatenate(pieces, axis=0) if len(pieces) > 1 else pieces[0]
            if acts.shape != (len(toks), self.n_embd):
                raise BackendError(
                    f"{residual_tensor_name(layer)} had shape {acts.shape}, expected {(len(toks), self.n_embd)}"
                )
            out[layer] = acts
        self._pieces = {}
        return out

    # -- internals -------------------------------------------------------------------------------
    def _check_tokens(self, tokens: Sequence[int]) -> list[int]:
        toks = [int(t) for t in tokens]
        if not toks:
            raise UserInputError("cannot read activations of an empty token list")
        if len(toks) > self.n_ctx:
            raise UserInputError(
                f"{len(toks)} tokens do not fit the reader's context of {self.n_ctx}; shorten the text or "
                "create the reader with a larger n_ctx"
            )
        bad = [t for t in toks if not 0 <= t < self.n_vocab]
        if bad:
            raise UserInputError(f"token ids {bad[:5]} are outside the vocabulary (0..{self.n_vocab - 1})")
        return toks

    def _check_layers(self, layers: Sequence[int]) -> list[int]:
        wanted = sorted({int(layer) for layer in layers})
        if not wanted:
            raise UserInputError("give at least one layer to read")
        for layer in wanted:
            if layer == self.n_layer - 1:
                raise UserInputError(
                    f"layer {layer} is the last block: llama.cpp only computes its output rows there, so its "
                    f"residual cannot be read for every token; read layers 0 to {self.n_layer - 2}"
                )
            if not 0 <= layer < self.n_layer:
                raise UserInputError(f"layer {layer} is out of range; this model has blocks 0 to {self.n_layer - 1}")
        return wanted

    def _set_directions(self, directions: Mapping[int, np.ndarray] | None) -> None:
        # Setting a control vector forces a scheduler re-reserve, so skip it when nothing changed.
        key = build_buffer(directions, self.n_layer, self.n_embd).tobytes() if directions else None
        if key == self._cvec_key:
            return
        apply_to_context(self._ctx, directions, self.n_layer, self.n_embd)
        self._cvec_key = key

    def _on_tensor(self, tensor_ptr: int, ask: bool, _user_data: int) -> bool:
        try:
            tensor = _GgmlTensor.from_address(tensor_ptr)
            name = tensor.name.decode("utf-8", "replace")
            layer = self._want.get(name)
            if ask:
                return layer is not None
            if layer is None:
                return True
            if tensor.type != _GGML_TYPE_F32 or tensor.ne[2] != 1 or tensor.ne[3] != 1:
                self._error = f"{name} is not a 2-D float32 tensor (type {tensor.type})"
                return False
            rows, cols = int(tensor.ne[1]), int(tensor.ne[0])
            if cols != self.n_embd or tensor.nb[1] != cols * 4:
                self._error = f"{name} has an unexpected layout (ne0={cols}, nb1={tensor.nb[1]})"
                return False
            acts = np.empty((rows, cols), dtype=np.float32)
            libggml.ggml_backend_tensor_get(tensor_ptr, acts.ctypes.data, 0, libggml.ggml_nbytes(tensor_ptr))
            self._pieces[layer].append(acts)
            return True
        except Exception as exc:  # noqa: BLE001 - an exception must not cross the C callback boundary
            self._error = f"{type(exc).__name__}: {exc}"
            return False
