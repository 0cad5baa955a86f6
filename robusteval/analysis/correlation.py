"""Rank correlations with seeded bootstrap intervals, and AUROC.

Spearman's rho is the Pearson correlation of average ranks; Kendall's tau is tau-b (ties
corrected), as ``scipy.stats.kendalltau`` computes it. Intervals are bootstrap percentile
intervals: the samples are resampled with replacement, the coefficient is recomputed on each
resample, and the 2.5% and 97.5% quantiles of the finite values bound the 95% interval.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


class BootstrapInterval(NamedTuple):
    """Percentile interval ``[lower, upper]`` and the number of resamples with a finite value."""

    lower: float | None
    upper: float | None
    valid_resamples: int


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return Spearman's rho along the last axis; ``x`` and ``y`` are ``(..., n)``.

    NaN where either row is constant, as for ``scipy.stats.spearmanr``.
    """
    ranks_x = stats.rankdata(x, axis=-1)
    ranks_y = stats.rankdata(y, axis=-1)
    centered_x = ranks_x - ranks_x.mean(axis=-1, keepdims=True)
    centered_y = ranks_y - ranks_y.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((centered_x**2).sum(axis=-1) * (centered_y**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (centered_x * centered_y).sum(axis=-1) / denominator
    return np.where(denominator > 0, np.clip(rho, -1.0, 1.0), np.nan)


def kendall(x: np.ndarray, y: np.ndarray) -> float:
    """Return Kendall's tau-b of two ``(n,)`` arrays; NaN where either is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


def _percentile_interval(values: np.ndarray) -> BootstrapInterval:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return BootstrapInterval(None, None, 0)
    tail = (1 - CONFIDENCE) / 2 * 100
    lower, upper = np.percentile(finite, [tail, 100 - tail])
    return BootstrapInterval(float(lower), float(upper), int(finite.size))


def bootstrap_indices(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``(resamples, n)`` row indices drawn with replacement."""
    return rng.integers(0, n, size=(resamples, n))


def bootstrap_spearman(x: np.ndarray, y: np.ndarray, indices: np.ndarray) -> BootstrapInterval:
    """Return the percentile interval of Spearman's rho over the resamples ``indices``."""
    return _percentile_interval(spearman(x[indices], y[indices]))


# Up to this many samples, Kendall's tau-b of all resamples comes from pairwise sign matrices,
# which need O(n^2) memory per resample. Above it, scipy runs once per resample.
PAIRWISE_KENDALL_MAX_SAMPLES = 300


def kendall_rows(x: np.ndarray, y: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Return Kendall's tau-b of each row pair of ``(R, n)`` arrays; NaN where a row is constant.

    tau-b = sum_ij s_x s_y / sqrt(sum_ij s_x^2 sum_ij s_y^2) with s = sign of pairwise
    differences, summed over all ordered pairs: the factor 2 cancels.
    """
    values = np.empty(x.shape[0], dtype=np.float64)
    for first in range(0, x.shape[0], chunk):
        rows = slice(first, first + chunk)
        signs_x = np.sign(x[rows, :, None] - x[rows, None, :])  # (r, n, n)
        signs_y = np.sign(y[rows, :, None] - y[rows, None, :])
        numerator = (signs_x * signs_y).sum(axis=(1, 2))
        denominator = np.sqrt(np.abs(signs_x).sum(axis=(1, 2)) * np.abs(signs_y).sum(axis=(1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            values[rows] = np.where(denominator > 0, numerator / denominator, np.nan)
    return values


def bootstrap_kendall(x: np.ndarray, y: np.ndarray, indices: np.ndarray) -> BootstrapInterval:
    """Return the percentile interval of Kendall's tau-b over the resamples ``indices``."""
    if x.size <= PAIRWISE_KENDALL_MAX_SAMPLES:
        values = kendall_rows(x[indices], y[indices])
    else:
        values = np.array([kendall(x[row], y[row]) for row in indices], dtype=np.float64)
    return _percentile_interval(values)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Return the area under the ROC curve of ``scores`` for the positive ``labels``.

    Computed as the Mann-Whitney statistic: the probability that a random positive scores
    higher than a random negative, ties counting one half. ``None`` when one class is missing.
    """
    labels = np.asarray(labels, dtype=bool)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = stats.rankdata(scores)
    rank_sum = float(ranks[labels].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
