"""`esr-local latents RUN`: a run's latents with labels, boosts, re-measured scores and calibration flags."""

from __future__ import annotations

import json

from click.testing import CliRunner

from esr_local.cli import main
from esr_local.store import Store


def test_latents_run_lists_boosts_flags_and_errors(tmp_path):
    db = tmp_path / "l.db"
    store = Store(db)
    run_id = store.create_run({"experiment": "esr"})
    store.upsert_latent(run_id, 3, label="volcanoes", row_norm=2.0, boost=1.5, boost_source="calibrated",
                        achieved_score=0.58, flags="re-measured score 0.58 is more than 0.15 from the target 0.30")
    store.upsert_latent(run_id, 9, label="sharks", row_norm=2.0, boost=None, boost_source="calibrated",
                        error="judge down")
    out = CliRunner().invoke(main, ["latents", run_id[:10], "--db", str(db)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == f"run {run_id}: 2 latent(s)"
    assert "volcanoes  boost 1.5 (calibrated)  re-measured 0.58  FLAGGED: re-measured score 0.58" in lines[1]
    assert "sharks  boost -" in lines[2] and "ERROR: judge down" in lines[2]
    rows = json.loads(CliRunner().invoke(main, ["latents", run_id, "--db", str(db), "--json"]).output)
    assert [(r["latent"], r["boost"], r["flags"] is not None) for r in rows] == [(3, 1.5, True), (9, None, False)]
    bad = CliRunner().invoke(main, ["latents", "nosuchrun", "--db", str(db)])
    assert bad.exit_code == 1 and "no run 'nosuchrun'" in bad.output
    assert CliRunner().invoke(main, ["latents", "--help"]).exit_code == 0
