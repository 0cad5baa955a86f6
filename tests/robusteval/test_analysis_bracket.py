"""Certified-versus-empirical bracket on hand-built records with known results."""

from __future__ import annotations

import pytest

from robusteval.analysis import certified_bracket
from robusteval.results import NormPair, SampleRecord


def _record(index: int, certified: float | None, adversarial: float | None, correct: bool = True) -> SampleRecord:
    return SampleRecord(
        index=index,
        label=0,
        prediction=0 if correct else 1,
        correct=correct,
        tangent_sensitivity=[1.0, 1.0],
        region_distance=NormPair(l2=certified, linf=certified),
        linear_decision_distance=NormPair(l2=certified, linf=certified),
        certified_radius=NormPair(l2=certified, linf=certified),
        min_adversarial_distance=NormPair(l2=adversarial, linf=None),
        certificate_exact={"l2": index % 2 == 0},
    )


def test_bracket_counts_and_gaps() -> None:
    records = [
        _record(0, 0.5, 0.5),  # exact
        _record(1, 0.5, 0.504),  # exact within 1%
        _record(2, 0.2, 0.6),  # gap 0.4
        _record(3, 0.9, 0.6),  # violation
        _record(4, 0.3, None),  # attacks failed
        _record(5, 0.1, 0.05, correct=False),  # misclassified: ignored
    ]

    section = certified_bracket(records)
    l2 = section["l2"]

    assert l2["certified"] == 5
    assert l2["attacked"] == 4
    assert l2["exact"] == 2
    assert l2["exact_share"] == pytest.approx(0.5)
    assert l2["violations"] == 1
    assert l2["violation_indices"] == [3]
    assert l2["no_adversarial"] == 1
    assert l2["gap_quantiles"]["0"] == pytest.approx(-0.3)
    assert l2["gap_quantiles"]["1"] == pytest.approx(0.4)
    assert l2["gap_quantiles"]["0.5"] == pytest.approx((0.0 + 0.004) / 2)
    assert l2["certificate_exact_share"] == pytest.approx(3 / 5)


def test_bracket_without_adversarial_examples() -> None:
    section = certified_bracket([_record(0, 0.5, None)])
    linf = section["linf"]

    assert linf["certified"] == 1
    assert linf["attacked"] == 0
    assert linf["exact_share"] is None
    assert linf["gap_quantiles"] is None
    assert linf["no_adversarial"] == 1
