"""20 `kill -9` at random moments of one small run, each followed by a resume: the final database holds
exactly what an uninterrupted run writes (trials, texts, judgments, attempts, latents, metrics)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

from runs_judge_server import JudgeServer

from esr_local.metrics import metrics_for_store
from esr_local.store import Store

ARGS = ["--latent", "1", "--latent", "4", "--latent", "6", "--n-prompts", "4", "--condition", "steered", "--condition", "baseline",
        "--max-tokens", "10", "--n-ctx", "512", "--boost", "2", "--seed", "11"]


def _snapshot(db) -> dict:
    """Everything a result depends on, without ids, timings and timestamps."""
    con = sqlite3.connect(db)
    try:
        q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
        out = {
            "trials": q("SELECT condition, latent, prompt_index, replicate, base_prompt, prompt, boost, seed, response, "
                        "prompt_tokens, completion_tokens, stop_reason, error FROM trials ORDER BY 1, 2, 3, 4"),
            "judgments": q("SELECT t.condition, t.latent, t.prompt_index, t.replicate, j.judge_key, j.raw_output, "
                           "j.parse_status, j.error, j.n_attempts_raw FROM judgments j JOIN trials t ON t.id = j.trial_id "
                           "ORDER BY 1, 2, 3, 4, 5"),
            "attempts": q("SELECT t.condition, t.latent, t.prompt_index, t.replicate, a.attempt_index, a.text, a.score "
                          "FROM attempts a JOIN trials t ON t.id = a.trial_id ORDER BY 1, 2, 3, 4, 5"),
            "latents": q("SELECT latent, label, row_norm, boost, boost_source, error, flags FROM latents ORDER BY 1"),
            "status": q("SELECT status FROM runs"),
        }
    finally:
        con.close()
    with Store(db, create=False) as store:
        out["metrics"] = [{k: v for k, v in r.items() if k != "run_id"} for r in metrics_for_store(store)]
    return out


def _run_id(db) -> str | None:
    try:
        rows = sqlite3.connect(db).execute("SELECT id FROM runs").fetchall() if db.exists() else []
    except sqlite3.OperationalError:
        return None
    return rows[0][0] if rows else None


def _n_trials(db) -> int:
    try:
        return sqlite3.connect(db).execute("SELECT COUNT(*) FROM trials").fetchone()[0] if db.exists() else 0
    except sqlite3.OperationalError:
        return 0


def test_twenty_kill9_and_resumes_equal_one_uninterrupted_run(tmp_path):
    env = {**os.environ, "ESR_LOCAL_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    rng = random.Random(2024)
    with JudgeServer() as js:
        base = [sys.executable, "-m", "esr_local", "run"]
        ref_db, db = tmp_path / "ref.db", tmp_path / "killed.db"
        t0 = time.monotonic()
        subprocess.run([*base, "--db", str(ref_db), *ARGS, *js.judge_args()], env=env, check=True, capture_output=True)
        full = time.monotonic() - t0
        kills, counts = 0, []
        while kills < 20:
            run_id = _run_id(db)
            cmd = [*base, "--db", str(db), "--resume", run_id] if run_id else [*base, "--db", str(db), *ARGS, *js.judge_args()]
            before = _n_trials(db)
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if kills % 2 == 0:  # anywhere: start-up, creation, the lease, a decode, a commit
                time.sleep(rng.uniform(0.05, min(full, 4.0)))
            else:  # just after a batch was written, or in the middle of the next one
                deadline = time.monotonic() + full
                while proc.poll() is None and _n_trials(db) <= before and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            counts.append(_n_trials(db))
        run_id = _run_id(db)
        assert run_id is not None
        done = subprocess.run([*base, "--db", str(db), "--resume", run_id], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert sum(0 < n < 24 for n in counts) >= 5, counts  # many kills landed in the middle of the run
    got, want = _snapshot(db), _snapshot(ref_db)
    assert len(want["trials"]) == 24 and want["status"] == [("success",)]
    for part in ("trials", "judgments", "attempts", "latents", "metrics", "status"):
        assert got[part] == want[part], part
    assert len(sqlite3.connect(db).execute("SELECT * FROM run_sessions").fetchall()) >= 2
