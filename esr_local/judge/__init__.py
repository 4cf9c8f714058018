"""Judges that split a response into attempts and score each one.

Backends are chosen by a spec string (see `make_judge`) and imported lazily, so the HTTP judges
work without llama-cpp-python and the local judge needs no network. Every judge shares the loop in
`base.Judge` (time budget, retries, every try's error recorded) and a `rubric.Rubric`.
"""

from __future__ import annotations

import os

from ..errors import MissingResourceError, UserInputError
from .base import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, Judge, RetryableError
from .gating import gate_attempts
from .parse import parse_judge_output
from .records import Attempt, Judgment
from .rubric import DEFAULT_RUBRIC, RUBRIC_VERSION, Rubric, build_judge_messages, resolve_rubric

__all__ = [
    "DEFAULT_RUBRIC",
    "DEFAULT_TIMEOUT",
    "Attempt",
    "Judge",
    "Judgment",
    "RUBRIC_VERSION",
    "RetryableError",
    "Rubric",
    "SPEC_HELP",
    "check_judge_spec",
    "resolve_rubric",
    "build_judge_messages",
    "gate_attempts",
    "make_judge",
    "parse_judge_output",
]

SPEC_HELP = "offline, local, local:PATH.gguf, local:NAME (esr-local judge catalog), openai:MODEL, anthropic or anthropic:MODEL"


def make_judge(
    spec: str,
    *,
    model_path: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    restart_gating: bool = False,
    max_retries: int = DEFAULT_MAX_RETRIES,
    timeout: float | None = None,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    seed: int = 0,
    temperature: float | None = None,
    max_tokens: int | None = None,
    json_mode: str | None = None,
    retry_backoff: float = 1.0,
    n_ctx: int | None = None,
    rubric: Rubric | str | None = None,
) -> Judge:
    """Build a judge from a spec string.

    - `local` / `local:PATH.gguf` / `local:NAME`: in-process llama.cpp, greedy and
      grammar-constrained. PATH is a GGUF file (model_path overrides it; default: the embedded
      SmolLM2-135M-Instruct, a plumbing check, not a research judge); NAME is an entry of the judge
      catalog (`esr_local.judge.catalog`), downloaded through huggingface_hub on first use.
      `n_threads` (default: all cores / ESR_LOCAL_THREADS), `n_gpu_layers` (GPU offload), `seed`
      and `n_ctx` (default: the catalog entry's, else 4096) apply here only.
    - `openai:MODEL`: any OpenAI-compatible endpoint. Base URL from `base_url`, else
      `ESR_JUDGE_BASE_URL`, else `OPENAI_BASE_URL`, else https://api.openai.com/v1. Key from
      `api_key`, else `ESR_JUDGE_API_KEY`, else `OPENAI_API_KEY` (optional for local servers).
      `json_mode` may be "gbnf" (llama.cpp servers) or "json_schema" (OpenAI structured outputs).
    - `anthropic` / `anthropic:MODEL`: the Messages API (default model claude-haiku-4-5-20251001,
      the paper's judge). Base URL from `base_url`, else `ANTHROPIC_BASE_URL`, else
      https://api.anthropic.com; key from `api_key`, else `ANTHROPIC_API_KEY` (required).

    `rubric` is a Rubric or a spec for `resolve_rubric` (default | paper | FILE). `timeout` is the
    total time budget of one judgment in seconds (default `DEFAULT_TIMEOUT`), `max_retries` the
    most tries (see esr_local.judge.base for the retry policy). `temperature` None means the backend
    default (0 for local; omitted from remote requests).
    Raises UserInputError for an unknown spec or catalog name or a missing required key.
    """
    backend, _, rest = (spec or "").strip().partition(":")
    backend = backend.lower()
    rest = rest.strip()
    asks_rubric = rubric.strip() not in ("", "default") if isinstance(rubric, str) else (
        rubric is not None and rubric != DEFAULT_RUBRIC)
    if backend == "offline" and asks_rubric:
        # before resolve_rubric: `--rubric paper` would otherwise download (or ask for) a file that is never read
        raise UserInputError("the offline judge reads no rubric; drop --rubric, or pick an LLM judge "
                             "(local, openai:MODEL, anthropic) to use one")
    common = dict(
        restart_gating=restart_gating,
        max_retries=max_retries,
        temperature=temperature,
        max_tokens=max_tokens,
        retry_backoff=retry_backoff,
        rubric=resolve_rubric(rubric),
        timeout=timeout,
    )
    if backend == "offline":
        from .offline import OfflineJudge

        return OfflineJudge(model_path or rest or None, n_threads=n_threads, **common)
    if backend == "local":
        if json_mode not in (None, "gbnf"):
            raise UserInputError("the local judge is always grammar-constrained; drop json_mode")
        from .local import DEFAULT_N_CTX, LocalJudge

        extra: dict = {}
        path = model_path or rest or None
        if not model_path and rest and is_catalog_name(rest):
            from .catalog import resolve_judge_model

            found = resolve_judge_model(rest)
            path = str(found.path)
            n_ctx = n_ctx or found.entry.n_ctx
            extra = dict(catalog_name=found.entry.name, system_role=found.entry.system_role,
                         source={"hf_repo": found.entry.hf_repo, "files": list(found.entry.files),
                                 "revision": found.revision})
        return LocalJudge(
            path,
            n_ctx=n_ctx or DEFAULT_N_CTX,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            seed=seed,
            **extra,
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
        return OpenAICompatJudge(rest, base_url=url, api_key=key, json_mode=json_mode, **common)
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
        return AnthropicJudge(rest or DEFAULT_MODEL, api_key=key, base_url=url, **common)
    raise UserInputError(f"unknown judge spec {spec!r}; use one of: {SPEC_HELP}")


def is_catalog_name(rest: str) -> bool:
    """Whether the part after `local:` names a catalog entry rather than a file path."""
    return not rest.endswith(".gguf") and "/" not in rest and os.sep not in rest and not os.path.exists(rest)


def check_judge_spec(spec: str, *, model_path: str | None = None, base_url: str | None = None,
                     rubric: Rubric | str | None = None) -> None:
    """Catch a bad judge spec before anything is generated, without loading or downloading a model:
    a local file must exist, a catalog name must be known, remote judges need their keys, and the
    rubric must resolve. Raises the same errors make_judge would."""
    resolve_rubric(rubric)
    backend, _, rest = (spec or "").strip().partition(":")
    backend, rest = backend.lower(), rest.strip()
    if backend == "local":
        if model_path or (rest and not is_catalog_name(rest)):
            path = model_path or rest
            if not os.path.isfile(path):
                raise MissingResourceError(f"judge model not found: {path}; pass an existing .gguf file")
        elif rest:
            from .catalog import get_judge_entry

            get_judge_entry(rest)
        return
    if backend in ("openai", "anthropic"):
        make_judge(spec, base_url=base_url, rubric=rubric).close()
        return
    if backend == "offline":
        return
    raise UserInputError(f"unknown judge spec {spec!r}; use one of: {SPEC_HELP}")


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None
