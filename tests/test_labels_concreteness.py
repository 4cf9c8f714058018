"""Concreteness ratings through a real judge backend (OpenAI-compatible) against an HTTP server on
127.0.0.1: batches of 50, the on-disk cache per judge model, and a batch whose reply is unreadable."""

from __future__ import annotations

import http.server
import json
import re
import threading

import pytest

from esr_local.concreteness import parse_reply, rate_labels
from esr_local.judge import make_judge


@pytest.fixture()
def rating_server():
    """Rates each label 90 if it names an animal word, else 10; replies garbage when a label says 'garble'."""
    seen: list[list[str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            user = body["messages"][-1]["content"]
            labels = [json.loads(m) for m in re.findall(r"^\d+\. (\".*\")$", user, re.MULTILINE)]
            seen.append(labels)
            if any("garble" in lab for lab in labels):
                content = "I cannot rate these."
            else:
                content = json.dumps([{"label": lab, "rating": 90 if re.search(r"cat|dog|whale", lab) else 10}
                                      for lab in labels])
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


def test_batches_cache_and_unreadable_batch(rating_server):
    url, seen = rating_server
    judge = make_judge("openai:rater-1", base_url=url, max_retries=1)
    labels = [f"cats number {i}" for i in range(60)] + [f"abstract idea {i}" for i in range(60)]
    first = rate_labels(judge, labels + labels[:5])  # duplicates are rated once
    assert [len(b) for b in seen] == [50, 50, 20]
    assert first.rated_now == 120 and first.cached == 0 and not first.errors
    assert first.scores["cats number 7"] == 90 and first.scores["abstract idea 7"] == 10
    again = rate_labels(judge, labels[:10] + ["a dog show"])
    assert again.cached == 10 and again.rated_now == 1
    assert seen[-1] == ["a dog show"] and again.scores["a dog show"] == 90
    # Another judge model does not share the cache.
    other = make_judge("openai:rater-2", base_url=url, max_retries=1)
    assert rate_labels(other, ["cats number 1"]).rated_now == 1
    # An unreadable batch scores 0 for all its labels, is reported, and is not cached.
    bad = rate_labels(judge, ["garble this", "whale song"])
    assert bad.scores == {"garble this": 0.0, "whale song": 0.0} and len(bad.errors) == 1
    n = len(seen)
    assert rate_labels(judge, ["whale song"]).scores["whale song"] == 90
    assert len(seen) == n + 1


def test_parse_reply_forms():
    assert parse_reply('Sure: [{"label": "b", "rating": 70}, {"label": "a", "rating": 140}]', ["a", "b"]) == [100.0, 70.0]
    assert parse_reply("[12, 80]", ["x", "y"]) == [12.0, 80.0]
    with pytest.raises(ValueError):
        parse_reply('[{"label": "a", "rating": "high"}]', ["a"])
    with pytest.raises(ValueError):
        parse_reply("[1, 2, 3]", ["a"])
