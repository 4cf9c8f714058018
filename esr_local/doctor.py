"""`esr-local doctor`: what this installation has and where - the llama.cpp build, the models, SAEs,
labels and paper assets in the caches, the database and its schema version, the last judge check.

Everything here only looks: no download, no network, no database is created or migrated.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

from .paths import data_dir, default_db_path

_SIMD_FLAGS = ("SSE3", "SSSE3", "AVX", "AVX_VNNI", "AVX2", "F16C", "FMA", "BMI2", "AVX512", "AVX512_VBMI",
               "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "NEON", "ARM_FMA", "FP16_VA", "SVE", "MATMUL_INT8",
               "DOTPROD", "LLAMAFILE", "OPENMP", "REPACK", "ACCELERATE")
_BACKEND_MARKERS = {"CUDA": ("CUDA",), "Metal": ("METAL", "MTL"), "Vulkan": ("VULKAN",), "ROCm/HIP": ("HIP", "ROCM"),
                    "SYCL": ("SYCL",), "BLAS": ("BLAS",), "RPC": ("RPC",)}


def parse_system_info(info: str) -> dict[str, Any]:
    """Backends and enabled CPU features from llama_print_system_info's `NAME : FLAG = 1 | ...` text."""
    flags = {}
    for name, value in re.findall(r"([A-Z0-9_]+)\s*=\s*([^|\s]+)", info):
        flags[name] = value
    enabled = sorted(k for k, v in flags.items() if v == "1")
    sections = [s.strip() for s in re.findall(r"(?:^|\|)\s*([A-Za-z][A-Za-z0-9_ ]*?)\s*:", info)]
    upper = info.upper()
    backends = ["CPU"] + [name for name, marks in _BACKEND_MARKERS.items()
                          if any(re.search(rf"\b{m}\b", upper) for m in marks)]
    return {"backends": backends, "simd": [f for f in enabled if f in _SIMD_FLAGS],
            "flags": enabled, "sections": sorted(set(sections))}


def llama_cpp_build() -> dict[str, Any]:
    """The llama-cpp-python version, llama.cpp's system info and what the build supports."""
    try:
        import llama_cpp
    except ImportError as exc:
        return {"installed": False, "error": f"llama_cpp cannot be imported ({exc}); run `make venv`"}
    info = llama_cpp.llama_print_system_info()
    info = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    out = {"installed": True, "version": getattr(llama_cpp, "__version__", None), "system_info": info.strip(),
           **parse_system_info(info)}
    for name in ("gpu_offload", "rpc", "mmap", "mlock"):
        fn = getattr(llama_cpp, f"llama_supports_{name}", None)
        out[f"supports_{name}"] = bool(fn()) if fn is not None else None
    if out["supports_rpc"] and "RPC" not in out["backends"]:
        out["backends"].append("RPC")
    if out["supports_gpu_offload"] and out["backends"] == ["CPU"]:
        out["backends"].append("GPU (unnamed)")
    return out


def _hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME), else
    huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - an old or broken huggingface_hub: its documented default
        return Path.home() / ".cache" / "huggingface" / "hub"


def _cached_in_hub(repo_id: str, path_in_repo: str, revision: str | None = None) -> Path | None:
    """The cached copy of a file or folder of a Hub model repo (any snapshot, or the revision's), or None."""
    repo_dir = _hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates = sorted(snapshots.iterdir())
    if revision:
        ref = repo_dir / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else revision
        candidates = [c for c in candidates if c.name == commit]
    for snap in candidates:
        target = snap / path_in_repo if path_in_repo else snap
        if target.is_file() or (target.is_dir() and any(target.iterdir())):
            return target
    return None


def model_files(catalog: str | None = None) -> list[dict[str, Any]]:
    """Each catalog model: where its GGUF comes from and whether a copy is on this machine (no download)."""
    from .catalog import load_catalog

    out = []
    for name, entry in sorted(load_catalog(catalog).items()):
        g = entry.gguf
        row: dict[str, Any] = {"name": name, "source": g.describe(), "available": False, "path": None}
        if g.pypi_package:
            module = g.assemble_module or g.pypi_module or g.pypi_package.replace("-", "_")
            try:
                import importlib.util

                spec = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                spec = None
            row["available"] = spec is not None
            row["path"] = None if spec is None else str(Path(spec.origin).parent)
            row["missing"] = None if spec else f"pip install {g.pypi_package}"
        elif g.hf_repo:
            cached = {q: _cached_in_hub(g.hf_repo, f, g.revision) for q, f in sorted(g.files.items())}
            have = {q: str(p) for q, p in cached.items() if p is not None}
            row.update(available=bool(have), path=have or None, quants=sorted(g.files),
                       missing=None if have else f"downloaded on first use from hf://{g.hf_repo}")
        sae = entry.sae
        if sae.source:
            row["sae"] = _sae_status(sae.source)
        out.append(row)
    return out


def _sae_status(source: str) -> dict[str, Any]:
    """Whether a catalog SAE source (shipped:NAME, a path or hf://...) is on this machine."""
    from .saes.source import parse_source
    from .steering import resolve_sae_source

    try:
        src = parse_source(resolve_sae_source(source))
    except Exception as exc:  # noqa: BLE001 - a bad or missing catalog SAE is reported, not raised
        return {"source": source, "available": False, "error": str(exc)}
    if src.kind == "local":
        path = src.local_path
        found = path if path is not None and path.exists() else None
    else:
        found = _cached_in_hub(src.repo_id, src.path_in_repo, src.revision)
    folder = found if found is not None and found.is_dir() else found.parent if found is not None else None
    labels = sorted(str(p) for p in folder.glob("labels.csv")) if folder is not None else []
    return {"source": source, "available": found is not None, "path": None if found is None else str(found),
            "labels": labels}


def cached_files(folder: Path) -> list[dict[str, Any]]:
    """Files under a cache folder (relative path and size), sorted."""
    if not folder.is_dir():
        return []
    return [{"path": str(p.relative_to(folder)), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".part")]


def database_status(db: str | Path | None = None) -> dict[str, Any]:
    """The database in use, read-only: does it exist, its applied migrations (schema version), pending ones,
    and how many runs it holds."""
    from .store_schema import MIGRATIONS

    path = Path(db).expanduser() if db is not None else default_db_path()
    known = [m.name for m in getattr(MIGRATIONS, "_migrations", [])]
    out: dict[str, Any] = {"path": str(path), "exists": path.is_file(), "latest_known": known[-1] if known else None}
    if not path.is_file():
        out["note"] = "created on first use (esr-local run / import)"
        return out
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            applied = [r[0] for r in conn.execute(
                "SELECT name FROM _sqlite_migrations WHERE migration_set = 'esr_local' ORDER BY id")]
            n_runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        out["error"] = f"cannot read it as an esr-local database ({exc})"
        return out
    out.update(schema_version=applied[-1] if applied else None, applied=len(applied), runs=n_runs,
               pending=[m for m in known if m not in applied])
    return out


def last_judge_check() -> dict[str, Any] | None:
    """The most recent cached `judge check` result under <data dir>/judge-checks/, or None."""
    folder = data_dir() / "judge-checks"
    files = sorted(folder.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name)) if folder.is_dir() else []
    if not files:
        return None
    try:
        record = json.loads(files[-1].read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"file": str(files[-1]), "error": f"unreadable ({exc})"}
    summary = record.get("summary") or {}
    judge = record.get("judge") or {}
    return {"file": str(files[-1]), "key": record.get("key"), "judge": judge, "passed": summary.get("passed"),
            "summary": summary, "checks_cached": len(files)}


def diagnose(db: str | Path | None = None, catalog: str | None = None) -> dict[str, Any]:
    """Everything `esr-local doctor` shows, as one JSON-friendly dict."""
    from . import __version__

    home = data_dir()
    return {
        "esr_local": __version__,
        "data_dir": str(home),
        "offline": any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
                       for v in ("ESR_LOCAL_OFFLINE", "HF_HUB_OFFLINE")),
        "llama_cpp": llama_cpp_build(),
        "hub_cache": str(_hub_cache()),
        "models": model_files(catalog),
        "labels": cached_files(home / "labels"),
        "paper_assets": cached_files(home / "paper"),
        "database": database_status(db),
        "judge_check": last_judge_check(),
    }
