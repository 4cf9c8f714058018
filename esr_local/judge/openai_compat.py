"""Judge through any OpenAI-compatible `/chat/completions` endpoint (OpenAI, OpenRouter, vLLM,
llama.cpp's llama-server, llama-cpp-python's server, Ollama...). Stdlib HTTP only."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..errors import UserInputError
from .base import Judge, RetryableError
from .grammar import JUDGE_GBNF, JUDGE_JSON_SCHEMA, MAX_OUTPUT_CHARS
from .http import join_url, post_json, strip_base

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MAX_TOKENS = 4096

#: Values of `json_mode`: None (free text, as in the paper), "gbnf" (send our llama.cpp grammar in
#: the `grammar` field, understood by llama-server and llama-cpp-python's server), or "json_schema"
#: (OpenAI structured outputs; the reply is then a bare JSON object without feedback or tags).
JSON_MODES = (None, "gbnf", "json_schema")


class OpenAICompatJudge(Judge):
    """POST `{base_url}/chat/completions` with a system and a user message.

    `base_url` includes the API version prefix (e.g. `http://127.0.0.1:8000/v1`). The API key, if
    any, is sent as `Authorization: Bearer ...` and never logged or described.
    """

    backend = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        json_mode: str | None = None,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        if json_mode not in JSON_MODES:
            raise UserInputError(f"json_mode must be one of {JSON_MODES}, got {json_mode!r}")
        base = strip_base(base_url)
        if urlsplit(base).scheme not in ("http", "https"):
            raise UserInputError(f"judge base URL must start with http:// or https://, got {base_url!r}")
        if max_tokens is None:
            # Under our grammar the reply always fits in MAX_OUTPUT_CHARS tokens; asking for more
            # can overflow a small server context.
            max_tokens = MAX_OUTPUT_CHARS if json_mode == "gbnf" else DEFAULT_MAX_TOKENS
        super().__init__(model=model, base_url=base, max_tokens=max_tokens, **kwargs)
        self._api_key = api_key or None
        self.json_mode = json_mode
        # api.openai.com's newer models refuse `max_tokens`; most other servers only know it.
        self._token_field = (
            "max_completion_tokens" if urlsplit(base).hostname == "api.openai.com" else "max_tokens"
        )

    def describe(self) -> dict[str, Any]:
        """Settings for the run record (adds json_mode; never the key)."""
        info = super().describe()
        info.update(json_mode=self.json_mode)
        return info

    def request_body(self, system: str, user: str) -> dict[str, Any]:
        """The JSON body sent for one judgment."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            self._token_field: self.max_tokens,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.json_mode == "gbnf":
            body["grammar"] = JUDGE_GBNF
        elif self.json_mode == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "judge_attempts", "strict": True, "schema": JUDGE_JSON_SCHEMA},
            }
        return body

    def _complete(self, system: str, user: str, timeout: float) -> str:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        reply = post_json(
            join_url(self.base_url, "/chat/completions"),
            self.request_body(system, user),
            headers,
            timeout=timeout,
            secrets=(self._api_key or "",),
        )
        if "error" in reply and "choices" not in reply:
            raise RetryableError(f"judge server returned an error: {str(reply['error'])[:300]}")
        try:
            content = reply["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise RetryableError(
                "judge reply has no choices[0].message; is this an OpenAI-compatible server?"
            ) from None
        if content is None:
            return ""  # e.g. a refusal: recorded as a parse error of an empty reply
        if not isinstance(content, str):
            raise RetryableError(f"judge reply content is a {type(content).__name__}, not text")
        return content
