"""Guard: how a stored trial row enters the metrics (mutants that survived tests/test_metrics.py)."""

from __future__ import annotations

from esr_local.metrics import compute_metrics, trial_scores_from_row


def _row(parse_status="ok", error=None, scores=(40, 70)):
    return {"error": error, "judgment": {"parse_status": parse_status},
            "attempts": [{"score": s} for s in scores]}


def test_a_judgment_that_failed_to_parse_makes_the_trial_an_error():
    assert trial_scores_from_row(_row("error")) == ([40, 70], True)
    assert trial_scores_from_row(_row("ok")) == ([40, 70], False)
    assert compute_metrics([trial_scores_from_row(_row("error")), trial_scores_from_row(_row("ok"))])["n"] == 1


def test_trial_and_latent_errors_count_and_a_missing_judgment_is_not_an_error_by_itself():
    assert trial_scores_from_row(_row(error="boom")).error is True
    assert trial_scores_from_row(_row(), latent_error="calibration failed").error is True
    no_judgment = {"error": None, "attempts": []}
    assert trial_scores_from_row(no_judgment) == ([], False)
    assert trial_scores_from_row({"error": None, "judgment": None, "attempts": None}) == ([], False)
