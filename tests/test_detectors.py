"""Off-topic detector discovery: the derangement, the AUC, both rankings on a planted case (exact numbers),
and the whole search on the real SmolLM2 with the firing synthetic SAE of test_ablation, stored and reloaded."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from esr_local.cli import main
from esr_local.detectors import auc_scores, derangement, find_detectors, load_detector_set, rank_detectors, save_detector_set
from esr_local.errors import MissingResourceError, UserInputError
from esr_local.saes import load_sae
from esr_local.sampling import SamplingParams
from esr_local.store import Store
from esr_local.text_readout import read_residuals

from test_ablation import A, B, LAYER, PROMPTS, firing_sae  # noqa: F401 - the fixture


@pytest.mark.parametrize("n", [2, 3, 7, 20])
def test_derangement_has_no_fixed_point(n):
    for seed in range(20):
        p = derangement(n, seed)
        assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
    assert derangement(n, 5) == derangement(n, 5)
    assert derangement(2, 0) == [1, 0]
    with pytest.raises(UserInputError, match="at least 2"):
        derangement(1, 0)


def test_auc_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 4, size=(9, 6)).astype(float), rng.integers(0, 4, size=(7, 6)).astype(float)
    brute = [np.mean([(p > q) + 0.5 * (p == q) for p in pos[:, c] for q in neg[:, c]]) for c in range(6)]
    np.testing.assert_allclose(auc_scores(pos, neg), brute, rtol=0, atol=1e-12)


def test_planted_rankings():
    n, d = 10, 8
    matched, mism = np.zeros((n, d)), np.zeros((n, d))
    mism[:9, 0] = 2.0                      # strict detector: silent on matched, fires on 90% of mismatched
    mism[:7, 1] = 3.0                      # silent on matched, but only 70% of mismatched: not strict
    matched[3, 2] = 0.5                    # fires once on a matched pair: not strict, yet perfectly separable
    mism[:, 2] = np.arange(1, 11)
    matched[:, 4] = mism[:, 4] = 1.0       # fires everywhere: AUC 0.5, not a detector
    matched[:5, 5] = 4.0                   # fires on matched only: AUC < 0.5
    mism[:8, 6] = 1.0                      # exactly 80%: strict at the threshold
    r = rank_detectors(matched, mism, min_active=0.8, top=4)
    assert r.strict == [0, 6]
    assert r.by_auc == [2, 0, 6, 1]
    s = {x["latent"]: x for x in r.stats}
    assert set(s) == {0, 1, 2, 6}
    assert s[0]["auc"] == pytest.approx(0.95) and s[1]["auc"] == pytest.approx(0.85) and s[2]["auc"] == 1.0
    assert s[6]["auc"] == pytest.approx(0.9) and s[6]["auc_rank"] == 3 and s[2]["auc_rank"] == 1
    top2 = rank_detectors(matched, mism, top=2)
    assert top2.by_auc == [2, 0] and {x["latent"] for x in top2.stats} == {0, 2, 6}  # strict ones kept too
    assert s[2]["matched_active"] == 0.1 and s[2]["matched_max"] == 0.5 and s[2]["mismatched_mean"] == 5.5
    assert s[0]["mismatched_active"] == 0.9 and s[0]["strict"] and not s[1]["strict"] and not s[2]["strict"]
    assert r.settings["n_fired"] == 6
    assert rank_detectors(matched, mism, min_active=0.9).strict == [0]
    with pytest.raises(UserInputError, match="same d_sae"):
        rank_detectors(matched, mism[:, :3])


def test_search_on_the_real_model_equals_direct_readouts_and_is_stored(firing_sae, smollm2, tmp_path):
    sae = load_sae(str(firing_sae))
    sp = SamplingParams(temperature=0.0, max_tokens=6)
    search = find_detectors(smollm2, sae, PROMPTS, layer=LAYER, sampling=sp, seed=3, top=5)
    assert search.responses == [smollm2.generate(p, sp, 3 + i).text for i, p in enumerate(PROMPTS)]
    perm = search.derangement
    for i, p in enumerate(PROMPTS):
        (m,) = read_residuals(smollm2, [p], LAYER, responses=[search.responses[i]])
        (x,) = read_residuals(smollm2, [p], LAYER, responses=[search.responses[perm[i]]])
        np.testing.assert_allclose(search.matched[i, [A, B]], sae.encode(m.residual, [A, B]).max(axis=0), rtol=1e-4)
        np.testing.assert_allclose(search.mismatched[i, [A, B]], sae.encode(x.residual, [A, B]).max(axis=0), rtol=1e-4)
    assert search.matched[:, 0].max() == 0.0  # latents with b_enc = -1e4 never fire
    store = Store(tmp_path / "esr.db", create=True)
    saved = save_detector_set(store, "d1", search, rule="auc", sae=sae, sae_source=str(firing_sae), model_name="smol")
    back = load_detector_set(store, "d1")
    assert back == saved and back.latents == search.ranking.by_auc and back.settings["derangement"] == perm
    assert back.settings["responses"] == search.responses
    with pytest.raises(UserInputError, match="already exists"):
        save_detector_set(store, "d1", search, rule="auc", sae=sae, sae_source="x", model_name=None)
    with pytest.raises(MissingResourceError, match="known sets: d1"):
        load_detector_set(store, "nope")
    store.close()


def test_detectors_find_cli(firing_sae, tmp_path):  # noqa: F811
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    db = tmp_path / "esr.db"
    res = CliRunner().invoke(main, ["detectors", "find", "--sae", str(firing_sae), "--prompts", str(prompts),
                                    "--max-tokens", "5", "--name", "dets", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["name"] == "dets" and out["rule"] == "strict" and out["layer"] == LAYER
    row = sqlite3.connect(db).execute("SELECT rule, latents_json, stats_json FROM detector_sets").fetchone()
    assert row[0] == "strict" and json.loads(row[1]) == out["latents"] and json.loads(row[2]) == out["stats"]
    again = CliRunner().invoke(main, ["detectors", "find", "--sae", str(firing_sae), "--prompts", str(prompts),
                                      "--max-tokens", "5", "--name", "dets", "--db", str(db)])
    assert again.exit_code != 0 and "already exists" in again.output
