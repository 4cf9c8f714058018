"""Guard: the paper's repetition penalty covers the PROMPT and the whole context, in the real decode loop.

Real llama.cpp on the embedded SmolLM2, greedy. A second, independent llama.cpp instance computes the
model's logits for the prompt plus the generated tokens in one pass; applying the penalty to those logits
by hand (divide a positive logit by the penalty, multiply a negative one, for every token already in the
context) must predict every token the engine chose. The prompt is built so that the unpenalised answer's
first token ("The") occurs in the prompt once, more than 64 tokens before its end, and nowhere after: a
decode loop that left the prompt out of the penalty's history, or looked back only 64 tokens (llama-cpp-
python's default), answers "The" first.
"""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from esr_local.sampling import SamplingParams

FILLER = " ".join(["the river flows slowly past the old mill, and the weather stays mild all week."] * 5)
PROMPT = "The secret word is zebra. " + FILLER + " What is the secret word? Answer with one word."
PENALTY = 1.1  # the paper's value


def _penalised(logits: np.ndarray, history: list[int], penalty: float) -> np.ndarray:
    out = logits.astype(np.float64).copy()
    seen = np.unique(np.asarray(history, dtype=np.int64))
    v = out[seen]
    out[seen] = np.where(v <= 0, v * penalty, v / penalty)
    return out


@pytest.fixture(scope="module")
def reference(smollm2_path):
    """An independent llama.cpp context that returns the logits of every position."""
    # One thread for the prompt too (n_threads_batch defaults to every core): llama.cpp's OpenMP team of
    # several threads would hang a process forked after it, as mutmut forks each mutant's test run.
    ref = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=512, n_batch=512, logits_all=True,
                          flash_attn=True, n_threads=1, n_threads_batch=1, verbose=False)
    yield ref
    ref.close()


def test_the_unpenalised_first_token_occurs_only_early_in_the_prompt(smollm2):
    smollm2.clear()
    prompt_ids = smollm2.tokenize(smollm2.format_prompt(PROMPT))
    off = smollm2.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=1, repetition_penalty=1.0), 0)
    first = off.token_ids[0]
    where = [i for i, t in enumerate(prompt_ids) if t == first]
    assert len(where) == 1 and len(prompt_ids) - where[0] > 64, (first, where, len(prompt_ids))
    on = smollm2.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=1, repetition_penalty=PENALTY), 0)
    assert on.token_ids[0] != first  # the prompt's "The", 100+ tokens back, is penalised


def test_every_greedy_token_is_the_argmax_of_the_penalised_logits(smollm2, reference):
    smollm2.clear()
    prompt_ids = smollm2.tokenize(smollm2.format_prompt(PROMPT))
    gen = smollm2.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=12, repetition_penalty=PENALTY), 0)
    out = gen.token_ids
    assert gen.prompt_tokens == len(prompt_ids) and len(out) >= 4
    reference.reset()
    reference.eval(prompt_ids + out)
    steps = len(out) + (1 if gen.stop_reason == "eos" else 0)  # the end-of-generation token is a choice too
    for i in range(steps):
        logits = np.array(reference.scores[len(prompt_ids) - 1 + i])
        expected = _penalised(logits, prompt_ids + out[:i], PENALTY)
        top2 = np.sort(expected)[-2:]
        assert top2[1] - top2[0] > 0.05, f"step {i}: near tie, the check would be fragile"
        best = int(np.argmax(expected))
        if i < len(out):
            assert out[i] == best, f"step {i}: engine chose {out[i]}, penalised argmax is {best}"
        else:
            assert llama_cpp.llama_vocab_is_eog(smollm2.vocab, best)
    # The check discriminates: without the penalty the first token would differ.
    assert int(np.argmax(np.array(reference.scores[len(prompt_ids) - 1]))) != out[0]
