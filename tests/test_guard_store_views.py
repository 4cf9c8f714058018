"""Guard: the SQL metric views built by `store_schema._metrics_view`, on a real SQLite file.

The views run_metrics and judge_metrics are `_metrics_view` over the trial_outcomes view with one WHERE
condition each; tests/test_metrics.py checks them against the Python metrics on stored runs. Here the
builder itself is run over a plain trial_outcomes table with hand-placed rows and a WHERE clause of TWO
conditions, one of them on a grouping column, so every part of the builder is exercised: the filter must
apply to the sums and to the spread (the SE's sum of squares) alike, each condition qualified with the
spread's table alias (an unqualified `condition` is ambiguous there and SQLite refuses the view).
The expected numbers are computed by hand from the rows below.
"""

from __future__ import annotations

import math
import sqlite3
import statistics

import pytest

from esr_local.store_schema import _metrics_view

COLUMNS = ("run_id", "condition", "judge_key", "is_run_judge", "counted", "is_multi_attempt", "is_improved",
           "first_score", "last_score")
# (run, condition, judge, is_run_judge, counted, multi, improved, first, last)
ROWS = [
    ("r1", "steered", "A", 1, 1, 1, 1, 20.0, 80.0),
    ("r1", "steered", "A", 1, 1, 1, 0, 50.0, 30.0),
    ("r1", "steered", "A", 1, 1, 0, 0, 40.0, 40.0),
    ("r1", "steered", "A", 1, 0, 0, 0, None, None),  # not counted (an error)
    # Same run and condition, another judge: left out by `is_run_judge = 1`, in sums AND in the spread.
    ("r1", "steered", "B", 0, 1, 1, 1, 0.0, 100.0),
    ("r1", "steered", "B", 0, 1, 0, 0, 95.0, 95.0),
    # Left out by the second condition.
    ("r1", "baseline", "A", 1, 1, 0, 0, 10.0, 10.0),
    ("r2", "steered", "A", 1, 1, 1, 1, 30.0, 70.0),
    ("r2", "steered", "A", 1, 1, 1, 1, 10.0, 90.0),
]
WHERE = "is_run_judge = 1 AND condition = 'steered'"


@pytest.fixture()
def db(tmp_path):
    con = sqlite3.connect(tmp_path / "views.db")
    con.execute(f"CREATE TABLE trial_outcomes ({', '.join(COLUMNS)})")
    con.executemany(f"INSERT INTO trial_outcomes VALUES ({', '.join('?' * len(COLUMNS))})", ROWS)
    yield con
    con.close()


def _expected(rows):
    counted = [r for r in rows if r[4] == 1]
    multi = [r for r in counted if r[5] == 1]
    n, m = len(counted), len(multi)
    improved = sum(r[6] for r in counted)
    firsts = [r[7] for r in counted]
    gains = [r[8] - r[7] for r in multi]
    out = {"n": n, "multi_attempt_count": m, "improved_count": improved,
           "multi_attempt_rate": 100 * m / n, "multi_attempt_rate_se": 100 * math.sqrt(m / n * (1 - m / n) / n),
           "esr_rate": 100 * improved / n,
           "esr_rate_se": 100 * math.sqrt(improved / n * (1 - improved / n) / n),
           "improvement_rate": 100 * improved / m,
           "improvement_rate_se": 100 * math.sqrt(improved / m * (1 - improved / m) / m),
           "mean_first_score": statistics.fmean(firsts),
           "mean_first_score_se": statistics.stdev(firsts) / math.sqrt(n),
           "mean_score_improvement": statistics.fmean(gains),
           "mean_score_improvement_se": statistics.stdev(gains) / math.sqrt(m)}
    return out


def _view_rows(db, name):
    cur = db.execute(f"SELECT * FROM {name}")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def test_a_where_of_two_conditions_filters_sums_and_spread(db):
    db.execute(_metrics_view("m", "run_id, condition", WHERE))
    got = _view_rows(db, "m")
    assert [(r["run_id"], r["condition"]) for r in got] == [("r1", "steered"), ("r2", "steered")]
    for row in got:
        keep = [r for r in ROWS if r[0] == row["run_id"] and r[1] == "steered" and r[3] == 1]
        for key, value in _expected(keep).items():
            assert row[key] == pytest.approx(value, rel=1e-12), (row["run_id"], key)
    # Hand-checked numbers for r1: first scores 20, 50, 40; gains +60, -20.
    r1 = got[0]
    assert (r1["n"], r1["multi_attempt_count"], r1["improved_count"]) == (3, 2, 1)
    assert r1["mean_first_score_se"] == pytest.approx(math.sqrt((100 / 9 * 25 + 100 / 9 * 16 + 100 / 9) / 2 / 3))
    assert r1["mean_score_improvement_se"] == pytest.approx(40.0)


def test_the_filter_reaches_the_spread_not_only_the_sums(db):
    # With judge B's rows in the spread (but not in the sums) r1's SEs would grow; compare with a view
    # that keeps them: its n and its spread both change.
    db.execute(_metrics_view("m", "run_id, condition", WHERE))
    db.execute(_metrics_view("all_judges", "run_id, condition", "condition = 'steered'"))
    one = {r["run_id"]: r for r in _view_rows(db, "m")}
    both = {r["run_id"]: r for r in _view_rows(db, "all_judges")}
    assert both["r1"]["n"] == 5 and one["r1"]["n"] == 3
    firsts_all = [20.0, 50.0, 40.0, 0.0, 95.0]
    assert both["r1"]["mean_first_score_se"] == pytest.approx(statistics.stdev(firsts_all) / math.sqrt(5))
    assert one["r1"]["mean_first_score_se"] == pytest.approx(statistics.stdev([20.0, 50.0, 40.0]) / math.sqrt(3))
    assert one["r2"] == both["r2"]


def test_three_grouping_columns_and_the_real_views_single_conditions(db):
    db.execute(_metrics_view("by_judge", "run_id, condition, judge_key", "judge_key IS NOT NULL"))
    got = _view_rows(db, "by_judge")
    assert [(r["run_id"], r["condition"], r["judge_key"]) for r in got] == [
        ("r1", "baseline", "A"), ("r1", "steered", "A"), ("r1", "steered", "B"), ("r2", "steered", "A")]
    b = got[2]
    assert (b["n"], b["multi_attempt_count"], b["improved_count"]) == (2, 1, 1)
    assert b["mean_first_score"] == 47.5 and b["mean_score_improvement"] == 100.0
    assert b["mean_score_improvement_se"] is None  # one multi-attempt trial: no SE
    assert b["mean_first_score_se"] == pytest.approx(statistics.stdev([0.0, 95.0]) / math.sqrt(2))
