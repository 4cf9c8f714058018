"""Deterministic detection of explicit restart language: where a response starts a new attempt.

The paper's judge opens a new attempt only where the response EXPLICITLY starts over ("Wait, that's
not right.", "Let me try again.", ...). This module finds those places with a fixed pattern set, so the
offline judge's attempt boundaries are exact, reproducible substrings of the response.

Two kinds of evidence (matched case-insensitively, curly quotes/dashes treated as plain):

- STRONG phrases mark a restart by themselves: a restart verb with the speaker as subject ("let me try
  again", "let's start over", "I'd like to revise my answer", "scratch that"), a self-report of going
  wrong ("I made a mistake", "I got off track", "I'm rambling", "I digress", "I misspoke"), a statement
  about the answer and the question ("that isn't what you asked", "back to the question"), and the
  emphatic interjections "oops", "whoops", "no, wait", "wait, wait".
- An INTERJECTION at the start of a sentence or clause ("Wait,", "Hold on,", "Hmm.", "Actually,",
  "Sorry,", "No,", ...; it must be followed by punctuation, so "Wait for the glue to set" is not one)
  marks a restart only when a CUE follows within `CUE_WINDOW` characters: a self-referential negation
  ("that's not right", "this is wrong", "that's irrelevant") or a reference to the question or to the
  speaker's own drift ("you asked", "I was talking about"). So "Actually, most sinks have a trap" is
  not a restart, "Actually, that's not right" is.

Ordinary uses stay ordinary: "try again if the tire is still flat" (no speaker subject), "let me try it
with numbers" (no again/over), "wait a few minutes" (no punctuation after the interjection).

Attempts (see `find_attempts`): the response is cut at the start of each restart's sentence. Restart
language with nothing attempted before it (the very start, or right after another restart) opens no
attempt, and a trailing restart with nothing after it opens none either: no attempt is empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Characters after an interjection's punctuation in which a cue must begin.
CUE_WINDOW = 90
# A sentence opener this short (e.g. "Oh, sorry, ") before a strong phrase belongs to the restart.
_LEAD_IN_MAX = 40
# Words left in a restart's sentence after the phrase that still count as restart language ("... my answer.").
_SHORT_TAIL_WORDS = 3

# Phrases that both pattern sets below use word for word: the offline judge's (STRONG_PATTERNS) and restart
# gating's (GATING_PATTERNS). Defined once so the two cannot drift apart.
SCRATCH_THAT = r"\bscratch\s+that\b"
ON_SECOND_THOUGHT = r"\bon\s+second\s+thought\b"
MY_MISTAKE = r"\bmy\s+(?:mistake|apologies|bad)\b"
# Curly quotes and the en dash made plain (gating also makes the em dash plain, see gating.normalise).
PLAIN_PUNCTUATION = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-"}

_SUBJ = r"(?:let\s+me|let's|let\s+us|i'll|i\s+will|i\s+should|i\s+need\s+to|i\s+must|i'd\s+(?:like|better)\s+to|i\s+would\s+like\s+to|i\s+want\s+to|allow\s+me\s+to|i'm\s+going\s+to|i\s+am\s+going\s+to)"
_QUESTION = r"(?:(?:the|your|my)\s+(?:original\s+|actual\s+|real\s+|main\s+)?(?:question|topic|task|prompt|request|point|answer|explanation|instructions?)|track|topic)"

STRONG_PATTERNS: tuple[str, ...] = (
    # A restart verb with the speaker as subject.
    _SUBJ + r"\s+(?:try|start|begin|do\s+(?:that|this|it))\s+(?:that\s+|this\s+)?(?:again|over|afresh|anew|from\s+(?:the\s+)?(?:scratch|beginning|top))\b",
    _SUBJ + r"\s+(?:restart|rephrase|revise|redo|reconsider|rethink|re-?answer|re-?focus|correct\s+(?:myself|that|this|my\s+answer))\b",
    _SUBJ + r"\s+(?:get|go|come|return|stick|turn)\s+back\s+(?:to\s+" + _QUESTION + r"|on\s+(?:track|topic))\b",
    _SUBJ + r"\s+(?:stay|keep|stick)\s+on\s+(?:track|topic)\b",
    _SUBJ + r"\s+(?:(?:actually|properly|now\s+actually)\s+answer\b|answer\s+(?:the|your)\s+(?:actual|original|real)\s+question\b|answer\s+what\s+you\s+(?:actually\s+)?asked\b|answer\s+(?:the|your)\s+question\s+(?:properly|correctly|instead|this\s+time)\b)",
    _SUBJ + r"\s+focus\s+on\s+(?:the|your)\s+(?:original\s+|actual\s+)?(?:question|task|topic|prompt)\b",
    SCRATCH_THAT,
    r"\bforget\s+(?:what\s+i\s+(?:just\s+)?(?:said|wrote)|everything\s+i\s+(?:just\s+)?said)\b",
    # "Never mind." / "Never mind that," - not "never mind the stains, they wash out".
    r"\bnever\s*mind(?:\s+(?:that|this|all\s+that))?(?=\s*(?:[,.!;:\u2026\u2014-]|$))",
    ON_SECOND_THOUGHT,
    # Self-reports of a mistake or of drifting away.
    r"\bi\s+(?:have\s+|'ve\s+|just\s+)?made\s+(?:a|an)\s+(?:mistake|error)\b",
    r"\bi\s+(?:misspoke|misread|misunderstood|digress)\b",
    r"\bi(?:'m|\s+am|\s+was|\s+got|\s+have\s+been|'ve\s+been|\s+seem\s+to\s+(?:be|have\s+gotten))\s+"
    r"(?:getting\s+|going\s+|being\s+|a\s+bit\s+|completely\s+|totally\s+)?"
    r"(?:off[- ](?:track|topic)|sidetracked|side-tracked|distracted|carried\s+away|rambling|wandering|drifting)\b",
    r"\b(?:got|get|getting|went|going)\s+(?:a\s+bit\s+|completely\s+)?(?:off[- ](?:track|topic)|sidetracked|carried\s+away)\b",
    r"\bi\s+(?:drifted|wandered|strayed|veered|went|got)\s+(?:a\s+bit\s+|completely\s+|way\s+)?(?:off|away\s+from)\s*"
    r"(?:[- ]?(?:topic|track|course)\b|the\s+(?:topic|question|point|subject)\b|there\b|[,.!;])",
    r"\bi(?:'m|\s+am|\s+was|'ve|\s+have|\s+seem\s+to\s+have|\s+seem\s+to\s+be)?\s+(?:going|gone|went|got|getting|been\s+going)\s+off\s+on\s+(?:a\s+)?tangents?\b",
    r"\bi(?:'ve|\s+have)?\s+lost\s+(?:the|my)\s+(?:thread|train\s+of\s+thought)\b",
    MY_MISTAKE,
    r"\bi\s+apologi[sz]e\b",
    # The answer measured against the question.
    r"\b(?:that|this|it)(?:'s|\s+is|\s+was)\s+not\s+what\s+you\s+(?:asked|wanted|were\s+asking)\b",
    r"\b(?:that|this|it)\s+(?:isn't|wasn't)\s+what\s+you\s+(?:asked|wanted|were\s+asking)\b",
    r"\b(?:that|this|it)(?:'s|\s+is|\s+was)\s+(?:not\s+(?:relevant|related)|irrelevant|off[- ]topic|beside\s+the\s+point)\s+(?:to|here)\b",
    r"\b(?:back|returning)\s+to\s+(?:the|your)\s+(?:original\s+|actual\s+)?(?:question|topic|task|prompt)\b",
    r"\bto\s+(?:actually\s+)?answer\s+your\s+(?:original|actual|real)\s+question\b",
    r"\bwhere\s+was\s+i\b",
    # Emphatic interjections.
    r"\b(?:oops|whoops|uh-?oh)\b",
    r"\bno,?\s+wait\b",
    r"\bwait,?\s+wait\b",
    r"\bcorrection\s*:",
)

INTERJECTION = (
    r"(?:wait|hold\s+on|hang\s+on|hmm+|hm+|no|nope|oh|ah|uh|um+|er|actually|sorry|ok(?:ay)?|"
    r"alright|well|hmm+\s+wait|oh\s+no|oh\s+wait|sorry\s+about\s+that|excuse\s+me)"
    r"(?:\s+(?:a\s+)?(?:second|sec|minute|moment))?"
    # the interjection must be punctuated: "Wait for the glue" is not one.
    r"\s*(?:[,!.:;?\u2026]|--?|\u2014)"
)

CUE_PATTERNS: tuple[str, ...] = (
    r"\b(?:that|this|it|which)(?:'s|\s+is|\s+was)\s+(?:not\s+(?:right|correct|quite\s+right|relevant|related|helpful|the\s+(?:question|point|topic))|wrong|incorrect|irrelevant|off[- ]topic|nonsense|a\s+mistake)\b",
    r"\b(?:that|this|it)\s+(?:isn't|wasn't|doesn't|didn't)\s+(?:right|correct|quite\s+right|relevant|related|help|answer|make\s+sense)\b",
    r"\b(?:you|the\s+user)\s+(?:asked|wanted|were\s+asking)\b",
    r"\b(?:the|your)\s+question\s+(?:was|is)\b",
    r"\bi\s+(?:was|am|'m|have\s+been|'ve\s+been)\s+(?:talking|writing|going\s+on|rambling|thinking)\s+about\b",
    r"\bi\s+(?:got|was|am|'m)\s+(?:confused|mixed\s+up|wrong|mistaken)\b",
    r"\bi\s+(?:was|am|'m)\s+supposed\s+to\s+(?:be\s+)?(?:talk|explain|answer|describ|writ|tell)",
    r"\b(?:i\s+)?(?:meant|mean)\s+to\s+(?:say|explain|answer|talk)\b",
    r"\b(?:let\s+me|let's|i'll)\s+(?:explain\s+(?:it\s+)?(?:properly|correctly|again)|focus\b|get\s+back\b|answer\s+(?:the|your)\s+question)",
    r"\bthat\s+came\s+out\s+wrong\b",
    r"\b(?:that|this|it)\s+(?:has|had)\s+nothing\s+to\s+do\s+with\b",
    r"\bnot\s+the\s+question\b",
)

# Restart gating's set (esr_local/judge/gating.py), matched on gating's normalised (lower-case) text. It is
# looser than the offline judge's: it only has to confirm a boundary another judge already drew, within a
# window around it, so a bare "Wait," or "I'm sorry" there counts. Changing it changes gated judgments.
GATING_PATTERNS: tuple[str, ...] = (
    # "Wait," / "Wait!" / "Hmm, wait." used as an interjection at the start of a sentence.
    r"(?:^|[.!?:;\n)\]]\s*|\bno,?\s+)(?:hmm+,?\s*|oh,?\s*)?wait\b\s*[,.!\u2026-]",
    r"\bhold on\b\s*[,.!\u2026-]",
    r"\b(?:that|this|it)(?:'s| is| was)\s+"
    r"(?:not\s+(?:right|correct|quite right|relevant|what)|wrong|incorrect|off[- ]topic)\b",
    r"\b(?:that|this|it)\s+(?:isn't|wasn't)\s+(?:right|correct|relevant|what)\b",
    r"\blet\s+me\s+(?:try|start|begin|do\s+(?:that|this))\s+(?:again|over|afresh|anew)\b",
    r"\blet(?:'s|\s+us)\s+(?:try|start|begin|do\s+(?:that|this))\s+(?:again|over|afresh|anew)\b",
    r"\b(?:start|starting|begin|beginning)\s+(?:over|again|afresh)\b",
    r"\btry(?:ing)?\s+(?:that\s+|this\s+)?again\b",
    r"\blet\s+me\s+(?:revise|rephrase|reconsider|correct|refocus|redo|restart|re-?answer|fix)\b",
    r"\bi(?:'ve| have)?\s+made\s+(?:a|an)\s+(?:mistake|error)\b",
    MY_MISTAKE,
    r"\bi(?:\s+apologi[sz]e|\s+am\s+sorry|'m\s+sorry)\b",
    r"(?:^|[.!?\n]\s*)(?:sorry|oops)\b",
    SCRATCH_THAT,
    r"\bi\s+misspoke\b",
    ON_SECOND_THOUGHT,
    r"\bactually,?\s+(?:no\b|i\s+(?:was|made|got|think\s+i)|let\s+me|that(?:'s| is)\s+not)",
    r"\bi(?:'m| am| was| got|'ve been)\s+(?:getting\s+|going\s+|being\s+)?"
    r"(?:off[- ](?:track|topic)|distracted|sidetracked|side-tracked)\b",
    r"\b(?:get|getting|got|come|coming)\s+back\s+"
    r"(?:on\s+track|to\s+(?:the|your)\s+(?:original\s+|actual\s+)?(?:question|topic|task|prompt|point))\b",
    r"\b(?:back|return(?:ing)?)\s+to\s+(?:the|your)\s+"
    r"(?:original\s+|actual\s+)?(?:question|topic|task|prompt)\b",
    r"\bto\s+(?:actually\s+)?answer\s+(?:the|your)\s+(?:original\s+|actual\s+)?question\b",
    r"(?:^|[.!?\n]\s*)correction\s*:",
)

_STRONG = re.compile("|".join(f"(?:{p})" for p in STRONG_PATTERNS), re.IGNORECASE)
_CUE = re.compile("|".join(f"(?:{p})" for p in CUE_PATTERNS), re.IGNORECASE)
# An interjection at the start of the text, a sentence, a line, or a clause after a dash/quote/bracket.
_INTERJ = re.compile(r"(?:^|(?<=[.!?;:\n\"()\[\]\u2026*-])|(?<=[.!?;:\n\"()\[\]\u2026*-]\s))\s*(" + INTERJECTION + r")",
                     re.IGNORECASE)
# A word of at least two letters that is not mere filler: the minimum content of an attempt.
_CONTENT_WORD = re.compile(r"[^\W\d_]{2,}")
_FILLER = {"sure", "ok", "okay", "well", "so", "yes", "yeah", "alright", "right", "certainly", "hmm", "um", "uh",
           "er", "oh", "ah", "no", "nope", "wait", "actually", "sorry", "hold", "on", "hang", "the", "and", "but"}

_TRANSLATE = str.maketrans(PLAIN_PUNCTUATION)


@dataclass(frozen=True)
class Restart:
    """One piece of restart language: `start`..`end` in the response, and the phrase found."""

    start: int
    end: int
    phrase: str


@dataclass(frozen=True)
class AttemptSpan:
    """One attempt: `response[start:end]`; its body (after any leading restart language) starts at `body_start`."""

    start: int
    end: int
    body_start: int

    def text(self, response: str) -> str:
        """The attempt as an exact substring of the response."""
        return response[self.start:self.end]

    def body(self, response: str) -> str:
        """The attempt without the restart language it opens with (what gets scored)."""
        return response[self.body_start:self.end]


def patterns_sha256() -> str:
    """sha256 of every pattern and constant that decides where attempts begin (recorded by the offline judge,
    so a changed pattern set changes its description and its judge-check cache key even without a version bump)."""
    import hashlib
    import json

    blob = json.dumps([STRONG_PATTERNS, INTERJECTION, CUE_PATTERNS, CUE_WINDOW, _LEAD_IN_MAX, _SHORT_TAIL_WORDS,
                       sorted(_FILLER)])
    return hashlib.sha256(blob.encode()).hexdigest()


def _plain(text: str) -> str:
    """Curly quotes and en dashes made plain; same length as `text`, so offsets carry over."""
    return text.translate(_TRANSLATE)


def find_restarts(response: str) -> list[Restart]:
    """Every piece of explicit restart language in `response`, in order, non-overlapping.

    Offsets are into `response`. A restart starts at its sentence's opening interjection (so
    "Actually, I made a mistake" starts at "Actually") and ends after the phrase or cue.
    """
    text = _plain(response)
    found: list[Restart] = []
    for m in _STRONG.finditer(text):
        found.append(Restart(_lead_in(text, m.start()), m.end(), m.group(0)))
    for m in _INTERJ.finditer(text):
        start, end = m.start(1), m.end(1)
        cue = _CUE.search(text, end, min(len(text), end + CUE_WINDOW))
        # The cue must begin before the next sentence ends (one sentence of slack).
        if cue is not None and text[end:cue.start()].count(".") + text[end:cue.start()].count("\n") <= 1:
            stop = cue.end()
            # Chained cues in the same sentence ("this is wrong - you asked about tea") are one restart.
            while (more := _CUE.search(text, stop, min(len(text), stop + CUE_WINDOW))) and not re.search(
                    r"[.!?\n]", text[stop:more.start()]):
                stop = more.end()
            found.append(Restart(start, stop, text[start:stop]))
    found.sort(key=lambda r: (r.start, -r.end))
    merged: list[Restart] = []
    for r in found:
        # Overlapping, or separated by punctuation only ("Oops, my mistake"): one restart.
        if merged and (r.start <= merged[-1].end or not any(ch.isalnum() for ch in text[merged[-1].end:r.start])):
            last = merged[-1]
            if r.end > last.end:
                merged[-1] = Restart(last.start, r.end, text[last.start:r.end])
            continue
        merged.append(r)
    return merged


def _lead_in(text: str, pos: int) -> int:
    """Move a strong phrase's start back to its sentence start when only a short opener precedes it."""
    cut = max(text.rfind(ch, 0, pos) for ch in ".!?\n;:")
    sentence_start = cut + 1
    while sentence_start < pos and text[sentence_start] in " \t\"'*-()":
        sentence_start += 1
    if pos - sentence_start <= _LEAD_IN_MAX and _is_opener(text[sentence_start:pos]):
        return sentence_start
    return pos


def _is_opener(lead: str) -> bool:
    """True for an opener of interjections/filler only, e.g. "Oh, sorry, " or "Hmm, actually, "."""
    words = _CONTENT_WORD.findall(lead.lower())
    return all(w in _FILLER or w in {"i", "think", "guess", "see", "realize", "realise", "now", "just", "seems", "looks",
                                     "like", "hmm", "um", "god", "dear", "gosh", "hey"} for w in words)


def _has_content(text: str) -> bool:
    return any(w.lower() not in _FILLER for w in _CONTENT_WORD.findall(text))


def find_attempts(response: str) -> list[AttemptSpan]:
    """Split `response` into attempts at explicit restart language.

    Returns `[]` for a blank response. Otherwise attempt i spans from restart i's start to restart
    i+1's start; a restart is dropped (opens no attempt) when the text before it since the previous
    boundary has no content (an opening "Let me try again", or two restart sentences in a row), or
    when nothing with content follows it. The attempts tile the response: concatenated they give it back.
    """
    if not response.strip():
        return []
    restarts = find_restarts(response)
    # Walk the restarts, keeping a boundary only when the attempt it closes has content.
    cuts: list[Restart] = []
    prev_start, prev_end = 0, 0  # current attempt's start, and the end of restart language opening it
    for r in restarts:
        if not _has_content(_strip_restarts(response, prev_end, r.start, restarts)):
            prev_end = max(prev_end, r.end)  # consecutive restart language joins the opening one
            continue
        cuts.append(r)
        prev_start, prev_end = r.start, r.end
    # A trailing restart with nothing after it opens no attempt.
    while cuts and not _has_content(_strip_restarts(response, cuts[-1].end, len(response), restarts)):
        cuts.pop()
    bounds = [0] + [c.start for c in cuts] + [len(response)]
    spans = []
    for i in range(len(bounds) - 1):
        start, end = bounds[i], bounds[i + 1]
        spans.append(AttemptSpan(start, end, _body_start(response, start, end, restarts)))
    return spans


def _strip_restarts(response: str, start: int, end: int, restarts: list[Restart]) -> str:
    """`response[start:end]` with restart language blanked out."""
    chars = list(response[start:end])
    for r in restarts:
        for i in range(max(r.start, start), min(r.end, end)):
            chars[i - start] = " "
    return "".join(chars)


def _body_start(response: str, start: int, end: int, restarts: list[Restart]) -> int:
    """Skip the restart language (and the punctuation after it) that opens an attempt."""
    pos = start
    moved = True
    while moved:
        moved = False
        while pos < end and not response[pos].isalnum():
            pos += 1
        for r in restarts:
            if r.start <= pos < r.end or (pos < r.start < end and not _has_content(response[pos:r.start])):
                if r.end <= end and r.end > pos:
                    pos, moved = r.end, True
        if moved:
            # finish the restart's sentence when only a short tail remains ("revise" + " my answer.")
            tail = re.match(r"[^.!?\n]{0,40}[.!?\n]", response[pos:end])
            if tail and len(_CONTENT_WORD.findall(tail.group(0))) <= _SHORT_TAIL_WORDS:
                pos += tail.end()
    while pos < end and not response[pos].isalnum() and response[pos] not in "\"'(*-":
        pos += 1
    return pos if pos < end and _has_content(response[pos:end]) else start
