"""Datasette metadata for an esr-local database: table and column descriptions and canned queries
(which latents made the model restart, scores by boost level, judge agreement, failures).

The shipped file (`esr_local/data/datasette-metadata.json`) describes a database named `esr` (the
default `esr.db`); Datasette names a database after its file, so `datasette_metadata(path)` files the
same content under the name of the database actually used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..paths import package_data_dir

METADATA_FILE = "datasette-metadata.json"
_SHIPPED_NAME = "esr"


def shipped_metadata() -> dict[str, Any]:
    """The shipped metadata, as written (database name `esr`)."""
    return json.loads((package_data_dir() / METADATA_FILE).read_text(encoding="utf-8"))


def datasette_metadata(db_path: str | Path) -> dict[str, Any]:
    """The metadata for the database at `db_path`: Datasette's name for it is the file name without its
    extension, so the shipped `esr` entry is filed under that name."""
    meta = shipped_metadata()
    name = Path(db_path).name.rsplit(".", 1)[0] if "." in Path(db_path).name else Path(db_path).name
    meta["databases"] = {name: meta["databases"][_SHIPPED_NAME]}
    return meta
