"""Where esr-local keeps its files: user data directory, default database, shipped data."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

APP = "esr-local"


def data_dir() -> Path:
    """The user data directory (`ESR_LOCAL_HOME`, else `$XDG_DATA_HOME/esr-local`, else ~/.local/share/esr-local)."""
    env = os.environ.get("ESR_LOCAL_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / APP


def default_db_path() -> Path:
    """The default SQLite log: `ESR_LOCAL_DB`, else `<data dir>/esr.db`."""
    env = os.environ.get("ESR_LOCAL_DB")
    return Path(env).expanduser() if env else data_dir() / "esr.db"


def shipped_models_dir() -> Path:
    """Folder of the catalog files shipped with the package (top-level `models/` in the repo)."""
    return Path(str(resources.files("esr_local._models")))


def shipped_vectors_dir() -> Path:
    """Folder of the dictionaries shipped with the package (top-level `vectors/` in the repo)."""
    return Path(str(resources.files("esr_local._vectors")))


def package_data_dir() -> Path:
    """`esr_local/data`: prompt sets, meta-prompts, judge rubric."""
    return Path(str(resources.files("esr_local") / "data"))


def default_vector_out_dir() -> Path:
    """Exported control vectors go to `./vectors` (or `ESR_LOCAL_VECTORS`)."""
    env = os.environ.get("ESR_LOCAL_VECTORS")
    return Path(env).expanduser() if env else Path.cwd() / "vectors"
