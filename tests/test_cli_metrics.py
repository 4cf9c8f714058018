"""`esr-local import`, `metrics` and `runs` through Click's test runner on real database files."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from esr_local.cli import main
from esr_local.metrics import METRIC_KEYS
from esr_local.store import Store

# Two counted trials: [0, 75] (multi-attempt, improved) and [40] (single); one trial with a trial error.
REFERENCE = {
    "experiment_config": {"model_name": "google/gemma-2-2b-it", "judge_model_name": "local-judge",
                          "max_completion_tokens": 256},
    "results_by_feature": [
        {"feature_index_in_sae": 42, "feature_label": "castles", "threshold": 120.5, "error": None, "trials": [
            {"prompt": "How do you bake bread?", "seed": 1, "response": "Castles... wait. Bread:", "threshold": 120.5,
             "score": {"raw_response": "ok", "attempts": [{"attempt_text": "Castles", "score": 0},
                                                           {"attempt_text": "Bread", "score": 75}]}, "error": None},
            {"prompt": "How do you tie a tie?", "seed": 2, "response": "Loop it.", "threshold": 120.5,
             "score": {"raw_response": "ok", "attempts": [{"attempt_text": "Loop it.", "score": 40}]}, "error": None},
            {"prompt": "How do you tie a tie?", "seed": 3, "response": "", "threshold": 120.5,
             "score": {"raw_response": "", "error": "empty"}, "error": "generation failed"},
        ]},
    ],
}


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.delenv("ESR_LOCAL_RAISE_ERRORS", raising=False)
    monkeypatch.setenv("ESR_LOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ESR_LOCAL_DB", raising=False)
    return CliRunner()


@pytest.fixture
def reference_file(tmp_path):
    path = tmp_path / "experiment_results_gemma.json"
    path.write_text(json.dumps(REFERENCE))
    return path


def assert_one_line_error(result, fragment):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.output


def test_import_then_metrics_and_runs(runner, reference_file, tmp_path):
    db = tmp_path / "log.db"
    result = runner.invoke(main, ["import", str(reference_file), "--db", str(db)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_id = result.output.splitlines()[0]
    assert len(run_id) == 26
    assert "steered" in result.output and "50.0 ± 35.4" in result.output  # multi-attempt 1/2

    result = runner.invoke(main, ["metrics", run_id[:-2], "--db", str(db), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert list(row) == ["run_id", "condition", *METRIC_KEYS, "judge_key", "flagged_latents", "excluded_latents"]
    assert (row["flagged_latents"], row["excluded_latents"]) == (0, 0)
    assert (row["run_id"], row["condition"], row["n"], row["multi_attempt_count"], row["improved_count"]) == (
        run_id, "steered", 2, 1, 1)
    assert row["multi_attempt_rate"] == 50.0 and row["esr_rate"] == 50.0 and row["improvement_rate"] == 100.0
    assert row["multi_attempt_rate_se"] == pytest.approx(100 * math.sqrt(0.25 / 2))
    assert row["improvement_rate_se"] == 0.0
    assert row["mean_first_score"] == 20.0 and row["mean_first_score_se"] == pytest.approx(20.0)  # stdev 28.28/sqrt 2
    assert row["mean_score_improvement"] == 75.0 and row["mean_score_improvement_se"] is None

    result = runner.invoke(main, ["metrics", "--db", str(db)], catch_exceptions=False)
    assert result.exit_code == 0
    header, line = result.output.strip().splitlines()
    assert header.split()[:5] == ["run", "condition", "n", "multi", "improved"]
    assert line.split()[:5] == [run_id, "steered", "2", "1", "1"]
    assert line.rstrip().endswith("75.0")  # score gain without an SE (one multi-attempt trial)

    result = runner.invoke(main, ["runs", "--db", str(db), "--json"], catch_exceptions=False)
    [run] = json.loads(result.output)
    assert (run["id"], run["status"], run["experiment"], run["model_name"], run["n_trials"]) == (
        run_id, "success", "import", "google/gemma-2-2b-it", 3)
    result = runner.invoke(main, ["runs", "--db", str(db)], catch_exceptions=False)
    assert result.exit_code == 0
    assert result.output.splitlines()[1].split()[0] == run_id and "google/gemma-2-2b-it" in result.output


def test_import_json_output(runner, reference_file, tmp_path):
    result = runner.invoke(main, ["import", str(reference_file), "--db", str(tmp_path / "x.db"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["metrics"][0]["run_id"] == data["run_id"] and data["metrics"][0]["n"] == 2


def test_db_from_environment_and_default(runner, reference_file, tmp_path, monkeypatch):
    monkeypatch.setenv("ESR_LOCAL_DB", str(tmp_path / "env.db"))
    assert runner.invoke(main, ["import", str(reference_file)]).exit_code == 0
    assert (tmp_path / "env.db").exists()
    monkeypatch.delenv("ESR_LOCAL_DB")
    assert runner.invoke(main, ["import", str(reference_file)]).exit_code == 0
    assert (tmp_path / "home" / "esr.db").exists()  # paths.default_db_path() under ESR_LOCAL_HOME
    result = runner.invoke(main, ["runs", "--json"])
    assert len(json.loads(result.output)) == 1


def test_empty_database(runner, tmp_path):
    db = tmp_path / "empty.db"
    Store(db).close()
    result = runner.invoke(main, ["metrics", "--db", str(db), "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == []
    result = runner.invoke(main, ["runs", "--db", str(db), "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == []


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["metrics", "--db", "{missing}"], "no esr-local database"),
        (["runs", "--db", "{missing}"], "no esr-local database"),
        (["metrics", "zzzz", "--db", "{db}"], "no run 'zzzz'"),
        (["import", "{bad}", "--db", "{db}"], "is not valid JSON"),
        (["import", "{wrong}", "--db", "{db}"], "missing or invalid 'results_by_feature'"),
        (["import", "{missing_json}", "--db", "{db}"], "no such file"),
    ],
)
def test_errors_are_one_line(runner, reference_file, tmp_path, args, fragment):
    db = tmp_path / "log.db"
    assert runner.invoke(main, ["import", str(reference_file), "--db", str(db)]).exit_code == 0
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "wrong.json").write_text(json.dumps({"experiment_config": {}, "results": []}))
    paths = {"missing": tmp_path / "nope.db", "db": db, "bad": tmp_path / "bad.json",
             "wrong": tmp_path / "wrong.json", "missing_json": tmp_path / "nope.json"}
    result = runner.invoke(main, [a.format(**{k: str(v) for k, v in paths.items()}) for a in args])
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "nope.db").exists()


def test_failed_import_does_not_create_a_database(runner, tmp_path):
    result = runner.invoke(main, ["import", str(tmp_path / "nope.json"), "--db", str(tmp_path / "new.db")])
    assert_one_line_error(result, "no such file")
    assert not (tmp_path / "new.db").exists()


def test_paired_interval_is_the_normal_interval_of_the_mean_paired_difference(tmp_path):
    """Hand-computed: multi-attempt differences (B - A) -1, 1, 0, 0; ESR differences -1, 1, 1, 0."""
    from esr_local.paired import Z95, paired_comparison

    scores_a = [[10, 90], [50], [90, 10], [50]]
    scores_b = [[50], [10, 90], [10, 90], [50]]
    with Store(tmp_path / "p.db") as store:
        runs = []
        for scores in (scores_a, scores_b):
            rid = store.create_run({"experiment": "esr", "judge_key": "j:k"})
            for i, s in enumerate(scores):
                store.record_trial({"run_id": rid, "condition": "steered", "latent": 1, "prompt_index": i,
                                    "replicate": 0, "seed": i, "response": "r"}, {"judge_key": "j:k", "parse_status": "ok"},
                                   [{"text": "t", "score": x} for x in s])
            runs.append(rid)
        res = paired_comparison(store, *runs)
    assert res["pairs"] == 4 and res["unpaired"] == 0
    for name, diffs in (("multi_attempt", [-1, 1, 0, 0]), ("esr", [-1, 1, 1, 0])):
        mean = sum(diffs) / 4
        se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3) / 2
        got = res[name]
        assert got["difference"] == pytest.approx(100 * mean) and got["se"] == pytest.approx(100 * se)
        assert got["ci95"] == pytest.approx([100 * (mean - Z95 * se), 100 * (mean + Z95 * se)])
    assert (res["esr"]["a_rate"], res["esr"]["b_rate"]) == (25.0, 50.0)
