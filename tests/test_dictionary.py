"""The shipped contrastive concept dictionary: SAELens layout, reproducible rebuild, real steering effect."""

from __future__ import annotations

import csv
import hashlib
import json

import llama_cpp
import numpy as np
import pytest
from safetensors import safe_open

from esr_local import dictionary as dic
from esr_local.cvec import apply_to_context
from esr_local.errors import FormatError, UserInputError
from esr_local.layers import layer_from_hook
from esr_local.paths import shipped_vectors_dir
from esr_local.saes import load_sae

SHIPPED = shipped_vectors_dir() / dic.SHIPPED_DICTIONARY


def _weights(folder) -> dict[str, np.ndarray]:
    with safe_open(str(folder / "sae_weights.safetensors"), framework="numpy") as fh:
        return {key: fh.get_tensor(key) for key in fh.keys()}


def _labels(folder) -> list[tuple[int, str]]:
    with (folder / "labels.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["index_in_sae", "label"]
    return [(int(i), label) for i, label in rows[1:]]


def test_shipped_dictionary_is_saelens_layout():
    cfg = json.loads((SHIPPED / "cfg.json").read_text(encoding="utf-8"))
    assert cfg["architecture"] == "jumprelu"  # the projection encoder (esr_local/dictionary_encoder.py)
    assert cfg["d_in"] == 576
    assert cfg["dtype"] == "float32"
    assert cfg["apply_b_dec_to_input"] is False
    assert cfg["normalize_activations"] == "constant_norm_rescale"
    meta = cfg["metadata"]
    assert meta["model_name"] == "SmolLM2-135M-Instruct"
    assert meta["hook_name"] == f"blocks.{dic.DEFAULT_LAYER}.hook_resid_post"
    assert layer_from_hook(meta["hook_name"]) == dic.DEFAULT_LAYER == meta["llama_cpp_layer"]
    assert meta["trained"] is False

    w = _weights(SHIPPED)
    d_sae = cfg["d_sae"]
    assert d_sae >= 32
    assert w["W_dec"].shape == (d_sae, 576) and w["W_dec"].dtype == np.float32
    assert w["W_enc"].shape == (576, d_sae)
    assert w["b_enc"].shape == (d_sae,) and w["b_dec"].shape == (576,)
    assert not np.any(w["b_dec"])
    assert w["threshold"].shape == (d_sae,) and np.all(w["threshold"] > 0)
    # Each encoder column points along its concept's decoder row (a projection, not a trained encoder).
    cos = np.sum(w["W_enc"].T * w["W_dec"], axis=1) / (
        np.linalg.norm(w["W_enc"], axis=0) * np.linalg.norm(w["W_dec"], axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)
    assert np.all(np.isfinite(w["W_dec"]))
    norms = np.linalg.norm(w["W_dec"], axis=1)
    assert np.all(norms > 1.0)
    # Rows are distinct concepts, not one shared direction.
    unit = w["W_dec"] / norms[:, None]
    cos = unit @ unit.T
    np.fill_diagonal(cos, 0.0)
    assert cos.max() < 0.9


def test_shipped_labels_match_concepts_file():
    cfg = json.loads((SHIPPED / "cfg.json").read_text(encoding="utf-8"))
    concepts = dic.load_concepts()
    labels = _labels(SHIPPED)
    assert [i for i, _ in labels] == list(range(cfg["d_sae"]))
    assert [label for _, label in labels] == [c.label for c in concepts.concepts]
    assert len(set(label for _, label in labels)) == len(labels)
    assert all(label.strip() for _, label in labels)
    # The shipped weights were built from the concepts file as it is now.
    digest = hashlib.sha256(dic.default_concepts_file().read_bytes()).hexdigest()
    assert cfg["metadata"]["concepts_sha256"] == digest
    assert cfg["metadata"]["concept_keys"] == [c.key for c in concepts.concepts]
    assert cfg["metadata"]["model_sha256"] == hashlib.sha256(dic.default_model_path().read_bytes()).hexdigest()


def test_concepts_file_has_enough_texts():
    concepts = dic.load_concepts()
    assert len(concepts.concepts) >= 32
    assert 8 <= len(concepts.neutral) <= 12
    for concept in concepts.concepts:
        assert 4 <= len(concept.texts) <= 6, concept.key


def test_shipped_dictionary_records_how_it_was_built():
    """What a rebuild depends on is recorded once, in cfg.json, and matches this checkout and install."""
    meta = json.loads((SHIPPED / "cfg.json").read_text(encoding="utf-8"))["metadata"]
    concepts = dic.load_concepts()
    assert meta["llama_cpp_python_version"] == llama_cpp.__version__  # the same kernels as at build time
    assert (meta["build_threads"], meta["flash_attn"], meta["context_size"]) == (dic.BUILD_THREADS, False, dic.DEFAULT_N_CTX)
    assert (meta["baseline"], meta["llama_cpp_layer"]) == ("centroid", dic.DEFAULT_LAYER)
    assert meta["method"] == dic._METHODS["centroid"].format(L=dic.DEFAULT_LAYER)
    assert meta["n_texts"] == sum(len(c.texts) for c in concepts.concepts)
    assert meta["model_file"] == dic.default_model_path().name
    assert meta["encoder"]["texts_per_concept"] == [len(c.texts) for c in concepts.concepts]
    w = _weights(SHIPPED)
    # centroid baseline: the rows sum to zero; the encoder is the documented projection of each row
    np.testing.assert_allclose(w["W_dec"].sum(axis=0), 0.0, atol=1e-3)
    dec = w["W_dec"].astype(np.float64)
    rho = meta["encoder"]["norm_scale"]  # rounded to 4 decimals in cfg.json
    expected = (dec / (dec * dec).sum(axis=1, keepdims=True) * (rho / np.sqrt(dec.shape[1]))).T
    np.testing.assert_allclose(w["W_enc"], expected, rtol=1e-5)


def test_rebuild_is_byte_identical(tmp_path):
    """The shipped dictionary (built with BUILD_THREADS) rebuilt end to end from the concepts file with one
    thread: the same bytes, so the weights depend on neither the run nor the thread count. 2 threads on a busy
    2-core machine took 310 s (the threads wait on each other), 1 takes ~25 s."""
    out = dic.build_concept_dictionary(layer=dic.DEFAULT_LAYER, out_dir=tmp_path / "dict", n_threads=1)
    rebuilt = (out / "sae_weights.safetensors").read_bytes()
    shipped = (SHIPPED / "sae_weights.safetensors").read_bytes()
    if rebuilt != shipped:
        # Say how far apart they are before failing, to tell a CPU/kernel difference from a real change.
        a, b = _weights(out)["W_dec"], _weights(SHIPPED)["W_dec"]
        pytest.fail(f"rebuilt W_dec differs from the shipped one: max |diff| = {np.abs(a - b).max()}")
    for name in ("labels.csv", dic.CONCRETENESS_FILE):
        assert (out / name).read_bytes() == (SHIPPED / name).read_bytes(), name
    rebuilt_cfg, shipped_cfg = (json.loads((d / "cfg.json").read_text()) for d in (out, SHIPPED))
    assert (rebuilt_cfg["metadata"].pop("build_threads"), shipped_cfg["metadata"].pop("build_threads")) == (1, dic.BUILD_THREADS)
    assert rebuilt_cfg == shipped_cfg


def test_bad_concepts_files_are_rejected(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[neutral]\ntexts = ["a b c", "d e f"]\n', encoding="utf-8")
    with pytest.raises(FormatError, match="concept"):
        dic.load_concepts(bad)
    bad.write_text(
        '[neutral]\ntexts = ["a b c", "d e f"]\n'
        '[[concept]]\nkey = "x"\nlabel = "X"\ntexts = ["one two", "three four"]\n'
        '[[concept]]\nkey = "x"\nlabel = "Y"\ntexts = ["one two", "three four"]\n',
        encoding="utf-8",
    )
    with pytest.raises(FormatError, match="twice"):
        dic.load_concepts(bad)
    bad.write_text("not = [valid", encoding="utf-8")
    with pytest.raises(FormatError):
        dic.load_concepts(bad)
    with pytest.raises(UserInputError, match="layer"):
        dic.build_concept_dictionary(layer=29, out_dir=tmp_path / "x")


def test_steering_with_a_concept_row_changes_the_answer_and_clearing_restores_it():
    w = _weights(SHIPPED)["W_dec"]
    row = [c.key for c in dic.load_concepts().concepts].index("weddings")
    llm = llama_cpp.Llama(
        model_path=str(dic.default_model_path()), n_ctx=512, n_threads=1, verbose=False, flash_attn=True
    )
    n_layer, n_embd = llama_cpp.llama_model_n_layer(llm.model), llm.n_embd()
    messages = [{"role": "user", "content": "How do I make a cup of tea?"}]

    def answer() -> str:
        llm.reset()  # drop KV computed under the previous vector
        out = llm.create_chat_completion(messages, temperature=0.0, max_tokens=40)
        return out["choices"][0]["message"]["content"]

    try:
        base = answer()
        apply_to_context(llm.ctx, {dic.DEFAULT_LAYER: 4.0 * w[row]}, n_layer, n_embd)
        steered = answer()
        apply_to_context(llm.ctx, None, n_layer, n_embd)
        cleared = answer()
    finally:
        llm.close()
    assert steered != base
    assert cleared == base


def test_shipped_dictionary_loads_through_the_sae_loader():
    sae = load_sae(str(SHIPPED))
    assert sae.info.family == "saelens"
    assert (sae.d_model, sae.d_sae) == (576, len(dic.load_concepts().concepts))
    assert sae.info.layer == dic.DEFAULT_LAYER
    assert sae.info.model_name == "SmolLM2-135M-Instruct"
    w = _weights(SHIPPED)["W_dec"]
    for i in (0, 1, sae.d_sae - 1):
        assert np.array_equal(sae.decoder_row(i), w[i])
        assert sae.label(i) == dic.load_concepts().concepts[i].label
    # The encoder is real: a residual along concept i's direction fires latent i, more than any other.
    for i in range(sae.d_sae):
        h = (w[i] / np.linalg.norm(w[i]) * 150).astype(np.float32)[None, :]
        acts = sae.encode(h, list(range(sae.d_sae)))[0]
        assert acts[i] > 0 and acts.argmax() == i
