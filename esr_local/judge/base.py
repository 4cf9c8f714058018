"""The judge base class: the backend-independent judging loop (time budget, retries, parsing, gating).

Fault policy (issue 7 §3), the same for every backend:
- One judgment has a total time budget, `timeout` seconds (default `DEFAULT_TIMEOUT`, 60 s), shared
  by all its tries and waits: each request may use only what is left, no try starts once it is
  spent, and waits are cut to fit. A hung judge therefore costs at most about `timeout` seconds per
  trial. (The local judge cannot be interrupted mid-generation; its grammar bounds the reply.)
- At most `max_retries` tries (default 3). Retried: RetryableError (connection refused, timeouts,
  408/409/425/429, 5xx, truncated or non-JSON bodies, replies of the wrong shape) after an
  exponential backoff `retry_backoff * 2**(try-1)` seconds, or the server's `Retry-After` when it
  gives one (capped at `MAX_RETRY_AFTER` and at the remaining budget); and parse failures (wrong
  types, out-of-range scores, no JSON), at once. Not retried: other BackendErrors (401, unknown
  model), a parse failure of a `deterministic` judge (the same input gives the same reply), and a
  parse failure whose reply is identical to the previous try's.
- Every failed try's error is recorded, in order, in `Judgment.errors`; `Judgment.error` is the last.
- Anything else (TypeError, AttributeError... a bug in our code) propagates: it is not a judge fault.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import BackendError, JudgeParseError
from .gating import gate_attempts
from .parse import parse_judge_output
from .records import Judgment
from .rubric import Rubric, build_judge_messages, resolve_rubric

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 3
MAX_RETRY_AFTER = 30.0


class RetryableError(BackendError):
    """A backend failure worth retrying; `retry_after` is the server's requested wait in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def redact_url(url: str | None) -> str | None:
    """Drop user:password, query and fragment from a URL so it can be logged."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Deadline:
    """The time left of one judgment's budget."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


class Judge:
    """Base class of judge backends. LLM backends implement `_complete(system, user, timeout) -> str`.

    `judge()` never raises for backend or parse failures (see the module docstring for the policy);
    the outcome and every failed try are recorded in the returned `Judgment`.
    """

    backend = "base"
    #: True when the same input always gives the same reply (no sampling): parse failures are not retried.
    deterministic = False

    def __init__(
        self,
        *,
        model: str,
        restart_gating: bool = False,
        max_retries: int = DEFAULT_MAX_RETRIES,
        temperature: float | None = None,
        max_tokens: int = 4096,
        base_url: str | None = None,
        retry_backoff: float = 1.0,
        rubric: Rubric | str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.model = model
        self.restart_gating = restart_gating
        self.max_retries = max(1, int(max_retries))
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.base_url = base_url
        self.retry_backoff = retry_backoff
        self.rubric = resolve_rubric(rubric)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)

    def describe(self) -> dict[str, Any]:
        """Settings to store with a run. Contains no secrets (the URL is redacted, no key)."""
        info = {
            "backend": self.backend,
            "model": self.model,
            "version": None,
            "weights_sha256": None,
            "restart_gating": self.restart_gating,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "base_url": redact_url(self.base_url),
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "deterministic": self.deterministic,
        }
        info.update(self.rubric.describe())
        return info

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={redact_url(self.base_url)!r})"

    def close(self) -> None:
        """Release backend resources (the local judge frees its model); safe to call twice."""

    def _complete(self, system: str, user: str, timeout: float) -> str:
        """Send one request (within `timeout` seconds) and return the reply text; BackendError on failure."""
        raise BackendError(f"the {self.backend} judge has no language model to send free-form requests to")

    def complete(self, system: str, user: str) -> str:
        """One raw LLM call (e.g. rating a label's concreteness), with this judge's time budget and
        retries for RetryableError. Returns the reply text; raises BackendError when every try failed."""
        deadline = Deadline(self.timeout)
        errors: list[str] = []
        for tries in range(1, self.max_retries + 1):
            try:
                return self._complete(system, user, max(deadline.left(), 0.001))
            except RetryableError as exc:
                errors.append(str(exc))
                if tries == self.max_retries or not self._wait(exc, tries, deadline):
                    break
        raise BackendError(f"the judge failed {len(errors)} time(s): " + " | ".join(errors))

    def judge(self, prompt: str, response: str, label: str) -> Judgment:
        """Judge one response to `prompt` with the unrelated `label`; never raises for judge failures."""
        system, user = build_judge_messages(prompt, response, label, self.rubric)
        deadline = Deadline(self.timeout)
        start = time.perf_counter()
        raw = ""
        errors: list[str] = []
        tries = 0
        while tries < self.max_retries:
            if tries and deadline.left() <= 0:
                errors.append(f"time budget of {self.timeout:g} s spent; no further try")
                break
            tries += 1
            previous = raw
            try:
                raw = self._complete(system, user, max(deadline.left(), 0.001))
            except RetryableError as exc:
                errors.append(f"backend error: {exc}")
                if tries < self.max_retries and not self._wait(exc, tries, deadline):
                    errors.append(f"time budget of {self.timeout:g} s spent; no further try")
                    break
                continue
            except BackendError as exc:
                errors.append(f"backend error: {exc}")
                break  # e.g. bad key or unknown model: retrying cannot help
            try:
                found = parse_judge_output(raw)
            except JudgeParseError as exc:
                errors.append(f"parse error: {exc}")
                if self.deterministic or (tries > 1 and raw == previous):
                    break  # the same input would give the same unusable reply
                continue
            attempts = gate_attempts(response, found) if self.restart_gating else found
            return Judgment(raw_output=raw, attempts=attempts, parse_status="ok", error=None, tries=tries,
                            latency_ms=(time.perf_counter() - start) * 1000.0, n_attempts_raw=len(found),
                            errors=errors)
        return Judgment(raw_output=raw, attempts=None, parse_status="error", error=errors[-1] if errors else None,
                        tries=tries, latency_ms=(time.perf_counter() - start) * 1000.0, n_attempts_raw=None,
                        errors=errors)

    def _wait(self, exc: RetryableError, tries: int, deadline: Deadline) -> bool:
        """Sleep before the next try; False when the budget does not allow one."""
        if exc.retry_after is not None:
            delay = min(max(exc.retry_after, 0.0), MAX_RETRY_AFTER)
        else:
            delay = self.retry_backoff * 2 ** (tries - 1) if self.retry_backoff > 0 else 0.0
        if delay >= deadline.left():
            return False
        if delay > 0:
            time.sleep(delay)
        return True
