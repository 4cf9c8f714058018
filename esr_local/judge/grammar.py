"""Output constraints that make even a tiny judge model produce parseable replies.

`JUDGE_GBNF` (llama.cpp grammar) allows: up to `MAX_FEEDBACK_CHARS` characters of feedback
(no '<'), then `<json>`, a JSON object `{"attempts": [...]}` with 1 to `MAX_ATTEMPTS` attempts,
each `{"attempt_text": "...", "score": 0-100}` with 1..`MAX_TEXT_CHARS` characters of single-line
text without escapes or quotes (the gate only needs an attempt's opening words), then
`</json>`. Every part is bounded, so any completion ends within `MAX_OUTPUT_CHARS` characters;
since a token is at least one character, `max_tokens >= MAX_OUTPUT_CHARS` guarantees the grammar
finishes before the token limit cuts it off.

At least one attempt is required: the rubric counts any passage that tries to respond, even nonsense,
as an attempt, and tiny grammar-bound models otherwise take the empty list as an easy way out (measured
with the embedded SmolLM2: calibration got no score at all). A blank response, the one case with no
attempt, is answered without the model (see LocalJudge.judge).

`JUDGE_JSON_SCHEMA` is the same shape for OpenAI-style `response_format` json_schema mode (no
feedback and no tags there; the parser falls back to the bare object).
"""

from __future__ import annotations

from typing import Any

MAX_FEEDBACK_CHARS = 200
MAX_ATTEMPTS = 6
MAX_TEXT_CHARS = 200

# Upper bound of the characters any grammar-conforming reply can have:
# feedback + tags + object scaffolding + per attempt (scaffolding, text, score, separators).
_SCAFFOLD = len('<json>{"attempts":[]}</json>') + 2 * 4 * 2
_PER_ATTEMPT = len('{"attempt_text":"","score":100},') + 2 * 10 + MAX_TEXT_CHARS
MAX_OUTPUT_CHARS = MAX_FEEDBACK_CHARS + _SCAFFOLD + MAX_ATTEMPTS * _PER_ATTEMPT

JUDGE_GBNF = rf"""
root      ::= feedback "<json>" object "</json>"
feedback  ::= [^<]{{0,{MAX_FEEDBACK_CHARS}}}
object    ::= "{{" ws "\"attempts\"" ws ":" ws "[" ws attempts ws "]" ws "}}"
attempts  ::= attempt (ws "," ws attempt){{0,{MAX_ATTEMPTS - 1}}}
attempt   ::= "{{" ws "\"attempt_text\"" ws ":" ws text ws "," ws "\"score\"" ws ":" ws score ws "}}"
text      ::= "\"" first char{{0,{MAX_TEXT_CHARS - 1}}} "\""
first     ::= [^"\\\x00-\x20]
char      ::= [^"\\\x00-\x1f]
score     ::= "100" | [1-9] [0-9] | [0-9]
ws        ::= [ \n]{{0,2}}
"""

JUDGE_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "attempts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "attempt_text": {"type": "string"},
                    "score": {"type": "integer"},
                },
                "required": ["attempt_text", "score"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["attempts"],
    "additionalProperties": False,
}
