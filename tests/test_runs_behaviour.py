"""What a run does is what the user asked: partial status when the judge fails some trials (a real HTTP
judge on 127.0.0.1), failed judgments re-judged on resume from the kept responses, option conflicts,
the run lease, a changed SAE file on resume, a user SAE at its own layer, calibration flags."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from runs_judge_server import JudgeServer, fails

from esr_local.cli import main
from esr_local.errors import UserInputError
from esr_local.runs import RunOptions, create_run, execute_run
from esr_local.runs.boosts import calibration_flags
from esr_local.steering import resolve_sae_source
from esr_local.store import Store
from db_rows import query_rows

TINY = ["--max-tokens", "12", "--n-ctx", "512", "--boost", "2", "--seed", "5"]


def _cli(args, db):
    return CliRunner().invoke(main, [*args[:1], "--db", str(db), *args[1:]])


_rows = query_rows


def test_a_judge_failing_some_trials_ends_partial_and_a_resume_rejudges_without_regenerating(tmp_path):
    db = tmp_path / "p.db"
    with JudgeServer(fail_half=True) as js:
        r = _cli(["run", "--latent", "1", "--latent", "4", "--n-prompts", "2", *TINY, *js.judge_args()], db)
        assert r.exit_code == 0, r.output
        trials = _rows(db, "SELECT id, response FROM trials ORDER BY id")
        expected_failed = sum(fails(t["response"].strip()) for t in trials)
        assert 0 < expected_failed < 4  # the fixture fails about half of the responses, by their text
        (run,) = _rows(db, "SELECT * FROM runs")
        assert run["status"] == "partial"
        summary = json.loads(run["summary_json"])
        assert summary["failed_judgments"] == expected_failed and summary["failed_generations"] == 0
        assert summary["failed_calibrations"] == 0 and summary["planned"] == 4
        assert f"PARTIAL: {expected_failed} failed judgment(s) of 4 trials" in r.stdout
        assert f"n={4 - expected_failed}" in r.stdout
        failed = _rows(db, "SELECT * FROM judgments WHERE parse_status = 'error'")
        assert len(failed) == expected_failed
        for j in failed:  # every try's error is kept, not only the last
            errors = json.loads(j["errors_json"])
            assert len(errors) == j["tries"] >= 2 and all("500" in e or "overloaded" in e for e in errors)
        listed = json.loads(_cli(["runs", "--json"], db).stdout)[0]
        assert listed["status"] == "partial" and listed["failed_judgments"] == expected_failed
        js.fail_half = False  # the judge recovers
        r2 = _cli(["run", "--resume", run["id"]], db)
        assert r2.exit_code == 0, r2.output
    assert _rows(db, "SELECT id, response FROM trials ORDER BY id") == trials  # nothing regenerated
    assert _rows(db, "SELECT status FROM runs")[0]["status"] == "success"
    assert _rows(db, "SELECT COUNT(*) AS n FROM judgments WHERE parse_status = 'ok'")[0]["n"] == 4
    assert "success: 4 trials" in r2.stdout and "n=4" in r2.stdout


@pytest.mark.parametrize("args, needle", [
    (["--latent", "1", "--n-latents", "2"], "not both"),
    (["--seed", str(2**32)], "0<=x<=4294967294"),
])
def test_options_that_cannot_apply_are_errors(tmp_path, args, needle):
    r = _cli(["run", *args, "--boost", "1", "--judge", "local", "--skip-judge-check"], tmp_path / "o.db")
    assert r.exit_code != 0 and needle in r.output, r.output


def test_resume_and_replay_refuse_options_they_would_ignore(tmp_path):
    db = tmp_path / "c.db"
    store = Store(db)
    run_id = store.create_run({"experiment": "esr"})
    store.close()
    for extra in (["--seed", "3"], ["--boost", "1"], ["--latent", "2"], ["--judge", "local"], ["--model", "x.gguf"]):
        r = _cli(["run", "--resume", run_id, *extra], db)
        assert r.exit_code == 1 and "--resume continues a run exactly as it was created; drop " + extra[0] in r.output, r.output
    for extra in (["--latent", "3"], ["--max-tokens", "9"], ["--seed", "1"]):
        r = _cli(["run", "--replay", run_id, *extra], db)
        assert r.exit_code == 1 and "--replay reuses the source run's latents" in r.output, r.output
        assert f"drop {extra[0]}" in r.output


def test_a_user_sae_steers_at_its_own_layer_unless_layer_is_given(tmp_path):
    from esr_local.saes import load_sae

    folder = tmp_path / "sae"
    shutil.copytree(resolve_sae_source("shipped:smollm2-135m-concepts"), folder)
    sae = load_sae(str(folder))
    own = sae.info.layer
    store = Store(tmp_path / "l.db")
    opts = dict(latents=[0], boost=1.0, judge="local", skip_judge_check=True)
    run_id, judge = create_run(store, RunOptions(sae=str(folder), **opts))
    judge.close()
    spec = json.loads(store.get_run(run_id)["spec_json"])
    assert spec["steering_layer"] == own and spec["sae"]["feature_layer"] == own
    assert spec["judge"]["check"]["status"] == "skipped"  # --skip-judge-check is recorded on the run
    assert spec["judge"]["key"] == store.get_run(run_id)["judge_key"] and spec["judge"]["description"]["backend"] == "local"
    assert len(spec["model"]["sha256"]) == 64 and (spec["model"]["n_layer"], spec["model"]["n_embd"]) == (30, 576)
    assert len(spec["sae"]["rows_sha256"]) == 64 and spec["labels"]["0"] == sae.label(0)
    assert {f["path"].rsplit("/", 1)[-1] for f in spec["sae"]["files"]} == {p.name for p in folder.iterdir() if p.is_file()}
    other = 7 if own != 7 else 8
    run_id, judge = create_run(store, RunOptions(sae=str(folder), layer=other, **opts))
    judge.close()
    assert json.loads(store.get_run(run_id)["spec_json"])["steering_layer"] == other


def test_resume_after_the_sae_file_changed_is_one_clear_error(tmp_path):
    folder = tmp_path / "sae"
    shutil.copytree(resolve_sae_source("shipped:smollm2-135m-concepts"), folder)
    db = tmp_path / "s.db"
    store = Store(db)
    run_id, judge = create_run(store, RunOptions(sae=str(folder), latents=[0], boost=1.0, judge="local",
                                                 skip_judge_check=True, max_tokens=8, n_ctx=512))
    judge.close()
    biggest = max((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as fh:  # same size, one byte different
        fh.seek(biggest.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))
    store.close()
    r = _cli(["run", "--resume", run_id], db)
    assert r.exit_code == 1 and f"the SAE file {biggest} changed since the run was created" in r.output, r.output
    assert "Traceback" not in r.output
    assert _rows(db, "SELECT COUNT(*) AS n FROM trials")[0]["n"] == 0


def test_one_process_per_run_and_a_dead_holder_shows_interrupted(tmp_path):
    db = tmp_path / "lease.db"
    with JudgeServer(delay_s=0.4) as js:
        cmd = [sys.executable, "-m", "esr_local", "run", "--db", str(db), "--latent", "1", "--latent", "2",
               "--n-prompts", "3", *TINY, *js.judge_args()]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "ESR_LOCAL_THREADS": "1"})
        deadline = time.time() + 120
        lease = []
        while time.time() < deadline and proc.poll() is None and not lease:
            time.sleep(0.2)
            try:
                lease = _rows(db, "SELECT * FROM run_leases") if db.exists() else []
            except sqlite3.OperationalError:
                lease = []
        assert lease and proc.poll() is None, "the run never started executing"
        run_id = lease[0]["run_id"]
        r = _cli(["run", "--resume", run_id], db)
        assert r.exit_code == 1, r.output
        assert f"run {run_id} is being executed by process {proc.pid} on this machine" in r.output
        assert json.loads(_cli(["runs", "--json"], db).stdout)[0]["status"] == "running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        listed = json.loads(_cli(["runs", "--json"], db).stdout)[0]
        assert listed["status"] == "interrupted" and listed["lease_pid"] == proc.pid
        assert "interrupted" in _cli(["runs"], db).stdout
        js.delay_s = 0
        r = _cli(["run", "--resume", run_id], db)
        assert r.exit_code == 0, r.output
    assert _rows(db, "SELECT status FROM runs")[0]["status"] == "success"
    assert _rows(db, "SELECT COUNT(*) AS n FROM trials")[0]["n"] == 6
    assert _rows(db, "SELECT COUNT(*) AS n FROM run_leases")[0]["n"] == 0  # released at the end


def test_calibration_flags_name_bounds_and_missed_targets():
    assert calibration_flags(5.0, 0.31, 0.0, 10.0, 0.3) is None
    assert calibration_flags(10.0, 0.31, 0.0, 10.0, 0.3) == "boost 10 at the upper bound 10"
    assert calibration_flags(0.05, 0.3, 0.0, 10.0, 0.3) == "boost 0.05 at the lower bound 0"
    assert calibration_flags(4.0, 0.46, 0.0, 10.0, 0.3) == \
        "re-measured score 0.46 is more than 0.15 from the target 0.30"
    assert calibration_flags(4.0, 0.44, 0.0, 10.0, 0.3) is None


def test_metrics_exclude_flagged_latents_and_pick_the_judge(tmp_path):
    from esr_local.metrics import metrics_for_store

    store = Store(tmp_path / "m.db")
    run_id = store.create_run({"experiment": "esr", "judge_key": "a:m:1"})
    store.upsert_latent(run_id, 1, label="x", row_norm=1.0, boost=10.0, boost_source="calibrated",
                        flags="boost 10 at the upper bound 10")
    store.upsert_latent(run_id, 2, label="y", row_norm=1.0, boost=4.0, boost_source="calibrated")
    for latent, scores_a, scores_b in ((1, [10, 90], [50]), (2, [80], [20, 60])):
        tid = store.record_trial({"run_id": run_id, "condition": "steered", "latent": latent, "prompt_index": 0,
                                  "replicate": 0, "response": "r"},
                                 {"judge_key": "a:m:1", "judge_spec": "openai:a"}, [{"text": "t", "score": s} for s in scores_a])
        store.record_judgment(tid, {"judge_key": "b:m:2", "judge_spec": "openai:b"}, [{"text": "t", "score": s} for s in scores_b])
    (all_a,) = metrics_for_store(store, [run_id])
    assert (all_a["n"], all_a["multi_attempt_count"], all_a["improved_count"], all_a["flagged_latents"]) == (2, 1, 1, 1)
    (kept,) = metrics_for_store(store, [run_id], exclude_flagged=True)
    assert (kept["n"], kept["multi_attempt_count"], kept["mean_first_score"], kept["excluded_latents"]) == (1, 0, 80.0, 1)
    (by_b,) = metrics_for_store(store, [run_id], judge="openai:b")
    assert (by_b["n"], by_b["multi_attempt_count"], by_b["mean_first_score"], by_b["judge_key"]) == (2, 1, 35.0, "b:m:2")
    view = {r["judge_key"]: r for r in store.db.query("SELECT * FROM judge_metrics WHERE run_id = ?", [run_id])}
    assert view["b:m:2"]["n"] == 2 and view["b:m:2"]["mean_first_score"] == 35.0
    (own,) = store.db.query("SELECT * FROM run_metrics WHERE run_id = ?", [run_id])
    assert own["n"] == 2 and own["mean_first_score"] == all_a["mean_first_score"] == 45.0
    with pytest.raises(UserInputError, match="no judgments by 'openai:c'"):
        metrics_for_store(store, [run_id], judge="openai:c")


def test_execute_refuses_a_run_without_a_spec(tmp_path):
    store = Store(tmp_path / "x.db")
    run_id = store.create_run({"experiment": "esr"})
    with pytest.raises(UserInputError, match="did not store a run spec"):
        execute_run(store, run_id)


def test_with_parallel_a_prompt_too_long_for_the_context_fails_alone(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a yellow fruit.\n" + "Explain this: " + "ocean waves and tides " * 200 + "\n")
    db = tmp_path / "ctx.db"
    with JudgeServer() as js:
        r = _cli(["run", "--latent", "1", "--n-prompts", "2", "--prompts", str(prompts), "--parallel", "2", *TINY,
                  *js.judge_args()], db)
    assert r.exit_code == 0, r.output
    trials = {t["prompt_index"]: t for t in _rows(db, "SELECT * FROM trials")}
    assert trials[0]["error"] is None and trials[0]["response"] and trials[0]["completion_tokens"] > 0
    assert trials[1]["response"] is None and "exceeds the context of 512 tokens" in trials[1]["error"]
    (run,) = _rows(db, "SELECT status, summary_json FROM runs")
    assert run["status"] == "partial" and json.loads(run["summary_json"])["failed_generations"] == 1
    assert "PARTIAL: 1 failed generation(s) of 2 trials" in r.stdout


def test_resume_after_the_model_file_changed_is_one_clear_error(tmp_path, smollm2_path):
    model = tmp_path / smollm2_path.name  # the catalog knows the file by its name
    shutil.copyfile(smollm2_path, model)
    db = tmp_path / "m.db"
    store = Store(db)
    run_id, judge = create_run(store, RunOptions(model=str(model), latents=[0], boost=1.0, judge="local",
                                                 skip_judge_check=True, max_tokens=8, n_ctx=512))
    judge.close()
    store.close()
    with open(model, "r+b") as fh:  # same size, last byte flipped, at once (the same second as the hash)
        fh.seek(-1, 2)
        b = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([b[0] ^ 0xFF]))
    r = _cli(["run", "--resume", run_id], db)
    assert r.exit_code == 1 and f"the model file {model} changed since the run was created" in r.output, r.output
    assert _rows(db, "SELECT COUNT(*) AS n FROM trials")[0]["n"] == 0


def test_conditions_parse_once_and_order_sweep_levels_by_number():
    from esr_local.metrics import condition_order
    from esr_local.runs.conditions import Condition

    assert Condition.parse("meta:self_monitor") == Condition.meta("self_monitor")
    assert Condition.parse("sweep:3").boost(2.0, [0.0, 1.0, 2.0, 5.5]) == 5.5
    assert Condition.parse("baseline").boost(2.0, []) == 0.0 and not Condition("baseline").steers
    assert Condition.meta("x").prompt("Do it.", "cats", {"x": "Ignore {label}."}) == "Do it. Ignore cats."
    for bad in ("sweep", "sweep:a", "meta:", "steered:1", "nonsense"):
        with pytest.raises(UserInputError):
            Condition.parse(bad)
    names = ["sweep:10", "steered", "sweep:2", "baseline", "meta:x", "odd:thing"]
    assert sorted(names, key=condition_order) == ["baseline", "meta:x", "steered", "sweep:2", "sweep:10", "odd:thing"]


def test_a_latent_set_gives_the_run_its_latents_labels_and_provenance(tmp_path):
    from types import SimpleNamespace

    from esr_local.latent_sets import save_latent_set
    from esr_local.saes import load_sae

    store = Store(tmp_path / "set.db")
    source = "shipped:smollm2-135m-concepts"
    sae = load_sae(resolve_sae_source(source))
    selection = SimpleNamespace(settings={"n": 2, "seed": 1, "layer": 12}, chosen=[3, 9], labels={3: "set label three"},
                                funnel={"all": 10, "kept": 2}, candidates=[3, 9], errors=[])
    save_latent_set(store, "two", selection, sae=sae, sae_source=source, model_name="smollm2-135m-instruct")
    run_id, judge = create_run(store, RunOptions(latent_set="two", boost=1.0, judge="local", skip_judge_check=True))
    judge.close()
    spec = json.loads(store.get_run(run_id)["spec_json"])
    assert spec["latents"] == [3, 9] and spec["labels"]["3"] == "set label three"
    assert spec["labels"]["9"] == (sae.label(9) or "latent 9")  # no set label: the SAE's
    assert spec["latent_source"]["kind"] == "set" and spec["latent_source"]["name"] == "two"
    assert spec["latent_source"]["funnel"] == {"all": 10, "kept": 2}
    with pytest.raises(UserInputError, match="give --latent-set or --latent"):
        create_run(store, RunOptions(latent_set="two", latents=[1], boost=1.0, judge="local", skip_judge_check=True))


def test_resume_runs_with_the_threads_and_gpu_layers_typed_then(tmp_path, monkeypatch):
    import esr_local.runs.execute as execute

    db = tmp_path / "t.db"
    store = Store(db)
    run_id, judge = create_run(store, RunOptions(latents=[0], boost=1.0, judge="openai:test-judge",
                                                 judge_base_url="http://127.0.0.1:9", skip_judge_check=True,
                                                 max_tokens=8, n_ctx=512, threads=1))
    judge.close()
    store.close()
    seen = []

    class FakeModel:
        n_embd = 576

        def __init__(self, path, **kw):
            seen.append(("model", kw["n_threads"], kw["n_gpu_layers"]))

        def close(self):
            pass

    def fake_judge(ref, *, n_threads=None, n_gpu_layers=None):
        seen.append(("judge", n_threads, n_gpu_layers))
        raise UserInputError("stop here")

    monkeypatch.setattr(execute, "SteeredModel", FakeModel)
    monkeypatch.setattr(execute, "build_judge", fake_judge)
    for extra, model, judge in (([], (1, 0), (1, 0)), (["--threads", "2", "--gpu-layers", "-1"], (2, -1), (2, 0))):
        r = _cli(["run", "--resume", run_id, *extra], db)
        assert r.exit_code == 1 and "stop here" in r.output, r.output
        # the in-process judge keeps the offload it was created with: it is part of its judge key
        assert seen == [("model", *model), ("judge", *judge)]
        seen.clear()


def test_a_gguf_header_with_deeply_nested_arrays_is_one_clear_error(tmp_path):
    import struct

    path = tmp_path / "nested.gguf"
    key = b"k"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<I", 9)
                     + struct.pack("<IQ", 9, 1) * 5000 + struct.pack("<IQ", 4, 0))
    r = _cli(["run", "--model", str(path), "--latent", "1", "--boost", "1", "--skip-judge-check"], tmp_path / "n.db")
    assert r.exit_code == 1 and f"{path} is corrupt (GGUF arrays nested more than 4 deep)" in r.output, r.output
    assert "Traceback" not in r.output and "RecursionError" not in r.output
