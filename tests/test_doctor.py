"""`esr-local doctor`: the real llama.cpp build, catalog models in a hub-cache layout, the database's schema
version (read-only), and the cached judge check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import llama_cpp
from click.testing import CliRunner

from esr_local.cli import main
from esr_local.doctor import database_status, diagnose, last_judge_check, parse_system_info
from esr_local.store import Store
from esr_local.store_schema import MIGRATIONS


def test_system_info_parsing_names_backends_and_simd_flags():
    info = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | F16C = 1 | FMA = 1 | "
            "CUDA : ARCHS = 860 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | RPC : ")
    parsed = parse_system_info(info)
    assert parsed["backends"] == ["CPU", "CUDA", "RPC"]
    assert parsed["simd"] == ["AVX", "AVX2", "F16C", "FMA", "SSE3", "SSSE3"]  # AVX512 = 0 is off
    assert parse_system_info("CPU : NEON = 1 | ARM_FMA = 1 | METAL : EMBED_LIBRARY = 1 |")["backends"] == ["CPU", "Metal"]


def test_llama_cpp_build_is_the_installed_one():
    build = diagnose()["llama_cpp"]
    expected = llama_cpp.llama_print_system_info().decode()
    assert build["installed"] and build["version"] == llama_cpp.__version__
    assert build["system_info"] == expected.strip()
    assert build["backends"][0] == "CPU"
    assert build["supports_gpu_offload"] == bool(llama_cpp.llama_supports_gpu_offload())
    assert build["simd"] and all(f"{flag} = 1" in expected for flag in build["simd"])


def test_models_found_in_pypi_packages_and_a_hub_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snap = hub / "models--bartowski--gemma-2-2b-it-GGUF" / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    (snap / "gemma-2-2b-it-Q8_0.gguf").write_bytes(b"GGUF")
    sae = hub / "models--google--gemma-scope-2b-pt-res" / "snapshots" / "fed" / "layer_16" / "width_16k" / "average_l0_78"
    sae.mkdir(parents=True)
    (sae / "params.npz").write_bytes(b"x")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    models = {m["name"]: m for m in diagnose()["models"]}
    assert models["smollm2-135m-instruct"]["available"] and models["smollm2-135m-instruct"]["sae"]["available"]
    gemma = models["gemma-2-2b-it"]
    assert gemma["available"] and gemma["path"] == {"Q8_0": str(snap / "gemma-2-2b-it-Q8_0.gguf")}
    assert gemma["sae"] == {"source": "hf://google/gemma-scope-2b-pt-res/layer_16/width_16k/average_l0_78",
                            "available": True, "path": str(sae), "labels": []}
    shipped = models["smollm2-135m-instruct"]["sae"]
    assert [Path(p).name for p in shipped["labels"]] == ["labels.csv"]  # the dictionary's labels beside it
    assert not models["gemma-2-9b-it"]["available"] and "hf://bartowski/gemma-2-9b-it-GGUF" in models["gemma-2-9b-it"]["missing"]


def test_database_status_reads_without_creating_or_migrating(tmp_path):
    missing = tmp_path / "none.db"
    assert database_status(missing)["exists"] is False and not missing.exists()
    db = tmp_path / "esr.db"
    with Store(db) as store:
        store.create_run({"experiment": "esr"})
    names = [m.name for m in MIGRATIONS._migrations]
    status = database_status(db)
    assert (status["schema_version"], status["applied"], status["runs"], status["pending"]) == (names[-1], len(names), 1, [])
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    assert "cannot read it as an esr-local database" in database_status(junk)["error"]
    assert junk.read_bytes() == b"not a database at all" * 100


def test_last_judge_check_is_the_newest_cached_result(tmp_path):
    folder = tmp_path / "home" / "judge-checks"  # conftest points ESR_LOCAL_HOME at tmp_path/home
    assert last_judge_check() is None
    folder.mkdir(parents=True)
    old = folder / "aaa.json"
    old.write_text(json.dumps({"key": "aaa", "judge": {"backend": "local"}, "summary": {"passed": False}}))
    new = folder / "bbb.json"
    new.write_text(json.dumps({"key": "bbb", "judge": {"backend": "offline", "model": "rules"},
                               "summary": {"passed": True, "split_f1": 0.91}}))
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    check = last_judge_check()
    assert (check["key"], check["passed"], check["checks_cached"]) == ("bbb", True, 2)
    result = CliRunner().invoke(main, ["doctor", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 0
    assert "judge check: offline:rules: passed (split_f1 0.91)" in result.stdout
    assert "database: " + str(tmp_path / "none.db") + " (not created yet" in result.stdout
    assert not (tmp_path / "none.db").exists()


def test_doctor_json_has_every_section(tmp_path):
    result = CliRunner().invoke(main, ["doctor", "--json", "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == {"esr_local", "data_dir", "offline", "llama_cpp", "hub_cache", "models", "labels",
                         "paper_assets", "database", "judge_check"}
    assert data["data_dir"] == str(tmp_path / "home")
