"""In-graph zero-ablation on the real SmolLM2 GGUF with a synthetic SAELens SAE whose latents fire on the
model's own layer-6 residuals: latent A along the residuals' mean direction, latent B along an orthogonal
direction, both with thresholds inside the observed range so they fire on some positions and not others;
latent DEAD never fires. Encoder and decoder are tied unit vectors, so a correct ablation leaves the
re-encoded activations of the ablated latents at exactly the threshold (activation 0)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from esr_local.ablation import Ablation, span_projector
from esr_local.errors import UserInputError
from esr_local.readout import ResidualReader
from esr_local.saes import load_sae
from esr_local.sampling import SamplingParams
from esr_local.text_readout import read_residuals

LAYER, D_SAE, D = 6, 12, 576
A, B, DEAD = 3, 7, 9
PROMPTS = ["Explain how to fold a paper plane.", "How do I boil an egg?", "Explain how to tie a tie."]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


def write_saelens(folder, w_enc, b_enc, w_dec, layer=LAYER):
    """A SAELens 'standard' SAE folder (cfg.json + sae_weights.safetensors)."""
    c32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # safetensors writes a view's raw buffer
    save_file({"W_enc": c32(w_enc), "W_dec": c32(w_dec), "b_enc": c32(b_enc), "b_dec": np.zeros(w_dec.shape[1], np.float32)},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": int(w_dec.shape[1]), "d_sae": int(w_dec.shape[0]),
        "apply_b_dec_to_input": False, "normalize_activations": "none",
        "metadata": {"hook_name": f"blocks.{layer}.hook_resid_post"}}))
    return folder


@pytest.fixture(scope="module")
def firing_sae(tmp_path_factory, smollm2):
    res = read_residuals(smollm2, PROMPTS, LAYER)
    h = np.concatenate([r.residual[1:] for r in res]).astype(np.float64)  # skip BOS (its norm is huge)
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(np.column_stack([h.mean(axis=0), rng.normal(size=(D, D_SAE - 1))]))
    u = q.T  # [D_SAE, D] orthonormal rows; row 0 along the mean residual
    u[[0, A]] = u[[A, 0]]
    w_enc = u.T.copy()
    b_enc = np.full(D_SAE, -1e4)
    for j, pct in ((A, 30), (B, 50)):
        b_enc[j] = -np.percentile(h @ u[j], pct)  # fires on ~70% / ~50% of the readout positions
    folder = write_saelens(tmp_path_factory.mktemp("firing"), w_enc, b_enc, u)
    return folder


def _decoded_tokens(model, prompt, gen):
    """Tokens the context decoded: the prompt and every generated token but the last."""
    return model.tokenize(model.format_prompt(prompt)) + gen.token_ids[:-1]


def test_ablated_latents_are_zero_and_the_rest_of_the_residual_is_unchanged(firing_sae, smollm2):
    sae = load_sae(str(firing_sae))
    ab = Ablation(sae, [A, B], LAYER, record=True)
    smollm2.set_ablation(ab)
    try:
        gen = smollm2.generate(PROMPTS[0], GREEDY, 0)
    finally:
        smollm2.set_ablation(None)
    toks = _decoded_tokens(smollm2, PROMPTS[0], gen)
    before = np.concatenate([r[0] for r in ab.records])
    f = np.concatenate([r[1] for r in ab.records])
    after = np.concatenate([r[2] for r in ab.records])
    assert before.shape == (len(toks), D)
    assert len(ab.records) == 1 + len(gen.token_ids) - 1  # one prefill call, then one per decode step

    # What the callback saw is the model's layer-6 residual (layers <= 6 are untouched by the edit).
    with ResidualReader(smollm2.llm, n_ctx=256) as reader:
        direct = reader.read(toks, [LAYER])[LAYER]
    scale = np.abs(direct).max()
    assert np.abs(before - direct).max() < 2e-3 * scale

    fired = f > 0
    assert fired[:, 0].mean() > 0.3 and fired[:, 1].mean() > 0.2 and (~fired).any()
    assert np.abs(after - before)[fired.any(axis=1)].max() > 1.0  # the write-back reached the graph tensor
    np.testing.assert_array_equal(after[~fired.any(axis=1)], before[~fired.any(axis=1)])

    pre_again = after.astype(np.float64) @ sae_encoder(firing_sae)[:, [A, B]] + sae_bias(firing_sae)[[A, B]]
    assert np.all(pre_again <= 1e-3 * scale)  # re-encoded: at (or below) threshold everywhere
    np.testing.assert_allclose(sae.encode(after, [A, B]), 0.0, atol=1e-3 * scale)
    assert sae.encode(after, [DEAD]).max() == 0.0

    p = span_projector(ab.decoder)
    np.testing.assert_allclose(after @ p, before @ p, atol=1e-5 * scale)
    assert ab.stats.rows == len(toks) and ab.stats.rows_fired == int(fired.any(axis=1).sum())


def sae_encoder(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "sae_weights.safetensors"))["W_enc"].astype(np.float64)


def sae_bias(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "sae_weights.safetensors"))["b_enc"].astype(np.float64)


def test_a_latent_that_never_fires_leaves_greedy_text_byte_identical(firing_sae, smollm2):
    sae = load_sae(str(firing_sae))
    base = smollm2.generate(PROMPTS[1], GREEDY, 0)
    ab = Ablation(sae, [DEAD], LAYER)
    smollm2.set_ablation(ab)
    try:
        dead = smollm2.generate(PROMPTS[1], GREEDY, 0)
    finally:
        smollm2.set_ablation(None)
    assert ab.stats.rows > 0 and ab.stats.rows_fired == 0
    assert dead.text.encode() == base.text.encode() and dead.token_ids == base.token_ids


def test_ablating_firing_latents_changes_the_text(firing_sae, smollm2):
    sae = load_sae(str(firing_sae))
    base = smollm2.generate(PROMPTS[1], GREEDY, 0)
    ab = Ablation(sae, [A, B], LAYER)
    smollm2.set_ablation(ab)
    try:
        changed = smollm2.generate(PROMPTS[1], GREEDY, 0)
    finally:
        smollm2.set_ablation(None)
    assert ab.stats.rows_fired > 0
    assert changed.token_ids != base.token_ids
    assert smollm2.generate(PROMPTS[1], GREEDY, 0).token_ids == base.token_ids  # removed cleanly


@pytest.mark.parametrize("order", ["pre", "post"])
def test_order_pre_encodes_before_the_steering_vector(firing_sae, smollm2, order):
    sae = load_sae(str(firing_sae))
    v = (40.0 * sae.decoder_row(A)).astype(np.float32)
    smollm2.set_directions({LAYER: v})
    ab = Ablation(sae, [A], LAYER, order=order, record=True)
    smollm2.set_ablation(ab)
    try:
        smollm2.generate(PROMPTS[2], SamplingParams(temperature=0.0, max_tokens=4), 0)
    finally:
        smollm2.set_ablation(None)
        smollm2.clear()
    h = np.concatenate([r[0] for r in ab.records])
    f = np.concatenate([r[1] for r in ab.records])
    enc_input = h - v if order == "pre" else h
    np.testing.assert_allclose(f, sae.encode(enc_input, [A]), rtol=1e-5, atol=1e-4)
    other = sae.encode(h if order == "pre" else h - v, [A])
    assert np.abs(f - other).max() > 10.0  # the two orders really differ under a vector along latent A


def test_bad_ablations_are_refused(firing_sae, smollm2):
    sae = load_sae(str(firing_sae))
    with pytest.raises(UserInputError, match="out of range"):
        Ablation(sae, [D_SAE], LAYER)
    with pytest.raises(UserInputError, match="order"):
        Ablation(sae, [A], LAYER, order="middle")
    with pytest.raises(UserInputError, match="at least one"):
        Ablation(sae, [], LAYER)
    with pytest.raises(UserInputError, match="cannot ablate at layer"):
        smollm2.set_ablation(Ablation(sae, [A], smollm2.n_layer - 1))
    assert smollm2.ablation is None


def test_encoder_may_read_an_earlier_layer(firing_sae, smollm2):
    """The 70B stack's arrangement: ablate at layer 8 with activations encoded from layer 6's residual."""
    sae = load_sae(str(firing_sae))
    ab = Ablation(sae, [A, B], 8, encode_layer=LAYER, record=True)
    smollm2.set_ablation(ab)
    try:
        gen = smollm2.generate(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=4), 0)
    finally:
        smollm2.set_ablation(None)
    toks = _decoded_tokens(smollm2, PROMPTS[0], gen)
    with ResidualReader(smollm2.llm, n_ctx=256) as reader:
        direct = reader.read(toks, [LAYER, 8])
    h8 = np.concatenate([r[0] for r in ab.records])
    f = np.concatenate([r[1] for r in ab.records])
    after = np.concatenate([r[2] for r in ab.records])
    scale = np.abs(direct[LAYER]).max()
    np.testing.assert_allclose(f, sae.encode(direct[LAYER], [A, B]), atol=2e-3 * scale)
    assert np.abs(h8 - direct[8]).max() < 2e-3 * np.abs(direct[8]).max()  # what was edited is layer 8's output
    np.testing.assert_allclose(after, h8 - f @ ab.decoder, atol=1e-4)
    assert (f > 0).any()
    with pytest.raises(UserInputError, match="must not come after"):
        Ablation(sae, [A], LAYER, encode_layer=LAYER + 1)


def test_a_failing_callback_fails_that_generation_only_with_its_own_error(firing_sae, smollm2, monkeypatch):
    """An exception in the callback is that generation's BackendError (not a stale one on the next
    generation, not llama_decode's 'context may be full'), on the plain and the prefill path alike."""
    from esr_local.errors import BackendError
    from esr_local.prefill import generate_after_prefix

    sae = load_sae(str(firing_sae))
    ab = Ablation(sae, [A], LAYER)
    smollm2.set_ablation(ab)
    try:
        with monkeypatch.context() as m:
            m.setattr(ab, "ablate_rows", lambda h, h_enc: 1 / 0)
            with pytest.raises(BackendError, match="in-graph ablation failed: ZeroDivisionError"):
                smollm2.generate(PROMPTS[1], GREEDY, 0)
            with pytest.raises(BackendError, match="in-graph ablation failed: ZeroDivisionError"):
                generate_after_prefix(smollm2, PROMPTS[1], "Sure", GREEDY, 0)
        assert smollm2.generate(PROMPTS[1], GREEDY, 0).token_ids  # the next generation works again
    finally:
        smollm2.set_ablation(None)
