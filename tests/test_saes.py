"""SAE loaders on real files in each on-disk layout: exact decoder rows, norms, metadata, labels, encoding,
bad inputs, and `hf://` resolution through huggingface_hub against a fake (but exactly laid out) hub cache."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from esr_local.errors import FormatError, MissingResourceError, UserInputError
from esr_local.saes import Sae, SaeInfo, load_sae, parse_source

FIXTURES = Path(__file__).parent / "fixtures"
REPO_ROOT = Path(__file__).resolve().parents[1]
D_MODEL, D_SAE = 16, 40


def _weights(seed: int, d_model: int = D_MODEL, d_sae: int = D_SAE) -> dict[str, np.ndarray]:
    """SAELens-orientation weights with a clearly non-zero b_dec."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_model, d_sae)).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, d_model)).astype(np.float32),
        "b_enc": (rng.normal(size=d_sae) * 0.5).astype(np.float32),
        "b_dec": (rng.normal(size=d_model) + 3.0).astype(np.float32),
        "threshold": np.abs(rng.normal(size=d_sae)).astype(np.float32),
    }


def _jumprelu_ref(h, w, idx, subtract_b_dec=False):
    x = h.astype(np.float64) - (w["b_dec"] if subtract_b_dec else 0)
    pre = x @ w["W_enc"][:, idx].astype(np.float64) + w["b_enc"][idx]
    return np.where(pre > w["threshold"][idx], np.maximum(pre, 0), 0)


def _assert_rows(sae: Sae, w_dec: np.ndarray) -> None:
    """Every decoder row equals W_dec[i] exactly, and never includes b_dec."""
    for i in range(w_dec.shape[0]):
        row = sae.decoder_row(i)
        assert row.dtype == np.float32 and row.shape == (w_dec.shape[1],)
        np.testing.assert_array_equal(row, w_dec[i])
    assert sae.row_norm(7) == pytest.approx(float(np.linalg.norm(w_dec[7].astype(np.float64))), rel=1e-12)


# ---------------------------------------------------------------------------------------------- GemmaScope


def _write_gemmascope(folder: Path, w: dict, compressed: bool = False, fortran_dec: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = dict(w)
    if fortran_dec:
        arrays["W_dec"] = np.asfortranarray(arrays["W_dec"])
    (np.savez_compressed if compressed else np.savez)(folder / "params.npz", **arrays)
    return folder / "params.npz"


@pytest.mark.parametrize("compressed", [False, True])
def test_gemmascope_npz_rows_metadata_and_encode(tmp_path, compressed):
    w = _weights(1)
    npz = _write_gemmascope(tmp_path / "layer_16" / "width_16k" / "average_l0_78", w, compressed=compressed)
    with zipfile.ZipFile(npz) as zf:  # the layout under test really is (un)compressed
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED}
    sae = load_sae(str(npz))
    assert isinstance(sae.info, SaeInfo)
    assert (sae.info.family, sae.d_model, sae.d_sae) == ("gemmascope", D_MODEL, D_SAE)
    assert sae.info.activation == "jumprelu" and sae.info.dtype == "float32"
    assert sae.info.hook_name == "blocks.16.hook_resid_post" and sae.info.layer == 16
    assert sae.info.resolved_path == str(npz.absolute())
    _assert_rows(sae, w["W_dec"])
    h = np.random.default_rng(5).normal(size=(4, D_MODEL)).astype(np.float32) * 2
    idx = [0, 3, 17, 39]
    np.testing.assert_allclose(sae.encode(h, idx), _jumprelu_ref(h, w, idx), rtol=1e-5, atol=1e-5)
    assert sae.encode(h[0], idx).shape == (4,)


def test_gemmascope_folder_source_and_fortran_order(tmp_path):
    """A folder holding params.npz is accepted; a Fortran-ordered W_dec (strides reversed) reads correctly."""
    w = _weights(2)
    folder = tmp_path / "models--google--gemma-scope-9b-it-res" / "layer_20" / "width_16k" / "average_l0_91"
    _write_gemmascope(folder, w, fortran_dec=True)
    sae = load_sae(str(folder))
    _assert_rows(sae, w["W_dec"])
    assert sae.info.model_name == "google/gemma-2-9b-it" and sae.info.layer == 20


def test_gemmascope_mlp_release_has_no_residual_layer(tmp_path):
    folder = tmp_path / "gemma-scope-2b-pt-mlp" / "layer_4" / "width_16k" / "average_l0_50"
    _write_gemmascope(folder, _weights(3))
    sae = load_sae(str(folder))
    assert sae.info.hook_name == "blocks.4.hook_mlp_out" and sae.info.layer is None


def test_gemmascope_missing_array_is_format_error(tmp_path):
    w = _weights(4)
    del w["threshold"]
    folder = tmp_path / "layer_1" / "width_16k" / "x"
    _write_gemmascope(folder, w)
    with pytest.raises(FormatError, match="missing threshold"):
        load_sae(str(folder))


# ---------------------------------------------------------------------------------------------- Gemma Scope 2


def _write_gs2(folder: Path, w: dict, *, hook="model.layers.12.output", width=None, bf16: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"w_enc": w["W_enc"], "w_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"], "threshold": w["threshold"]}
    if bf16:
        _save_bf16_safetensors(folder / "params.safetensors", tensors)
    else:
        save_file(tensors, str(folder / "params.safetensors"))
    cfg = {
        "width": width if width is not None else w["W_dec"].shape[0],
        "model_name": "google/gemma-3-270m-it",
        "architecture": "jump_relu",
        "hf_hook_point_in": hook,
        "hf_hook_point_out": hook,
        "type": "sae",
        "l0": 60,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _to_bf16_exact(a: np.ndarray) -> np.ndarray:
    """float32 values whose low 16 bits are zero, i.e. exactly representable in bfloat16."""
    return (a.astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)


def _save_bf16_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file with BF16 tensors, written by hand (numpy has no bfloat16)."""
    header, blobs, pos = {}, [], 0
    for name, a in tensors.items():
        raw = (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [pos, pos + len(raw)]}
        blobs.append(raw)
        pos += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_gemmascope2_folder_rows_metadata_encode(tmp_path):
    w = _weights(6)
    folder = _write_gs2(tmp_path / "resid_post" / "layer_12_width_16k_l0_medium", w)
    sae = load_sae(str(folder))
    assert (sae.info.family, sae.d_model, sae.d_sae) == ("gemmascope2", D_MODEL, D_SAE)
    assert sae.info.hook_name == "model.layers.12.output" and sae.info.layer == 12
    assert sae.info.model_name == "google/gemma-3-270m-it" and sae.info.activation == "jump_relu"
    _assert_rows(sae, w["W_dec"])
    h = np.random.default_rng(7).normal(size=(3, D_MODEL)).astype(np.float32) * 2
    idx = [1, 2, 30]
    np.testing.assert_allclose(sae.encode(h, idx), _jumprelu_ref(h, w, idx), rtol=1e-5, atol=1e-5)
    # Pointing at the weights file itself opens the same folder.
    assert load_sae(str(folder / "params.safetensors")).info.resolved_path == str(folder.absolute())


def test_gemmascope2_bf16_weights(tmp_path):
    w = {k: _to_bf16_exact(v) for k, v in _weights(8).items()}
    folder = _write_gs2(tmp_path / "gs2bf16", w, bf16=True)
    sae = load_sae(str(folder))
    assert sae.info.dtype == "bfloat16"
    _assert_rows(sae, w["W_dec"])


def test_gemmascope2_width_mismatch_and_missing_config(tmp_path):
    w = _weights(9)
    with pytest.raises(FormatError, match="width 41"):
        load_sae(str(_write_gs2(tmp_path / "a", w, width=41)))
    folder = _write_gs2(tmp_path / "b", w)
    (folder / "config.json").unlink()
    with pytest.raises(FormatError, match="config.json"):
        load_sae(str(folder))


# ---------------------------------------------------------------------------------------------- SAELens


def _write_saelens(folder: Path, w: dict, cfg: dict, labels_csv: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(dict(w), str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    if labels_csv is not None:
        (folder / "labels.csv").write_text(labels_csv)
    return folder


V6_CFG = {
    "architecture": "jumprelu",
    "d_in": D_MODEL,
    "d_sae": D_SAE,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": False,
    "normalize_activations": "none",
    "metadata": {
        "hook_name": "blocks.7.hook_resid_post",
        "model_name": "google/gemma-3-270m-it",
        "neuronpedia_id": "gemma-3-270m-it/7-res-16k",
        "sae_lens_version": "6.5.0",
    },
}


def test_saelens_v6_cfg_rows_labels_encode(tmp_path):
    w = _weights(10)
    folder = _write_saelens(tmp_path / "dict", w, V6_CFG, labels_csv='index_in_sae,label\n3,"cats, and dogs"\n39,last one\n')
    sae = load_sae(str(folder))
    assert (sae.info.family, sae.d_model, sae.d_sae) == ("saelens", D_MODEL, D_SAE)
    assert sae.info.hook_name == "blocks.7.hook_resid_post" and sae.info.layer == 7
    assert sae.info.model_name == "google/gemma-3-270m-it"
    assert sae.info.neuronpedia_id == "gemma-3-270m-it/7-res-16k"
    assert sae.info.activation == "jumprelu"
    _assert_rows(sae, w["W_dec"])
    assert sae.labels_path == folder / "labels.csv"  # picked up automatically
    assert sae.label(3) == "cats, and dogs" and sae.label(39) == "last one" and sae.label(4) is None
    h = np.random.default_rng(11).normal(size=(5, D_MODEL)).astype(np.float32) * 2
    idx = [3, 0, 39]
    np.testing.assert_allclose(sae.encode(h, idx), _jumprelu_ref(h, w, idx), rtol=1e-5, atol=1e-5)


def test_saelens_pre6_flat_cfg_relu_with_b_dec_centring(tmp_path):
    w = _weights(12)
    del w["threshold"]
    cfg = {
        "d_in": D_MODEL,
        "d_sae": D_SAE,
        "hook_point": "blocks.5.hook_resid_pre",
        "model_name": "gpt2-small",
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
    }
    sae = load_sae(str(_write_saelens(tmp_path / "old", w, cfg)))
    assert sae.info.hook_name == "blocks.5.hook_resid_pre"
    assert sae.info.layer == 4  # resid_pre of block 5 is the output of block 4 (direction.4)
    assert sae.info.activation == "relu" and sae.info.model_name == "gpt2-small"
    _assert_rows(sae, w["W_dec"])
    h = np.random.default_rng(13).normal(size=(3, D_MODEL)).astype(np.float32) + 3
    idx = [5, 6]
    ref = np.maximum((h - w["b_dec"]).astype(np.float64) @ w["W_enc"][:, idx] + w["b_enc"][idx], 0)
    np.testing.assert_allclose(sae.encode(h, idx), ref, rtol=1e-5, atol=1e-5)


def test_saelens_topk_encode_uses_all_latents(tmp_path):
    w = _weights(14)
    del w["threshold"]
    cfg = {"architecture": "topk", "d_in": D_MODEL, "d_sae": D_SAE, "k": 3, "apply_b_dec_to_input": False,
           "metadata": {"hook_name": "blocks.2.hook_resid_post"}}
    sae = load_sae(str(_write_saelens(tmp_path / "topk", w, cfg)))
    h = np.random.default_rng(15).normal(size=(6, D_MODEL)).astype(np.float32)
    pre = h.astype(np.float64) @ w["W_enc"] + w["b_enc"]
    full = np.zeros_like(pre)
    for r in range(pre.shape[0]):
        top = np.argsort(-pre[r])[:3]
        full[r, top] = np.maximum(pre[r, top], 0)
    idx = list(range(D_SAE))
    np.testing.assert_allclose(sae.encode(h, idx), full, rtol=1e-5, atol=1e-5)
    assert ((sae.encode(h, idx) > 0).sum(axis=1) <= 3).all()


def test_saelens_shape_disagreeing_with_cfg(tmp_path):
    cfg = dict(V6_CFG, d_sae=D_SAE + 1)
    with pytest.raises(FormatError, match="d_sae=41"):
        load_sae(str(_write_saelens(tmp_path / "bad", _weights(16), cfg)))


def test_saelens_wrong_keys(tmp_path):
    w = _weights(17)
    w["decoder"] = w.pop("W_dec")
    with pytest.raises(FormatError, match="needs W_enc and W_dec"):
        load_sae(str(_write_saelens(tmp_path / "bad", w, V6_CFG)))


# ---------------------------------------------------------------------------------------------- Goodfire


def test_goodfire_real_torch_file_rows_and_encode():
    e = np.load(FIXTURES / "goodfire_tiny_expected.npz")
    sae = load_sae(str(FIXTURES / "goodfire_tiny.pth"))
    assert (sae.info.family, sae.d_model, sae.d_sae, sae.info.activation) == ("goodfire", D_MODEL, D_SAE, "relu")
    assert sae.info.dtype == "float32"
    dec = e["decoder_linear.weight"]  # [d_model, d_sae]: latent i is column i
    assert np.abs(e["decoder_linear.bias"]).min() > 1  # b_dec is large, so a leak would show
    _assert_rows(sae, dec.T)
    h = np.random.default_rng(18).normal(size=(4, D_MODEL)).astype(np.float32)
    idx = [0, 20, 39]
    ref = np.maximum(h.astype(np.float64) @ e["encoder_linear.weight"][idx].T + e["encoder_linear.bias"][idx], 0)
    np.testing.assert_allclose(sae.encode(h, idx), ref, rtol=1e-5, atol=1e-5)


def test_goodfire_layer_model_and_csv_labels(tmp_path):
    path = tmp_path / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    shutil.copy(FIXTURES / "goodfire_tiny.pth", path)
    labels = tmp_path / "llama-8b-goodfire-l19.csv"
    labels.write_text("index_in_sae,label,concreteness\n0,The Eiffel Tower,80\n12,Python code,70\n")
    sae = load_sae(str(path), labels=labels)
    assert sae.info.hook_name == "blocks.19.hook_resid_post" and sae.info.layer == 19
    assert sae.info.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert sae.label(0) == "The Eiffel Tower" and sae.label(12) == "Python code" and sae.label(1) is None
    old = tmp_path / "Llama-3.3-70B-Instruct__model.layers.50.pt"
    shutil.copy(FIXTURES / "goodfire_tiny.pth", old)
    assert load_sae(str(old)).info.layer == 50


# ---------------------------------------------------------------------------------------------- labels


def test_neuronpedia_jsonl_gz_labels(tmp_path):
    folder = _write_gs2(tmp_path / "gs2", _weights(19))
    export = tmp_path / "batch-0.jsonl.gz"
    with gzip.open(export, "wt") as fh:
        for rec in ({"index": "5", "description": " first "}, {"index": "5", "description": "second"},
                    {"index": 7, "description": "seven", "modelId": "gemma-3-270m-it"}):
            fh.write(json.dumps(rec) + "\n")
    sae = load_sae(str(folder), labels=export)
    assert sae.label(5) == "first" and sae.label(7) == "seven" and sae.label(6) is None
    # A folder of export batches works too.
    (tmp_path / "np").mkdir()
    shutil.move(export, tmp_path / "np" / "batch-0.jsonl.gz")
    assert load_sae(str(folder), labels=tmp_path / "np").label(7) == "seven"


def test_bad_labels_files(tmp_path):
    folder = _write_gs2(tmp_path / "gs2", _weights(20))
    bad = tmp_path / "labels.csv"
    bad.write_text("id,text\n1,x\n")
    with pytest.raises(FormatError, match="index column"):
        load_sae(str(folder), labels=bad).label(1)
    with pytest.raises(MissingResourceError):
        load_sae(str(folder), labels=tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------- bad inputs


def test_index_out_of_range_and_bad_index(tmp_path):
    sae = load_sae(str(_write_gs2(tmp_path / "gs2", _weights(21))))
    for bad in (D_SAE, -1, 10**9):
        with pytest.raises(UserInputError, match="valid 0 to 39"):
            sae.decoder_row(bad)
    with pytest.raises(UserInputError, match="valid 0 to 39"):
        sae.label(40)
    with pytest.raises(UserInputError, match="valid 0 to 39"):
        sae.encode(np.zeros((1, D_MODEL)), [3, 40])
    with pytest.raises(UserInputError, match="integer"):
        sae.decoder_row(True)
    with pytest.raises(UserInputError, match="shape"):
        sae.encode(np.zeros((1, D_MODEL + 1)), [3])
    np.testing.assert_array_equal(sae.decoder_row(np.int64(3)), sae.decoder_row(3))


def test_missing_unknown_and_corrupt_sources(tmp_path):
    with pytest.raises(MissingResourceError, match="does not exist"):
        load_sae(str(tmp_path / "nope" / "params.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no SAE found"):
        load_sae(str(tmp_path / "empty"))
    junk = tmp_path / "weights.bin2"
    junk.write_bytes(b"not an sae" * 10)
    with pytest.raises(FormatError, match="not a known SAE file"):
        load_sae(str(junk))
    bad_npz = tmp_path / "params.npz"
    bad_npz.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(FormatError, match="not a readable .npz"):
        load_sae(str(bad_npz))
    st = _write_gs2(tmp_path / "gs2", _weights(22))
    data = (st / "params.safetensors").read_bytes()
    (st / "params.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(FormatError):
        load_sae(str(st))
    with pytest.raises(UserInputError):
        load_sae(str(st), revision="main")  # revision only makes sense for hf://


# ---------------------------------------------------------------------------------------------- sources


def test_parse_source_forms():
    s = parse_source("hf://google/gemma-scope-2b-pt-res@main/layer_16/width_16k/average_l0_78")
    assert (s.kind, s.repo_id, s.revision, s.path_in_repo) == ("hf", "google/gemma-scope-2b-pt-res", "main",
                                                              "layer_16/width_16k/average_l0_78")
    s = parse_source("hf://Goodfire/Llama-3.1-8B-Instruct-SAE-l19")
    assert (s.repo_id, s.revision, s.path_in_repo) == ("Goodfire/Llama-3.1-8B-Instruct-SAE-l19", None, "")
    s = parse_source("~/saes/x.pth")
    assert s.kind == "local" and s.local_path == Path.home() / "saes" / "x.pth"
    for bad in ("", "hf://onlyowner", "hf://o/r@/x", "s3://bucket/key", "hf://o/r/../x"):
        with pytest.raises(UserInputError):
            parse_source(bad)


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """Lay files out exactly as huggingface_hub caches them: blobs/<hash>, snapshots/<commit>/<path> -> blob
    symlinks, refs/main holding the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    for rel, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(repo / "blobs" / blob, link.parent), link)
    return snap


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty HF cache dir with the hub in offline mode (the real Hub is unreachable here anyway)."""
    import huggingface_hub.constants as hfc

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)  # constants are read at import time
    return cache


def _npz_bytes(tmp_path: Path, w: dict) -> bytes:
    p = tmp_path / "tmp_params.npz"
    np.savez(p, **w)
    return p.read_bytes()


def test_hf_gemmascope_folder_from_cache(tmp_path, offline_hub):
    w = _weights(23)
    folder = "layer_16/width_16k/average_l0_78"
    snap = _fake_hub_repo(offline_hub, "google/gemma-scope-2b-pt-res", {f"{folder}/params.npz": _npz_bytes(tmp_path, w)})
    for src in (f"hf://google/gemma-scope-2b-pt-res/{folder}", f"hf://google/gemma-scope-2b-pt-res@main/{folder}",
                f"hf://google/gemma-scope-2b-pt-res@{COMMIT}/{folder}/params.npz"):
        sae = load_sae(src, cache_dir=str(offline_hub))
        assert sae.info.source == src
        assert sae.info.resolved_path == str(snap / folder / "params.npz")
        assert sae.info.layer == 16 and sae.info.model_name == "google/gemma-2-2b"
        _assert_rows(sae, w["W_dec"])
    with pytest.raises(UserInputError, match="revision"):
        load_sae(f"hf://google/gemma-scope-2b-pt-res@main/{folder}", revision="v2", cache_dir=str(offline_hub))


def test_hf_gemmascope2_and_saelens_folders_from_cache(tmp_path, offline_hub):
    w2 = _weights(24)
    gs2_dir = _write_gs2(tmp_path / "src_gs2", w2)
    rel = "resid_post/layer_12_width_16k_l0_medium"
    _fake_hub_repo(offline_hub, "google/gemma-scope-2-270m-it",
                   {f"{rel}/params.safetensors": (gs2_dir / "params.safetensors").read_bytes(),
                    f"{rel}/config.json": (gs2_dir / "config.json").read_bytes()})
    sae = load_sae(f"hf://google/gemma-scope-2-270m-it/{rel}", cache_dir=str(offline_hub))
    assert sae.info.family == "gemmascope2" and sae.info.layer == 12
    _assert_rows(sae, w2["W_dec"])

    wl = _weights(25)
    sl_dir = _write_saelens(tmp_path / "src_sl", wl, V6_CFG, labels_csv="index_in_sae,label\n2,two\n")
    _fake_hub_repo(offline_hub, "someone/my-saes",
                   {f"l7/{n}": (sl_dir / n).read_bytes() for n in ("cfg.json", "sae_weights.safetensors", "labels.csv")})
    sae = load_sae("hf://someone/my-saes/l7", cache_dir=str(offline_hub))
    assert sae.info.family == "saelens" and sae.label(2) == "two"
    _assert_rows(sae, wl["W_dec"])


def test_hf_goodfire_repo_root_from_cache(offline_hub):
    data = (FIXTURES / "goodfire_tiny.pth").read_bytes()
    _fake_hub_repo(offline_hub, "Goodfire/Llama-3.1-8B-Instruct-SAE-l19", {"Llama-3.1-8B-Instruct-SAE-l19.pth": data})
    sae = load_sae("hf://Goodfire/Llama-3.1-8B-Instruct-SAE-l19", cache_dir=str(offline_hub))
    assert sae.info.family == "goodfire" and sae.info.layer == 19
    dec = np.load(FIXTURES / "goodfire_tiny_expected.npz")["decoder_linear.weight"]
    np.testing.assert_array_equal(sae.decoder_row(11), dec[:, 11])


def test_hf_not_cached_offline_is_missing_resource(offline_hub):
    with pytest.raises(MissingResourceError, match="not in the local Hugging Face cache.*local path"):
        load_sae("hf://google/gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_10", cache_dir=str(offline_hub))
    with pytest.raises(MissingResourceError, match="not in the local Hugging Face cache"):
        load_sae("hf://google/gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_10/params.npz",
                 cache_dir=str(offline_hub))


def test_hf_cache_found_through_environment_in_fresh_process(tmp_path):
    """HF_HUB_CACHE + HF_HUB_OFFLINE=1 set in the environment (no cache_dir argument) are honoured."""
    cache = tmp_path / "env-cache"
    w = _weights(26)
    _fake_hub_repo(cache, "google/gemma-scope-9b-pt-res", {"layer_26/width_16k/average_l0_116/params.npz": _npz_bytes(tmp_path, w)})
    code = (
        "import sys, numpy as np\n"
        "from esr_local.saes import load_sae\n"
        "s = load_sae('hf://google/gemma-scope-9b-pt-res/layer_26/width_16k/average_l0_116')\n"
        "np.save(sys.argv[1], s.decoder_row(9)); print(s.info.layer, s.info.model_name)\n"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "row.npy")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["26", "google/gemma-2-9b"]
    np.testing.assert_array_equal(np.load(tmp_path / "row.npy"), w["W_dec"][9])
