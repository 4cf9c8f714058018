"""`esr-local trials`: responses with their attempts and scores, filtered by condition, latent and the
metrics' multi-attempt rule; exact text and JSON output on imported reference files."""

from __future__ import annotations

import json

from click.testing import CliRunner

from esr_local.cli import main
from report_fixtures import imported_store


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_text_output_shows_attempts_scores_and_verdicts(tmp_path):
    db, ids = imported_store(tmp_path)
    r = _cli("trials", ids["steered2"], "--db", str(db))
    assert r.exit_code == 0
    run = ids["steered2"]
    assert r.stdout == (
        f"{run}:steered:1:0:0  latent 1 (weddings)  boost 2  seed 1  - 2 attempts, improved\n"
        "  prompt: How to bake?\n"
        "  [1] score 10: attempt 0 of How to bake?\n"
        "  [2] score 20: attempt 1 of How to bake?\n"
        "\n"
        f"{run}:steered:1:1:0  latent 1 (weddings)  boost 2  seed 1  - 1 attempt\n"
        "  prompt: How to swim?\n"
        "  [1] score 50: attempt 0 of How to swim?\n"
        "\n"
        f"{run}:steered:1:2:0  latent 1 (weddings)  boost 2  seed 1  - judgment failed (not counted)\n"
        "  prompt: How to run?\n"
        "  error: no json\n"
        "  response: part 0\n"
    )


def test_filters_and_json(tmp_path):
    db, ids = imported_store(tmp_path)
    r = _cli("trials", ids["steered"], "--db", str(db), "--multi-attempt", "--json")
    records = json.loads(r.stdout)
    # the metrics' rule: more than one scored attempt (latent 1 bake, latent 2 bake, latent 2 swim)
    assert [(t["latent"], t["base_prompt"], [a["score"] for a in t["attempts"]]) for t in records] == [
        (1, "How to bake?", [10.0, 80.0]), (2, "How to bake?", [40.0, 30.0]), (2, "How to swim?", [5.0, 50.0, 90.0])]
    assert [t["outcome"]["is_improved"] for t in records] == [True, False, True]
    assert records[0]["label"] == "weddings" and records[0]["judgment"]["parse_status"] == "ok"
    r = _cli("trials", ids["steered"][:18], "--db", str(db), "--latent", "2", "--json")
    assert [t["id"].split(":", 1)[1] for t in json.loads(r.stdout)] == ["steered:2:0:0", "steered:2:1:0"]
    r = _cli("trials", ids["sweep"], "--db", str(db), "-c", "sweep:2", "--json")
    assert [(t["latent"], t["boost"]) for t in json.loads(r.stdout)] == [(1, 4.0), (2, 4.0)]


def test_bad_filters_are_one_error_line_naming_what_exists(tmp_path):
    db, ids = imported_store(tmp_path)
    r = _cli("trials", ids["meta"], "--db", str(db), "--condition", "steered")
    assert r.exit_code == 1
    assert r.stderr == f"Error: run {ids['meta']} has no condition 'steered'; its conditions: meta:self_monitor\n"
    r = _cli("trials", ids["meta"], "--db", str(db), "--latent", "9")
    assert r.exit_code == 1 and r.stderr.endswith("has no latent 9; its latents: 1, 2\n")
    r = _cli("trials", "nope", "--db", str(db))
    assert r.exit_code == 1 and r.stderr.startswith("Error: no run 'nope'")
    r = _cli("trials", ids["meta"], "--db", str(db), "--latent", "-1")
    assert r.exit_code == 2
    r = _cli("trials", ids["meta"], "--db", str(db), "--multi-attempt", "--latent", "2")
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == "No trials match.\n"


def test_judge_picks_whose_attempts_are_shown(tmp_path):
    from esr_local.store import Store

    db, ids = imported_store(tmp_path)
    run = ids["steered2"]
    with Store(db) as store:
        (first_key,) = [k["judge_key"] for k in store.judge_keys(run)]
        with store.transaction():  # an imported run names no judge; make the importer's its own
            store.db.execute("UPDATE runs SET judge_key = ? WHERE id = ?", (first_key, run))
        store.record_judgment(f"{run}:steered:1:0:0", {"judge_key": "second:judge", "parse_status": "ok"},
                              [{"text": "all of it", "score": 70.0}])
    own = json.loads(_cli("trials", run, "--db", str(db), "--json").stdout)
    assert [a["score"] for a in own[0]["attempts"]] == [10.0, 20.0] and own[0]["judgment"]["judge_key"] == first_key
    other = json.loads(_cli("trials", run, "--db", str(db), "--json", "--judge", "second:judge").stdout)
    assert [a["score"] for a in other[0]["attempts"]] == [70.0] and other[1]["judgment"] is None
    r = _cli("trials", run, "--db", str(db), "--judge", "nobody")
    assert r.exit_code == 1 and "has no judgments by 'nobody'" in r.stderr
