"""Restart gating: keep an attempt boundary only where the response really restarts.

Small local judges tend to invent attempts (they split a list of steps, or a topic drift, into
several "attempts"). With gating on, the judge's segmentation is checked against the response:

- The first attempt is always kept.
- For every later attempt, its start is located in the response: both texts are normalised
  (lower case, curly quotes and dashes made plain, any run of whitespace matching any other) and
  the first 60, then 30, then 15 characters of the attempt are searched for, first after the last
  used restart phrase and then anywhere after the last kept attempt's start.
- The boundary is ACCEPTED if a restart phrase (`RESTART_PATTERNS`, defined with the offline judge's
  patterns in restarts.py as `GATING_PATTERNS`) occurs in the window from
  `WINDOW_BEFORE` (150) characters before that start to `WINDOW_AFTER` (200) characters after it.
  The phrase must start after the last kept attempt's start (so an opening "let me try again" never
  creates a second attempt) and after the phrase that justified the previous boundary (each
  occurrence of a restart phrase can justify only one boundary).
- If the attempt cannot be located (the judge paraphrased it), it is accepted only when its own
  first 200 characters contain a restart phrase and that same phrase also occurs in the response
  after the previous boundary.
- A rejected attempt is MERGED into the previous one: texts are joined with a space and the merged
  attempt keeps the EARLIER attempt's score (the conservative choice: an invented boundary must not
  create an "improvement"); only if the earlier score is None does it take the later one.
"""

from __future__ import annotations

import re

from .records import Attempt
from .restarts import GATING_PATTERNS as RESTART_PATTERNS
from .restarts import PLAIN_PUNCTUATION

WINDOW_BEFORE = 150
WINDOW_AFTER = 200
_PROBE_LENGTHS = (60, 30, 15)

_RESTART = re.compile("|".join(f"(?:{p})" for p in RESTART_PATTERNS))

_TRANSLATE = str.maketrans({**PLAIN_PUNCTUATION, "\u2014": "-"})


def normalise(text: str) -> str:
    """Lower-case, plain quotes and dashes, single spaces (newlines kept as sentence breaks)."""
    text = text.translate(_TRANSLATE).lower()
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return re.sub(r"\s*\n\s*", "\n", text).strip()


def has_restart_language(text: str) -> bool:
    """True when `text` contains any restart phrase."""
    return _RESTART.search(normalise(text)) is not None


def gate_attempts(response: str, attempts: list[Attempt]) -> list[Attempt]:
    """Merge attempts whose boundary is not backed by restart language in `response`.

    See the module docstring for the exact rule. Returns new Attempt objects; the input is untouched.
    """
    if len(attempts) <= 1:
        return [Attempt(a.text, a.score) for a in attempts]
    resp = normalise(response)
    # Matched once over the whole response, so "try again" inside "let me try again" is one phrase.
    phrases = list(_RESTART.finditer(resp))
    kept = [Attempt(attempts[0].text, attempts[0].score)]
    first = _locate(resp, attempts[0].text, 0)
    kept_start = 0 if first is None else first  # where the last kept attempt starts
    boundary = 0  # restart phrases ending before this point are used up
    for attempt in attempts[1:]:
        # A phrase must start after the last kept attempt's start: an opening "let me try again"
        # belongs to the first attempt and never justifies a second one.
        eligible = [m for m in phrases if m.start() > kept_start and m.start() >= boundary]
        start = _locate(resp, attempt.text, max(boundary, kept_start + 1), kept_start)
        if start is not None:
            match = _phrase_near(eligible, start)
        else:
            match = _phrase_from_attempt_text(eligible, attempt.text)
        if match is not None:
            kept.append(Attempt(attempt.text, attempt.score))
            boundary = match.end()
            kept_start = start if start is not None else match.start()
            continue
        last = kept[-1]
        kept[-1] = Attempt(
            f"{last.text} {attempt.text}",
            last.score if last.score is not None else attempt.score,
        )
    return kept


def _locate(resp: str, text: str, after: int, fallback_after: int | None = None) -> int | None:
    """Position in `resp` where `text` starts, searched after `after` (then `fallback_after`).

    Whitespace-insensitive: a newline in the response matches a space in the attempt text.
    """
    probe_text = " ".join(normalise(text).split())
    if not probe_text:
        return None
    for length in _PROBE_LENGTHS:
        words = probe_text[:length].split()
        pattern = re.compile(r"\s+".join(re.escape(w) for w in words))
        for origin in (after, fallback_after):
            if origin is None:
                continue
            found = pattern.search(resp, origin)
            if found:
                return found.start()
        if len(probe_text) <= length:
            break
    return None


def _phrase_near(phrases: list[re.Match[str]], start: int) -> re.Match[str] | None:
    """The first phrase starting within WINDOW_BEFORE before to WINDOW_AFTER after `start`."""
    for match in phrases:
        if start - WINDOW_BEFORE <= match.start() < start + WINDOW_AFTER:
            return match
    return None


def _phrase_from_attempt_text(phrases: list[re.Match[str]], text: str) -> re.Match[str] | None:
    """For an attempt not found in the response: a restart phrase in its head, also in `resp`."""
    found = _RESTART.search(normalise(text)[:WINDOW_AFTER])
    if found is None:
        return None
    core = found.group(0).strip(" \n.,!?;:)]")
    return next((m for m in phrases if core and core in m.group(0)), None)
