"""compare_results: alignment, table rows, McNemar's exact test and paired bootstrap intervals."""

from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np
import pytest

from robusteval.compare import compare_results, mcnemar_exact, paired_bootstrap_difference
from robusteval.results import (
    DataInfo,
    EnvironmentInfo,
    ModelInfo,
    NormPair,
    Results,
    SampleRecord,
    ThreatModelResult,
)

EPSILONS = [0.05, 0.1]


def make_results(name: str, distances: list[float | None], *, indices: list[int] | None = None,
                 epsilons: list[float] | None = None, seed: int = 0) -> Results:
    """Results whose per-sample robustness follows ``distances`` (None: never fooled, negative: misclassified)."""
    grid = epsilons or EPSILONS
    records = []
    for position, distance in enumerate(distances):
        correct = distance is None or distance >= 0
        robust = [correct and (distance is None or distance > eps) for eps in grid]
        records.append(SampleRecord(
            index=(indices or list(range(len(distances))))[position], label=0, prediction=0 if correct else 1,
            correct=correct, tangent_sensitivity=[1.0 + position, 0.0], region_distance=NormPair(),
            linear_decision_distance=NormPair(), certified_radius=NormPair(),
            min_adversarial_distance=NormPair(linf=distance if correct else None), robust={"linf": robust},
        ))
    accuracy = [sum(r.robust["linf"][k] for r in records) / len(records) for k in range(len(grid))]
    return Results(
        model=ModelInfo(path=f"/models/{name}.pt", sha256="ab" * 32, format="torchscript", parameter_count=10,
                        piecewise_linear=True),
        data=DataInfo(name="digits", sha256="cd" * 32, num_samples=len(records), input_shape=[64], input_bounds=[0.0, 1.0]),
        environment=EnvironmentInfo(robusteval="0.1.0", torch="2", foolbox=None, torchattacks=None, python="3.11",
                                    device="cpu", seed=seed),
        clean_accuracy=sum(r.correct for r in records) / len(records),
        threat_models=[ThreatModelResult(norm="linf", epsilons=grid, robust_accuracy=accuracy, attacks=["pgd"])],
        samples=records,
    )


FIRST = [0.02, 0.07, 0.2, None, -1.0, 0.12, 0.03, None]
SECOND = [0.06, 0.08, 0.3, None, 0.04, 0.01, 0.2, None]


def exact_mcnemar_by_hand(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(("b", "c"), [(7, 2), (0, 0), (5, 5), (0, 6), (12, 1)])
def test_mcnemar_matches_binomial_sum(b: int, c: int) -> None:
    first = [True] * b + [False] * c + [True, False, False]
    second = [False] * b + [True] * c + [True, False, False]

    only_first, only_second, p_value = mcnemar_exact(first, second)

    assert (only_first, only_second) == (b, c)
    assert p_value == pytest.approx(exact_mcnemar_by_hand(b, c), rel=1e-12)


def test_mcnemar_known_value() -> None:
    # b = 7, c = 2: p = 2 * (C(9,0) + C(9,1) + C(9,2)) / 2**9 = 92 / 512.
    assert mcnemar_exact([True] * 7 + [False] * 2, [False] * 7 + [True] * 2)[2] == pytest.approx(92 / 512, rel=1e-12)


def test_rows_equal_single_model_numbers() -> None:
    first, second = make_results("plain", FIRST), make_results("adv", SECOND)
    comparison = compare_results([first, second], seed=3, resamples=500)
    plain, adv = comparison.rows

    assert comparison.labels == ["plain.pt", "adv.pt"]
    assert plain.clean_accuracy == first.clean_accuracy == 7 / 8
    assert plain.robust_accuracy == {"linf": first.threat_models[0].robust_accuracy}
    assert adv.robust_accuracy == {"linf": second.threat_models[0].robust_accuracy}
    # Misclassified samples count 0, never-fooled ones inf.
    assert plain.median_min_adversarial_distance["linf"] == statistics.median(
        [0.02, 0.07, 0.2, math.inf, 0.0, 0.12, 0.03, math.inf]
    )
    assert adv.mean_tangent_sensitivity == pytest.approx(sum(1.0 + i for i in range(8)) / 8)


def test_mcnemar_counts_from_robust_flags() -> None:
    comparison = compare_results([make_results("a", FIRST), make_results("b", SECOND)], seed=0, resamples=200)
    tests = {(test.outcome, test.epsilon): test for test in comparison.mcnemar}

    # At linf 0.05: first robust at samples 1, 2, 3, 5, 7; second at 0, 1, 2, 3, 6, 7.
    at_005 = tests[("robust", 0.05)]
    assert (at_005.only_first, at_005.only_second) == (1, 2)
    assert at_005.p_value == pytest.approx(exact_mcnemar_by_hand(1, 2))
    clean = tests[("clean", None)]
    assert (clean.only_first, clean.only_second) == (0, 1)


def test_bootstrap_identical_models_is_zero() -> None:
    results = make_results("a", FIRST)
    comparison = compare_results([results, dataclasses.replace(results, model=dataclasses.replace(results.model, path="b.pt"))],
                                 seed=0, resamples=300)

    for item in comparison.bootstrap:
        if item.statistic == "robust_accuracy":
            assert (item.difference, item.low, item.high) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_covers_difference() -> None:
    generator = np.random.default_rng(0)
    first = generator.normal(0.0, 1.0, size=400)
    second = first + 0.5
    difference, low, high, note = paired_bootstrap_difference(
        first, second, "mean", resamples=500, confidence=0.95, generator=generator
    )

    # A constant paired shift has zero bootstrap variance.
    assert note is None
    assert difference == pytest.approx(0.5)
    assert low == pytest.approx(0.5)
    assert high == pytest.approx(0.5)


def test_bootstrap_undefined_when_medians_infinite() -> None:
    first = np.array([math.inf, math.inf, 0.1])
    difference, low, high, note = paired_bootstrap_difference(
        first, first.copy(), "median", resamples=200, confidence=0.95, generator=np.random.default_rng(0)
    )

    assert difference is None
    assert low is None and high is None
    assert note is not None and "undefined" in note


def test_bootstrap_is_seeded() -> None:
    pair = [make_results("a", FIRST), make_results("b", SECOND)]

    assert compare_results(pair, seed=5, resamples=200).bootstrap == compare_results(pair, seed=5, resamples=200).bootstrap


def test_samples_are_aligned_by_index() -> None:
    first = make_results("a", FIRST)
    reordered = make_results("b", SECOND[::-1], indices=list(range(8))[::-1])
    straight = make_results("b", SECOND)

    assert compare_results([first, reordered], seed=1, resamples=200).mcnemar == \
        compare_results([first, straight], seed=1, resamples=200).mcnemar


def test_different_samples_are_rejected() -> None:
    first = make_results("a", FIRST)
    shifted = make_results("b", SECOND, indices=list(range(2, 10)))

    with pytest.raises(ValueError) as error:
        compare_results([first, shifted], seed=0)

    message = str(error.value)
    assert "to be evaluated on the same samples" in message
    assert "2 rows of the first are missing from the second (first: [0, 1])" in message


def test_different_data_is_rejected() -> None:
    first = make_results("a", FIRST)
    other = make_results("b", SECOND)
    other = dataclasses.replace(other, data=dataclasses.replace(other.data, sha256="ef" * 32))

    with pytest.raises(ValueError, match="on the same data"):
        compare_results([first, other], seed=0)


def test_differing_settings_are_noted() -> None:
    first = make_results("a", FIRST)
    second = make_results("b", SECOND, epsilons=[0.05, 0.2], seed=9)
    comparison = compare_results([first, second], seed=0, resamples=200)

    assert comparison.epsilons == {"linf": [0.05]}
    assert any("only the shared epsilons [0.05]" in note for note in comparison.notes)
    assert any("different seeds" in note for note in comparison.notes)


def test_needs_two_results() -> None:
    with pytest.raises(ValueError, match="at least two results"):
        compare_results([make_results("a", FIRST)], seed=0)
