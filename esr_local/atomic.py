"""Atomic file writes: a file appears complete under its name, or not at all.

`atomic_write(path)` yields a file object on a temporary file in the same folder; on success the data is
fsynced and the temporary file renamed over `path` (an atomic step on POSIX file systems); on any error,
Ctrl-C included, the temporary file is removed and `path` is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import UserInputError, WriteError


def prepare_output(path: str | Path) -> Path:
    """Check that `path` can be a new or replaced file and create its folder; UserInputError otherwise."""
    raw = str(path)
    if not raw.strip():
        raise UserInputError("the output path is empty; give a file name")
    path = Path(raw).expanduser()
    if path.is_dir():
        raise UserInputError(f"{path} is a folder; give a file name for the output")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserInputError(f"cannot write {path}: {parent} is a file, not a folder")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create the folder {path.parent} ({exc.strerror}); choose another output path") from None
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def _finish(tmp: Path, path: Path) -> None:
    """fsync `tmp`, give it the mode `path` has (or a new file would get) and rename it over `path`."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    if path.exists():  # keep the permissions of the file being replaced
        os.chmod(tmp, path.stat().st_mode & 0o7777)
    else:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for writers that open files themselves (e.g. gguf.GGUFWriter).

    When the block ends without error the file written there replaces `path`; otherwise it is removed.
    An OSError (a full disk, a read-only folder) becomes WriteError naming `path`.
    """
    path = prepare_output(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(f"cannot write in {path.parent} ({exc.strerror or exc}); choose another output path") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _finish(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise WriteError(f"could not write {path} ({exc.strerror or exc}); nothing was written there") from None
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """Write `path` atomically: `with atomic_write(p) as fh: fh.write(...)`.

    `mode` is "wb" or "w" (text, `encoding` default UTF-8). The folder is created when missing. An OSError
    while writing (a full disk, say) becomes WriteError naming the file; the old file, if any, is kept.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as fh:
            yield fh


def write_bytes(path: str | Path, data: bytes) -> Path:
    """`Path.write_bytes`, atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path).expanduser()


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """`Path.write_text`, atomically."""
    with atomic_write(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path).expanduser()
