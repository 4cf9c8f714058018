"""Read rows of a test's SQLite file directly (a fresh connection each time, so nothing is cached)."""

from __future__ import annotations

import sqlite3


def query_rows(db, sql: str, params=()) -> list[dict]:
    """The rows of `sql` on the database file `db`, as dicts."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, params)]
    finally:
        con.close()
