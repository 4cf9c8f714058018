"""The paper's latent selection on the real SmolLM2 GGUF with a synthetic SAELens SAE whose latents are
planted: some fire on the prompts (relevant), some have placeholder labels, some low concreteness, one
is dead. The funnel's counts, the chosen set and the stored `latent_sets` row follow exactly."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from esr_local.cli import main
from esr_local.errors import MissingResourceError, UserInputError
from esr_local.latent_sets import load_latent_set, save_latent_set
from esr_local.saes import load_sae
from esr_local.selection import Relevance, draw_candidates, max_over_texts, select_latents
from esr_local.store import Store
from esr_local.text_readout import read_residuals

LAYER, D_SAE = 6, 30
PROMPTS = ["Explain how to fold a paper plane.", "How do I boil an egg?", "Explain how to tie a tie."]
PLANTED = [4, 11, 17, 25]  # fire on the prompts; activation grows with position in this list
PLACEHOLDER = [2, 3]
ABSTRACT = [5, 6]
DEAD = 8


@pytest.fixture(scope="module")
def planted_sae(tmp_path_factory, smollm2):
    res = read_residuals(smollm2, PROMPTS, LAYER)
    tokens = np.concatenate([r.residual[1:] for r in res]).astype(np.float64)
    mean_dir = tokens.mean(axis=0) / np.linalg.norm(tokens.mean(axis=0))
    rng = np.random.default_rng(0)
    w_enc = (rng.normal(size=(576, D_SAE)) * 0.01).astype(np.float32)
    b_enc = np.full(D_SAE, -1e4, np.float32)  # never fire
    for k, j in enumerate(PLANTED):
        w_enc[:, j] = mean_dir * (1 + k)
        b_enc[j] = 0.0
    w_dec = rng.normal(size=(D_SAE, 576)).astype(np.float32)
    w_dec[DEAD] = 0.0
    folder = tmp_path_factory.mktemp("planted")
    save_file({"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": np.zeros(576, np.float32)},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": 576, "d_sae": D_SAE, "apply_b_dec_to_input": False,
        "normalize_activations": "none", "metadata": {"hook_name": f"blocks.{LAYER}.hook_resid_post"}}))
    labels = ["index_in_sae,label"] + [
        f"{i},{'feature_%d' % i if i == 2 else '' if i == 3 else 'topic number %d' % i}" for i in range(D_SAE)]
    (folder / "labels.csv").write_text("\n".join(labels) + "\n")
    ratings = ["index_in_sae,concreteness"] + [f"{i},{20 if i in ABSTRACT else 90}" for i in range(D_SAE)]
    (folder / "concreteness.csv").write_text("\n".join(ratings) + "\n")
    return folder


def _expected_chosen(excluded, n=10, seed=0):
    return [i for i in draw_candidates(D_SAE, n, seed) if i not in excluded][:n]


def test_strict_relevance_funnel(planted_sae, smollm2):
    sae = load_sae(str(planted_sae))
    sel = select_latents(smollm2, sae, n=10, seed=0, prompts=PROMPTS, layer=LAYER)
    assert sel.funnel == {"candidates": 30, "labelled": 28, "concrete": 26, "irrelevant": 21, "chosen": 10, "dead": 1}
    excluded = set(PLANTED + PLACEHOLDER + ABSTRACT + [DEAD])
    assert sel.chosen == _expected_chosen(excluded)
    rows = {r["latent"]: r for r in sel.candidates}
    assert all(rows[j]["relevant"] and rows[j]["relevance_max"] > 0 for j in PLANTED)
    assert all(rows[i]["relevance_max"] == 0 for i in sel.chosen)
    assert rows[DEAD]["dead"] and not rows[DEAD]["relevant"]
    assert rows[5]["concreteness"] == 20 and "relevant" not in rows[5]
    assert not rows[2]["labelled"] and not rows[3]["labelled"]
    assert sel.labels == {i: f"topic number {i}" for i in sel.chosen}
    assert sel.settings["concreteness"]["source"] == "dictionary"


def test_top_k_relevance_only_drops_the_k_strongest(planted_sae, smollm2):
    sae = load_sae(str(planted_sae))
    sel = select_latents(smollm2, sae, n=10, seed=0, prompts=PROMPTS, layer=LAYER, relevance=Relevance.parse("top-k:2"))
    # The two strongest planted latents are in every prompt's top 2; the weaker two now count as irrelevant.
    assert sel.funnel["irrelevant"] == 23
    assert sel.chosen == _expected_chosen({25, 17, DEAD, *PLACEHOLDER, *ABSTRACT})
    # The streamed all-latent maxima agree with per-latent encoding.
    res = [r.residual for r in read_residuals(smollm2, PROMPTS, LAYER)]
    full = max_over_texts(sae, res, block_size=7)
    direct = np.stack([sae.encode(r, list(range(D_SAE))).max(axis=0) for r in res])
    np.testing.assert_allclose(full, direct, rtol=1e-4, atol=1e-3)
    with pytest.raises(UserInputError, match="top-k"):
        Relevance.parse("top-k:zero")


def test_store_and_load_latent_set(planted_sae, smollm2, tmp_path):
    sae = load_sae(str(planted_sae))
    sel = select_latents(smollm2, sae, n=5, seed=3, prompts=PROMPTS, layer=LAYER)
    db = tmp_path / "esr.db"
    saved = save_latent_set(db, "five", sel, sae=sae, sae_source=str(planted_sae), model_name="smollm2")
    loaded = load_latent_set(db, "five")
    assert loaded == saved
    assert loaded.latents == sel.chosen and loaded.funnel == sel.funnel
    assert load_latent_set(db, saved.id).name == "five"
    assert {r["latent"] for r in loaded.filters} == set(draw_candidates(D_SAE, 5, 3))
    with pytest.raises(UserInputError, match="already exists"):
        save_latent_set(db, "five", sel, sae=sae, sae_source="x", model_name=None)
    with pytest.raises(MissingResourceError, match="known sets: five"):
        load_latent_set(db, "six")
    with Store(db) as store:
        assert load_latent_set(store, "five").id == saved.id
    row = sqlite3.connect(db).execute("SELECT n_requested, seed, d_sae FROM latent_sets").fetchone()
    assert row == (5, 3, D_SAE)


def test_select_command_prints_the_funnel_and_stores_the_set(planted_sae, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    db = tmp_path / "cli.db"
    args = ["latents", "select", "--sae", str(planted_sae), "--n", "10", "--prompts", str(prompts), "--db", str(db),
            "--name", "planted", "--json", "--threads", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "candidates 30 -> labelled 28 -> concrete 26 -> irrelevant 21 -> chosen 10  (1 dead excluded)" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["latents"] == _expected_chosen(set(PLANTED + PLACEHOLDER + ABSTRACT + [DEAD]))
    assert load_latent_set(db, "planted").latents == doc["latents"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already exists" in again.stderr
