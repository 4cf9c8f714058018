"""Bad input: one `Error:` line, a non-zero exit, no traceback - for every kind of mistake the issue lists."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from esr_local.cli import main


def _tiny_sae(path, d_in, d_sae=8, layer=10):
    path.mkdir()
    w = np.ones((d_sae, d_in), np.float32)
    save_file({"W_dec": w, "W_enc": w.T.copy(), "b_enc": np.zeros(d_sae, np.float32), "b_dec": np.zeros(d_in, np.float32)},
              str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": d_in, "d_sae": d_sae,
                                               "metadata": {"hook_name": f"blocks.{layer}.hook_resid_post"}}))
    return path


@pytest.fixture()
def files(tmp_path):
    corrupt_model = tmp_path / "corrupt.gguf"
    corrupt_model.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"hello world, not a model")
    corrupt_vec = tmp_path / "vec.gguf"
    corrupt_vec.write_bytes(b"GGUF" + b"\x00" * 10)
    bad_sae = tmp_path / "bad_sae"
    bad_sae.mkdir()
    (bad_sae / "cfg.json").write_text("{not json")
    (bad_sae / "sae_weights.safetensors").write_bytes(b"\x00" * 16)
    return {
        "sae576": str(_tiny_sae(tmp_path / "sae576", 576)),
        "sae640": str(_tiny_sae(tmp_path / "sae640", 640)),
        "corrupt_model": str(corrupt_model),
        "not_gguf": str(not_gguf),
        "corrupt_vec": str(corrupt_vec),
        "bad_sae": str(bad_sae),
        "missing": str(tmp_path / "nope.gguf"),
        "db": str(tmp_path / "esr.db"),
        "dir": str(tmp_path),
        "missing_dir": str(tmp_path / "no_such_sae"),
    }


CASES = {
    "latent out of range": (["steer", "--sae", "{sae576}", "--latent", "8", "--scale", "1"], "out of range"),
    "layer 0": (["steer", "--sae", "{sae576}", "--latent", "1", "--scale", "1", "--layer", "0"], "cannot be steered"),
    "layer too large": (["steer", "--sae", "{sae576}", "--latent", "1", "--scale", "1", "--layer", "30"], "out of range"),
    "d_model mismatch": (["steer", "--sae", "{sae640}", "--latent", "1", "--scale", "1"], "d_model"),
    "nan scale": (["steer", "--sae", "{sae576}", "--latent", "1", "--scale", "nan"], "finite"),
    "inf scale": (["vector", "export", "--sae", "{sae576}", "--latent", "1", "--scale", "inf", "--layer", "3"], "finite"),
    "missing model": (["steer", "--model", "{missing}", "--sae", "{sae576}", "--latent", "1", "--scale", "1"], "not found"),
    "corrupt model": (["steer", "--model", "{corrupt_model}", "--sae", "{sae576}", "--latent", "1", "--scale", "1"], "could not load"),
    "not a gguf": (["steer", "--model", "{not_gguf}", "--sae", "{sae576}", "--latent", "1", "--scale", "1"], "not a GGUF"),
    "missing sae": (["vector", "export", "--sae", "{missing_dir}", "--latent", "1", "--scale", "1", "--layer", "3"], "does not exist"),
    "corrupt sae": (["vector", "export", "--sae", "{bad_sae}", "--latent", "1", "--scale", "1", "--layer", "3"], "cfg.json"),
    "missing vector": (["vector", "inspect", "{missing}"], "not found"),
    "corrupt vector": (["steer", "--vector", "{corrupt_vec}"], "truncated"),
    "unknown model name": (["steer", "--model", "gpt-99", "--latent", "1", "--scale", "1"], "unknown model"),
    "export layer 0": (["vector", "export", "--sae", "{sae576}", "--latent", "1", "--scale", "1", "--layer", "0"], "cannot be steered"),
    "run prompts is a folder": (["run", "--skip-judge-check", "--db", "{db}", "-l", "1", "--boost", "1", "--prompts", "{dir}"], "cannot read prompt file"),
    "run sweep condition by hand": (["run", "--skip-judge-check", "--db", "{db}", "-l", "1", "--condition", "sweep:3"], "unknown condition"),
    "run unknown meta-prompt": (["run", "--skip-judge-check", "--db", "{db}", "-l", "1", "--meta-prompt", "nope"], "unknown meta-prompt"),
    "resume unknown run": (["run", "--db", "{db}", "--resume", "zzzz"], "no run"),
    "run bad judge": (["run", "--db", "{db}", "-l", "1", "--boost", "1", "--judge", "bogus"], "unknown judge"),
    "run anthropic without key": (["run", "--db", "{db}", "-l", "1", "--boost", "1", "--judge", "anthropic"], "ANTHROPIC_API_KEY"),
    "run too many prompts": (["run", "--skip-judge-check", "--db", "{db}", "-l", "1", "--boost", "1", "--n-prompts", "99"], "exceeds"),
    "run impossible target": (["run", "--skip-judge-check", "--db", "{db}", "-l", "1", "--target-score", "1"], "target"),
    "run bounds reversed": (["run", "--skip-judge-check", "--db", "{db}", "-l", "1", "--lower", "5", "--upper", "1"], "lower < upper"),
    "run sweep with one latent": (["run", "--skip-judge-check", "--db", "{db}", "-l", "1", "--sweep-levels", "4"], "at least 2 latents"),
    "mismatched scales": (["vector", "export", "--sae", "{sae576}", "-l", "1", "-l", "2", "-l", "3", "-s", "1", "-s", "2", "--layer", "3"], "scale"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_error_line(name, files, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    args, needle = CASES[name]
    assert needle.strip(), "each case names the fragment its error line must contain"
    args = [a.format(**files) for a in args]
    r = CliRunner().invoke(main, args)
    assert r.exit_code not in (0, None), r.output
    out = r.output.strip()
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    error_lines = [ln for ln in lines if ln.startswith("Error:")]
    assert len(error_lines) == 1, out
    assert lines[-1].startswith("Error:"), out
    assert needle.lower() in error_lines[0].lower(), out
    if "--db" in args:  # rejected before a run row is written
        import sqlite3

        con = sqlite3.connect(files["db"])
        try:
            assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
        except sqlite3.OperationalError:
            pass  # no runs table: nothing was created at all
        finally:
            con.close()


def test_real_process_exit_code_and_stderr(files):
    p = subprocess.run([sys.executable, "-m", "esr_local", "steer", "--model", files["missing"]],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("Error:")


def test_read_commands_print_json(tmp_path):
    """`models --json` and `vector inspect --json` print one JSON document with the fields the tables show."""
    r = CliRunner().invoke(main, ["models", "--json"])
    assert r.exit_code == 0, r.output
    models = json.loads(r.output)
    assert any(m["name"] == "smollm2-135m-instruct" for m in models)
    from esr_local.vectors import ControlVector, write_gguf

    path = write_gguf(ControlVector({4: np.full(576, 0.5, np.float32)}, "llama", {"latents": [7], "scales": [2.0]}),
                      tmp_path / "v.gguf")
    r = CliRunner().invoke(main, ["vector", "inspect", "--json", str(path)])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["layers"] == [4] and info["n_embd"] == 576 and info["model_hint"] == "llama"
    assert abs(info["norms"]["4"] - 12.0) < 1e-5 and info["provenance"]["latents"] == [7]
