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
    """`--db PATH` (env ESR_LOCAL_DB), passed to the command as `db_path` (None means the default)."""
    return click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="ESR_LOCAL_DB",
        default=None,
        help="SQLite experiment log [env ESR_LOCAL_DB; default: <data dir>/esr.db].",
    )(fn)


def json_option(fn: F) -> F:
    """`--json`: print machine-readable JSON on stdout, passed as `json_`."""
    return click.option("--json", "json_", is_flag=True, help="Print JSON instead of a table.")(fn)


def open_store(db_path: Path | None, *, create: bool = True) -> Store:
    """Open the store at `db_path` or the default database. create=False (for commands that only read)
    raises MissingResourceError instead of creating an empty database."""
    return Store(db_path if db_path is not None else default_db_path(), create=create)
