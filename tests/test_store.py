"""The SQLite experiment log on real database files."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from sqlite_utils import Database

from esr_local.bisection import BisectionStep
from esr_local.errors import MissingResourceError, UserInputError
from esr_local.ids import id_time_ms, new_id
from esr_local.store import DuplicateTrialError, Store, trial_key
from esr_local.store_schema import MIGRATIONS


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "nested" / "dir" / "log.db")
    yield s
    s.close()


def _trial(run_id, condition="steered", latent=7, prompt_index=0, replicate=0, **extra):
    return {"run_id": run_id, "condition": condition, "latent": latent, "prompt_index": prompt_index,
            "replicate": replicate, **extra}


JUDGMENT = {"judge_backend": "local", "judge_model": "smollm2", "raw_output": "<json>...</json>", "tries": 1,
            "latency_ms": 12.5, "restart_gating": True, "n_attempts_raw": 3}


# -- opening and migrations -------------------------------------------------------------------------

def test_open_creates_folder_wal_and_schema(tmp_path):
    path = tmp_path / "a" / "b" / "log.db"
    with Store(path) as s:
        assert path.exists()
        assert s.db.journal_mode == "wal"
        assert {"runs", "latents", "trials", "judgments", "attempts", "calibrations"} <= set(s.db.table_names())
        assert {"trial_outcomes", "run_metrics"} <= set(s.db.view_names())
        applied = [m.name for m in MIGRATIONS.applied(s.db)]
        assert applied[:9] == ["m001_runs", "m002_calibrations_latents", "m003_trials_judgments_attempts",
                               "m004_metric_views", "m005_run_sessions", "m006_runs_partial_spec", "m007_latent_flags",
                               "m008_judgments_by_judge", "m009_run_leases"]
        assert s.db["trials"].columns_dict["boost"] is float
    # Reopening applies nothing twice and keeps the data.
    with Store(path) as s:
        s.create_run({"experiment": "esr"})
    with Store(path) as s:
        assert len(MIGRATIONS.applied(s.db)) == len(MIGRATIONS.pending(Database(memory=True)))
        assert len(s.list_runs()) == 1


def test_open_without_create_refuses_missing_file(tmp_path):
    with pytest.raises(MissingResourceError, match="no esr-local database"):
        Store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_second_connection_reads_while_first_is_open(store):
    run_id = store.create_run({"experiment": "esr"})
    store.record_trial(_trial(run_id), JUDGMENT, [{"text": "a", "score": 50}])
    with Store(store.path) as other:
        assert other.finished_trial_keys(run_id) == {("steered", 7, 0, 0)}


# -- ids ------------------------------------------------------------------------------------------------

def test_ids_sort_by_time_and_are_unique():
    ids = [new_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 26 and i == i.lower() for i in ids)
    assert abs(id_time_ms(ids[0]) - time.time() * 1000) < 60_000


def test_trial_key_is_deterministic_and_unambiguous():
    assert trial_key("r1", "meta:self_monitor", 7, 3, 1) == "r1:meta:self_monitor:7:3:1"
    assert trial_key("r1", "steered", 7, 3, 1) == trial_key("r1", "steered", 7, 3, 1)


# -- runs -------------------------------------------------------------------------------------------------

def test_create_run_splits_known_and_unknown_settings(store):
    settings = {"experiment": "esr", "temperature": 0.6, "max_tokens": 512, "model_name": "smollm2",
                "restart_gating": True, "prompts_file": store.path.parent / "p.txt", "my_new_knob": [1, 2]}
    run_id = store.create_run(settings)
    run = store.get_run(run_id)
    assert run["status"] == "started" and run["finished_utc"] is None and run["created_utc"].endswith("+00:00")
    assert (run["experiment"], run["temperature"], run["max_tokens"], run["model_name"]) == ("esr", 0.6, 512, "smollm2")
    assert run["restart_gating"] == 1
    assert run["prompts_file"] == str(store.path.parent / "p.txt")
    assert "my_new_knob" not in run
    assert json.loads(run["settings_json"])["my_new_knob"] == [1, 2]
    assert run["settings"]["temperature"] == 0.6


def test_get_run_by_prefix_and_errors(store):
    first = store.create_run({"experiment": "a"})
    second = store.create_run({"experiment": "b"})
    assert store.get_run(first)["experiment"] == "a"
    common = next(i for i in range(26) if first[i] != second[i])
    assert store.get_run(second[: common + 1])["experiment"] == "b"  # the shortest unique prefix
    with pytest.raises(UserInputError, match="matches 2 runs"):
        store.get_run(first[:common])
    with pytest.raises(MissingResourceError, match="esr-local runs"):
        store.get_run("zzzz")
    with pytest.raises(MissingResourceError):
        store.get_run("%")  # LIKE wildcards are escaped


def test_set_run_status(store):
    run_id = store.create_run({"experiment": "esr"})
    store.set_run_status(run_id, "started")
    assert store.get_run(run_id)["finished_utc"] is None
    store.set_run_status(run_id, "error", error="llama.cpp died")
    run = store.get_run(run_id)
    assert (run["status"], run["error"]) == ("error", "llama.cpp died") and run["finished_utc"]
    with pytest.raises(UserInputError, match="status"):
        store.set_run_status(run_id, "done")
    with pytest.raises(MissingResourceError):
        store.set_run_status("nope", "success")


def test_list_runs_counts_trials(store):
    a = store.create_run({"experiment": "esr"})
    b = store.create_run({"experiment": "import"})
    store.record_trial(_trial(b), None, [])
    store.record_trial(_trial(b, replicate=1), None, [])
    assert [(r["id"], r["n_trials"]) for r in store.list_runs()] == [(a, 0), (b, 2)]


# -- latents ----------------------------------------------------------------------------------------------

def test_upsert_latent(store):
    run_id = store.create_run({})
    store.upsert_latent(run_id, 9, label="cats", row_norm=2.0, boost=None, boost_source="none")
    store.upsert_latent(run_id, 3, label="dogs", row_norm=1.0, boost=4.0, boost_source="given")
    store.upsert_latent(run_id, 9, label="cats", row_norm=2.0, boost=12.5, boost_source="calibrated", error=None)
    store.upsert_latent(run_id, 4, label="owls", row_norm=1.0, boost=2.0, boost_source="replayed")
    rows = store.latents(run_id)
    assert [(r["latent"], r["boost"], r["boost_source"]) for r in rows] == [
        (3, 4.0, "given"), (4, 2.0, "replayed"), (9, 12.5, "calibrated")]
    with pytest.raises(UserInputError, match="boost_source"):
        store.upsert_latent(run_id, 1, label=None, row_norm=None, boost=None, boost_source="guessed")


# -- trials -----------------------------------------------------------------------------------------------

def test_record_trial_round_trip(store):
    run_id = store.create_run({})
    trial_id = store.record_trial(
        _trial(run_id, base_prompt="How?", prompt="How? Stay on topic.", boost=3.5, seed=42, response="r",
               generation_ms=10.0, extra={"note": 1}, sampler="greedy"),
        JUDGMENT,
        [{"text": "first", "score": 20}, {"attempt_text": "second", "score": None}, {"text": "third", "score": 70.5}],
    )
    assert trial_id == trial_key(run_id, "steered", 7, 0, 0)
    [trial] = store.trials(run_id)
    assert (trial["prompt"], trial["boost"], trial["seed"]) == ("How? Stay on topic.", 3.5, 42)
    assert json.loads(trial["extra_json"]) == {"note": 1, "sampler": "greedy"}
    judgment = trial["judgment"]
    assert (judgment["parse_status"], judgment["tries"], judgment["latency_ms"]) == ("ok", 1, 12.5)
    assert judgment["n_attempts_raw"] == 3
    assert [(a["attempt_index"], a["text"], a["score"]) for a in trial["attempts"]] == [
        (0, "first", 20.0), (1, "second", None), (2, "third", 70.5)]


def test_extra_json_given_as_text_is_merged_not_nested(store):
    run_id = store.create_run({})
    store.record_trial(_trial(run_id, extra_json=json.dumps({"parallel_sequences": 4}), gpu=False),
                       {**JUDGMENT, "extra_json": {"prompt_chars": 900}}, [])
    [trial] = store.trials(run_id)
    assert json.loads(trial["extra_json"]) == {"parallel_sequences": 4, "gpu": False}
    assert json.loads(trial["judgment"]["extra_json"]) == {"prompt_chars": 900}


def test_record_trial_parse_status_defaults_from_error(store):
    run_id = store.create_run({})
    store.record_trial(_trial(run_id), {"raw_output": "garbage", "error": "no <json> block", "attempts": None}, [])
    assert store.trials(run_id)[0]["judgment"]["parse_status"] == "error"


def test_duplicate_trial_raises_and_writes_nothing(store):
    run_id = store.create_run({})
    store.record_trial(_trial(run_id), JUDGMENT, [{"text": "a", "score": 10}])
    with pytest.raises(DuplicateTrialError, match="already recorded"):
        store.record_trial(_trial(run_id, response="again"), JUDGMENT, [{"text": "b", "score": 99}])
    [trial] = store.trials(run_id)
    assert trial["response"] is None and [a["score"] for a in trial["attempts"]] == [10.0]


def test_failure_midway_rolls_back_trial_and_judgment(store):
    """A failure while writing the attempts leaves neither the trial nor its judgment behind."""
    run_id = store.create_run({})
    with pytest.raises(ValueError):
        store.record_trial(_trial(run_id), JUDGMENT, [{"text": "a", "score": 10}, {"text": "b", "score": "high"}])
    assert store.trials(run_id) == []
    assert store.db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == 0
    with pytest.raises(UserInputError, match="parse_status"):
        store.record_trial(_trial(run_id), {**JUDGMENT, "parse_status": "maybe"}, [])
    assert store.finished_trial_keys(run_id) == set()
    # The same key can then be recorded normally.
    store.record_trial(_trial(run_id), JUDGMENT, [{"text": "a", "score": 10}])
    assert store.finished_trial_keys(run_id) == {("steered", 7, 0, 0)}


def test_record_trial_input_errors(store):
    run_id = store.create_run({})
    with pytest.raises(UserInputError, match="replicate"):
        store.record_trial({"run_id": run_id, "condition": "steered", "latent": 1, "prompt_index": 0}, None, [])
    with pytest.raises(UserInputError, match="without a judgment"):
        store.record_trial(_trial(run_id), None, [{"text": "a", "score": 1}])
    with pytest.raises(MissingResourceError, match="create the run first"):
        store.record_trial(_trial("no-such-run"), None, [])


def test_finished_trial_keys_and_order(store):
    run_id = store.create_run({})
    other = store.create_run({})
    for key in [("steered", 5, 1, 0), ("baseline", 5, 0, 0), ("steered", 2, 3, 1), ("meta:x", 2, 0, 0)]:
        condition, latent, prompt_index, replicate = key
        store.record_trial(_trial(run_id, condition, latent, prompt_index, replicate), None, [])
    store.record_trial(_trial(other), None, [])
    assert store.finished_trial_keys(run_id) == {
        ("steered", 5, 1, 0), ("baseline", 5, 0, 0), ("steered", 2, 3, 1), ("meta:x", 2, 0, 0)}
    assert [(t["condition"], t["latent"]) for t in store.trials(run_id)] == [
        ("baseline", 5), ("meta:x", 2), ("steered", 2), ("steered", 5)]
    assert store.trials(run_id)[0]["judgment"] is None and store.trials(run_id)[0]["attempts"] == []


def test_foreign_keys_are_enforced(store):
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("INSERT INTO latents (run_id, latent) VALUES ('missing', 1)")


# -- calibrations -------------------------------------------------------------------------------------------

KEY = {"model_sha256": "ab" * 32, "sae_source": "gemmascope:layer_16", "latent": 12, "layer": 16,
       "judge": "local/smollm2", "settings_hash": "h1"}


def test_calibration_cache(store):
    assert store.get_calibration(KEY) is None
    steps = [BisectionStep(boost=10.0, score=0.5, direction=1, confidence=0.8)]
    cal_id = store.put_calibration(KEY, {"boost": 13.38, "achieved_score": 0.31, "target": 0.3, "steps": steps})
    row = store.get_calibration(KEY)
    assert (row["id"], row["boost"], row["achieved_score"], row["target"]) == (cal_id, 13.38, 0.31, 0.3)
    assert row["steps"] == [{"boost": 10.0, "score": 0.5, "direction": 1, "confidence": 0.8}]
    # Same key: replaced in place, id kept. Another settings hash: a separate entry.
    assert store.put_calibration(KEY, {"boost": 14.0, "steps_json": json.dumps([{"boost": 1.0}])}) == cal_id
    assert store.get_calibration(KEY)["boost"] == 14.0
    assert store.get_calibration(KEY)["steps"] == [{"boost": 1.0}]
    assert store.put_calibration({**KEY, "settings_hash": "h2"}, {"boost": 1.0}) != cal_id
    assert store.get_calibration({**KEY, "latent": 13}) is None
    run_id = store.create_run({})
    store.upsert_latent(run_id, 12, label=None, row_norm=None, boost=14.0, boost_source="calibrated",
                        calibration_id=cal_id)
    assert store.latents(run_id)[0]["calibration_id"] == cal_id


def test_calibration_key_must_be_complete(store):
    with pytest.raises(UserInputError, match="settings_hash"):
        store.get_calibration({k: v for k, v in KEY.items() if k != "settings_hash"})
    with pytest.raises(UserInputError, match="judge"):
        store.put_calibration({**KEY, "judge": None}, {"boost": 1.0})


def test_failed_generations_are_removed_for_a_rerun_failed_judgments_kept_to_rejudge(store):
    run_id = store.create_run({"experiment": "esr", "prompts": ["a"]})
    store.record_trial(_trial(run_id, prompt_index=0), JUDGMENT, [{"attempt_index": 0, "text": "x", "score": 50}])
    store.record_trial(_trial(run_id, prompt_index=1, error="llama_decode failed"), None, [])
    store.record_trial(_trial(run_id, prompt_index=2, response="an answer"),
                       {**JUDGMENT, "parse_status": "error", "error": "no json"}, [])
    assert store.delete_failed_trials(run_id) == 1  # only the generation failure; the response of #2 is kept
    assert store.finished_trial_keys(run_id) == {("steered", 7, 0, 0), ("steered", 7, 2, 0)}
    assert store.db["attempts"].count == 1
    assert store.db["judgments"].count == 2
    key = store.db.execute("SELECT judge_key FROM judgments LIMIT 1").fetchone()[0]
    (todo,) = store.trials_to_judge(run_id, key)
    assert todo["prompt_index"] == 2
    store.merge_run_settings(run_id, {"sweep_boost_levels": [0.0, 2.5]})
    assert store.get_run(run_id)["settings"] == {"experiment": "esr", "prompts": ["a"], "sweep_boost_levels": [0.0, 2.5]}


def test_an_imported_run_keeps_its_own_judgments_as_results_after_a_regrade(store):
    """A run created without a judge (an import) takes its first judgment's judge: a re-grade by another
    judge neither replaces its results (Python metrics) nor counts twice (run_metrics view)."""
    from esr_local.metrics import metrics_for_store

    rid = store.create_run({"experiment": "import"})
    tid = store.record_trial({"run_id": rid, "condition": "steered", "latent": 1, "prompt_index": 0, "replicate": 0,
                              "response": "r"}, {"judge_backend": "anthropic", "judge_model": "haiku", "parse_status": "ok"},
                             [{"text": "a", "score": 10}, {"text": "b", "score": 90}])
    assert store.run_judge_key(rid) == "anthropic:haiku"
    store.record_judgment(tid, {"judge_key": "offline:x:abc", "parse_status": "ok"}, [{"text": "a", "score": 50}])
    (py,) = metrics_for_store(store, [rid])
    (sql,) = store.db.query("SELECT * FROM run_metrics WHERE run_id = ?", [rid])
    assert (py["n"], py["multi_attempt_count"], py["judge_key"]) == (1, 1, "anthropic:haiku")
    assert (sql["n"], sql["multi_attempt_count"]) == (1, 1)
    (other,) = metrics_for_store(store, [rid], judge="offline:x:abc")
    assert (other["n"], other["multi_attempt_count"]) == (1, 0)
