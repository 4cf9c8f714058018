"""Guard: control-vector buffers and what llama.cpp does with them (esr_local/cvec.py).

The buffer tests need no model. The apply tests use a llama.cpp context of their own on the embedded
SmolLM2's weights, so llama.cpp itself says whether it accepted the buffer; the behavioural checks
(steered text differs, cleared text is the base text again) are in test_guard_layers.py and test_engine.py.
"""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from esr_local.cvec import apply_to_context, build_buffer
from esr_local.errors import BackendError, UserInputError


def test_directions_on_the_same_layer_add_up():
    # Two keys that name the same layer (an int and its text) are summed into one row, as documented.
    buf = build_buffer({2: [1.0, 2.0, 3.0], "2": [10.0, 20.0, 30.0]}, 4, 3)
    assert buf.tolist() == [0, 0, 0, 11, 22, 33, 0, 0, 0]


def test_a_float64_value_beyond_float32_is_refused_not_sent_as_infinity():
    # The buffer is float32: a float64 value of 1e39 would become inf inside llama.cpp.
    with pytest.raises(UserInputError, match="^steering vector for layer 1 contains NaN or infinite values$"):
        build_buffer({1: np.array([1e39, 0.0, 0.0])}, 4, 3)
    assert build_buffer({1: np.array([3e38, 0.0, 0.0])}, 4, 3)[0] == np.float32(3e38)


@pytest.fixture()
def context(smollm2):
    """A fresh llama.cpp context on the session model's weights (the model's own context is left alone)."""
    p = llama_cpp.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_threads, p.n_threads_batch = 64, 64, 1, 1
    ctx = llama_cpp.llama_init_from_model(smollm2.llm.model, p)
    assert ctx
    yield ctx
    llama_cpp.llama_free(ctx)


def test_llama_cpp_accepts_the_full_buffer_and_a_clear(smollm2, context):
    n_layer, n_embd = smollm2.n_layer, smollm2.n_embd
    apply_to_context(context, {1: np.ones(n_embd), n_layer - 1: np.ones(n_embd)}, n_layer, n_embd)
    apply_to_context(context, None, n_layer, n_embd)
    apply_to_context(context, {}, n_layer, n_embd)


def test_a_width_llama_cpp_rejects_is_a_backend_error_naming_the_width(smollm2, context):
    # The buffer is built for n_embd=4, which passes our own checks; llama.cpp compares it with the model's 576.
    with pytest.raises(BackendError, match=r"^llama\.cpp rejected the control vector \(rc=-1\); check that n_embd=4 "
                                           r"matches the model$"):
        apply_to_context(context, {1: np.ones(4)}, smollm2.n_layer, 4)
