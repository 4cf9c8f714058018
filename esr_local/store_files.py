"""A database file a failed command created must not stay behind: `store_kept_only_with_a_run` opens the
store and, when the block fails before any run is stored in a file it created, closes it and removes the
file, its `-wal`/`-shm`/`-journal` companions and the folders made for it."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from .store import Store

_COMPANIONS = ("-wal", "-shm", "-journal")


def _missing_folders(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, deepest first (what opening it will create)."""
    missing = []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _holds_a_run(store: Store) -> bool:
    try:
        return store.db.execute("SELECT EXISTS (SELECT 1 FROM runs)").fetchone()[0] == 1
    except sqlite3.Error:  # no runs table: nothing worth keeping
        return False


@contextlib.contextmanager
def store_kept_only_with_a_run(path: str | Path) -> Iterator[Store]:
    """Open (creating it if needed) the store at `path` for a command that stores a run.

    If the block raises while the file, created by this call, holds no run, the store is closed and
    everything this call created is removed; the exception propagates. On success the store stays open:
    the caller closes it. An existing database is never removed."""
    path = Path(path).expanduser()
    created = not path.exists()
    folders = _missing_folders(path) if created else []
    try:
        store = Store(path)
    except BaseException:
        if created:
            _remove(path, folders)
        raise
    try:
        yield store
    except BaseException:
        if created and not _holds_a_run(store):
            store.close()
            _remove(path, folders)
        raise


def _remove(path: Path, folders: list[Path]) -> None:
    for suffix in ("", *_COMPANIONS):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
            folder.rmdir()
