"""Turn a judge's free-text reply into a list of attempts.

Where the JSON is looked for, in order:
1. the first `<json>...</json>` block (an unclosed `<json>` runs to the end of the text);
2. the whole reply.
Inside each region, every top-level balanced `{...}` (string-aware) is tried in order and the first
one that decodes to an object with an `attempts` key wins. Markdown code fences are harmless
because only the braces are read.

Tolerated mess: trailing commas, raw newlines inside strings, curly double quotes, Python-style
single-quoted dicts, `Attempts` in any letter case, scores written as strings ("75", "75/100",
"75%") or floats.

Decisions (documented because they change results):
- A score outside 0..100, a boolean, NaN, or a non-numeric string ("high") is a parse ERROR, not
  clamped: a judge that leaves the scale is confused, and the judging loop retries it.
- A missing, null or empty score becomes None (the attempt is kept, unscored).
- Attempts whose text is missing or blank are dropped (the rubric forbids empty attempts).
- An item of the list that is not an object is a parse error.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterator
from typing import Any

from ..errors import JudgeParseError
from .records import Attempt

_JSON_OPEN = re.compile(r"<json>", re.IGNORECASE)
_JSON_CLOSE = re.compile(r"</json>", re.IGNORECASE)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_SCORE_TEXT = re.compile(r"^(-?\d+(?:\.\d+)?)\s*(?:/\s*100|%)?$")
_NULL_WORDS = {"", "null", "none", "n/a", "na"}
_TEXT_KEYS = ("attempt_text", "text", "attempt")


def parse_judge_output(text: str) -> list[Attempt]:
    """Parse a judge reply into attempts (see the module docstring for the rules).

    Raises JudgeParseError when no object with an `attempts` list can be found or it is malformed.
    """
    if not isinstance(text, str) or not text.strip():
        raise JudgeParseError("the judge reply is empty")
    problems: list[str] = []
    for region in _regions(text):
        for span in _balanced_objects(region):
            try:
                obj = _decode(span)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if isinstance(obj, dict) and _attempts_key(obj) is not None:
                return _attempts_from(obj)
            problems.append("an object without an 'attempts' key")
    detail = f" (found: {problems[0]})" if problems else ""
    raise JudgeParseError(f"no JSON object with an 'attempts' list in the judge reply{detail}")


def _regions(text: str) -> Iterator[str]:
    """The first <json> block (if any), then the whole text."""
    opened = _JSON_OPEN.search(text)
    if opened:
        closed = _JSON_CLOSE.search(text, opened.end())
        yield text[opened.end() : closed.start() if closed else len(text)]
    yield text


def _balanced_objects(text: str) -> Iterator[str]:
    """Yield each top-level `{...}` span, skipping braces inside double-quoted strings."""
    depth = 0
    start = -1
    in_string = False
    escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                yield text[start : i + 1]


def _decode(span: str) -> Any:
    """json.loads with a few repairs; raises ValueError when nothing works."""
    try:
        return json.loads(span, strict=False)
    except json.JSONDecodeError as exc:
        first_error = exc
    except RecursionError:  # a reply nested thousands deep: a judge fault, not a crash of the judging loop
        raise ValueError("JSON nested too deeply") from None
    repaired = _TRAILING_COMMA.sub(r"\1", span.replace("\u201c", '"').replace("\u201d", '"'))
    try:
        return json.loads(repaired, strict=False)
    except json.JSONDecodeError:
        pass
    # Python-style dict with single quotes, as small models sometimes write.
    pythonish = re.sub(r"\btrue\b", "True", repaired)
    pythonish = re.sub(r"\bfalse\b", "False", pythonish)
    pythonish = re.sub(r"\bnull\b", "None", pythonish)
    try:
        return ast.literal_eval(pythonish)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"invalid JSON ({first_error.msg} at char {first_error.pos})") from None


def _attempts_key(obj: dict[str, Any]) -> str | None:
    for key in obj:
        if isinstance(key, str) and key.strip().lower() == "attempts":
            return key
    return None


def _attempts_from(obj: dict[str, Any]) -> list[Attempt]:
    items = obj[_attempts_key(obj)]  # type: ignore[index]
    if not isinstance(items, list):
        raise JudgeParseError(f"'attempts' must be a list, got {type(items).__name__}")
    attempts: list[Attempt] = []
    for n, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise JudgeParseError(f"attempt {n} is a {type(item).__name__}, expected an object")
        text = next((item[k] for k in _TEXT_KEYS if k in item), None)
        if text is None:
            continue
        if not isinstance(text, str):
            raise JudgeParseError(f"attempt {n}: attempt_text must be a string")
        if not text.strip():
            continue
        attempts.append(Attempt(text=text.strip(), score=_score(item.get("score"), n)))
    return attempts


def _score(value: Any, n: int) -> float | None:
    """A 0..100 score as float, None when missing; JudgeParseError when unusable."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise JudgeParseError(f"attempt {n}: score is a boolean")
    if isinstance(value, str):
        cleaned = value.strip().lower()
        if cleaned in _NULL_WORDS:
            return None
        match = _SCORE_TEXT.match(cleaned)
        if not match:
            raise JudgeParseError(f"attempt {n}: score {value!r} is not a number")
        value = float(match.group(1))
    if isinstance(value, int) and not -1e300 < value < 1e300:  # math.isfinite would raise OverflowError
        raise JudgeParseError(f"attempt {n}: score {str(value)[:20]}... is outside 0-100")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JudgeParseError(f"attempt {n}: score {value!r} is not a finite number")
    if not 0 <= value <= 100:
        raise JudgeParseError(f"attempt {n}: score {value} is outside 0-100")
    return float(value)
