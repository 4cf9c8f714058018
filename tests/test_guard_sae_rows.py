"""Guard: reading SAE decoder rows, norms, labels and the shared input checks (esr_local/saes/base.py),
on a real SAELens-layout folder written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from esr_local.errors import FormatError, UserInputError
from esr_local.saes import load_sae
from esr_local.saes.base import check_shapes, decoder_dims, layer_or_none

D_MODEL, D_SAE = 6, 5


@pytest.fixture()
def sae(tmp_path):
    rng = np.random.default_rng(3)
    w_dec = rng.standard_normal((D_SAE, D_MODEL)).astype(np.float32)
    folder = tmp_path / "sae"
    folder.mkdir()
    save_file({"W_dec": w_dec, "W_enc": rng.standard_normal((D_MODEL, D_SAE)).astype(np.float32),
               "b_enc": np.zeros(D_SAE, np.float32), "b_dec": np.zeros(D_MODEL, np.float32)},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D_MODEL, "d_sae": D_SAE,
                                                 "metadata": {"hook_name": "blocks.4.hook_resid_post"}}))
    (folder / "labels.csv").write_text("index_in_sae,label\n0,zero\n4,four\n")
    s = load_sae(str(folder))
    s.w_dec = w_dec  # the reference, kept next to it for the tests
    return s


def test_rows_and_norms_are_exact(sae):
    for i in range(D_SAE):
        row = sae.decoder_row(i)
        assert row.dtype == np.float32 and row.shape == (D_MODEL,)
        np.testing.assert_array_equal(row, sae.w_dec[i])
        assert sae.row_norm(i) == float(np.linalg.norm(sae.w_dec[i].astype(np.float64)))
    np.testing.assert_array_equal(sae.decoder_row(np.int64(D_SAE - 1)), sae.w_dec[-1])


@pytest.mark.parametrize("bad", [True, np.bool_(False), 1.0, "1", None])
def test_a_non_integer_index_is_rejected(sae, bad):
    with pytest.raises(UserInputError, match=r"^latent index must be an integer, got "):
        sae.decoder_row(bad)


@pytest.mark.parametrize("bad", [-1, D_SAE])
def test_out_of_range_index_message(sae, bad):
    with pytest.raises(UserInputError, match=rf"^latent index {bad} is out of range: this SAE has 5 latents \(valid 0 to 4\)$"):
        sae.decoder_row(bad)
    assert sae.decoder_row(0) is not None and sae.decoder_row(D_SAE - 1) is not None


def test_labels_are_read_lazily_and_a_new_path_resets_them(sae, tmp_path):
    assert (sae.label(0), sae.label(4), sae.label(2)) == ("zero", "four", None)
    other = tmp_path / "other.csv"
    other.write_text("index_in_sae,label\n0,renamed\n")
    sae.set_labels_path(other)
    assert sae.labels_path == other and sae.label(0) == "renamed" and sae.label(4) is None
    sae.set_labels_path(None)
    assert sae.labels_path is None and sae.label(0) is None
    with pytest.raises(UserInputError, match="out of range"):
        sae.label(D_SAE)


def test_encode_shapes_and_input_checks(sae):
    h = np.ones(D_MODEL)
    one = sae.encode(h, [0, 3])
    assert one.shape == (2,) and one.dtype == np.float32
    many = sae.encode(np.stack([h, 2 * h]), [0, 3])
    assert many.shape == (2, 2)
    np.testing.assert_allclose(many[0], one, rtol=1e-6)
    with pytest.raises(UserInputError, match=rf"^h must have shape \[n, {D_MODEL}\] \(or \[{D_MODEL}\]\), got \(2, 3\)$"):
        sae.encode(np.ones((2, 3)), [0])
    with pytest.raises(UserInputError, match=r"^h holds NaN or infinite values; cannot encode them$"):
        sae.encode(np.full(D_MODEL, np.nan), [0])


def test_encode_blocks_cover_every_latent_in_order(sae):
    h = np.random.default_rng(1).standard_normal((3, D_MODEL))
    blocks = list(sae.encode_blocks(h, block_size=2))
    assert [start for start, _ in blocks] == [0, 2, 4] and [a.shape for _, a in blocks] == [(3, 2), (3, 2), (3, 1)]
    np.testing.assert_allclose(np.concatenate([a for _, a in blocks], axis=1), sae.encode(h, list(range(D_SAE))),
                               rtol=1e-5, atol=1e-5)
    for bad in (0, True, 1.5):
        with pytest.raises(UserInputError, match=rf"^block_size must be a positive integer, got {bad!r}$"):
            list(sae.encode_blocks(h, block_size=bad))


def test_shape_helpers():
    assert decoder_dims("f", np.zeros((5, 6))) == (5, 6)
    with pytest.raises(FormatError, match=r"^f: W_dec has shape \[5\], expected \[d_sae, d_model\]$"):
        decoder_dims("f", np.zeros(5))
    check_shapes("f", {"b_enc": (np.zeros(5), (5,)), "b_dec": (None, (6,))})
    with pytest.raises(FormatError, match=r"^f: b_enc has shape \[4\], expected \[5\]$"):
        check_shapes("f", {"b_enc": (np.zeros(4), (5,))})
    assert layer_or_none("blocks.4.hook_resid_post") == 4
    assert layer_or_none(None) is None and layer_or_none("") is None and layer_or_none("blocks.3.mlp") is None


def test_block_size_one_is_allowed(sae):
    h = np.random.default_rng(2).standard_normal((2, D_MODEL))
    blocks = list(sae.encode_blocks(h, block_size=1))
    assert [start for start, _ in blocks] == list(range(D_SAE)) and all(a.shape == (2, 1) for _, a in blocks)


def test_float32_residuals_are_encoded_in_float64_like_float64_ones(sae):
    # encode() reads its input as float64 before the matrix products; a float32 input must give exactly
    # the activations of the same values given as float64 (a float32 product would differ in the last bits).
    h32 = (np.random.default_rng(5).standard_normal((64, D_MODEL)) * 1e3).astype(np.float32)
    every = list(range(D_SAE))
    assert np.array_equal(sae.encode(h32, every), sae.encode(h32.astype(np.float64), every))
    blocks32 = np.concatenate([a for _, a in sae.encode_blocks(h32, block_size=2)], axis=1)
    blocks64 = np.concatenate([a for _, a in sae.encode_blocks(h32.astype(np.float64), block_size=2)], axis=1)
    assert np.array_equal(blocks32, blocks64)
