"""Guard: calibration scores a boost by the judge's FIRST attempt, averaged, and bisects on exactly that.

Real generation on the embedded SmolLM2 (a few tokens); the judge is a small scripted class whose first
and last attempt scores differ on every call, so scoring on any other attempt moves the bisection
elsewhere. The expected boost is the public `bisect_boost` fed the first-attempt scores by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from esr_local.bisection import bisect_boost
from esr_local.calibration import CalibrationSettings, calibrate_latent
from esr_local.errors import BackendError, UserInputError
from esr_local.sampling import SamplingParams
from esr_local.judge.records import Attempt, Judgment
from esr_local.store import Store

LAYER = 12
PROMPTS = ["Describe a forest.", "Write about the sea.", "Tell me about mountains."]
LABEL = "concept under test"
# (first, middle, last) attempt scores, 0-100, one triple per judge call; first and last always differ.
SCRIPT = [(90, 50, 10), (80, 5, 20), (15, 60, 95), (40, 70, 0), (25, 1, 75), (60, 30, 5), (35, 90, 100)]


class ScriptedJudge:
    """Answers call i with three scored attempts from SCRIPT[i] (or a parse failure where scripted)."""

    deterministic = True

    def __init__(self, script, failures=()):
        self.script = list(script)
        self.failures = set(failures)  # call numbers that fail to parse
        self.calls: list[tuple[str, str, str]] = []

    def judge(self, prompt: str, response: str, label: str) -> Judgment:
        i = len(self.calls)
        self.calls.append((prompt, response, label))
        if i in self.failures:
            return Judgment(raw_output="garbage", attempts=None, parse_status="error", error="parse error: scripted",
                            tries=1, latency_ms=0.0, n_attempts_raw=None)
        first, middle, last = self.script[i]
        attempts = [Attempt(name, None if v is None else float(v))
                    for name, v in zip(("first", "middle", "last"), (first, middle, last))]
        return Judgment(raw_output="{}", attempts=attempts, parse_status="ok", error=None, tries=1,
                        latency_ms=0.0, n_attempts_raw=3)


def _settings(**kw) -> CalibrationSettings:
    base = dict(n_steps=4, samples_per_step=1, remeasure_samples=1, max_tokens=3, lower=0.0, upper=10.0, prior_mean=5.0,
                prior_std=2.5)
    base.update(kw)
    return CalibrationSettings(**base)


def _expected(settings: CalibrationSettings, values: list[float]):
    it = iter(values)
    return bisect_boost(lambda b: next(it), target=settings.target, lower=settings.lower, upper=settings.upper,
                        prior_mean=settings.prior_mean, prior_std=settings.prior_std, n_steps=settings.n_steps,
                        update_weight=settings.update_weight)


@pytest.fixture()
def row(smollm2):
    v = np.random.default_rng(7).standard_normal(smollm2.n_embd).astype(np.float32)
    yield v / np.linalg.norm(v)
    smollm2.clear()


def test_boost_follows_the_first_attempt_scores_not_the_last(smollm2, row):
    s = _settings()
    judge = ScriptedJudge(SCRIPT)
    out = calibrate_latent(smollm2, judge, row, LAYER, LABEL, PROMPTS, s, seed=11)
    firsts = [f / 100 for f, _, _ in SCRIPT]
    expected = _expected(s, firsts[: s.n_steps])
    assert [st["score"] for st in out.steps] == firsts[: s.n_steps]
    assert out.boost == expected.boost
    assert [st["boost"] for st in out.steps] == [st.boost for st in expected.steps]
    # The last attempts would have led somewhere else: the check discriminates.
    assert _expected(s, [la / 100 for _, _, la in SCRIPT][: s.n_steps]).boost != expected.boost
    # Re-measured once at the final boost: the next call's first attempt.
    assert out.achieved_score == firsts[s.n_steps] and len(judge.calls) == s.n_steps + 1
    assert not out.cached and out.calibration_id is None
    # The model is left steered by the final boost at the calibrated layer, nowhere else.
    assert set(smollm2.directions) == {LAYER}
    np.testing.assert_allclose(smollm2.directions[LAYER], row * np.float32(out.boost), rtol=1e-6)
    for prompt, response, label in judge.calls:
        assert prompt in PROMPTS and label == LABEL and isinstance(response, str)


def test_samples_per_step_are_averaged(smollm2, row):
    s = _settings(n_steps=2, samples_per_step=2, remeasure_samples=2)
    judge = ScriptedJudge(SCRIPT)
    out = calibrate_latent(smollm2, judge, row, LAYER, LABEL, PROMPTS, s, seed=3)
    firsts = [f / 100 for f, _, _ in SCRIPT]
    means = [(firsts[0] + firsts[1]) / 2, (firsts[2] + firsts[3]) / 2]
    assert [st["score"] for st in out.steps] == pytest.approx(means, abs=1e-12)
    assert out.boost == _expected(s, means).boost
    assert out.achieved_score == pytest.approx((firsts[4] + firsts[5]) / 2, abs=1e-12)
    assert len(judge.calls) == 6


def test_the_final_boost_is_remeasured_over_remeasure_samples(smollm2, row):
    s = _settings(n_steps=2, remeasure_samples=3)
    judge = ScriptedJudge(SCRIPT)
    out = calibrate_latent(smollm2, judge, row, LAYER, LABEL, PROMPTS, s, seed=3)
    firsts = [f / 100 for f, _, _ in SCRIPT]
    assert [st["score"] for st in out.steps] == firsts[:2]
    assert out.achieved_score == pytest.approx(sum(firsts[2:5]) / 3, abs=1e-12)
    assert len(judge.calls) == 5
    with pytest.raises(UserInputError, match="re-measure sample"):
        _settings(remeasure_samples=0).check()


def test_null_first_scores_are_skipped_and_failed_judgments_retried_three_times(smollm2, row):
    s = _settings(n_steps=1)
    # Call 0 fails to parse; call 1 has no score on its first attempt (the first SCORED attempt counts).
    judge = ScriptedJudge([(0, 0, 0), (None, 70, 10), (30, 1, 2)], failures={0})
    out = calibrate_latent(smollm2, judge, row, LAYER, LABEL, PROMPTS, s, seed=5)
    assert [st["score"] for st in out.steps] == [0.70]  # call 0 failed; call 1's first scored attempt is 70
    assert out.achieved_score == 0.30
    assert len(judge.calls) == 3
    # Two different prompts/seeds were tried for the failed sample (a fresh draw per retry).
    assert judge.calls[0][1] != judge.calls[1][1] or judge.calls[0][0] != judge.calls[1][0]

    always_failing = ScriptedJudge(SCRIPT, failures={0, 1, 2})
    with pytest.raises(BackendError, match="no usable score"):
        calibrate_latent(smollm2, always_failing, row, LAYER, LABEL, PROMPTS, s, seed=5)
    assert len(always_failing.calls) == 3

    twice_failing = ScriptedJudge(SCRIPT, failures={0, 1})
    out = calibrate_latent(smollm2, twice_failing, row, LAYER, LABEL, PROMPTS, s, seed=5)
    assert [st["score"] for st in out.steps] == [SCRIPT[2][0] / 100]


def test_same_seed_same_calibration_and_a_cached_result_skips_the_judge(smollm2, row, tmp_path):
    s = _settings(n_steps=2)
    a, b = ScriptedJudge(SCRIPT), ScriptedJudge(SCRIPT)
    calibrate_latent(smollm2, a, row, LAYER, LABEL, PROMPTS, s, seed=9)
    calibrate_latent(smollm2, b, row, LAYER, LABEL, PROMPTS, s, seed=9)
    assert a.calls == b.calls  # same prompts and same generated responses

    store = Store(tmp_path / "cal.db")
    key = {"model_sha256": "cd" * 32, "sae_source": "shipped:test", "latent": 4, "layer": LAYER,
           "judge": "scripted", "settings_hash": s.settings_hash()}
    first = calibrate_latent(smollm2, ScriptedJudge(SCRIPT), row, LAYER, LABEL, PROMPTS, s, seed=9,
                             store=store, cache_key=key)
    assert first.calibration_id is not None and not first.cached
    stored = store.get_calibration(key)  # every field of the result is stored, the target included
    assert (stored["boost"], stored["achieved_score"], stored["target"]) == (first.boost, first.achieved_score,
                                                                             s.target)
    assert stored["steps"] == first.steps
    untouched = ScriptedJudge([])
    again = calibrate_latent(smollm2, untouched, row, LAYER, LABEL, PROMPTS, s, seed=9, store=store, cache_key=key)
    assert again.cached and untouched.calls == []
    assert (again.boost, again.achieved_score, again.calibration_id) == (first.boost, first.achieved_score,
                                                                          first.calibration_id)
    assert [st["score"] for st in again.steps] == [st["score"] for st in first.steps]


class UnscoredJudge(ScriptedJudge):
    """Parses fine but gives no score to any attempt."""

    def judge(self, prompt, response, label):
        j = super().judge(prompt, response, label)
        if j.attempts is not None:
            j.attempts = [Attempt(a.text, None) for a in j.attempts]
        return j


def test_a_judgment_without_any_score_is_retried_then_fails_with_the_reason(smollm2, row):
    s = _settings(n_steps=1)
    unscored = UnscoredJudge(SCRIPT)
    with pytest.raises(BackendError, match=r"^the judge gave no usable score during calibration \(no scored attempt\)$"):
        calibrate_latent(smollm2, unscored, row, LAYER, LABEL, PROMPTS, s, seed=5)
    assert len(unscored.calls) == 3
    failing = ScriptedJudge(SCRIPT, failures={0, 1, 2})
    with pytest.raises(BackendError, match=r"during calibration \(parse error: scripted\)$"):
        calibrate_latent(smollm2, failing, row, LAYER, LABEL, PROMPTS, s, seed=5)


def test_a_store_without_a_cache_key_is_left_alone(smollm2, row, tmp_path):
    store = Store(tmp_path / "cal.db")
    out = calibrate_latent(smollm2, ScriptedJudge(SCRIPT), row, LAYER, LABEL, PROMPTS, _settings(n_steps=1), seed=2,
                           store=store, cache_key=None)
    assert out.calibration_id is None and not out.cached


def test_a_cached_entry_without_an_achieved_score_reads_as_zero(smollm2, row, tmp_path):
    store = Store(tmp_path / "cal.db")
    key = {"model_sha256": "ef" * 32, "sae_source": "shipped:test", "latent": 1, "layer": LAYER,
           "judge": "scripted", "settings_hash": "x"}
    store.put_calibration(key, {"boost": 3.5, "target": 0.3, "steps": []})
    hit = calibrate_latent(smollm2, ScriptedJudge([]), row, LAYER, LABEL, PROMPTS, _settings(), seed=1,
                           store=store, cache_key=key)
    assert (hit.boost, hit.achieved_score, hit.steps, hit.cached) == (3.5, 0.0, [], True)


@pytest.mark.parametrize("change", [{"temperature": 1.5}, {"repetition_penalty": 2.0}, {"top_k": 1},
                                    {"top_p": 0.05}, {"min_p": 0.9}, {"max_tokens": 20}])
def test_every_sampling_setting_reaches_the_generations(smollm2, row, change):
    base = _settings(n_steps=1, max_tokens=10)
    a, b = ScriptedJudge(SCRIPT), ScriptedJudge(SCRIPT)
    calibrate_latent(smollm2, a, row, LAYER, LABEL, PROMPTS, base, seed=4)
    calibrate_latent(smollm2, b, row, LAYER, LABEL, PROMPTS, _settings(n_steps=1, **{"max_tokens": 10, **change}),
                     seed=4)
    assert [c[0] for c in a.calls] == [c[0] for c in b.calls]  # same prompts drawn ...
    assert [c[1] for c in a.calls] != [c[1] for c in b.calls]  # ... answered differently


def test_settings_check_and_hash():
    CalibrationSettings().check()
    CalibrationSettings(samples_per_step=1, max_tokens=1, remeasure_samples=1).check()  # the paper's one re-measure
    for bad, message in [({"samples_per_step": 0}, "^calibration needs at least 1 sample per step and 1 token$"),
                         ({"max_tokens": 0}, "^calibration needs at least 1 sample per step and 1 token$"),
                         ({"remeasure_samples": 0},
                          r"^calibration needs at least 1 re-measure sample \(--remeasure-samples\)$"),
                         ({"target": 1.0}, "target must be between 0 and 1"),
                         ({"lower": 5.0, "upper": 5.0}, "lower < upper"),
                         ({"prior_std": 0.0}, "prior_std must be positive"),
                         ({"n_steps": 0}, "n_steps must be at least 1"),
                         ({"update_weight": 0.0}, "update_weight must be positive")]:
        with pytest.raises(UserInputError, match=message):
            CalibrationSettings(**bad).check()
    # The hash is part of every stored calibration's cache key: stable across versions, sensitive to each field.
    assert CalibrationSettings().settings_hash() == "095b82b6db7b84f2"
    import dataclasses

    hashes = {CalibrationSettings().settings_hash()}
    for f in dataclasses.fields(CalibrationSettings):
        value = getattr(CalibrationSettings(), f.name)
        other = (not value) if isinstance(value, bool) else (value + "x" if isinstance(value, str) else value + 1)
        hashes.add(CalibrationSettings(**{f.name: other}).settings_hash())
    assert len(hashes) == 1 + len(dataclasses.fields(CalibrationSettings))


def test_a_probe_at_boost_one_steers_by_the_row_itself(smollm2, row):
    # A prior squeezed against the lower bound 1.0 makes the first probe exactly boost 1.0; greedy decoding
    # makes the response independent of the sample's seed, so it can be generated here by hand.
    strong = row * 60
    prompt = "Describe a forest."
    s = _settings(n_steps=1, lower=1.0, upper=2.0, prior_mean=0.0, prior_std=0.005, temperature=0.0, max_tokens=8)
    judge = ScriptedJudge(SCRIPT)
    out = calibrate_latent(smollm2, judge, strong, LAYER, LABEL, [prompt], s, seed=1)
    assert out.steps[0]["boost"] == 1.0
    greedy = SamplingParams(temperature=0.0, max_tokens=8)  # the calibration's other settings are the defaults
    smollm2.set_directions({LAYER: strong})
    steered = smollm2.generate(prompt, greedy, 0).text
    smollm2.clear()
    assert judge.calls[0][1] == steered != smollm2.generate(prompt, greedy, 0).text


def test_each_step_and_the_start_are_reported(smollm2, row):
    s = _settings(n_steps=3)
    seen, started = [], []
    out = calibrate_latent(smollm2, ScriptedJudge(SCRIPT), row, LAYER, LABEL, PROMPTS, s, seed=11,
                           on_step=seen.append, on_start=lambda: started.append(len(seen)))
    assert started == [0]  # once, before the first step
    assert [(st.boost, st.score) for st in seen] == [(st["boost"], st["score"]) for st in out.steps]
    assert len(seen) == 3


def test_each_sample_draws_its_prompt_then_its_seed_from_the_calibration_seed(smollm2, row):
    # Reproducible from the calibration's seed alone: random.Random(seed) picks the prompt, then a seed
    # in [0, 10^6] for the generation (the cache relies on it: same key, same procedure, same result).
    import random

    s = _settings(n_steps=1, temperature=0.9, max_tokens=6)
    judge = ScriptedJudge(SCRIPT)
    calibrate_latent(smollm2, judge, row, LAYER, LABEL, PROMPTS, s, seed=123)
    rng = random.Random(123)
    prompt = rng.choice(PROMPTS)
    gen_seed = rng.randint(0, 1_000_000)
    first_boost = _expected(s, [SCRIPT[0][0] / 100]).steps[0].boost
    smollm2.set_directions({LAYER: row * np.float32(first_boost)})
    sp = SamplingParams(temperature=0.9, max_tokens=6)
    expected = smollm2.generate(prompt, sp, gen_seed).text
    others = {smollm2.generate(prompt, sp, gen_seed + d).text for d in (1, 2)}
    smollm2.clear()
    assert judge.calls[0][:2] == (prompt, expected)
    assert expected not in others  # the seed itself matters at this temperature


def test_the_target_and_update_weight_reach_the_bisection(smollm2, row):
    firsts = [f / 100 for f, _, _ in SCRIPT]
    for change in ({"target": 0.5}, {"update_weight": 2.0}):
        s = _settings(**change)
        out = calibrate_latent(smollm2, ScriptedJudge(SCRIPT), row, LAYER, LABEL, PROMPTS, s, seed=11)
        expected = _expected(s, firsts[: s.n_steps])
        assert [st["boost"] for st in out.steps] == [st.boost for st in expected.steps], change
        assert [st["confidence"] for st in out.steps] == [st.confidence for st in expected.steps], change
        # With the defaults the steps would differ: the check discriminates.
        default = _expected(_settings(), firsts[: s.n_steps])
        assert [st.confidence for st in default.steps] != [st.confidence for st in expected.steps], change
