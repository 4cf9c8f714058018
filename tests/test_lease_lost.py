"""A run whose lease another process took over (`--break-lease` on another host) stops at its next write:
nothing more is written by it, its run status is left to the new holder, and it exits with one `Error:` line.
Real `esr-local run` process, a real judge on 127.0.0.1, a real SQLite file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

from runs_judge_server import JudgeServer

ARGS = ["--latent", "1", "--latent", "4", "--n-prompts", "4", "--condition", "steered", "--condition", "baseline",
        "--max-tokens", "8", "--n-ctx", "512", "--boost", "2", "--seed", "3", "--parallel", "1"]


def _scalar(db, sql):
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # the database or its tables do not exist yet
        return None
    finally:
        con.close()


def _run_and_take_over(db, args, delay_s: float, started, what: str, count_table: str):
    """Start `esr-local run` against a judge answering after `delay_s`; once `started(js)` holds, another host
    takes the run's lease over and `count_table`'s rows are counted, in one write transaction. Returns
    (run_id, rows counted at the takeover, returncode, stderr) once the process has ended."""
    env = {**os.environ, "ESR_LOCAL_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with JudgeServer(delay_s=delay_s) as js:  # slow judgments: the run is still going when the lease is taken
        proc = subprocess.Popen([sys.executable, "-m", "esr_local", "run", "--db", str(db), *args, *js.judge_args()],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 240
            while not started(js):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, f"{what} in time"
                time.sleep(0.05)
            con = sqlite3.connect(db, isolation_level=None, timeout=30)
            con.execute("BEGIN IMMEDIATE")
            run_id = con.execute("SELECT run_id FROM run_leases").fetchone()[0]
            con.execute("UPDATE run_leases SET pid = 4242, host = 'another-host', process_start = NULL "
                        "WHERE run_id = ?", (run_id,))
            counted = con.execute(f"SELECT COUNT(*) FROM {count_table}").fetchone()[0]
            con.execute("COMMIT")
            con.close()
            _, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    return run_id, counted, proc.returncode, err


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.strip().splitlines() if ln.startswith("Error:")]


def test_a_run_whose_lease_was_taken_over_stops_writing(tmp_path):
    db = tmp_path / "esr.db"
    run_id, stored, rc, err = _run_and_take_over(
        db, ARGS, 0.4, lambda js: (_scalar(db, "SELECT COUNT(*) FROM trials") or 0) >= 1,
        "the run stored no trial", "trials")
    planned = 16
    assert 1 <= stored < planned, "the takeover came too late to test anything"
    assert rc == 1, err
    lines = _error_lines(err)
    assert len(lines) == 1 and "was taken over" in lines[0] and "process 4242 on another-host" in lines[0], err
    assert "Traceback" not in err
    assert _scalar(db, "SELECT COUNT(*) FROM trials") == stored  # nothing written after the takeover
    assert _scalar(db, f"SELECT status FROM runs WHERE id = '{run_id}'") == "started"  # not ours to finish
    assert _scalar(db, "SELECT host FROM run_leases") == "another-host"  # the new holder's lease is kept


def test_a_run_taken_over_while_calibrating_writes_no_latent_row(tmp_path):
    db = tmp_path / "cal.db"
    args = ["--latent", "1", "--latent", "4", "--n-prompts", "2", "--max-tokens", "8", "--n-ctx", "512",
            "--seed", "3", "--remeasure-samples", "1"]  # no --boost: each latent is calibrated first
    _, latents, rc, err = _run_and_take_over(
        db, args, 0.3, lambda js: js.requests >= 1,  # calibration has started asking the judge
        "calibration never asked the judge", "latents")
    assert latents == 0, "the takeover came after the first latent was stored"
    assert rc == 1, err
    lines = _error_lines(err)
    assert len(lines) == 1 and "was taken over" in lines[0], err
    assert _scalar(db, "SELECT COUNT(*) FROM latents") == 0  # the calibrated boost was not written
    assert _scalar(db, "SELECT COUNT(*) FROM trials") == 0
    assert _scalar(db, "SELECT host FROM run_leases") == "another-host"
