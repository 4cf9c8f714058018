"""Text readout on the real SmolLM2 GGUF: the three presentations, and equality with a direct eval-callback
read of the same tokens (the reader the layer tests validate)."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from esr_local.errors import UserInputError
from esr_local.readout import ResidualReader
from esr_local.text_readout import format_text, read_residuals

LAYER = 6
PROMPT = "Explain how to fold a paper plane."


def test_raw_readout_equals_a_direct_callback_read(smollm2, smollm2_path):
    got = read_residuals(smollm2, [PROMPT], LAYER, mode="raw")[0]
    # 1 thread: the same numbers as 2, which stall on a busy 2-core machine (BENCHMARKS.md, Test suite)
    llm = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=256, n_threads=1, verbose=False)
    try:
        toks = llm.tokenize(PROMPT.encode(), add_bos=bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab)),
                            special=False)
        with ResidualReader(llm, n_ctx=256, flash_attn=smollm2.llm.context_params.flash_attn_type == 1) as reader:
            ref = reader.read(toks, [LAYER])[LAYER]
    finally:
        llm.close()
    assert got.token_ids == toks
    assert got.residual.shape == (len(toks), 576)
    np.testing.assert_allclose(got.residual, ref, rtol=1e-5, atol=1e-3)
    assert "".join(got.pieces) == PROMPT


def test_user_turn_has_no_generation_prompt_and_response_is_teacher_forced(smollm2):
    user, mode = format_text(smollm2, PROMPT)
    assert mode == "user"
    assert PROMPT in user and user.rstrip().endswith("<|im_end|>")
    assert "<|im_start|>assistant" not in user
    forced, mode = format_text(smollm2, PROMPT, response="Take a sheet of paper.")
    assert mode == "response"
    assert "<|im_start|>assistant" in forced and forced.endswith("Take a sheet of paper.")
    u, r = read_residuals(smollm2, [PROMPT, PROMPT], LAYER, responses=[None, "Take a sheet of paper."])
    assert u.mode == "user" and r.mode == "response"
    assert len(r.token_ids) > len(u.token_ids)
    # The user turn is a prefix of the teacher-forced text, and reads the same residual in both (causal).
    common = len(u.token_ids)
    assert r.token_ids[:common] == u.token_ids
    np.testing.assert_allclose(r.residual[:common], u.residual[:common], rtol=1e-4, atol=1e-2)
    assert "<|im_end|>" in u.pieces


def test_bad_readout_requests(smollm2):
    with pytest.raises(UserInputError, match="at least one text"):
        read_residuals(smollm2, [], LAYER)
    with pytest.raises(UserInputError, match="one response per text"):
        read_residuals(smollm2, ["a", "b"], LAYER, responses=["x"])
    with pytest.raises(UserInputError, match="mode"):
        format_text(smollm2, "a", mode="sideways")
    with pytest.raises(UserInputError, match="last block"):
        read_residuals(smollm2, ["a b c"], 29)
