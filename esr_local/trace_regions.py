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
  boundary the correction is empty and on-topic starts where attempt 1 does; when attempt 1's text is not
  found in the response, attempt 0's tokens are off-topic and the rest on-topic.
- a single-attempt response: every token `single` (the paper's baseline episodes);
- no judged attempts (not judged, or the judgment failed): no region (None).

Deviation: the paper's off-topic region starts where the response goes off topic (an annotation); here it
starts at the response's first token, so any on-topic opening before the drift counts as off-topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .judge.restarts import find_attempts, find_restarts

REGIONS = ("off_topic", "correction", "on_topic", "single")
# How far (characters) the restart language may sit from where the judge's attempt 1 begins.
CORRECTION_WINDOW = 200


@dataclass
class Regions:
    """Each token's region, and the character offsets they were cut at (None where there is no cut)."""

    per_token: list[str | None]
    n_attempts: int
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, attempt) found in the response
    correction_start: int | None = None
    on_topic_start: int | None = None


def attempt_spans(response: str, attempts: Sequence[str]) -> list[tuple[int, int, int]]:
    """(start, end, index) of each attempt text found, in order, in `response` (stripped of outer space)."""
    spans, cursor = [], 0
    for k, text in enumerate(attempts):
        t = (text or "").strip()
        at = response.find(t, cursor) if t else -1
        if at >= 0:
            spans.append((at, at + len(t), k))
            cursor = at + len(t)
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
    if 1 not in first:
        # attempt 1 not found in the text: attempt 0's tokens are off-topic, everything after it on-topic
        end0 = first[0][1] if 0 in first else 0
        return Regions(["off_topic" if s < end0 else "on_topic" for s in starts], n, spans)
    s1 = first[1][0]
    cut = correction_span(response, s1) or (s1, s1)
    c0, c1 = cut
    per = ["off_topic" if s < c0 else "correction" if s < c1 else "on_topic" for s in starts]
    return Regions(per, n, spans, c0, c1)
