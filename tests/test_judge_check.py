"""judge check: case loading and validation, the figures computed exactly, the cached check, the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from esr_local.errors import UserInputError
from esr_local.judge.base import Judge
from esr_local.judge.check import (
    THRESHOLDS,
    Case,
    WeakJudgeError,
    auc,
    ensure_judge_checked,
    load_cases,
    run_check,
)
from esr_local.judge.records import Attempt, Judgment


class MarkerJudge(Judge):
    """A deterministic test judge: attempts are the response's '|'-separated parts, each scored by the
    number written in it (`[70]`), or failing outright when the response says FAIL."""

    backend = "marker"
    deterministic = True

    def __init__(self, name: str = "marker") -> None:
        super().__init__(model=name)
        self.calls = 0

    def judge(self, prompt: str, response: str, label: str) -> Judgment:
        self.calls += 1
        if "FAIL" in response:
            return Judgment("", None, "error", "backend error: down", 1, 0.0, None, ["backend error: down"])
        parts = [p for p in response.split("|") if p.strip()]
        attempts = [Attempt(p, float(p[p.index("[") + 1:p.index("]")])) for p in parts]
        return Judgment("", attempts, "ok", None, 1, 0.0, len(attempts), [])


def case(id, response, n, first, last):
    return Case(id, "How do you X?", "label", response, n, first, last)


def test_figures_are_computed_exactly():
    cases = [
        case("on-a", "[90]", 1, "on", "on"),
        case("on-b", "[40]", 1, "on", "on"),           # ties the off case below
        case("off-a", "[40]", 1, "off", "off"),
        case("off-b", "[10]", 1, "off", "off"),
        case("da-ok", "[5]|[80]", 2, "off", "on"),      # improved
        case("da-flat", "[30]|[30]", 2, "off", "on"),   # two attempts, no improvement
        case("da-missed", "[20]", 2, "off", "on"),      # judge saw one attempt
        case("stay", "[5]|[6]|[7]", 2, "off", "off"),   # multi right, count wrong
    ]
    report = run_check(MarkerJudge(), cases)
    s = report.summary
    # multi right: on-a on-b off-a off-b da-ok da-flat stay = 7 of 8; count right: 6 of 8 (not da-missed, stay)
    assert s["multi_attempt_accuracy"] == 0.875
    assert s["attempt_count_accuracy"] == 0.75
    # on first scores [90, 40]; off first scores [40, 10, 5, 30, 20, 5]: 6 + (0.5 + 1 + 1 + 1 + 1 + 1) = 11.5 of 12
    assert s["first_auc"] == round(11.5 / 12, 4)
    assert s["improvement_rate"] == round(1 / 3, 4)
    assert s["n_derail_then_answer"] == 3
    assert s["checks"] == {"multi_attempt_accuracy": False, "first_auc": True, "improvement_rate": False}
    assert s["passed"] is False
    assert [r["scores"] for r in report.cases][4] == [5.0, 80.0]
    assert report.cases[4]["improved"] is True and report.cases[5]["improved"] is False


def test_a_failed_judgment_counts_against_the_judge():
    cases = [case("on", "FAIL", 1, "on", "on"), case("off", "[10]", 1, "off", "off")]
    s = run_check(MarkerJudge(), cases).summary
    assert s["multi_attempt_accuracy"] == 0.5
    assert s["first_auc"] == 0.0  # the failed "on" case ranks below every "off" score
    assert s["n_failed"] == 1


def test_auc_counts_ties_half():
    assert auc([1, 2], [1, 0]) == 0.875
    assert auc([5], [5]) == 0.5
    assert auc([], [1]) is None


def test_shipped_cases_load_and_cover_every_kind():
    cases = load_cases()
    assert len(cases) >= 40
    assert len({c.id for c in cases}) == len(cases)
    kinds = {(c.attempts > 1, c.first, c.last) for c in cases}
    assert {(False, "on", "on"), (False, "off", "off"), (True, "off", "on"), (True, "off", "off")} <= kinds
    assert sum(c.derail_then_answer for c in cases) >= 10


GOOD = {"id": "a", "prompt": "p", "label": "l", "response": "r", "expect": {"attempts": 1, "first": "on", "last": "on"}}


@pytest.mark.parametrize("line,message", [
    ("{not json", "line 2: not valid JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "label"} | {"id": "b"}), "line 2: missing field 'label'"),
    (json.dumps(GOOD | {"id": "b", "expect": {"attempts": 1, "first": "on"}}), "line 2: expect is missing 'last'"),
    (json.dumps(GOOD | {"id": "b", "expect": {"attempts": 1, "first": "yes", "last": "on"}}), "expect.first must be"),
    (json.dumps(GOOD | {"id": "b", "expect": {"attempts": -1, "first": "on", "last": "on"}}), "expect.attempts must be"),
    (json.dumps(GOOD | {"id": "b", "response": 5}), "line 2: field 'response' must be a string"),
    (json.dumps(GOOD), "line 2: duplicate case id 'a'"),
    ("[1, 2]", "line 2: expected a JSON object"),
])
def test_bad_case_files_name_the_line(tmp_path, line, message):
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(UserInputError, match=message.replace("(", r"\(")) as info:
        load_cases(path)
    assert str(path) in str(info.value)


def test_missing_or_empty_case_file(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_cases(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserInputError, match="has no cases"):
        load_cases(tmp_path / "empty.jsonl")


def test_case_file_edge_cases(tmp_path):
    path = tmp_path / "cases.jsonl"
    # a raw U+2028 / U+0085 inside a JSON string is valid JSON and must not split the line
    path.write_text(json.dumps(GOOD | {"response": "one\u2028two\x85three"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    (c,) = load_cases(path)
    assert c.response == "one\u2028two\x85three"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")  # a BOM from a Windows editor
    assert [c.id for c in load_cases(path)] == ["a"]
    path.write_text(json.dumps(GOOD) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(UserInputError, match="line 2: not valid JSON"):
        load_cases(path)


def _write(tmp_path, cases):
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return path


def _raw(id, response, n, first, last, prompt="p", label="l"):
    return {"id": id, "prompt": prompt, "label": label, "response": response,
            "expect": {"attempts": n, "first": first, "last": last}}


def test_ensure_judge_checked_caches_per_judge(tmp_path):
    path = _write(tmp_path, [_raw("on", "[90]", 1, "on", "on"), _raw("off", "[10]", 1, "off", "off"),
                             _raw("da", "[10]|[90]", 2, "off", "on")])
    judge = MarkerJudge()
    lines: list[str] = []
    out = ensure_judge_checked(judge, allow_weak=False, skip=False, echo=lines.append, cases_path=path)
    assert out["status"] == "passed" and out["summary"]["passed"] is True
    assert judge.calls == 3 and len(lines) == 1
    cache = tmp_path / "home" / "judge-checks" / f"{out['key']}.json"
    assert json.loads(cache.read_text())["summary"] == out["summary"]
    again = ensure_judge_checked(judge, allow_weak=False, skip=False, echo=lines.append, cases_path=path)
    assert again == out and judge.calls == 3  # served from the cache
    other = MarkerJudge("another-model")
    assert ensure_judge_checked(other, allow_weak=False, skip=False, echo=lines.append, cases_path=path)["key"] != out["key"]
    assert other.calls == 3
    assert ensure_judge_checked(MarkerJudge(), allow_weak=False, skip=True, cases_path=path)["status"] == "skipped"


class KnobJudge(MarkerJudge):
    """A MarkerJudge that reports run-time knobs in its description, as the local judge does."""

    def __init__(self, n_threads=1, n_gpu_layers=0, **kw):
        super().__init__()
        self.n_threads, self.n_gpu_layers = n_threads, n_gpu_layers
        for k, v in kw.items():
            setattr(self, k, v)

    def describe(self):
        return {**super().describe(), "n_threads": self.n_threads, "n_gpu_layers": self.n_gpu_layers}


def test_check_key_ignores_run_time_knobs_and_follows_scoring(tmp_path):
    from esr_local.judge.check import judge_check_key
    from esr_local.judge.rubric import Rubric

    path = _write(tmp_path, [_raw("on", "[90]", 1, "on", "on")])
    key = judge_check_key(KnobJudge(), path)
    # timeouts, retries, threads and offload do not change what the judge scores
    assert judge_check_key(KnobJudge(n_threads=7, n_gpu_layers=-1, timeout=5.0, max_retries=9), path) == key
    # gating, rubric and the case file do
    assert judge_check_key(KnobJudge(restart_gating=True), path) != key
    other = Rubric("sys", "inst", "P: {prompt}", "R: {response}", "L: {label}", id="mine")
    assert judge_check_key(KnobJudge(rubric=other), path) != key
    assert judge_check_key(KnobJudge(), _write(tmp_path, [_raw("on2", "[90]", 1, "on", "on")])) != key


def test_weak_judge_refused_unless_allowed(tmp_path):
    path = _write(tmp_path, [_raw("on", "[10]", 1, "on", "on"), _raw("off", "[90]", 1, "off", "off"),
                             _raw("da", "[10]", 2, "off", "on")])
    with pytest.raises(WeakJudgeError, match="--allow-weak-judge") as info:
        ensure_judge_checked(MarkerJudge(), allow_weak=False, skip=False, echo=lambda s: None, cases_path=path)
    assert "first_auc 0.25 (needs >= 0.9)" in str(info.value)  # on [10] vs off [90, 10]: (0 + 0.5) / 2
    lines: list[str] = []
    out = ensure_judge_checked(MarkerJudge(), allow_weak=True, skip=False, echo=lines.append, cases_path=path)
    assert out["status"] == "weak-allowed" and out["summary"]["passed"] is False
    assert lines[-1].startswith("Warning: weak judge allowed")


def test_thresholds_are_the_issue_s():
    assert THRESHOLDS == {"multi_attempt_accuracy": 0.9, "first_auc": 0.9, "improvement_rate": 0.8}


# ---------------------------------------------------------------------------------------------- CLI (real offline judge)


def test_cli_judge_check_json_shape(tmp_path):
    from esr_local.cli import main

    tea, lava = "How do you brew green tea?", "volcanoes, lava and eruptions"
    path = _write(tmp_path, [
        _raw("on", "Heat water to 80 degrees, put a teaspoon of green tea leaves in the cup and steep for two minutes.",
             1, "on", "on", tea, lava),
        _raw("da", "Volcanoes erupt and lava flows down the mountain. Scratch that. Heat water to 80 degrees and "
                   "steep the green tea leaves for two minutes.", 2, "off", "on", tea, lava),
    ])
    result = CliRunner().invoke(main, ["judge", "check", "--cases", str(path), "--json"])
    out = json.loads(result.output)
    assert set(out) == {"summary", "cases"}
    assert [c["id"] for c in out["cases"]] == ["on", "da"]
    assert len(out["cases"][0]["scores"]) == 1 and len(out["cases"][1]["scores"]) == 2
    first, last = out["cases"][1]["scores"]
    assert last > first
    assert out["summary"]["multi_attempt_accuracy"] == 1.0
    assert out["summary"]["improvement_rate"] == 1.0
    assert out["summary"]["judge"]["backend"] == "offline"
    assert out["summary"]["first_auc"] == 1.0
    assert result.exit_code == 0  # every threshold met
    (cached,) = (tmp_path / "home" / "judge-checks").glob("offline-*.json")  # reused by run / calibrate
    assert json.loads(cached.read_text())["summary"] == {k: v for k, v in out["summary"].items() if k != "judge"}


def test_cli_judge_check_bad_file_is_one_error_line(tmp_path):
    from esr_local.cli import main

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{oops\n")
    result = CliRunner().invoke(main, ["judge", "check", "--cases", str(path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "line 2: not valid JSON" in lines[0]


def test_development_cases_are_separate_from_the_shipped_set():
    from pathlib import Path

    dev = load_cases(Path(__file__).parent / "fixtures" / "judge_dev_cases.jsonl")
    shipped = load_cases()
    assert not {c.response for c in dev} & {c.response for c in shipped}
    assert not {c.prompt for c in dev} & {c.prompt for c in shipped}  # not even the same prompts
