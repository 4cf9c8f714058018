"""The `run_metrics_unflagged` SQL view (migration m014) gives Datasette users the numbers of
`esr-local metrics --exclude-flagged`: same rows, same counts, same rates."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from esr_local.cli import main
from esr_local.metrics import METRIC_KEYS
from esr_local.store import Store
from report_fixtures import imported_store


def _flag(db, run_id: str, latent: int, label: str) -> None:
    with Store(db) as store:
        store.upsert_latent(run_id, latent, label=label, row_norm=None, boost=2.0, boost_source="calibrated",
                            flags="boost 10 at the upper bound 10")


@pytest.fixture
def flagged_db(tmp_path):
    """The report fixtures' four runs; latent 1 of `steered` flagged, and both latents of `meta`, so one run
    loses a latent and another loses every latent of its condition."""
    db, ids = imported_store(tmp_path)
    _flag(db, ids["steered"], 1, "weddings")
    _flag(db, ids["meta"], 1, "weddings")
    _flag(db, ids["meta"], 2, "volcanoes")
    return db, ids


def _view(db, name: str) -> dict[tuple[str, str], dict]:
    with Store(db, create=False) as store:
        return {(r["run_id"], r["condition"]): r for r in store.db.query(f"SELECT * FROM {name}")}


def _cli_metrics(db, *extra: str) -> dict[tuple[str, str], dict]:
    r = CliRunner().invoke(main, ["metrics", "--db", str(db), "--json", *extra], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {(m["run_id"], m["condition"]): m for m in json.loads(r.stdout)}


def test_view_equals_metrics_exclude_flagged(flagged_db):
    db, ids = flagged_db
    view, cli = _view(db, "run_metrics_unflagged"), _cli_metrics(db, "--exclude-flagged")
    assert set(view) == set(cli) and len(view) == 6  # steered, steered2, meta, 3 sweep levels
    for key, expected in cli.items():
        for k in METRIC_KEYS:
            assert view[key][k] == pytest.approx(expected[k]), (key, k)
    # worked out by hand: steered keeps latent 2 only (first scores 40, 5; both multi-attempt, one improved)
    steered = view[(ids["steered"], "steered")]
    assert (steered["n"], steered["multi_attempt_count"], steered["improved_count"]) == (2, 2, 1)
    assert steered["mean_first_score"] == pytest.approx(22.5) and steered["esr_rate"] == pytest.approx(50.0)
    # every latent of the meta run is flagged: the row stays, with nothing counted, as in the CLI
    meta = view[(ids["meta"], "meta:self_monitor")]
    assert (meta["n"], meta["multi_attempt_count"], meta["improved_count"]) == (0, 0, 0)
    assert all(meta[k] is None for k in METRIC_KEYS[3:])


def test_view_leaves_out_only_flagged_latents(flagged_db):
    db, ids = flagged_db
    unflagged, everything = _view(db, "run_metrics_unflagged"), _view(db, "run_metrics")
    assert everything[(ids["steered"], "steered")]["n"] == 4 and unflagged[(ids["steered"], "steered")]["n"] == 2
    assert everything[(ids["meta"], "meta:self_monitor")]["n"] == 4
    for key in [(ids["steered2"], "steered"), *[(ids["sweep"], f"sweep:{i}") for i in range(3)]]:  # nothing flagged
        assert {k: unflagged[key][k] for k in METRIC_KEYS} == {k: everything[key][k] for k in METRIC_KEYS}
    # without flags the two views agree everywhere, and with the CLI without --exclude-flagged
    with Store(db) as store, store.transaction():
        store.db.execute("UPDATE latents SET flags = NULL")
    assert _view(db, "run_metrics_unflagged") == _view(db, "run_metrics")
    cli = _cli_metrics(db)
    assert {key: row["n"] for key, row in _view(db, "run_metrics_unflagged").items()} == {
        key: row["n"] for key, row in cli.items()}
