"""Judge backends against real parts: llama.cpp in-process on SmolLM2, llama-cpp-python's
OpenAI-compatible server on 127.0.0.1, and stdlib HTTP servers on 127.0.0.1 replaying OpenAI-style
and recorded-shape Anthropic replies."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from esr_local.errors import UserInputError
from esr_local.judge import Attempt, Judgment, build_judge_messages, make_judge
from esr_local.judge.rubric import SYSTEM_PROMPT

RECORDED = Path(__file__).parent / "fixtures" / "anthropic_recorded"
KEY = "sk-test-0123456789abcdef-secret"

PROMPT = "How do you fold a fitted sheet?"
LABEL = "volcanoes and lava"
RESTART_RESPONSE = (
    "Volcanoes form where magma reaches the surface, and their lava builds cones over time. "
    "Wait, that's not what you asked. Let me try again. To fold a fitted sheet, tuck one corner "
    "into the next, then lay it flat and fold it into thirds."
)
PLAIN_RESPONSE = "Tuck each corner into the next one, lay the sheet flat, square the edges and fold it into thirds."

ENV_VARS = (
    "ESR_JUDGE_BASE_URL",
    "ESR_JUDGE_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
)


@pytest.fixture(autouse=True)
def _clean_judge_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_judgment(j: Judgment) -> None:
    assert isinstance(j, Judgment)
    assert isinstance(j.attempts, list)
    for a in j.attempts:
        assert isinstance(a, Attempt)
        assert a.text.strip()
        assert a.score is None or 0 <= a.score <= 100


# --- a scripted HTTP server on 127.0.0.1 ------------------------------------------------------


class ReplayServer:
    """Answers each POST with the next (status, JSON body) and records what it received."""

    def __init__(self, replies: list[tuple[int, dict]]):
        self.replies = list(replies)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                outer.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                status, payload = outer.replies.pop(0)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> ReplayServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _openai_reply(text: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "judge-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


TWO_ATTEMPTS = (
    'Drifted, then recovered.\n<json>{"attempts": [{"attempt_text": "Volcanoes form where magma '
    'reaches the surface", "score": 0}, {"attempt_text": "To fold a fitted sheet, tuck one corner", '
    '"score": 80}]}</json>'
)


# --- make_judge ---------------------------------------------------------------------------------


def test_unknown_and_incomplete_specs_are_user_errors():
    with pytest.raises(UserInputError, match="unknown judge spec"):
        make_judge("gpt4")
    with pytest.raises(UserInputError, match="openai:"):
        make_judge("openai")
    with pytest.raises(UserInputError, match="ESR_JUDGE_API_KEY"):
        make_judge("openai:gpt-4o-mini")  # the real OpenAI API without a key
    with pytest.raises(UserInputError, match="json_mode"):
        make_judge("openai:x", base_url="http://127.0.0.1:9/v1", json_mode="yaml")
    with pytest.raises(UserInputError, match="grammar-constrained"):
        make_judge("local", json_mode="json_schema")


def test_anthropic_without_key_names_the_variable():
    with pytest.raises(UserInputError, match="ANTHROPIC_API_KEY"):
        make_judge("anthropic")


def test_openai_settings_from_environment_and_describe_has_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://ignored:1/v1")
    monkeypatch.setenv("ESR_JUDGE_BASE_URL", "http://user:pw@127.0.0.1:8000/v1/?token=abc")
    monkeypatch.setenv("ESR_JUDGE_API_KEY", KEY)
    judge = make_judge("openai:qwen/qwen3-32b", restart_gating=True)
    info = judge.describe()
    assert info["backend"] == "openai"
    assert info["model"] == "qwen/qwen3-32b"
    assert info["base_url"] == "http://127.0.0.1:8000/v1"
    assert info["restart_gating"] is True
    assert info["temperature"] is None and info["max_tokens"] == 4096
    from esr_local.judge import DEFAULT_RUBRIC

    assert info["rubric_id"] == "esr-local-2" and info["rubric_sha256"] == DEFAULT_RUBRIC.sha256
    assert info["rubric_version"] == f"esr-local-2+{DEFAULT_RUBRIC.sha256[:8]}"
    assert info["timeout"] == 60.0 and info["deterministic"] is False
    assert KEY not in json.dumps(info) and "pw" not in json.dumps(info) and KEY not in repr(judge)


# --- OpenAI-compatible protocol against a scripted server ---------------------------------------


def test_openai_retries_server_error_and_sends_key_without_logging_it(caplog, capsys):
    caplog.set_level(logging.DEBUG)
    replies = [(500, {"error": {"message": "temporary failure"}}), (200, _openai_reply(TWO_ATTEMPTS))]
    with ReplayServer(replies) as server:
        judge = make_judge("openai:judge-model", base_url=server.url + "/v1", api_key=KEY, retry_backoff=0)
        result = judge.judge(PROMPT, RESTART_RESPONSE, LABEL)
    assert result.parse_status == "ok" and result.error is None
    assert result.tries == 2
    assert [(a.text, a.score) for a in result.attempts] == [
        ("Volcanoes form where magma reaches the surface", 0.0),
        ("To fold a fitted sheet, tuck one corner", 80.0),
    ]
    assert result.n_attempts_raw == 2 and result.raw_output == TWO_ATTEMPTS
    system, user = build_judge_messages(PROMPT, RESTART_RESPONSE, LABEL)
    for req in server.requests:
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["authorization"] == f"Bearer {KEY}"
        assert req["body"] == {
            "model": "judge-model",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": 4096,
        }
    out = capsys.readouterr()
    everything = json.dumps(result.to_dict()) + out.out + out.err + caplog.text + repr(judge)
    assert KEY not in everything


def test_openai_auth_failure_is_not_retried_and_echoed_key_is_masked():
    replies = [(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})] * 3
    with ReplayServer(replies) as server:
        judge = make_judge("openai:m", base_url=server.url + "/v1", api_key=KEY, retry_backoff=0)
        result = judge.judge(PROMPT, PLAIN_RESPONSE, LABEL)
    assert result.parse_status == "error" and result.attempts is None and result.n_attempts_raw is None
    assert result.tries == 1 and len(server.requests) == 1
    assert "HTTP 401" in result.error and "***" in result.error and KEY not in result.error


def test_parse_failure_is_retried_and_unparseable_reply_is_kept():
    replies = [(200, _openai_reply(f"I think it deserves {n}.")) for n in (70, 75, 80)]
    with ReplayServer(replies) as server:
        judge = make_judge("openai:m", base_url=server.url + "/v1", retry_backoff=0)
        result = judge.judge(PROMPT, PLAIN_RESPONSE, LABEL)
    assert result.parse_status == "error"
    assert result.tries == 3 and len(server.requests) == 3
    assert result.raw_output == "I think it deserves 80."
    assert result.error.startswith("parse error") and len(result.errors) == 3


def test_an_identical_unparseable_reply_is_not_asked_for_a_third_time():
    replies = [(200, _openai_reply("I think it deserves 80."))] * 3
    with ReplayServer(replies) as server:
        judge = make_judge("openai:m", base_url=server.url + "/v1", retry_backoff=0)
        result = judge.judge(PROMPT, PLAIN_RESPONSE, LABEL)
    assert result.parse_status == "error" and result.tries == 2 and len(server.requests) == 2
    assert "authorization" not in server.requests[0]["headers"]  # no key configured: none sent


def test_unreachable_server_is_recorded_after_max_retries():
    port = _free_port()  # nothing listens there
    judge = make_judge("openai:m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, retry_backoff=0, timeout=5)
    result = judge.judge(PROMPT, PLAIN_RESPONSE, LABEL)
    assert result.parse_status == "error" and result.tries == 2 and result.raw_output == ""
    assert "cannot reach" in result.error


def test_restart_gating_merges_an_invented_split():
    reply = (
        '<json>{"attempts": [{"attempt_text": "Tuck each corner into the next one", "score": 60},'
        ' {"attempt_text": "square the edges and fold it into thirds.", "score": 95}]}</json>'
    )
    with ReplayServer([(200, _openai_reply(reply))] * 2) as server:
        url = server.url + "/v1"
        raw = make_judge("openai:m", base_url=url).judge(PROMPT, PLAIN_RESPONSE, LABEL)
        gated = make_judge("openai:m", base_url=url, restart_gating=True).judge(PROMPT, PLAIN_RESPONSE, LABEL)
    assert len(raw.attempts) == 2 and raw.n_attempts_raw == 2
    assert gated.n_attempts_raw == 2 and len(gated.attempts) == 1
    assert gated.attempts[0].score == 60.0


def test_json_schema_mode_sends_response_format_and_parses_a_bare_object():
    bare = '{"attempts": [{"attempt_text": "Tuck each corner", "score": 88}]}'
    with ReplayServer([(200, _openai_reply(bare))]) as server:
        judge = make_judge("openai:m", base_url=server.url + "/v1", json_mode="json_schema", temperature=0)
        result = judge.judge(PROMPT, PLAIN_RESPONSE, LABEL)
    body = server.requests[0]["body"]
    assert body["temperature"] == 0
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["attempts"]
    assert [(a.text, a.score) for a in result.attempts] == [("Tuck each corner", 88.0)]


# --- Anthropic Messages API, replaying recorded-shape replies -----------------------------------


def _recorded(name: str) -> dict:
    return json.loads((RECORDED / name).read_text())


def test_anthropic_request_shape_retry_and_parsed_attempts():
    replies = [(529, _recorded("overloaded_529.json")), (200, _recorded("two_attempts.json"))]
    with ReplayServer(replies) as server:
        judge = make_judge("anthropic", base_url=server.url, api_key=KEY, restart_gating=True, retry_backoff=0)
        result = judge.judge(PROMPT, RESTART_RESPONSE, LABEL)
    assert result.parse_status == "ok" and result.tries == 2
    assert [(a.text, a.score) for a in result.attempts] == [
        ("Volcanoes form where magma reaches the surface, and their lava builds cones over time.", 0.0),
        ("To fold a fitted sheet, tuck one corner into the next, then lay it flat and fold it into thirds.", 75.0),
    ]
    assert result.n_attempts_raw == 2  # the restart is real, so gating keeps both
    _, user = build_judge_messages(PROMPT, RESTART_RESPONSE, LABEL)
    for req in server.requests:
        assert req["path"] == "/v1/messages"
        assert req["headers"]["x-api-key"] == KEY
        assert req["headers"]["anthropic-version"] == "2023-06-01"
        assert req["headers"]["content-type"] == "application/json"
        assert req["body"] == {
            "model": "claude-haiku-4-5-20251001",
            "max_tokens": 4096,
            "system": SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": user}],
        }
    info = judge.describe()
    assert info["backend"] == "anthropic" and info["model"] == "claude-haiku-4-5-20251001"
    assert KEY not in json.dumps(info) and KEY not in json.dumps(result.to_dict())


def test_anthropic_settings_from_environment_and_empty_attempt_list(monkeypatch):
    with ReplayServer([(200, _recorded("no_attempt.json"))]) as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url + "/v1/")  # trailing /v1 is tolerated
        judge = make_judge("anthropic:claude-sonnet-4-5-20250929", temperature=0.0)
        result = judge.judge("How do you tie a knot?", "Which knot do you mean?", LABEL)
    assert result.parse_status == "ok" and result.attempts == [] and result.n_attempts_raw == 0
    req = server.requests[0]
    assert req["path"] == "/v1/messages"
    assert req["body"]["model"] == "claude-sonnet-4-5-20250929" and req["body"]["temperature"] == 0.0


# --- in-process llama.cpp judge on the embedded SmolLM2 -----------------------------------------


@pytest.fixture(scope="module")
def local_judge():
    judge = make_judge("local", seed=0)
    yield judge
    judge.close()


def test_local_judge_returns_grammar_constrained_attempts(local_judge):
    first = local_judge.judge(PROMPT, PLAIN_RESPONSE, LABEL)
    local_judge.restart_gating = True
    try:
        second = local_judge.judge(PROMPT, RESTART_RESPONSE, LABEL)
    finally:
        local_judge.restart_gating = False
    for result in (first, second):
        assert result.parse_status == "ok", result.error
        assert result.tries == 1 and result.error is None
        assert "<json>" in result.raw_output and result.raw_output.endswith("</json>")
        _check_judgment(result)
    assert first.n_attempts_raw == len(first.attempts)
    assert len(second.attempts) <= second.n_attempts_raw
    info = local_judge.describe()
    assert info["backend"] == "local" and info["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert info["temperature"] == 0.0 and info["constraint"] == "gbnf"


def test_local_judge_always_finds_an_attempt_in_a_non_blank_response(local_judge):
    # The grammar demands at least one attempt (the rubric grades even nonsense); only a blank
    # response has none, and that answer needs no model call.
    result = local_judge.judge(PROMPT, "Lava lava lava, the mountain sleeps in its ash.", LABEL)
    assert result.parse_status == "ok" and len(result.attempts) >= 1
    assert all(a.score is not None for a in result.attempts)
    blank = local_judge.judge(PROMPT, "   \n", LABEL)
    assert (blank.attempts, blank.tries, blank.parse_status) == ([], 0, "ok")


def test_local_judge_records_a_response_too_long_for_its_context(local_judge):
    result = local_judge.judge(PROMPT, "Fold the sheet again. " * 1500, LABEL)
    assert result.parse_status == "error" and result.tries == 1 and result.raw_output == ""
    assert "n_ctx=4096" in result.error


def test_local_judge_rejects_missing_model_file(tmp_path):
    from esr_local.errors import MissingResourceError

    with pytest.raises(MissingResourceError, match="not found"):
        make_judge(f"local:{tmp_path / 'nope.gguf'}")


# --- llama-cpp-python's OpenAI-compatible server serving SmolLM2 ---------------------------------


@pytest.fixture(scope="module")
def llama_server(smollm2_path, tmp_path_factory):
    import uvicorn  # noqa: F401  llama-cpp-python[server], in the test extra: a missing server fails, never skips
    port = _free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(smollm2_path), "--model_alias", "smollm2",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--api_key", KEY,
    ]  # fmt: skip
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                req = urllib.request.Request(url + "/models", headers={"Authorization": f"Bearer {KEY}"})
                with urllib.request.urlopen(req, timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_llama_server_with_grammar_gives_parseable_judgment(llama_server):
    judge = make_judge("openai:smollm2", base_url=llama_server, api_key=KEY, json_mode="gbnf", temperature=0,
                       timeout=600)  # a real CPU server: the 60 s default budget is not a test of it on a loaded machine
    result = judge.judge(PROMPT, RESTART_RESPONSE, LABEL)
    assert result.parse_status == "ok", result.error
    assert result.tries == 1 and "<json>" in result.raw_output
    _check_judgment(result)


def test_llama_server_free_text_records_outcome_without_raising(llama_server):
    judge = make_judge(
        "openai:smollm2", base_url=llama_server, api_key=KEY, temperature=0, max_tokens=48,
        max_retries=2, retry_backoff=0,
    )  # fmt: skip
    result = judge.judge(PROMPT, PLAIN_RESPONSE, LABEL)
    # Greedy SmolLM2 without a grammar does not write the JSON in 48 tokens (deterministic at temperature 0):
    # the failure is recorded after both tries, not raised.
    assert result.parse_status == "error" and result.attempts is None, result.raw_output
    assert result.tries == 2 and result.raw_output and result.error.startswith("parse error")


def test_llama_server_rejects_a_wrong_key_without_retrying(llama_server):
    wrong = "sk-wrong-key-987654321"
    judge = make_judge("openai:smollm2", base_url=llama_server, api_key=wrong, retry_backoff=0)
    result = judge.judge(PROMPT, PLAIN_RESPONSE, LABEL)
    assert result.parse_status == "error" and result.tries == 1
    assert "HTTP 401" in result.error and wrong not in result.error
