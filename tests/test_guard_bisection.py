"""Guard: probabilistic bisection against its documented rule, computed independently here with numpy,
plus the edges of its settings (mutants that survived tests/test_bisection.py; see MUTATION.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from esr_local.bisection import beta_cdf, bisect_boost, regularized_incomplete_beta, step_confidence
from esr_local.errors import UserInputError

MAX_CONFIDENCE = 1.0 - 1e-12


def _reference(scores, *, lower, upper, prior_mean, prior_std, grid_points, target=0.3, weight=5.0):
    """The docstring's rule: Gaussian prior on the grid; query the median; multiply the side the direction
    points to by p, the other by 1-p, the queried point by sqrt(p(1-p)); renormalise."""
    grid = np.linspace(lower, upper, grid_points)
    w = np.exp(-0.5 * ((grid - prior_mean) / prior_std) ** 2 - np.max(-0.5 * ((grid - prior_mean) / prior_std) ** 2))
    w /= w.sum()
    queried = []
    for s in scores:
        i = int(np.searchsorted(np.cumsum(w), 0.5 * w.sum()))
        queried.append(float(grid[i]))
        direction, p = step_confidence(s, target, weight)
        p = min(p, MAX_CONFIDENCE)
        factor = np.where(np.arange(grid_points) > i, p, 1 - p) if direction > 0 else np.where(
            np.arange(grid_points) > i, 1 - p, p)
        factor[i] = math.sqrt(p * (1 - p))
        w = w * factor
        w /= w.sum()
    final = float(grid[int(np.searchsorted(np.cumsum(w), 0.5 * w.sum()))])
    return queried, round(final, 2)


SETTINGS = [
    dict(lower=0.0, upper=6.0, prior_mean=2.5, prior_std=1.5, grid_points=7),
    dict(lower=2.0, upper=12.0, prior_mean=4.0, prior_std=3.0, grid_points=101),  # lower != 0, off-centre prior
    dict(lower=0.0, upper=50.0, prior_mean=10.0, prior_std=10.0, grid_points=1001),
]
SCORES = [0.9, 0.1, 0.5, 0.28, 0.31, 0.05, 0.7, 0.3]


@pytest.mark.parametrize("settings", SETTINGS)
def test_every_query_and_the_result_follow_the_documented_update(settings):
    expected_queries, expected_boost = _reference(SCORES, **settings)
    it = iter(SCORES)
    result = bisect_boost(lambda b: next(it), n_steps=len(SCORES), **settings)
    assert [s.boost for s in result.steps] == pytest.approx(expected_queries, abs=1e-9)
    assert result.boost == expected_boost
    assert [s.score for s in result.steps] == SCORES


def test_first_query_is_the_prior_median():
    # Symmetric Gaussian prior on a symmetric grid: the median is the prior mean exactly.
    seen = bisect_boost(lambda b: 0.3, lower=0.0, upper=10.0, prior_mean=5.0, prior_std=2.5, n_steps=1, grid_points=1001)
    assert seen.steps[0].boost == pytest.approx(5.0, abs=1e-9)
    # Off-centre and narrow: the median sits at the prior mean, not pulled towards the middle of the grid.
    off = bisect_boost(lambda b: 0.3, lower=0.0, upper=10.0, prior_mean=2.0, prior_std=0.5, n_steps=1, grid_points=1001)
    assert off.steps[0].boost == pytest.approx(2.0, abs=0.011)


def test_a_prior_mean_far_outside_the_range_still_works():
    # log prior ~ -800 everywhere: shifted by its maximum before exp, so no underflow to all zeros.
    r = bisect_boost(lambda b: 0.9, lower=0.0, upper=10.0, prior_mean=50.0, prior_std=1.0, n_steps=2, grid_points=101)
    assert r.steps[0].boost == 10.0 and r.boost == 10.0


def test_two_point_grid_median_is_the_first_point_at_exactly_half():
    r = bisect_boost(lambda b: 0.3, lower=0.0, upper=1.0, prior_mean=0.5, prior_std=1.0, n_steps=1, grid_points=2)
    assert r.steps[0].boost == 0.0  # cumulative mass 0.5 at the first point reaches half: >=, not >


def test_score_bounds_are_inclusive_and_strict_outside():
    base = dict(lower=0.0, upper=10.0, prior_mean=5.0, prior_std=2.5, n_steps=1, grid_points=11)
    assert bisect_boost(lambda b: 1.0, **base).steps[0].score == 1.0
    assert bisect_boost(lambda b: 0.0, **base).steps[0].score == 0.0
    for bad in (1.5, -0.01, 1.0000001):
        with pytest.raises(UserInputError, match=r"must be in \[0, 1\]"):
            bisect_boost(lambda b, v=bad: v, **base)


@pytest.mark.parametrize("bad, message", [
    ({"target": 0.0}, "target must be between 0 and 1"),
    ({"target": 1.0}, "target must be between 0 and 1"),
    ({"lower": 10.0}, r"lower < upper, got \[10.0, 10.0\]"),
    ({"upper": float("inf")}, "lower < upper"),
    ({"prior_std": 0.0}, "prior_std must be positive, got 0.0"),
    ({"n_steps": 0}, "n_steps must be at least 1, got 0"),
    ({"update_weight": 0.0}, "update_weight must be positive, got 0.0"),
    ({"grid_points": 1}, "grid_points must be at least 2, got 1"),
])
def test_invalid_settings_say_what_is_wrong(bad, message):
    base = dict(lower=0.0, upper=10.0, prior_mean=5.0, prior_std=2.5, n_steps=2, grid_points=11)
    with pytest.raises(UserInputError, match=message):
        bisect_boost(lambda b: 0.3, **{**base, **bad})


def test_small_but_valid_settings_are_accepted():
    # The smallest legal values on each edge the checks draw.
    r = bisect_boost(lambda b: 0.3, lower=0.0, upper=1.0, prior_mean=0.5, prior_std=0.5, n_steps=1, grid_points=2,
                     update_weight=0.5, target=0.01)
    assert len(r.steps) == 1
    r = bisect_boost(lambda b: 0.3, lower=0.0, upper=1.0, prior_mean=0.5, prior_std=0.5, n_steps=1, grid_points=3,
                     target=0.99)
    assert r.steps[0].boost == 0.5


def test_beta_parameters_must_be_positive():
    for a, b in ((0.0, 1.0), (1.0, 0.0), (-1.0, 2.0)):
        with pytest.raises(UserInputError, match=f"Beta parameters must be positive, got a={a}, b={b}"):
            regularized_incomplete_beta(a, b, 0.5)
    assert beta_cdf(0.5, 1e-3, 1e-3) == pytest.approx(0.5, abs=1e-9)


def test_beta_cdf_on_both_sides_of_the_symmetry_switch():
    # Beta(2, 3): F(x) = 1 - (1-x)^3 (1 + 3x)... closed form of I_x(2, 3) = 6x^2 - 8x^3 + 3x^4.
    for x in (0.1, 0.3, 0.4999, 0.5, 0.5001, 0.6, 0.9):
        assert beta_cdf(x, 2.0, 3.0) == pytest.approx(6 * x**2 - 8 * x**3 + 3 * x**4, abs=1e-13)


def test_the_default_grid_has_ten_thousand_points():
    # Spacing 10 / 9999: every queried boost is one of those grid points (10_001 points would give 0.001).
    r = bisect_boost(lambda b: 0.9, lower=0.0, upper=10.0, prior_mean=5.0, prior_std=2.5, n_steps=3)
    for step in r.steps:
        k = step.boost * 9999 / 10
        assert abs(k - round(k)) < 1e-6, step.boost
    assert r.steps[0].boost != 5.0  # 5.0 is not on that grid
