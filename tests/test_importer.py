"""Importing result files of the ESR reference implementation."""

from __future__ import annotations

import copy
import json
import math

import pytest

from esr_local.errors import FormatError, MissingResourceError
from esr_local.importer import import_reference
from esr_local.metrics import METRIC_KEYS, metrics_for_store
from esr_local.store import Store


def _score(*scores):
    return {"raw_response": "feedback <json>...</json>",
            "attempts": [{"attempt_text": f"attempt {i}", "score": s} for i, s in enumerate(scores)]}


def _trial(prompt, latent, label, threshold, score, error=None, seed=1):
    return {"prompt": prompt, "feature_index_in_sae": latent, "feature_label": label, "threshold": threshold,
            "seed": seed, "response": f"response to {prompt}", "score": score, "error": error}


# Counted trials (first score, scored attempts): F100/A (0, 75) improved, F100/B (30), F100/A again
# (50, 40) not improved, F300/D (20), F300/A (60, 80) improved -> n 5, multi 3, improved 2.
# Excluded: F100/C (judge parse error, trial error), F200 (feature error), F300/B (no attempts).
REFERENCE = {
    "experiment_config": {
        "model_name": "meta-llama/Meta-Llama-3.3-70B-Instruct", "judge_model_name": "claude-haiku-4-5-20251001",
        "max_completion_tokens": 512, "disable_steering": False, "prompts_file": "prompts.txt",
        "n_trials_per_feature": 5, "target_score_normalized": 0.3,
    },
    "results_by_feature": [
        {"feature_index_in_sae": 100, "feature_label": "cats", "threshold": 9.4, "error": None, "trials": [
            _trial("Explain A.", 100, "cats", 9.4, _score(0, 75), seed=621104),
            _trial("Explain B.", 100, "cats", 9.4, _score(30)),
            _trial("Explain A.", 100, "cats", 9.4, _score(50, 40)),
            _trial("Explain C.", 100, "cats", 9.4, {"raw_response": "no tags", "error": "No JSON found"},
                   error="Judge failed"),
        ]},
        {"feature_index_in_sae": 200, "feature_label": "dogs", "threshold": None, "error": "threshold search failed",
         "trials": [_trial("Explain A.", 200, "dogs", None, _score(10, 90))]},
        {"feature_index_in_sae": 300, "feature_label": "poses", "threshold": 5, "error": None, "trials": [
            _trial("Explain B.", 300, "poses", 5, _score()),
            _trial("Explain D.", 300, "poses", 5, _score(None, 20, None)),
            _trial("Explain A.", 300, "poses", 5, _score(60, None, 80)),
        ]},
    ],
    "n_boost_levels": None,
    "boost_range_std": None,
}

EXPECTED = {
    "n": 5,
    "multi_attempt_count": 3,
    "improved_count": 2,
    "multi_attempt_rate": 60.0,
    "multi_attempt_rate_se": 100 * math.sqrt(0.6 * 0.4 / 5),
    "esr_rate": 40.0,
    "esr_rate_se": 100 * math.sqrt(0.4 * 0.6 / 5),
    "improvement_rate": 200 / 3,
    "improvement_rate_se": 100 * math.sqrt(2 / 27),  # sqrt((2/3)(1/3)/3)
    "mean_first_score": 32.0,  # (0 + 30 + 50 + 20 + 60) / 5
    "mean_first_score_se": math.sqrt(114),  # SS 2280, variance 570, SE sqrt(570/5)
    "mean_score_improvement": 85 / 3,  # (75 - 10 + 20) / 3
    "mean_score_improvement_se": math.sqrt(5575) / 3,  # SS 11150/3, variance 5575/3, SE sqrt(5575/9)
}


def write(tmp_path, data, name="experiment_results_test.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "log.db")
    yield s
    s.close()


def test_import_reference_file(store, tmp_path):
    path = write(tmp_path, REFERENCE)
    run_id = import_reference(store, path)
    run = store.get_run(run_id)
    assert (run["experiment"], run["status"], run["model_name"], run["judge_model"], run["max_tokens"]) == (
        "import", "success", "meta-llama/Meta-Llama-3.3-70B-Instruct", "claude-haiku-4-5-20251001", 512)
    assert run["source_file"] == str(path.resolve()) and run["finished_utc"]
    assert run["settings"]["experiment_config"] == REFERENCE["experiment_config"]
    assert run["settings"]["file_metadata"] == {"n_boost_levels": None, "boost_range_std": None}

    latents = {row["latent"]: row for row in store.latents(run_id)}
    assert (latents[100]["label"], latents[100]["boost"], latents[100]["boost_source"]) == ("cats", 9.4, "imported")
    assert (latents[200]["error"], latents[200]["boost_source"]) == ("threshold search failed", "none")

    trials = store.trials(run_id)
    assert len(trials) == 8 and {t["condition"] for t in trials} == {"steered"}
    # Prompt indexes follow first appearance (A 0, B 1, C 2, D 3); replicates count repeats per latent.
    keys = {(t["latent"], t["prompt_index"], t["replicate"]) for t in trials}
    assert keys == {(100, 0, 0), (100, 1, 0), (100, 0, 1), (100, 2, 0), (200, 0, 0), (300, 1, 0), (300, 3, 0), (300, 0, 0)}
    first = next(t for t in trials if (t["latent"], t["prompt_index"], t["replicate"]) == (100, 0, 0))
    assert (first["seed"], first["boost"], first["prompt"]) == (621104, 9.4, "Explain A.")
    assert first["response"] == "response to Explain A."
    assert [a["score"] for a in first["attempts"]] == [0.0, 75.0]
    assert first["judgment"]["judge_model"] == "claude-haiku-4-5-20251001"
    failed = next(t for t in trials if t["prompt_index"] == 2)
    assert failed["error"] == "Judge failed"
    assert (failed["judgment"]["parse_status"], failed["judgment"]["error"], failed["judgment"]["raw_output"]) == (
        "error", "No JSON found", "no tags")

    [row] = metrics_for_store(store, [run_id])
    assert row["condition"] == "steered" and row["n"] == 5
    for key, value in EXPECTED.items():
        assert row[key] == pytest.approx(value, rel=1e-12), key
    [view] = list(store.db.query("SELECT * FROM run_metrics WHERE run_id = ?", [run_id]))
    for key in METRIC_KEYS:
        assert view[key] == pytest.approx(row[key], rel=1e-12), key


@pytest.mark.parametrize(
    "config_update, condition",
    [({"disable_steering": True}, "baseline"), ({"prompt_variant_id": "self_monitor"}, "meta:self_monitor")],
)
def test_condition_from_config(store, tmp_path, config_update, condition):
    data = copy.deepcopy(REFERENCE)
    data["experiment_config"].update(config_update)
    run_id = import_reference(store, write(tmp_path, data))
    assert {t["condition"] for t in store.trials(run_id)} == {condition}
    assert store.get_run(run_id)["settings"]["condition"] == condition


def test_importing_twice_gives_two_runs(store, tmp_path):
    path = write(tmp_path, REFERENCE)
    first, second = import_reference(store, path), import_reference(store, path)
    assert first != second
    assert [r["n_trials"] for r in store.list_runs()] == [8, 8]


def _broken(mutate):
    data = copy.deepcopy(REFERENCE)
    mutate(data)
    return data


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ([1, 2], "expected a JSON object"),
        ({"experiment_config": {}}, "missing or invalid 'results_by_feature'"),
        (_broken(lambda d: d["results_by_feature"][1].pop("feature_index_in_sae")), r"results_by_feature\[1\]: missing"),
        (_broken(lambda d: d["results_by_feature"][2]["trials"][2]["score"]["attempts"][0].update(score="high")),
         r"results_by_feature\[2\]\.trials\[2\], attempt 0: score must be a number"),
        (_broken(lambda d: d["results_by_feature"][0]["trials"].append("oops")), r"trials\[4\]: expected an object"),
    ],
)
def test_bad_files_raise_one_line_and_write_nothing(store, tmp_path, content, message):
    path = write(tmp_path, content if not isinstance(content, str) else content)
    with pytest.raises(FormatError, match=message) as info:
        import_reference(store, path)
    assert "\n" not in str(info.value)
    assert store.list_runs() == []


def test_missing_file(store, tmp_path):
    with pytest.raises(MissingResourceError, match="no such file"):
        import_reference(store, tmp_path / "absent.json")


def test_multi_boost_file_splits_trials_into_sweep_levels(tmp_path):
    import json as _json

    from esr_local.importer import import_reference
    from esr_local.metrics import metrics_for_store
    from esr_local.store import Store

    def trial(threshold, scores):
        return {"prompt": "Explain how to fly a kite.", "feature_index_in_sae": 7, "feature_label": "kites",
                "threshold": threshold, "seed": 1, "response": "r",
                "score": {"raw_response": "x", "attempts": [{"attempt_text": f"a{i}", "score": s} for i, s in enumerate(scores)]}}

    doc = {"experiment_config": {"model_name": "m", "judge_model_name": "j"}, "boost_levels": [0.0, 5.0, 10.0],
           "results_by_feature": [{"feature_index_in_sae": 7, "feature_label": "kites", "threshold": 5.0, "error": None,
                                   "trials": [trial(0.0, [90]), trial(5.0, [10, 60]), trial(5.0, [40, 20]), trial(10.0, [0])]}]}
    f = tmp_path / "experiment_multi_boost_m_20260101_000000.json"
    f.write_text(_json.dumps(doc))
    store = Store(tmp_path / "m.db")
    run_id = import_reference(store, f)
    rows = {r["condition"]: r for r in metrics_for_store(store, [run_id])}
    assert sorted(rows) == ["sweep:0", "sweep:1", "sweep:2"]
    assert (rows["sweep:1"]["n"], rows["sweep:1"]["multi_attempt_count"], rows["sweep:1"]["improved_count"]) == (2, 2, 1)
    assert rows["sweep:1"]["esr_rate"] == 50.0 and rows["sweep:0"]["mean_first_score"] == 90.0


def test_cli_malformed_file_leaves_no_database(tmp_path):
    """A malformed import file is one Error: line, and the new database it named is never created."""
    from click.testing import CliRunner

    from esr_local.cli import main

    path = write(tmp_path, _broken(lambda d: d["results_by_feature"][0]["trials"].append("oops")))
    db = tmp_path / "new" / "esr.db"
    result = CliRunner().invoke(main, ["import", str(path), "--db", str(db)])
    assert result.exit_code == 1 and "trials[4]: expected an object" in result.output
    assert not db.exists() and not db.parent.exists()
