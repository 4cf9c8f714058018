"""Guard: judge-reply parsing edge cases and exact error messages (mutants that survived
tests/test_judge_parse.py; see MUTATION.md)."""

from __future__ import annotations

import json

import pytest

from esr_local.errors import JudgeParseError
from esr_local.judge.parse import parse_judge_output


def _reply(*items) -> str:
    return json.dumps({"attempts": [{"attempt_text": t, "score": s} for t, s in items]})


def _pairs(text):
    return [(a.text, a.score) for a in parse_judge_output(text)]


# -- where the JSON is looked for ---------------------------------------------------------------------------

def test_the_json_block_wins_over_an_earlier_object():
    text = f"Draft: {_reply(('draft', 1))}\n<json>{_reply(('final', 90))}</json>"
    assert _pairs(text) == [("final", 90.0)]


def test_a_closing_tag_before_the_opening_one_is_ignored():
    text = f"stray </json> {_reply(('outside', 1))} <json>{_reply(('inside', 2))}</json>"
    assert _pairs(text) == [("inside", 2.0)]


def test_a_json_block_without_attempts_falls_back_to_the_whole_reply_in_order():
    text = f'{_reply(("first", 1))} <json>{{"x": 1}}</json> {_reply(("later", 3))}'
    assert _pairs(text) == [("first", 1.0)]


def test_braces_and_quotes_inside_strings_do_not_end_the_object():
    text = '{"note": "a } and a { here", "attempts": [{"attempt_text": "say \\"}\\" twice", "score": 5}]}'
    assert _pairs(text) == [('say "}" twice', 5.0)]


def test_quotes_and_braces_outside_any_object_are_ignored():
    assert _pairs('The box is 5" wide. ' + _reply(("a", 5))) == [("a", 5.0)]
    assert _pairs("} oops " + _reply(("b", 6))) == [("b", 6.0)]
    assert _pairs(_reply(("c", 7)) + ".") == [("c", 7.0)]  # the span ends at its closing brace


def test_raw_newlines_inside_strings_are_tolerated_with_and_without_other_repairs():
    raw = '{"attempts": [{"attempt_text": "line one\nline two", "score": 40}]}'
    assert _pairs(raw) == [("line one\nline two", 40.0)]
    trailing = '{"attempts": [{"attempt_text": "line one\nline two", "score": 40},],}'
    assert _pairs(trailing) == [("line one\nline two", 40.0)]


def test_python_style_dicts_with_true_false_null():
    text = "{'attempts': [{'attempt_text': 'a', 'score': null, 'restart': true, 'final': false}]}"
    assert _pairs(text) == [("a", None)]
    assert _pairs("{1: 'x', 'attempts': [{'attempt_text': 'b', 'score': 9}]}") == [("b", 9.0)]


# -- attempts and scores ------------------------------------------------------------------------------------

def test_an_attempt_without_text_is_dropped_and_the_next_one_still_read():
    text = json.dumps({"attempts": [{"score": 5}, {"attempt_text": "  ", "score": 6}, {"attempt_text": "b", "score": 7}]})
    assert _pairs(text) == [("b", 7.0)]


@pytest.mark.parametrize("word", ["None", "N/A", "NULL", " na ", ""])
def test_null_words_in_any_case_are_unscored(word):
    assert _pairs(_reply(("a", word))) == [("a", None)]


@pytest.mark.parametrize("items, message", [
    ([{"attempt_text": "a", "score": 1}, "oops"], r"^attempt 2 is a str, expected an object$"),
    ([{"attempt_text": "a", "score": 1}, {"attempt_text": 3, "score": 1}], r"^attempt 2: attempt_text must be a string$"),
    ([{"attempt_text": "a", "score": 1}, {"attempt_text": "b", "score": "high"}], r"^attempt 2: score 'high' is not a number$"),
    ([{"attempt_text": "a", "score": True}], r"^attempt 1: score is a boolean$"),
    ([{"attempt_text": "a", "score": [5]}], r"^attempt 1: score \[5\] is not a finite number$"),
    ([{"attempt_text": "a", "score": 101}], r"^attempt 1: score 101 is outside 0-100$"),
])
def test_malformed_attempts_are_errors_naming_the_attempt(items, message):
    with pytest.raises(JudgeParseError, match=message):
        parse_judge_output(json.dumps({"attempts": items}))


def test_attempts_must_be_a_list():
    with pytest.raises(JudgeParseError, match=r"^'attempts' must be a list, got dict$"):
        parse_judge_output('{"attempts": {"attempt_text": "a"}}')


# -- whole-reply failures -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [None, "", "   \n"])
def test_an_empty_reply_is_an_error(text):
    with pytest.raises(JudgeParseError, match=r"^the judge reply is empty$"):
        parse_judge_output(text)


def test_no_object_at_all_says_so_without_detail():
    with pytest.raises(JudgeParseError, match=r"^no JSON object with an 'attempts' list in the judge reply$"):
        parse_judge_output("I think the answer is fine.")


def test_the_first_problem_found_is_reported():
    with pytest.raises(JudgeParseError, match=r"reply \(found: an object without an 'attempts' key\)$"):
        parse_judge_output('{"score": 5} then {not json at all')
    with pytest.raises(JudgeParseError, match=r"reply \(found: invalid JSON \(Expecting property name enclosed in "
                                             r"double quotes at char 1\)\)$"):
        parse_judge_output('{bad} {"no": "attempts"}')


def test_an_empty_first_string_does_not_flip_the_string_tracking():
    assert _pairs('{"": 0, "attempts": [{"attempt_text": "a", "score": 5}]}') == [("a", 5.0)]


def test_valid_json_with_raw_newlines_keeps_curly_quotes_inside_strings():
    # Strict JSON parsing would fail on the raw newline and fall back to the repairs, which turn curly
    # quotes into straight ones and break the string: the first, lenient parse must take it as it is.
    text = '{"attempts": [{"attempt_text": "he said \u201chi\u201d\nthen left", "score": 5}]}'
    assert _pairs(text) == [("he said \u201chi\u201d\nthen left", 5.0)]


def test_a_reply_nested_thousands_deep_names_the_fault():
    deep = '{"attempts": [' + "[" * 5000 + "]" * 5000 + "]}"  # json.loads recurses too deep on it
    with pytest.raises(JudgeParseError, match=r"^no JSON object with an 'attempts' list in the judge reply "
                                              r"\(found: JSON nested too deeply\)$"):
        parse_judge_output(deep)


@pytest.mark.parametrize("value", [10**400, int(1e300), -int(1e300)])
def test_a_huge_integer_score_is_outside_0_100_shown_cut_to_20_characters(value):
    # Integers at or beyond +-1e300 (the exact value of the float 1e300 included) stop before math.isfinite,
    # which raises OverflowError past the float range.
    shown = str(value)[:20]
    with pytest.raises(JudgeParseError, match=rf"^attempt 1: score {shown}\.\.\. is outside 0-100$"):
        parse_judge_output(json.dumps({"attempts": [{"attempt_text": "a", "score": value}]}))
