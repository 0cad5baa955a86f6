"""Gaussian model of the total number of active units across samples, and its absolute moments.

Daroczy (arXiv 2006.06780) models the total active count S(x) = sum_l a_l(x) over the data
distribution as Gaussian, S ~ N(mu, sigma^2), so that the expectation of a bound growing like
S^v has a closed form. The absolute moment of a Gaussian, as the design notes quote it from that
paper (checked against numerical quadrature and Monte Carlo in the tests), is

    E|S|^v = sigma^v 2^(v/2) Gamma((v + 1)/2) / sqrt(pi) 1F1(-v/2; 1/2; -mu^2 / (2 sigma^2)),

valid for real v > -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special


@dataclass(frozen=True)
class GaussianCountModel:
    """Normal model of the total active count: mean ``mu`` and standard deviation ``sigma``."""

    mu: float
    sigma: float
    samples: int

    def absolute_moment(self, order: float) -> float:
        """Return E|S|^order under this model (see :func:`gaussian_absolute_moment`)."""
        return gaussian_absolute_moment(self.mu, self.sigma, order)


def fit_gaussian_count_model(total_active: np.ndarray) -> GaussianCountModel:
    """Fit mu and sigma (sample mean and standard deviation, ``ddof=1``) to ``(N,)`` totals."""
    totals = np.asarray(total_active, dtype=np.float64).reshape(-1)
    if totals.size == 0:
        raise ValueError("Expected at least one total active count, but got none.")
    sigma = float(totals.std(ddof=1)) if totals.size > 1 else 0.0
    return GaussianCountModel(mu=float(totals.mean()), sigma=sigma, samples=int(totals.size))


def gaussian_absolute_moment(mu: float, sigma: float, order: float) -> float:
    """Return E|S|^order for S ~ N(mu, sigma^2) in closed form.

    Uses Kummer's transformation 1F1(a; b; z) = e^z 1F1(b - a; b; -z) when scipy's direct
    evaluation is not finite. ``sigma = 0`` gives the point mass |mu|^order.
    """
    if order <= -1:
        raise ValueError(f"Expected a moment order greater than -1, but got {order}.")
    if sigma < 0:
        raise ValueError(f"Expected a nonnegative standard deviation, but got {sigma}.")
    if sigma == 0:
        return abs(mu) ** order
    argument = -(mu**2) / (2 * sigma**2)
    confluent = float(special.hyp1f1(-order / 2, 0.5, argument))
    if not math.isfinite(confluent):
        confluent = math.exp(argument) * float(special.hyp1f1(0.5 + order / 2, 0.5, -argument))
    prefactor = sigma**order * 2 ** (order / 2) * math.gamma((order + 1) / 2) / math.sqrt(math.pi)
    return prefactor * confluent
