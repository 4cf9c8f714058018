"""Stored traces on the real SmolLM2 GGUF with the firing synthetic SAE: a stored trace equals a direct
teacher-forced readout exactly, an identical request reads it back (a tampered value shows it was not
recomputed; --recompute replaces it), the region view equals a hand computation from the stored values,
a trace failing or killed midway leaves no rows, a re-judged trial is traced again, and bad input is one
`Error:` line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from esr_local import __version__
from esr_local.cli import main
from esr_local.readout import ResidualReader
from esr_local.saes import load_sae
from esr_local.store import Store
from esr_local.trace_store import get_trace

from test_ablation import A, B, LAYER, firing_sae  # noqa: F401 - fixtures
from test_ablation_runs import source_run  # noqa: F401
from test_traces_regions import RESP

FIRST = "Octopuses have three hearts and blue blood."
SECOND = "Wait, that is not right. Let me get back to the question: fold the paper in half, then fold the corners down."


@pytest.fixture(scope="module")
def run_db(source_run):  # noqa: F811
    """The source run (3 judged single-attempt trials) plus one judged two-attempt trial (scores 10, 80)."""
    db, src = source_run
    with Store(db, create=False) as store:
        multi = store.record_trial(
            {"run_id": src, "condition": "steered", "latent": A, "prompt_index": 90, "replicate": 0, "seed": 1,
             "prompt": "Explain how to fold a paper plane.", "response": RESP, "boost": 4.0},
            {"judge_key": store.run_judge_key(src), "judge_backend": "offline", "judge_model": "hand", "parse_status": "ok"},
            [{"text": FIRST, "score": 10.0}, {"text": SECOND, "score": 80.0}])
    return db, src, multi


def _q(db, sql, params=()):
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def _first_trial(db, src):
    return _q(db, "SELECT id, prompt, response FROM trials WHERE run_id = ? AND prompt_index < 90 "
              "ORDER BY prompt_index LIMIT 1", (src,))[0]


def test_a_stored_trace_equals_a_direct_readout(run_db, firing_sae, smollm2):  # noqa: F811
    db, src, _ = run_db
    tid, prompt, response = _first_trial(db, src)
    with Store(db, create=False) as store:
        res = get_trace(store, tid, [A, B], model=smollm2)
        spec_sha = json.loads(store.get_run(src)["spec_json"])["model"]["sha256"]
    assert res.computed and res.trace.trace_id
    sae = load_sae(str(firing_sae))
    p = smollm2.tokenize(smollm2.format_prompt(prompt))
    r = smollm2.llm.tokenize(response.encode(), add_bos=False, special=False)
    with ResidualReader(smollm2.llm, n_ctx=max(64, len(p) + len(r)), n_threads=smollm2.n_threads) as reader:
        h = reader.read(p + r, [LAYER], {LAYER: sae.decoder_row(A) * np.float32(4.0)})[LAYER]
    direct = sae.encode(h[len(p):], [A, B])
    assert res.trace.tokens == r and (direct > 0).any()
    np.testing.assert_array_equal(res.trace.acts, direct)  # read back from SQLite, bit for bit
    rows = _q(db, "SELECT position, latent, activation FROM trace_values WHERE trace_id = ? ORDER BY latent, position",
              (res.trace.trace_id,))
    assert len(rows) == 2 * len(r)
    assert [v for _, j, v in rows if j == B] == [float(x) for x in direct[:, 1]]
    meta = _q(db, "SELECT latents_json, layer, steered, boost, model_sha256, encoder, esr_local_version, n_attempts, "
                  "judge_key IS NOT NULL, n_tokens, sae_sha256 FROM traces WHERE id = ?", (res.trace.trace_id,))[0]
    assert meta[:10] == (f"[{A}, {B}]", LAYER, 1, 4.0, spec_sha, "saelens:standard", __version__, 1, 1, len(r))
    assert len(meta[10]) == 64
    assert set(res.trace.region) == {"single"}  # a single-attempt trial: the paper's baseline episodes


def test_an_identical_request_reads_the_trace_back_and_recompute_replaces_it(run_db, smollm2):
    db, src, _ = run_db
    tid = _first_trial(db, src)[0]
    with Store(db, create=False) as store:
        first = get_trace(store, tid, [B], steered=False, model=smollm2)
        true_value = float(first.trace.acts[0, 0])
        store.db.execute("UPDATE trace_values SET activation = 123.5 WHERE trace_id = ? AND position = 0",
                         (first.trace.trace_id,))
        store.db.conn.commit()
        again = get_trace(store, tid, [B], steered=False, model=smollm2)
        assert not again.computed and again.trace.trace_id == first.trace.trace_id
        assert again.trace.acts[0, 0] == np.float32(123.5)  # what the store holds: nothing was recomputed
        fresh = get_trace(store, tid, [B], steered=False, recompute=True, model=smollm2)
        assert fresh.computed and fresh.trace.trace_id != first.trace.trace_id
        assert float(fresh.trace.acts[0, 0]) == true_value
        np.testing.assert_array_equal(fresh.trace.acts, first.trace.acts)
    assert _q(db, "SELECT COUNT(*) FROM traces WHERE trial_id = ? AND latents_json = ? AND steered = 0",
              (tid, f"[{B}]"))[0][0] == 1
    assert _q(db, "SELECT COUNT(*) FROM trace_values WHERE trace_id = ?", (first.trace.trace_id,))[0][0] == 0


def test_the_region_view_equals_a_hand_computation(run_db, smollm2):
    db, src, multi = run_db
    with Store(db, create=False) as store:
        tr = get_trace(store, multi, [A, B], steered=False, model=smollm2).trace
    # By hand: each token's first visible character against the cuts 44 ('Wait') and 102 ('fold').
    starts, pos = [], 0
    for piece in (smollm2.llm.detokenize([t]).decode() for t in tr.tokens):
        starts.append(pos + (len(piece) - len(piece.lstrip()) if piece.strip() else 0))
        pos += len(piece)
    assert pos == len(RESP)
    want = ["off_topic" if s < 44 else "correction" if s < 102 else "on_topic" for s in starts]
    assert tr.region == want and {"off_topic", "correction", "on_topic"} == set(want)
    assert tr.attempt == [0 if s < 43 else 1 for s in starts]
    (row,) = _q(db, "SELECT correction_start, on_topic_start, n_attempts, first_score, last_score FROM traces WHERE id = ?",
                (tr.trace_id,))
    assert row == (44, 102, 2, 10.0, 80.0)
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    view = {r["latent"]: dict(r) for r in con.execute("SELECT * FROM trace_region_stats WHERE trace_id = ?", (tr.trace_id,))}
    values = con.execute("SELECT latent, region, activation FROM trace_values WHERE trace_id = ?", (tr.trace_id,)).fetchall()
    con.close()
    assert set(view) == {A, B}
    for j in (A, B):
        v = view[j]
        assert (v["paper_episode"], v["n_tokens"], v["single_tokens"], v["single_mean"]) == (1, len(tr.tokens), 0, None)
        for region in ("off_topic", "correction", "on_topic"):
            xs = [x for lat, reg, x in values if lat == j and reg == region]
            assert v[f"{region}_tokens"] == len(xs) == want.count(region)
            assert v[f"{region}_mean"] == pytest.approx(sum(xs) / len(xs), rel=1e-12, abs=1e-15)
            assert v[f"{region}_max"] == max(xs)
    assert any(view[j]["off_topic_max"] > 0 for j in (A, B))


def test_a_trace_failing_midway_leaves_no_rows(run_db, smollm2):
    db, src, multi = run_db
    with Store(db, create=False) as store:
        store.db.execute("CREATE TRIGGER fail_midway BEFORE INSERT ON trace_values WHEN NEW.position = 5 "
                         "BEGIN SELECT RAISE(ABORT, 'simulated failure'); END")
        try:
            with pytest.raises(sqlite3.IntegrityError, match="simulated failure"):
                get_trace(store, multi, [B], model=smollm2)
        finally:
            store.db.execute("DROP TRIGGER fail_midway")
        assert _q(db, "SELECT COUNT(*) FROM traces WHERE trial_id = ? AND latents_json = ?", (multi, f"[{B}]"))[0][0] == 0
        assert _q(db, "SELECT COUNT(*) FROM trace_values WHERE trace_id NOT IN (SELECT id FROM traces)")[0][0] == 0
        assert get_trace(store, multi, [B], model=smollm2).computed  # and it works once the failure is gone


def _complete(db) -> bool:
    """Every stored trace has all its values (n_tokens x latents)."""
    bad = _q(db, "SELECT t.id FROM traces t WHERE t.n_tokens * json_array_length(t.latents_json) <> "
                 "(SELECT COUNT(*) FROM trace_values v WHERE v.trace_id = t.id)")
    return bad == []


def test_a_killed_run_trace_leaves_whole_traces_and_resumes(run_db):
    db, src, _ = run_db
    env = {**os.environ, "ESR_LOCAL_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "esr_local", "trace", "--run", src, "--latents", str(A), "--unsteered", "--db", str(db)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    while line and not line.startswith("traced"):  # skip any start-up warnings
        line = proc.stderr.readline()
    os.kill(proc.pid, signal.SIGKILL)  # the first trace is stored: killed during the second (or later)
    proc.wait()
    assert line.startswith("traced"), line
    stored = _q(db, "SELECT COUNT(*) FROM traces WHERE latents_json = ? AND steered = 0", (f"[{A}]",))[0][0]
    assert 1 <= stored < 4 and _complete(db)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"4 traces of run {src}: {4 - stored} computed, {stored} already stored" in done.stderr
    assert _q(db, "SELECT COUNT(*) FROM traces WHERE latents_json = ? AND steered = 0", (f"[{A}]",))[0][0] == 4
    assert _complete(db)


def test_trace_run_cli_limit_resume_and_exports(run_db):
    db, src, multi = run_db
    run = lambda *a: CliRunner().invoke(main, ["trace", "--run", src, "--latents", f"{B},{A}", "--db", str(db), *a])  # noqa: E731
    first = run("--limit", "2")
    assert first.exit_code == 0, first.output
    assert f"2 traces of run {src}: 2 computed, 0 already stored" in first.output
    js = run("--json")
    assert js.exit_code == 0, js.output
    assert f"4 traces of run {src}: 2 computed, 2 already stored" in js.output
    docs = json.loads(js.stdout)
    assert [d["latents"] for d in docs] == [[B, A]] * 4 and docs[-1]["trial_id"] == multi
    assert {t["region"] for t in docs[-1]["tokens"]} == {"off_topic", "correction", "on_topic"}
    cs = run("--csv")
    assert cs.exit_code == 0 and "0 computed, 4 already stored" in cs.output
    lines = cs.stdout.splitlines()
    assert lines[0] == "trace_id,trial_id,steered,position,token,piece,attempt,region,latent,activation"
    assert len(lines) - 1 == 2 * sum(len(d["tokens"]) for d in docs)
    one = CliRunner().invoke(main, ["trace", multi, "--latents", f"{B},{A}", "--db", str(db)])
    assert one.exit_code == 0 and f"# trace {docs[-1]['trace_id']} (read back from the store)" in one.output


def _error(args, db) -> str:
    res = CliRunner().invoke(main, [*args, "--db", str(db)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def test_bad_input_is_one_error_line(run_db, tmp_path):
    db, src, multi = run_db
    assert "no trial matches 'nope'" in _error(["trace", "nope"], db)
    assert "comma-separated integers" in _error(["trace", multi, "--latents", "x"], db)
    assert "out of range" in _error(["trace", multi, "--latents", "999"], db)
    assert f"latent {A} is given twice" in _error(["trace", multi, "--latents", f"{A},{A}"], db)
    assert "one of them" in _error(["trace", multi, "--run", src], db)
    assert "one of them" in _error(["trace"], db)
    assert "--limit goes with --run" in _error(["trace", multi, "--limit", "2"], db)
    assert "no run" in _error(["trace", "--run", "nosuchrun"], db).lower()
    from esr_local.runs import RunOptions, create_run

    other = tmp_path / "unjudged.db"
    with Store(other) as store:
        rid, judge = create_run(store, RunOptions(latents=[0], boost=1.0, judge="openai:test-judge",
                                                  judge_base_url="http://127.0.0.1:9", skip_judge_check=True,
                                                  max_tokens=8, n_ctx=512))
        judge.close()
        store.record_trial({"run_id": rid, "condition": "steered", "latent": 0, "prompt_index": 0, "replicate": 0,
                            "prompt": "Hi", "response": "Hello there.", "boost": 1.0}, None, [])
    assert "has no judged trials" in _error(["trace", "--run", rid], other)
    assert _q(other, "SELECT COUNT(*) FROM traces")[0][0] == 0


def test_a_re_judged_trial_is_traced_again(run_db, smollm2):
    """The marks come from the judgment: after a re-grade (same judge, new scores) the same request
    recomputes, and the view follows the new scores (last below first: no longer a paper episode)."""
    db, src, multi = run_db
    with Store(db, create=False) as store:
        first = get_trace(store, multi, [A], model=smollm2)
        assert get_trace(store, multi, [A], model=smollm2).computed is False
        store.record_judgment(multi, {"judge_key": store.run_judge_key(src), "judge_backend": "offline",
                                      "judge_model": "hand", "parse_status": "ok"},
                              [{"text": FIRST, "score": 90.0}, {"text": SECOND, "score": 20.0}])
        again = get_trace(store, multi, [A], model=smollm2)
    assert again.computed and again.trace.trace_id != first.trace.trace_id
    assert again.trace.region == first.trace.region
    np.testing.assert_array_equal(again.trace.acts, first.trace.acts)
    assert _q(db, "SELECT first_score, last_score, paper_episode FROM trace_region_stats WHERE trace_id = ?",
              (again.trace.trace_id,)) == [(90.0, 20.0, 0)]


def _detector_set(db, name, sae_source, d_sae, latents):
    con = sqlite3.connect(db)
    con.execute("INSERT INTO detector_sets (id, name, created_utc, sae_source, d_sae, rule, latents_json, strict_json, "
                "auc_json, stats_json, settings_json) VALUES (?, ?, '2026-12-02', ?, ?, 'strict', ?, ?, '[]', '{}', '{}')",
                (f"id-{name}", name, sae_source, d_sae, json.dumps(latents), json.dumps(latents)))
    con.commit()
    con.close()


def test_a_detector_set_gives_the_latents(run_db):
    db, src, multi = run_db
    sae = json.loads(_q(db, "SELECT spec_json FROM runs WHERE id = ?", (src,))[0][0])["sae"]
    _detector_set(db, "dets", sae["source"], sae["d_sae"], [B, A])
    _detector_set(db, "elsewhere", "hf://someone/other-sae", sae["d_sae"], [B])
    _detector_set(db, "empty", sae["source"], sae["d_sae"], [])
    res = CliRunner().invoke(main, ["trace", multi, "--detector-set", "dets", "--unsteered", "--json", "--db", str(db)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["latents"] == [B, A]
    (settings,) = _q(db, "SELECT settings_json FROM traces WHERE id = ?", (doc["trace_id"],))[0]
    assert json.loads(settings)["latent_source"] == {"kind": "detector_set", "name": "dets", "id": "id-dets"}
    assert "belongs to the SAE 'hf://someone/other-sae'" in _error(["trace", multi, "--detector-set", "elsewhere"], db)
    assert "holds no latents" in _error(["trace", multi, "--detector-set", "empty"], db)
    assert "not both" in _error(["trace", multi, "--detector-set", "dets", "--latents", "1"], db)
    assert "no detector set named 'nope'" in _error(["trace", "--run", src, "--detector-set", "nope"], db)


def _record(db, src, index, response, attempts):
    with Store(db, create=False) as store:
        return store.record_trial(
            {"run_id": src, "condition": "steered", "latent": A, "prompt_index": index, "replicate": 0, "seed": 1,
             "prompt": "Explain how to fold a paper plane.", "response": response, "boost": 4.0},
            {"judge_key": store.run_judge_key(src), "judge_backend": "offline", "judge_model": "hand",
             "parse_status": "ok"}, attempts)


def _outcome(db, trial):
    return _q(db, "SELECT n_scored_attempts, is_multi_attempt, is_improved FROM trial_outcomes WHERE trial_id = ?",
              (trial,))[0]


def test_a_null_score_attempt_is_left_out_as_trial_outcomes_does(run_db, smollm2):
    """Attempts scored [None, 10, 80]: two scored attempts, improved, in the trace row and the view alike."""
    db, src, _ = run_db
    trial = _record(db, src, 91, RESP, [{"text": "Octopuses have three hearts", "score": None},
                                        {"text": "and blue blood.", "score": 10.0}, {"text": SECOND, "score": 80.0}])
    with Store(db, create=False) as store:
        tr = get_trace(store, trial, [A], steered=False, model=smollm2).trace
    assert _outcome(db, trial) == (2, 1, 1)
    assert _q(db, "SELECT n_attempts, n_judged_attempts, first_score, last_score, regions_note FROM traces "
                  "WHERE id = ?", (tr.trace_id,)) == [(2, 3, 10.0, 80.0, None)]
    assert _q(db, "SELECT n_attempts, first_score, last_score, paper_episode FROM trace_region_stats "
                  "WHERE trace_id = ?", (tr.trace_id,)) == [(2, 10.0, 80.0, 1)]


def test_regions_not_located_are_recorded_and_never_a_paper_episode(run_db, smollm2):
    db, src, _ = run_db
    trial = _record(db, src, 92, "Bees make honey in hives. Fold the paper in half.",
                    [{"text": "a paraphrase of the bees", "score": 10.0}, {"text": "folding, paraphrased", "score": 80.0}])
    with Store(db, create=False) as store:
        tr = get_trace(store, trial, [A], steered=False, model=smollm2).trace
    assert _outcome(db, trial) == (2, 1, 1)  # improved by the metrics' rule, but its regions are unknown
    assert tr.region == [None] * len(tr.tokens)
    assert tr.regions_note == "regions not located"
    shown = CliRunner().invoke(main, ["trace", trial, "--latents", str(A), "--unsteered", "--db", str(db)])
    assert shown.exit_code == 0 and "# regions not located: " in shown.output, shown.output
    doc = json.loads(CliRunner().invoke(main, ["trace", trial, "--latents", str(A), "--unsteered", "--json",
                                               "--db", str(db)]).stdout)
    assert doc["regions_note"] == "regions not located" and {t["region"] for t in doc["tokens"]} == {None}
    assert _q(db, "SELECT regions_note, correction_start, on_topic_start FROM traces WHERE id = ?",
              (tr.trace_id,)) == [("regions not located", None, None)]
    assert _q(db, "SELECT regions_note, paper_episode, off_topic_tokens + correction_tokens + on_topic_tokens "
                  "FROM trace_region_stats WHERE trace_id = ?", (tr.trace_id,)) == [("regions not located", 0, 0)]


def test_a_changed_region_rule_traces_again(run_db, smollm2, monkeypatch):
    import esr_local.trace_regions as trace_regions

    db, src, multi = run_db
    with Store(db, create=False) as store:
        get_trace(store, multi, [B], steered=False, model=smollm2)
        assert not get_trace(store, multi, [B], steered=False, model=smollm2).computed
        monkeypatch.setattr(trace_regions, "CORRECTION_WINDOW", 10)  # the restart at 44 is 1 char from attempt 1
        narrow = get_trace(store, multi, [B], steered=False, model=smollm2)
        assert narrow.computed and not get_trace(store, multi, [B], steered=False, model=smollm2).computed
        (settings,) = _q(db, "SELECT settings_json FROM traces WHERE id = ?", (narrow.trace.trace_id,))[0]
        assert json.loads(settings)["region_rule"]["correction_window"] == 10
        monkeypatch.setattr(trace_regions, "patterns_sha256", lambda: "0" * 64)
        assert get_trace(store, multi, [B], steered=False, model=smollm2).computed
        monkeypatch.undo()
        assert get_trace(store, multi, [B], steered=False, model=smollm2).computed


def test_an_interrupted_recompute_resumes_with_its_start_time(run_db, smollm2):
    from esr_local.store_values import utc_now
    from esr_local.trace_store import trace_run

    db, src, _ = run_db
    with Store(db, create=False) as store:
        ids = [r.trace.trace_id for r in trace_run(store, src, [A, B], steered=False, limit=4, model=smollm2)]
        start = utc_now()
        part = trace_run(store, src, [A, B], steered=False, limit=2, recompute_before=start, model=smollm2)
        assert [r.computed for r in part] == [True, True]
        rest = trace_run(store, src, [A, B], steered=False, limit=4, recompute_before=start, model=smollm2)
        assert [r.computed for r in rest] == [False, False, True, True]
        assert [r.trace.trace_id for r in rest[:2]] == [r.trace.trace_id for r in part]
        assert not {r.trace.trace_id for r in rest} & set(ids)
    cli = CliRunner().invoke(main, ["trace", "--run", src, "--latents", f"{A},{B}", "--unsteered", "--limit", "4",
                                    "--recompute-before", start, "--db", str(db)])
    assert cli.exit_code == 0 and "4 traces of run " + src + ": 0 computed, 4 already stored" in cli.output
    assert "not an ISO-8601 time" in _error(["trace", "--run", src, "--recompute-before", "yesterday"], db)
    assert "without --recompute" in _error(["trace", "--run", src, "--recompute", "--recompute-before", start], db)
    assert "goes with --run" in _error(["trace", multi_id(db, src), "--recompute-before", start], db)


def multi_id(db, src):
    return _q(db, "SELECT id FROM trials WHERE run_id = ? AND prompt_index = 90", (src,))[0][0]
