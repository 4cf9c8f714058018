"""A database file a failed command created must not stay behind: `store_kept_only_with_a_run` opens the
store and, when the block fails before any row is stored in a file it created, closes it and removes the
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


def _holds_data(store: Store) -> bool:
    """Whether any table holds a row (the migrations' own bookkeeping aside): another command may have
    stored something (a detector set, a latent set, ...) in the new file meanwhile, which must not go."""
    try:
        tables = [r[0] for r in store.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name != '_sqlite_migrations'")]
        return any(store.db.execute(f'SELECT EXISTS (SELECT 1 FROM "{t}")').fetchone()[0] for t in tables)
    except sqlite3.Error:  # unreadable: keep it rather than remove something we cannot see into
        return True


@contextlib.contextmanager
def store_kept_only_with_a_run(path: str | Path) -> Iterator[Store]:
    """Open (creating it if needed) the store at `path` for a command that stores a run.

    If the block raises while the file, created by this call, holds no row in any table (no run, nor
    anything another command stored in it meanwhile), the store is closed and everything this call created
    is removed; the exception propagates. On success the store stays open:
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
        if created and not _holds_data(store):
            store.close()
            _remove(path, folders)
        raise


def _remove(path: Path, folders: list[Path]) -> None:
    for suffix in ("", *_COMPANIONS):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
            folder.rmdir()
