"""SAE source strings: a local path or `hf://OWNER/REPO[@REVISION]/path/in/repo`, and Hub resolution."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import MissingResourceError, UserInputError

HF_SCHEME = "hf://"

# Files each folder layout needs, in the order they are tried; the first name decides the layout.
FOLDER_LAYOUTS: tuple[tuple[str, ...], ...] = (
    ("params.npz",),  # GemmaScope
    ("params.safetensors", "config.json"),  # Gemma Scope 2
    ("sae_weights.safetensors", "cfg.json"),  # SAELens
)
OPTIONAL_FILES = ("labels.csv",)
_SIBLINGS = {
    "params.safetensors": ("config.json",),
    "config.json": ("params.safetensors",),
    "sae_weights.safetensors": ("cfg.json",),
    "cfg.json": ("sae_weights.safetensors",),
}
_FILE_SUFFIXES = (".pth", ".pt", ".npz", ".safetensors", ".json")


@dataclass(frozen=True)
class SaeSource:
    """A parsed source string. `kind` is "local" (use `local_path`) or "hf" (use repo_id/revision/path_in_repo)."""

    raw: str
    kind: str
    local_path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    path_in_repo: str = ""


def parse_source(source: str) -> SaeSource:
    """Parse a local path or `hf://OWNER/REPO[@REVISION][/path/in/repo]` (no network access)."""
    if not isinstance(source, str) or not source.strip():
        raise UserInputError("SAE source must be a non-empty path or hf://OWNER/REPO/path reference")
    s = source.strip()
    if s.startswith(HF_SCHEME):
        parts = [p for p in s[len(HF_SCHEME) :].split("/") if p]
        if len(parts) < 2:
            raise UserInputError(f"bad Hugging Face reference {source!r}: expected hf://OWNER/REPO[@REVISION]/path/in/repo")
        owner, repo = parts[0], parts[1]
        revision = None
        if "@" in repo:
            repo, revision = repo.split("@", 1)
            if not repo or not revision:
                raise UserInputError(f"bad Hugging Face reference {source!r}: '@' must be followed by a revision")
        if "@" in owner or any(p in (".", "..") for p in parts):
            raise UserInputError(f"bad Hugging Face reference {source!r}")
        return SaeSource(raw=source, kind="hf", repo_id=f"{owner}/{repo}", revision=revision, path_in_repo="/".join(parts[2:]))
    if "://" in s:
        raise UserInputError(f"unsupported SAE source {source!r}: use a local path or hf://OWNER/REPO/path")
    return SaeSource(raw=source, kind="local", local_path=Path(s).expanduser())


class _Absent(Exception):
    """The file does not exist in the repo (the Hub said 404)."""


class _Unreachable(Exception):
    """The file is not cached and the Hub could not be asked (offline, no network)."""


def _download(src: SaeSource, filename: str, revision: str | None, cache_dir: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:  # huggingface_hub < 0.24 keeps them in utils
        from huggingface_hub import utils as hf_errors

    try:
        return Path(hf_hub_download(src.repo_id, filename, revision=revision, cache_dir=cache_dir))
    except hf_errors.LocalEntryNotFoundError:
        raise _Unreachable(filename) from None
    except hf_errors.EntryNotFoundError:
        raise _Absent(filename) from None
    except hf_errors.RevisionNotFoundError:
        raise MissingResourceError(f"{src.raw}: revision {revision!r} does not exist in {src.repo_id}") from None
    except hf_errors.RepositoryNotFoundError:
        raise MissingResourceError(
            f"{src.raw}: repository {src.repo_id} was not found on the Hub (or it is gated/private: run `hf auth login`)"
        ) from None
    except hf_errors.HFValidationError as e:
        raise UserInputError(f"{src.raw}: invalid Hugging Face reference ({e})") from None
    except (hf_errors.HfHubHTTPError, OSError) as e:
        raise MissingResourceError(f"{src.raw}: download of {filename} failed ({e}); retry or pass a local path") from None


def _not_cached(src: SaeSource, what: str, cache_dir: str | None) -> MissingResourceError:
    from huggingface_hub import constants

    cache = cache_dir or constants.HF_HUB_CACHE
    return MissingResourceError(
        f"{src.raw}: {what} is not in the local Hugging Face cache ({cache}) and the Hub could not be reached "
        "(offline, or HF_HUB_OFFLINE=1). Connect to the internet and retry, or download the files and pass their "
        "local path instead"
    )


def resolve_hf(src: SaeSource, *, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Download (or find in the HF cache) what an `hf://` source needs; return the local file or folder.

    A path ending in a weights/config file name fetches that file (plus the sibling a folder layout needs);
    any other path is treated as a folder and the known layouts are tried in turn. Works offline when the
    files are already in the cache (`cache_dir`, else `HF_HUB_CACHE`).
    """
    if revision and src.revision and revision != src.revision:
        raise UserInputError(f"{src.raw} names revision {src.revision!r} but revision={revision!r} was also given")
    rev = revision or src.revision
    path = PurePosixPath(src.path_in_repo) if src.path_in_repo else None

    if path is not None and path.suffix in _FILE_SUFFIXES:
        try:
            first = _download(src, str(path), rev, cache_dir)
        except _Unreachable:
            raise _not_cached(src, str(path), cache_dir) from None
        except _Absent:
            raise MissingResourceError(f"{src.raw}: {path} does not exist in {src.repo_id}") from None
        siblings = _SIBLINGS.get(path.name)
        if siblings is None:
            return first
        _fetch_rest(src, path.parent, siblings, rev, cache_dir)
        return first.parent

    folder = path or PurePosixPath("")
    layouts = list(FOLDER_LAYOUTS)
    if path is None:  # repo root: Goodfire repos hold one <repo name>.pth / .pt
        name = src.repo_id.split("/", 1)[1]
        layouts += [(f"{name}.pth",), (f"{name}.pt",)]
    unreachable = False
    for layout in layouts:
        try:
            first = _download(src, str(folder / layout[0]), rev, cache_dir)
        except _Absent:
            continue
        except _Unreachable:
            unreachable = True
            continue
        _fetch_rest(src, folder, layout[1:], rev, cache_dir)
        if len(layout) == 1 and layout[0].endswith((".pth", ".pt")):
            return first
        return first.parent
    expected = "params.npz, params.safetensors + config.json, or sae_weights.safetensors + cfg.json"
    if unreachable:
        raise _not_cached(src, f"the SAE folder ({expected})", cache_dir)
    raise MissingResourceError(f"{src.raw}: no SAE files found there (expected {expected})")


def _fetch_rest(src: SaeSource, folder: PurePosixPath, needed, rev, cache_dir) -> None:
    for name in needed:
        try:
            _download(src, str(folder / name), rev, cache_dir)
        except _Unreachable:
            raise _not_cached(src, str(folder / name), cache_dir) from None
        except _Absent:
            raise MissingResourceError(f"{src.raw}: {folder / name} is missing from {src.repo_id}") from None
    for name in OPTIONAL_FILES:
        try:
            _download(src, str(folder / name), rev, cache_dir)
        except (_Absent, _Unreachable, MissingResourceError):
            pass
