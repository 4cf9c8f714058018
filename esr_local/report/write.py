"""Writing report files: whole or not at all (atomic rename), into a folder created on demand."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserInputError


def write_text(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; a file in the way of the folder is a UserInputError."""
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{folder} is a file; pass -o a folder for the report")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create the report folder {folder} ({exc.strerror}); pass another -o") from None
    try:
        from ..atomic import atomic_write
    except ImportError:  # esr_local.atomic (interface 7) not there yet: same contract, inline
        atomic_write = _atomic_write
    try:
        with atomic_write(path, mode="wb") as fh:
            fh.write(text.encode("utf-8"))
        os.chmod(path, _default_mode())  # temp files are created 0600; a report is for reading
    except OSError as exc:
        raise UserInputError(f"cannot write {path} ({exc.strerror}); pass another -o") from None
    return path


def _default_mode() -> int:
    """0666 minus the process umask, the mode open() would have given a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: Path, mode: str = "wb"):
    import contextlib
    import os
    import tempfile

    @contextlib.contextmanager
    def writer():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    return writer()
