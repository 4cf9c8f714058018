"""Sampling settings and the llama.cpp sampler chain built from them."""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp
import numpy as np

from .errors import UserInputError

# llama.cpp keeps sampler seeds as uint32: a larger seed would silently fold onto another one, and
# 0xFFFFFFFF (LLAMA_DEFAULT_SEED) means "a random seed", so the largest reproducible seed is 2**32 - 2.
MAX_SEED = 2**32 - 2


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. Defaults are the paper's: T=0.6, 512 tokens, repetition penalty 1.1 over the
    whole context (prompt included, as vLLM applies it), top-k / top-p / min-p off."""

    temperature: float = 0.6
    max_tokens: int = 512
    repetition_penalty: float = 1.1
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def validate(self) -> SamplingParams:
        """Raise UserInputError for values llama.cpp would misread."""
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise UserInputError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_tokens < 1:
            raise UserInputError(f"max tokens must be at least 1, got {self.max_tokens}")
        if not (self.repetition_penalty > 0 and np.isfinite(self.repetition_penalty)):
            raise UserInputError(f"repetition penalty must be > 0 (1.0 = off), got {self.repetition_penalty}")
        if self.top_k < 0 or not (0 < self.top_p <= 1) or not (0 <= self.min_p < 1):
            raise UserInputError("top-k must be >= 0 (0 = off), top-p in (0, 1] and min-p in [0, 1)")
        return self


def check_seed(seed: int) -> int:
    """A seed llama.cpp uses as given: an integer in [0, 2^32 - 2]; anything else is refused."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise UserInputError(f"seed must be an integer from 0 to {MAX_SEED} (llama.cpp keeps 32 bits; 4294967295 means random), got {seed!r}")
    return int(seed)


def resolve_sampling(defaults=None, *, temperature: float | None = None, max_tokens: int | None = None,
                     repetition_penalty: float | None = None, top_k: int = 0, top_p: float = 1.0,
                     min_p: float = 0.0) -> SamplingParams:
    """Options given by the user win; then the catalog entry's defaults (`PaperDefaults`); then the paper's."""
    paper = SamplingParams()
    d = defaults or paper
    return SamplingParams(
        temperature=temperature if temperature is not None else d.temperature,
        max_tokens=max_tokens or d.max_tokens,
        repetition_penalty=repetition_penalty if repetition_penalty is not None else d.repetition_penalty,
        top_k=top_k, top_p=top_p, min_p=min_p,
    ).validate()


def make_sampler(params: SamplingParams, seed: int, n_ctx: int, n_vocab: int):
    """A llama.cpp sampler chain: penalties -> [top-k] -> [top-p] -> [min-p] -> temperature -> draw."""
    seed = check_seed(seed)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = llama_cpp.llama_sampler_chain_add
    if params.repetition_penalty != 1.0:
        # penalty_last_n = n_ctx: the whole context, prompt included (the prompt tokens are accepted into
        # the sampler's history before decoding). 0 would switch the penalty off.
        add(chain, llama_cpp.llama_sampler_init_penalties(n_vocab, n_ctx, params.repetition_penalty, 0.0, 0.0))
    if params.temperature == 0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
    add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain
