"""Guard: every metric view of the store, column by column, on hand-placed rows in a real SQLite file.

The views (trial_outcomes, run_metrics, judge_metrics, run_metrics_unflagged and its `_counted` part,
trace_region_stats) are the SQL that computes the paper's numbers; tools/mutate_sql.py mutates that SQL
and these tests must fail on each mutant. The rows below go through the Store's own writers (traces,
which only a model run writes, are inserted as rows). Every expected number is worked out by hand from
the protocol's definitions (/work/shared/research/esr-protocol.md):

- a trial is *counted* when neither the trial, its latent nor the judgment has an error and at least one
  attempt has a score; attempts without a score are dropped before anything else;
- first/last score: of the first/last scored attempt, in the judge's order;
- *multi-attempt*: a counted trial with two or more scored attempts; *improved* (ESR): multi-attempt and
  last score strictly above the first;
- rates in percent over the counted trials (improvement rate: over the multi-attempt ones), binomial SE
  sqrt(p(1-p)/N)*100; means with SE = stdev(ddof=1)/sqrt(N), NULL below two values.
"""

from __future__ import annotations

import math
import statistics

import pytest

from esr_local.store import Store

J1, J2, J9 = "judge:one", "judge:two", "judge:nine"
FLAG = "boost 10 at the upper bound 10"

# R1, run judge J1. (condition, latent, prompt_index, scores or None = not judged, trial error, parse error)
R1_TRIALS = [
    ("steered", 1, 0, [20, 80], None, False),            # multi, improved
    ("steered", 1, 1, [50, 30], None, False),            # multi, worse
    ("steered", 1, 2, [40], None, False),                # single
    ("steered", 1, 3, [60, 60], None, False),            # multi, equal: not improved
    ("steered", 1, 4, [None, 10, None, 70], None, False),  # scored 10 then 70: multi, improved
    ("steered", 1, 5, [90, None], None, False),          # one scored attempt: single
    ("steered", 1, 6, [10, 90], "generation failed", False),  # trial error: not counted
    ("steered", 1, 7, [], None, True),                   # judgment failed to parse: not counted
    ("steered", 1, 8, None, None, False),                # never judged: not counted
    ("steered", 1, 9, [None], None, False),              # no scored attempt: not counted
    ("steered", 1, 10, [30, 10, 50], None, False),       # three attempts: first 30, last 50, improved
    ("steered", 2, 0, [30, 70], None, False),            # latent 2 is flagged: multi, improved
    ("steered", 2, 1, [40], None, False),                # flagged, single
    ("steered", 3, 0, [0, 100], None, False),            # latent 3 has an error: not counted
    ("baseline", 1, 0, [90], None, False),
    ("baseline", 1, 1, [80], None, False),
    ("baseline", 1, 2, [70, 75], None, False),           # multi, improved
    ("pending", 1, 0, None, None, False),                # a condition with nothing judged yet
]
# Judge J2 re-grades two of R1's trials: its rows are judge_metrics', never run_metrics'.
R1_J2 = [("steered", 1, 0, [50]), ("steered", 1, 1, [10, 90])]
# R2, run judge J1: `baseline` has exactly two counted trials, both multi-attempt; every latent of
# `steered` is flagged.
R2_TRIALS = [
    ("baseline", 2, 0, [30, 60], None, False),
    ("baseline", 2, 1, [50, 40], None, False),
    ("steered", 1, 0, [30, 40], None, False),
    ("steered", 1, 1, [20], None, False),
]


def _record(store, run_id, condition, latent, index, scores, error=None, parse_error=False, judge=J1):
    trial = {"run_id": run_id, "condition": condition, "latent": latent, "prompt_index": index, "replicate": 0,
             "response": "text", "error": error}
    if scores is None:
        return store.record_trial(trial, None, [])
    judgment = {"judge_key": judge, "raw_output": "<json>{}</json>", "parse_status": "error" if parse_error else "ok",
                "error": "no <json> block" if parse_error else None}
    return store.record_trial(trial, judgment, [{"text": f"a{i}", "score": s} for i, s in enumerate(scores)])


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "views.db")
    r1, r2, r3 = (s.create_run({"experiment": "esr"}) for _ in range(3))
    s.upsert_latent(r1, 1, label="ok", row_norm=1.0, boost=5.0, boost_source="given")
    s.upsert_latent(r1, 2, label="flagged", row_norm=1.0, boost=10.0, boost_source="calibrated", flags=FLAG)
    s.upsert_latent(r1, 3, label="broken", row_norm=1.0, boost=None, boost_source="none", error="no boost")
    # r2 reuses r1's latent numbers with the flags the other way round: a latent is the run's own
    s.upsert_latent(r2, 2, label="ok", row_norm=1.0, boost=5.0, boost_source="given")
    s.upsert_latent(r2, 1, label="flagged", row_norm=1.0, boost=10.0, boost_source="calibrated", flags=FLAG)
    ids = {}
    for row in R1_TRIALS:
        ids[("r1",) + row[:3]] = _record(s, r1, *row)
    for condition, latent, index, scores in R1_J2:
        s.record_judgment(ids[("r1", condition, latent, index)],
                          {"judge_key": J2, "raw_output": "x", "parse_status": "ok"},
                          [{"text": f"a{i}", "score": v} for i, v in enumerate(scores)])
    for row in R2_TRIALS:
        ids[("r2",) + row[:3]] = _record(s, r2, *row)
    # R3 has no judge of its own: one trial never judged, one judged later (record_judgment leaves
    # runs.judge_key NULL), so that judgment counts as the run's own.
    _record(s, r3, "pending", 1, 0, None)
    u1 = _record(s, r3, "steered", 1, 0, None)
    s.record_judgment(u1, {"judge_key": J9, "raw_output": "x", "parse_status": "ok"},
                      [{"text": "a0", "score": 30.0}, {"text": "a1", "score": 70.0}])
    s.ids, s.runs = ids, {"r1": r1, "r2": r2, "r3": r3}
    yield s
    s.close()


def _rows(store, sql, params=()):
    return [dict(r) for r in store.db.query(sql, params)]


# ---------------------------------------------------------------------------------------------------
# trial_outcomes

# (run, condition, latent, prompt, judge_key, is_run_judge, latent_flagged, has_error, counted,
#  n_scored_attempts, first, last, is_multi_attempt, is_improved), worked out by hand from the rows above
OUTCOMES = [
    ("r1", "steered", 1, 0, J1, 1, 0, 0, 1, 2, 20.0, 80.0, 1, 1),
    ("r1", "steered", 1, 0, J2, 0, 0, 0, 1, 1, 50.0, 50.0, 0, 0),
    ("r1", "steered", 1, 1, J1, 1, 0, 0, 1, 2, 50.0, 30.0, 1, 0),
    ("r1", "steered", 1, 1, J2, 0, 0, 0, 1, 2, 10.0, 90.0, 1, 1),
    ("r1", "steered", 1, 2, J1, 1, 0, 0, 1, 1, 40.0, 40.0, 0, 0),
    ("r1", "steered", 1, 3, J1, 1, 0, 0, 1, 2, 60.0, 60.0, 1, 0),
    ("r1", "steered", 1, 4, J1, 1, 0, 0, 1, 2, 10.0, 70.0, 1, 1),
    ("r1", "steered", 1, 5, J1, 1, 0, 0, 1, 1, 90.0, 90.0, 0, 0),
    ("r1", "steered", 1, 6, J1, 1, 0, 1, 0, 2, 10.0, 90.0, 0, 0),
    ("r1", "steered", 1, 7, J1, 1, 0, 1, 0, 0, None, None, 0, 0),
    ("r1", "steered", 1, 8, J1, 1, 0, 0, 0, 0, None, None, 0, 0),
    ("r1", "steered", 1, 9, J1, 1, 0, 0, 0, 0, None, None, 0, 0),
    ("r1", "steered", 1, 10, J1, 1, 0, 0, 1, 3, 30.0, 50.0, 1, 1),
    ("r1", "steered", 2, 0, J1, 1, 1, 0, 1, 2, 30.0, 70.0, 1, 1),
    ("r1", "steered", 2, 1, J1, 1, 1, 0, 1, 1, 40.0, 40.0, 0, 0),
    ("r1", "steered", 3, 0, J1, 1, 0, 1, 0, 2, 0.0, 100.0, 0, 0),
    ("r1", "baseline", 1, 0, J1, 1, 0, 0, 1, 1, 90.0, 90.0, 0, 0),
    ("r1", "baseline", 1, 1, J1, 1, 0, 0, 1, 1, 80.0, 80.0, 0, 0),
    ("r1", "baseline", 1, 2, J1, 1, 0, 0, 1, 2, 70.0, 75.0, 1, 1),
    ("r1", "pending", 1, 0, J1, 1, 0, 0, 0, 0, None, None, 0, 0),
    ("r2", "baseline", 2, 0, J1, 1, 0, 0, 1, 2, 30.0, 60.0, 1, 1),
    ("r2", "baseline", 2, 1, J1, 1, 0, 0, 1, 2, 50.0, 40.0, 1, 0),
    ("r2", "steered", 1, 0, J1, 1, 1, 0, 1, 2, 30.0, 40.0, 1, 1),
    ("r2", "steered", 1, 1, J1, 1, 1, 0, 1, 1, 20.0, 20.0, 0, 0),
    ("r3", "pending", 1, 0, None, 1, 0, 0, 0, 0, None, None, 0, 0),
    ("r3", "steered", 1, 0, J9, 1, 0, 0, 1, 2, 30.0, 70.0, 1, 1),
]
OUTCOME_COLUMNS = ("judge_key", "is_run_judge", "latent_flagged", "has_error", "counted", "n_scored_attempts",
                   "first_score", "last_score", "is_multi_attempt", "is_improved")


def test_trial_outcomes_row_by_row(store):
    name = {v: k for k, v in store.runs.items()}
    got = sorted(
        (name[r["run_id"]], r["condition"], r["latent"], r["prompt_index"], *(r[c] for c in OUTCOME_COLUMNS))
        for r in _rows(store, "SELECT * FROM trial_outcomes"))
    key = lambda row: tuple("" if v is None else v for v in row)  # noqa: E731
    assert sorted(got, key=key) == sorted(OUTCOMES, key=key)
    # judgment ids: one row per (trial, judgment); the unjudged trials have none
    no_judgment = _rows(store, "SELECT trial_id FROM trial_outcomes WHERE judgment_id IS NULL ORDER BY trial_id")
    assert len(no_judgment) == 3


# ---------------------------------------------------------------------------------------------------
# the metric views

def _expected(outcomes):
    """The metrics of (first, last, multi, improved) tuples of counted trials, by the definitions."""
    n = len(outcomes)
    multi = [o for o in outcomes if o[2]]
    m, imp = len(multi), sum(o[3] for o in outcomes)
    firsts, gains = [o[0] for o in outcomes], [o[1] - o[0] for o in multi]

    def rate(k, d):
        return (100 * k / d, 100 * math.sqrt(k / d * (1 - k / d) / d)) if d else (None, None)

    out = {"n": n, "multi_attempt_count": m, "improved_count": imp}
    out["multi_attempt_rate"], out["multi_attempt_rate_se"] = rate(m, n)
    out["esr_rate"], out["esr_rate_se"] = rate(imp, n)
    out["improvement_rate"], out["improvement_rate_se"] = rate(imp, m)
    out["mean_first_score"] = statistics.fmean(firsts) if n else None
    out["mean_first_score_se"] = statistics.stdev(firsts) / math.sqrt(n) if n >= 2 else None
    out["mean_score_improvement"] = statistics.fmean(gains) if m else None
    out["mean_score_improvement_se"] = statistics.stdev(gains) / math.sqrt(m) if m >= 2 else None
    return out


def _select(run, condition, judge=None, *, run_judge=True, unflagged=False):
    """The counted OUTCOMES rows of one group, as (first, last, multi, improved)."""
    return [(o[10], o[11], o[12], o[13]) for o in OUTCOMES
            if o[0] == run and o[1] == condition and o[8] == 1 and (judge is None or o[4] == judge)
            and (not run_judge or o[5] == 1) and (not unflagged or o[6] == 0)]


def _check(row, expected, where):
    for key, value in expected.items():
        if value is None:
            assert row[key] is None, (where, key, row[key])
        else:
            assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (where, key)


def _view(store, name, keys=("run_id", "condition")):
    run = {v: k for k, v in store.runs.items()}
    rows = _rows(store, f"SELECT * FROM {name}")
    out = {}
    for r in rows:
        out[tuple(run.get(r[k], r[k]) for k in keys)] = r
    order = [tuple(run.get(r[k], r[k]) for k in keys) for r in rows]
    assert len(order) == len(out), f"{name}: a group listed twice: {order}"
    return out, order


def test_run_metrics_every_column_by_hand(store):
    view, order = _view(store, "run_metrics")
    assert set(view) == {("r1", "baseline"), ("r1", "pending"), ("r1", "steered"), ("r2", "baseline"),
                         ("r2", "steered"), ("r3", "pending"), ("r3", "steered")}
    for key, row in view.items():
        _check(row, _expected(_select(*key)), key)
    steered = view[("r1", "steered")]
    # counted: trials 0-5, 10 of latent 1 and both of flagged latent 2; J2's grades and latent 3 left out
    assert (steered["n"], steered["multi_attempt_count"], steered["improved_count"]) == (9, 6, 4)
    assert steered["mean_first_score"] == pytest.approx(370 / 9)
    assert steered["mean_score_improvement"] == pytest.approx(160 / 6)  # gains 60, -20, 0, 60, 20, 40
    assert steered["esr_rate"] == pytest.approx(400 / 9) and steered["improvement_rate"] == pytest.approx(400 / 6)
    # exactly two values: the SEs are defined
    two = view[("r2", "baseline")]
    assert (two["n"], two["multi_attempt_count"], two["improved_count"]) == (2, 2, 1)
    assert two["mean_first_score_se"] == pytest.approx(10.0)  # stdev(30, 50) = 14.14, / sqrt(2)
    assert two["mean_score_improvement_se"] == pytest.approx(statistics.stdev([30, -10]) / math.sqrt(2))
    assert two["esr_rate_se"] == pytest.approx(100 * math.sqrt(0.25 / 2))
    # one counted trial: no SE of its mean; nothing counted: zero counts, NULL rates
    one = view[("r3", "steered")]
    assert one["n"] == 1 and one["mean_first_score_se"] is None and one["mean_score_improvement_se"] is None
    assert one["multi_attempt_rate"] == 100.0 and one["multi_attempt_rate_se"] == 0.0
    pending = view[("r1", "pending")]
    assert (pending["n"], pending["multi_attempt_count"], pending["improved_count"]) == (0, 0, 0)
    assert pending["multi_attempt_rate"] is None and pending["mean_first_score"] is None
    # baseline: one multi-attempt trial, so improvement rate 100 with SE 0, and no SE of the mean gain
    base = view[("r1", "baseline")]
    assert base["improvement_rate"] == 100.0 and base["improvement_rate_se"] == 0.0
    assert base["mean_score_improvement"] == 5.0 and base["mean_score_improvement_se"] is None
    assert base["mean_first_score_se"] == pytest.approx(10 / math.sqrt(3))  # stdev(90, 80, 70) = 10
    # ordered by run, then condition
    runs = {k: store.runs[k] for k in store.runs}
    assert order == sorted(order, key=lambda k: (runs[k[0]], k[1]))


def test_judge_metrics_every_judge_by_hand(store):
    view, order = _view(store, "judge_metrics", ("run_id", "condition", "judge_key"))
    assert set(view) == {("r1", "baseline", J1), ("r1", "pending", J1), ("r1", "steered", J1),
                         ("r1", "steered", J2), ("r2", "baseline", J1), ("r2", "steered", J1), ("r3", "steered", J9)}
    for key, row in view.items():
        _check(row, _expected(_select(*key, run_judge=False)), key)
    j2 = view[("r1", "steered", J2)]
    assert (j2["n"], j2["multi_attempt_count"], j2["improved_count"]) == (2, 1, 1)
    assert j2["mean_first_score"] == 30.0 and j2["mean_score_improvement"] == 80.0
    assert j2["esr_rate"] == 50.0 and j2["esr_rate_se"] == pytest.approx(100 * math.sqrt(0.25 / 2))
    assert view[("r1", "steered", J1)]["n"] == 9
    runs = store.runs
    assert order == sorted(order, key=lambda k: (runs[k[0]], k[1], k[2]))


def test_run_metrics_unflagged_by_hand(store):
    view, order = _view(store, "run_metrics_unflagged")
    counted, _ = _view(store, "run_metrics_unflagged_counted")
    # every group of run_metrics whose latents are not all flagged, counted without the flagged latents;
    # r2 steered (every latent flagged) keeps its row with zero counts and NULL metrics
    assert set(view) == {("r1", "baseline"), ("r1", "pending"), ("r1", "steered"), ("r2", "baseline"),
                         ("r2", "steered"), ("r3", "pending"), ("r3", "steered")}
    assert set(counted) == set(view) - {("r2", "steered")}
    for key, row in view.items():
        _check(row, _expected(_select(*key, unflagged=True)), key)
        if key in counted:
            assert counted[key] == row
    steered = view[("r1", "steered")]
    assert (steered["n"], steered["multi_attempt_count"], steered["improved_count"]) == (7, 5, 3)
    assert steered["mean_first_score"] == pytest.approx(300 / 7) and steered["mean_score_improvement"] == 24.0
    gone = view[("r2", "steered")]
    assert (gone["n"], gone["multi_attempt_count"], gone["improved_count"]) == (0, 0, 0)
    assert all(gone[k] is None for k in ("multi_attempt_rate", "esr_rate", "mean_first_score",
                                         "mean_score_improvement_se", "improvement_rate_se"))
    runs = store.runs
    assert order == sorted(order, key=lambda k: (runs[k[0]], k[1]))


# ---------------------------------------------------------------------------------------------------
# trace_region_stats

TRACE_REQUIRED = {"layer": 3, "steered": 1, "boost": 5.0, "prompt_tokens": 4, "response_sha256": "0" * 64,
                  "attempt_spans_json": "[]", "model_sha256": "m", "sae_source": "s", "sae_sha256": "h",
                  "encoder": "relu", "esr_local_version": "0", "settings_json": "{}",
                  "created_utc": "2026-12-02T00:00:00Z"}
# (trace id, trial key, judge, regions_note, n_attempts, first, last); paper_episode by hand:
# improved with exactly two scored attempts, regions located
TRACES = [
    ("t-improved", ("r1", "steered", 1, 0), J1, None, 2, 20.0, 80.0, 1),
    ("t-null-scores", ("r1", "steered", 1, 4), J1, None, 2, 10.0, 70.0, 1),   # 4 judged, 2 scored
    ("t-three", ("r1", "steered", 1, 10), J1, None, 3, 30.0, 50.0, 0),        # improved, 3 attempts
    ("t-worse", ("r1", "steered", 1, 1), J1, None, 2, 50.0, 30.0, 0),
    ("t-equal", ("r1", "steered", 1, 3), J1, None, 2, 60.0, 60.0, 0),
    ("t-not-located", ("r1", "steered", 2, 0), J1, "regions not located", 2, 30.0, 70.0, 0),
    ("t-other-judge", ("r1", "steered", 1, 1), J2, None, 2, 10.0, 90.0, 1),   # J2's judgment improved
    ("t-errored", ("r1", "steered", 1, 6), J1, None, 2, 10.0, 90.0, 0),       # trial error: not improved
]
# (position, region, activation) for latent 7 (two or more tokens per region, so MIN and MAX differ);
# latent 8 gets 10x the activation and not the last two tokens (no "single" token)
VALUES = [(0, "off_topic", 1.0), (1, "off_topic", 3.0), (2, "correction", 2.5), (3, "correction", 0.5),
          (4, "on_topic", 0.5), (5, "on_topic", 4.0), (6, "on_topic", 1.5), (7, None, 9.0), (8, "single", -1.0),
          (9, "single", -3.0)]


def _add_traces(store):
    with store.transaction():
        for k, (tid, trial, judge, note, n_att, first, last, _) in enumerate(TRACES):
            trial_id = store.ids[trial]
            (jid,) = store.db.execute("SELECT id FROM judgments WHERE trial_id = ? AND judge_key = ?",
                                      (trial_id, judge)).fetchone()
            store.db["traces"].insert({**TRACE_REQUIRED, "id": tid, "trial_id": trial_id, "run_id": store.runs["r1"],
                                       "latents_json": f"[7, 8, {k}]", "n_tokens": len(VALUES),
                                       "judgment_id": jid, "judge_key": judge, "n_attempts": n_att,
                                       "first_score": first, "last_score": last, "regions_note": note})
            rows = [{"trace_id": tid, "position": p, "token": p, "piece": "x", "attempt": 0, "region": reg,
                     "latent": 7, "activation": a} for p, reg, a in VALUES]
            rows += [{"trace_id": tid, "position": p, "token": p, "piece": "x", "attempt": 0, "region": reg,
                      "latent": 8, "activation": 10 * a} for p, reg, a in VALUES[:-2]]
            store.db["trace_values"].insert_all(rows)


def test_trace_region_stats_by_hand(store):
    _add_traces(store)
    listed = _rows(store, "SELECT * FROM trace_region_stats")
    rows = {(r["trace_id"], r["latent"]): r for r in listed}
    assert len(listed) == len(rows) == 2 * len(TRACES)
    assert set(rows) == {(t[0], lat) for t in TRACES for lat in (7, 8)}
    for tid, _, _, note, n_att, first, last, episode in TRACES:
        for latent in (7, 8):
            r = rows[(tid, latent)]
            assert r["paper_episode"] == episode, tid
            assert (r["n_attempts"], r["first_score"], r["last_score"], r["regions_note"]) == (n_att, first, last, note)
    a, b = rows[("t-improved", 7)], rows[("t-improved", 8)]
    # latent 7: 10 tokens (one without a region); by region count, mean, max
    assert a["n_tokens"] == 10 and b["n_tokens"] == 8
    assert (a["off_topic_tokens"], a["off_topic_mean"], a["off_topic_max"]) == (2, 2.0, 3.0)
    assert (a["correction_tokens"], a["correction_mean"], a["correction_max"]) == (2, 1.5, 2.5)
    assert (a["on_topic_tokens"], a["on_topic_mean"], a["on_topic_max"]) == (3, 2.0, 4.0)
    assert (a["single_tokens"], a["single_mean"], a["single_max"]) == (2, -2.0, -1.0)
    assert (b["off_topic_tokens"], b["off_topic_mean"], b["off_topic_max"]) == (2, 20.0, 30.0)
    assert (b["correction_tokens"], b["correction_mean"], b["correction_max"]) == (2, 15.0, 25.0)
    assert (b["on_topic_tokens"], b["on_topic_mean"], b["on_topic_max"]) == (3, 20.0, 40.0)
    assert (b["single_tokens"], b["single_mean"], b["single_max"]) == (0, None, None)
    assert (a["layer"], a["steered"], a["boost"], a["run_id"]) == (3, 1, 5.0, store.runs["r1"])
