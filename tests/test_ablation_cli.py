"""`esr-local steer --ablate`: the real CLI on the embedded SmolLM2 with the firing synthetic SAE of test_ablation."""

from __future__ import annotations

import json

from click.testing import CliRunner

from esr_local.cli import main

from test_ablation import A, B, DEAD, LAYER, firing_sae  # noqa: F401 - the fixture

BASE = ["steer", "--json", "--temperature", "0", "--max-tokens", "10", "--layer", str(LAYER), "-l", str(A), "-s", "0",
        "--prompt", "How do I boil an egg?", "--seed", "1"]


def _steer(folder, *extra):
    res = CliRunner().invoke(main, [*BASE, "--sae", str(folder), *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{"):])


def test_steer_ablate_dead_is_identical_and_firing_differs(firing_sae):  # noqa: F811
    plain = _steer(firing_sae)
    dead = _steer(firing_sae, "--ablate", str(DEAD))
    assert dead["steered"]["text"] == plain["steered"]["text"]
    assert dead["ablation"]["latents"] == [DEAD] and dead["ablation"]["order"] == "pre"
    assert dead["steered"]["ablation_rows_fired"] == 0
    both = _steer(firing_sae, "--ablate", str(A), "--ablate", str(B), "--ablate-order", "post")
    assert both["ablation"] == {**both["ablation"], "latents": [A, B], "layer": LAYER, "order": "post"}
    assert both["steered"]["ablation_rows_fired"] > 0
    assert both["steered"]["text"] != plain["steered"]["text"]
    assert "ablation" not in plain


def test_steer_ablate_refuses_a_vector_file(tmp_path):
    res = CliRunner().invoke(main, ["steer", "--vector", str(tmp_path / "x.gguf"), "--ablate", "3"])
    assert res.exit_code != 0 and "--ablate needs the SAE" in res.output
