"""The judge base class: the backend-independent judging loop (retries, parsing, gating)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import BackendError, JudgeParseError
from .gating import gate_attempts
from .parse import parse_judge_output
from .records import Judgment
from .rubric import RUBRIC_VERSION, build_judge_messages


class RetryableError(BackendError):
    """A backend failure worth retrying (timeouts, connection errors, 429, 5xx)."""


def redact_url(url: str | None) -> str | None:
    """Drop user:password, query and fragment from a URL so it can be logged."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Judge:
    """Base class of judge backends. Subclasses implement `_complete(system, user) -> str`.

    `judge()` never raises for backend or parse failures: it tries up to `max_retries` times
    (parse errors and retryable backend errors are retried; a non-retryable backend error such as
    HTTP 401 stops at once) and records the last failure in the returned `Judgment`.
    """

    backend = "base"

    def __init__(
        self,
        *,
        model: str,
        restart_gating: bool = False,
        max_retries: int = 3,
        temperature: float | None = None,
        max_tokens: int = 4096,
        base_url: str | None = None,
        retry_backoff: float = 1.0,
    ) -> None:
        self.model = model
        self.restart_gating = restart_gating
        self.max_retries = max(1, int(max_retries))
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.base_url = base_url
        self.retry_backoff = retry_backoff

    def describe(self) -> dict[str, Any]:
        """Settings to store with a run. Contains no secrets (the URL is redacted, no key)."""
        return {
            "backend": self.backend,
            "model": self.model,
            "rubric_version": RUBRIC_VERSION,
            "restart_gating": self.restart_gating,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "base_url": redact_url(self.base_url),
            "max_retries": self.max_retries,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={redact_url(self.base_url)!r})"

    def close(self) -> None:
        """Release backend resources (the local judge frees its model); safe to call twice."""

    def _complete(self, system: str, user: str) -> str:
        """Send one request and return the judge's text. Raise BackendError on failure."""
        raise NotImplementedError

    def judge(self, prompt: str, response: str, label: str) -> Judgment:
        """Judge one response to `prompt` steered toward `label`; never raises for judge failures."""
        system, user = build_judge_messages(prompt, response, label)
        raw = ""
        error: str | None = None
        start = time.perf_counter()
        tries = 0
        while tries < self.max_retries:
            tries += 1
            try:
                raw = self._complete(system, user)
            except RetryableError as exc:
                error = f"backend error: {exc}"
                if tries < self.max_retries and self.retry_backoff > 0:
                    time.sleep(self.retry_backoff * 2 ** (tries - 1))
                continue
            except BackendError as exc:
                error = f"backend error: {exc}"
                break  # e.g. bad key or unknown model: retrying cannot help
            except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
                error = f"backend error: {type(exc).__name__}: {exc}"
                continue
            try:
                found = parse_judge_output(raw)
            except JudgeParseError as exc:
                error = f"parse error: {exc}"
                continue
            attempts = gate_attempts(response, found) if self.restart_gating else found
            return Judgment(
                raw_output=raw,
                attempts=attempts,
                parse_status="ok",
                error=None,
                tries=tries,
                latency_ms=(time.perf_counter() - start) * 1000.0,
                n_attempts_raw=len(found),
            )
        return Judgment(
            raw_output=raw,
            attempts=None,
            parse_status="error",
            error=error,
            tries=tries,
            latency_ms=(time.perf_counter() - start) * 1000.0,
            n_attempts_raw=None,
        )
