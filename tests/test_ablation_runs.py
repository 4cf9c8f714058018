"""Ablation runs end to end on SmolLM2 with the firing synthetic SAE: a source run, then replays that
ablate a never-firing latent (responses byte-identical to the source, pair by pair) and firing latents
(responses change); the spec records the ablation; `metrics --paired` pairs every trial."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from esr_local.ablation_runs import random_control, resolve_ablation
from esr_local.cli import main
from esr_local.errors import UserInputError
from esr_local.saes import load_sae

from test_ablation import A, B, D_SAE, DEAD, LAYER, firing_sae  # noqa: F401 - the fixture


def _run(args, db):
    res = CliRunner().invoke(main, ["run", "--db", str(db), "--skip-judge-check", "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{"):])


def _trials(db, run_id):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return [dict(r) for r in con.execute(
        "SELECT latent, prompt_index, replicate, seed, boost, condition, response FROM trials WHERE run_id = ? "
        "ORDER BY latent, prompt_index, replicate", (run_id,))]


@pytest.fixture(scope="module")
def source_run(firing_sae, tmp_path_factory):  # noqa: F811
    db = tmp_path_factory.mktemp("abl") / "esr.db"
    out = _run(["--sae", str(firing_sae), "--allow-unlabelled", "--layer", str(LAYER), "--latent", str(A), "--boost", "4",
                "--n-prompts", "3", "--max-tokens", "12", "--n-ctx", "1024", "--seed", "5"], db)
    return db, out["summary"]["run_id"]


def test_ablation_replays_pair_with_their_source(source_run):
    db, src = source_run
    base = _trials(db, src)
    dead = _run(["--replay", src, "--ablate", str(DEAD)], db)["summary"]["run_id"]
    fired = _run(["--replay", src, "--ablate", str(A), "--ablate", str(B), "--ablate-order", "post"], db)["summary"]["run_id"]
    key = lambda t: (t["latent"], t["prompt_index"], t["replicate"], t["seed"], t["boost"])  # noqa: E731
    for rid in (dead, fired):
        rows = _trials(db, rid)
        assert [key(t) for t in rows] == [key(t) for t in base]
        assert {t["condition"] for t in rows} == {"ablation"}
    assert [t["response"] for t in _trials(db, dead)] == [t["response"] for t in base]
    assert [t["response"] for t in _trials(db, fired)] != [t["response"] for t in base]
    spec = json.loads(sqlite3.connect(db).execute("SELECT spec_json FROM runs WHERE id = ?", (fired,)).fetchone()[0])
    assert spec["ablation"] == {"latents": [A, B], "source": {"kind": "given"}, "order": "post", "layer": LAYER}
    assert spec["conditions"] == ["ablation"] and spec["replay"]["source_run"] == src

    res = CliRunner().invoke(main, ["metrics", "--db", str(db), "--paired", src, dead, "--json"])
    assert res.exit_code == 0, res.output
    cmp = json.loads(res.output)
    assert cmp["pairs"] == len(base) and cmp["unpaired"] == 0
    assert cmp["multi_attempt"]["difference"] == 0.0 and cmp["esr"]["difference"] == 0.0  # identical responses
    text = CliRunner().invoke(main, ["metrics", "--db", str(db), "--paired", f"{src}:steered", f"{fired}:ablation"])
    assert text.exit_code == 0 and f"{len(base)} pairs" in text.output and "multi-attempt" in text.output


def test_ablation_options_need_a_replay_and_valid_latents(source_run, firing_sae):  # noqa: F811
    db, src = source_run
    res = CliRunner().invoke(main, ["run", "--db", str(db), "--latent", "1", "--boost", "1", "--ablate", "3"])
    assert res.exit_code != 0 and "add --replay RUN" in res.output
    res = CliRunner().invoke(main, ["run", "--db", str(db), "--replay", src, "--ablate", str(D_SAE), "--skip-judge-check"])
    assert res.exit_code != 0 and "out of range" in res.output
    res = CliRunner().invoke(main, ["run", "--db", str(db), "--replay", src, "--ablate-set", "nope", "--skip-judge-check"])
    assert res.exit_code != 0 and "no detector set named 'nope'" in res.output


def test_random_control_skips_detectors_and_dead_latents(firing_sae):  # noqa: F811
    sae = load_sae(str(firing_sae))
    drawn = random_control(sae, 5, seed=2, exclude={A, B})
    assert len(drawn) == 5 and not {A, B} & set(drawn) and drawn == random_control(sae, 5, seed=2, exclude={A, B})
    assert random_control(sae, D_SAE - 2, seed=0, exclude={A, B}) == sorted(set(range(D_SAE)) - {A, B})
    with pytest.raises(UserInputError, match="only 10 latents"):
        random_control(sae, D_SAE - 1, seed=0, exclude={A, B})
    got = resolve_ablation(None, sae, LAYER, n_random=3, seed=1)
    assert got["source"] == {"kind": "random", "n": 3, "seed": 1, "excluded_set": None} and len(got["latents"]) == 3
