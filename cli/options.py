"""Shared Click options for esr-local commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from esr_local.paths import default_db_path
from esr_local.store import Store

F = TypeVar("F", bound=Callable[..., Any])


def db_option(fn: F) -> F:
    """`--db PATH` (env ESR_LOCAL_DB), passed to the command as `db` (None means the default database)."""
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="ESR_LOCAL_DB",
        default=None,
        help="SQLite experiment log [env ESR_LOCAL_DB; default: <data dir>/esr.db].",
    )(fn)


def json_option(fn: F) -> F:
    """`--json`: print machine-readable JSON on stdout, passed as `json_`."""
    return click.option("--json", "json_", is_flag=True, help="Print JSON instead of a table.")(fn)


def open_store(db: Path | None, *, create: bool = True) -> Store:
    """Open the store at `db` or the default database. create=False (for commands that only read)
    raises MissingResourceError instead of creating an empty database."""
    return Store(db if db is not None else default_db_path(), create=create)
