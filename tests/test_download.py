"""fetch_url against a real HTTP server on 127.0.0.1: resume by Range, size/sha256 checks, offline mode."""

from __future__ import annotations

import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from esr_local.download import DownloadError, fetch_url, is_offline
from esr_local.errors import MissingResourceError, UserInputError

BODY = bytes(range(256)) * 800  # 204,800 bytes, not a multiple of the chunk size
SHA = hashlib.sha256(BODY).hexdigest()


class FileServer:
    """Serves BODY at /file.bin with Range support; `cut_after` makes the next N replies stop early."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.cut_after: list[int] = []  # bytes to send before dropping, one entry per reply
        self.ignore_range = False
        self.body = BODY
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if self.path != "/file.bin":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, start = owner.body, 0
                rng = self.headers.get("Range")
                if rng and not owner.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                data = body[start:]
                if owner.cut_after:
                    data = data[: owner.cut_after.pop(0)]
                    self.wfile.write(data)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/file.bin"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def server():
    with FileServer() as s:
        yield s


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    monkeypatch.delenv("ESR_LOCAL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_downloads_verifies_and_leaves_no_part_file(server, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    assert fetch_url(server.url, dest, sha256=SHA, size=len(BODY), progress=False) == dest
    assert dest.read_bytes() == BODY
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin", "file.bin.lock"]
    # a second call is served from the file: no request at all
    fetch_url(server.url, dest, sha256=SHA, progress=False)
    assert len(server.requests) == 1


def test_a_full_disk_is_one_clear_error_not_a_traceback(server, tmp_path, monkeypatch):
    import errno
    import os

    from esr_local import download

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(download.os, "fsync", full)
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="cannot write .*file.bin.part: No space left on device") as info:
        fetch_url(server.url, dest, sha256=SHA, progress=False)
    assert "\n" not in str(info.value) and not dest.exists() and len(server.requests) == 1  # not retried


def test_an_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    server.cut_after = [50_000, 70_000]  # two replies cut short, the third completes
    dest = tmp_path / "file.bin"
    fetch_url(server.url, dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY
    assert [r["range"] for r in server.requests] == [None, "bytes=50000-", "bytes=120000-"]


def test_a_part_file_left_by_an_earlier_process_is_resumed(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(BODY[:123_456])
    fetch_url(server.url, dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY
    assert server.requests == [{"path": "/file.bin", "range": "bytes=123456-"}]


def test_a_server_that_ignores_range_restarts_the_file(server, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"garbage that must not be kept")
    fetch_url(server.url, dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY


def test_a_complete_part_file_is_finished_on_416(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(BODY)
    fetch_url(server.url, dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY and server.requests[0]["range"] == f"bytes={len(BODY)}-"


def test_too_many_interruptions_keep_the_part_for_a_later_resume(server, tmp_path):
    server.cut_after = [10_000, 10_000]
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match=r"did not complete after 2 tries.*20000 bytes are kept"):
        fetch_url(server.url, dest, sha256=SHA, progress=False, tries=2)
    assert not dest.exists() and (tmp_path / "file.bin.part").stat().st_size == 20_000
    fetch_url(server.url, dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY and server.requests[-1]["range"] == "bytes=20000-"


def test_a_hash_mismatch_removes_the_part_file_and_says_tampered(server, tmp_path):
    server.body = BODY[:-1] + b"\x00"
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="tampered or truncated download") as info:
        fetch_url(server.url, dest, sha256=SHA, progress=False)
    assert SHA in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()


def test_a_size_mismatch_is_refused(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match=f"{len(BODY)} bytes instead of {len(BODY) + 1}"):
        fetch_url(server.url, dest, size=len(BODY) + 1, progress=False)
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()


def test_a_cached_file_that_no_longer_matches_is_fetched_again(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"stale")
    fetch_url(server.url, dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == BODY and len(server.requests) == 1


def test_http_404_is_one_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_url(server.url.replace("file.bin", "nope.bin"), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_unreachable_host_after_tries(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1"):
        fetch_url(f"http://127.0.0.1:{port}/f", tmp_path / "f", progress=False, tries=2)


def test_offline_never_touches_the_network(server, tmp_path, monkeypatch):
    dest = tmp_path / "file.bin"
    monkeypatch.setenv("ESR_LOCAL_OFFLINE", "1")
    assert is_offline()
    with pytest.raises(MissingResourceError, match=rf"not available offline.*{server.url}.*save it as {dest}"):
        fetch_url(server.url, dest, sha256=SHA, progress=False)
    assert server.requests == [] and not dest.exists()
    dest.write_bytes(BODY)
    assert fetch_url(server.url, dest, sha256=SHA, progress=False) == dest
    assert server.requests == []
    monkeypatch.delenv("ESR_LOCAL_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingResourceError):
        fetch_url(server.url, tmp_path / "other.bin", progress=False)
    assert server.requests == []
    # the explicit argument wins over the environment
    fetch_url(server.url, tmp_path / "other.bin", progress=False, offline=False)
    assert len(server.requests) == 1


def test_non_http_urls_are_refused(tmp_path):
    with pytest.raises(UserInputError, match="http:// or https://"):
        fetch_url("file:///etc/passwd", tmp_path / "p")


def test_progress_is_a_line_at_start_and_end_when_not_a_terminal(server, tmp_path, capsys):
    fetch_url(server.url, tmp_path / "file.bin", progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err == ["downloading file.bin (0.2 MB)", "downloaded file.bin: 0.2 MB"]


def test_progress_on_a_terminal_rewrites_one_line(server, tmp_path):
    from esr_local.download import _Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    meter = _Progress("f", enabled=True, stream=out)
    meter.start(0, 1_000_000)
    meter.advance(500_000)
    meter.done()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and "50%" in text and text.count("\r") == 3
