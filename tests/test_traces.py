"""Traces: a trial's trace equals a direct teacher-forced readout (with and without its steering vector),
attempt boundaries land on the right tokens, and the CLI exports JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import numpy as np
from click.testing import CliRunner

from esr_local.cli import main
from esr_local.readout import ResidualReader
from esr_local.saes import load_sae
from esr_local.store import Store
from esr_local.traces import attempt_of_tokens, trace_trial

from test_ablation import A, B, LAYER, firing_sae  # noqa: F401 - fixtures
from test_ablation_runs import source_run  # noqa: F401


def test_attempt_boundaries():
    pieces = ["Hel", "lo", " wor", "ld", ".", " Wait", ",", " again", "!"]
    resp = "".join(pieces)
    assert attempt_of_tokens(pieces, resp, ["Hello world.", "Wait, again!"]) == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert attempt_of_tokens(pieces, resp, ["Hello", "world.", "Wait, again!"]) == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert attempt_of_tokens(pieces, resp, []) == [-1] * len(pieces)
    assert attempt_of_tokens(pieces, resp, ["not in the text", "again"]) == [-1] * 7 + [1, -1]


def test_trace_equals_a_direct_readout(source_run, firing_sae, smollm2):  # noqa: F811
    db, src = source_run
    trial = sqlite3.connect(db).execute("SELECT id, prompt, response, boost FROM trials WHERE run_id = ? "
                                        "ORDER BY prompt_index LIMIT 1", (src,)).fetchone()
    store = Store(db, create=False)
    steered = trace_trial(store, trial[0], [A, B], model=smollm2)
    plain = trace_trial(store, trial[0], [A, B], steered=False, model=smollm2)
    store.close()
    sae = load_sae(str(firing_sae))
    p = smollm2.tokenize(smollm2.format_prompt(trial[1]))
    r = smollm2.llm.tokenize(trial[2].encode(), add_bos=False, special=False)
    assert steered.tokens == r and steered.prompt_tokens == len(p) and steered.steered and steered.boost == 4.0
    with ResidualReader(smollm2.llm, n_ctx=256) as reader:
        h = reader.read(p + r, [LAYER], {LAYER: sae.decoder_row(A) * np.float32(4.0)})[LAYER]
        h0 = reader.read(p + r, [LAYER])[LAYER]
    np.testing.assert_allclose(steered.acts, sae.encode(h[len(p):], [A, B]), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(plain.acts, sae.encode(h0[len(p):], [A, B]), rtol=1e-6, atol=1e-5)
    both = (plain.acts[:, 0] > 0) & (steered.acts[:, 0] > 0)
    assert both.any()
    np.testing.assert_allclose(steered.acts[both, 0] - plain.acts[both, 0], 4.0, atol=1e-3)  # +4 along unit latent A
    assert set(steered.attempt) <= {-1, 0, 1, 2, 3, 4} and steered.attempt.count(0) > 0


def test_trace_cli_json_and_csv(source_run):  # noqa: F811
    db, src = source_run
    tid = sqlite3.connect(db).execute("SELECT id FROM trials WHERE run_id = ? LIMIT 1", (src,)).fetchone()[0]
    js = CliRunner().invoke(main, ["trace", tid, "--latents", f"{A},{B}", "--db", str(db), "--json"])
    assert js.exit_code == 0, js.output
    doc = json.loads(js.output)
    assert doc["latents"] == [A, B] and doc["layer"] == LAYER and len(doc["tokens"]) > 0
    cs = CliRunner().invoke(main, ["trace", tid, "--latents", f"{A},{B}", "--db", str(db), "--csv"])
    rows = list(csv.DictReader(io.StringIO(cs.output)))
    assert len(rows) == len(doc["tokens"]) and float(rows[0][f"latent_{A}"]) == doc["tokens"][0][f"latent_{A}"]
    bad = CliRunner().invoke(main, ["trace", "nope", "--db", str(db)])
    assert bad.exit_code != 0 and "no trial matches 'nope'" in bad.output
    bad = CliRunner().invoke(main, ["trace", tid, "--latents", "x", "--db", str(db)])
    assert bad.exit_code != 0 and "comma-separated integers" in bad.output


def test_trace_refuses_a_run_whose_model_file_changed(tmp_path):
    """Like a resume: a trace reads the model file the run recorded; another file is one clear error."""
    import pytest

    from esr_local.errors import UserInputError
    from esr_local.runs import RunOptions, create_run

    store = Store(tmp_path / "m.db")
    run_id, judge = create_run(store, RunOptions(latents=[0], boost=1.0, judge="openai:test-judge",
                                                 judge_base_url="http://127.0.0.1:9", skip_judge_check=True,
                                                 max_tokens=8, n_ctx=512))
    judge.close()
    spec = json.loads(store.get_run(run_id)["spec_json"])
    spec["model"].update(sha256="0" * 64, mtime_ns=1)  # as if the file had been rewritten since creation
    store.db.execute("UPDATE runs SET spec_json = ? WHERE id = ?", (json.dumps(spec), run_id))
    tid = store.record_trial({"run_id": run_id, "condition": "steered", "latent": 0, "prompt_index": 0, "replicate": 0,
                              "prompt": "Hi", "response": "Hello there.", "boost": 1.0}, None, [])
    with pytest.raises(UserInputError, match="changed since the run was created"):
        trace_trial(store, tid, [0])
    store.close()


def test_attempt_boundaries_survive_characters_split_across_tokens():
    """Byte-level tokens split 'é' and '🙂': their decoded pieces are longer than the text, so offsets
    must come from the bytes (the first attempt's '.' was marked as the second attempt)."""
    resp = "Café 🙂 ok. Wait, again!"
    b = resp.encode()
    cut = [0, 4, 5, 6, 8, 10, 13, 14, len(b)]  # inside 'é' (bytes 3-4) and inside the emoji (bytes 6-9)
    raw = [b[i:j] for i, j in zip(cut, cut[1:])]
    assert b"".join(raw) == b
    assert attempt_of_tokens(raw, resp, ["Café 🙂 ok.", "Wait, again!"]) == [0, 0, 0, 0, 0, 0, 0, 1]
    assert attempt_of_tokens(raw, resp, ["ok.", "Wait,"]) == [-1, -1, -1, -1, -1, 0, 0, 1]
