"""A real OpenAI-compatible judge on 127.0.0.1 for the run tests: deterministic verdicts from the
response text, with switchable faults (HTTP 500 for chosen responses, a delay per request)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def verdict(response: str, model: str = "") -> str:
    """The judge's reply for a response: one or two attempts with scores derived from its hash (a model
    whose name ends in "-b" salts the hash, so two judges disagree on some responses)."""
    salt = "b:" if model.endswith("-b") else ""
    h = int(hashlib.sha256((salt + response).encode()).hexdigest(), 16)
    words = response.split()
    if h % 3 == 0 and len(words) > 3:
        half = len(words) // 2
        attempts = [{"attempt": " ".join(words[:half]), "score": h % 40},
                    {"attempt": " ".join(words[half:]), "score": 40 + h % 60}]
    else:
        attempts = [{"attempt": response or "(empty)", "score": h % 101}]
    return "<json>" + json.dumps({"attempts": attempts}) + "</json>"


def fails(response: str) -> bool:
    """The responses a `fail_half` server refuses (about half, fixed by the text)."""
    return int(hashlib.sha256(response.encode()).hexdigest(), 16) % 2 == 0


def _response_of(user: str) -> str:
    """The judged response: the text after the LAST "Response: " line, up to the label line."""
    tail = user[user.rfind("Response: ") + len("Response: "):]
    return re.split(r"\nUnrelated (?:feature|topic): ", tail)[0].strip()


class JudgeServer:
    """`with JudgeServer() as js: js.url` -> base URL for `--judge openai:test --judge-base-url URL`."""

    def __init__(self, *, fail_half: bool = False, delay_s: float = 0.0):
        self.fail_half, self.delay_s = fail_half, delay_s
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                user = body["messages"][-1]["content"]
                response = _response_of(user)
                if server.delay_s:
                    threading.Event().wait(server.delay_s)
                if server.fail_half and fails(response):
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Retry-After", "0")  # retried at once: no backoff sleeps in the tests
                    self.end_headers()
                    self.wfile.write(b'{"error": "judge overloaded"}')
                    return
                out = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict(response, body.get('model', ''))}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def judge_args(self) -> list[str]:
        return ["--judge", "openai:test-judge", "--judge-base-url", self.url, "--skip-judge-check"]
