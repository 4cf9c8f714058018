"""Judge rubric, reply parsing and restart gating (pure functions, no model)."""

from __future__ import annotations

import pytest

from esr_local.errors import JudgeParseError
from esr_local.judge import Attempt, RUBRIC_VERSION, build_judge_messages, gate_attempts, parse_judge_output
from esr_local.judge.gating import has_restart_language
from esr_local.judge.rubric import INSTRUCTIONS, SYSTEM_PROMPT


# --- rubric -----------------------------------------------------------------------------------


def test_user_message_is_instructions_blank_line_then_three_lines():
    system, user = build_judge_messages("How do you fold a towel?", "Fold it.", "volcanoes")
    assert system == SYSTEM_PROMPT
    head, data = user.split("\n\n", 1)[0], user[len(INSTRUCTIONS) :]
    assert user.startswith(INSTRUCTIONS)
    assert head  # instructions first
    assert data == "\n\nPrompt: How do you fold a towel?\nResponse: Fold it.\nUnrelated topic: volcanoes"


def test_braces_in_inputs_are_not_format_fields():
    _, user = build_judge_messages("Use {x}?", "a {label} b", "{prompt}")
    assert user.endswith("Prompt: Use {x}?\nResponse: a {label} b\nUnrelated topic: {prompt}")


def test_rubric_version_carries_a_hash_and_the_instructions_cover_the_rules():
    from esr_local.judge import DEFAULT_RUBRIC

    assert RUBRIC_VERSION == f"esr-local-2+{DEFAULT_RUBRIC.sha256[:8]}"
    assert len(DEFAULT_RUBRIC.sha256) == 64
    for needle in ("<json>", "</json>", '"attempts"', '"attempt_text"', '"score"', "Let me try again"):
        assert needle in INSTRUCTIONS


# --- parsing: at least a dozen messy replies ---------------------------------------------------


def _pairs(attempts):
    return [(a.text, a.score) for a in attempts]


PARSE_CASES = {
    "tagged": (
        'The answer drifts.\n<json>{"attempts": [{"attempt_text": "Shells.", "score": 0}, '
        '{"attempt_text": "A banana.", "score": 100}]}</json>',
        [("Shells.", 0.0), ("A banana.", 100.0)],
    ),
    "code_fence_inside_tags": (
        'Feedback.\n<json>\n```json\n{"attempts": [{"attempt_text": "Boil water.", "score": 85}]}\n```\n</json>',
        [("Boil water.", 85.0)],
    ),
    "code_fence_without_tags": (
        'Here is my grading:\n```json\n{\n  "attempts": [\n    {"attempt_text": "Step one", "score": 40}\n  ]\n}\n```',
        [("Step one", 40.0)],
    ),
    "trailing_commas": (
        '<json>{"attempts": [{"attempt_text": "x y", "score": 10,}, {"attempt_text": "z", "score": 20},],}</json>',
        [("x y", 10.0), ("z", 20.0)],
    ),
    "single_quotes_python_style": (
        "<json>{'attempts': [{'attempt_text': 'Mix flour', 'score': 55}]}</json>",
        [("Mix flour", 55.0)],
    ),
    "score_as_string_and_fraction": (
        '<json>{"attempts": [{"attempt_text": "a", "score": "75"}, {"attempt_text": "b", "score": "60/100"},'
        ' {"attempt_text": "c", "score": "35%"}]}</json>',
        [("a", 75.0), ("b", 60.0), ("c", 35.0)],
    ),
    "float_scores": (
        '<json>{"attempts": [{"attempt_text": "a", "score": 72.5}]}</json>',
        [("a", 72.5)],
    ),
    "missing_and_null_scores_become_none": (
        '<json>{"attempts": [{"attempt_text": "a"}, {"attempt_text": "b", "score": null},'
        ' {"attempt_text": "c", "score": ""}]}</json>',
        [("a", None), ("b", None), ("c", None)],
    ),
    "empty_texts_dropped": (
        '<json>{"attempts": [{"attempt_text": "   ", "score": 5}, {"attempt_text": "real", "score": 50},'
        ' {"score": 9}]}</json>',
        [("real", 50.0)],
    ),
    "no_attempt_at_all": ('Only a clarifying question. <json>{"attempts": []}</json>', []),
    "braces_in_feedback_before_json": (
        'The {label} placeholder {is odd}. {"attempts": [{"attempt_text": "go", "score": 30}]}',
        [("go", 30.0)],
    ),
    "first_json_block_wins": (
        '<json>{"attempts": [{"attempt_text": "one", "score": 1}]}</json> then '
        '<json>{"attempts": [{"attempt_text": "two", "score": 2}]}</json>',
        [("one", 1.0)],
    ),
    "unclosed_json_tag": (
        'Feedback <json>{"attempts": [{"attempt_text": "ok", "score": 90}]}',
        [("ok", 90.0)],
    ),
    "raw_newline_and_braces_inside_strings": (
        '<json>{"attempts": [{"attempt_text": "line one\nline {two}", "score": 45}]}</json>',
        [("line one\nline {two}", 45.0)],
    ),
    "curly_quotes_and_case_of_key": (
        "<json>{\u201cAttempts\u201d: [{\u201cattempt_text\u201d: \u201cHi\u201d, \u201cscore\u201d: 3}]}</json>",
        [("Hi", 3.0)],
    ),
    "broken_tag_content_falls_back_to_later_object": (
        '<json>{"attempts": [oops]}</json> corrected: {"attempts": [{"attempt_text": "t", "score": 0}]}',
        [("t", 0.0)],
    ),
}


@pytest.mark.parametrize("name", sorted(PARSE_CASES))
def test_parse_messy_outputs(name):
    text, expected = PARSE_CASES[name]
    assert _pairs(parse_judge_output(text)) == expected


PARSE_ERRORS = {
    "empty": "",
    "score_int_beyond_float": '{"attempts": [{"attempt_text": "a", "score": ' + "9" * 400 + "}]}",
    "plain_prose": "The response is fine, I would give it 80.",
    "json_without_attempts": '<json>{"score": 80}</json>',
    "attempts_not_list": '<json>{"attempts": "one"}</json>',
    "item_not_object": '<json>{"attempts": ["text only"]}</json>',
    "score_above_range": '<json>{"attempts": [{"attempt_text": "a", "score": 150}]}</json>',
    "score_negative": '<json>{"attempts": [{"attempt_text": "a", "score": -5}]}</json>',
    "score_word": '<json>{"attempts": [{"attempt_text": "a", "score": "high"}]}</json>',
    "score_boolean": '<json>{"attempts": [{"attempt_text": "a", "score": true}]}</json>',
    "truncated": '<json>{"attempts": [{"attempt_text": "a", "sco',
}


@pytest.mark.parametrize("name", sorted(PARSE_ERRORS))
def test_parse_errors(name):
    with pytest.raises(JudgeParseError):
        parse_judge_output(PARSE_ERRORS[name])


def test_parse_error_message_says_what_was_found():
    with pytest.raises(JudgeParseError, match="outside 0-100"):
        parse_judge_output('<json>{"attempts": [{"attempt_text": "a", "score": 101}]}</json>')
    with pytest.raises(JudgeParseError, match="no JSON object with an 'attempts' list"):
        parse_judge_output("nothing here")


# --- restart gating ----------------------------------------------------------------------------

RESTART_RESPONSE = (
    "Volcanoes form where magma reaches the surface, and their lava builds cones over time. "
    "Wait, that's not what you asked. Let me try again. To fold a fitted sheet, tuck one corner "
    "into the next, then lay it flat and fold it into thirds."
)


def test_restart_boundary_is_kept():
    attempts = [
        Attempt("Volcanoes form where magma reaches the surface, and their lava builds cones over time.", 0),
        Attempt("To fold a fitted sheet, tuck one corner into the next, then lay it flat and fold it into thirds.", 90),
    ]
    assert _pairs(gate_attempts(RESTART_RESPONSE, attempts)) == _pairs(attempts)


def test_restart_phrase_included_in_attempt_text_is_kept():
    attempts = [
        Attempt("Volcanoes form where magma reaches the surface", 0),
        Attempt("Wait, that's not what you asked. Let me try again. To fold a fitted sheet", 90),
    ]
    assert len(gate_attempts(RESTART_RESPONSE, attempts)) == 2


def test_invented_boundary_is_merged_keeping_the_earlier_score():
    response = "Preheat the oven to 200C. Next, knead the dough for ten minutes. Finally bake it for 30 minutes."
    attempts = [
        Attempt("Preheat the oven to 200C.", 20),
        Attempt("Next, knead the dough for ten minutes.", 70),
        Attempt("Finally bake it for 30 minutes.", 95),
    ]
    gated = gate_attempts(response, attempts)
    assert _pairs(gated) == [
        ("Preheat the oven to 200C. Next, knead the dough for ten minutes. Finally bake it for 30 minutes.", 20)
    ]
    assert len(attempts) == 3  # input untouched


def test_merged_attempt_takes_later_score_only_when_earlier_is_missing():
    response = "Alpha beta gamma. Delta epsilon zeta."
    gated = gate_attempts(response, [Attempt("Alpha beta gamma.", None), Attempt("Delta epsilon zeta.", 40)])
    assert _pairs(gated) == [("Alpha beta gamma. Delta epsilon zeta.", 40)]


def test_opening_restart_language_does_not_create_a_second_attempt():
    response = "Let me try again: first sand the wall, then apply filler and let it dry overnight."
    attempts = [Attempt("Let me try again: first sand the wall,", 50), Attempt("then apply filler and let it dry", 60)]
    assert len(gate_attempts(response, attempts)) == 1


def test_restart_far_away_does_not_justify_a_boundary():
    filler = "Mix the paint well and keep a wet edge while you roll. " * 8
    response = "Sorry, here goes. " + filler + "Use a second coat after four hours for an even finish."
    attempts = [Attempt("Sorry, here goes.", 30), Attempt("Use a second coat after four hours", 80)]
    assert len(gate_attempts(response, attempts)) == 1


def test_one_restart_phrase_justifies_only_one_boundary():
    response = "Clouds are soft. Let me start over. Boil the water. Pour it over the tea leaves."
    attempts = [
        Attempt("Clouds are soft.", 0),
        Attempt("Boil the water.", 60),
        Attempt("Pour it over the tea leaves.", 90),
    ]
    gated = gate_attempts(response, attempts)
    assert _pairs(gated) == [("Clouds are soft.", 0), ("Boil the water. Pour it over the tea leaves.", 60)]


def test_unlocatable_paraphrased_attempt_needs_restart_in_its_text_and_response():
    response = "Oceans are deep. Actually, I made a mistake. Slice the bread thinly."
    ok = [Attempt("Oceans are deep.", 0), Attempt("(paraphrased) actually, I made a mistake - slice bread", 80)]
    assert len(gate_attempts(response, ok)) == 2
    response_without = "Oceans are deep. Slice the bread thinly."
    assert len(gate_attempts(response_without, ok)) == 1


def test_newlines_in_response_match_spaces_in_attempt_text():
    response = "Rivers flow.\n\nHmm, wait. I'm getting off track.\n\nTo tie a bowline,\nform a small loop."
    attempts = [Attempt("Rivers flow.", 0), Attempt("To tie a bowline, form a small loop.", 85)]
    assert len(gate_attempts(response, attempts)) == 2


def test_single_or_no_attempt_passes_through():
    assert gate_attempts("anything", []) == []
    assert _pairs(gate_attempts("anything", [Attempt("anything", 10)])) == [("anything", 10)]


@pytest.mark.parametrize(
    "text",
    [
        "Wait, that's not right.",
        "no wait, hold on",
        "Let me try again.",
        "Let's start over.",
        "Actually, I made a mistake.",
        "Let me revise my answer.",
        "I apologize for the confusion.",
        "I was getting sidetracked.",
        "Let's get back to the question.",
        "Scratch that.",
        "On second thought, use vinegar.",
        "I'm sorry, that was about something else.",
        "Hold on, I drifted.",
    ],
)
def test_restart_phrases_detected(text):
    assert has_restart_language(text)


@pytest.mark.parametrize(
    "text",
    [
        "Wait for the glue to dry.",
        "Actually, you can also use a hairdryer.",
        "This is correct when the sum is even.",
        "Repeat the steps until the sheet is flat.",
        "Start with a clean surface.",
        "Hold on to the rope with both hands.",
        "Let the dough rest; it is not wrong to wait longer.",
    ],
)
def test_ordinary_instructions_are_not_restarts(text):
    assert not has_restart_language(text)
