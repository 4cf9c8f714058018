"""A faulty OpenAI-compatible judge server on 127.0.0.1, cycling through every fault of issue 7 §3:
dropped connections, refused connections, hangs, 429 with Retry-After, 500, truncated and non-JSON bodies,
replies of the wrong types, out-of-range scores. Backoffs are tiny, budgets are a second or two."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from esr_local.errors import BackendError
from esr_local.judge import Judge, make_judge
from esr_local.judge import base as judge_base
from esr_local.judge.http import parse_retry_after

GOOD = '<json>{"attempts": [{"attempt_text": "Fold it in thirds", "score": 90}]}</json>'
OUT_OF_RANGE = '<json>{"attempts": [{"attempt_text": "Fold it in thirds", "score": 150}]}</json>'
WRONG_SCORE_TYPE = '<json>{"attempts": [{"attempt_text": "Fold it in thirds", "score": [1, 2]}]}</json>'


def _chat(content) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


class FaultyServer:
    """Each POST takes the next fault from `script`; the last entry repeats. Records arrival times."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.arrivals: list[float] = []
        self.bodies: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                owner.bodies.append(json.loads(self.rfile.read(length)))
                owner.arrivals.append(time.monotonic())
                fault = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                getattr(self, "fault_" + fault.split(":")[0])(fault)

            def _send(self, status, body: bytes, headers=(), length=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def fault_ok(self, _):
                self._send(200, _chat(GOOD))

            def fault_drop(self, _):  # accept the request, close without a reply
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def fault_hang(self, fault):
                time.sleep(float(fault.split(":")[1]))
                self._send(200, _chat(GOOD))

            def fault_ratelimit(self, fault):
                self._send(429, b'{"error": {"message": "slow down"}}', [("Retry-After", fault.split(":")[1])])

            def fault_error500(self, _):
                self._send(500, b'{"error": {"message": "boom"}}')

            def fault_truncated(self, _):
                body = _chat(GOOD)
                self._send(200, body[:20], length=len(body))
                self.close_connection = True

            def fault_html(self, _):
                self._send(200, b"<html>Bad gateway</html>")

            def fault_deep(self, _):  # valid JSON nested far deeper than Python's recursion limit
                self._send(200, b"[" * 100_000 + b"]" * 100_000)

            def fault_deepcontent(self, _):  # the judge's text itself nested far too deep
                self._send(200, _chat('<json>{"attempts": ' + "[" * 100_000 + "]" * 100_000 + "}</json>"))

            def fault_wrongtype(self, _):
                self._send(200, json.dumps({"choices": "none today"}).encode())

            def fault_contentint(self, _):
                self._send(200, _chat(42))

            def fault_outofrange(self, _):
                self._send(200, _chat(OUT_OF_RANGE))

            def fault_scoretype(self, _):
                self._send(200, _chat(WRONG_SCORE_TYPE))

            def fault_trickle(self, _):  # headers at once, then one byte every 0.2 s
                body = _chat(GOOD)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    pass

            def fault_aok(self, _):  # an Anthropic Messages reply
                self._send(200, json.dumps({"type": "message", "content": [{"type": "text", "text": GOOD}]}).encode())

            def fault_overloaded(self, fault):  # Anthropic's 529
                self._send(529, b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
                           [("Retry-After", fault.split(":")[1])])

            def fault_atext(self, _):  # a text block whose text is not a string
                self._send(200, json.dumps({"type": "message", "content": [{"type": "text", "text": 7}]}).encode())

            def fault_aerrstr(self, _):  # an error body whose `error` is a bare string (a proxy, say)
                self._send(200, json.dumps({"type": "error", "error": "upstream overloaded"}).encode())

            def fault_unauthorized(self, _):
                self._send(401, b'{"error": {"message": "bad key"}}')

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for name in ("ESR_JUDGE_BASE_URL", "ESR_JUDGE_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def _judge(url, **kw):
    kw.setdefault("retry_backoff", 0.01)
    kw.setdefault("timeout", 10)
    return make_judge("openai:judge", base_url=url, **kw)


def test_every_fault_in_turn_is_retried_recorded_and_the_judgment_succeeds():
    faults = ["drop", "ratelimit:0", "error500", "truncated", "html", "wrongtype", "contentint", "outofrange",
              "scoretype", "ok"]
    with FaultyServer(faults) as server:
        result = _judge(server.url, max_retries=len(faults)).judge("How to fold a sheet?", "Fold it in thirds.", "lava")
    assert result.parse_status == "ok" and result.error is None
    assert result.tries == len(faults) and len(server.arrivals) == len(faults)
    assert [(a.text, a.score) for a in result.attempts] == [("Fold it in thirds", 90.0)]
    expected = [
        r"backend error: cannot reach http://127\.0\.0\.1:\d+/v1/chat/completions",
        r"backend error: HTTP 429 from .*: slow down",
        r"backend error: HTTP 500 from .*: boom",
        r"backend error: truncated reply from .*: 20 of \d+ bytes",
        r"backend error: non-JSON reply from .*<html>Bad gateway",
        r"backend error: judge reply has no choices\[0\]\.message",
        r"backend error: judge reply content is a int, not text",
        r"parse error: attempt 1: score 150(\.0)? is outside 0-100",
        r"parse error: attempt 1: score \[1, 2\] is not a finite number",
    ]
    assert len(result.errors) == len(expected)
    import re

    for err, pattern in zip(result.errors, expected):
        assert re.match(pattern, err), (pattern, err)


def test_deeply_nested_replies_are_recorded_judge_faults_not_crashes():
    with FaultyServer(["deep", "deepcontent", "ok"]) as server:
        result = _judge(server.url, max_retries=3).judge("How to fold a sheet?", "Fold it in thirds.", "lava")
    assert result.parse_status == "ok" and result.tries == 3
    assert result.errors[0].startswith("backend error: non-JSON reply from")
    assert result.errors[1].startswith("parse error: ") and "nested too deeply" in result.errors[1]


def test_retries_are_bounded_and_every_try_is_recorded_then_the_next_judgment_works():
    with FaultyServer(["error500", "html", "truncated", "ok"]) as server:
        judge = _judge(server.url, max_retries=3)
        failed = judge.judge("p", "r", "l")
        after = judge.judge("p", "r", "l")
    assert failed.parse_status == "error" and failed.attempts is None and failed.tries == 3
    assert [e.split(":")[0] for e in failed.errors] == ["backend error"] * 3
    assert "HTTP 500" in failed.errors[0] and "non-JSON" in failed.errors[1] and "truncated reply" in failed.errors[2]
    assert failed.error == failed.errors[-1]
    assert after.parse_status == "ok" and after.errors == [] and after.tries == 1


def test_backoff_is_exponential():
    with FaultyServer(["error500", "error500", "ok"]) as server:
        result = _judge(server.url, retry_backoff=0.2).judge("p", "r", "l")
    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:])]
    assert result.parse_status == "ok" and result.tries == 3
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # 0.2 * 2**0, then 0.2 * 2**1


def test_retry_after_is_honoured_instead_of_the_backoff():
    with FaultyServer(["ratelimit:0.5", "ok"]) as server:
        result = _judge(server.url, retry_backoff=0.0).judge("p", "r", "l")
    assert result.parse_status == "ok" and result.tries == 2
    assert server.arrivals[1] - server.arrivals[0] >= 0.5
    assert "HTTP 429" in result.errors[0]


def test_retry_after_is_capped(monkeypatch):
    monkeypatch.setattr(judge_base, "MAX_RETRY_AFTER", 0.3)
    with FaultyServer(["ratelimit:3600", "ok"]) as server:
        result = _judge(server.url, timeout=5).judge("p", "r", "l")
    assert result.parse_status == "ok" and result.tries == 2
    gap = server.arrivals[1] - server.arrivals[0]
    assert 0.3 <= gap < 3  # waited the cap, not an hour


def test_a_retry_after_beyond_the_budget_ends_the_judgment_without_waiting():
    with FaultyServer(["ratelimit:30", "ok"]) as server:
        result = _judge(server.url, timeout=1.0).judge("p", "r", "l")
    assert result.parse_status == "error" and result.tries == 1 and len(server.arrivals) == 1
    assert result.errors[-1] == "time budget of 1 s spent; no further try"
    assert result.latency_ms < 1000


def test_a_hung_judge_costs_at_most_its_time_budget():
    with FaultyServer(["hang:4"]) as server:
        result = _judge(server.url, timeout=1.0, max_retries=3).judge("p", "r", "l")
    assert result.parse_status == "error"
    assert result.tries == 1  # the hang used the whole budget, so no second try started
    assert "timed out" in result.errors[0] or "cannot reach" in result.errors[0]
    assert result.errors[-1] == "time budget of 1 s spent; no further try"
    assert result.latency_ms < 2500  # the budget (1 s) plus scheduling slack, far below the 4 s hang


def test_a_trickling_reply_cannot_stretch_the_budget():
    with FaultyServer(["trickle"]) as server:
        result = _judge(server.url, timeout=1.0).judge("p", "r", "l")
    assert result.parse_status == "error" and result.tries == 1
    assert "still arriving when the time budget ran out" in result.errors[0]
    assert result.latency_ms < 2500  # the whole body would take ~20 s


def test_connection_refused_is_retried_and_recorded():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _judge(f"http://127.0.0.1:{port}/v1", max_retries=3).judge("p", "r", "l")
    assert result.parse_status == "error" and result.tries == 3 and len(result.errors) == 3
    assert all("cannot reach http://127.0.0.1" in e and "refused" in e.lower() for e in result.errors), result.errors


def test_an_auth_failure_is_not_retried():
    with FaultyServer(["unauthorized", "ok"]) as server:
        result = _judge(server.url).judge("p", "r", "l")
    assert result.tries == 1 and len(server.arrivals) == 1 and "HTTP 401" in result.error


def test_parse_retry_after_forms():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert 0 < parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 61


class _Scripted(Judge):
    """A judge whose backend is a Python list: replies (str) or exceptions to raise."""

    backend = "scripted"

    def __init__(self, script, *, deterministic=False, **kw):
        super().__init__(model="scripted", retry_backoff=0, **kw)
        self.script = list(script)
        self.calls = 0
        self.deterministic = deterministic

    def _complete(self, system, user, timeout):
        self.calls += 1
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


def test_programming_errors_propagate_instead_of_being_recorded_as_backend_errors():
    judge = _Scripted([TypeError("unsupported operand"), GOOD])
    with pytest.raises(TypeError, match="unsupported operand"):
        judge.judge("p", "r", "l")
    with pytest.raises(AttributeError):
        _Scripted([AttributeError("'NoneType' object has no attribute 'x'")]).judge("p", "r", "l")


def test_a_deterministic_judge_is_not_retried_on_a_parse_failure():
    det = _Scripted(["no json here", GOOD], deterministic=True)
    result = det.judge("p", "r", "l")
    assert result.parse_status == "error" and result.tries == 1 and det.calls == 1
    sampled = _Scripted(["no json here", GOOD], deterministic=False)
    assert sampled.judge("p", "r", "l").parse_status == "ok" and sampled.calls == 2


def test_complete_returns_raw_text_and_retries_transient_failures():
    with FaultyServer(["error500", "ok"]) as server:
        judge = _judge(server.url)
        text = judge.complete("Rate this label.", "volcanoes")
    assert text == GOOD
    assert server.bodies[1]["messages"] == [{"role": "system", "content": "Rate this label."},
                                            {"role": "user", "content": "volcanoes"}]
    with FaultyServer(["error500"]) as server:
        with pytest.raises(BackendError, match=r"failed 2 time\(s\).*HTTP 500"):
            _judge(server.url, max_retries=2).complete("s", "u")


def test_anthropic_overload_with_retry_after_and_a_wrongly_typed_block_are_retried():
    with FaultyServer(["overloaded:0.3", "atext", "aerrstr", "aok"]) as server:
        judge = make_judge("anthropic", api_key="k-test", base_url=server.url, retry_backoff=0.01, timeout=10,
                           max_retries=4)
        result = judge.judge("p", "r", "l")
    assert result.parse_status == "ok" and result.tries == 4
    assert "HTTP 529" in result.errors[0] and "Overloaded" in result.errors[0]
    assert "text is not a string" in result.errors[1]
    assert result.errors[2] == "backend error: Anthropic API error: upstream overloaded"  # was an AttributeError
    assert server.arrivals[1] - server.arrivals[0] >= 0.3
