"""Guard: prompt draws and trial seeds are part of every stored run's identity.

A resumed or replayed run re-derives them, so they must not change between versions: the values below
were produced by the derivation documented in esr_local/runs/plan.py (sha256 of "run:latent:prompt:rep",
first 8 bytes big-endian, mod 1_000_001; prompts drawn without replacement by random.Random seeded with
"run:prompts:latent"), and are recomputed here from that description as well.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from esr_local.errors import UserInputError
from esr_local.runs.plan import choose_prompt_indices, trial_seed


def _documented_seed(run, latent, prompt, rep):
    return int.from_bytes(hashlib.sha256(f"{run}:{latent}:{prompt}:{rep}".encode()).digest()[:8], "big") % 1_000_001


def test_trial_seeds_are_stable_across_versions():
    assert [trial_seed(7, 3, 1, 0), trial_seed(0, 0, 0, 0), trial_seed(42, 5, 17, 1), trial_seed(2**31, 123456, 37, 4)] \
        == [391609, 717834, 238828, 950807]
    for args in [(1, 2, 3, 4), (99, 0, 5, 0), (5, 5, 5, 5), (123, 77, 0, 9)]:
        assert trial_seed(*args) == _documented_seed(*args)


def test_every_argument_changes_the_seed_and_the_range_is_inclusive():
    base = trial_seed(10, 20, 30, 0)
    assert len({base, trial_seed(11, 20, 30, 0), trial_seed(10, 21, 30, 0), trial_seed(10, 20, 31, 0),
                trial_seed(10, 20, 30, 1)}) == 5
    seeds = [trial_seed(1, latent, p, 0) for latent in range(200) for p in range(50)]
    assert 0 <= min(seeds) and max(seeds) <= 1_000_000 and max(seeds) > 999_000


def test_prompt_draws_are_stable_across_versions():
    assert choose_prompt_indices(42, 0, 38, 2) == [31, 33]
    assert choose_prompt_indices(42, 5, 38, 2) == [36, 10]
    assert choose_prompt_indices(1, 4, 38, 5) == [30, 19, 18, 13, 26]
    assert choose_prompt_indices(3, 1, 5, 5) == [0, 1, 3, 2, 4]  # k == n: a permutation, allowed
    for run, latent, n, k in [(9, 2, 38, 7), (0, 0, 10, 3)]:
        assert choose_prompt_indices(run, latent, n, k) == random.Random(f"{run}:prompts:{latent}").sample(range(n), k)


def test_draws_are_without_replacement_and_depend_on_run_and_latent():
    picks = choose_prompt_indices(5, 1, 38, 38)
    assert sorted(picks) == list(range(38))
    assert choose_prompt_indices(5, 1, 38, 6) != choose_prompt_indices(6, 1, 38, 6)
    assert choose_prompt_indices(5, 1, 38, 6) != choose_prompt_indices(5, 2, 38, 6)
    assert choose_prompt_indices(5, 1, 38, 0) == []


def test_more_prompts_than_the_set_holds_is_a_clear_error():
    with pytest.raises(UserInputError, match=r"^6 prompts per latent requested but the prompt set has only 5$"):
        choose_prompt_indices(1, 1, 5, 6)
