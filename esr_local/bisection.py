"""Per-latent boost calibration by probabilistic bisection (Waeber, Frazier & Henderson 2011).

This follows the ESR protocol (research notes esr-protocol.md section 1.4): a Gaussian prior on a grid
over [lower, upper]; each step queries the posterior median, turns the observed score into a direction
and a confidence through a Beta pseudo-posterior, and reweights the two sides of the queried point.
The scipy-free regularized incomplete beta function used for the Beta CDF lives here too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import UserInputError

# Confidence is kept just below 1 so no grid point is multiplied by exactly 0: a posterior that is
# entirely on the "wrong" side (median at the edge of the grid) must stay normalisable.
_MAX_CONFIDENCE = 1.0 - 1e-12


@dataclass(frozen=True)
class BisectionStep:
    """One bisection query: the boost tried, the score s in [0, 1] it gave, the direction the root was
    judged to lie in (+1: larger boost, -1: smaller boost) and the confidence p in [0.5, 1) of that."""

    boost: float
    score: float
    direction: int
    confidence: float


@dataclass
class BisectionResult:
    """The calibrated boost (posterior median rounded to 2 decimals) and the steps that led to it."""

    boost: float
    steps: list[BisectionStep] = field(default_factory=list)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz evaluation)."""
    tiny = 1e-300
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        # Even term d_{2m}.
        num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # Odd term d_{2m+1}.
        num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF at x of a Beta(a, b) distribution (a, b > 0)."""
    if a <= 0 or b <= 0:
        raise UserInputError(f"Beta parameters must be positive, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    front = math.exp(log_front)
    # The continued fraction converges fast only left of the mean; use I_x(a,b) = 1 - I_{1-x}(b,a) otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def beta_cdf(x: float, a: float, b: float) -> float:
    """CDF of Beta(a, b) at x (same as `regularized_incomplete_beta(a, b, x)`)."""
    return regularized_incomplete_beta(a, b, x)


def step_confidence(score: float, target: float, update_weight: float) -> tuple[int, float]:
    """Direction (+1 root to the right, -1 to the left) and confidence p >= 0.5 for one observed score.

    The score is read as a Beta(0.5 + w*s, 0.5 + w*(1-s)) pseudo-posterior (a Jeffreys prior updated
    with weight w). s >= target says "boost too weak" (+1) with confidence P(S > target); otherwise -1
    with confidence P(S <= target). If that confidence is below 0.5 the direction is flipped.
    """
    below = beta_cdf(target, 0.5 + update_weight * score, 0.5 + update_weight * (1.0 - score))
    direction, p = (1, 1.0 - below) if score >= target else (-1, below)
    if p < 0.5:
        direction, p = -direction, 1.0 - p
    return direction, p


def _median_index(weights: list[float]) -> int:
    """Index of the first grid point where the cumulative posterior reaches half of the total mass."""
    half = 0.5 * math.fsum(weights)
    total = 0.0
    for index, weight in enumerate(weights):
        total += weight
        if total >= half:
            return index
    return len(weights) - 1


def _check_settings(target: float, lower: float, upper: float, prior_std: float, n_steps: int,
                    update_weight: float, grid_points: int) -> None:
    if not 0.0 < target < 1.0:
        raise UserInputError(f"target must be between 0 and 1 (a first-attempt score / 100), got {target}")
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise UserInputError(f"the boost range needs lower < upper, got [{lower}, {upper}]")
    if not (math.isfinite(prior_std) and prior_std > 0):
        raise UserInputError(f"prior_std must be positive, got {prior_std}")
    if n_steps < 1:
        raise UserInputError(f"n_steps must be at least 1, got {n_steps}")
    if not update_weight > 0:
        raise UserInputError(f"update_weight must be positive, got {update_weight}")
    if grid_points < 2:
        raise UserInputError(f"grid_points must be at least 2, got {grid_points}")


def bisect_boost(
    score_fn: Callable[[float], float],
    *,
    target: float = 0.3,
    lower: float,
    upper: float,
    prior_mean: float,
    prior_std: float,
    n_steps: int = 10,
    update_weight: float = 5.0,
    grid_points: int = 10_000,
    on_step: Callable[[BisectionStep], None] | None = None,
) -> BisectionResult:
    """Find the boost whose first-attempt score is `target`, by probabilistic bisection.

    `score_fn(boost)` returns s in [0, 1] (first-attempt judge score / 100; higher means the steering is
    weaker, so s falls as the boost grows). The boost range [lower, upper] is split into `grid_points`
    points carrying a N(prior_mean, prior_std) prior. Each of the `n_steps` steps queries the posterior
    median x, gets (direction, p) from `step_confidence`, multiplies the posterior by p on the side of x
    the direction points to, by 1-p on the other side and by sqrt(p(1-p)) at x, and renormalises.
    `on_step` is called after each step. Returns the final posterior median rounded to 2 decimals.

    Note (a property of the protocol, kept on purpose): the confidence crosses 0.5 where the Beta
    pseudo-posterior's median equals `target`, i.e. at s ~ 0.285 for target 0.3 and weight 5, so with
    exact scores the search settles slightly above the boost whose score is exactly `target`.
    """
    _check_settings(target, lower, upper, prior_std, n_steps, update_weight, grid_points)
    spacing = (upper - lower) / (grid_points - 1)
    grid = [lower + i * spacing for i in range(grid_points)]
    grid[-1] = upper
    # Prior in log space first, shifted by its maximum, so a far-off prior mean cannot underflow to all zeros.
    log_prior = [-0.5 * ((x - prior_mean) / prior_std) ** 2 for x in grid]
    top = max(log_prior)
    weights = [math.exp(v - top) for v in log_prior]
    total = math.fsum(weights)
    weights = [w / total for w in weights]

    steps: list[BisectionStep] = []
    for _ in range(n_steps):
        index = _median_index(weights)
        boost = grid[index]
        score = float(score_fn(boost))
        if not 0.0 <= score <= 1.0:  # also rejects NaN
            raise UserInputError(f"the calibration score must be in [0, 1] (judge score / 100), got {score}")
        direction, p = step_confidence(score, target, update_weight)
        p = min(p, _MAX_CONFIDENCE)
        right, left, at = (p, 1.0 - p, math.sqrt(p * (1.0 - p)))
        if direction < 0:
            right, left = left, right
        weights = ([w * left for w in weights[:index]] + [weights[index] * at]
                   + [w * right for w in weights[index + 1:]])
        total = math.fsum(weights)
        weights = [w / total for w in weights]
        step = BisectionStep(boost=boost, score=score, direction=direction, confidence=p)
        steps.append(step)
        if on_step is not None:
            on_step(step)
    return BisectionResult(boost=round(grid[_median_index(weights)], 2), steps=steps)
