"""Prefill runs: replay a steered run's trials as the two prefill conditions, continued unsteered.

`prefill:first-attempt` starts the assistant turn with the source trial's first judged attempt (its
off-topic start, frozen into the spec at creation); `prefill:matched` starts it with the model's own
unsteered answer to the same prompt cut to the same number of tokens. Both share the source trial's
latent, prompt, replicate and seed, so `metrics --paired` compares them trial by trial. The stored
response is the whole assistant turn (prefix + continuation): that is what the judge splits.
"""

from __future__ import annotations

import dataclasses
import time

from .engine import Generation
from .errors import UserInputError
from .prefill import first_attempt, generate_after_prefix, matched_prefix, prefix_tokens

CONDITIONS = ["prefill:first-attempt", "prefill:matched"]


def _key(latent: int, prompt_index: int, replicate: int) -> str:
    return f"{int(latent)}:{int(prompt_index)}:{int(replicate)}"


def with_prefill(store, spec):
    """The replayed spec with each source trial's off-topic prefix frozen and the prefill conditions."""
    if spec.replay is None:
        raise UserInputError("a prefill run replays an earlier run's steered trials: add --replay RUN")
    if spec.ablation:
        raise UserInputError("give --prefill or an ablation, not both")
    src = spec.replay["source_run"]
    prefixes: dict[str, str] = {}
    for t in store.trials(src):
        if t["condition"] != "steered" or not t.get("response"):
            continue
        attempts = [a.get("text") or "" for a in t.get("attempts") or []]
        try:
            prefixes[_key(t["latent"], t["prompt_index"], t["replicate"])] = first_attempt(t["response"], attempts)
        except UserInputError:
            continue  # no usable first attempt: the trial is left out of the prefill run
    if not prefixes:
        raise UserInputError(f"run {src} has no judged steered trial whose first attempt can be prefilled")
    rows = [r for r in spec.replay["rows"] if _key(r["latent"], r["prompt_index"], r["replicate"]) in prefixes]
    replay = {**spec.replay, "rows": rows}
    return dataclasses.replace(spec, replay=replay, conditions=list(CONDITIONS), prefill={"prefixes": prefixes})


def generate_prefilled(lm, spec, trials) -> list[Generation]:
    """One Generation per trial of a prefill condition (decoded one at a time, unsteered)."""
    out = []
    lm.clear()
    for t in trials:
        prefix = spec.prefill["prefixes"][_key(t.latent, t.prompt_index, t.replicate)]
        t0 = time.perf_counter()
        toks = prefix_tokens(lm, prefix)
        if t.condition == "prefill:matched":
            toks = matched_prefix(lm, t.prompt, len(toks), spec.sampling, t.seed)
        g = generate_after_prefix(lm, t.prompt, toks, spec.sampling, t.seed)
        ms = (time.perf_counter() - t0) * 1000
        out.append(Generation(text=g.full_text, prompt_text=lm.format_prompt(t.prompt) + g.prefix_text,
                              prompt_tokens=len(g.context_tokens), completion_tokens=len(g.token_ids),
                              stop_reason=g.stop_reason, seed=g.seed, prefill_ms=0.0, generation_ms=ms,
                              token_ids=g.prefix_tokens + g.token_ids))
    return out
