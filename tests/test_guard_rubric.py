"""Guard: the judge's messages are built exactly as documented, and a rubric's identity is its text."""

from __future__ import annotations

import hashlib
import json

import pytest

from esr_local.errors import FormatError, MissingResourceError, UserInputError
from esr_local.judge.rubric import DEFAULT_RUBRIC, Rubric, build_judge_messages, load_rubric_file, resolve_rubric

TEXTS = dict(system="SYS", instructions="Do {this}.", prompt_line="P: {prompt}", response_line="R: {response}",
             label_line="L: {label}")


def test_messages_are_instructions_blank_line_then_the_three_data_lines():
    r = Rubric(**TEXTS, id="t")
    system, user = build_judge_messages("why {label}?", "line one\n{prompt} two", "cats {response}", r)
    assert system == "SYS"
    # Only each line's own placeholder is replaced: braces in the data or the instructions stay as they are.
    assert user == "Do {this}.\n\nP: why {label}?\nR: line one\n{prompt} two\nL: cats {response}"


def test_the_default_rubric_is_used_without_one():
    system, user = build_judge_messages("p", "r", "l")
    assert system == DEFAULT_RUBRIC.system
    assert user == f"{DEFAULT_RUBRIC.instructions}\n\nPrompt: p\nResponse: r\nUnrelated topic: l"
    assert resolve_rubric(None) is DEFAULT_RUBRIC and resolve_rubric(" default ") is DEFAULT_RUBRIC
    assert resolve_rubric(DEFAULT_RUBRIC) is DEFAULT_RUBRIC


def test_the_sha256_is_the_text_and_nothing_else():
    r = Rubric(**TEXTS, id="t", sha256="forged")
    expected = hashlib.sha256("\n\x00\n".join(TEXTS[k] for k in ("system", "instructions", "prompt_line",
                                                                   "response_line", "label_line")).encode()).hexdigest()
    assert r.sha256 == expected and r.version == f"t+{expected[:8]}"
    assert Rubric(**TEXTS, id="other").sha256 == expected
    for key in TEXTS:
        changed = {**TEXTS, key: TEXTS[key] + " x"}
        assert Rubric(**changed, id="t").sha256 != expected
    assert r.describe() == {"rubric_id": "t", "rubric_sha256": expected, "rubric_version": r.version, "rubric_source": ""}


@pytest.mark.parametrize("field, placeholder", [("prompt_line", "{prompt}"), ("response_line", "{response}"),
                                                ("label_line", "{label}")])
def test_a_line_without_its_placeholder_is_rejected(field, placeholder):
    with pytest.raises(UserInputError, match=f"rubric 't': {field} .* lacks the placeholder {placeholder}"):
        Rubric(**{**TEXTS, field: "no placeholder"}, id="t")


def test_rubric_files(tmp_path):
    good = tmp_path / "r.json"
    good.write_text(json.dumps({**TEXTS, "id": "mine"}))
    r = load_rubric_file(good)
    assert (r.id, r.system, r.label_line) == ("mine", "SYS", "L: {label}")
    assert r.source == f"{good.resolve()} sha256:{hashlib.sha256(good.read_bytes()).hexdigest()}"
    assert resolve_rubric(str(good)) == r
    toml = tmp_path / "r.toml"
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in TEXTS.items()))
    assert load_rubric_file(toml).id == "file:r.toml"
    with pytest.raises(MissingResourceError, match="neither 'default', 'paper' nor an existing file"):
        resolve_rubric(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.json"
    for content, message in [("{", "is not valid JSON"), ("[1]", "must hold an object"),
                             (json.dumps({"system": "s"}), "missing instructions, prompt_line"),
                             (json.dumps({**TEXTS, "extra": "x"}), "unknown extra"),
                             (json.dumps({**TEXTS, "system": " "}), "system must be a non-empty string"),
                             (json.dumps({**TEXTS, "label_line": "L"}), "lacks the placeholder {label}")]:
        bad.write_text(content)
        with pytest.raises(FormatError, match=message):
            load_rubric_file(bad)


def test_rubric_file_messages_in_full(tmp_path):
    fields = "system, instructions, prompt_line, response_line, label_line"
    with pytest.raises(MissingResourceError, match=r"^rubric '.*nope\.toml' is neither 'default', 'paper' nor an "
                                                   r"existing file; give --rubric default\|paper\|FILE\.toml$"):
        load_rubric_file(tmp_path / "nope.toml")
    with pytest.raises(UserInputError, match=r"^cannot read rubric file .*: Is a directory$"):
        load_rubric_file(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("= nope")
    with pytest.raises(FormatError, match=r"^rubric file .*bad\.toml is not valid TOML: "):
        load_rubric_file(bad)
    js = tmp_path / "bad.json"
    js.write_text("[1]")
    with pytest.raises(FormatError, match=rf"^rubric file .*bad\.json must hold an object with {fields}$"):
        load_rubric_file(js)
    js.write_text(json.dumps({"system": "s", "zeta": 1, "alpha": 2}))
    with pytest.raises(FormatError, match=rf": missing instructions, prompt_line, response_line, label_line; unknown "
                                          rf"alpha, zeta \(keys: {fields}, optional id\)$"):
        load_rubric_file(js)
    js.write_text(json.dumps({**TEXTS, "zeta": 1}))
    with pytest.raises(FormatError, match=rf"bad\.json: unknown zeta \(keys: {fields}, optional id\)$"):
        load_rubric_file(js)
    js.write_text(json.dumps({k: v for k, v in TEXTS.items() if k != "system"}))  # missing only: no "unknown" part
    with pytest.raises(FormatError, match=rf"bad\.json: missing system \(keys: {fields}, optional id\)$"):
        load_rubric_file(js)
    js.write_text(json.dumps({**TEXTS, "id": " "}))
    with pytest.raises(FormatError, match=r"bad\.json: id must be a non-empty string$"):
        load_rubric_file(js)
    js.write_text(json.dumps({**TEXTS, "label_line": "L"}))
    with pytest.raises(FormatError, match=r"lacks the placeholder \{label\}; each of prompt_line, response_line and "
                                          r"label_line must hold its own placeholder$"):
        load_rubric_file(js)
