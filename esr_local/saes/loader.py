"""`load_sae`: resolve a source, detect the format from the files, and open it."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import FormatError, MissingResourceError, UserInputError
from .base import Sae
from .gemmascope import open_gemmascope
from .gemmascope2 import open_gemmascope2
from .goodfire import open_goodfire
from .saelens import open_saelens
from .source import parse_source, resolve_hf

_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_EXPECTED = (
    "a Goodfire .pth/.pt file, a GemmaScope params.npz, a Gemma Scope 2 folder (params.safetensors + config.json) "
    "or a SAELens folder (cfg.json + sae_weights.safetensors)"
)


def detect_format(path: Path) -> tuple[str, Path]:
    """(family, path to open) for a local file or folder; FormatError when no known layout matches."""
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if "params.npz" in names:
            return "gemmascope", path / "params.npz"
        if "params.safetensors" in names:
            if "config.json" not in names:
                raise FormatError(f"{path} has params.safetensors but no config.json (a Gemma Scope 2 folder needs both)")
            return "gemmascope2", path
        if "sae_weights.safetensors" in names:
            if "cfg.json" not in names:
                raise FormatError(f"{path} has sae_weights.safetensors but no cfg.json (a SAELens folder needs both)")
            return "saelens", path
        torch_files = sorted(p for p in path.iterdir() if p.suffix in _TORCH_SUFFIXES and p.is_file())
        if len(torch_files) == 1:
            return "goodfire", torch_files[0]
        if len(torch_files) > 1:
            raise UserInputError(f"{path} holds several torch files ({', '.join(p.name for p in torch_files)}); pass one")
        raise FormatError(f"no SAE found in {path}: expected {_EXPECTED}")
    name = path.name
    if name in ("params.safetensors", "config.json"):
        return detect_format(path.parent)
    if name in ("sae_weights.safetensors", "cfg.json"):
        return detect_format(path.parent)
    if path.suffix == ".npz":
        return "gemmascope", path
    if path.suffix in _TORCH_SUFFIXES:
        return "goodfire", path
    # Unknown extension: sniff the zip directory.
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        raise FormatError(f"{path} is not a known SAE file: expected {_EXPECTED}") from None
    if any(m == "data.pkl" or m.endswith("/data.pkl") for m in members):
        return "goodfire", path
    if any(m.endswith(".npy") for m in members):
        return "gemmascope", path
    raise FormatError(f"{path} is a zip file but not a known SAE layout: expected {_EXPECTED}")


_OPENERS = {
    "goodfire": open_goodfire,
    "gemmascope": open_gemmascope,
    "gemmascope2": open_gemmascope2,
    "saelens": open_saelens,
}


def load_sae(
    source: str,
    *,
    labels: str | Path | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> Sae:
    """Open an SAE from a local file/folder or an `hf://OWNER/REPO[@REV]/path` reference.

    Only headers are read here; decoder rows are read on demand. `labels` is a CSV (`index_in_sae,label`)
    or Neuronpedia export (`.jsonl[.gz]` file or folder); without it a `labels.csv` beside the weights is used.
    Raises MissingResourceError (not found / not cached offline), FormatError (unknown or corrupt layout),
    UserInputError (bad source string or arguments).
    """
    src = parse_source(source)
    if src.kind == "hf":
        path = resolve_hf(src, revision=revision, cache_dir=cache_dir)
    else:
        if revision is not None:
            raise UserInputError("revision= applies only to hf:// sources")
        path = src.local_path.absolute()
        if not path.exists():
            raise MissingResourceError(f"SAE source {source!r} does not exist (no file or folder at {path})")
    family, target = detect_format(path)
    label_path: Path | None
    if labels is not None:
        label_path = Path(labels).expanduser()
        if not label_path.exists():
            raise MissingResourceError(f"labels file {label_path} does not exist")
    else:
        folder = target if target.is_dir() else target.parent
        label_path = folder / "labels.csv" if (folder / "labels.csv").is_file() else None
    return _OPENERS[family](target, source=source, labels=label_path)
