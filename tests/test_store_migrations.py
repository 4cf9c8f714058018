"""Upgrading a database written before m006: runs rebuilt with their data, judgments keyed by judge with
their attempts attached, the run's judge key filled in, the metric views giving the same numbers."""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database

from esr_local.metrics import metrics_for_store
from esr_local.store import Store
from esr_local.store_schema import MIGRATIONS


def _old_database(path) -> None:
    db = Database(sqlite3.connect(str(path)))
    MIGRATIONS.apply(db, stop_before="m006_runs_partial_spec")
    db.execute("INSERT INTO runs (id, created_utc, status, experiment, model_name, settings_json) "
               "VALUES ('r1', '2026-01-01', 'success', 'esr', 'm', '{\"seed\": 3}')")
    db.execute("INSERT INTO latents (run_id, latent, label, boost, boost_source) VALUES ('r1', 7, 'cats', 2.0, 'given')")
    for i, scores in enumerate(([20, 80], [50], [90, 10])):
        tid = f"r1:steered:7:{i}:0"
        db.execute("INSERT INTO trials (id, run_id, condition, latent, prompt_index, replicate, response, created_utc) "
                   "VALUES (?, 'r1', 'steered', 7, ?, 0, 'text', '2026-01-01')", [tid, i])
        db.execute("INSERT INTO judgments (trial_id, judge_backend, judge_model, parse_status, created_utc) "
                   "VALUES (?, 'local', 'smollm2', 'ok', '2026-01-01')", [tid])
        for k, s in enumerate(scores):
            db.execute("INSERT INTO attempts (trial_id, attempt_index, text, score) VALUES (?, ?, 'a', ?)", [tid, k, s])
    db.conn.commit()
    db.close()


def test_an_old_database_is_upgraded_with_its_data(tmp_path):
    path = tmp_path / "old.db"
    _old_database(path)
    old = sqlite3.connect(path).execute("SELECT * FROM run_metrics").fetchall()
    with Store(path) as store:
        run = store.get_run("r1")
        assert (run["status"], run["model_name"], run["settings"], run["judge_key"]) == \
            ("success", "m", {"seed": 3}, "local:smollm2:legacy")
        judgments = list(store.db.query("SELECT trial_id, judge_key, errors_json FROM judgments ORDER BY trial_id"))
        assert [j["judge_key"] for j in judgments] == ["local:smollm2:legacy"] * 3
        trials = store.trials("r1")
        assert [[a["score"] for a in t["attempts"]] for t in trials] == [[20, 80], [50], [90, 10]]
        (m,) = metrics_for_store(store, ["r1"])
        assert (m["n"], m["multi_attempt_count"], m["improved_count"]) == (3, 2, 1)
        new = [tuple(r.values()) for r in store.db.query("SELECT * FROM run_metrics")]
        assert new == old  # the view's numbers survive the upgrade
        assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        store.set_run_status("r1", "partial")  # the new status is allowed
        assert store.get_run("r1")["status"] == "partial"
