"""Prefill controls on the real SmolLM2: the continuation starts from the exact prefix tokens (a greedy
answer cut after k tokens and prefilled continues exactly as the uncut answer did), the matched prefix has
the off-topic prefix's length, and both continue without the steering vector."""

from __future__ import annotations

import numpy as np
import pytest

from esr_local.errors import UserInputError
from esr_local.prefill import first_attempt, generate_after_prefix, prefill_pair, prefix_tokens
from esr_local.sampling import SamplingParams

from test_ablation import firing_sae  # noqa: F401 - fixture of source_run
from test_ablation_runs import source_run  # noqa: F401

PROMPT = "How do I boil an egg?"
GREEDY = SamplingParams(temperature=0.0, max_tokens=14)


def test_prefill_continues_from_the_exact_prefix_tokens(smollm2):
    smollm2.clear()
    full = smollm2.generate(PROMPT, GREEDY, 0)
    assert len(full.token_ids) == 14
    for k in (1, 5, 9):
        cont = generate_after_prefix(smollm2, PROMPT, full.token_ids[:k], SamplingParams(temperature=0.0, max_tokens=14 - k), 0)
        assert cont.context_tokens == smollm2.tokenize(smollm2.format_prompt(PROMPT)) + full.token_ids[:k]
        assert cont.prefix_tokens == full.token_ids[:k]
        assert cont.token_ids == full.token_ids[k:]
    text = "Sure! Paper planes are fun."
    cont = generate_after_prefix(smollm2, PROMPT, text, SamplingParams(temperature=0.0, max_tokens=4), 0)
    assert cont.context_tokens[-len(cont.prefix_tokens):] == prefix_tokens(smollm2, text)
    assert cont.full_text.startswith(text) and cont.prefix_text == text


def test_prefill_pair_is_unsteered_and_length_matched(smollm2):
    sp = SamplingParams(temperature=0.0, max_tokens=8)
    off = "Paper planes fly best when folded from light paper."
    smollm2.clear()
    expected_off = generate_after_prefix(smollm2, PROMPT, off, sp, 3)
    smollm2.set_directions({12: np.full(smollm2.n_embd, 3.0, np.float32)})  # a vector the pair must not use
    try:
        pair = prefill_pair(smollm2, PROMPT, off, sp, 3)
        assert 12 in smollm2.directions  # restored afterwards
    finally:
        smollm2.clear()
    assert pair["prefill"].token_ids == expected_off.token_ids
    assert len(pair["prefill_matched"].prefix_tokens) == len(pair["prefill"].prefix_tokens)
    unsteered = smollm2.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=len(pair["prefill"].prefix_tokens)), 3)
    assert pair["prefill_matched"].prefix_tokens == unsteered.token_ids  # the model's own on-topic answer, cut


def test_first_attempt_and_bad_prefixes(smollm2):
    resp = "Let me talk about cats. Cats purr.\n\nWait, back to eggs: boil water first."
    assert first_attempt(resp, ["Let me talk about cats. Cats purr.", "Wait, back to eggs: boil water first."]) == \
        "Let me talk about cats. Cats purr."
    with pytest.raises(UserInputError, match="no judged first attempt"):
        first_attempt(resp, [])
    with pytest.raises(UserInputError, match="not a verbatim part"):
        first_attempt(resp, ["Dogs bark."])
    with pytest.raises(UserInputError, match="non-empty prefix"):
        generate_after_prefix(smollm2, PROMPT, "", GREEDY, 0)


def test_prefill_run_pairs_with_the_steered_source(source_run):  # noqa: F811
    import json
    import sqlite3

    from click.testing import CliRunner

    from esr_local.cli import main

    db, src = source_run
    res = CliRunner().invoke(main, ["run", "--db", str(db), "--replay", src, "--prefill", "--skip-judge-check", "--json"])
    assert res.exit_code == 0, res.output
    rid = json.loads(res.output[res.output.index("{"):])["summary"]["run_id"]
    con = sqlite3.connect(db)
    spec = json.loads(con.execute("SELECT spec_json FROM runs WHERE id = ?", (rid,)).fetchone()[0])
    assert spec["conditions"] == ["prefill:first-attempt", "prefill:matched"] and spec["prefill"]["prefixes"]
    src_rows = {(r[0], r[1], r[2]): r[3] for r in con.execute(
        "SELECT latent, prompt_index, seed, response FROM trials WHERE run_id = ?", (src,))}
    rows = con.execute("SELECT condition, latent, prompt_index, seed, boost, response, prompt_tokens FROM trials "
                       "WHERE run_id = ? ORDER BY latent, prompt_index, condition", (rid,)).fetchall()
    assert rows and {r[0] for r in rows} == {"prefill:first-attempt", "prefill:matched"}
    by = {}
    for cond, lat, pi, seed, boost, resp, ptoks in rows:
        assert (lat, pi, seed) in src_rows and boost == 0.0
        prefix = spec["prefill"]["prefixes"][f"{lat}:{pi}:0"]
        assert src_rows[(lat, pi, seed)].startswith(prefix)
        if cond == "prefill:first-attempt":
            assert resp.startswith(prefix)  # the stored turn starts with the exact off-topic prefix
        by.setdefault((lat, pi), {})[cond] = ptoks
    for conds in by.values():  # same context length: the matched prefix has the off-topic prefix's token count
        assert conds["prefill:first-attempt"] == conds["prefill:matched"]
    cmp = CliRunner().invoke(main, ["metrics", "--db", str(db), "--paired", f"{src}:steered",
                                    f"{rid}:prefill:first-attempt", "--json"])
    assert cmp.exit_code == 0, cmp.output
    assert json.loads(cmp.output)["pairs"] == len(by)
