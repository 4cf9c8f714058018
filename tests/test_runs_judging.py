"""Re-grading a run with another judge (responses kept, judgments keyed by judge), --retry-failed, and
cross-judge agreement, against real HTTP judges on 127.0.0.1."""

from __future__ import annotations

import json
import re
import sqlite3

from click.testing import CliRunner
from runs_judge_server import JudgeServer, fails, verdict

from esr_local.cli import main


def _cli(args):
    return CliRunner().invoke(main, args)


def _outcome(raw: str) -> tuple[bool, int]:
    scores = [a["score"] for a in json.loads(re.search(r"<json>(.*)</json>", raw).group(1))["attempts"]]
    d = scores[-1] - scores[0]
    return len(scores) > 1, (d > 0) - (d < 0)


def test_regrade_with_another_judge_then_agreement(tmp_path):
    db = str(tmp_path / "g.db")
    with JudgeServer() as js:
        r = _cli(["run", "--db", db, "--latent", "1", "--latent", "3", "--latent", "6", "--n-prompts", "3",
                  "--max-tokens", "24", "--n-ctx", "512", "--boost", "3", "--seed", "8",
                  "--judge", "openai:judge-a", "--judge-base-url", js.url, "--skip-judge-check"])
        assert r.exit_code == 0, r.output
        run_id = r.stdout.split()[0]
        con = sqlite3.connect(db)
        before = con.execute("SELECT id, response FROM trials ORDER BY id").fetchall()
        assert len(before) == 9
        js.fail_half = True  # the second judge first fails on about half of the responses
        g = _cli(["judge", "grade", run_id, "--db", db, "--judge", "openai:judge-b", "--judge-base-url", js.url, "--json"])
        assert g.exit_code == 0, g.output
        first = json.loads(g.stdout[g.stdout.index("{"):])
        n_fail = sum(fails(resp.strip()) for _, resp in before)
        assert (first["judged"], first["failed"]) == (9, n_fail) and 0 < n_fail < 9
        js.fail_half = False
        again = _cli(["judge", run_id, "--db", db, "--judge", "openai:judge-b", "--judge-base-url", js.url,
                      "--retry-failed", "--json"])  # `judge RUN` is `judge grade RUN`
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout[again.stdout.index("{"):])["judged"] == n_fail
        assert con.execute("SELECT id, response FROM trials ORDER BY id").fetchall() == before  # nothing regenerated
        keys = con.execute("SELECT judge_key, COUNT(*), SUM(parse_status = 'ok') FROM judgments GROUP BY 1 ORDER BY 1").fetchall()
        assert [(k.split(":")[1], n, ok) for k, n, ok in keys] == [("judge-a", 9, 9), ("judge-b", 9, 9)]
    ma = {rid: _outcome(verdict(resp.strip())) for rid, resp in before}
    mb = {rid: _outcome(verdict(resp.strip(), "judge-b")) for rid, resp in before}
    both_multi = [t for t in ma if ma[t][0] and mb[t][0]]
    a = _cli(["judge", "agree", run_id, "--db", db, "--judge", "openai:judge-a", "--judge", "openai:judge-b", "--json"])
    assert a.exit_code == 0, a.output
    out = json.loads(a.stdout)
    assert out["n_both"] == 9
    assert out["multi_attempt_agreement"] == sum(ma[t][0] == mb[t][0] for t in ma) / 9
    assert out["n_multi_both"] == len(both_multi)
    if both_multi:
        assert out["direction_agreement"] == sum(ma[t][1] == mb[t][1] for t in both_multi) / len(both_multi)
    # metrics --judge picks whose judgments count
    m_a = json.loads(_cli(["metrics", run_id, "--db", db, "--json"]).stdout)[0]
    m_b = json.loads(_cli(["metrics", run_id, "--db", db, "--json", "--judge", "openai:judge-b"]).stdout)[0]
    assert m_a["multi_attempt_count"] == sum(v[0] for v in ma.values())
    assert m_b["multi_attempt_count"] == sum(v[0] for v in mb.values())
    assert m_b["judge_key"].startswith("openai:judge-b:")
    bad = _cli(["metrics", run_id, "--db", db, "--judge", "openai:nobody"])
    assert bad.exit_code == 1 and "has no judgments by 'openai:nobody'" in bad.output
