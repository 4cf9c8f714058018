"""LLM judges that split a steered response into attempts and score each one.

Backends are chosen by a spec string (see `make_judge`) and imported lazily, so the HTTP judges
work without llama-cpp-python and the local judge needs no network.
"""

from __future__ import annotations

import os

from ..errors import UserInputError
from .base import Judge, RetryableError
from .gating import gate_attempts
from .parse import parse_judge_output
from .records import Attempt, Judgment
from .rubric import RUBRIC_VERSION, build_judge_messages

__all__ = [
    "Attempt",
    "Judge",
    "Judgment",
    "RUBRIC_VERSION",
    "RetryableError",
    "build_judge_messages",
    "gate_attempts",
    "make_judge",
    "parse_judge_output",
]

SPEC_HELP = "local, local:PATH.gguf, openai:MODEL, anthropic or anthropic:MODEL"


def make_judge(
    spec: str,
    *,
    model_path: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    restart_gating: bool = False,
    max_retries: int = 3,
    timeout: float = 120,
    n_threads: int | None = None,
    seed: int = 0,
    temperature: float | None = None,
    max_tokens: int | None = None,
    json_mode: str | None = None,
    retry_backoff: float = 1.0,
    n_ctx: int | None = None,
) -> Judge:
    """Build a judge from a spec string.

    - `local` / `local:PATH.gguf`: in-process llama.cpp (model_path overrides PATH; default is the
      embedded SmolLM2-135M-Instruct), greedy and grammar-constrained.
    - `openai:MODEL`: any OpenAI-compatible endpoint. Base URL from `base_url`, else
      `ESR_JUDGE_BASE_URL`, else `OPENAI_BASE_URL`, else https://api.openai.com/v1. Key from
      `api_key`, else `ESR_JUDGE_API_KEY`, else `OPENAI_API_KEY` (optional for local servers).
      `json_mode` may be "gbnf" (llama.cpp servers) or "json_schema" (OpenAI structured outputs).
    - `anthropic` / `anthropic:MODEL`: the Messages API (default model claude-haiku-4-5-20251001,
      the paper's judge). Base URL from `base_url`, else `ANTHROPIC_BASE_URL`, else
      https://api.anthropic.com; key from `api_key`, else `ANTHROPIC_API_KEY` (required).

    `temperature` None means the backend default (0 for local; omitted from remote requests).
    `n_threads`, `seed` and `n_ctx` (default 4096) apply to the local judge only.
    Raises UserInputError for an unknown spec or a missing required key.
    """
    backend, _, rest = (spec or "").strip().partition(":")
    backend = backend.lower()
    rest = rest.strip()
    common = dict(
        restart_gating=restart_gating,
        max_retries=max_retries,
        temperature=temperature,
        max_tokens=max_tokens,
        retry_backoff=retry_backoff,
    )
    if backend == "local":
        if json_mode not in (None, "gbnf"):
            raise UserInputError("the local judge is always grammar-constrained; drop json_mode")
        from .local import DEFAULT_N_CTX, LocalJudge

        return LocalJudge(
            model_path or rest or None,
            n_ctx=n_ctx or DEFAULT_N_CTX,
            n_threads=n_threads,
            seed=seed,
            **common,
        )
    if backend == "openai":
        if not rest:
            raise UserInputError(f"give the judge model, e.g. openai:gpt-4o-mini (forms: {SPEC_HELP})")
        from .openai_compat import DEFAULT_BASE_URL, OpenAICompatJudge

        url = base_url or _env("ESR_JUDGE_BASE_URL", "OPENAI_BASE_URL") or DEFAULT_BASE_URL
        key = api_key or _env("ESR_JUDGE_API_KEY", "OPENAI_API_KEY")
        if not key and "api.openai.com" in url:
            raise UserInputError(
                "the OpenAI API needs a key: set ESR_JUDGE_API_KEY (or OPENAI_API_KEY), "
                "or point ESR_JUDGE_BASE_URL at a local OpenAI-compatible server"
            )
        return OpenAICompatJudge(
            rest, base_url=url, api_key=key, timeout=timeout, json_mode=json_mode, **common
        )
    if backend == "anthropic":
        if json_mode is not None:
            raise UserInputError("json_mode is not supported by the anthropic judge")
        from .anthropic import DEFAULT_BASE_URL, DEFAULT_MODEL, AnthropicJudge

        key = api_key or _env("ANTHROPIC_API_KEY")
        if not key:
            raise UserInputError(
                "the anthropic judge needs an API key: set ANTHROPIC_API_KEY (or pass api_key)"
            )
        url = base_url or _env("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
        return AnthropicJudge(rest or DEFAULT_MODEL, api_key=key, base_url=url, timeout=timeout, **common)
    raise UserInputError(f"unknown judge spec {spec!r}; use one of: {SPEC_HELP}")


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None
