"""Builders of broken files for the bad-input and fuzz tests: SAE folders/files with one thing wrong,
control vectors and GGUF headers that lie, import files with wrong types or ranges."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

D_MODEL, D_SAE = 576, 8  # the embedded SmolLM2's width; 8 latents


def saelens_folder(path: Path, cfg_changes: dict | None = None, w_dec: np.ndarray | None = None, layer: int = 10) -> Path:
    """A SAELens folder (cfg.json + sae_weights.safetensors) of width 576, with cfg fields replaced."""
    path.mkdir(parents=True, exist_ok=True)
    w = np.ones((D_SAE, D_MODEL), np.float32) if w_dec is None else w_dec
    save_file({"W_dec": w, "W_enc": np.ascontiguousarray(w.T), "b_enc": np.zeros(D_SAE, np.float32),
               "b_dec": np.zeros(D_MODEL, np.float32)}, str(path / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": D_MODEL, "d_sae": D_SAE, "metadata": {"hook_name": f"blocks.{layer}.hook_resid_post"}}
    cfg.update(cfg_changes or {})
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def safetensors_bytes(header: dict, data: bytes = b"\0" * 64) -> bytes:
    """A safetensors file with the given (possibly lying) JSON header."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def saelens_with_header(path: Path, header: dict) -> Path:
    """A SAELens folder whose weights file has `header` (cfg.json is empty)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text("{}")
    (path / "sae_weights.safetensors").write_bytes(safetensors_bytes(header))
    return path


def _entry(dtype: str, shape, offsets) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


GOOD_ENC = _entry("F32", [4, 2], [32, 64])
BAD_HEADERS = {
    "offset past the end": {"W_dec": _entry("F32", [2, 4], [0, 10**12]), "W_enc": GOOD_ENC},
    "negative shape": {"W_dec": _entry("F32", [-2, 4], [0, 32]), "W_enc": GOOD_ENC},
    "string in shape": {"W_dec": _entry("F32", ["a", 4], [0, 32]), "W_enc": GOOD_ENC},
    "huge bf16 shape": {"W_dec": _entry("BF16", [10**6, 10**6], [0, 2 * 10**12]), "W_enc": _entry("BF16", [10**6, 10**6], [0, 2 * 10**12])},
    "string offset": {"W_dec": _entry("BF16", [2, 4], ["x", 16]), "W_enc": _entry("BF16", [4, 2], [0, 16])},
    "begin after end": {"W_dec": _entry("F32", [2, 4], [40, 8]), "W_enc": GOOD_ENC},
    "shape disagrees with bytes": {"W_dec": _entry("F32", [3, 4], [0, 32]), "W_enc": GOOD_ENC},
    "1-D decoder": {"W_dec": _entry("F32", [8], [0, 32]), "W_enc": GOOD_ENC},
    "entry not an object": {"W_dec": 5, "W_enc": GOOD_ENC},
    "int64 overflow shape": {"W_dec": _entry("F32", [2**40, 2**40], [0, 32]), "W_enc": GOOD_ENC},
}


def npz_arrays() -> dict[str, np.ndarray]:
    """The arrays of a valid GemmaScope params.npz of width 576."""
    return {"W_enc": np.ones((D_MODEL, D_SAE), np.float32), "W_dec": np.ones((D_SAE, D_MODEL), np.float32),
            "b_enc": np.zeros(D_SAE, np.float32), "b_dec": np.zeros(D_MODEL, np.float32), "threshold": np.zeros(D_SAE, np.float32)}


def npz_with_huge_header(path: Path, compressed: bool) -> Path:
    """An npz whose W_dec.npy header claims 10^11 x 576 floats but holds 64 bytes."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 576), }"
    header = header + " " * (118 - len(header)) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 64
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
        for name, array in npz_arrays().items():
            if name != "W_dec":
                buf = io.BytesIO()
                np.save(buf, array)
                zf.writestr(name + ".npy", buf.getvalue())
        zf.writestr("W_dec.npy", npy)
    return path


def goodfire_tensors() -> dict[str, np.ndarray]:
    """A valid Goodfire state_dict of width 576 (nn.Linear layout)."""
    return {"encoder_linear.weight": np.ones((D_SAE, D_MODEL), np.float32),
            "decoder_linear.weight": np.ones((D_MODEL, D_SAE), np.float32)}


def gguf_vector(path: Path, tensors: dict[str, np.ndarray], kv: dict[str, str] | None = None) -> Path:
    """A control-vector GGUF written with gguf-py directly (so it may break esr-local's own rules)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch="controlvector")
    for key, value in (kv or {}).items():
        w.add_string(key, value)
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_header(n_tensors: int, n_kv: int, tail: bytes = b"") -> bytes:
    """The first bytes of a GGUF v3 file claiming these counts."""
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + tail


REFERENCE = {"experiment_config": {"model_name": "m"}, "results_by_feature": [{"feature_index_in_sae": 3, "trials": [
    {"prompt": "p", "seed": 1, "response": "r", "score": {"attempts": [{"attempt_text": "a", "score": 50}]}}]}]}


def reference_with(change) -> dict:
    """A copy of REFERENCE after `change(copy)`."""
    data = json.loads(json.dumps(REFERENCE))
    change(data)
    return data
