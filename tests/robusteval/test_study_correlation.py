"""Vectorized correlation coefficients and bootstrap intervals against scipy and a plain loop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from robusteval.zoo.correlation import bootstrap_correlation, correlation_rows

SCIPY = {"kendall": stats.kendalltau, "pearson": stats.pearsonr, "spearman": stats.spearmanr}


def _data_with_ties(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    x[1:3] = x[0]
    y[4:6] = y[3]
    return x, y


@pytest.mark.parametrize("method", ["kendall", "pearson", "spearman"])
@pytest.mark.parametrize("n", [4, 11, 40])
def test_point_matches_scipy(method: str, n: int) -> None:
    x, y = _data_with_ties(n)
    ours = correlation_rows(x[None, :], y[None, :], method)[0]
    assert ours == pytest.approx(SCIPY[method](x, y)[0], abs=1e-12)


@pytest.mark.parametrize("method", ["kendall", "pearson", "spearman"])
def test_constant_variable_undefined(method: str) -> None:
    values = correlation_rows(np.ones((1, 5)), np.arange(5.0)[None, :], method)
    assert np.isnan(values[0])


@pytest.mark.parametrize("method", ["kendall", "pearson", "spearman"])
def test_bootstrap_matches_plain_loop(method: str) -> None:
    x, y = _data_with_ties(9)
    estimate = bootstrap_correlation(x, y, method, resamples=300, confidence=0.9, seed=7)

    # The same resamples, each scored by scipy one at a time.
    rows = np.random.default_rng(7).integers(0, 9, size=(300, 9))
    coefficients = []
    for row in rows:
        if np.ptp(x[row]) == 0 or np.ptp(y[row]) == 0:
            continue
        coefficients.append(SCIPY[method](x[row], y[row])[0])
    assert estimate.valid_resamples == len(coefficients)
    assert estimate.low == pytest.approx(np.quantile(coefficients, 0.05), abs=1e-12)
    assert estimate.high == pytest.approx(np.quantile(coefficients, 0.95), abs=1e-12)
    assert estimate.value == pytest.approx(SCIPY[method](x, y)[0], abs=1e-12)


def test_bootstrap_same_seed_same_interval() -> None:
    x, y = _data_with_ties(12)
    first = bootstrap_correlation(x, y, "kendall", resamples=200, confidence=0.95, seed=1)
    second = bootstrap_correlation(x, y, "kendall", resamples=200, confidence=0.95, seed=1)
    other = bootstrap_correlation(x, y, "kendall", resamples=200, confidence=0.95, seed=2)
    assert first == second
    assert (first.low, first.high) != (other.low, other.high)


def test_bootstrap_perfect_rank_agreement() -> None:
    x = np.arange(8.0)
    estimate = bootstrap_correlation(x, x**3, "kendall", resamples=100, confidence=0.95, seed=0)
    assert estimate.value == 1.0
    assert estimate.low == 1.0
    assert estimate.high == 1.0


def test_bootstrap_single_pair_undefined() -> None:
    estimate = bootstrap_correlation(np.array([1.0]), np.array([2.0]), "pearson", resamples=10, confidence=0.95, seed=0)
    assert estimate.value is None
    assert estimate.low is None
    assert estimate.valid_resamples == 0


@pytest.mark.parametrize(
    ("x", "y", "options", "message"),
    [
        (np.zeros(3), np.zeros(4), {}, "equal length"),
        (np.array([1.0, np.nan]), np.zeros(2), {}, "finite"),
        (np.zeros(3), np.zeros(3), {"resamples": 0}, "resample"),
        (np.zeros(3), np.zeros(3), {"confidence": 1.0}, "confidence"),
    ],
)
def test_bootstrap_rejects_bad_input(x: np.ndarray, y: np.ndarray, options: dict, message: str) -> None:
    arguments = {"resamples": 10, "confidence": 0.95, "seed": 0, **options}
    with pytest.raises(ValueError, match=message):
        bootstrap_correlation(x, y, "pearson", **arguments)


def test_unknown_method_rejected() -> None:
    with pytest.raises(ValueError, match="method"):
        correlation_rows(np.zeros((1, 3)), np.zeros((1, 3)), "cosine")  # type: ignore[arg-type]
