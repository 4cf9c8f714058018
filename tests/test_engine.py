"""Steered generation on the real SmolLM2 GGUF: steering changes text, clearing restores it exactly,
seeds reproduce, parallel sequences match single ones, and the repetition penalty covers the whole context."""

import ctypes

import llama_cpp
import numpy as np
import pytest

from esr_local.engine import SamplingParams, _make_sampler
from esr_local.errors import UserInputError

PROMPT = "Explain how to change a bike tire."
GREEDY = SamplingParams(temperature=0.0, max_tokens=40)


def _direction(n_embd, scale, seed=0):
    v = np.random.default_rng(seed).standard_normal(n_embd).astype(np.float32)
    return v / np.linalg.norm(v) * scale


def test_steering_changes_text_and_clearing_restores_it_byte_for_byte(smollm2):
    smollm2.clear()
    base = smollm2.generate(PROMPT, GREEDY, 0).text
    smollm2.set_directions({10: _direction(smollm2.n_embd, 60)})
    steered = smollm2.generate(PROMPT, GREEDY, 0).text
    smollm2.clear()
    again = smollm2.generate(PROMPT, GREEDY, 0).text
    assert steered != base
    assert again == base


def test_vector_change_is_not_hidden_by_the_kv_cache(smollm2):
    # Two different vectors in a row must give the outputs each gives from a fresh state.
    a, b = {10: _direction(smollm2.n_embd, 60, 1)}, {10: _direction(smollm2.n_embd, 60, 2)}
    smollm2.set_directions(a)
    first_a = smollm2.generate(PROMPT, GREEDY, 0).text
    smollm2.set_directions(b)
    then_b = smollm2.generate(PROMPT, GREEDY, 0).text
    smollm2.set_directions(a)
    again_a = smollm2.generate(PROMPT, GREEDY, 0).text
    smollm2.clear()
    assert first_a == again_a
    assert then_b != first_a


def test_same_seed_same_text_different_seed_different_text(smollm2):
    smollm2.clear()
    sp = SamplingParams(temperature=0.9, max_tokens=30)
    a = smollm2.generate(PROMPT, sp, 123).text
    b = smollm2.generate(PROMPT, sp, 123).text
    c = smollm2.generate(PROMPT, sp, 124).text
    assert a == b
    assert a != c


def test_parallel_sequences_match_single_sequence_greedy(smollm2_path, smollm2):
    from esr_local.engine import SteeredModel

    smollm2.clear()
    single = smollm2.generate(PROMPT, GREEDY, 0).text
    other = smollm2.generate("How do you boil an egg?", GREEDY, 0).text
    with SteeredModel(smollm2_path, n_ctx=512, n_seq=2) as par:
        gens = par.generate_many([PROMPT, "How do you boil an egg?"], GREEDY, [0, 0])
    assert [g.text for g in gens] == [single, other]


def test_streaming_pieces_join_to_the_text(smollm2):
    smollm2.clear()
    pieces = []
    gen = smollm2.generate(PROMPT, GREEDY, 0, on_text=pieces.append)
    assert "".join(pieces) == gen.text
    assert gen.completion_tokens == 40 and gen.stop_reason == "length"


def test_prompt_too_long_for_context_is_a_clear_error(smollm2):
    with pytest.raises(UserInputError, match="exceeds the context"):
        smollm2.generate(PROMPT, SamplingParams(max_tokens=5000), 0)


def _pick(chain, logits):
    n = len(logits)
    data = (llama_cpp.llama_token_data * n)(*[llama_cpp.llama_token_data(i, float(x), 0.0) for i, x in enumerate(logits)])
    arr = llama_cpp.llama_token_data_array(data, n, -1, False)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
    return data[arr.selected].id


def test_repetition_penalty_covers_prompt_and_whole_history(smollm2):
    n_vocab = smollm2.n_vocab
    logits = np.full(n_vocab, 1.9, np.float32)
    logits[5] = 2.0  # best token, unless penalised: 2.0 / 1.1 = 1.82 < 1.9
    off = _make_sampler(SamplingParams(temperature=0.0, repetition_penalty=1.0), 0, 1024, n_vocab)
    on = _make_sampler(SamplingParams(temperature=0.0, repetition_penalty=1.1), 0, 1024, n_vocab)
    for chain in (off, on):
        llama_cpp.llama_sampler_accept(chain, 5)  # token 5 in the "prompt" ...
        for t in range(100, 400):  # ... followed by 300 other tokens (more than llama-cpp-python's 64)
            llama_cpp.llama_sampler_accept(chain, t)
    try:
        assert _pick(off, logits) == 5
        assert _pick(on, logits) != 5
    finally:
        llama_cpp.llama_sampler_free(off)
        llama_cpp.llama_sampler_free(on)
