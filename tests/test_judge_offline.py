"""The offline judge on the real embedded model through llama.cpp: discrimination, attempts, determinism, record."""

from __future__ import annotations

import pytest

from esr_local.errors import UserInputError
from esr_local.judge import make_judge
from esr_local.judge.offline import (
    VERSION,
    OfflineJudge,
    is_degenerate,
    score_from_margin,
)

PROMPT = "How do you brew a good cup of green tea?"
LABEL = "octopuses and their behaviour"
ON = ("Heat water to about 80 degrees, not boiling. Put one teaspoon of leaves in a cup, pour the water over "
      "and let it steep for two to three minutes, then remove the leaves.")
OFF = ("The octopus is a clever animal with eight arms. It hides in rocks and changes colour to escape "
       "predators, and it can squeeze through tiny gaps.")


@pytest.fixture(scope="module")
def judge():
    j = make_judge("offline")
    yield j
    j.close()


def test_on_topic_answer_scores_far_above_a_derailed_one(judge):
    on = judge.judge(PROMPT, ON, LABEL)
    off = judge.judge(PROMPT, OFF, LABEL)
    assert on.parse_status == off.parse_status == "ok"
    assert on.attempts[0].score >= 80
    assert off.attempts[0].score <= 20
    # the same text is judged against the label it would be "about": swapping the label flips nothing on topic
    other = judge.judge(PROMPT, ON, "volcanoes, lava and eruptions")
    assert other.attempts[0].score >= 80


def test_derail_restart_answer_is_two_attempts_with_improvement(judge):
    response = f"{OFF} Wait, that's not what you asked. {ON}"
    j = judge.judge(PROMPT, response, LABEL)
    assert [a.text for a in j.attempts] == [OFF + " ", "Wait, that's not what you asked. " + ON]
    first, last = (a.score for a in j.attempts)
    assert last - first >= 50
    assert j.n_attempts_raw == 2 and j.errors == [] and j.tries == 1


def test_ordinary_restart_words_stay_one_attempt(judge):
    response = "Wait for the water to cool a little. " + ON
    j = judge.judge(PROMPT, response, LABEL)
    assert len(j.attempts) == 1 and j.attempts[0].text == response


def test_same_input_gives_identical_scores_across_instances(judge, smollm2_path):
    response = f"{OFF} Scratch that. {ON}"
    a = judge.judge(PROMPT, response, LABEL)
    judge.judge("Explain how to pitch a tent.", OFF, "volcanoes")  # other contexts in between
    b = judge.judge(PROMPT, response, LABEL)
    fresh = OfflineJudge(smollm2_path)
    try:
        c = fresh.judge(PROMPT, response, LABEL)
    finally:
        fresh.close()
    assert [x.score for x in a.attempts] == [x.score for x in b.attempts] == [x.score for x in c.attempts]
    assert a.raw_output == b.raw_output == c.raw_output


def test_blank_response_has_no_attempt(judge):
    j = judge.judge(PROMPT, "   ", LABEL)
    assert j.parse_status == "ok" and j.attempts == []


def test_degenerate_text_is_graded_low(judge):
    j = judge.judge(PROMPT, "tea tea tea tea tea tea tea tea leaves leaves leaves leaves leaves", LABEL)
    assert j.attempts[0].score < 25
    assert is_degenerate("the cat the cat the cat the cat the cat")
    assert is_degenerate("tea tea tea tea tea")
    assert not is_degenerate("tea tea tea tea")
    assert not is_degenerate(ON)


def test_calibration_map_is_fixed():
    assert score_from_margin(0.15) == 50.0
    assert score_from_margin(10) == 100.0 and score_from_margin(-10) == 0.0
    assert score_from_margin(0.15, degenerate=True) == 12.5


def test_describe_records_what_the_scores_depend_on(judge, smollm2_path):
    import hashlib

    d = judge.describe()
    assert d["backend"] == "offline"
    assert d["model"] == smollm2_path.name
    assert d["version"] == VERSION
    assert d["weights_sha256"] == hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
    assert d["deterministic"] is True and judge.deterministic is True
    assert d["rubric"] == "none (offline scorer)"
    assert d["scoring"]["max_scored_tokens"] > 0
    from esr_local.judge.restarts import patterns_sha256

    assert d["scoring"]["restart_patterns_sha256"] == patterns_sha256()  # attempt boundaries are part of scoring


def test_spec_with_a_path_and_a_missing_path(smollm2_path, tmp_path):
    j = make_judge(f"offline:{smollm2_path}")
    try:
        assert j.describe()["model_path"] == str(smollm2_path)
    finally:
        j.close()
    from esr_local.errors import MissingResourceError

    with pytest.raises(MissingResourceError, match="not found"):
        make_judge(f"offline:{tmp_path / 'missing.gguf'}")


def test_a_rubric_is_refused(tmp_path):
    from esr_local.judge.rubric import DEFAULT_RUBRIC, Rubric

    other = Rubric(system="s", instructions="i", prompt_line=DEFAULT_RUBRIC.prompt_line,
                   response_line=DEFAULT_RUBRIC.response_line, label_line=DEFAULT_RUBRIC.label_line, id="mine")
    with pytest.raises(UserInputError, match="reads no rubric"):
        OfflineJudge(rubric=other)


def test_a_rubric_is_refused_before_it_is_fetched(monkeypatch, tmp_path):
    monkeypatch.setenv("ESR_LOCAL_OFFLINE", "1")  # `paper` is not cached: resolving it would fail first
    monkeypatch.setenv("ESR_LOCAL_HOME", str(tmp_path))
    for rubric in ("paper", str(tmp_path / "no-such-rubric.toml")):
        with pytest.raises(UserInputError, match="reads no rubric"):
            make_judge("offline", rubric=rubric)


def test_closed_judge_records_an_error(smollm2_path):
    j = OfflineJudge(smollm2_path)
    j.close()
    out = j.judge(PROMPT, ON, LABEL)
    assert out.parse_status == "error" and out.attempts is None
    assert "closed" in out.error and out.errors == [out.error]
