"""Latent labels: Neuronpedia exports downloaded from a real HTTP server on 127.0.0.1 (Neuronpedia's
layout), read offline afterwards; placeholders; search; the run-side check; the shipped labels."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from esr_local.errors import MissingResourceError, UserInputError
from esr_local.latent_labels import (
    all_labels,
    attach_catalog_labels,
    check_labelled,
    is_placeholder,
    search_labels,
)
from esr_local.paths import shipped_vectors_dir
from esr_local.saes import load_sae
from esr_local.saes.neuronpedia import cache_folder, download_explanations

NP_ID = "tiny-model/3-test-res-16"


def _batch(records) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())


@pytest.fixture()
def neuronpedia_server(monkeypatch):
    """Serves /v1/tiny-model/3-test-res-16/explanations/batch-{0,1}.jsonl.gz; 404 for anything else."""
    files = {
        "/v1/tiny-model/3-test-res-16/explanations/batch-0.jsonl.gz": _batch(
            [{"index": "0", "description": "cats and kittens", "modelId": "tiny-model"},
             {"index": 1, "description": "feature_1"},
             {"index": 2, "description": " the French word for bread "}]),
        "/v1/tiny-model/3-test-res-16/explanations/batch-1.jsonl.gz": _batch(
            [{"index": 3, "description": "volcanic eruptions"}, {"index": 5, "description": ""},
             {"index": 2, "description": "a later duplicate that must not win"}]),
    }
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requests.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ESR_LOCAL_NEURONPEDIA_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("ESR_LOCAL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield requests
    server.shutdown()
    server.server_close()


def _tiny_sae(folder: Path, d_sae: int = 6, d_model: int = 4) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    save_file({"W_enc": rng.normal(size=(d_model, d_sae)).astype(np.float32),
               "W_dec": rng.normal(size=(d_sae, d_model)).astype(np.float32),
               "b_enc": np.zeros(d_sae, np.float32), "b_dec": np.zeros(d_model, np.float32)},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": d_model, "d_sae": d_sae,
        "metadata": {"hook_name": "blocks.3.hook_resid_post", "neuronpedia_id": NP_ID}}))
    return folder


def test_neuronpedia_download_then_offline(neuronpedia_server, tmp_path, monkeypatch, capsys):
    folder = download_explanations(NP_ID, progress=True)
    assert folder == cache_folder(NP_ID)
    names = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))  # fetch_url's lock files
    assert names == ["batch-0.jsonl.gz", "batch-1.jsonl.gz", "complete.json"]
    assert neuronpedia_server == [f"/v1/{NP_ID}/explanations/batch-{i}.jsonl.gz" for i in range(3)]
    assert "batch 1" in capsys.readouterr().err  # progress on stderr
    # The SAE names its Neuronpedia id; with no labels file it gets the cached export.
    sae = attach_catalog_labels(load_sae(str(_tiny_sae(tmp_path / "sae"))), None, explicit=False)
    assert all_labels(sae) == {0: "cats and kittens", 1: "feature_1", 2: "the French word for bread",
                               3: "volcanic eruptions"}
    # A second call uses the cache: no request, and it works offline.
    monkeypatch.setenv("ESR_LOCAL_OFFLINE", "1")
    assert download_explanations(NP_ID) == folder
    assert len(neuronpedia_server) == 3


def test_neuronpedia_offline_without_cache_and_unknown_id(neuronpedia_server, monkeypatch):
    with pytest.raises(MissingResourceError, match="not found"):
        download_explanations("tiny-model/does-not-exist", progress=False)
    monkeypatch.setenv("ESR_LOCAL_OFFLINE", "1")
    with pytest.raises(MissingResourceError, match="offline"):
        download_explanations(NP_ID, progress=False)
    assert not any("batch-0" in r and NP_ID in r for r in neuronpedia_server)
    with pytest.raises(UserInputError, match="MODEL/SOURCE"):
        download_explanations("../etc/passwd", progress=False)


def test_explicit_labels_win_over_the_catalog(neuronpedia_server, tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("index_in_sae,label\n0,my own label\n", encoding="utf-8")
    sae = load_sae(str(_tiny_sae(tmp_path / "sae")), labels=csv)
    assert attach_catalog_labels(sae, None, explicit=True).label(0) == "my own label"
    assert neuronpedia_server == []


def test_placeholders_search_and_run_check():
    assert is_placeholder(None) and is_placeholder("  ") and is_placeholder("feature_1234")
    assert is_placeholder("Latent 7") and is_placeholder("feature 3")
    assert not is_placeholder("feature engineering in pandas") and not is_placeholder("cats")
    labels = {0: "Cats and kittens", 1: "feature_1", 2: "kittens playing with cats", 3: "catalogue numbers",
              4: "dogs"}
    got = [(m.latent, m.how) for m in search_labels(labels, "cat")]
    assert got == [(0, "substring"), (2, "substring"), (3, "substring")]
    assert [(m.latent, m.how) for m in search_labels(labels, "cats kittens")] == [(0, "words"), (2, "words")]
    assert search_labels(labels, "feature") == []  # placeholders never match
    with pytest.raises(UserInputError, match="search"):
        search_labels(labels, "  ")
    assert check_labelled(labels, [0, 2], allow_unlabelled=False) == {"unlabelled": [], "allowed": False}
    with pytest.raises(UserInputError, match=r"2 latent\(s\) have no label \(1, 9\)"):
        check_labelled(labels, [0, 1, 9], allow_unlabelled=False)
    assert check_labelled(labels, [1, 9, 0], allow_unlabelled=True) == {"unlabelled": [1, 9], "allowed": True}


def test_shipped_dictionary_labels_and_search():
    sae = load_sae(str(shipped_vectors_dir() / "smollm2-135m-concepts"))
    labels = all_labels(sae)
    assert len(labels) == sae.d_sae == 38
    assert [m.latent for m in search_labels(labels, "volcano")] == [3]
