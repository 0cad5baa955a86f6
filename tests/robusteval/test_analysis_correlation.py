"""Rank correlations, bootstrap intervals and AUROC against scipy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from robusteval.analysis import auroc, bootstrap_kendall, bootstrap_spearman, kendall, spearman
from robusteval.analysis import correlation
from robusteval.analysis.correlation import bootstrap_counts, bootstrap_indices, draw_counts, kendall_resampled, spearman_resampled


def _correlated_data(seed: int, n: int = 60, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.6 * x + rng.normal(size=n)
    if ties:
        x, y = np.round(x, 0), np.round(y, 0)
    return x, y


def _counts(n: int, resamples: int, *, seed: int) -> np.ndarray:
    return draw_counts(bootstrap_indices(n, resamples, np.random.default_rng(seed)), n)


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, True), (2, False), (3, True)])
def test_spearman_matches_scipy(seed: int, ties: bool) -> None:
    x, y = _correlated_data(seed, ties=ties)
    assert float(spearman(x, y)) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_batched_rows_match_scipy() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 30)), rng.normal(size=(5, 30))
    batched = spearman(x, y)
    for row in range(5):
        assert batched[row] == pytest.approx(stats.spearmanr(x[row], y[row]).statistic, abs=1e-12)


def test_spearman_constant_is_nan() -> None:
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, True)])
def test_kendall_matches_scipy(seed: int, ties: bool) -> None:
    x, y = _correlated_data(seed, ties=ties)
    assert kendall(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_bootstrap_interval_contains_estimate() -> None:
    x, y = _correlated_data(5, n=80)
    counts = _counts(x.size, 1000, seed=7)
    spearman_interval = bootstrap_spearman(x, y, counts)
    kendall_interval = bootstrap_kendall(x, y, counts)

    assert spearman_interval.lower < float(spearman(x, y)) < spearman_interval.upper
    assert kendall_interval.lower < kendall(x, y) < kendall_interval.upper
    assert spearman_interval.valid_resamples == 1000
    assert 0.1 < spearman_interval.upper - spearman_interval.lower < 0.8


def test_bootstrap_reproducible_with_seed() -> None:
    x, y = _correlated_data(6)
    first = bootstrap_spearman(x, y, _counts(x.size, 300, seed=11))
    second = bootstrap_spearman(x, y, _counts(x.size, 300, seed=11))
    other = bootstrap_spearman(x, y, _counts(x.size, 300, seed=12))

    assert first == second
    assert first != other


def test_bootstrap_interval_matches_percentiles() -> None:
    x, y = _correlated_data(8, n=25)
    indices = bootstrap_indices(x.size, 200, np.random.default_rng(3))
    values = np.array([stats.spearmanr(x[row], y[row]).statistic for row in indices])
    values = values[np.isfinite(values)]

    interval = bootstrap_spearman(x, y, draw_counts(indices, x.size))

    assert interval.lower == pytest.approx(np.percentile(values, 2.5), abs=1e-12)
    assert interval.upper == pytest.approx(np.percentile(values, 97.5), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(50) < 0.4
    scores = np.round(rng.normal(size=50) + labels, 1)  # rounding creates ties

    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_one_class_is_none() -> None:
    assert auroc(np.arange(4.0), np.ones(4, dtype=bool)) is None


def _scipy_spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Return scipy's Spearman rho, or NaN for a constant column as :func:`spearman` gives."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


@pytest.mark.parametrize(
    ("resampled", "reference"),
    [(kendall_resampled, kendall), (spearman_resampled, _scipy_spearman)],
    ids=["kendall", "spearman"],
)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [2, 40, 301])
def test_resampled_coefficient_matches_scipy(resampled, reference, ties: bool, n: int) -> None:
    x, y = _correlated_data(9, n=n, ties=ties)
    indices = bootstrap_indices(x.size, 70, np.random.default_rng(2))

    batched = resampled(x, y, draw_counts(indices, x.size))

    for row, value in zip(indices, batched):
        expected = reference(x[row], y[row])
        if np.isnan(expected):
            assert np.isnan(value)
        else:
            assert value == pytest.approx(expected, abs=1e-12)


def test_draw_counts_count_each_row() -> None:
    indices = np.array([[0, 0, 2], [1, 2, 1]])

    counts = draw_counts(indices, 3)

    np.testing.assert_array_equal(counts, [[2, 0], [0, 2], [1, 1]])


def test_bootstrap_kendall_percentiles_match_scipy() -> None:
    x, y = _correlated_data(10, n=120)
    indices = bootstrap_indices(x.size, 200, np.random.default_rng(4))
    interval = bootstrap_kendall(x, y, draw_counts(indices, x.size))
    per_resample = np.array([kendall(x[row], y[row]) for row in indices])

    assert interval.lower == pytest.approx(np.percentile(per_resample, 2.5), abs=1e-12)
    assert interval.upper == pytest.approx(np.percentile(per_resample, 97.5), abs=1e-12)
    assert interval.valid_resamples == 200


def test_chunked_resamples_equal_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _correlated_data(13, n=50, ties=True)
    counts = _counts(x.size, 40, seed=6)
    whole_spearman = spearman_resampled(x, y, counts)
    whole_kendall = kendall_resampled(x, y, counts)

    # 120 values per chunk: Spearman groups of 2 resamples, Kendall blocks of 2 rows.
    monkeypatch.setattr(correlation, "CHUNK_ELEMENTS", 120)

    np.testing.assert_array_equal(spearman_resampled(x, y, counts), whole_spearman)
    np.testing.assert_array_equal(kendall_resampled(x, y, counts), whole_kendall)


def test_bootstrap_counts_sum_to_sample_count() -> None:
    counts = bootstrap_counts(37, 500, np.random.default_rng(8))

    assert counts.shape == (37, 500)
    assert (counts.sum(axis=0) == 37).all()


def test_bootstrap_counts_in_one_group_match_indices() -> None:
    counts = bootstrap_counts(20, 30, np.random.default_rng(9))

    expected = draw_counts(bootstrap_indices(20, 30, np.random.default_rng(9)), 20)
    np.testing.assert_array_equal(counts, expected)


def test_kendall_each_resample_equals_matrix_products(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _correlated_data(14, n=60, ties=True)
    counts = _counts(x.size, 50, seed=7)
    by_products = kendall_resampled(x, y, counts)

    monkeypatch.setattr(correlation, "MATRIX_KENDALL_LIMIT", 10)
    one_by_one = kendall_resampled(x, y, counts)

    np.testing.assert_allclose(one_by_one, by_products, rtol=0, atol=1e-12)
