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

ARGS = ["--latent", "1", "--latent", "4", "--n-prompts", "3", "--condition", "steered", "--condition", "baseline",
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


def test_twenty_kill9_and_resumes_equal_one_uninterrupted_run(tmp_path):
    env = {**os.environ, "ESR_LOCAL_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    rng = random.Random(2024)
    with JudgeServer() as js:
        base = [sys.executable, "-m", "esr_local", "run"]
        ref_db, db = tmp_path / "ref.db", tmp_path / "killed.db"
        t0 = time.monotonic()
        subprocess.run([*base, "--db", str(ref_db), *ARGS, *js.judge_args()], env=env, check=True, capture_output=True)
        full = time.monotonic() - t0
        kills = 0
        while kills < 20:
            run_id = _run_id(db)
            cmd = [*base, "--db", str(db), "--resume", run_id] if run_id else [*base, "--db", str(db), *ARGS, *js.judge_args()]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.05, full * 0.6))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        run_id = _run_id(db)
        assert run_id is not None
        done = subprocess.run([*base, "--db", str(db), "--resume", run_id], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    got, want = _snapshot(db), _snapshot(ref_db)
    assert len(want["trials"]) == 12 and want["status"] == [("success",)]
    for part in ("trials", "judgments", "attempts", "latents", "metrics", "status"):
        assert got[part] == want[part], part
    assert len(sqlite3.connect(db).execute("SELECT * FROM run_sessions").fetchall()) >= 2
