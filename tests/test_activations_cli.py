"""`esr-local activations` on the real SmolLM2 GGUF equals an independent readout: a fresh llama.cpp model,
the eval-callback reader on the chat-templated user turn, and the SAE's math done in numpy from its file."""

from __future__ import annotations

import json

import llama_cpp
import numpy as np
import pytest
from click.testing import CliRunner
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from safetensors.numpy import load_file, save_file

from esr_local.cli import main
from esr_local.readout import ResidualReader

LAYER = 9
TEXT = "Explain how to plant a tomato seedling."


@pytest.fixture(scope="module")
def jumprelu_sae(tmp_path_factory):
    """A SAELens jumprelu SAE at layer 9 with b_dec centring: latents 0-3 fire on some tokens, 4 never."""
    rng = np.random.default_rng(7)
    d_sae = 5
    w_enc = (rng.normal(size=(576, d_sae)) / np.sqrt(576)).astype(np.float32)
    folder = tmp_path_factory.mktemp("sae")
    save_file({"W_enc": w_enc, "W_dec": rng.normal(size=(d_sae, 576)).astype(np.float32),
               "b_enc": np.array([0.0, 0.5, -0.5, 0.0, -1e4], np.float32),
               "b_dec": (rng.normal(size=576) * 0.1).astype(np.float32),
               "threshold": np.array([0.2, 0.1, 0.3, 1.0, 0.0], np.float32)}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "jumprelu", "d_in": 576, "d_sae": d_sae, "apply_b_dec_to_input": True,
        "normalize_activations": "none", "metadata": {"hook_name": f"blocks.{LAYER}.hook_resid_post"}}))
    (folder / "labels.csv").write_text("index_in_sae,label\n0,tomatoes\n1,gardening tools\n")
    return folder


def _independent(smollm2_path, folder, latents, response=None):
    # 1 thread: the same numbers as 2, which stall on a busy 2-core machine (BENCHMARKS.md, Test suite)
    llm = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=256, n_threads=1, verbose=False)
    try:
        fmt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>",
                                  bos_token="<|im_start|>", add_generation_prompt=response is not None)
        text = fmt(messages=[{"role": "user", "content": TEXT}]).prompt + (response or "")
        toks = llm.tokenize(text.encode(), add_bos=False, special=True)
        with ResidualReader(llm, n_ctx=256) as reader:
            h = reader.read(toks, [LAYER])[LAYER].astype(np.float64)
    finally:
        llm.close()
    w = load_file(str(folder / "sae_weights.safetensors"))
    pre = (h - w["b_dec"]) @ w["W_enc"].astype(np.float64) + w["b_enc"]
    acts = np.where(pre > w["threshold"], np.maximum(pre, 0), 0)
    return toks, acts[:, latents]


@pytest.mark.parametrize("response", [None, "Dig a small hole first."])
def test_activations_json_equals_an_independent_readout(jumprelu_sae, smollm2_path, response):
    latents = [3, 0, 1, 4]
    args = ["activations", "--sae", str(jumprelu_sae), "--text", TEXT, "--json", "--threads", "1"]
    args += [x for i in latents for x in ("--latent", str(i))]
    if response:
        args += ["--response", response]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    toks, ref = _independent(smollm2_path, jumprelu_sae, latents, response)
    assert doc["layer"] == LAYER
    assert [t["token_id"] for t in doc["tokens"]] == toks
    assert [t["index"] for t in doc["tokens"]] == list(range(len(toks)))
    got = np.array([[t["activations"][str(i)] for i in latents] for t in doc["tokens"]])
    assert set(doc["tokens"][0]["activations"]) == {"3", "0", "1", "4"}
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-4)
    assert (ref[:, :3] > 0).any() and not ref[:, 3].any()  # some fire, the dead one never
    assert np.array_equal(got > 0, ref > 0)
    assert doc["texts"][0]["mode"] == ("response" if response else "user")


def test_activations_table_and_errors(jumprelu_sae, tmp_path):
    result = CliRunner().invoke(main, ["activations", "--sae", str(jumprelu_sae), "--latent", "0", "--latent", "1",
                                       "--text", TEXT, "--threads", "1", "--top", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "latent 0: max" in result.stdout and "(tomatoes)" in result.stdout
    rows = [ln for ln in lines if not ln.startswith("#") and not ln.lstrip().startswith("pos")]
    assert 1 <= len(rows) <= 3
    values = [max(float(v) for v in ln.split()[-2:]) for ln in rows]
    assert values == sorted(values, reverse=True)  # strongest first
    bad = CliRunner().invoke(main, ["activations", "--sae", str(jumprelu_sae), "--latent", "99", "--text", "x"])
    assert bad.exit_code == 1 and "out of range" in bad.stderr
    both = CliRunner().invoke(main, ["activations", "--sae", str(jumprelu_sae), "--latent", "0"])
    assert both.exit_code == 2 and "--text" in both.stderr
    empty = tmp_path / "t.txt"
    empty.write_text("# nothing\n")
    res = CliRunner().invoke(main, ["activations", "--sae", str(jumprelu_sae), "--latent", "0", "--texts", str(empty)])
    assert res.exit_code == 1 and "no texts" in res.stderr
