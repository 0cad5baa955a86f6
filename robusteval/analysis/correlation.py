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
# Values in one temporary array of the bootstrap computations, 8 MiB in float64. With whole
# (n, R) and (n, n) arrays, the analysis of 4,096 samples raised a run's peak memory by 360 MiB.
CHUNK_ELEMENTS = 2**20
# Largest sample count for which the Kendall resamples use matrix products. Up to it, float32
# products are exact. Above it, one O(n log n) scipy call per resample is faster: for 1,000
# resamples, 0.67 s against 0.92 s at 4,096 samples and 1.9 s against 24 s at 10,000.
MATRIX_KENDALL_LIMIT = 4096


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


def draw_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """Return how often each resample of ``indices`` ``(R, n)`` draws each of the ``n`` samples, ``(n, R)`` int32.

    Samples are rows, so that the rank computations below gather and add whole rows of ``R``
    values, which is several times faster than gathering columns of an ``(R, n)`` array.
    """
    resamples = indices.shape[0]
    flat = (indices * resamples + np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n * resamples).reshape(n, resamples).astype(np.int32)


def bootstrap_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Return the :func:`draw_counts` ``(n, resamples)`` of resamples drawn with replacement.

    The indices are drawn in groups of about :data:`CHUNK_ELEMENTS` values, so that the
    ``(resamples, n)`` index array of a large ``n`` never exists at once.
    """
    counts = np.empty((n, resamples), dtype=np.int32)
    group = max(1, CHUNK_ELEMENTS // max(1, n))
    for start in range(0, resamples, group):
        size = min(group, resamples - start)
        counts[:, start:start + size] = draw_counts(bootstrap_indices(n, size, rng), n)
    return counts


def _centered_resampled_ranks(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Return the average rank minus ``(n + 1) / 2`` of every drawn copy of each sample, ``(n, R)``.

    In a resample drawing sample ``j`` ``counts[j, r]`` times, the copies of ``j`` and of every
    sample equal to it form one tie group. Its rank is the number of draws below the group plus
    half of (its size + 1), what ``scipy.stats.rankdata`` gives the resample, found from one
    cumulative sum over the samples in sorted order instead of a sort per resample. The mean rank
    of ``n`` draws is always ``(n + 1) / 2``.
    """
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new_group = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    starts = np.flatnonzero(new_group)
    group_of = np.empty(values.size, dtype=np.intp)
    group_of[order] = np.cumsum(new_group) - 1
    group_sizes = counts[order]  # (groups, R)
    if starts.size < values.size:
        group_sizes = np.add.reduceat(group_sizes, starts, axis=0)
    # below + (size + 1) / 2 - (n + 1) / 2, with below = cumsum - size, in place.
    ranks = np.cumsum(group_sizes, axis=0)
    group_sizes *= 0.5
    ranks -= group_sizes
    ranks -= values.size / 2
    return ranks[group_of]


def spearman_resampled(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Return Spearman's rho ``(R,)`` of every resample, given its :func:`draw_counts` ``counts`` ``(n, R)``.

    Equal to :func:`spearman` of ``x[indices], y[indices]`` for the indices behind ``counts``:
    each sample's rank pair enters the Pearson sums once per draw. NaN where a resample draws one
    value of ``x`` or ``y`` only. Resamples are processed in groups of about
    :data:`CHUNK_ELEMENTS` values, so that the temporaries stay small for large ``n``.
    """
    group = max(1, CHUNK_ELEMENTS // max(1, x.size))
    return np.concatenate([
        _spearman_columns(x, y, counts[:, start:start + group]) for start in range(0, counts.shape[1], group)
    ])


def _spearman_columns(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    counts = counts.astype(np.float64)
    centered_x = _centered_resampled_ranks(x, counts)
    centered_y = _centered_resampled_ranks(y, counts)
    weighted_x = counts * centered_x
    sum_xx = np.einsum("ij,ij->j", weighted_x, centered_x)
    sum_xy = np.einsum("ij,ij->j", weighted_x, centered_y)
    centered_y *= centered_y
    sum_yy = np.einsum("ij,ij->j", counts, centered_y)
    denominator = np.sqrt(sum_xx * sum_yy)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = sum_xy / denominator
    return np.where(denominator > 0, np.clip(rho, -1.0, 1.0), np.nan)


def bootstrap_spearman(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> BootstrapInterval:
    """Return the percentile interval of Spearman's rho over the resamples whose :func:`draw_counts` are ``counts``."""
    return _percentile_interval(spearman_resampled(x, y, counts))


def kendall_resampled(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Return Kendall's tau-b ``(R,)`` of every resample, given its :func:`draw_counts` ``counts`` ``(n, R)``.

    A resample is described by how often it draws each sample, ``w`` (a column of ``counts``).
    With s the sign of pairwise differences, tau-b = sum s_x s_y / sqrt(sum s_x^2 sum s_y^2)
    over all ordered pairs. Over a resample's ordered pairs, those sums become
    quadratic forms ``w^T M w`` with the ``(n, n)`` matrices ``M = s_x * s_y``, ``|s_x|`` and
    ``|s_y|`` of the original samples: two copies of one sample are a tie and contribute 0, as
    the zero diagonal of ``M`` says. All resamples then cost three matrix products instead
    of R separate O(n log n) computations. The matrices are built a block of rows at a time,
    about :data:`CHUNK_ELEMENTS` values each, so that memory stays linear in ``n``. Each entry of
    ``M w`` is an integer of magnitude at most n, and each sum below n^2 < 2^24 for n <= 4096,
    so float32 products are exact there. Larger samples, where the products would cost
    O(n^2) per resample in float64, compute each resample with scipy's O(n log n) algorithm.
    """
    n = x.size
    if n > MATRIX_KENDALL_LIMIT:
        return _kendall_each_resample(x, y, counts)
    weights = counts.astype(np.float32)
    # Dense ranks order the samples as x and y do and are exact in float32, so the signs of their
    # differences need no float64 temporaries.
    ranks_x: np.ndarray = np.unique(x, return_inverse=True)[1].astype(np.float32)
    ranks_y: np.ndarray = np.unique(y, return_inverse=True)[1].astype(np.float32)
    sums = np.zeros((3, counts.shape[1]), dtype=np.float64)  # numerator, x pairs, y pairs
    block = max(1, CHUNK_ELEMENTS // n)
    for start in range(0, n, block):
        rows = slice(start, start + block)
        signs_x = np.sign(ranks_x[rows, None] - ranks_x[None, :])  # (block, n)
        signs_y = np.sign(ranks_y[rows, None] - ranks_y[None, :])
        for index, matrix in enumerate((signs_x * signs_y, np.abs(signs_x), np.abs(signs_y))):
            sums[index] += ((matrix @ weights) * weights[rows]).sum(axis=0, dtype=np.float64)
    numerator, pairs_x, pairs_y = sums
    denominator = np.sqrt(pairs_x * pairs_y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, np.clip(numerator / denominator, -1.0, 1.0), np.nan)


def _kendall_each_resample(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Return Kendall's tau-b of every resample ``(R,)``, one scipy call per resample."""
    samples = np.arange(x.size)
    values = np.empty(counts.shape[1], dtype=np.float64)
    for resample in range(counts.shape[1]):
        drawn = np.repeat(samples, counts[:, resample])
        values[resample] = kendall(x[drawn], y[drawn])
    return values


def bootstrap_kendall(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> BootstrapInterval:
    """Return the percentile interval of Kendall's tau-b over the resamples whose :func:`draw_counts` are ``counts``."""
    return _percentile_interval(kendall_resampled(x, y, counts))


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
