"""Restart language has one source (esr_local/judge/restarts.py): gating reads its pattern set from there, and
moving it changed neither gating's nor the offline judge's behaviour."""

from __future__ import annotations

import hashlib
import inspect

from esr_local.judge import gating, restarts
from esr_local.judge.offline import OfflineJudge

# sha256 of the compiled regexes as they were before the pattern set moved (commit 44ec92f): the same bytes
# mean the same matches, so every gated judgment and offline judge key stays as it was.
GATING_REGEX_SHA256 = "e935f0e3f8bb03f5f95a74abea0f36226fbef192fe174308e784dae641f7eaae"
OFFLINE_PATTERNS_SHA256 = "7f57d073d079b84a4f151d1d20bf120604f54974194783a68b0473a1fb33c958"


def test_gating_uses_the_pattern_set_defined_in_restarts():
    assert gating.RESTART_PATTERNS is restarts.GATING_PATTERNS
    # the phrases both sets share are the same objects, not copies
    for shared in (restarts.SCRATCH_THAT, restarts.ON_SECOND_THOUGHT, restarts.MY_MISTAKE):
        assert any(p is shared for p in restarts.GATING_PATTERNS)
        assert any(p is shared for p in restarts.STRONG_PATTERNS)
    # gating.py itself holds no restart phrase any more (its source names none)
    source = inspect.getsource(gating)
    assert "scratch" not in source and "second\\s+thought" not in source and "\\u2019" not in source


def test_the_regexes_are_byte_identical_to_before_the_move():
    assert hashlib.sha256(gating._RESTART.pattern.encode()).hexdigest() == GATING_REGEX_SHA256
    assert restarts.patterns_sha256() == OFFLINE_PATTERNS_SHA256
    judge = OfflineJudge()
    try:
        assert judge.describe()["scoring"]["restart_patterns_sha256"] == OFFLINE_PATTERNS_SHA256
    finally:
        judge.close()


def test_normalisation_tables_differ_only_by_the_em_dash():
    # gating makes the em dash plain; the offline judge keeps it (its patterns match \u2014 themselves)
    text = "\u2018a\u2019 \u201cb\u201d c\u2013d e\u2014f"
    assert gating.normalise(text) == "'a' \"b\" c-d e-f"
    assert restarts._plain(text) == "'a' \"b\" c-d e\u2014f"


def test_shared_phrases_match_in_both_detectors():
    for text, phrase in (("Boil it. Scratch that, steam it.", "scratch that"),
                         ("On second thought, use vinegar.", "on second thought"),
                         ("Clouds are soft. My mistake: boil the water.", "my mistake")):
        assert gating.has_restart_language(text)
        assert any(phrase in r.phrase.lower() for r in restarts.find_restarts(text)), text
