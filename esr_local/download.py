"""Download one file over HTTP(S): progress on stderr, resume, size/sha256 check, atomic rename.

`fetch_url(url, dest, ...)` is the one download helper of esr-local (paper assets, SAE files,
anything not on the Hugging Face hub). The bytes go to `<dest>.part` first; an interrupted
transfer keeps the part file and the next call (or the next of the built-in tries) asks the
server for the rest with an HTTP `Range` header. Only a file whose size and sha256 match what
was asked for is renamed to `dest`; a mismatch removes the part file and raises one clear error.

Offline mode (`offline=True`, or `ESR_LOCAL_OFFLINE=1` / `HF_HUB_OFFLINE=1` in the environment)
never opens a connection: a file already at `dest` is used, anything else is a
`MissingResourceError` that names the URL to fetch and where to put the file by hand.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from .errors import MissingResourceError, UserInputError

OFFLINE_ENV = ("ESR_LOCAL_OFFLINE", "HF_HUB_OFFLINE")
DEFAULT_TIMEOUT = 60.0  # seconds without a byte before a try is abandoned
DEFAULT_TRIES = 3
QUIET_BELOW = 100_000  # files smaller than this (bytes) download without a progress line
_CHUNK = 1 << 16
_TRUE = {"1", "true", "yes", "on"}


class DownloadError(MissingResourceError):
    """A download failed, was cut short, or does not match its expected size or sha256."""


def is_offline(offline: bool | None = None) -> bool:
    """`offline` if given, else whether ESR_LOCAL_OFFLINE or HF_HUB_OFFLINE is set to a true value."""
    if offline is not None:
        return bool(offline)
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENV)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manual_hint(url: str, dest: Path) -> str:
    """The sentence telling a user how to place a file by hand."""
    return f"download {url} by hand and save it as {dest}"


def fetch_url(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    offline: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    tries: int = DEFAULT_TRIES,
) -> Path:
    """Make sure `dest` holds the file at `url` (verified against `sha256`/`size` when given).

    An existing `dest` that verifies is returned without any network access. Otherwise the file is
    downloaded (resuming `<dest>.part` if present), verified and atomically renamed into place.
    Raises DownloadError (a MissingResourceError) when offline without the file, on HTTP errors,
    on a transfer still incomplete after `tries` tries (the part file is kept for a later resume),
    and on a size or hash mismatch (the part file is removed). Concurrent calls for the same
    `dest` are serialised by a lock on `<dest>.lock`.
    """
    dest = Path(dest).expanduser()
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise UserInputError(f"can only download http:// or https:// URLs, got {url!r}")
    expected_sha = sha256.lower() if sha256 else None
    if _verified(dest, expected_sha, size):
        return dest
    if is_offline(offline):
        raise DownloadError(
            f"{dest.name} is not available offline (ESR_LOCAL_OFFLINE/HF_HUB_OFFLINE is set): "
            f"go online once, or {manual_hint(url, dest)}"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = open(dest.with_name(dest.name + ".lock"), "a+b")
    except OSError as exc:
        raise DownloadError(f"cannot write to {dest.parent}: {exc.strerror}; choose a writable data folder") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching the same file
        if _verified(dest, expected_sha, size):
            return dest
        part = dest.with_name(dest.name + ".part")
        meter = _Progress(dest.name, enabled=progress)
        last_error = ""
        for attempt in range(1, max(1, tries) + 1):
            try:
                total = _transfer(url, part, timeout=timeout, meter=meter)
            except _Interrupted as exc:
                last_error = str(exc)
                if attempt < tries:
                    time.sleep(min(0.2 * 2 ** (attempt - 1), 2.0))
                continue
            try:
                _check_and_place(part, dest, url, expected_sha, size if size is not None else total)
            except DownloadError:
                meter.abort()
                raise
            meter.done()
            return dest
        meter.abort()
        have = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            f"download of {url} did not complete after {tries} tries ({last_error}); {have} bytes are kept in "
            f"{part} and the next try resumes from there; or {manual_hint(url, dest)}"
        )


class _Interrupted(Exception):
    """A try that ended early but may be resumed."""


def _verified(dest: Path, sha: str | None, size: int | None) -> bool:
    """Whether `dest` exists and matches what is expected (a bare existing file counts when nothing is)."""
    if not dest.is_file():
        return False
    if size is not None and dest.stat().st_size != size:
        return False
    return sha is None or sha256_file(dest) == sha


def _transfer(url: str, part: Path, *, timeout: float, meter: "_Progress") -> int | None:
    """One try: fetch the missing bytes into `part`. Returns the full size the server announced
    (None if unknown). Raises _Interrupted for a failure worth resuming, DownloadError otherwise."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "esr-local", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        reply = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part file may already be whole
            return have
        if exc.code in (408, 429) or exc.code >= 500:
            raise _Interrupted(f"HTTP {exc.code}") from None
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}; check the address") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Interrupted(f"cannot reach {urlsplit(url).netloc}: {reason}") from None
    with reply:
        if have and reply.status == 206:
            start = _range_start(reply.headers.get("Content-Range"))
            if start != have:
                raise _Interrupted(f"server resumed at byte {start}, expected {have}") from None
            mode = "ab"
        else:
            have, mode = 0, "wb"  # the server ignored the Range header: start over
        length = reply.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        meter.start(have, total)
        try:
            with open(part, mode) as out:
                got = _copy(reply, out, meter)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:  # our side (disk full, read-only folder): not worth retrying, one clear line
            meter.abort()
            raise DownloadError(f"cannot write {part}: {exc.strerror or exc}; free some space or choose another "
                                "data folder (ESR_LOCAL_HOME), then try again (the download resumes)") from None
    if total is not None and have + got < total:
        raise _Interrupted(f"connection closed after {have + got} of {total} bytes")
    return total


def _copy(reply: BinaryIO, out: BinaryIO, meter: "_Progress") -> int:
    got = 0
    while True:
        try:
            chunk = reply.read(_CHUNK)
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, IncompleteRead
            out.flush()
            raise _Interrupted(f"transfer stopped: {type(exc).__name__}: {exc}") from None
        if not chunk:
            return got
        out.write(chunk)
        got += len(chunk)
        meter.advance(len(chunk))


def _range_start(content_range: str | None) -> int | None:
    """The first byte of `Content-Range: bytes START-END/TOTAL`."""
    try:
        return int((content_range or "").split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _check_and_place(part: Path, dest: Path, url: str, sha: str | None, size: int | None) -> None:
    actual_size = part.stat().st_size
    problem = None
    if size is not None and actual_size != size:
        problem = f"{actual_size} bytes instead of {size}"
    elif sha is not None:
        actual = sha256_file(part)
        if actual != sha:
            problem = f"sha256 {actual} instead of {sha}"
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"tampered or truncated download of {url}: {problem}; nothing was kept. "
            f"Try again later, or {manual_hint(url, dest)} after checking it"
        )
    os.replace(part, dest)


class _Progress:
    """One progress line on stderr: rewritten in place on a terminal, else one line at start and end."""

    def __init__(self, name: str, *, enabled: bool, stream=None) -> None:
        self.name = name
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done_bytes = 0
        self.total: int | None = None
        self._last = 0.0
        self._started = False

    def start(self, have: int, total: int | None) -> None:
        self.done_bytes, self.total = have, total
        if total is not None and total < QUIET_BELOW:
            self.enabled = False  # a few kilobytes need no progress report
        if self.enabled and not self._started:
            size = _mb(total) if total else "unknown size"
            resumed = f", resuming at {_mb(have)}" if have else ""
            self._write(f"downloading {self.name} ({size}{resumed})", final=not self.tty)
            self._started = True

    def advance(self, n: int) -> None:
        self.done_bytes += n
        now = time.monotonic()
        if self.enabled and self.tty and now - self._last > 0.25:
            self._last = now
            pct = f" {100 * self.done_bytes / self.total:.0f}%" if self.total else ""
            self._write(f"downloading {self.name}: {_mb(self.done_bytes)}{pct}", final=False)

    def done(self) -> None:
        if self.enabled and self._started:
            self._write(f"downloaded {self.name}: {_mb(self.done_bytes)}", final=True)
            self._started = False

    def abort(self) -> None:
        """End a rewritten terminal line so the error that follows starts on its own line."""
        if self.enabled and self._started and self.tty:
            self.stream.write("\n")
            self.stream.flush()
        self._started = False

    def _write(self, text: str, *, final: bool) -> None:
        prefix = "\r" if self.tty else ""
        self.stream.write(prefix + text.ljust(60 if self.tty else 0) + ("\n" if final else ""))
        self.stream.flush()


def _mb(n: int | None) -> str:
    return f"{(n or 0) / 1e6:.1f} MB" if (n or 0) >= 100_000 else f"{n or 0} bytes"

