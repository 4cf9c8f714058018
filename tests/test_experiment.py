"""The experiment runner: exact planning arithmetic, an end-to-end run on SmolLM2 with the local judge,
SIGKILL + resume without duplicates or losses, replay with a meta-prompt, and cached calibration."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from runs_judge_server import JudgeServer

from esr_local.cli import main
from esr_local.errors import UserInputError
from esr_local.runs.conditions import Condition, check_conditions, sweep_levels
from esr_local.runs.plan import base_trials, choose_prompt_indices, plan_trials, trial_seed
from esr_local.runs.plan import groups as _groups
from db_rows import query_rows


def _plan(conditions, prompts_per_latent, replicates, run_seed, latents, labels, boosts, prompts, levels, meta):
    base = base_trials(run_seed, latents, prompts, prompts_per_latent, replicates)
    return plan_trials(base, [Condition.parse(c) for c in conditions], labels, boosts, levels, meta)

META = {"self_monitor": "Stay on track.", "ignore_latent_label": "You are being distracted with {label}. Ignore it."}

# ---------------------------------------------------------------------------------------------- planning


def test_trial_seed_is_deterministic_and_in_the_papers_range():
    seeds = {trial_seed(7, latent, p, r) for latent in range(20) for p in range(5) for r in range(2)}
    assert trial_seed(7, 3, 1, 0) == trial_seed(7, 3, 1, 0)
    assert len(seeds) == 200
    assert all(0 <= s <= 1_000_000 for s in seeds)
    assert trial_seed(8, 3, 1, 0) != trial_seed(7, 3, 1, 0)


def test_prompts_are_drawn_without_replacement_per_latent():
    picks = choose_prompt_indices(1, 4, 38, 5)
    assert len(set(picks)) == 5 and all(0 <= p < 38 for p in picks)
    assert picks == choose_prompt_indices(1, 4, 38, 5)
    assert sorted(choose_prompt_indices(1, 4, 5, 5)) == [0, 1, 2, 3, 4]
    with pytest.raises(UserInputError):
        choose_prompt_indices(1, 4, 3, 5)


def test_sweep_needs_boosts_that_differ():
    with pytest.raises(UserInputError, match="sd 0"):
        sweep_levels([3.0, 3.0], 4)


def test_sweep_levels_span_mean_plus_minus_three_sd_clamped_at_zero():
    boosts = [2.0, 4.0, 6.0]  # mean 4, population sd sqrt(8/3)
    sd = np.sqrt(8 / 3)
    levels = sweep_levels(boosts, 3)
    assert levels == [round(max(0.0, 4 - 3 * sd), 4), 4.0, round(4 + 3 * sd, 4)]
    assert levels[0] == 0.0  # 4 - 4.9 < 0 is clamped
    assert len(sweep_levels([10.0, 12.0], 8)) == 8
    assert sweep_levels([1.0, 1.0, 9.0], 5).count(0.0) == 1  # clamped duplicates collapse to one level


def test_plan_pairs_conditions_on_the_same_prompts_and_seeds():
    prompts = [f"Prompt {i}." for i in range(6)]
    plan = _plan(["steered", "baseline", "meta:self_monitor"], 2, 2, 11, [3, 9], {3: "octopuses", 9: "jazz"},
                 {3: 2.5, 9: 1.5}, prompts, [], META)
    assert len(plan) == 2 * 2 * 2 * 3
    keys = {(t.condition, t.latent, t.prompt_index, t.replicate) for t in plan}
    assert len(keys) == len(plan)
    by_cond = {c: sorted((t.latent, t.prompt_index, t.replicate, t.seed) for t in plan if t.condition == c)
               for c in ("steered", "baseline", "meta:self_monitor")}
    assert by_cond["steered"] == by_cond["baseline"] == by_cond["meta:self_monitor"]
    for t in plan:
        assert t.boost == {"steered": {3: 2.5, 9: 1.5}[t.latent], "baseline": 0.0, "meta:self_monitor": {3: 2.5, 9: 1.5}[t.latent]}[t.condition]
        if t.condition.startswith("meta:"):
            assert t.prompt == t.base_prompt + " Stay on track."
        else:
            assert t.prompt == t.base_prompt


def test_plan_skips_latents_without_a_boost_and_adds_sweep_levels():
    plan = _plan(["steered"], 1, 1, 1, [1, 2], {}, {1: 3.0}, ["a", "b"], [0.0, 5.0], META)
    assert {t.latent for t in plan} == {1}
    assert sorted(t.condition for t in plan) == ["steered", "sweep:0", "sweep:1"]
    assert sorted(t.boost for t in plan) == [0.0, 3.0, 5.0]


def test_unknown_conditions_are_rejected():
    check_conditions(["steered", "baseline", "meta:self_monitor"], META)
    for bad in ["steerd", "meta:nope", "sweep", "sweep:3"]:  # sweep levels come only from --sweep-levels
        with pytest.raises(UserInputError):
            check_conditions([bad], META)


def test_groups_share_one_vector_and_respect_the_size():
    plan = _plan(["steered", "baseline"], 3, 1, 5, [0, 1], {}, {0: 1.0, 1: 2.0}, ["a", "b", "c"], [], META)
    groups = list(_groups(plan, 2))
    assert sum(len(g) for g in groups) == len(plan)
    for g in groups:
        assert len(g) <= 2 and len({(t.latent, t.boost) for t in g}) == 1


# ---------------------------------------------------------------------------------------------- end to end

FAST = ["--max-tokens", "40", "--n-ctx", "1024", "--boost", "2", "--judge", "local", "--skip-judge-check"]


def _run(args, db):
    r = CliRunner().invoke(main, ["run", "--db", str(db), *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


_rows = query_rows


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """One real run: 2 latents x 2 prompts on SmolLM2, judged by the local SmolLM2 judge."""
    db = tmp_path_factory.mktemp("e2e") / "esr.db"
    r = _run(["--latent", "0", "--latent", "5", "--n-prompts", "2", "--seed", "42", "--json", *FAST], db)
    out = json.loads(r.stdout[r.stdout.index("{"):])
    return db, out


def test_end_to_end_run_lands_complete_rows(e2e):
    db, out = e2e
    run_id = out["summary"]["run_id"]
    (run,) = _rows(db, "SELECT * FROM runs WHERE id = ?", (run_id,))
    assert run["status"] == "success" and run["finished_utc"]
    assert len(run["model_sha256"]) == 64 and run["model_name"] == "smollm2-135m-instruct"
    assert run["steering_layer"] == 12 and run["temperature"] == 0.6 and run["repetition_penalty"] == 1.1
    assert run["max_tokens"] == 40 and run["judge_backend"] == "local" and run["llama_cpp_python_version"] == "0.3.36"
    assert run["sae_source"] == "shipped:smollm2-135m-concepts" and run["seed_base"] == 42
    latents = _rows(db, "SELECT * FROM latents WHERE run_id = ? ORDER BY latent", (run_id,))
    assert [(r["latent"], r["boost"], r["boost_source"]) for r in latents] == [(0, 2.0, "given"), (5, 2.0, "given")]
    assert all(r["label"] and r["row_norm"] > 0 for r in latents)
    trials = _rows(db, "SELECT * FROM trials WHERE run_id = ?", (run_id,))
    assert len(trials) == 4
    for t in trials:
        assert t["response"] and t["completion_tokens"] > 0 and t["error"] is None and 0 <= t["seed"] <= 1_000_000
        (j,) = _rows(db, "SELECT * FROM judgments WHERE trial_id = ?", (t["id"],))
        # The local judge's grammar only admits well-formed JSON with an integer score per attempt.
        assert j["raw_output"] and j["parse_status"] == "ok" and j["judge_backend"] == "local", j
        attempts = _rows(db, "SELECT * FROM attempts WHERE trial_id = ? ORDER BY attempt_index", (t["id"],))
        assert attempts and all(a["score"] is not None and 0 <= a["score"] <= 100 for a in attempts)
    (m,) = out["metrics"]
    assert m["condition"] == "steered" and m["n"] == 4  # every trial judged and scored counts
    view = _rows(db, "SELECT * FROM run_metrics WHERE run_id = ?", (run_id,))
    assert view[0]["n"] == m["n"]


def test_metrics_command_reads_the_run(e2e):
    db, out = e2e
    r = CliRunner().invoke(main, ["metrics", out["summary"]["run_id"], "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    (m,) = json.loads(r.output)
    for key in ("n", "multi_attempt_count", "improved_count", "multi_attempt_rate", "esr_rate", "improvement_rate",
                "mean_first_score", "mean_score_improvement", "multi_attempt_rate_se", "esr_rate_se"):
        assert key in m


def test_replay_with_meta_prompt_reuses_latents_prompts_and_seeds(e2e, http_judge):
    # What is replayed (latents, prompts, seeds, boosts) does not depend on the judge: a real HTTP judge on
    # 127.0.0.1 grades the replay (the local judge, ~25 s a judgment, runs end to end in the e2e fixture).
    db, out = e2e
    src = out["summary"]["run_id"]
    _run(["--replay", src, "--meta-prompt", "self_monitor", *http_judge.judge_args()], db)
    runs = _rows(db, "SELECT id, source_run_id FROM runs WHERE source_run_id = ?", (src,))
    assert len(runs) == 1
    new = runs[0]["id"]
    a = _rows(db, "SELECT latent, prompt_index, replicate, seed, base_prompt, boost FROM trials WHERE run_id = ? ORDER BY 1,2,3", (src,))
    b = _rows(db, "SELECT latent, prompt_index, replicate, seed, base_prompt, boost, prompt, condition FROM trials WHERE run_id = ? ORDER BY 1,2,3", (new,))
    assert [(x["latent"], x["prompt_index"], x["seed"], x["base_prompt"], x["boost"]) for x in a] == \
           [(x["latent"], x["prompt_index"], x["seed"], x["base_prompt"], x["boost"]) for x in b]
    for x in b:
        assert x["condition"] == "meta:self_monitor"
        assert x["prompt"] == x["base_prompt"] + " If you notice yourself going off-topic, stop and force yourself to get back on track."


@pytest.fixture
def http_judge():
    """A real HTTP judge on 127.0.0.1 answering after 0.3 s: the kill tests are about what lands in the database,
    not about the judge (the local judge, ~25 s a judgment here, runs end to end in the e2e fixture)."""
    with JudgeServer(delay_s=0.3) as js:
        yield js


def test_sigkill_mid_run_resumes_with_no_duplicate_and_no_missing_trial(tmp_path, http_judge):
    db = tmp_path / "kill.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "esr_local", "run", "--db", str(db), "--latent", "1", "--latent", "2", "--latent", "3",
           "--n-prompts", "2", "--seed", "9", "--max-tokens", "32", "--n-ctx", "1024", "--boost", "2",
           *http_judge.judge_args()]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    n = 0
    while time.time() < deadline:
        time.sleep(0.2)
        if db.exists():
            try:
                n = _rows(db, "SELECT COUNT(*) AS n FROM trials")[0]["n"]
            except sqlite3.OperationalError:
                n = 0
        if n >= 2 or proc.poll() is not None:
            break
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r["id"]: r["response"] for r in _rows(db, "SELECT id, response FROM trials")}
    assert 2 <= len(before) < 6
    (run,) = _rows(db, "SELECT id, status FROM runs")
    assert run["status"] == "started"  # killed: nothing could mark it
    # Every recorded trial has its judgment (trial + judgment + attempts are one transaction).
    assert _rows(db, "SELECT COUNT(*) AS n FROM trials t LEFT JOIN judgments j ON j.trial_id = t.id WHERE j.trial_id IS NULL")[0]["n"] == 0
    _run(["--resume", run["id"][:12]], db)
    rows = _rows(db, "SELECT id, condition, latent, prompt_index, replicate, response FROM trials")
    assert len(rows) == 6
    assert len({(r["condition"], r["latent"], r["prompt_index"], r["replicate"]) for r in rows}) == 6
    assert {r["latent"] for r in rows} == {1, 2, 3}
    after = {r["id"]: r["response"] for r in rows}
    assert all(after[k] == v for k, v in before.items())  # finished trials were not redone
    assert _rows(db, "SELECT status FROM runs")[0]["status"] == "success"
    # Resuming a finished run does nothing.
    _run(["--resume", run["id"]], db)
    assert _rows(db, "SELECT COUNT(*) AS n FROM trials")[0]["n"] == 6
    # Every execution (the killed one and two resumes) is logged with the software it ran on.
    sessions = _rows(db, "SELECT * FROM run_sessions WHERE run_id = ? ORDER BY id", (run["id"],))
    assert len(sessions) == 3
    assert all(json.loads(x["versions_json"])["llama_cpp_python"] == "0.3.36" and x["llama_cpp_system_info"] for x in sessions)


def test_ctrl_c_marks_the_run_cancelled_and_keeps_finished_trials(tmp_path, http_judge):
    db = tmp_path / "int.db"
    cmd = [sys.executable, "-m", "esr_local", "run", "--db", str(db), "--latent", "4", "--latent", "6", "--n-prompts", "3",
           "--seed", "2", "--max-tokens", "24", "--n-ctx", "1024", "--boost", "2", "--parallel", "1",
           *http_judge.judge_args()]
    # A shell starting the suite in the background makes SIGINT ignored for every child: restore the default
    # so the child sees Ctrl-C as a terminal would send it.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline, n = time.time() + 240, 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            n = _rows(db, "SELECT COUNT(*) AS n FROM trials")[0]["n"] if db.exists() else 0
        except sqlite3.OperationalError:
            n = 0
        if n >= 1:
            break
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Interrupted" in err
    (run,) = _rows(db, "SELECT id, status, error FROM runs")
    assert run["status"] == "cancelled"
    n = _rows(db, "SELECT COUNT(*) AS n FROM trials")[0]["n"]
    assert 1 <= n < 6
    assert _rows(db, "SELECT COUNT(*) AS n FROM trials t LEFT JOIN judgments j ON j.trial_id = t.id WHERE j.trial_id IS NULL")[0]["n"] == 0
    _run(["--resume", run["id"]], db)
    assert _rows(db, "SELECT COUNT(*) AS n FROM trials")[0]["n"] == 6


def test_calibration_runs_bisection_and_is_cached(tmp_path):
    # A real HTTP judge on 127.0.0.1: the subject is the bisection and its cache (the local judge, ~25 s a
    # judgment here, is exercised end to end by the e2e fixture).
    db = tmp_path / "cal.db"
    with JudgeServer() as js:
        args = ["calibrate", "--db", str(db), "--latent", "2", "--steps", "2", "--max-tokens", "24", "--n-ctx", "1024",
                "--seed", "3", "--json", *js.judge_args()]
        r1 = CliRunner().invoke(main, args, catch_exceptions=False)
        assert r1.exit_code == 0, r1.output
        first = json.loads(r1.stdout[r1.stdout.index("{"):])
        (lat,) = first["latents"]
        assert lat["boost_source"] == "calibrated" and 0.0 <= lat["boost"] <= 8.0
        cal = _rows(db, "SELECT * FROM calibrations")
        assert len(cal) == 1 and len(json.loads(cal[0]["steps_json"])) == 2 and cal[0]["boost"] == lat["boost"]
        n_judged = js.requests
        r2 = CliRunner().invoke(main, args, catch_exceptions=False)
        assert js.requests == n_judged  # the cached calibration asks the judge nothing
    second = json.loads(r2.stdout[r2.stdout.index("{"):])
    assert second["latents"][0]["boost"] == lat["boost"]
    assert len(_rows(db, "SELECT * FROM calibrations")) == 1  # reused, not recomputed
    assert "calibrating" not in r2.stderr


def test_replay_and_resume_refuse_runs_they_cannot_continue(tmp_path):
    from esr_local.store import Store

    db = tmp_path / "r.db"
    store = Store(db)
    unfinished = store.create_run({"experiment": "esr"})
    imported = store.create_run({"experiment": "import"})
    store.close()
    for args, needle in ((["--replay", unfinished, "--meta-prompt", "self_monitor"], "finish it first"),
                         (["--replay", imported, "--meta-prompt", "self_monitor"], "only esr-local experiment runs"),
                         (["--resume", imported], "only esr-local runs can be resumed")):
        r = CliRunner().invoke(main, ["run", "--db", str(db), *args])
        assert r.exit_code == 1 and needle in r.output and "Traceback" not in r.output, r.output


def test_a_condition_named_twice_runs_once(tmp_path):
    from esr_local.runs import RunOptions, create_run
    from esr_local.store import Store

    store = Store(tmp_path / "d.db")
    run_id, judge = create_run(store, RunOptions(latents=[1], boost=1.0, judge="local", skip_judge_check=True, conditions=[
        "steered", "steered", "meta:self_monitor", "meta:self_monitor"]))
    judge.close()
    stored = json.loads(store.get_run(run_id)["spec_json"])
    assert stored["conditions"] == ["steered", "meta:self_monitor"]
    assert stored["sampling"]["temperature"] == 0.6 and stored["calibration"] is None  # a fixed boost: no calibration
    assert len(stored["prompts"]) >= 38


def test_a_sweep_over_a_latent_set_is_not_refused_as_too_few_latents():
    from esr_local.runs.create import RunOptions

    RunOptions(latent_set="my-set", sweep_levels=3).check()  # the set's latents are counted when it is loaded
    for bad in (RunOptions(latents=[1], sweep_levels=3), RunOptions(latent_set="my-set", boost=1.0, sweep_levels=3)):
        with pytest.raises(UserInputError, match="give at least 2 latents and no --boost"):
            bad.check()
