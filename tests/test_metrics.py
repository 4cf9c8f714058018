"""ESR metrics: hand-built trials with hand-computed values, and the SQL views against the Python code."""

from __future__ import annotations

import math

import pytest

from esr_local.metrics import METRIC_KEYS, compute_metrics, metrics_for_store, trial_outcome
from esr_local.store import Store

# ---------------------------------------------------------------------------------------------------
# One trial


@pytest.mark.parametrize(
    "scores, error, expected",
    [
        # (counted, n_scored, first, last, multi, improved)
        ([30], False, (True, 1, 30.0, 30.0, False, False)),
        ([0, 75], False, (True, 2, 0.0, 75.0, True, True)),
        ([90, 10], True, (False, 2, None, None, False, False)),  # errored trials never count
        ([], False, (False, 0, None, None, False, False)),  # no attempts
        ([None, None], False, (False, 0, None, None, False, False)),  # all scores null
        ([None, 20, 80], False, (True, 2, 20.0, 80.0, True, True)),  # null first: dropped before counting
        ([40, None], False, (True, 1, 40.0, 40.0, False, False)),  # null last: a single attempt remains
        ([20, None, 20], False, (True, 2, 20.0, 20.0, True, False)),  # equal first and last: not improved
        ([10, 90, 10], False, (True, 3, 10.0, 10.0, True, False)),  # middle attempts are ignored
        ([60, 40], False, (True, 2, 60.0, 40.0, True, False)),  # got worse
        ([50, 50.5], False, (True, 2, 50.0, 50.5, True, True)),  # strictly greater, however little
    ],
)
def test_trial_outcome(scores, error, expected):
    assert tuple(trial_outcome(scores, error)) == expected


# ---------------------------------------------------------------------------------------------------
# Many trials

# Counted: 1, 2, 3, 4, 5, 9 (n = 6); multi-attempt: 2, 3, 4, 9 (4); improved: 2, 4 (2).
# First scores 30, 0, 50, 20, 40, 60; score changes of multi-attempt trials 75, 0, 60, -20.
HAND_TRIALS = [
    ([30], False),  # 1
    ([0, 75], False),  # 2
    ([50, 50], False),  # 3
    ([None, 20, 80], False),  # 4
    ([40, None], False),  # 5
    ([90, 10], True),  # 6 error
    ([], False),  # 7 no attempts
    ([None, None], False),  # 8 no scores
    ([60, 40], False),  # 9
]

HAND_METRICS = {
    "n": 6,
    "multi_attempt_count": 4,
    "improved_count": 2,
    "multi_attempt_rate": 400 / 6,
    "multi_attempt_rate_se": 100 * math.sqrt((2 / 3) * (1 / 3) / 6),  # = 100/sqrt(27)
    "esr_rate": 200 / 6,
    "esr_rate_se": 100 * math.sqrt((1 / 3) * (2 / 3) / 6),
    "improvement_rate": 50.0,
    "improvement_rate_se": 25.0,  # 100*sqrt(0.5*0.5/4)
    "mean_first_score": 200 / 6,
    # sum of squared deviations 7000/3, variance 1400/3, SE sqrt(1400/3/6) = sqrt(700)/3
    "mean_first_score_se": math.sqrt(700) / 3,
    "mean_score_improvement": 28.75,  # 115/4
    # deviations 46.25, -28.75, 31.25, -48.75: SS 6318.75, variance 2106.25, SE sqrt(2106.25)/2
    "mean_score_improvement_se": math.sqrt(2106.25) / 2,
}


def assert_metrics(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        if value is None or isinstance(value, int):
            assert actual[key] == value, key
        else:
            assert actual[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_compute_metrics_hand_example():
    result = compute_metrics(HAND_TRIALS)
    assert tuple(result) == METRIC_KEYS
    assert_metrics(result, HAND_METRICS)
    assert 100 / math.sqrt(27) == pytest.approx(result["multi_attempt_rate_se"], rel=1e-12)


def test_compute_metrics_empty_is_undefined_not_zero():
    result = compute_metrics([([], False), ([None], False), ([80, 90], True)])
    assert result["n"] == 0 and result["multi_attempt_count"] == 0 and result["improved_count"] == 0
    assert all(result[key] is None for key in METRIC_KEYS[3:])


def test_single_trial_has_no_mean_se():
    result = compute_metrics([([0, 75], False)])
    assert_metrics(result, {
        "n": 1, "multi_attempt_count": 1, "improved_count": 1,
        "multi_attempt_rate": 100.0, "multi_attempt_rate_se": 0.0,
        "esr_rate": 100.0, "esr_rate_se": 0.0,
        "improvement_rate": 100.0, "improvement_rate_se": 0.0,
        "mean_first_score": 0.0, "mean_first_score_se": None,
        "mean_score_improvement": 75.0, "mean_score_improvement_se": None,
    })


def test_no_multi_attempt_trials_leaves_conditional_metrics_undefined():
    result = compute_metrics([([10], False), ([30], False)])
    assert result["multi_attempt_rate"] == 0.0 and result["multi_attempt_rate_se"] == 0.0
    assert result["esr_rate"] == 0.0
    assert result["improvement_rate"] is None and result["improvement_rate_se"] is None
    assert result["mean_score_improvement"] is None and result["mean_score_improvement_se"] is None
    assert result["mean_first_score"] == 20.0
    assert result["mean_first_score_se"] == pytest.approx(10.0)  # stdev sqrt(200) / sqrt(2)


def test_multi_attempt_without_improvement_is_zero_percent():
    result = compute_metrics([([50, 20], False), ([40, 40], False)])
    assert result["improvement_rate"] == 0.0 and result["improvement_rate_se"] == 0.0
    assert result["mean_score_improvement"] == -15.0
    assert result["mean_score_improvement_se"] == pytest.approx(15.0)  # stdev of (-30, 0) / sqrt(2)


# ---------------------------------------------------------------------------------------------------
# From the store: Python metrics and the SQL views agree


def _record(store: Store, run_id: str, condition: str, latent: int, index: int, scores, *,
            trial_error=None, parse_error=False, judged=True):
    trial = {"run_id": run_id, "condition": condition, "latent": latent, "prompt_index": index, "replicate": 0,
             "response": "text", "error": trial_error}
    judgment = None
    if judged:
        judgment = {"raw_output": "<json>{}</json>", "parse_status": "error" if parse_error else "ok",
                    "error": "no <json> block" if parse_error else None}
    attempts = [] if parse_error or not judged else [{"text": f"attempt {i}", "score": s} for i, s in enumerate(scores)]
    store.record_trial(trial, judgment, attempts)


@pytest.fixture
def populated(tmp_path):
    """Two runs. Run A: 'steered' = HAND_TRIALS (through every error path), 'baseline' = two single
    attempts plus one trial of an errored latent. Run B: one condition whose only trial failed."""
    store = Store(tmp_path / "log.db")
    run_a = store.create_run({"experiment": "esr"})
    run_b = store.create_run({"experiment": "esr"})
    store.upsert_latent(run_a, 1, label="ok", row_norm=1.0, boost=5.0, boost_source="given")
    store.upsert_latent(run_a, 2, label="broken", row_norm=1.0, boost=None, boost_source="none", error="no boost")
    for index, (scores, error) in enumerate(HAND_TRIALS):
        if index == 5:  # the errored one, as a trial error
            _record(store, run_a, "steered", 1, index, scores, trial_error="generation failed")
        elif index == 6:  # no attempts: a judgment that failed to parse
            _record(store, run_a, "steered", 1, index, scores, parse_error=True)
        else:
            _record(store, run_a, "steered", 1, index, scores)
    _record(store, run_a, "steered", 1, 20, [], judged=False)  # never judged: not counted
    _record(store, run_a, "baseline", 1, 0, [90])
    _record(store, run_a, "baseline", 1, 1, [80])
    _record(store, run_a, "baseline", 2, 0, [0, 100])  # latent error: excluded
    _record(store, run_b, "steered", 1, 0, [10, 90], trial_error="boom")
    yield store, run_a, run_b
    store.close()


def test_metrics_for_store_by_hand(populated):
    store, run_a, run_b = populated
    rows = metrics_for_store(store)
    assert [(r["run_id"], r["condition"]) for r in rows] == [(run_a, "baseline"), (run_a, "steered"), (run_b, "steered")]
    baseline, steered, failed = rows
    assert_metrics({k: steered[k] for k in METRIC_KEYS}, HAND_METRICS)
    assert baseline["n"] == 2 and baseline["multi_attempt_rate"] == 0.0 and baseline["mean_first_score"] == 85.0
    assert baseline["mean_first_score_se"] == pytest.approx(5.0)
    assert failed["n"] == 0 and failed["esr_rate"] is None
    assert [r["condition"] for r in metrics_for_store(store, [run_b])] == ["steered"]


def test_run_metrics_view_equals_python(populated):
    store, *_ = populated
    python = {(r["run_id"], r["condition"]): r for r in metrics_for_store(store)}
    view = {(r["run_id"], r["condition"]): r for r in store.db.query("SELECT * FROM run_metrics")}
    assert view.keys() == python.keys()
    for key, row in view.items():
        assert list(row)[2:] == list(METRIC_KEYS)
        assert_metrics({k: row[k] for k in METRIC_KEYS}, {k: python[key][k] for k in METRIC_KEYS})


def test_trial_outcomes_view_matches_trial_outcome(populated):
    store, run_a, _ = populated
    rows = {r["prompt_index"]: r for r in store.db.query(
        "SELECT * FROM trial_outcomes WHERE run_id = ? AND condition = 'steered'", [run_a])}
    for index, (scores, error) in enumerate(HAND_TRIALS):
        expected = trial_outcome(scores, error)
        row = rows[index]
        assert row["counted"] == int(expected.counted), index
        assert row["is_multi_attempt"] == int(expected.is_multi_attempt), index
        assert row["is_improved"] == int(expected.is_improved), index
        if expected.counted:
            assert (row["n_scored_attempts"], row["first_score"], row["last_score"]) == (
                expected.n_scored_attempts, expected.first_score, expected.last_score)
    assert rows[5]["has_error"] == 1 and rows[6]["has_error"] == 1 and rows[20]["counted"] == 0
