"""Judging overlaps generation in a real run (SmolLM2, SQLite, a slow OpenAI-compatible judge on 127.0.0.1):
several judge requests are in flight at once, the database equals a serially judged run's (same rows, same
insertion order), and a run killed with judgments in flight stores none of them and resumes to the same result."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from click.testing import CliRunner
from runs_judge_server import _response_of, verdict

from esr_local.cli import main

ARGS = ["--latent", "1", "--latent", "4", "--n-prompts", "3", "--condition", "steered", "--condition", "baseline",
        "--max-tokens", "8", "--n-ctx", "512", "--boost", "2", "--seed", "5", "--parallel", "2"]


class SlowJudge:
    """An OpenAI-compatible judge that answers after `delay_s`, holds every request while `hold` is set,
    and holds each until `gather` requests have arrived (at most 20 s); it counts requests started,
    finished and the most in flight at once."""

    def __init__(self, delay_s: float = 0.0, gather: int = 0):
        self.delay_s, self.gather = delay_s, gather
        self.hold = threading.Event()
        self.lock = threading.Lock()
        self.started = self.finished = self.in_flight = self.peak = 0
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with srv.lock:
                    srv.started += 1
                    srv.in_flight += 1
                    srv.peak = max(srv.peak, srv.in_flight)
                time.sleep(srv.delay_s)
                end = time.monotonic() + 20
                while srv.hold.is_set() or (srv.started < srv.gather and time.monotonic() < end):
                    time.sleep(0.02)
                content = verdict(_response_of(body["messages"][-1]["content"]))
                out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass  # the client was killed
                with srv.lock:
                    srv.in_flight -= 1
                    srv.finished += 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.hold.clear()
        self.httpd.shutdown()
        self.httpd.server_close()

    def args(self) -> list[str]:
        return ["--judge", "openai:test-judge", "--judge-base-url", self.url, "--skip-judge-check"]


def _rows(db) -> dict:
    con = sqlite3.connect(db)
    try:
        q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
        return {
            # rowid order = the order the runner wrote them
            "trials": q("SELECT condition, latent, prompt_index, replicate, prompt, boost, seed, response, "
                        "completion_tokens, error FROM trials ORDER BY rowid"),
            "judgments": q("SELECT t.condition, t.latent, t.prompt_index, j.raw_output, j.parse_status FROM judgments j "
                           "JOIN trials t ON t.id = j.trial_id ORDER BY j.rowid"),
            "attempts": q("SELECT t.condition, t.latent, t.prompt_index, a.attempt_index, a.text, a.score FROM attempts a "
                          "JOIN trials t ON t.id = a.trial_id ORDER BY a.rowid"),
            "status": q("SELECT status FROM runs"),
        }
    finally:
        con.close()


def test_overlapped_judging_stores_what_serial_judging_stores(tmp_path, monkeypatch):
    monkeypatch.setenv("ESR_LOCAL_THREADS", "1")
    with SlowJudge(delay_s=0.2) as js:
        monkeypatch.setenv("ESR_LOCAL_JUDGE_WORKERS", "0")  # serial: one request at a time
        r = CliRunner().invoke(main, ["run", "--db", str(tmp_path / "serial.db"), *ARGS, *js.args()])
        assert r.exit_code == 0, r.output
        assert js.peak == 1 and js.started == 12
        serial_lines = re.findall(r"\[(\d+)/12\] ETA", r.output)
        js.peak, js.gather = 0, 12 + 6  # hold the overlapped run's first requests until 3 groups' are in
        monkeypatch.delenv("ESR_LOCAL_JUDGE_WORKERS")
        r = CliRunner().invoke(main, ["run", "--db", str(tmp_path / "overlap.db"), *ARGS, *js.args()])
        assert r.exit_code == 0, r.output
        assert js.started == 24
        assert js.peak >= 6  # judgments of 3+ groups were in flight while the next ones decoded
    serial, overlap = _rows(tmp_path / "serial.db"), _rows(tmp_path / "overlap.db")
    assert len(serial["trials"]) == 12 and serial["status"] == [("success",)]
    assert overlap == serial
    lines = re.findall(r"\[(\d+)/12\] ETA", r.output)
    assert lines == serial_lines and lines[-1] == "12" and len(lines) > 4  # one line per stored group, in order


def test_kill_with_judgments_in_flight_stores_none_of_them_and_resume_completes(tmp_path):
    env = {**os.environ, "ESR_LOCAL_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "esr_local", "run"]
    db, ref = tmp_path / "killed.db", tmp_path / "ref.db"
    with SlowJudge() as js:
        subprocess.run([*base, "--db", str(ref), *ARGS, *js.args()], env=env, check=True, capture_output=True)
        js.hold.set()  # every judgment now hangs until released
        proc = subprocess.Popen([*base, "--db", str(db), *ARGS, *js.args()], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 120
        while js.in_flight < 4 and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.02)
        assert js.in_flight >= 4, "the run never had several judgments in flight"  # >= 2 groups decoded ahead
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        con = sqlite3.connect(db)
        assert con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 0  # nothing judged, nothing stored
        run_id = con.execute("SELECT id FROM runs").fetchone()[0]
        con.close()
        js.hold.clear()
        done = subprocess.run([*base, "--db", str(db), "--resume", run_id], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert _rows(db) == _rows(ref)
