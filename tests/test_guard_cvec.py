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


def _last_logits(reader, n_vocab: int) -> np.ndarray:
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(reader._ctx, -1), shape=(n_vocab,)).copy()


def test_llama_cpp_accepts_the_full_buffer_and_a_clear(smollm2):
    """A vector on layer 1 moves l_out-1 by exactly itself; one on the last layer (whose residual is not
    readable) moves the last token's logits; a clear (None, then {}) gives the base back bit for bit."""
    from esr_local.readout import ResidualReader

    n_layer, n_embd = smollm2.n_layer, smollm2.n_embd
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(smollm2.llm.model))
    rng = np.random.default_rng(0)
    v1, v_last = rng.normal(size=n_embd).astype(np.float32), rng.normal(size=n_embd).astype(np.float32)
    tokens = smollm2.tokenize("The cat sat on the mat.")
    layers = [1, n_layer - 2]
    with ResidualReader(smollm2.llm, n_ctx=64, n_threads=1) as reader:
        def read():
            return reader.read(tokens, layers), _last_logits(reader, n_vocab)

        base, base_logits = read()
        # set on the reader's own context directly: read(..., None) leaves a vector it did not set in place
        apply_to_context(reader._ctx, {1: v1, n_layer - 1: v_last}, n_layer, n_embd)
        steered, _ = read()
        apply_to_context(reader._ctx, {n_layer - 1: 4 * v_last}, n_layer, n_embd)
        last_only, last_logits = read()
        apply_to_context(reader._ctx, None, n_layer, n_embd)
        cleared = read()
        apply_to_context(reader._ctx, {1: v1}, n_layer, n_embd)
        apply_to_context(reader._ctx, {}, n_layer, n_embd)
        cleared_empty = read()
    np.testing.assert_allclose(steered[1] - base[1], np.broadcast_to(v1, base[1].shape), atol=1e-4)
    assert np.abs(steered[n_layer - 2] - base[n_layer - 2]).max() > 0.1  # carried on through the blocks
    for layer in layers:  # the last layer's vector leaves every earlier residual alone ...
        np.testing.assert_array_equal(last_only[layer], base[layer])
    assert np.abs(last_logits - base_logits).max() > 0.1  # ... and moves the logits
    for acts, logits in (cleared, cleared_empty):
        np.testing.assert_array_equal(logits, base_logits)
        for layer in layers:
            np.testing.assert_array_equal(acts[layer], base[layer])


def test_a_width_llama_cpp_rejects_is_a_backend_error_naming_the_width(smollm2, context):
    # The buffer is built for n_embd=4, which passes our own checks; llama.cpp compares it with the model's 576.
    with pytest.raises(BackendError, match=r"^llama\.cpp rejected the control vector \(rc=-1\); check that n_embd=4 "
                                           r"matches the model$"):
        apply_to_context(context, {1: np.ones(4)}, smollm2.n_layer, 4)
