"""The experiment log: one SQLite file (via sqlite-utils) holding runs, latents, trials, judgments,
attempts and cached calibrations. The schema and the metric views are in store_schema.py.

The database is opened in WAL mode with a 30 s busy timeout, so a second process (another shard, a
Datasette instance, `esr-local metrics`) can read while a run writes. Every write happens in one
`BEGIN IMMEDIATE` transaction; in particular a trial, its judgment and its attempts are written together,
so an interrupted run never leaves a trial without its judgment.

The `Store` methods are grouped by table in store_runs.py, store_leases.py, store_trials.py and
store_calibrations.py; the plain values (statuses, ids, JSON encoding) are in store_values.py.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from . import store_migrations  # noqa: F401  (registers the schema steps after store_schema.py's)
from .db_open import open_database
from .errors import EsrError, MissingResourceError
from .store_calibrations import CalibrationRecords
from .store_leases import LeaseRecords
from .store_runs import RunRecords
from .store_schema import MIGRATIONS
from .store_trials import TrialRecords
from .store_values import (BOOST_SOURCES, CALIBRATION_KEY_COLUMNS, RUN_STATUSES, TERMINAL_STATUSES,
                           DuplicateTrialError, trial_key, utc_now)

__all__ = ["BOOST_SOURCES", "CALIBRATION_KEY_COLUMNS", "RUN_STATUSES", "TERMINAL_STATUSES", "DuplicateTrialError",
           "Store", "trial_key", "utc_now"]


class Store(RunRecords, LeaseRecords, TrialRecords, CalibrationRecords):
    """The SQLite experiment log. `Store(path)` creates the file (and its folder) and migrates it."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        """Open (and by default create) the database at `path`; create=False raises if it is missing."""
        self.path = Path(path).expanduser()
        # WAL, synchronous=NORMAL, foreign keys, check_same_thread=False (self._lock serialises use) and one
        # clear error for a missing/foreign/read-only/full database: esr_local.db_open.
        conn = open_database(self.path, create=create)
        self.db = Database(conn)
        self._lock = threading.RLock()
        try:
            conn.execute("SELECT sqrt(4.0)").fetchone()
        except sqlite3.OperationalError:  # SQLite built without math functions: the views need sqrt()
            conn.create_function("sqrt", 1, lambda x: None if x is None or x < 0 else math.sqrt(x),
                                 deterministic=True)
        # Migrate under the write lock so two processes opening a new file at once cannot both apply a
        # step; a database that is already current is only read.
        if MIGRATIONS.pending(self.db):
            # Some steps rebuild a table (SQLite cannot alter a CHECK constraint); foreign keys must be off
            # for that, and the pragma only takes effect outside a transaction.
            self.db.execute("PRAGMA foreign_keys = OFF")
            try:
                with self.transaction():
                    MIGRATIONS.apply(self.db)
                    broken = self.db.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise EsrError(f"migrating {self.path} would break {len(broken)} references; "
                                       "the database was left as it was")
            finally:
                self.db.execute("PRAGMA foreign_keys = ON")

    # -- plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Store]:
        """A write transaction (`BEGIN IMMEDIATE`, so the write lock is taken up front and the busy
        timeout applies); nested calls become savepoints. Everything inside commits or rolls back together."""
        with self._lock:
            conn = self.db.conn
            if conn.in_transaction:
                with self.db.atomic():  # a savepoint inside the open transaction
                    yield self
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple | list = ()) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query(sql, params))

    def named_row(self, table: str, name: str, *, what: str, make_one: str) -> dict[str, Any]:
        """The row of a named set table (`latent_sets`, `detector_sets`) whose name or id is `name`;
        MissingResourceError listing the known names, or saying which command makes one."""
        rows = list(self.db[table].rows_where("name = ? OR id = ?", [name, name]))
        if rows:
            return rows[0]
        known = [r["name"] for r in self.db[table].rows_where(select="name", order_by="created_utc")]
        hint = f"known sets: {', '.join(known)}" if known else f"none stored yet: run `{make_one}`"
        raise MissingResourceError(f"no {what} named {name!r} in {self.path} ({hint})")

