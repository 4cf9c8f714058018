"""The Datasette metadata: it describes tables and columns that exist, and its canned queries answer the
common questions with the numbers worked out by hand from the fixture files."""

from __future__ import annotations

import json
import sqlite3

from click.testing import CliRunner

from esr_local.cli import main
from esr_local.report.datasette import datasette_metadata, shipped_metadata
from esr_local.store import Store
from report_fixtures import imported_store

_CORE = {"runs", "run_sessions", "latents", "latent_sets", "trials", "judgments", "attempts", "calibrations", "trial_outcomes",
         "run_metrics", "judge_metrics"}


def _query(db, name: str, **params):
    sql = shipped_metadata()["databases"]["esr"]["queries"][name]["sql"]
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, {"run_id": "", "condition": "", **params})]
    finally:
        conn.close()


def test_every_described_table_and_column_exists_and_the_core_tables_are_described(tmp_path):
    db, _ = imported_store(tmp_path)
    conn = sqlite3.connect(db)
    schema = {name: {row[1] for row in conn.execute(f"PRAGMA table_info({name})")}
              for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    tables = shipped_metadata()["databases"]["esr"]["tables"]
    assert _CORE <= set(tables)
    for table, info in tables.items():
        assert table in schema, table
        assert info["description"]
        assert set(info.get("columns", {})) <= schema[table], (table, set(info.get("columns", {})) - schema[table])


def test_restart_latents_and_scores_by_boost(tmp_path):
    db, ids = imported_store(tmp_path)
    rows = _query(db, "restart_latents", run_id=ids["steered"])
    # latent 2: both trials multi-attempt, one improved; latent 1: one of two multi-attempt and improved
    assert [(r["latent"], r["label"], r["n"], r["multi_attempt"], r["improved"], r["multi_attempt_rate"], r["esr_rate"])
            for r in rows] == [(2, "volcanoes", 2, 2, 1, 100.0, 50.0), (1, "weddings", 2, 1, 1, 50.0, 50.0)]
    sweep = _query(db, "scores_by_boost", run_id=ids["sweep"])
    assert [(r["condition"], r["boost"], r["n"], r["mean_first_score"], r["esr_rate"]) for r in sweep] == [
        ("sweep:0", 1.0, 2, 20.0, 50.0), ("sweep:1", 2.5, 2, 30.0, 50.0), ("sweep:2", 4.0, 2, 40.0, 0.0)]
    # without a run id, every run appears
    assert {r["run_id"] for r in _query(db, "scores_by_boost")} == set(ids.values())


def test_judge_agreement_and_failures(tmp_path):
    db, ids = imported_store(tmp_path)
    with Store(db) as store:
        for trial in store.trials(ids["steered"]):
            first = trial["attempts"][0]["score"]
            # the second judge never splits: agrees on multi-attempt only for the one single-attempt trial
            store.record_judgment(trial["id"], {"judge_key": "second:judge", "parse_status": "ok"},
                                  [{"text": trial["response"], "score": first + 10}])
    (row,) = _query(db, "judge_agreement", run_id=ids["steered"])
    assert row["judge_a"] < row["judge_b"] and "second:judge" in (row["judge_a"], row["judge_b"])
    assert (row["trials_both_scored"], row["same_multi_attempt"], row["multi_attempt_agreement_pct"]) == (4, 1, 25.0)
    assert (row["same_improved"], row["mean_abs_first_score_diff"]) == (2, 10.0)
    failures = _query(db, "failures", run_id=ids["steered2"])
    assert [(f["stage"].split()[0], f["error"]) for f in failures] == [("judgment", "no json")]


def test_cli_prints_the_metadata_under_the_database_file_name(tmp_path):
    db, _ = imported_store(tmp_path)
    result = CliRunner().invoke(main, ["datasette-metadata", "--db", str(db)])
    assert result.exit_code == 0
    meta = json.loads(result.stdout)
    assert list(meta["databases"]) == ["runs"] and meta == datasette_metadata(db)
    assert set(meta["databases"]["runs"]["queries"]) == {"restart_latents", "scores_by_boost", "judge_agreement",
                                                         "failures"}
    result = CliRunner().invoke(main, ["datasette-metadata", "--db", str(tmp_path / "missing.db")])
    assert result.exit_code == 1 and "no esr-local database" in result.stderr


def test_the_failures_query_uses_the_report_indexes_instead_of_scanning(tmp_path):
    db, _ = imported_store(tmp_path)
    conn = sqlite3.connect(db)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"judgments_failed", "judgments_judge_key", "trials_failed"} <= names
    sql = shipped_metadata()["databases"]["esr"]["queries"]["failures"]["sql"]
    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, {"run_id": "x"})]
    # trials and judgments are read through the partial indexes (failed rows only), never scanned whole
    assert "SCAN t USING INDEX trials_failed" in plan and "SCAN j USING INDEX judgments_failed" in plan, plan
    assert [s for s in plan if s.startswith(("SCAN t", "SCAN j"))] == [
        "SCAN t USING INDEX trials_failed", "SCAN j USING INDEX judgments_failed"], plan
