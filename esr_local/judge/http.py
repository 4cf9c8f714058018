"""A minimal JSON-over-HTTP POST for the remote judge backends (stdlib only)."""

from __future__ import annotations

import datetime
import email.utils
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import BackendError
from .base import RetryableError, redact_url

# 408 timeout, 409 conflict, 425 too early, 429 rate limit, 5xx server trouble, 529 Anthropic overload.
_RETRY_STATUS = {408, 409, 425, 429}


def post_json(
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    timeout: float,
    secrets: tuple[str, ...] = (),
) -> dict[str, Any]:
    """POST `body` as JSON and return the decoded JSON reply, all within `timeout` seconds.

    Raises RetryableError for timeouts (also a body still arriving when `timeout` is spent),
    connection failures, 408/409/425/429 and 5xx (with the server's `Retry-After`, if any),
    truncated bodies and non-JSON or non-object replies; BackendError for other HTTP errors.
    Messages never contain request headers, and any string in `secrets` is masked should a
    server echo it back.
    """
    deadline = time.monotonic() + timeout
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            payload = _read_until(reply, deadline, url)
    except urllib.error.HTTPError as exc:
        detail = _scrub(_error_detail(exc), secrets)
        message = f"HTTP {exc.code} from {_origin(url)}: {detail}"
        if exc.code in _RETRY_STATUS or exc.code >= 500:
            raise RetryableError(message, retry_after=parse_retry_after(exc.headers.get("Retry-After"))) from None
        raise BackendError(message) from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RetryableError(f"cannot reach {_origin(url)}: {_scrub(str(reason), secrets)}") from None
    except http.client.HTTPException as exc:  # IncompleteRead, BadStatusLine...
        raise RetryableError(f"broken reply from {_origin(url)}: {type(exc).__name__}") from None
    try:
        decoded = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: nested thousands deep
        snippet = _scrub(payload[:200].decode("utf-8", "replace"), secrets)
        raise RetryableError(f"non-JSON reply from {_origin(url)}: {snippet!r}") from None
    if not isinstance(decoded, dict):
        raise RetryableError(f"unexpected JSON reply from {_origin(url)} (not an object)")
    return decoded


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _read_until(reply: Any, deadline: float, url: str) -> bytes:
    """Read the body in chunks, giving up when the deadline passes (a server trickling bytes)."""
    chunks: list[bytes] = []
    while True:
        if time.monotonic() > deadline:
            raise RetryableError(f"reply from {_origin(url)} still arriving when the time budget ran out")
        chunk = reply.read1(1 << 16)  # one socket read at most, so the deadline is checked between them
        if not chunk:
            break
        chunks.append(chunk)
    payload = b"".join(chunks)
    declared = reply.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and len(payload) < int(declared):
        raise RetryableError(f"truncated reply from {_origin(url)}: {len(payload)} of {declared} bytes")
    return payload


def strip_base(url: str) -> str:
    """A base URL without trailing slashes on its path (query kept, fragment dropped)."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), parts.query, ""))


def join_url(base: str, suffix: str) -> str:
    """Append `suffix` (starting with '/') to the path of `base`, keeping its query string."""
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + suffix, parts.query, ""))


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read()[:500].decode("utf-8", "replace")
    except OSError:
        return exc.reason or ""
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    except (json.JSONDecodeError, AttributeError):
        pass
    return raw.strip()[:300] or str(exc.reason)


def _origin(url: str) -> str:
    return redact_url(url) or url


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
