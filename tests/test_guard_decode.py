"""Guard: the decode loop's stop handling, per-sequence seeds and samplers, the recorded fields, and
when a control-vector change is re-applied (esr_local/engine.py), on the embedded SmolLM2.

The penalty's history (prompt included) is guarded by test_guard_penalty.py against an independent
llama.cpp; here the loop's own bookkeeping: a generation stops at the end-of-generation token (not
kept in the text) or at exactly max_tokens, each parallel sequence draws with its own seed as if alone,
and every field of a Generation says what happened.
"""

from __future__ import annotations

import time

import llama_cpp
import numpy as np
import pytest

from esr_local.engine import SteeredModel
from esr_local.errors import UserInputError
from esr_local.sampling import SamplingParams

SHORT = "What is the capital of France? Answer with one word."  # greedy SmolLM2 answers and stops
PROMPT = "Explain how to change a bike tire."


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n)


@pytest.fixture()
def clean(smollm2):
    smollm2.clear()
    yield smollm2
    smollm2.clear()


def test_a_generation_stops_at_the_end_token_or_at_exactly_max_tokens(clean):
    free = clean.generate(SHORT, _greedy(48), 0)
    n = free.completion_tokens
    assert free.stop_reason == "eos" and 1 <= n < 48, (free.stop_reason, n, free.text)
    assert len(free.token_ids) == n
    assert not any(llama_cpp.llama_vocab_is_eog(clean.vocab, t) for t in free.token_ids)
    assert free.text == clean.llm.detokenize(free.token_ids).decode("utf-8") and "<|im_end|>" not in free.text
    # max_tokens = n: the n-th token is the last one, before the model could say it is done.
    cut = clean.generate(SHORT, _greedy(n), 0)
    assert (cut.stop_reason, cut.token_ids) == ("length", free.token_ids)
    # one more allowed: the end token comes, and is not counted.
    room = clean.generate(SHORT, _greedy(n + 1), 0)
    assert (room.stop_reason, room.token_ids) == ("eos", free.token_ids)
    shorter = clean.generate(SHORT, _greedy(n - 1), 0) if n > 1 else None
    if shorter is not None:
        assert (shorter.stop_reason, shorter.token_ids) == ("length", free.token_ids[: n - 1])


def test_the_generation_records_its_prompt_seed_and_counts(clean):
    sp = SamplingParams(temperature=0.9, max_tokens=7)
    gen = clean.generate(PROMPT, sp, 4242)
    prompt_text = clean.format_prompt(PROMPT)
    assert gen.prompt_text == prompt_text and gen.prompt_text.endswith("assistant\n")
    assert gen.prompt_tokens == len(clean.tokenize(prompt_text))
    assert gen.seed == 4242 and gen.completion_tokens == 7 == len(gen.token_ids) and gen.stop_reason == "length"


def test_timings_bracket_the_streamed_tokens(clean):
    # Not a speed test: the reported times must contain the span in which the tokens were streamed.
    seen: list[float] = []
    t0 = time.perf_counter()
    gen = clean.generate(PROMPT, _greedy(10), 0, on_text=lambda s: seen.append(time.perf_counter()))
    wall_ms = (time.perf_counter() - t0) * 1000
    streamed_ms = (seen[-2] - seen[0]) * 1000  # first token's callback to the last token's (the last is the flush)
    assert streamed_ms > 0
    assert streamed_ms <= gen.generation_ms <= wall_ms
    assert 0 < gen.prefill_ms <= (seen[0] - t0) * 1000
    assert gen.tokens_per_s == pytest.approx(10 / (gen.generation_ms / 1000))


def test_parallel_sequences_draw_with_their_own_seeds_as_if_alone(smollm2_path, clean):
    sp = SamplingParams(temperature=0.9, max_tokens=16)
    # The middle sequence stops early (end token), the others run to max_tokens: a loop that stopped
    # serving the others once one was done would cut them short.
    order = [(PROMPT, 5), (SHORT, 7), (PROMPT, 6)]
    alone = [clean.generate(p, sp, s) for p, s in order]
    assert alone[1].stop_reason == "eos" and alone[1].completion_tokens < 15
    assert alone[0].token_ids != alone[2].token_ids  # the seeds matter
    with SteeredModel(smollm2_path, n_ctx=512, n_seq=3, n_threads=1) as par:
        gens = par.generate_many([p for p, _ in order], sp, [s for _, s in order])
        assert par.generate_many([], sp, []) == []
        with pytest.raises(UserInputError, match=r"^generate_many got 2 prompts and 1 seeds for a context of 3 sequences$"):
            par.generate_many([PROMPT, SHORT], sp, [1])
        with pytest.raises(UserInputError, match=r"^generate_many got 4 prompts and 4 seeds for a context of 3 sequences$"):
            par.generate_many([PROMPT] * 4, sp, [1, 2, 3, 4])
    assert [g.token_ids for g in gens] == [g.token_ids for g in alone]
    assert [(g.stop_reason, g.seed, g.prompt_tokens) for g in gens] == [
        (g.stop_reason, g.seed, g.prompt_tokens) for g in alone]
    assert [g.seed for g in gens] == [5, 7, 6]
    # The early one's clock stopped when it did, several decode steps before the others' (not a speed
    # check: an ordering of events in one run).
    assert gens[1].generation_ms < gens[0].generation_ms and gens[1].generation_ms < gens[2].generation_ms


def _unit(n, seed):
    v = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    return v / np.linalg.norm(v)


def test_a_vector_changed_in_place_by_the_caller_is_applied_again(clean):
    v = _unit(clean.n_embd, 3) * 30
    doubled = v * 2
    clean.set_directions({10: doubled})
    want = clean.generate(PROMPT, _greedy(12), 0).token_ids
    clean.clear()
    clean.set_directions({10: v})
    before = clean.generate(PROMPT, _greedy(12), 0).token_ids
    assert before != want
    v *= 2  # the caller reuses its array: the model must have kept its own copy, and see the change
    clean.set_directions({10: v})
    assert clean.generate(PROMPT, _greedy(12), 0).token_ids == want


def test_changing_one_of_two_layers_is_applied(clean):
    a, b, c = (_unit(clean.n_embd, s) * 40 for s in (11, 12, 13))
    clean.set_directions({5: a, 20: c.astype(np.float64)})
    assert clean.directions[20].dtype == np.float32  # kept as llama.cpp gets it
    want = clean.generate(PROMPT, _greedy(12), 0).token_ids
    clean.set_directions({5: a, 20: b})
    other = clean.generate(PROMPT, _greedy(12), 0).token_ids
    clean.set_directions({5: a, 20: c})  # same first layer, second one changed back
    assert other != want and clean.generate(PROMPT, _greedy(12), 0).token_ids == want
    assert set(clean.directions) == {5, 20}
    np.testing.assert_array_equal(clean.directions[20], c)


EMOJI = "Reply with three emoji and nothing else."


def _complete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_a_generation_cut_inside_a_character_streams_what_it_records(clean):
    # Byte-level tokens split an emoji; max_tokens can stop between its bytes. The text then ends in one
    # U+FFFD, and the stream (flushed at the end) says the same.
    full = clean.generate(EMOJI, _greedy(24), 0)
    prefixes = [clean.llm.detokenize(full.token_ids[:i]) for i in range(1, len(full.token_ids) + 1)]
    cuts = [i for i, raw in enumerate(prefixes, 1) if not _complete_utf8(raw)]
    assert cuts, f"no character split across tokens in {full.text!r}: choose another prompt"
    n = cuts[0]
    pieces: list[str] = []
    gen = clean.generate(EMOJI, _greedy(n), 0, on_text=pieces.append)
    assert gen.token_ids == full.token_ids[:n] and gen.stop_reason == "length"
    assert gen.text == prefixes[n - 1].decode("utf-8", errors="replace") and gen.text.endswith("\ufffd")
    assert "".join(pieces) == gen.text
    # Whole characters split across tokens stream as whole characters.
    m = next(i for i in range(n + 1, len(prefixes) + 1) if _complete_utf8(prefixes[i - 1]))
    whole: list[str] = []
    done = clean.generate(EMOJI, _greedy(m), 0, on_text=whole.append)
    assert "".join(whole) == done.text == prefixes[m - 1].decode("utf-8") and "\ufffd" not in done.text
