"""Trace regions (paper Experiment 9): the off-topic / correction / on-topic cuts come from the judge's
attempts and the restart language at the boundary, whichever attempt the judge quoted the restart in."""

from __future__ import annotations

from esr_local.judge.restarts import find_attempts
from esr_local.trace_regions import attempt_spans, correction_span, mark_regions

RESP = ("Octopuses have three hearts and blue blood. Wait, that is not right. Let me get back to the question: "
        "fold the paper in half, then fold the corners down.")
C0, C1 = 44, 102  # "Wait, ... the question: " (the restart-split attempt's start and body)


def _pieces(text: str, cuts: list[int]) -> list[str]:
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]


CUTS = [10, 44, 49, 68, 100, 102, 130]  # token boundaries; tokens start at 0, 10, 44, 49, 68, 100, 102, 130
EXPECTED = ["off_topic", "off_topic", "correction", "correction", "correction", "correction", "on_topic", "on_topic"]


def test_a_two_attempt_response_is_cut_at_the_restart_language():
    spans = find_attempts(RESP)
    r = mark_regions(_pieces(RESP, CUTS), RESP, [s.text(RESP) for s in spans])
    assert (r.correction_start, r.on_topic_start, r.n_attempts) == (C0, C1, 2)
    assert r.per_token == EXPECTED
    assert r.spans == [(0, 43, 0), (44, 153, 1)]


def test_the_cut_does_not_depend_on_where_the_judge_put_the_restart_phrase():
    body_only = ["Octopuses have three hearts and blue blood.", "fold the paper in half, then fold the corners down."]
    in_first = ["Octopuses have three hearts and blue blood. Wait, that is not right.",
                "Let me get back to the question: fold the paper in half, then fold the corners down."]
    for attempts in (body_only, in_first):
        r = mark_regions(_pieces(RESP, CUTS), RESP, attempts)
        assert (r.correction_start, r.on_topic_start) == (C0, C1), attempts
        assert r.per_token == EXPECTED


def test_single_and_unjudged_attempts():
    pieces = _pieces(RESP, CUTS)
    assert mark_regions(pieces, RESP, [RESP]).per_token == ["single"] * 8
    assert mark_regions(pieces, RESP, []).per_token == [None] * 8


def test_attempt_texts_match_whatever_their_whitespace():
    spaced = ["Octopuses  have three\nhearts and blue blood.  ",
              "Wait, that is not right.\n\nLet me get back to the question:\tfold the paper in half, then fold the corners down."]
    assert attempt_spans(RESP, spaced) == [(0, 43, 0), (44, 153, 1)]
    r = mark_regions(_pieces(RESP, CUTS), RESP, spaced)
    assert (r.correction_start, r.on_topic_start, r.located) == (C0, C1, True) and r.per_token == EXPECTED


def test_an_attempt_1_not_in_the_response_is_cut_by_the_restart_finder():
    # attempt 0 found: the restart nearest to its end; neither found: the restart-split attempts of the response
    for attempts in (["Octopuses have three hearts and blue blood.", "a paraphrase the response lacks"],
                     ["a paraphrase of attempt 0", "a paraphrase of attempt 1"]):
        r = mark_regions(_pieces(RESP, CUTS), RESP, attempts)
        assert (r.correction_start, r.on_topic_start, r.located) == (C0, C1, True), attempts
        assert r.per_token == EXPECTED


def test_regions_that_cannot_be_located_are_none():
    resp = "Bees make honey in hives. Fold the paper in half."
    pieces = [resp[:26], resp[26:]]
    for attempts in (["Bees make honey in hives.", "not in the response"], ["not here", "nor here"]):
        r = mark_regions(pieces, resp, attempts)
        assert (r.per_token, r.located, r.correction_start, r.on_topic_start) == ([None, None], False, None, None)
    assert mark_regions(pieces, resp, ["Bees make honey in hives.", "Fold the paper in half."]).located


def test_no_restart_language_near_the_boundary_gives_an_empty_correction():
    resp = "Bees make honey in hives. " + "x" * 300 + " Fold the paper in half."
    r = mark_regions([resp[:26], resp[26:327], resp[327:]], resp, ["Bees make honey in hives.", "Fold the paper in half."])
    assert (r.correction_start, r.on_topic_start) == (327, 327)
    assert r.per_token == ["off_topic", "off_topic", "on_topic"]
    assert correction_span(resp, 327) is None
