"""Restart-language detection: exact attempt spans on restart phrasings, none on ordinary uses of the words."""

from __future__ import annotations

import pytest

from esr_local.judge.restarts import find_attempts, find_restarts

# (response, the exact text where the second attempt starts, the second attempt's scored body)
RESTARTS = [
    ("Remove the wheel. Wait, that's not right. First loosen the nuts.", "Wait, that's not right.", "First loosen the nuts."),
    ("Octopuses are clever. Scratch that. Mix the flour.", "Scratch that.", "Mix the flour."),
    ("The sea is wide. Hold on, I'm rambling. Hold the blade at 20 degrees.", "Hold on, I'm rambling.",
     "Hold the blade at 20 degrees."),
    ("Lava flows. That isn't what you asked. Repot the plant.", "That isn't what you asked.", "Repot the plant."),
    ("Jazz is fun. Let me try again. Boil the water.", "Let me try again.", "Boil the water."),
    ("Castles are old. Let's start over. Fold the sheet in half.", "Let's start over.", "Fold the sheet in half."),
    ("Fossils are old. Actually, I made a mistake. Tie the knot.", "Actually, I made a mistake.", "Tie the knot."),
    ("Pirates sail. I'd like to revise my answer. Plant the seeds.", "I'd like to revise my answer.", "Plant the seeds."),
    ("Robots whirr. Sorry, I got off track. Let me get back to the question. Iron on low heat.",
     "Sorry, I got off track. Let me get back to the question.", "Iron on low heat."),
    ("Cats purr. Oops. Check the dipstick.", "Oops.", "Check the dipstick."),
    ("Whales sing, but I digress. Paint with a roller.", "I digress.", "Paint with a roller."),
    ("Apple! No, wait! Orange", "No, wait!", "Orange"),
    ("Clowns juggle. Hmm, this is wrong - you asked about tea. Brew at 80 degrees.",
     "Hmm, this is wrong - you asked about tea.", "Brew at 80 degrees."),
    ("Bees buzz. On second thought, sort the numbers first.", "On second thought,", "sort the numbers first."),
    ("Ships sail. Sorry, I got sidetracked. Whisk the eggs.", "Sorry, I got sidetracked.", "Whisk the eggs."),
    ("Stars shine. Let me start over. Cut along the line.", "Let me start over.", "Cut along the line."),
    ("Moons orbit. Let me get back on track. Sift the flour.", "Let me get back on track.", "Sift the flour."),
    ("Trains are loud. I'm going off on a tangent. Water the roots.", "I'm going off on a tangent.",
     "Water the roots."),
    ("Kites fly. I think I lost the thread. Sand with the grain.", "I think I lost the thread.",
     "Sand with the grain."),
    ("Comets glow. Hold on, let me rethink this. Boil the eggs for nine minutes.", "Hold on, let me rethink this.",
     "Boil the eggs for nine minutes."),
    ("Owls hoot. Wait, I was supposed to talk about sinks. Fit the trap under the basin.",
     "Wait, I was supposed to talk about sinks.", "Fit the trap under the basin."),
    ("Dunes shift. Let me answer the question properly. Preheat the oven.", "Let me answer the question properly.",
     "Preheat the oven."),
    ("Frogs croak. I should stay on topic. Rinse the rice.", "I should stay on topic.", "Rinse the rice."),
    ("Gulls cry. Never mind. Tighten the nut.", "Never mind.", "Tighten the nut."),
]

ORDINARY = [
    "Wait for the glue to set before you sand it.",
    "Actually, most sinks have a trap under the basin.",
    "Let me try it with numbers: 3/4 + 1/4 = 1.",
    "Clean the tube. Try again if the tire is still flat.",
    "If the dough tears, start over with a new ball.",
    "Don't forget that the oven must be hot.",
    "Wait a few minutes, then stir.",
    "Sorry to say, but cheap knives dull fast.",
    "No, you do not need a special tool.",
    "Hold on to the handle tightly.",
    "Mix it. I went off to the shop and bought flour.",
    "Seal the joint. Try again if it still leaks.",
    "Hold the pan steady while you pour.",
    "Never mind the stains; they wash out in cold water.",
    "The dough may tear. You should stay on track with the recipe and rest it.",
]


@pytest.mark.parametrize("response,restart,body", RESTARTS)
def test_restart_opens_a_second_attempt_at_its_sentence(response, restart, body):
    spans = find_attempts(response)
    assert len(spans) == 2
    first, second = spans
    assert (first.start, first.end) == (0, response.index(restart))
    assert (second.start, second.end) == (response.index(restart), len(response))
    assert second.text(response).startswith(restart)
    assert second.body(response) == body
    assert first.body(response) == first.text(response)  # nothing to strip from an opening attempt


@pytest.mark.parametrize("response", ORDINARY)
def test_ordinary_words_open_no_attempt(response):
    spans = find_attempts(response)
    assert [(s.start, s.end, s.body_start) for s in spans] == [(0, len(response), 0)]


def test_leading_restart_opens_no_extra_attempt_and_is_not_scored():
    text = "Let me try again. Measure the paper and fold the edge under."
    (span,) = find_attempts(text)
    assert (span.start, span.end) == (0, len(text))
    assert span.body(text) == "Measure the paper and fold the edge under."


def test_trailing_restart_with_nothing_after_opens_no_attempt():
    text = "Bread needs flour. Knead it well. Sorry, I got off track."
    assert [(s.start, s.end) for s in find_attempts(text)] == [(0, len(text))]


def test_consecutive_restart_sentences_open_one_attempt():
    text = "Sharks hunt seals. Wait, that's not right. Let me try again. Half the base times the height."
    spans = find_attempts(text)
    assert [s.text(text) for s in spans] == [
        "Sharks hunt seals. ",
        "Wait, that's not right. Let me try again. Half the base times the height.",
    ]
    assert spans[1].body(text) == "Half the base times the height."


def test_three_attempts_tile_the_response():
    text = "Lava is hot. Scratch that. Knights fight. Sorry, I got off track. Sort the numbers."
    spans = find_attempts(text)
    assert [s.text(text) for s in spans] == ["Lava is hot. ", "Scratch that. Knights fight. ",
                                             "Sorry, I got off track. Sort the numbers."]
    assert "".join(s.text(text) for s in spans) == text
    assert [s.body(text) for s in spans] == ["Lava is hot. ", "Knights fight. ", "Sort the numbers."]


def test_curly_quotes_and_case_do_not_matter():
    text = "Volcanoes erupt. WAIT, THAT\u2019S NOT RIGHT. Pitch the tent."
    spans = find_attempts(text)
    assert [s.start for s in spans] == [0, text.index("WAIT")]


def test_blank_response_has_no_attempt():
    assert find_attempts("") == []
    assert find_attempts("  \n ") == []


def test_find_restarts_reports_offsets_into_the_response():
    text = "Cats purr. Oops, my mistake. Check the oil."
    (r,) = find_restarts(text)
    assert text[r.start:r.end] == "Oops, my mistake"


def test_patterns_hash_follows_the_pattern_set(monkeypatch):
    from esr_local.judge import restarts

    before = restarts.patterns_sha256()
    assert before == restarts.patterns_sha256() and len(before) == 64
    monkeypatch.setattr(restarts, "STRONG_PATTERNS", restarts.STRONG_PATTERNS + (r"\bfoo\b",))
    assert restarts.patterns_sha256() != before
