"""The judge catalog: strong local judges as GGUF files on Hugging Face, chosen with `--judge local:NAME`.

Entries are TOML files: those shipped in the top-level `judges/` folder (installed as
`esr_local._judges`), plus the user's own, from `ESR_LOCAL_JUDGE_CATALOG` (a file or a folder) or
`<data dir>/judges/*.toml`; a user entry with the same name replaces a shipped one. Fields:
`name`, `description`, `hf_repo`, `files` (one GGUF, or every shard of a split GGUF, first shard
first), optional `revision` (a commit or tag; default `main`), `n_ctx`, `size_gb`,
`system_role` (false for chat templates without a system role, e.g. Gemma 2), `notes`.

`resolve_judge_model(name)` downloads the files through huggingface_hub (its progress bars, its
cache, `HF_HUB_OFFLINE`) and returns the first file's path and the snapshot commit it came from.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import FormatError, MissingResourceError, UserInputError
from ..paths import data_dir

CATALOG_ENV = "ESR_LOCAL_JUDGE_CATALOG"
_FIELDS = {"name", "description", "hf_repo", "files", "revision", "n_ctx", "size_gb", "system_role", "notes"}


@dataclass(frozen=True)
class JudgeEntry:
    """One downloadable judge model."""

    name: str
    description: str
    hf_repo: str
    files: tuple[str, ...]
    revision: str | None = None
    n_ctx: int = 8192
    size_gb: float | None = None
    system_role: bool = True
    notes: str = ""
    catalog_file: str = ""


@dataclass(frozen=True)
class ResolvedJudgeModel:
    """A catalog judge on disk: the file to load (first shard), the entry, and the hub commit."""

    path: Path
    entry: JudgeEntry
    revision: str | None


def shipped_judges_dir() -> Path:
    """Folder of the judge catalog files shipped with the package (top-level `judges/` in the repo)."""
    return Path(str(resources.files("esr_local._judges")))


def load_judge_catalog() -> dict[str, JudgeEntry]:
    """All judge entries by name: shipped first, then the user's (which win)."""
    entries: dict[str, JudgeEntry] = {}
    sources = [shipped_judges_dir(), data_dir() / "judges"]
    env = os.environ.get(CATALOG_ENV)
    if env:
        sources.append(Path(env).expanduser())
    for source in sources:
        if source.is_file():
            files = [source]
        elif source.is_dir():
            files = sorted(source.glob("*.toml"))
        elif source == sources[-1] and env:
            raise MissingResourceError(f"{CATALOG_ENV}={env} is neither a file nor a folder of .toml judge entries")
        else:
            continue
        for file in files:
            entry = _read_entry(file)
            entries[entry.name] = entry
    return entries


def get_judge_entry(name: str) -> JudgeEntry:
    """The entry called `name`; UserInputError listing the known names otherwise."""
    catalog = load_judge_catalog()
    if name not in catalog:
        raise UserInputError(
            f"unknown local judge {name!r}; use local:PATH.gguf or one of: {', '.join(sorted(catalog))}"
        )
    return catalog[name]


def resolve_judge_model(name: str) -> ResolvedJudgeModel:
    """Download (or find in the hub cache) every file of judge `name`; returns the first file."""
    entry = get_judge_entry(name)
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from ..download import is_offline

    paths: list[Path] = []
    for filename in entry.files:
        if is_offline():  # ESR_LOCAL_OFFLINE as well as HF_HUB_OFFLINE: the hub cache only
            cached = try_to_load_from_cache(entry.hf_repo, filename, revision=entry.revision)
            if not isinstance(cached, str):
                raise MissingResourceError(
                    f"judge {entry.name} needs {filename} from hf://{entry.hf_repo}, which is not in the Hugging Face "
                    "cache and esr-local is offline (ESR_LOCAL_OFFLINE/HF_HUB_OFFLINE); go online once, or download "
                    "the file(s) yourself and pass --judge local:PATH.gguf"
                )
            paths.append(Path(cached))
            continue
        try:
            paths.append(Path(hf_hub_download(repo_id=entry.hf_repo, filename=filename, revision=entry.revision)))
        except Exception as exc:  # offline, gated, missing: one clear line
            raise MissingResourceError(
                f"could not get {filename} of judge {entry.name} from hf://{entry.hf_repo} "
                f"({type(exc).__name__}); check the network (HF_HUB_OFFLINE unset), `huggingface-cli login` "
                "for gated models, or download the file(s) yourself and pass --judge local:PATH.gguf"
            ) from None
    shards = {p.parent for p in paths}
    if len(shards) != 1:
        raise MissingResourceError(f"the shards of judge {entry.name} landed in different folders: {sorted(shards)}")
    return ResolvedJudgeModel(paths[0], entry, _snapshot_commit(paths[0]))


def _snapshot_commit(path: Path) -> str | None:
    """The commit of a file under `.../snapshots/<commit>/...` in the hub cache."""
    parts = path.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _read_entry(file: Path) -> JudgeEntry:
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FormatError(f"judge catalog file {file} is not readable TOML: {exc}") from None
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise FormatError(f"judge catalog file {file}: unknown field(s) {', '.join(unknown)}")
    for key in ("name", "hf_repo"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise FormatError(f"judge catalog file {file}: {key} must be a non-empty string")
    files = data.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and f.endswith(".gguf") for f in files):
        raise FormatError(f"judge catalog file {file}: files must be a list of .gguf file names")
    n_ctx = data.get("n_ctx", 8192)
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 512:
        raise FormatError(f"judge catalog file {file}: n_ctx must be an integer >= 512")
    system_role = data.get("system_role", True)
    if not isinstance(system_role, bool):
        raise FormatError(f"judge catalog file {file}: system_role must be true or false")
    return JudgeEntry(
        name=data["name"].strip(),
        description=str(data.get("description", "")),
        hf_repo=data["hf_repo"].strip(),
        files=tuple(files),
        revision=data.get("revision"),
        n_ctx=n_ctx,
        size_gb=data.get("size_gb"),
        system_role=system_role,
        notes=str(data.get("notes", "")),
        catalog_file=str(file),
    )
