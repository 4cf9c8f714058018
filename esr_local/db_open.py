"""Open the SQLite experiment log safely: one clear error for every way the file can be unusable.

`open_database(path, create=...)` returns a connection in WAL mode, or raises an EsrError that says what is
wrong with the file and what to do:

- a missing file (create=False), a folder, a parent path that is a file -> MissingResourceError/UserInputError;
- a file that is not SQLite, or a SQLite file made by another program (tables but no esr-local migrations,
  e.g. someone else's `runs` table) -> FormatError; nothing is written to it;
- a read-only file, folder or file system -> ReadOnlyDatabaseError; read-only commands (create=False) still
  open an existing database read-only;
- a full disk -> DiskFullError (also raised later, by any statement, through `GuardedConnection`);
- two processes creating the same new database at once: switching to WAL needs a moment of exclusive access
  and SQLite answers `database is locked` at once instead of waiting, so the switch is retried.

The translated errors also subclass `sqlite3.OperationalError`, so code that already handles SQLite errors
keeps working while the CLI prints them as one `Error:` line.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
import urllib.parse
from pathlib import Path

from .errors import EsrError, FormatError, MissingResourceError, UserInputError

BUSY_TIMEOUT_S = 30.0
_MIGRATIONS_TABLE = "_sqlite_migrations"
_MIGRATION_SET = "esr_local"
_NEW_DB_HINT = "pass --db with a new file name (or set ESR_LOCAL_DB) to start a new esr-local database"


class DatabaseError(EsrError, sqlite3.OperationalError):
    """The database file cannot be used as it is (base class of the errors below)."""


class ReadOnlyDatabaseError(DatabaseError):
    """The database, its folder or its file system is read-only."""


class DiskFullError(DatabaseError):
    """SQLite could not write because the disk (or quota) is full."""


class DatabaseLockedError(DatabaseError):
    """Another process held the write lock for longer than the busy timeout."""


def translate(exc: sqlite3.Error, path: str | Path) -> sqlite3.Error:
    """The EsrError for a SQLite error that means "this file cannot be used"; other errors are returned as is."""
    if isinstance(exc, EsrError):
        return exc
    msg = str(exc).lower()
    if "disk is full" in msg or "database or disk is full" in msg:
        return DiskFullError(f"the disk holding {path} is full; free some space and run the command again "
                             "(finished work is saved)")
    if "readonly" in msg or "read-only" in msg:
        return ReadOnlyDatabaseError(f"{path} cannot be written: the file, its folder or the disk is read-only; "
                                     f"make it writable or {_NEW_DB_HINT}")
    if "file is not a database" in msg or "malformed" in msg:
        return FormatError(f"{path} is not an SQLite database (or it is corrupt); {_NEW_DB_HINT}")
    if "database is locked" in msg or "database table is locked" in msg:
        return DatabaseLockedError(f"{path} stayed locked by another process for over {BUSY_TIMEOUT_S:g} s; "
                                   "wait for it to finish and run the command again")
    if ("unable to open database file" in msg or "disk i/o error" in msg) and _disk_is_full(path):
        return DiskFullError(f"the disk holding {path} is full; free some space and run the command again "
                             "(finished work is saved)")
    if "unable to open database file" in msg or "disk i/o error" in msg:
        return ReadOnlyDatabaseError(f"{path} could not be opened for writing ({exc}): its folder or disk may be "
                                     f"read-only, missing or full; fix that, or {_NEW_DB_HINT}")
    return exc


def _disk_is_full(path: str | Path) -> bool:
    """True when the file system holding `path` has (almost) no free space left."""
    folder = Path(path).parent
    try:
        return shutil.disk_usage(folder).free < 64 * 1024
    except OSError:
        return False


class _GuardedCursor(sqlite3.Cursor):
    """A cursor whose execute calls raise the translated errors."""

    def execute(self, *args, **kwargs):  # noqa: D102
        try:
            return super().execute(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            _reraise(exc, self.connection.esr_path)

    def executemany(self, *args, **kwargs):  # noqa: D102
        try:
            return super().executemany(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            _reraise(exc, self.connection.esr_path)


def _reraise(exc: sqlite3.DatabaseError, path: str):
    """Raise the translated error (or `exc` itself, traceback intact, when it needs no translation)."""
    new = translate(exc, path)
    if new is exc:
        raise exc
    raise new from None


class GuardedConnection(sqlite3.Connection):
    """sqlite3.Connection whose statements raise DiskFullError/ReadOnlyDatabaseError/... instead of bare
    OperationalErrors, so a disk filling up mid-run becomes one clear line."""

    esr_path: str = ""

    def cursor(self, factory=_GuardedCursor):  # noqa: D102
        return super().cursor(factory)

    def execute(self, *args, **kwargs):  # noqa: D102
        return self.cursor().execute(*args, **kwargs)

    def executemany(self, *args, **kwargs):  # noqa: D102
        return self.cursor().executemany(*args, **kwargs)

    def commit(self):  # noqa: D102
        try:
            return super().commit()
        except sqlite3.DatabaseError as exc:
            _reraise(exc, self.esr_path)


def _connect(target: str, path: Path, *, uri: bool = False) -> GuardedConnection:
    try:
        conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, check_same_thread=False, uri=uri, factory=GuardedConnection)
    except sqlite3.DatabaseError as exc:
        _reraise(exc, str(path))
    conn.esr_path = str(path)
    return conn


def _check_path(path: Path, create: bool) -> None:
    if path.is_dir():
        raise UserInputError(f"{path} is a folder; the database must be a file: {_NEW_DB_HINT}")
    if path.exists():
        return
    if not create:
        raise MissingResourceError(f"no esr-local database at {path}; pass --db PATH or set ESR_LOCAL_DB to an existing one")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserInputError(f"cannot create {path}: {parent} is a file, not a folder; {_NEW_DB_HINT}")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReadOnlyDatabaseError(f"cannot create the folder {path.parent} ({exc.strerror}); {_NEW_DB_HINT}") from None


def _check_ours(conn: sqlite3.Connection, path: Path) -> None:
    """FormatError for an SQLite file that holds tables but was not made by esr-local."""
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    except sqlite3.DatabaseError as exc:
        raise translate(exc, path) from None
    if not tables:
        return  # a new (or empty) file
    ours = False
    if _MIGRATIONS_TABLE in tables:
        try:
            ours = conn.execute(f"SELECT COUNT(*) FROM {_MIGRATIONS_TABLE} WHERE migration_set = ?",
                                (_MIGRATION_SET,)).fetchone()[0] > 0
        except sqlite3.DatabaseError:
            ours = False
    if not ours:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise FormatError(f"{path} is an SQLite database made by another program (tables: {shown}), not an "
                          f"esr-local log; nothing was changed; {_NEW_DB_HINT}")


def _enable_wal(conn: sqlite3.Connection, path: Path, deadline: float) -> None:
    """`PRAGMA journal_mode=wal`, retried while another process holds the lock (the pragma does not wait)."""
    delay = 0.01
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode=wal").fetchone()[0]
            break
        except DatabaseLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
    if str(mode).lower() != "wal":
        # e.g. a file system without shared memory; SQLite keeps working in its rollback journal mode
        return


def _open_read_only(path: Path) -> GuardedConnection:
    """An existing database opened read-only (a read-only disk or folder: no -wal/-shm files can be made)."""
    quoted = urllib.parse.quote(str(path.absolute()))
    for params in ("mode=ro", "mode=ro&immutable=1"):
        conn = _connect(f"file:{quoted}?{params}", path, uri=True)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
    raise ReadOnlyDatabaseError(f"{path} could not be opened even read-only; check its permissions")


def open_database(path: str | Path, *, create: bool) -> GuardedConnection:
    """Open (create=True: and create) the esr-local database at `path` in WAL mode; see the module docstring."""
    path = Path(path).expanduser()
    _check_path(path, create)
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    conn = _connect(str(path), path)
    try:
        try:
            _check_ours(conn, path)
            _enable_wal(conn, path, deadline)
            conn.execute("PRAGMA synchronous = NORMAL")  # safe in WAL mode; no fsync per trial
        except ReadOnlyDatabaseError:
            if create or not path.exists():
                raise
            conn.close()  # a read-only disk or folder: commands that only read still work
            conn = _open_read_only(path)
            _check_ours(conn, path)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn
    except BaseException:
        conn.close()
        raise
