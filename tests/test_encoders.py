"""SAE encoders for every family, on synthetic files in each family's exact on-disk layout.

Each encoder is checked against a direct numpy reference written from the family's definition
(Goodfire ReLU, GemmaScope/Gemma Scope 2/SAELens JumpReLU, SAELens standard with and without b_dec
centring and input normalisation, SAELens TopK), both for a subset of latents (`encode`) and for
all latents streamed in column blocks (`encode_blocks`). The readers' block access is checked too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from esr_local.errors import FormatError, UserInputError
from esr_local.saes import load_sae
from esr_local.saes.tensors import FileTensor, open_safetensors
from esr_local.saes.torch_zip import read_torch_zip, write_state_dict

D_MODEL, D_SAE = 24, 300


def _w(seed: int, d_model: int = D_MODEL, d_sae: int = D_SAE) -> dict[str, np.ndarray]:
    """SAELens-orientation weights; b_enc is shifted so roughly half the latents fire on random input."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_model, d_sae)).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, d_model)).astype(np.float32),
        "b_enc": rng.normal(size=d_sae).astype(np.float32),
        "b_dec": (rng.normal(size=d_model) + 2.0).astype(np.float32),
        "threshold": (np.abs(rng.normal(size=d_sae)) * 2).astype(np.float32),
    }


def _h(seed: int, n: int = 7, d_model: int = D_MODEL) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, d_model)) * 3).astype(np.float32)


# -- references, written from each family's definition ------------------------------------------------


def _ref_pre(h, w, *, centre=False, norm="none"):
    x = h.astype(np.float64)
    if norm == "constant_norm_rescale":
        x = x * np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True)
    elif norm == "layer_norm":
        x = x - x.mean(axis=1, keepdims=True)
        x = x / (x.std(axis=1, ddof=1, keepdims=True) + 1e-5)
    if centre:
        x = x - w["b_dec"]
    return x @ w["W_enc"].astype(np.float64) + w["b_enc"]


def _ref_relu(h, w, **kw):
    return np.maximum(_ref_pre(h, w, **kw), 0)


def _ref_jumprelu(h, w, **kw):
    pre = _ref_pre(h, w, **kw)
    return np.where(pre > w["threshold"], pre, 0) * (pre > 0)


def _ref_topk(h, w, k, **kw):
    pre = _ref_pre(h, w, **kw)
    out = np.zeros_like(pre)
    for r in range(pre.shape[0]):
        top = np.argsort(-pre[r])[:k]
        out[r, top] = np.maximum(pre[r, top], 0)
    return out


# -- writers, one per family layout ---------------------------------------------------------------------


def _goodfire(tmp: Path, w) -> Path:
    path = tmp / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    write_state_dict(path, {
        "encoder_linear.weight": np.ascontiguousarray(w["W_enc"].T),  # nn.Linear: [d_sae, d_model]
        "encoder_linear.bias": w["b_enc"],
        "decoder_linear.weight": np.ascontiguousarray(w["W_dec"].T),  # [d_model, d_sae]
        "decoder_linear.bias": w["b_dec"],
    })
    return path


def _gemmascope(tmp: Path, w, compressed=False) -> Path:
    folder = tmp / "layer_12" / "width_16k" / "average_l0_50"
    folder.mkdir(parents=True)
    (np.savez_compressed if compressed else np.savez)(folder / "params.npz", **w)
    return folder


def _gemmascope2(tmp: Path, w) -> Path:
    folder = tmp / "resid_post" / "layer_12_width_16k_l0_medium"
    folder.mkdir(parents=True)
    save_file({"w_enc": w["W_enc"], "w_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"],
               "threshold": w["threshold"]}, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "width": w["W_dec"].shape[0], "model_name": "google/gemma-3-270m-it", "architecture": "jump_relu",
        "hf_hook_point_in": "model.layers.12.output", "hf_hook_point_out": "model.layers.12.output"}))
    return folder


def _saelens(tmp: Path, w, *, arch="standard", centre=True, norm="none", k=None, keys=None) -> Path:
    folder = tmp / f"saelens-{arch}-{centre}-{norm}"
    folder.mkdir(parents=True)
    keys = keys or ("W_enc", "W_dec", "b_enc", "b_dec") + (("threshold",) if arch == "jumprelu" else ())
    save_file({key: w[key] for key in keys}, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": arch, "d_in": w["W_dec"].shape[1], "d_sae": w["W_dec"].shape[0],
           "apply_b_dec_to_input": centre, "normalize_activations": norm,
           "metadata": {"hook_name": "blocks.5.hook_resid_post", "model_name": "m"}}
    if k is not None:
        cfg["activation_fn_kwargs"] = {"k": k}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


CASES = {
    "goodfire": (lambda t, w: _goodfire(t, w), lambda h, w: _ref_relu(h, w)),
    "gemmascope": (lambda t, w: _gemmascope(t, w), lambda h, w: _ref_jumprelu(h, w)),
    "gemmascope-compressed": (lambda t, w: _gemmascope(t, w, compressed=True), lambda h, w: _ref_jumprelu(h, w)),
    "gemmascope2": (lambda t, w: _gemmascope2(t, w), lambda h, w: _ref_jumprelu(h, w)),
    "saelens-standard-centred": (lambda t, w: _saelens(t, w), lambda h, w: _ref_relu(h, w, centre=True)),
    "saelens-standard-raw": (lambda t, w: _saelens(t, w, centre=False), lambda h, w: _ref_relu(h, w)),
    "saelens-jumprelu": (lambda t, w: _saelens(t, w, arch="jumprelu", centre=False), lambda h, w: _ref_jumprelu(h, w)),
    "saelens-jumprelu-centred": (lambda t, w: _saelens(t, w, arch="jumprelu"),
                                 lambda h, w: _ref_jumprelu(h, w, centre=True)),
    "saelens-norm-rescale": (lambda t, w: _saelens(t, w, norm="constant_norm_rescale"),
                             lambda h, w: _ref_relu(h, w, centre=True, norm="constant_norm_rescale")),
    "saelens-layer-norm": (lambda t, w: _saelens(t, w, norm="layer_norm", centre=False),
                           lambda h, w: _ref_relu(h, w, norm="layer_norm")),
    "saelens-topk": (lambda t, w: _saelens(t, w, arch="topk", k=9), lambda h, w: _ref_topk(h, w, 9, centre=True)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoder_equals_numpy_reference(tmp_path, name):
    write, ref = CASES[name]
    w = _w(sum(map(ord, name)))
    sae = load_sae(str(write(tmp_path, w)))
    h = _h(1)
    full = ref(h, w)
    # Not vacuous: some latents fire and some do not.
    assert 0.02 < (full > 0).mean() < 0.9
    idx = [3, 0, 299, 150, 7, 7]
    sub = sae.encode(h, idx)
    assert sub.dtype == np.float32 and sub.shape == (7, len(idx))
    np.testing.assert_allclose(sub, full[:, idx], rtol=1e-5, atol=1e-4)
    assert np.array_equal(sub > 0, full[:, idx] > 0)
    np.testing.assert_allclose(sae.encode(h[2], idx), full[2, idx], rtol=1e-5, atol=1e-4)
    # All latents, streamed in blocks whose size does not divide d_sae.
    blocks = list(sae.encode_blocks(h, block_size=64))
    assert [start for start, _ in blocks] == list(range(0, D_SAE, 64))
    assert all(b.dtype == np.float32 for _, b in blocks)
    streamed = np.concatenate([b for _, b in blocks], axis=1)
    assert streamed.shape == (7, D_SAE)
    np.testing.assert_allclose(streamed, full, rtol=1e-4, atol=1e-3)


def test_goodfire_does_not_centre_on_b_dec(tmp_path):
    """A Goodfire file whose b_dec is large: subtracting it would change which latents fire."""
    w = _w(5)
    w["b_dec"] = np.full(D_MODEL, 50.0, np.float32)
    sae = load_sae(str(_goodfire(tmp_path, w)))
    h = _h(2)
    got = sae.encode(h, list(range(D_SAE)))
    np.testing.assert_allclose(got, _ref_relu(h, w), rtol=1e-5, atol=1e-4)
    assert not np.allclose(got, _ref_relu(h, w, centre=True), atol=1e-2)


def test_topk_keeps_exactly_k_per_row_and_subset_agrees(tmp_path):
    w = _w(8)
    w["b_enc"] += 5.0  # every pre-activation positive: exactly k survive per row
    sae = load_sae(str(_saelens(tmp_path, w, arch="topk", k=9)))
    h = _h(3)
    full = np.concatenate([b for _, b in sae.encode_blocks(h, block_size=50)], axis=1)
    assert ((full > 0).sum(axis=1) == 9).all()
    np.testing.assert_array_equal(sae.encode(h, list(range(D_SAE))) > 0, full > 0)


def test_unsupported_normalisation_is_a_clear_error(tmp_path):
    sae = load_sae(str(_saelens(tmp_path, _w(9), norm="expected_average_only_in")))
    with pytest.raises(FormatError, match="expected_average_only_in"):
        sae.encode(_h(1), [0])
    with pytest.raises(UserInputError, match="block_size"):
        list(sae.encode_blocks(_h(1), block_size=0))
    with pytest.raises(UserInputError, match="NaN"):
        sae.encode(np.full((1, D_MODEL), np.nan), [0])


# -- block reads of the on-disk tensors --------------------------------------------------------------------


def test_file_tensor_blocks_and_read_in_every_layout(tmp_path):
    a = np.arange(12 * 70, dtype=np.float32).reshape(12, 70) * 0.5
    path = tmp_path / "t.pth"
    write_state_dict(path, {"a": a, "b": np.asfortranarray(a).T.copy()})
    t = read_torch_zip(path)["a"]
    np.testing.assert_array_equal(t.read(), a)
    np.testing.assert_array_equal(t.row_block(3, 9), a[3:9])
    np.testing.assert_array_equal(t.col_block(5, 66), a[:, 5:66])
    # A transposed view (column-major strides) of the same storage.
    ft = FileTensor(t.path, t.offset, "float32", (70, 12), (1, 70))
    np.testing.assert_array_equal(ft.read(), a.T)
    np.testing.assert_array_equal(ft.col_block(2, 7), a.T[:, 2:7])
    np.testing.assert_array_equal(ft.row_block(10, 30), a.T[10:30])
    # Every other column: no unit stride on either axis.
    st = FileTensor(t.path, t.offset, "float32", (12, 35), (70, 2))
    np.testing.assert_array_equal(st.read(), a[:, ::2])
    np.testing.assert_array_equal(st.col_block(4, 9), a[:, ::2][:, 4:9])
    # 1-D
    v = FileTensor(t.path, t.offset, "float32", (70,), (1,))
    np.testing.assert_array_equal(v.read(), a[0])


def test_safetensors_blocks(tmp_path):
    a = np.random.default_rng(0).normal(size=(9, 31)).astype(np.float32)
    save_file({"a": a}, str(tmp_path / "x.safetensors"))
    t = open_safetensors(tmp_path / "x.safetensors")["a"]
    np.testing.assert_array_equal(t.row_block(2, 5), a[2:5])
    np.testing.assert_array_equal(t.col_block(7, 30), a[:, 7:30])
