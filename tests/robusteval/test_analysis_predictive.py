"""Predictive validity recomputed from per-sample records with scipy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from robusteval.analysis import predictive_validity, rank_scores
from robusteval.results import NormPair, SampleRecord, TangentShiftRecord

EPSILONS = {"l2": [0.2, 0.5, 1.0], "linf": [0.05, 0.1]}


def _records(count: int = 40, seed: int = 0) -> list[SampleRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        robustness = rng.gamma(2.0, 0.3)
        region = robustness * rng.uniform(0.1, 0.5)
        l2 = robustness * rng.uniform(0.8, 1.2)
        linf = l2 / 6 * rng.uniform(0.8, 1.2)
        correct = index % 9 != 0
        records.append(
            SampleRecord(
                index=index,
                label=0,
                prediction=0 if correct else 1,
                correct=correct,
                tangent_sensitivity=[float(1 / robustness + rng.normal(0, 0.3)), float(rng.uniform(1, 2))],
                region_distance=NormPair(l2=region, linf=region / 5),
                linear_decision_distance=NormPair(l2=robustness, linf=robustness / 5),
                certified_radius=NormPair(l2=region, linf=region / 5),
                min_adversarial_distance=NormPair(l2=None if index % 7 == 3 else l2, linf=linf),
                logit_margin=float(robustness * 3 + rng.normal(0, 0.5)),
                input_gradient_norm=float(rng.uniform(1, 3)),
                robust={
                    "l2": [bool(correct and l2 > eps) for eps in EPSILONS["l2"]],
                    "linf": [bool(correct and linf > eps) for eps in EPSILONS["linf"]],
                },
                weight_noise_flip_probability={"0.05": float(rng.uniform()), "0.1": float(rng.uniform())},
                adversarial_weight_radius=None,
                tangent_shift=TangentShiftRecord(epsilon=0.1, achieved=float(rng.uniform()), bound=1.0, crossed_region=False),
            )
        )
    return records


def _entry(results: list[dict], score: str, target: str) -> dict:
    matches = [entry for entry in results if entry["score"] == score and entry["target"] == target]
    assert len(matches) == 1
    return matches[0]


def test_coefficients_match_scipy_recomputation() -> None:
    records = _records()
    results = predictive_validity(records, epsilons=EPSILONS, seed=3, resamples=200)
    correct = [record for record in records if record.correct]

    pairs = [
        ("tangent_sensitivity", "min_adversarial_distance_l2",
         lambda r: r.tangent_sensitivity[r.prediction], lambda r: r.min_adversarial_distance.l2),
        ("logit_margin", "min_adversarial_distance_linf",
         lambda r: r.logit_margin, lambda r: r.min_adversarial_distance.linf),
        ("certified_radius_l2", "min_adversarial_distance_l2",
         lambda r: r.certified_radius.l2, lambda r: r.min_adversarial_distance.l2),
        ("mean_tangent_sensitivity", "weight_noise_flip_probability@0.1",
         lambda r: np.mean(r.tangent_sensitivity), lambda r: r.weight_noise_flip_probability["0.1"]),
        ("region_distance_linf", "tangent_shift_achieved",
         lambda r: r.region_distance.linf, lambda r: r.tangent_shift.achieved),
    ]
    for score, target, read_score, read_target in pairs:
        kept = [record for record in correct if read_target(record) is not None]
        x = np.array([read_score(record) for record in kept])
        y = np.array([read_target(record) for record in kept])
        entry = _entry(results, score, target)

        assert entry["n"] == len(kept)
        assert entry["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert entry["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert entry["spearman_ci"][0] <= entry["spearman_ci"][1]


def test_expected_signs_and_strong_scores() -> None:
    results = predictive_validity(_records(), epsilons=EPSILONS, seed=3, resamples=100)

    margin = _entry(results, "logit_margin", "min_adversarial_distance_l2")
    tangent = _entry(results, "tangent_sensitivity", "min_adversarial_distance_l2")
    assert margin["expected_sign"] == 1
    assert tangent["expected_sign"] == -1
    assert margin["spearman"] > 0.5
    assert tangent["spearman"] < -0.3
    assert _entry(results, "tangent_sensitivity", "weight_noise_flip_probability@0.05")["expected_sign"] == 1


def test_norms_are_not_mixed() -> None:
    results = predictive_validity(_records(), epsilons=EPSILONS, seed=3, resamples=20)
    pairs = {(entry["score"], entry["target"]) for entry in results}

    assert ("region_distance_l2", "min_adversarial_distance_l2") in pairs
    assert ("region_distance_l2", "min_adversarial_distance_linf") not in pairs
    assert ("region_distance_l2", "tangent_shift_achieved") in pairs


def test_auroc_matches_sklearn() -> None:
    records = _records()
    results = predictive_validity(records, epsilons=EPSILONS, seed=3, resamples=20)
    correct = [record for record in records if record.correct]
    scores = np.array([record.logit_margin for record in correct])

    rows = _entry(results, "logit_margin", "min_adversarial_distance_l2")["auroc"]

    assert [row["epsilon"] for row in rows] == EPSILONS["l2"]
    for position, row in enumerate(rows):
        labels = np.array([record.robust["l2"][position] for record in correct])
        if labels.all() or not labels.any():
            assert row["auroc"] is None
        else:
            assert row["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert row["robust"] == int(labels.sum())


def test_missing_target_is_skipped_with_reason() -> None:
    results = predictive_validity(_records(), epsilons=EPSILONS, seed=3, resamples=20)
    entry = _entry(results, "logit_margin", "adversarial_weight_radius")

    assert entry["spearman"] is None
    assert entry["n"] == 0
    assert "only 0 samples" in entry["skipped"]


def test_bootstrap_reproducible_with_seed() -> None:
    records = _records()
    first = predictive_validity(records, epsilons=EPSILONS, seed=5, resamples=100)
    second = predictive_validity(records, epsilons=EPSILONS, seed=5, resamples=100)
    other = predictive_validity(records, epsilons=EPSILONS, seed=6, resamples=100)

    assert first == second
    assert _entry(first, "logit_margin", "min_adversarial_distance_l2")["spearman_ci"] != _entry(
        other, "logit_margin", "min_adversarial_distance_l2"
    )["spearman_ci"]


def test_rank_scores_orders_by_absolute_spearman() -> None:
    results = predictive_validity(_records(), epsilons=EPSILONS, seed=3, resamples=20)
    ranked = rank_scores(results)

    assert len(ranked) == len(results)
    first_target = [entry for entry in ranked if entry["target"] == "min_adversarial_distance_l2"]
    magnitudes = [abs(entry["spearman"]) for entry in first_target if entry["spearman"] is not None]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert [entry["rank"] for entry in first_target if entry["rank"] is not None] == list(range(1, len(magnitudes) + 1))
    margin = next(entry for entry in first_target if entry["score"] == "logit_margin")
    assert margin["sign_as_expected"] is True
    skipped = [entry for entry in ranked if entry["target"] == "adversarial_weight_radius"]
    assert all(entry["rank"] is None for entry in skipped)
