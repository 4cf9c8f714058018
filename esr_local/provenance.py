"""What a result depends on beyond its settings: tool versions, llama.cpp build, machine."""

from __future__ import annotations

import platform
import sys
from importlib import metadata


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of esr-local and the packages results depend on."""
    from . import __version__

    return {
        "esr_local": __version__,
        "llama_cpp_python": _version("llama-cpp-python"),
        "gguf": _version("gguf"),
        "numpy": _version("numpy"),
        "safetensors": _version("safetensors"),
        "sqlite_utils": _version("sqlite-utils"),
        "huggingface_hub": _version("huggingface-hub"),
        "python": sys.version.split()[0],
    }


def machine() -> dict:
    """The machine the run happened on."""
    return {"platform": platform.platform(), "processor": platform.machine(), "node": platform.node()}
