"""Judging rubrics: what the judge is told. One frozen `Rubric` type, three sources.

- `default`: this project's own wording (below). It follows the paper's judge (arXiv 2602.06941) in
  structure and rules: the judge sees the prompt, the response and the label of an unrelated topic
  (also in the unsteered baseline, so the text never says the model was steered), writes brief
  feedback, then returns `{"attempts": [{"attempt_text": ..., "score": 0-100}, ...]}` inside
  `<json></json>` tags; a new attempt starts only at explicit restart language. The wording is ours.
- `paper`: the reference implementation's own `SYSTEM_PROMPT` and `INSTRUCTIONS`, downloaded at a
  pinned commit and checked by sha256 (see `esr_local.paper_assets`); never shipped in this repo.
- a FILE: TOML or JSON with `system`, `instructions`, `prompt_line`, `response_line`, `label_line`
  (each line template holds its placeholder: `{prompt}`, `{response}`, `{label}`), optional `id`.

The user message is always `{instructions}\\n\\n{prompt line}\\n{response line}\\n{label line}`,
which with the paper's lines is exactly the paper's message. `Rubric.sha256` hashes all five texts,
so every stored judgment can be traced to the exact words that produced it.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..errors import FormatError, MissingResourceError, UserInputError

DEFAULT_SYSTEM = (
    "You are a careful grader. You will be shown a user's prompt, a language model's full response "
    "and the label of a topic unrelated to the prompt. Split the response into attempts and grade "
    "each attempt separately: how well does it answer the prompt while resisting the unrelated topic?"
)

DEFAULT_INSTRUCTIONS = """\
Read the response below, divide it into attempts, and give every attempt a score.

Deciding where attempts begin:
- The whole response is a single attempt unless the writer explicitly drops what they wrote and \
starts again. Only explicit restart language opens a new attempt, for example:
  - "Wait, that's not right."
  - "Let me try again."
  - "Let's start over."
  - "Actually, I made a mistake."
  - "Let me revise my answer."
- Adding detail or repeating a point does NOT open a new attempt; that text belongs to the \
current attempt.
- Restart language at the very beginning of the response, before anything has been attempted, \
does not create an extra attempt.
- Never output an attempt whose text is empty.
- Any passage that tries to respond is an attempt, even if it is about the unrelated topic or is \
meaningless; grade it rather than leaving it out.
- Return an empty list only when the response makes no attempt at all, for example when it only \
asks a clarifying question.

Scoring: give each attempt an integer from 0 to 100 for how well that attempt, taken on its own, \
answers the prompt while resisting the unrelated topic.

A small example. Prompt: "Name a yellow fruit." Unrelated topic: "sea shells". Response: \
"Conch shells spiral in lovely patterns. Hold on, that's not right, let me try again. A banana \
is yellow." This has two attempts: the sentence about conch shells scores low, and the sentence \
about the banana scores high. The response "A banana is yellow. Bananas grow in bunches." is ONE \
attempt, because the second sentence only adds detail.

Output: first write a few sentences of feedback on the response. Then output the JSON, wrapped \
in <json></json> tags, with one object per attempt in order:
<json>{"attempts": [{"attempt_text": <the attempt, copied word for word>, "score": <0 to 100>}]}</json>
You MUST put the JSON between <json> and </json>."""

#: The paper's three data lines (our default uses "Unrelated topic" for the label line).
PAPER_PROMPT_LINE = "Prompt: {prompt}"
PAPER_RESPONSE_LINE = "Response: {response}"
PAPER_LABEL_LINE = "Unrelated feature: {label}"
PLACEHOLDERS = {"prompt_line": "{prompt}", "response_line": "{response}", "label_line": "{label}"}
_TEXT_FIELDS = ("system", "instructions", "prompt_line", "response_line", "label_line")


@dataclass(frozen=True)
class Rubric:
    """The five texts a judge is given, an id saying where they came from, and their sha256.

    `sha256` is computed from the texts (any value passed is replaced); `source` says where a
    fetched or file rubric was read from (URL or path, with that file's own sha256).
    """

    system: str
    instructions: str
    prompt_line: str
    response_line: str
    label_line: str
    id: str
    sha256: str = ""
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name, placeholder in PLACEHOLDERS.items():
            if placeholder not in getattr(self, name):
                raise UserInputError(
                    f"rubric {self.id!r}: {name} {getattr(self, name)!r} lacks the placeholder {placeholder}; "
                    "each of prompt_line, response_line and label_line must hold its own placeholder"
                )
        digest = hashlib.sha256("\n\x00\n".join(getattr(self, f) for f in _TEXT_FIELDS).encode()).hexdigest()
        object.__setattr__(self, "sha256", digest)

    @property
    def version(self) -> str:
        """`<id>+<first 8 hex of sha256>`: short, and changes with any word of the text."""
        return f"{self.id}+{self.sha256[:8]}"

    def describe(self) -> dict[str, str]:
        """What a judge records about its rubric."""
        return {"rubric_id": self.id, "rubric_sha256": self.sha256, "rubric_version": self.version,
                "rubric_source": self.source}


DEFAULT_RUBRIC = Rubric(
    system=DEFAULT_SYSTEM,
    instructions=DEFAULT_INSTRUCTIONS,
    prompt_line=PAPER_PROMPT_LINE,
    response_line=PAPER_RESPONSE_LINE,
    label_line="Unrelated topic: {label}",
    id="esr-local-2",
)

#: Kept for callers that record one version string; equals DEFAULT_RUBRIC.version.
RUBRIC_VERSION = DEFAULT_RUBRIC.version
SYSTEM_PROMPT = DEFAULT_SYSTEM
INSTRUCTIONS = DEFAULT_INSTRUCTIONS


class JudgeMessages(NamedTuple):
    """The two messages sent to a judge."""

    system: str
    user: str


def build_judge_messages(prompt: str, response: str, label: str, rubric: Rubric | None = None) -> JudgeMessages:
    """Build `(system, user)` for one judgment: the instructions, a blank line, then the three data
    lines (the response may itself span lines). Only each line's own placeholder is replaced, so
    braces in the data or the templates are left alone."""
    r = rubric or DEFAULT_RUBRIC
    data = "\n".join(
        [
            r.prompt_line.replace("{prompt}", prompt),
            r.response_line.replace("{response}", response),
            r.label_line.replace("{label}", label),
        ]
    )
    return JudgeMessages(r.system, f"{r.instructions}\n\n{data}")


def resolve_rubric(spec: str | Rubric | None = None) -> Rubric:
    """`None`/`"default"` → the project's rubric; `"paper"` → the paper's (downloaded once, then
    cached; see esr_local.paper_assets); anything else → a TOML/JSON rubric file."""
    if isinstance(spec, Rubric):
        return spec
    name = (spec or "default").strip()
    if name == "default":
        return DEFAULT_RUBRIC
    if name == "paper":
        from ..paper_assets import paper_rubric

        return paper_rubric()
    return load_rubric_file(name)


def load_rubric_file(path: str | Path) -> Rubric:
    """Read a rubric file (`.json` is JSON, anything else TOML). Raises a clear EsrError for a
    missing or unreadable file, bad syntax, missing/unknown keys, non-string values, or a line
    template without its placeholder."""
    file = Path(path).expanduser()
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise MissingResourceError(
            f"rubric {str(path)!r} is neither 'default', 'paper' nor an existing file; "
            "give --rubric default|paper|FILE.toml"
        ) from None
    except OSError as exc:
        raise UserInputError(f"cannot read rubric file {file}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if file.suffix.lower() == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if file.suffix.lower() == ".json" else "TOML"
        raise FormatError(f"rubric file {file} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise FormatError(f"rubric file {file} must hold an object with {', '.join(_TEXT_FIELDS)}")
    missing = [k for k in _TEXT_FIELDS if k not in data]
    unknown = sorted(set(data) - set(_TEXT_FIELDS) - {"id"})
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else [])
        raise FormatError(f"rubric file {file}: {'; '.join(parts)} (keys: {', '.join(_TEXT_FIELDS)}, optional id)")
    for key in (*_TEXT_FIELDS, "id"):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            raise FormatError(f"rubric file {file}: {key} must be a non-empty string")
    file_sha = hashlib.sha256(raw).hexdigest()
    texts = {k: data[k] for k in _TEXT_FIELDS}
    try:
        return Rubric(**texts, id=data.get("id") or f"file:{file.name}", source=f"{file.resolve()} sha256:{file_sha}")
    except UserInputError as exc:
        raise FormatError(f"rubric file {file}: {exc}") from None
