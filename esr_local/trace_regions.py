"""Where a trace's tokens fall: the judged attempts and the paper's regions (Experiment 9).

The paper annotates three character positions in each self-correction episode (off-topic start,
correction start, on-topic start) and averages activations per region. Here the regions come from the
judge's attempts and the deterministic restart finder (`judge.restarts`), over character offsets of
the response:

- a multi-attempt response: `off_topic` = [0, correction start), `correction` = [correction start,
  on-topic start), `on_topic` = [on-topic start, end). The correction is the restart language that opens
  attempt 1: the restart-split attempt (`find_attempts`) whose restart is nearest to where the judge's
  attempt 1 begins, from its start to its body (what follows the restart phrase and its short tail);
  failing that, the nearest raw restart phrase. Both must lie within `CORRECTION_WINDOW` characters.
  The cut is the restart's own span, wherever exactly the judge's attempt 1 begins near it (a judge may
  quote the restart phrase in attempt 0, in attempt 1 or in neither). With no restart language near the
  boundary the correction is empty and on-topic starts where attempt 1 does. Attempt texts are matched
  ignoring whitespace differences. When attempt 1's text is not found in the response, the cut is the
  restart finder's: the restart nearest to where attempt 0 ends (when attempt 0 is found), else the first
  restart-split attempt's restart language, else the first raw restart phrase. When none of these exists
  the regions are not located: every token's region is None and `located` is False (the stored trace
  records "regions not located" and is never a paper episode).
- a single-attempt response: every token `single` (the paper's baseline episodes);
- no judged attempts (not judged, or the judgment failed): no region (None).

Deviation: the paper's off-topic region starts where the response goes off topic (an annotation); here it
starts at the response's first token, so any on-topic opening before the drift counts as off-topic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .judge.restarts import find_attempts, find_restarts, patterns_sha256

REGIONS = ("off_topic", "correction", "on_topic", "single")
# How far (characters) the restart language may sit from where the judge's attempt 1 begins.
CORRECTION_WINDOW = 200
NOT_LOCATED = "regions not located"


def region_rule() -> dict:
    """What the cuts depend on besides the judgment (recorded with each trace; a change re-traces)."""
    return {"module": "esr_local.trace_regions", "correction_window": CORRECTION_WINDOW,
            "restart_patterns_sha256": patterns_sha256()}


@dataclass
class Regions:
    """Each token's region, and the character offsets they were cut at (None where there is no cut)."""

    per_token: list[str | None]
    n_attempts: int
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, attempt) found in the response
    correction_start: int | None = None
    on_topic_start: int | None = None
    located: bool = True  # False: a multi-attempt response whose cuts could not be found (regions all None)


def _pattern(text: str) -> re.Pattern | None:
    """`text` as a pattern that matches it whatever the whitespace between its words (None: blank)."""
    words = text.split()
    return re.compile(r"\s+".join(map(re.escape, words))) if words else None


def attempt_spans(response: str, attempts: Sequence[str]) -> list[tuple[int, int, int]]:
    """(start, end, index) of each attempt text found, in order, in `response`; whitespace differences
    (runs of spaces, newlines, outer space) do not matter."""
    spans, cursor = [], 0
    for k, text in enumerate(attempts):
        pat = _pattern(text or "")
        m = pat.search(response, cursor) if pat is not None else None
        if m is not None:
            spans.append((m.start(), m.end(), k))
            cursor = m.end()
    return spans


def _char_starts(pieces: Sequence[bytes]) -> list[int]:
    """The character offset in the joined text of each token's first non-space byte (a token that
    continues a character split across tokens maps to that character)."""
    starts, done = [], b""
    for piece in pieces:
        lead = len(piece) - len(piece.lstrip()) if piece.strip() else 0
        starts.append(len((done + piece[:lead]).decode("utf-8", "ignore")))
        done += piece
    return starts


def token_starts(pieces: Sequence[str] | Sequence[bytes]) -> list[int]:
    """Each token's first visible character as an offset into the text the pieces make up. Give raw bytes
    where a character may be split across tokens (decoded pieces are then longer than the text)."""
    if pieces and isinstance(pieces[0], bytes):
        return _char_starts(pieces)  # type: ignore[arg-type]
    starts, pos = [], 0
    for piece in pieces:
        starts.append(pos + (len(piece) - len(piece.lstrip()) if piece.strip() else 0))
        pos += len(piece)
    return starts


def _distance(at: int, start: int, end: int) -> int:
    return 0 if start <= at <= end else min(abs(at - start), abs(at - end))


def correction_span(response: str, attempt1_start: int) -> tuple[int, int] | None:
    """(correction start, on-topic start) around the restart that opens the attempt beginning near
    `attempt1_start`; None when no restart language lies within CORRECTION_WINDOW characters."""
    split = [(_distance(attempt1_start, s.start, s.body_start), s.start, s.body_start)
             for s in find_attempts(response)[1:] if s.body_start > s.start]
    raw = [(_distance(attempt1_start, r.start, r.end), r.start, r.end) for r in find_restarts(response)]
    for candidates in (split, raw):
        near = [c for c in candidates if c[0] <= CORRECTION_WINDOW]
        if near:
            _, start, end = min(near)
            return start, end
    return None


def mark_regions(pieces: Sequence[str] | Sequence[bytes], response: str, attempts: Sequence[str]) -> Regions:
    """Each token's region (see module docstring) from the judge's attempt texts."""
    starts = token_starts(pieces)
    spans = attempt_spans(response, attempts)
    n = len(attempts)
    if n == 0:
        return Regions([None] * len(starts), 0, spans)
    if n == 1:
        return Regions(["single"] * len(starts), 1, spans)
    first = {k: (a, b) for a, b, k in spans}
    if 1 in first:
        s1 = first[1][0]
        cut = correction_span(response, s1) or (s1, s1)  # no restart language near: an empty correction
    else:
        cut = _restart_cut(response, first.get(0))
    if cut is None:
        return Regions([None] * len(starts), n, spans, located=False)
    c0, c1 = cut
    per = ["off_topic" if s < c0 else "correction" if s < c1 else "on_topic" for s in starts]
    return Regions(per, n, spans, c0, c1)


def _restart_cut(response: str, attempt0: tuple[int, int] | None) -> tuple[int, int] | None:
    """The cut when the judge's attempt 1 is not in the response: from the restart finder alone."""
    if attempt0 is not None:
        return correction_span(response, attempt0[1])
    split = [(a.start, a.body_start) for a in find_attempts(response)[1:] if a.body_start > a.start]
    if split:
        return split[0]
    raw = find_restarts(response)
    return (raw[0].start, raw[0].end) if raw else None
