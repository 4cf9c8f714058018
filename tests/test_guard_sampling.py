"""Guard: sampling settings, seeds, and the llama.cpp sampler chain built from them (esr_local/sampling.py).

The chain is exercised on synthetic logits through llama.cpp's own sampler API (no model needed)."""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np
import pytest

from esr_local.errors import UserInputError
from esr_local.sampling import MAX_SEED, SamplingParams, check_seed, make_sampler, resolve_sampling

N_VOCAB = 1000


def _pick(params: SamplingParams, logits, history=(), seed=0, n_ctx=1024) -> int:
    chain = make_sampler(params, seed, n_ctx, N_VOCAB)
    try:
        for t in history:
            llama_cpp.llama_sampler_accept(chain, t)
        data = (llama_cpp.llama_token_data * N_VOCAB)(
            *[llama_cpp.llama_token_data(i, float(x), 0.0) for i, x in enumerate(logits)])
        arr = llama_cpp.llama_token_data_array(data, N_VOCAB, -1, False)
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
        return data[arr.selected].id
    finally:
        llama_cpp.llama_sampler_free(chain)


def _two_best(best=2.0, rest=1.9):
    logits = np.full(N_VOCAB, rest, np.float32)
    logits[5] = best
    return logits


def test_the_penalty_divides_the_logit_of_a_seen_token_and_nothing_more():
    greedy = lambda p: SamplingParams(temperature=0.0, repetition_penalty=p)  # noqa: E731
    assert _pick(greedy(1.0), _two_best(), history=[5]) == 5
    assert _pick(greedy(1.1), _two_best(), history=[5]) != 5  # 2.0 / 1.1 = 1.82 < 1.9
    # 2.0 / 1.05 = 1.905 > 1.9: still the best; any frequency or presence penalty on top would drop it.
    assert _pick(greedy(1.05), _two_best(), history=[5, 5, 5]) == 5
    # Negative logits are multiplied: -1.0 * 1.1 = -1.1 < -1.05.
    neg = np.full(N_VOCAB, -1.05, np.float32)
    neg[5] = -1.0
    assert _pick(greedy(1.0), neg, history=[5]) == 5 and _pick(greedy(1.1), neg, history=[5]) != 5
    # Every penalty other than 1.0 is applied, whatever its value (2.0 included).
    assert _pick(greedy(2.0), _two_best(), history=[5]) != 5
    assert _pick(greedy(0.5), _two_best(best=1.0, rest=1.9), history=[5]) == 5  # < 1 rewards: 1.0 / 0.5 = 2.0


def test_the_penalty_window_is_the_whole_context():
    history = [5] + list(range(100, 400))  # token 5, then 300 others
    assert _pick(SamplingParams(temperature=0.0, repetition_penalty=1.1), _two_best(), history, n_ctx=1024) != 5
    # The window is n_ctx: a 64-token window would have forgotten token 5.
    assert _pick(SamplingParams(temperature=0.0, repetition_penalty=1.1), _two_best(), history, n_ctx=64) == 5


def test_truncation_settings_and_seeds():
    flat = np.zeros(N_VOCAB, np.float32)
    flat[:50] = np.linspace(1.0, 1.2, 50)  # 50 plausible tokens, token 49 the best
    free = SamplingParams(temperature=1.0, repetition_penalty=1.0)
    picks = {_pick(free, flat, seed=s) for s in range(30)}
    assert len(picks) > 5
    assert _pick(free, flat, seed=7) == _pick(free, flat, seed=7)
    for narrow in (SamplingParams(temperature=1.0, repetition_penalty=1.0, top_k=1),
                   SamplingParams(temperature=1.0, repetition_penalty=1.0, top_p=1e-6),
                   SamplingParams(temperature=1.0, repetition_penalty=1.0, min_p=0.999)):
        assert {_pick(narrow, flat, seed=s) for s in range(10)} == {49}, narrow
    top3 = {_pick(SamplingParams(temperature=1.0, repetition_penalty=1.0, top_k=3), flat, seed=s) for s in range(40)}
    assert top3 == {47, 48, 49}
    # Temperature reaches the draw: near 0 it is (almost) greedy, high it spreads.
    assert {_pick(SamplingParams(temperature=1e-4, repetition_penalty=1.0), flat, seed=s) for s in range(10)} == {49}
    assert _pick(SamplingParams(temperature=0.0, repetition_penalty=1.0), flat) == 49


@pytest.mark.parametrize("seed", [0, 1, MAX_SEED, np.int64(7)])
def test_valid_seeds(seed):
    assert check_seed(seed) == int(seed) and type(check_seed(seed)) is int


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, True, 1.0, "3"])
def test_invalid_seeds(seed):
    with pytest.raises(UserInputError, match=rf"^seed must be an integer from 0 to {MAX_SEED} \(llama.cpp keeps 32 bits; 4294967295 means random\), got "):
        check_seed(seed)
    with pytest.raises(UserInputError):
        make_sampler(SamplingParams(), seed, 64, N_VOCAB)


def test_validate_edges_and_messages():
    SamplingParams(temperature=0.0, max_tokens=1, repetition_penalty=1e-3, top_k=0, top_p=1.0, min_p=0.0).validate()
    SamplingParams(min_p=0.99, top_p=1e-9).validate()
    cases = [({"temperature": -0.1}, "temperature must be >= 0, got -0.1"),
             ({"temperature": float("nan")}, "temperature must be >= 0, got nan"),
             ({"temperature": float("inf")}, "temperature must be >= 0, got inf"),
             ({"max_tokens": 0}, "max tokens must be at least 1, got 0"),
             ({"repetition_penalty": 0.0}, r"repetition penalty must be > 0 \(1.0 = off\), got 0.0"),
             ({"repetition_penalty": float("inf")}, "repetition penalty must be > 0"),
             ({"top_k": -1}, r"^top-k must be >= 0 \(0 = off\), top-p in \(0, 1\] and min-p in \[0, 1\)$"),
             ({"top_p": 0.0}, "top-p in"), ({"top_p": 1.01}, "top-p in"),
             ({"min_p": 1.0}, r"min-p in \[0, 1\)"), ({"min_p": -0.1}, "min-p in")]
    for bad, message in cases:
        with pytest.raises(UserInputError, match=message):
            SamplingParams(**bad).validate()


def test_resolve_sampling_precedence():
    paper = resolve_sampling()
    assert paper == SamplingParams() == SamplingParams(0.6, 512, 1.1, 0, 1.0, 0.0)
    catalog = SamplingParams(temperature=0.9, max_tokens=300, repetition_penalty=1.3)
    assert resolve_sampling(catalog) == SamplingParams(0.9, 300, 1.3)
    given = resolve_sampling(catalog, temperature=0.0, max_tokens=7, repetition_penalty=1.0, top_k=4, top_p=0.5,
                             min_p=0.1)
    assert given == SamplingParams(0.0, 7, 1.0, 4, 0.5, 0.1)
    with pytest.raises(UserInputError, match="temperature"):
        resolve_sampling(temperature=-1.0)
