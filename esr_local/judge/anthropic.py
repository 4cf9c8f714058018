"""Judge through the Anthropic Messages API (the paper's judge was Claude Haiku 4.5). Stdlib HTTP."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .base import Judge, RetryableError
from .http import join_url, post_json, strip_base

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MODEL = "claude-haiku-4-5-20251001"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096


class AnthropicJudge(Judge):
    """POST `{base_url}/v1/messages` with `x-api-key` and `anthropic-version` headers.

    Temperature is left to the API default unless given, as in the paper's judge calls.
    """

    backend = "anthropic"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        base = strip_base(base_url)
        if urlsplit(base).path.endswith("/v1"):  # accept both "https://host" and "https://host/v1"
            parts = urlsplit(base)
            base = urlunsplit((parts.scheme, parts.netloc, parts.path[: -len("/v1")], parts.query, ""))
        super().__init__(
            model=model,
            base_url=base,
            max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
            **kwargs,
        )
        self._api_key = api_key

    def describe(self) -> dict[str, Any]:
        """Settings for the run record (adds the API version; never the key)."""
        info = super().describe()
        info.update(api_version=API_VERSION, version=f"anthropic-api {API_VERSION}")
        return info

    def request_body(self, system: str, user: str) -> dict[str, Any]:
        """The JSON body sent for one judgment."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": system,
            "messages": [{"role": "user", "content": user}],
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def _complete(self, system: str, user: str, timeout: float) -> str:
        reply = post_json(
            join_url(self.base_url, "/v1/messages"),
            self.request_body(system, user),
            {"x-api-key": self._api_key, "anthropic-version": API_VERSION},
            timeout=timeout,
            secrets=(self._api_key,),
        )
        if reply.get("type") == "error":
            err = reply.get("error")
            detail = f"{err.get('type')}: {err.get('message')}" if isinstance(err, dict) else str(err)[:300]
            raise RetryableError(f"Anthropic API error: {detail}")
        blocks = reply.get("content")
        if not isinstance(blocks, list):
            raise RetryableError("Anthropic reply has no content list")
        texts = [b.get("text") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
        if any(not isinstance(t, str) for t in texts):
            raise RetryableError("Anthropic reply has a text block whose text is not a string")
        return "".join(texts)
