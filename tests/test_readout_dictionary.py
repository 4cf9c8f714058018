"""The shipped dictionary's encoder on the real SmolLM2 GGUF: read through the SAE loader, it reproduces the
per-concept firing counts the builder recorded, stays silent on the neutral texts, and finds the concepts
that the shipped prompts are about."""

from __future__ import annotations

import json

import llama_cpp
import numpy as np
import pytest

from esr_local import dictionary as dic
from esr_local.paths import shipped_vectors_dir
from esr_local.prompts import load_prompts
from esr_local.readout import ResidualReader
from esr_local.saes import load_sae
from esr_local.text_readout import read_residuals

SHIPPED = shipped_vectors_dir() / dic.SHIPPED_DICTIONARY
CHECKED = 10  # concepts re-read here (all 38 take minutes on a busy 2-core machine; the rebuild test reads all)


@pytest.fixture(scope="module")
def build_reads():
    """Token residuals (first token skipped) of every concept text and neutral text, read as the builder does."""
    concepts = dic.load_concepts()
    # One thread reads the same numbers as the builder's BUILD_THREADS (test_dictionary's rebuild), and is far
    # faster on a busy 2-core machine.
    llm = llama_cpp.Llama(model_path=str(dic.default_model_path()), n_ctx=dic.DEFAULT_N_CTX,
                          n_threads=1, verbose=False, flash_attn=False)
    try:
        with ResidualReader(llm, n_ctx=dic.DEFAULT_N_CTX, n_threads=1, flash_attn=False) as reader:
            def read(text):
                toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
                return reader.read(toks, [dic.DEFAULT_LAYER])[dic.DEFAULT_LAYER][1:]
            own = [[read(t) for t in c.texts] for c in concepts.concepts[:CHECKED]]
            neutral = [read(t) for t in concepts.neutral]
    finally:
        llm.close()
    return own, neutral


def test_encoder_reproduces_recorded_firing_and_is_silent_on_neutral_texts(build_reads):
    own, neutral = build_reads
    sae = load_sae(str(SHIPPED))
    every = list(range(sae.d_sae))
    encoder = json.loads((SHIPPED / "cfg.json").read_text())["metadata"]["encoder"]
    recorded = encoder["own_texts_firing"]
    firing = [sum(bool(sae.encode(r, [i]).max() > 0) for r in texts) for i, texts in enumerate(own)]
    assert firing == recorded[:CHECKED]
    assert sum(recorded) >= 0.6 * sum(encoder["texts_per_concept"])  # most concepts fire on most own texts
    for r in neutral:
        assert not np.any(sae.encode(r, every)), "a latent fired on a neutral text"
    # On its own texts a concept's latent is the strongest one whenever it fires.
    for i, texts in enumerate(own):
        for r in texts:
            acts = sae.encode(r, every).max(axis=0)
            if acts[i] > 0:
                assert acts.argmax() == i


def test_prompts_about_a_concept_fire_it(smollm2):
    sae = load_sae(str(SHIPPED))
    keys = [c.key for c in dic.load_concepts().concepts]
    prompts = load_prompts().prompts
    by_prompt = {p: sae.encode(r.residual, list(range(sae.d_sae))).max(axis=0)
                 for p, r in zip(prompts, read_residuals(smollm2, prompts, dic.DEFAULT_LAYER))}
    sourdough = by_prompt["How do you bake a loaf of sourdough bread?"]
    assert sourdough[keys.index("bread_baking")] > 0
    # Most of the dictionary is irrelevant to most prompts: what the relevance filter needs.
    silent = np.mean([np.count_nonzero(v) == 0 for v in by_prompt.values()])
    assert silent > 0.3
    # The first token (norm ~2.5e4) fires nothing: the norm rescaling at work.
    first = read_residuals(smollm2, prompts[:1], dic.DEFAULT_LAYER)[0].residual[:1]
    assert np.linalg.norm(first) > 1e4 and not np.any(sae.encode(first, list(range(sae.d_sae))))
