"""Predictive validity: how well does each cheap score rank the samples by measured robustness?

Every score is paired with every empirical target it can speak to (a score tied to a norm only
with targets of the same norm or without a norm). Only correctly classified samples enter,
because the robustness targets are defined for them alone, and a pair uses the samples where
both values are finite.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..results import SampleRecord
from ..seeding import derive_seed
from .correlation import auroc, bootstrap_counts, bootstrap_kendall, bootstrap_spearman, kendall, spearman

logger = logging.getLogger(__name__)

# Fewer finite pairs than this give rank correlations too noisy to report.
MIN_SAMPLES = 5

Extractor = Callable[[SampleRecord], float | None]


@dataclass(frozen=True)
class Quantity:
    """A per-sample value: its name, how to read it, its norm, and its direction.

    ``direction`` is +1 when larger values mean a more robust sample and -1 when they mean a
    less robust one, so a pair's expected correlation sign is the product of the directions.
    """

    name: str
    extract: Extractor
    norm: str | None
    direction: int


def _pair_value(attribute: str, norm: str) -> Extractor:
    return lambda record: getattr(getattr(record, attribute), norm)


def _predicted_tangent_sensitivity(record: SampleRecord) -> float | None:
    values = record.tangent_sensitivity
    return values[record.prediction] if 0 <= record.prediction < len(values) else None


def _mean_tangent_sensitivity(record: SampleRecord) -> float | None:
    return float(np.mean(record.tangent_sensitivity)) if record.tangent_sensitivity else None


def _flip_probability(key: str) -> Extractor:
    return lambda record: (record.weight_noise_flip_probability or {}).get(key)


def _tangent_shift_achieved(record: SampleRecord) -> float | None:
    return record.tangent_shift.achieved if record.tangent_shift is not None else None


SCORES: tuple[Quantity, ...] = (
    Quantity("tangent_sensitivity", _predicted_tangent_sensitivity, None, -1),
    Quantity("mean_tangent_sensitivity", _mean_tangent_sensitivity, None, -1),
    *(
        Quantity(f"{attribute}_{norm}", _pair_value(attribute, norm), norm, +1)
        for attribute in ("region_distance", "linear_decision_distance", "certified_radius")
        for norm in ("l2", "linf")
    ),
    Quantity("logit_margin", lambda record: record.logit_margin, None, +1),
    Quantity("input_gradient_norm", lambda record: record.input_gradient_norm, None, -1),
)


def _targets(samples: list[SampleRecord]) -> list[Quantity]:
    targets = [
        Quantity(f"min_adversarial_distance_{norm}", _pair_value("min_adversarial_distance", norm), norm, +1)
        for norm in ("l2", "linf")
    ]
    targets.append(Quantity("adversarial_weight_radius", lambda record: record.adversarial_weight_radius, None, +1))
    noise_keys = sorted({key for record in samples for key in (record.weight_noise_flip_probability or {})})
    for key in noise_keys:
        targets.append(Quantity(f"weight_noise_flip_probability@{key}", _flip_probability(key), None, -1))
    targets.append(Quantity("tangent_shift_achieved", _tangent_shift_achieved, None, -1))
    return targets


def _column(samples: list[SampleRecord], quantity: Quantity) -> np.ndarray:
    values = []
    for record in samples:
        value = quantity.extract(record)
        values.append(float(value) if value is not None else math.nan)
    return np.array(values, dtype=np.float64)


def _optional(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def predictive_validity(
    samples: list[SampleRecord], *, epsilons: Mapping[str, list[float]], seed: int, resamples: int = 1000
) -> list[dict[str, Any]]:
    """Correlate each score with each empirical robustness target across samples.

    Args:
        samples: Per-sample records; only those with ``correct`` set enter.
        epsilons: Norm -> epsilon grid, matching each record's ``robust[norm]`` list. For every
            score and norm, the AUROC of the score for "robust at epsilon" is computed per epsilon.
        seed: Seed of the bootstrap. Each pair draws from its own generator derived from
            ``seed`` and the pair's names, so adding pairs leaves the others unchanged.
        resamples: Bootstrap resamples per coefficient.

    Returns:
        One dict per (score, target) pair: ``score``, ``target``, ``n`` (samples used),
        ``spearman``, ``spearman_ci``, ``kendall``, ``kendall_ci`` (95% percentile intervals as
        ``[lower, upper]``), ``expected_sign`` (+1 when a good score correlates positively) and,
        for minimal adversarial distance targets, ``auroc`` per epsilon. The AUROC is of the raw
        score, so a score with expected sign -1 predicts well when its AUROC is near 0. A pair with
        fewer than 5 finite pairs or a constant column has ``skipped`` with the reason and
        ``None`` coefficients, so that the report can say why the pair is missing.
    """
    if resamples < 1:
        raise ValueError(f"Expected at least 1 bootstrap resample, but got {resamples}.")
    correct = [record for record in samples if record.correct]
    score_columns = {score.name: _column(correct, score) for score in SCORES}
    results: list[dict[str, Any]] = []

    for target in _targets(correct):
        target_column = _column(correct, target)
        for score in SCORES:
            if score.norm is not None and target.norm is not None and score.norm != target.norm:
                continue
            entry = _correlate(score_columns[score.name], target_column, score.name, target.name, seed, resamples)
            entry["expected_sign"] = score.direction * target.direction
            if target.name.startswith("min_adversarial_distance_") and target.norm is not None and target.norm in epsilons:
                entry["auroc"] = _auroc_per_epsilon(correct, score_columns[score.name], target.norm, epsilons[target.norm])
            results.append(entry)
    return results


# NOTE: a sample where no attack succeeded has no minimal adversarial distance and is left out
# of that target's pairs, although it is among the most robust. Correlations with that target
# therefore describe the attackable samples only.
def _correlate(
    score: np.ndarray, target: np.ndarray, score_name: str, target_name: str, seed: int, resamples: int
) -> dict[str, Any]:
    finite = np.isfinite(score) & np.isfinite(target)
    x, y = score[finite], target[finite]
    entry: dict[str, Any] = {
        "score": score_name,
        "target": target_name,
        "n": int(finite.sum()),
        "n_missing": int((~finite).sum()),
        "spearman": None,
        "spearman_ci": None,
        "kendall": None,
        "kendall_ci": None,
        "resamples": resamples,
    }
    if x.size < MIN_SAMPLES:
        entry["skipped"] = f"only {x.size} samples have finite values of both (at least {MIN_SAMPLES} needed)"
        return entry
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        constant = score_name if np.ptp(x) == 0 else target_name
        entry["skipped"] = f"{constant} is constant over the {x.size} samples, so ranks carry no information"
        return entry

    rng = np.random.default_rng(derive_seed(seed, "predictive", score_name, target_name))
    counts = bootstrap_counts(x.size, resamples, rng)
    spearman_interval = bootstrap_spearman(x, y, counts)
    kendall_interval = bootstrap_kendall(x, y, counts)
    entry["spearman"] = _optional(float(spearman(x, y)))
    entry["spearman_ci"] = [spearman_interval.lower, spearman_interval.upper]
    entry["kendall"] = _optional(kendall(x, y))
    entry["kendall_ci"] = [kendall_interval.lower, kendall_interval.upper]
    entry["valid_resamples"] = min(spearman_interval.valid_resamples, kendall_interval.valid_resamples)
    return entry


def _auroc_per_epsilon(
    samples: list[SampleRecord], score: np.ndarray, norm: str, grid: list[float]
) -> list[dict[str, Any]]:
    rows = []
    for position, epsilon in enumerate(grid):
        labels = np.array(
            [
                record.robust[norm][position] if len(record.robust.get(norm, [])) > position else math.nan
                for record in samples
            ],
            dtype=np.float64,
        )
        usable = np.isfinite(score) & np.isfinite(labels)
        robust = labels[usable].astype(bool)
        rows.append(
            {
                "epsilon": float(epsilon),
                "auroc": auroc(score[usable], robust),
                "robust": int(robust.sum()),
                "not_robust": int((~robust).sum()),
            }
        )
    return rows


def rank_scores(predictive: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order the predictive-validity entries for a report.

    Targets keep their first-seen order. Within a target, entries with a coefficient come
    first, by decreasing absolute Spearman's rho, then skipped ones. Each returned entry is a
    copy with ``rank``, 1-based within its target and ``None`` when skipped. It also gets
    ``sign_as_expected``, whether rho has the expected sign, or ``None`` when that is unknown.
    """
    target_order: dict[str, int] = {}
    for entry in predictive:
        target_order.setdefault(entry["target"], len(target_order))

    def key(entry: dict[str, Any]) -> tuple[int, int, float]:
        rho = entry.get("spearman")
        return (target_order[entry["target"]], rho is None, -abs(rho) if rho is not None else 0.0)

    ranked: list[dict[str, Any]] = []
    position = 0
    previous_target = None
    for entry in sorted(predictive, key=key):
        if entry["target"] != previous_target:
            previous_target, position = entry["target"], 0
        rho = entry.get("spearman")
        expected = entry.get("expected_sign")
        copy = dict(entry)
        if rho is None:
            copy["rank"] = None
            copy["sign_as_expected"] = None
        else:
            position += 1
            copy["rank"] = position
            copy["sign_as_expected"] = None if expected is None or rho == 0 else bool(np.sign(rho) == expected)
        ranked.append(copy)
    return ranked
