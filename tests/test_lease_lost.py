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


def test_a_run_whose_lease_was_taken_over_stops_writing(tmp_path):
    db = tmp_path / "esr.db"
    env = {**os.environ, "ESR_LOCAL_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with JudgeServer(delay_s=0.4) as js:  # slow judgments: the run is still going when the lease is taken
        proc = subprocess.Popen([sys.executable, "-m", "esr_local", "run", "--db", str(db), *ARGS, *js.judge_args()],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 240
            while (_scalar(db, "SELECT COUNT(*) FROM trials") or 0) < 1:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the run stored no trial in time"
                time.sleep(0.05)
            # Another host takes the run over, and we count what was stored, in one write transaction.
            con = sqlite3.connect(db, isolation_level=None, timeout=30)
            con.execute("BEGIN IMMEDIATE")
            run_id = con.execute("SELECT run_id FROM run_leases").fetchone()[0]
            con.execute("UPDATE run_leases SET pid = 4242, host = 'another-host', process_start = NULL "
                        "WHERE run_id = ?", (run_id,))
            stored = con.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
            con.execute("COMMIT")
            con.close()
            out, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    planned = 16
    assert 1 <= stored < planned, "the takeover came too late to test anything"
    assert proc.returncode == 1, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "was taken over" in lines[0] and "process 4242 on another-host" in lines[0], err
    assert "Traceback" not in err
    assert _scalar(db, "SELECT COUNT(*) FROM trials") == stored  # nothing written after the takeover
    assert _scalar(db, f"SELECT status FROM runs WHERE id = '{run_id}'") == "started"  # not ours to finish
    assert _scalar(db, "SELECT host FROM run_leases") == "another-host"  # the new holder's lease is kept


def test_a_run_taken_over_while_calibrating_writes_no_latent_row(tmp_path):
    db = tmp_path / "cal.db"
    env = {**os.environ, "ESR_LOCAL_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = ["--latent", "1", "--latent", "4", "--n-prompts", "2", "--max-tokens", "8", "--n-ctx", "512",
            "--seed", "3", "--remeasure-samples", "1"]  # no --boost: each latent is calibrated first
    with JudgeServer(delay_s=0.3) as js:
        proc = subprocess.Popen([sys.executable, "-m", "esr_local", "run", "--db", str(db), *args, *js.judge_args()],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 240
            while js.requests < 1:  # calibration has started asking the judge
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "calibration never asked the judge"
                time.sleep(0.05)
            con = sqlite3.connect(db, isolation_level=None, timeout=30)
            con.execute("BEGIN IMMEDIATE")
            run_id = con.execute("SELECT run_id FROM run_leases").fetchone()[0]
            con.execute("UPDATE run_leases SET pid = 4242, host = 'another-host', process_start = NULL "
                        "WHERE run_id = ?", (run_id,))
            latents = con.execute("SELECT COUNT(*) FROM latents").fetchone()[0]
            con.execute("COMMIT")
            con.close()
            out, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert latents == 0, "the takeover came after the first latent was stored"
    assert proc.returncode == 1, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "was taken over" in lines[0], err
    assert _scalar(db, "SELECT COUNT(*) FROM latents") == 0  # the calibrated boost was not written
    assert _scalar(db, "SELECT COUNT(*) FROM trials") == 0
    assert _scalar(db, "SELECT host FROM run_leases") == "another-host"
