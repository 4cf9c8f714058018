"""The judge catalog (`--judge local:NAME`) resolved through huggingface_hub's real code against a cache laid out
exactly as the hub lays it out (the Hub is unreachable here), with the embedded SmolLM2 GGUF standing in for a
7B judge; and rubric files (`--rubric FILE`)."""

from __future__ import annotations

import hashlib
import json
import os

import click
import pytest
from click.testing import CliRunner

from esr_local.cli import main
from esr_local.errors import FormatError, MissingResourceError, UserInputError
from esr_local.judge import DEFAULT_RUBRIC, build_judge_messages, check_judge_spec, make_judge, resolve_rubric
from esr_local.judge.catalog import get_judge_entry, load_judge_catalog, resolve_judge_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"

USER_JUDGES = """
name = "tiny-judge"
description = "SmolLM2 pretending to be a 7B judge"
hf_repo = "esr-test/tiny-judge-GGUF"
files = ["tiny-judge-q4_1.gguf"]
n_ctx = 4096
"""
SHARDED = """
name = "sharded-judge"
description = "two shards"
hf_repo = "esr-test/tiny-judge-GGUF"
files = ["big-00001-of-00002.gguf", "big-00002-of-00002.gguf"]
"""


@pytest.fixture()
def hub(tmp_path, monkeypatch, smollm2_path):
    """HF cache with esr-test/tiny-judge-GGUF at COMMIT: tiny-judge-q4_1.gguf (a blob linking to the real SmolLM2)
    and the first of two shards of big-*.gguf (the second is missing)."""
    import huggingface_hub.constants as hfc

    cache = tmp_path / "hf"
    repo = cache / "models--esr-test--tiny-judge-GGUF"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    os.symlink(smollm2_path, repo / "blobs" / "aa11")
    os.symlink(os.path.relpath(repo / "blobs" / "aa11", snap), snap / "tiny-judge-q4_1.gguf")
    (repo / "blobs" / "bb22").write_bytes(b"GGUF shard one")
    os.symlink(os.path.relpath(repo / "blobs" / "bb22", snap), snap / "big-00001-of-00002.gguf")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "my-judges"
    folder.mkdir()
    (folder / "tiny.toml").write_text(USER_JUDGES)
    (folder / "sharded.toml").write_text(SHARDED)
    monkeypatch.setenv("ESR_LOCAL_JUDGE_CATALOG", str(folder))
    return snap


def test_shipped_catalog_has_qwen_and_an_8_to_9b_alternative():
    cat = load_judge_catalog()
    qwen = cat["qwen2.5-7b-instruct"]
    assert qwen.hf_repo == "Qwen/Qwen2.5-7B-Instruct-GGUF"
    assert all("q4_k_m" in f for f in qwen.files) and qwen.files[0].endswith("00001-of-00002.gguf")
    assert cat["qwen2.5-7b-instruct-bartowski"].files == ("Qwen2.5-7B-Instruct-Q4_K_M.gguf",)
    assert cat["llama-3.1-8b-instruct"].hf_repo == "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF"
    assert cat["gemma-2-9b-it"].system_role is False  # Gemma 2's template has no system role


def test_local_name_is_resolved_from_the_hub_cache_and_judges_with_the_real_model(hub, smollm2_path):
    found = resolve_judge_model("tiny-judge")
    assert found.path == hub / "tiny-judge-q4_1.gguf" and found.revision == COMMIT
    judge = make_judge("local:tiny-judge", n_threads=1)
    try:
        info = judge.describe()
        result = judge.judge("Name a yellow fruit.", "A banana is yellow.", "sea shells")
        raw = judge.complete("Answer with one word.", "What colour is a ripe banana?")
        assert raw == judge.complete("Answer with one word.", "What colour is a ripe banana?")  # greedy
    finally:
        judge.close()
    sha = hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
    assert info["backend"] == "local" and info["catalog_name"] == "tiny-judge"
    assert info["weights_sha256"] == sha and info["n_ctx"] == 4096 and info["n_threads"] == 1
    assert info["source"] == {"hf_repo": "esr-test/tiny-judge-GGUF", "files": ["tiny-judge-q4_1.gguf"],
                              "revision": COMMIT}
    assert info["deterministic"] is True and info["rubric_id"] == DEFAULT_RUBRIC.id
    assert info["version"].startswith("llama-cpp-python ")
    assert result.parse_status == "ok" and len(result.attempts) >= 1  # grammar-constrained: always parseable
    assert isinstance(raw, str) and raw.strip() and "<json>" not in raw  # unconstrained: no grammar output


def test_local_judge_threads_default_to_the_machine(hub, monkeypatch):
    monkeypatch.setenv("ESR_LOCAL_THREADS", "2")
    judge = make_judge("local:tiny-judge")
    try:
        assert judge.n_threads == 2 and judge.describe()["n_gpu_layers"] == 0
    finally:
        judge.close()


def test_a_missing_shard_offline_is_one_clear_error(hub):
    with pytest.raises(MissingResourceError) as info:
        resolve_judge_model("sharded-judge")
    msg = str(info.value)
    assert "big-00002-of-00002.gguf" in msg and "hf://esr-test/tiny-judge-GGUF" in msg and "local:PATH.gguf" in msg


def test_esr_local_offline_alone_keeps_resolution_in_the_cache(hub, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("ESR_LOCAL_OFFLINE", "1")
    assert resolve_judge_model("tiny-judge").path == hub / "tiny-judge-q4_1.gguf"
    with pytest.raises(MissingResourceError, match=r"big-00002-of-00002\.gguf .*not in the Hugging Face cache"):
        resolve_judge_model("sharded-judge")


def test_unknown_judge_name_lists_the_known_ones(hub):
    with pytest.raises(UserInputError, match=r"unknown local judge 'qwen-9000'.*qwen2\.5-7b-instruct.*tiny-judge"):
        make_judge("local:qwen-9000")
    with pytest.raises(UserInputError, match="unknown local judge"):
        check_judge_spec("local:qwen-9000")
    check_judge_spec("local:tiny-judge")  # known: no error, nothing loaded
    with pytest.raises(MissingResourceError, match="judge model not found"):
        check_judge_spec("local:/nowhere/judge.gguf")


def test_a_bad_catalog_entry_is_a_format_error(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nhf_repo = "a/b"\nfiles = ["model.bin"]\n')
    monkeypatch.setenv("ESR_LOCAL_JUDGE_CATALOG", str(bad))
    with pytest.raises(FormatError, match="files must be a list of .gguf"):
        get_judge_entry("x")
    bad.write_text('name = "x"\nhf_repo = "a/b"\nfiles = ["m.gguf"]\nquant = "Q4"\n')
    with pytest.raises(FormatError, match="unknown field"):
        load_judge_catalog()


# --- rubric files ----------------------------------------------------------------------------

GOOD_TOML = '''
id = "my-rubric"
system = "Grade it."
instructions = "Split into attempts; score each."
prompt_line = "Q: {prompt}"
response_line = "A: {response}"
label_line = "Off-topic: {label}"
'''


def test_a_rubric_file_gives_its_own_messages(tmp_path):
    f = tmp_path / "r.toml"
    f.write_text(GOOD_TOML)
    rubric = resolve_rubric(str(f))
    assert rubric.id == "my-rubric" and rubric.source.startswith(str(f.resolve()))
    system, user = build_judge_messages("Why?", "Because.", "cats", rubric)
    assert (system, user) == ("Grade it.", "Split into attempts; score each.\n\nQ: Why?\nA: Because.\nOff-topic: cats")
    j = tmp_path / "r.json"
    j.write_text(json.dumps({k: getattr(rubric, k) for k in ("system", "instructions", "prompt_line", "response_line",
                                                              "label_line")}))
    from_json = resolve_rubric(str(j))
    assert from_json.sha256 == rubric.sha256 and from_json.id == "file:r.json"


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("{label}", "label"), r"label_line 'Off-topic: label' lacks the placeholder \{label\}"),
    (lambda t: t.replace("{prompt}", ""), r"lacks the placeholder \{prompt\}"),
    (lambda t: t.replace('response_line = "A: {response}"\n', ""), "missing response_line"),
    (lambda t: t + 'colour = "red"\n', "unknown colour"),
    (lambda t: t.replace('"Grade it."', "3"), "system must be a non-empty string"),
    (lambda t: t + "[[[", "not valid TOML"),
])
def test_bad_rubric_files_are_clear_errors(tmp_path, edit, message):
    f = tmp_path / "bad.toml"
    f.write_text(edit(GOOD_TOML))
    with pytest.raises(FormatError, match=message):
        resolve_rubric(str(f))


def test_unknown_rubric_name_is_a_clear_error():
    with pytest.raises(MissingResourceError, match="neither 'default', 'paper' nor an existing file"):
        resolve_rubric("papr")


def test_the_default_rubric_does_not_say_the_model_was_steered():
    text = (DEFAULT_RUBRIC.system + DEFAULT_RUBRIC.instructions).lower()
    for word in ("steer", "activation", "pushed", "manipulat"):
        assert word not in text
    assert "text of the first attempt" not in text  # a placeholder small judges used to copy


def _probe(args):
    from esr_local.cli.judge_options import judge_from_options, judge_options

    @click.command()
    @judge_options
    def probe(**opts):
        judge_from_options(**opts).close()

    main.add_command(probe, "probe-judge")
    try:
        return CliRunner().invoke(main, ["probe-judge", *args])
    finally:
        main.commands.pop("probe-judge", None)


def test_cli_bad_judge_name_and_bad_rubric_file_are_one_error_line(hub, tmp_path):
    r = _probe(["--judge", "local:nope"])
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0 and r.output.startswith("Error: unknown local judge")
    f = tmp_path / "bad.toml"
    f.write_text(GOOD_TOML.replace("{response}", "response"))
    r = _probe(["--judge", "openai:m", "--judge-base-url", "http://127.0.0.1:9/v1", "--rubric", str(f)])
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0 and "lacks the placeholder {response}" in r.output
