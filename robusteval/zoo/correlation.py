"""Correlation coefficients with percentile-bootstrap confidence intervals.

Kendall's tau-b, Pearson's r and Spearman's rho are computed for all bootstrap resamples at
once with numpy. The point estimates agree with ``scipy.stats.kendalltau`` (tau-b),
``pearsonr`` and ``spearmanr`` (the tests check this). A resample whose values are all
tied in one variable has no defined coefficient; it is dropped, and the number of resamples
kept is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from ..seeding import derive_seed

Method = Literal["kendall", "pearson", "spearman"]
METHODS: tuple[Method, ...] = ("kendall", "pearson", "spearman")


@dataclass(frozen=True)
class CorrelationEstimate:
    """A coefficient with its bootstrap interval.

    Attributes:
        value: the coefficient on the data, ``None`` when one variable is constant.
        low: lower end of the percentile interval, ``None`` when no resample was usable.
        high: upper end of the percentile interval.
        n: number of paired observations.
        resamples: bootstrap resamples drawn.
        valid_resamples: resamples with a defined coefficient; the interval uses only these.
    """

    value: float | None
    low: float | None
    high: float | None
    n: int
    resamples: int
    valid_resamples: int


def correlation_rows(x: np.ndarray, y: np.ndarray, method: Method) -> np.ndarray:
    """Return the coefficient of each row pair of ``x`` and ``y``, both ``(B, n)``; ``NaN`` where undefined."""
    if method == "kendall":
        return _kendall_tau_b(x, y)
    if method == "pearson":
        return _pearson(x, y)
    if method == "spearman":
        return _pearson(stats.rankdata(x, axis=1), stats.rankdata(y, axis=1))
    raise ValueError(f"Expected a correlation method from {METHODS}, but got {method!r}.")


def bootstrap_correlation(
    x: np.ndarray,
    y: np.ndarray,
    method: Method,
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> CorrelationEstimate:
    """Compute a correlation coefficient and its percentile bootstrap interval.

    Efron and Tibshirani, "An Introduction to the Bootstrap" (1993), chapter 13: resample the
    ``n`` pairs with replacement ``resamples`` times and take the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of the resampled coefficients.

    Args:
        x: ``(n,)`` values of the first variable.
        y: ``(n,)`` values of the second variable.
        method: ``"kendall"`` (tau-b), ``"pearson"`` or ``"spearman"``.
        resamples: number of bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the resampling; the same seed gives the same interval.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"Expected two 1-D arrays of equal length, but got shapes {x.shape} and {y.shape}.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("Expected finite values to correlate, but got NaN or infinity; drop those pairs first.")
    if resamples < 1:
        raise ValueError(f"Expected at least 1 bootstrap resample, but got {resamples}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Expected a confidence level in (0, 1), but got {confidence}.")

    n = len(x)
    if n < 2:
        return CorrelationEstimate(None, None, None, n, resamples, 0)
    point = float(correlation_rows(x[None, :], y[None, :], method)[0])

    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, size=(resamples, n))
    coefficients = correlation_rows(x[rows], y[rows], method)  # (resamples,)
    valid = coefficients[np.isfinite(coefficients)]
    if valid.size == 0:
        low = high = None
    else:
        low = float(np.quantile(valid, (1 - confidence) / 2))
        high = float(np.quantile(valid, (1 + confidence) / 2))
    return CorrelationEstimate(
        value=point if np.isfinite(point) else None,
        low=low,
        high=high,
        n=n,
        resamples=resamples,
        valid_resamples=int(valid.size),
    )


def bootstrap_seed(seed: int, *keys: object) -> int:
    """Return the resampling seed of one coefficient, derived from the study seed and its keys."""
    return derive_seed(seed, "bootstrap", *keys) % 2**32


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        coefficient = (x * y).sum(axis=1) / denominator
    # Exactly tied rows give 0/0; clip rounding excursions such as 1.0000000000000002.
    return np.where(denominator > 0, np.clip(coefficient, -1.0, 1.0), np.nan)


def _kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # tau_b = (concordant - discordant) / sqrt((pairs untied in x) (pairs untied in y)),
    # Kendall, "The treatment of ties in ranking problems", Biometrika 33 (1945).
    n = x.shape[1]
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    sign_x = np.sign(x[:, :, None] - x[:, None, :])[:, upper]  # (B, n (n - 1) / 2)
    sign_y = np.sign(y[:, :, None] - y[:, None, :])[:, upper]
    numerator = (sign_x * sign_y).sum(axis=1)
    denominator = np.sqrt(np.count_nonzero(sign_x, axis=1) * np.count_nonzero(sign_y, axis=1).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        coefficient = numerator / denominator
    return np.where(denominator > 0, coefficient, np.nan)
