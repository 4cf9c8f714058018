"""Prefill controls (paper v3): continue an assistant turn that already starts with given text, unsteered.

- `off-topic prefill`: the assistant turn starts with a steered trial's first (off-topic) attempt;
- `matched prefix`: a generic on-topic prefix of the same number of tokens (the model's own unsteered
  answer to the same prompt, cut to that length), so the two differ in topic, not in length.

Both continue *without* the steering vector and are paired with their source trial (same prompt and
seed). The prefix enters the context as exact token ids after the chat template's generation prompt;
the repetition penalty covers prompt and prefix, as it covers the prompt in an ordinary trial.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp

from .errors import UserInputError
from .sampling import make_sampler


@dataclass
class PrefillGeneration:
    """A continuation after an exact prefix: `text` is the continuation only; `full_text` adds the prefix."""

    prefix_text: str
    prefix_tokens: list[int]
    context_tokens: list[int]  # template prompt + prefix, exactly as decoded
    text: str
    token_ids: list[int]
    stop_reason: str
    seed: int

    @property
    def full_text(self) -> str:
        return self.prefix_text + self.text


def prefix_tokens(model, text: str) -> list[int]:
    """Token ids of an assistant-turn prefix (no BOS, special tokens not parsed)."""
    if not text:
        raise UserInputError("a prefill needs a non-empty prefix")
    return model.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def generate_after_prefix(model, user_text: str, prefix: str | Sequence[int], sampling, seed: int) -> PrefillGeneration:
    """Continue `user_text`'s assistant turn after `prefix` (text, or exact token ids), with whatever vector
    the model has set (callers clear it for the prefill conditions)."""
    sampling.validate()
    toks = list(prefix) if not isinstance(prefix, str) else prefix_tokens(model, prefix)
    if not toks:
        raise UserInputError("a prefill needs a non-empty prefix")
    ptext = prefix if isinstance(prefix, str) else model.llm.detokenize(toks).decode("utf-8", errors="replace")
    formatted = model.format_prompt(user_text)
    context = model.tokenize(formatted) + toks
    model._check_fits(len(context), sampling.max_tokens)
    model._clear_memory()
    smpl = make_sampler(sampling, int(seed), model.n_ctx, model.n_vocab)
    try:
        (gen,) = model._decode_loop([formatted + ptext], [list(context)], [smpl], sampling, [int(seed)], None)
    finally:
        llama_cpp.llama_sampler_free(smpl)
    return PrefillGeneration(prefix_text=ptext, prefix_tokens=toks, context_tokens=context, text=gen.text,
                             token_ids=gen.token_ids, stop_reason=gen.stop_reason, seed=int(seed))


def first_attempt(response: str, attempts: Sequence[str]) -> str:
    """The off-topic prefix of a steered trial: its first judged attempt's text as it appears in the response
    (from the response's start through that attempt's end)."""
    if not attempts or not (attempts[0] or "").strip():
        raise UserInputError("the trial has no judged first attempt to prefill with; judge it first")
    t = attempts[0].strip()
    at = response.find(t)
    if at < 0:
        raise UserInputError("the judge's first attempt is not a verbatim part of the response; cannot prefill with it")
    return response[: at + len(t)]


def matched_prefix(model, user_text: str, n_tokens: int, sampling, seed: int) -> list[int]:
    """A generic on-topic prefix of exactly `n_tokens` tokens: the unsteered answer to `user_text`, cut."""
    if n_tokens < 1:
        raise UserInputError("a matched prefix needs at least one token")
    saved = dict(model.directions)
    model.clear()
    try:
        from dataclasses import replace

        gen = model.generate(user_text, replace(sampling, max_tokens=max(n_tokens, 1)), seed)
    finally:
        model.set_directions(saved or None)
    if len(gen.token_ids) < n_tokens:
        raise UserInputError(f"the unsteered answer ended after {len(gen.token_ids)} tokens, shorter than the "
                             f"{n_tokens}-token prefix to match")
    return gen.token_ids[:n_tokens]


def prefill_pair(model, user_text: str, off_topic_prefix: str, sampling, seed: int) -> dict:
    """Both prefill conditions for one source trial, continued unsteered: `prefill` (off-topic) and
    `prefill_matched` (on-topic, same token count)."""
    saved = dict(model.directions)
    model.clear()
    try:
        off = generate_after_prefix(model, user_text, off_topic_prefix, sampling, seed)
        on_toks = matched_prefix(model, user_text, len(off.prefix_tokens), sampling, seed)
        on = generate_after_prefix(model, user_text, on_toks, sampling, seed)
    finally:
        model.set_directions(saved or None)
    return {"prefill": off, "prefill_matched": on}
