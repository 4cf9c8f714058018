"""Writing report files: whole or not at all (esr_local.atomic), into a folder created on demand."""

from __future__ import annotations

from pathlib import Path

from ..atomic import prepare_output
from ..atomic import write_text as atomic_write_text
from ..errors import UserInputError


def write_text(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; a file in the way of the folder is a UserInputError."""
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{folder} is a file; pass -o a folder for the report")
    prepare_output(path)
    return atomic_write_text(path, text)
