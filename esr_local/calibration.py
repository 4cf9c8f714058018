"""Per-latent boost calibration on a real model and judge, cached in SQLite.

The score of a boost is the judge's FIRST-attempt score / 100 on a steered answer (256 new tokens by
default, as the paper's calibration), averaged over `samples_per_step` random prompts. Probabilistic
bisection (bisection.py) moves the boost until that score is near the target (0.30 in the paper).

The final boost is then measured again. The paper re-measures once (one prompt); a single sample of a
first-attempt score is close to all-or-nothing (an answer is derailed or it is not), so one sample cannot
tell a good calibration from a bad one. Here the re-measure averages `remeasure_samples` fresh samples
(default 5), and that average is what calibration flags compare with the target (a documented deviation).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass

import numpy as np

from .bisection import bisect_boost
from .engine import SamplingParams, SteeredModel
from .errors import BackendError, UserInputError


@dataclass(frozen=True)
class CalibrationSettings:
    """Everything a calibrated boost depends on besides model, SAE, latent, layer and judge."""

    target: float = 0.30
    n_steps: int = 10
    samples_per_step: int = 1
    lower: float = 0.0
    upper: float = 10.0
    prior_mean: float = 5.0
    prior_std: float = 2.5
    update_weight: float = 5.0
    max_tokens: int = 256
    temperature: float = 0.6
    repetition_penalty: float = 1.1
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    chat_mode: str = "chat"
    chat_template_sha256: str = ""
    prompts_sha256: str = ""
    # Samples averaged when the final boost is measured again (the paper: 1).
    remeasure_samples: int = 5
    # Bumped when the procedure changes (v2: a sample without a usable score is retried up to 3 times;
    # v3: the final boost is re-measured over `remeasure_samples` samples).
    procedure: str = "pbisect-v3"
    rubric_version: str = ""
    restart_gating: bool = False

    def check(self) -> None:
        """Reject impossible settings once, before any latent is calibrated."""
        from .bisection import _check_settings

        _check_settings(self.target, self.lower, self.upper, self.prior_std, self.n_steps, self.update_weight, 10_000)
        if self.samples_per_step < 1 or self.max_tokens < 1:
            raise UserInputError("calibration needs at least 1 sample per step and 1 token")
        if self.remeasure_samples < 1:
            raise UserInputError("calibration needs at least 1 re-measure sample (--remeasure-samples)")

    def settings_hash(self) -> str:
        """Stable hash of these settings (part of the cache key)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CalibrationOutcome:
    """A calibrated boost, the score measured again at that boost, and the steps."""

    boost: float
    achieved_score: float
    steps: list[dict]
    calibration_id: int | None = None
    cached: bool = False


def _judge_first_score(judge, prompt: str, response: str, label: str) -> float:
    j = judge.judge(prompt, response, label)
    scored = [a.score for a in (j.attempts or []) if a.score is not None]
    if j.parse_status != "ok" or not scored:
        raise BackendError(f"the judge gave no usable score during calibration ({j.error or 'no scored attempt'})")
    return float(scored[0]) / 100.0


def calibrate_latent(
    lm: SteeredModel,
    judge,
    row: np.ndarray,
    layer: int,
    label: str,
    prompts: list[str],
    settings: CalibrationSettings,
    seed: int,
    *,
    store=None,
    cache_key: dict | None = None,
    on_step=None,
    on_start=None,
) -> CalibrationOutcome:
    """Find the boost of one latent whose first-attempt judge score is near the target.

    With a store and cache_key, a cached result is returned without generating, and a new one is saved.
    """
    if store is not None and cache_key is not None:
        hit = store.get_calibration(cache_key)
        if hit:
            return CalibrationOutcome(float(hit["boost"]), float(hit["achieved_score"] or 0), json.loads(hit["steps_json"] or "[]"),
                                      int(hit["id"]), cached=True)
    if on_start is not None:
        on_start()
    rng = random.Random(seed)
    sampling = SamplingParams(temperature=settings.temperature, max_tokens=settings.max_tokens,
                              repetition_penalty=settings.repetition_penalty, top_k=settings.top_k,
                              top_p=settings.top_p, min_p=settings.min_p)

    def score(boost: float, n_samples: int = settings.samples_per_step) -> float:
        lm.set_directions({layer: row * np.float32(boost)} if boost != 0 else None)
        values = []
        for _ in range(n_samples):
            # Like the paper, a sample whose judgment yields no first-attempt score is retried (up to 3
            # tries, each a fresh prompt and seed) before the calibration fails.
            for attempt in range(3):
                prompt = rng.choice(prompts)
                gen = lm.generate(prompt, sampling, rng.randint(0, 1_000_000))
                try:
                    values.append(_judge_first_score(judge, prompt, gen.text, label))
                    break
                except BackendError:
                    if attempt == 2:
                        raise
        return float(np.mean(values))

    result = bisect_boost(score, target=settings.target, lower=settings.lower, upper=settings.upper,
                          prior_mean=settings.prior_mean, prior_std=settings.prior_std, n_steps=settings.n_steps,
                          update_weight=settings.update_weight, on_step=on_step)
    achieved = score(result.boost, settings.remeasure_samples)  # the paper: one sample (module docstring)
    steps = [asdict(s) for s in result.steps]
    outcome = CalibrationOutcome(result.boost, achieved, steps)
    if store is not None and cache_key is not None:
        outcome.calibration_id = store.put_calibration(
            cache_key, {"boost": result.boost, "achieved_score": achieved, "target": settings.target, "steps_json": json.dumps(steps)}
        )
    return outcome
