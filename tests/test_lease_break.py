"""Taking over a run whose lease holder is gone: `esr-local run --resume RUN --break-lease` breaks a lease held on
another host (which never expires by itself) or by a dead process here, records who broke it, and refuses while
the holder still runs on this machine. Real processes, a real judge on 127.0.0.1, a real SQLite file."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner
from runs_judge_server import JudgeServer

from esr_local.cli import main
from esr_local.errors import MissingResourceError
from esr_local.leases import LeaseLiveError, _process_start, break_lease
from esr_local.store import Store
from db_rows import query_rows

TINY = ["--max-tokens", "8", "--n-ctx", "512", "--boost", "2", "--seed", "5", "--threads", "1"]


_rows = query_rows


def _hold(db, run_id: str, pid: int, host: str, process_start: str | None) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute("INSERT OR REPLACE INTO run_leases (run_id, pid, host, process_start, acquired_utc) "
                    "VALUES (?, ?, ?, ?, '2026-01-01T00:00:00.000+00:00')", (run_id, pid, host, process_start))
    con.close()


@pytest.fixture
def sleeper():
    """A real live process on this host (the lease holder)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_holder_here_refuses_and_a_dead_or_reused_pid_loses_the_lease(tmp_path, sleeper):
    db = tmp_path / "esr.db"
    with Store(db) as store:
        run_id = store.create_run({"experiment": "esr"})
    _hold(db, run_id, sleeper.pid, socket.gethostname(), _process_start(sleeper.pid))
    r = CliRunner().invoke(main, ["run", "--db", str(db), "--resume", run_id, "--break-lease"])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: run {run_id} is being executed by process {sleeper.pid} "
                                                   "on this machine, which still runs"), r.output
    assert f"kill {sleeper.pid}" in lines[0]
    with Store(db) as store, pytest.raises(LeaseLiveError, match="still runs"):
        break_lease(store, run_id)  # the library refuses the same way
    assert _rows(db, "SELECT pid FROM run_leases") == [{"pid": sleeper.pid}]  # untouched
    assert _rows(db, "SELECT * FROM lease_breaks") == []

    # the same pid with another start time is another process: the holder is gone
    _hold(db, run_id, sleeper.pid, socket.gethostname(), "1")
    with Store(db) as store:
        broken = break_lease(store, run_id[:12], command_line="test")
        assert broken["holder_state"] == "dead" and broken["holder_pid"] == sleeper.pid
        assert store.lease(run_id) is None

    started = _process_start(sleeper.pid)
    _hold(db, run_id, sleeper.pid, socket.gethostname(), started)
    sleeper.kill()
    sleeper.wait()
    with Store(db) as store:
        broken = break_lease(store, run_id)
        assert broken["holder_state"] == "dead"
        assert (broken["by_pid"], broken["by_host"]) == (os.getpid(), socket.gethostname())
        assert [b["holder_process_start"] for b in store.lease_breaks(run_id)] == ["1", started]
        assert break_lease(store, run_id) is None  # nothing left to break
        with pytest.raises(MissingResourceError, match="no run 'zzz'"):
            break_lease(store, "zzz")


def test_break_lease_needs_resume(tmp_path):
    r = CliRunner().invoke(main, ["run", "--db", str(tmp_path / "x.db"), "--latent", "1", "--break-lease"])
    assert r.exit_code == 1 and r.output.strip() == "Error: --break-lease takes over a stopped run: add --resume RUN"
    assert not (tmp_path / "x.db").exists()


def test_another_hosts_lease_is_taken_over_explicitly_and_recorded(tmp_path):
    db = tmp_path / "esr.db"
    with JudgeServer() as js:
        r = CliRunner().invoke(main, ["run", "--db", str(db), "--latent", "1", "--n-prompts", "1", *TINY,
                                      *js.judge_args()])
        assert r.exit_code == 0, r.output
        (run,) = _rows(db, "SELECT id FROM runs")
        run_id = run["id"]
        # the run stopped half-way on a machine that is gone: its trial is missing, its lease stays
        con = sqlite3.connect(db)
        with con:
            for table in ("attempts", "judgments", "trials"):
                con.execute(f"DELETE FROM {table}")
            con.execute("UPDATE runs SET status = 'started'")
        con.close()
        _hold(db, run_id, 4242, "gone-host.example", None)

        r = CliRunner().invoke(main, ["run", "--db", str(db), "--resume", run_id])
        assert r.exit_code == 1 and "is being executed by process 4242 on host gone-host.example" in r.output
        assert f"esr-local run --resume {run_id} --break-lease" in r.output
        assert _rows(db, "SELECT COUNT(*) AS n FROM trials")[0]["n"] == 0

        proc = subprocess.Popen([sys.executable, "-m", "esr_local", "run", "--db", str(db), "--resume", run_id,
                                 "--break-lease"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "ESR_LOCAL_THREADS": "1"})
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert "broke the lease of process 4242 on gone-host.example (unverifiable" in stderr
    (brk,) = _rows(db, "SELECT * FROM lease_breaks")
    assert (brk["run_id"], brk["holder_pid"], brk["holder_host"], brk["holder_state"]) == (
        run_id, 4242, "gone-host.example", "unverifiable")
    assert brk["holder_acquired_utc"] == "2026-01-01T00:00:00.000+00:00"
    assert (brk["by_pid"], brk["by_host"]) == (proc.pid, socket.gethostname())  # the resuming process
    assert "--break-lease" in brk["command_line"]
    assert _rows(db, "SELECT status FROM runs")[0]["status"] == "success"
    assert _rows(db, "SELECT COUNT(*) AS n FROM trials")[0]["n"] == 1  # the takeover ran the missing trial
    assert _rows(db, "SELECT COUNT(*) AS n FROM run_leases")[0]["n"] == 0
