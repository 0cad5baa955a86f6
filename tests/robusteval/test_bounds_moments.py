"""Gaussian absolute moments of the total active count against Monte Carlo and quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from robusteval.bounds import fit_gaussian_count_model, gaussian_absolute_moment

CASES = [(0.0, 1.0, 1.0), (0.0, 2.0, 0.5), (1.5, 1.0, 2.5), (-3.0, 2.0, 1.3), (40.0, 6.0, 1.5), (120.0, 9.0, 4.5)]


@pytest.mark.parametrize(("mu", "sigma", "order"), CASES)
def test_absolute_moment_matches_monte_carlo(mu: float, sigma: float, order: float) -> None:
    draws = np.random.default_rng(12345).normal(mu, sigma, size=400_000)
    powers = np.abs(draws) ** order
    standard_error = powers.std() / math.sqrt(draws.size)

    closed = gaussian_absolute_moment(mu, sigma, order)

    assert abs(closed - powers.mean()) <= 5 * standard_error


@pytest.mark.parametrize(("mu", "sigma", "order"), CASES)
def test_absolute_moment_matches_quadrature(mu: float, sigma: float, order: float) -> None:
    def integrand(value: float) -> float:
        return abs(value) ** order * stats.norm.pdf(value, mu, sigma)

    lower, upper = mu - 15 * sigma, mu + 15 * sigma
    points = [0.0] if lower < 0 < upper else None
    reference, _ = integrate.quad(integrand, lower, upper, points=points, limit=200, epsabs=0, epsrel=1e-12)

    assert gaussian_absolute_moment(mu, sigma, order) == pytest.approx(reference, rel=1e-8)


def test_integer_orders_match_raw_moments() -> None:
    # For a mean far from zero |S| = S almost surely, so E|S|^2 = mu^2 + sigma^2.
    assert gaussian_absolute_moment(200.0, 3.0, 2.0) == pytest.approx(200.0**2 + 3.0**2, rel=1e-12)
    assert gaussian_absolute_moment(0.0, 1.0, 1.0) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-12)


def test_zero_sigma_is_point_mass() -> None:
    assert gaussian_absolute_moment(-4.0, 0.0, 1.5) == pytest.approx(8.0, rel=1e-12)


def test_order_at_most_minus_one_raises() -> None:
    with pytest.raises(ValueError, match="greater than -1"):
        gaussian_absolute_moment(1.0, 1.0, -1.0)


def test_fit_uses_sample_mean_and_std() -> None:
    totals = np.array([10.0, 12.0, 15.0, 11.0])
    fit = fit_gaussian_count_model(totals)

    assert fit.mu == pytest.approx(12.0)
    assert fit.sigma == pytest.approx(np.std(totals, ddof=1))
    assert fit.samples == 4
    assert fit.absolute_moment(1.0) == pytest.approx(gaussian_absolute_moment(12.0, fit.sigma, 1.0))
