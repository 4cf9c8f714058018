"""Benchmark: trials per hour end to end (`esr-local run`, one fresh process per setting, one after another).

    .venv/bin/python bench/bench_trials.py [--suite paper|overlap] [--trials 12] [--max-tokens N]
        [--parallel 1 2 4] [--delay 1.5] [--threads 2] [--json OUT]

Suites:
- `paper` (default): paper settings (T 0.6, up to 512 tokens, penalty 1.1), fixed boost (no calibration),
  the offline judge (in process, inline) at `--parallel` 1, 2 and 4, then a remote judge answering after
  `--delay` seconds (an OpenAI-compatible server on 127.0.0.1) at `--parallel` 2.
- `overlap`: the same run judged by an instant remote judge, by the `--delay` judge overlapped (the
  default pool), and by the `--delay` judge serially (ESR_LOCAL_JUDGE_WORKERS=0): the overlap target is
  "delayed overlapped" <= "instant" + ~3 s for 12 trials. Default here: 64 tokens.
Reported per setting: wall seconds of the whole command (start-up and model load included), mean tokens
generated, the judge's mean latency, and trials/hour = trials / wall (so start-up counts against it).
The offline judge's check is skipped (`--skip-judge-check`): it is cached after its first run anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERDICT = '<json>{"attempts": [{"attempt": "the whole answer", "score": 80}]}</json>'


class DelayedJudge:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that answers every request after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": VERDICT}}]}).encode()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(srv.delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def run_once(name: str, args: list[str], env_extra: dict, threads: int, trials: int) -> dict:
    db = Path(tempfile.mkdtemp(prefix="bench_trials_")) / "b.db"
    env = {**os.environ, "ESR_LOCAL_THREADS": str(threads), "ESR_LOCAL_HOME": str(db.parent / "home"), **env_extra}
    n_prompts = max(1, trials // 2)
    cmd = [sys.executable, "-m", "esr_local", "run", "--db", str(db), "--latent", "1", "--latent", "4",
           "--n-prompts", str(n_prompts), "--boost", "2", "--seed", "3", "--n-ctx", "1024", "--skip-judge-check", *args]
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
    con = sqlite3.connect(db)
    n, toks, gen_ms = con.execute("SELECT COUNT(*), SUM(completion_tokens), SUM(generation_ms) FROM trials").fetchone()
    jms = con.execute("SELECT AVG(latency_ms) FROM judgments").fetchone()[0]
    con.close()
    return {"name": name, "trials": n, "wall_s": wall, "trials_per_hour": 3600 * n / wall, "tokens": toks,
            "mean_tokens": toks / n, "generation_s_sum": gen_ms / 1000, "judge_ms_mean": jms,
            "loadavg_after": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=["paper", "overlap"], default="paper")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--parallel", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--delay", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--run-args", default="", help="extra `esr-local run` options for every setting, e.g. '--gpu-layers -1'")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    max_tokens = a.max_tokens or (512 if a.suite == "paper" else 64)
    common = ["--max-tokens", str(max_tokens), *shlex.split(a.run_args)]
    slow = DelayedJudge(a.delay)
    fast = DelayedJudge(0.0)
    remote = lambda srv: ["--judge", "openai:bench", "--judge-base-url", srv.url]  # noqa: E731
    settings: list[tuple[str, list[str], dict]] = []
    if a.suite == "paper":
        for k in a.parallel:
            settings.append((f"offline judge, --parallel {k}", [*common, "--parallel", str(k), "--judge", "offline"], {}))
        settings.append((f"remote judge {a.delay:g} s, --parallel 2", [*common, "--parallel", "2", *remote(slow)], {}))
    else:
        settings = [("instant remote judge", [*common, *remote(fast)], {}),
                    (f"{a.delay:g} s remote judge, overlapped", [*common, *remote(slow)], {}),
                    (f"{a.delay:g} s remote judge, serial", [*common, *remote(slow)], {"ESR_LOCAL_JUDGE_WORKERS": "0"})]
    results = []
    print(f"{a.suite}: {a.trials} trials, up to {max_tokens} tokens, {a.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f} at start, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| setting | wall s | trials/hour | mean tokens | judge ms (mean) |")
    print("|---|---|---|---|---|")
    try:
        for name, args, env in settings:
            r = run_once(name, args, env, a.threads, a.trials)
            results.append(r)
            print(f"| {name} | {r['wall_s']:.1f} | {r['trials_per_hour']:.0f} | {r['mean_tokens']:.0f} | "
                  f"{r['judge_ms_mean']:.0f} |", flush=True)
    finally:
        slow.close()
        fast.close()
    if a.json:
        meta = {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": a.threads, "suite": a.suite,
                "max_tokens": max_tokens, "delay_s": a.delay, "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        Path(a.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
