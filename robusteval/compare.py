"""Side-by-side comparison of models evaluated on the same samples, with paired statistics.

Every model must have been evaluated on the same rows of the same data with the same seed and
attacks, so that each sample gives one paired observation per model. Two paired analyses follow:

* McNemar's exact test on per-sample outcomes (clean correctness, and robustness at each shared
  epsilon). Only discordant pairs carry information: with ``b`` samples where only the first
  model is robust and ``c`` where only the second is, the two-sided p-value is
  ``min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)])``. This is the exact (binomial) form of
  McNemar's test, as in ``statsmodels.stats.contingency_tables.mcnemar(table, exact=True)``.
* Paired bootstrap percentile intervals on the differences (second minus first) of robust
  accuracy and of the median minimal adversarial distance: each resample draws sample rows with
  replacement and applies the same rows to both models.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ._types import NORMS, Norm
from .results import Results

EPSILON_RTOL = 1e-9
EPSILON_ATOL = 1e-12


# Summary statistics shared by compare, gate and the reports.


def min_adversarial_distances(results: Results, norm: Norm) -> np.ndarray:
    """Return the minimal adversarial distance of every sample under ``norm``, shape ``(N,)``.

    Misclassified clean samples count as 0, because they are already adversarial. Samples that
    no attack fooled count as ``inf``: their distance exceeds every budget that was attacked.
    """
    distances = np.empty(len(results.samples), dtype=np.float64)
    for position, sample in enumerate(results.samples):
        value = getattr(sample.min_adversarial_distance, norm)
        if not sample.correct:
            distances[position] = 0.0
        elif value is None:
            distances[position] = math.inf
        else:
            distances[position] = float(value)
    return distances


def median_min_adversarial_distance(results: Results, norm: Norm) -> float | None:
    """Return the median of :func:`min_adversarial_distances`, or ``None`` without samples.

    The median is ``inf`` when more than half of the samples survived every attack.
    """
    distances = min_adversarial_distances(results, norm)
    if distances.size == 0:
        return None
    return float(np.median(distances))


def mean_tangent_sensitivity(results: Results) -> float | None:
    """Return the mean over samples of the tangent sensitivity of the predicted class.

    Samples whose value is missing or not finite are left out; ``None`` when none remain.
    """
    values = []
    for sample in results.samples:
        if 0 <= sample.prediction < len(sample.tangent_sensitivity):
            value = sample.tangent_sensitivity[sample.prediction]
            if value is not None and math.isfinite(value):
                values.append(float(value))
    if not values:
        return None
    return float(np.mean(values))


def find_epsilon(epsilons: Sequence[float], epsilon: float) -> int | None:
    """Return the position of ``epsilon`` in ``epsilons`` (compared with a tiny tolerance), or ``None``."""
    for position, candidate in enumerate(epsilons):
        if math.isclose(candidate, epsilon, rel_tol=EPSILON_RTOL, abs_tol=EPSILON_ATOL):
            return position
    return None


def robust_accuracy_at(results: Results, norm: str, epsilon: float) -> float | None:
    """Return the reported robust accuracy at (``norm``, ``epsilon``), or ``None`` if it was not evaluated."""
    for threat_model in results.threat_models:
        if threat_model.norm != norm:
            continue
        position = find_epsilon(threat_model.epsilons, epsilon)
        if position is not None and position < len(threat_model.robust_accuracy):
            return threat_model.robust_accuracy[position]
    return None


def model_label(results: Results) -> str:
    """Return a short display name of the evaluated model: its name, else its file name."""
    if results.model.name:
        return results.model.name
    return Path(results.model.path).name or results.model.path


# Records of a comparison.


@dataclass(frozen=True)
class ModelRow:
    """One model's row of the side-by-side table; values are ``None`` where not evaluated."""

    label: str
    clean_accuracy: float
    robust_accuracy: dict[str, list[float | None]]
    median_min_adversarial_distance: dict[str, float | None]
    mean_tangent_sensitivity: float | None
    error_flags: int
    warning_flags: int


@dataclass(frozen=True)
class McNemarTest:
    """McNemar's exact test of one per-sample outcome between two models.

    ``only_first`` counts samples where the outcome is true for the first model only, and
    ``only_second`` those where it is true for the second only. ``outcome`` is ``"clean"`` for
    clean correctness or ``"robust"`` for robustness at (``norm``, ``epsilon``).
    """

    first: str
    second: str
    outcome: str
    norm: str | None
    epsilon: float | None
    samples: int
    only_first: int
    only_second: int
    p_value: float


@dataclass(frozen=True)
class BootstrapDifference:
    """Difference (second minus first) of a statistic with a paired bootstrap percentile interval.

    ``statistic`` is ``"robust_accuracy"`` (at ``epsilon``) or ``"median_min_adversarial_distance"``.
    ``low`` and ``high`` are ``None`` when the interval is undefined, for example when both
    medians are ``inf`` in too many resamples, and ``note`` gives the reason.
    """

    first: str
    second: str
    statistic: str
    norm: str
    epsilon: float | None
    difference: float | None
    low: float | None
    high: float | None
    confidence: float
    resamples: int
    note: str | None = None


@dataclass(frozen=True)
class Comparison:
    """Models evaluated on the same samples, side by side, with paired statistics.

    ``epsilons`` maps each norm to the epsilons that every model was evaluated at, and each
    row's ``robust_accuracy[norm][i]`` is at ``epsilons[norm][i]``.
    """

    labels: list[str]
    results: list[Results]
    sample_indices: list[int]
    epsilons: dict[str, list[float]]
    rows: list[ModelRow]
    mcnemar: list[McNemarTest]
    bootstrap: list[BootstrapDifference]
    notes: list[str]
    seed: int


# Paired statistics.


def mcnemar_exact(first: Sequence[bool] | np.ndarray, second: Sequence[bool] | np.ndarray) -> tuple[int, int, float]:
    """Return ``(only_first, only_second, p_value)`` of McNemar's exact two-sided test.

    Args:
        first: Per-sample outcome of the first model, length ``N``.
        second: Per-sample outcome of the second model on the same samples, length ``N``.
    """
    first_array = np.asarray(first, dtype=bool)
    second_array = np.asarray(second, dtype=bool)
    if first_array.shape != second_array.shape:
        raise ValueError(
            f"Expected paired outcomes of equal length, but got {first_array.size} and {second_array.size}."
        )
    only_first = int(np.sum(first_array & ~second_array))
    only_second = int(np.sum(~first_array & second_array))
    discordant = only_first + only_second
    if discordant == 0:
        return only_first, only_second, 1.0
    tail = float(stats.binom.cdf(min(only_first, only_second), discordant, 0.5))
    return only_first, only_second, min(1.0, 2.0 * tail)


def paired_bootstrap_difference(
    first: np.ndarray,
    second: np.ndarray,
    statistic: str,
    *,
    resamples: int,
    confidence: float,
    generator: np.random.Generator,
) -> tuple[float | None, float | None, float | None, str | None]:
    """Return ``(difference, low, high, note)`` for ``statistic`` of ``second`` minus ``first``.

    Args:
        first: Per-sample values of the first model, shape ``(N,)``.
        second: Per-sample values of the second model on the same samples, shape ``(N,)``.
        statistic: ``"mean"`` or ``"median"``.
        resamples: Number of bootstrap resamples of the ``N`` rows.
        confidence: Coverage of the percentile interval, for example 0.95.
        generator: Source of the resampled rows.
    """
    reducers: dict[str, Callable[..., Any]] = {"mean": np.mean, "median": np.median}
    reduce = reducers[statistic]
    size = first.shape[0]
    if size == 0:
        return None, None, None, "no samples"

    with np.errstate(invalid="ignore"):
        point = float(reduce(second) - reduce(first))
        rows = generator.integers(0, size, size=(resamples, size))
        differences = reduce(second[rows], axis=1) - reduce(first[rows], axis=1)
    # inf - inf is undefined: both medians lie beyond the largest attacked budget.
    defined = ~np.isnan(differences)
    difference = None if math.isnan(point) else point
    if defined.mean() < confidence:
        return difference, None, None, "undefined: both medians exceed the largest attacked epsilon too often"
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(differences[defined], [tail, 1.0 - tail])
    return difference, float(low), float(high), None


# Alignment and the comparison itself.


def _aligned(results: Results, order: list[int]) -> Results:
    by_index = {sample.index: sample for sample in results.samples}
    return dataclasses.replace(results, samples=[by_index[index] for index in order])


def _check_same_samples(results: Sequence[Results], labels: Sequence[str]) -> list[int]:
    reference = results[0]
    reference_indices = [sample.index for sample in reference.samples]
    if len(set(reference_indices)) != len(reference_indices):
        raise ValueError(f"Expected unique sample indices in {labels[0]!r}, but some rows appear twice.")
    for label, other in zip(labels[1:], results[1:]):
        if other.data.sha256 != reference.data.sha256:
            raise ValueError(
                f"Expected every model to be evaluated on the same data, but {labels[0]!r} used "
                f"{reference.data.name!r} (sha256 {reference.data.sha256[:12]}) and {label!r} used "
                f"{other.data.name!r} (sha256 {other.data.sha256[:12]}). Re-run both with the same --data."
            )
        indices = [sample.index for sample in other.samples]
        if sorted(indices) != sorted(reference_indices):
            missing = sorted(set(reference_indices) - set(indices))
            extra = sorted(set(indices) - set(reference_indices))
            raise ValueError(
                f"Expected {labels[0]!r} and {label!r} to be evaluated on the same samples, but "
                f"{len(missing)} rows of the first are missing from the second (first: {missing[:5]}) and "
                f"{len(extra)} rows are extra (first: {extra[:5]}). Re-run both with the same "
                "--data, --samples and --seed."
            )
    return reference_indices


def _shared_epsilons(results: Sequence[Results], labels: Sequence[str], notes: list[str]) -> dict[str, list[float]]:
    shared: dict[str, list[float]] = {}
    for norm in NORMS:
        grids = [next((tm.epsilons for tm in r.threat_models if tm.norm == norm), None) for r in results]
        present = [grid for grid in grids if grid is not None]
        if not present:
            continue
        if len(present) < len(grids):
            absent = [label for label, grid in zip(labels, grids) if grid is None]
            notes.append(f"{norm} was not evaluated for {', '.join(absent)}, so it is left out of the comparison.")
            continue
        common = [eps for eps in present[0] if all(find_epsilon(grid, eps) is not None for grid in present[1:])]
        union = {round(eps, 12) for grid in present for eps in grid}
        if len(common) < len(union):
            notes.append(
                f"The {norm} epsilon grids differ between models; only the shared epsilons "
                f"{common} are compared."
            )
        if common:
            shared[norm] = common
    return shared


def _note_setting_differences(results: Sequence[Results], labels: Sequence[str], notes: list[str]) -> None:
    seeds = {label: r.environment.seed for label, r in zip(labels, results)}
    if len(set(seeds.values())) > 1:
        notes.append(f"The models were evaluated with different seeds ({seeds}); attack randomness is not paired.")
    attacks = {label: sorted({a for tm in r.threat_models for a in tm.attacks}) for label, r in zip(labels, results)}
    if len({tuple(names) for names in attacks.values()}) > 1:
        notes.append(f"The models were attacked with different attacks ({attacks}).")


def _robust_flags(results: Results, norm: str, epsilon: float) -> np.ndarray:
    threat_model = next(tm for tm in results.threat_models if tm.norm == norm)
    position = find_epsilon(threat_model.epsilons, epsilon)
    assert position is not None  # guaranteed by _shared_epsilons
    flags = []
    for sample in results.samples:
        per_norm = sample.robust.get(norm)
        if per_norm is None or position >= len(per_norm):
            raise ValueError(
                f"Expected per-sample robustness flags robust[{norm!r}] in every sample of "
                f"{model_label(results)!r}, but sample {sample.index} has none. "
                "Re-run `robusteval run` with this version to record them."
            )
        flags.append(bool(per_norm[position]))
    return np.asarray(flags, dtype=bool)


def _model_row(results: Results, label: str, epsilons: dict[str, list[float]]) -> ModelRow:
    return ModelRow(
        label=label,
        clean_accuracy=results.clean_accuracy,
        robust_accuracy={
            norm: [robust_accuracy_at(results, norm, eps) for eps in grid] for norm, grid in epsilons.items()
        },
        median_min_adversarial_distance={
            norm: median_min_adversarial_distance(results, norm)  # type: ignore[arg-type]
            for norm in epsilons
        },
        mean_tangent_sensitivity=mean_tangent_sensitivity(results),
        error_flags=sum(flag.severity == "error" for flag in results.flags),
        warning_flags=sum(flag.severity == "warning" for flag in results.flags),
    )


def unique_labels(results: Sequence[Results]) -> list[str]:
    """Return display names of the models, numbered where two would otherwise be equal."""
    labels = [model_label(r) for r in results]
    return [label if labels.count(label) == 1 else f"{label} #{i + 1}" for i, label in enumerate(labels)]


def compare_results(
    results: Sequence[Results],
    *,
    seed: int,
    labels: Sequence[str] | None = None,
    resamples: int = 2000,
    confidence: float = 0.95,
) -> Comparison:
    """Compare models evaluated on the same samples: a side-by-side table and paired statistics.

    Each later model is paired with the first one (the reference). The bootstrap resamples are
    drawn from ``seed``, so the intervals are reproducible.

    Args:
        results: Results of two or more models on the same rows of the same data.
        seed: Seed of the bootstrap resampling.
        labels: Display names, one per model; defaults to each model's name or file name.
        resamples: Bootstrap resamples per interval.
        confidence: Coverage of the bootstrap intervals, in (0, 1).

    Raises:
        ValueError: fewer than two results, different data or sample rows, or missing
            per-sample robustness flags.
    """
    if len(results) < 2:
        raise ValueError(f"Expected at least two results to compare, but got {len(results)}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Expected a confidence level in (0, 1), but got {confidence}.")
    if resamples < 1:
        raise ValueError(f"Expected at least one bootstrap resample, but got {resamples}.")
    names = list(labels) if labels is not None else unique_labels(results)
    if len(names) != len(results):
        raise ValueError(f"Expected one label per model ({len(results)}), but got {len(names)}.")

    order = _check_same_samples(results, names)
    aligned = [_aligned(r, order) for r in results]
    notes: list[str] = []
    epsilons = _shared_epsilons(aligned, names, notes)
    _note_setting_differences(aligned, names, notes)
    rows = [_model_row(r, name, epsilons) for r, name in zip(aligned, names)]

    generator = np.random.default_rng(seed)
    tests: list[McNemarTest] = []
    intervals: list[BootstrapDifference] = []
    reference, reference_name = aligned[0], names[0]
    for other, name in zip(aligned[1:], names[1:]):
        correct_first = [s.correct for s in reference.samples]
        correct_second = [s.correct for s in other.samples]
        b, c, p = mcnemar_exact(correct_first, correct_second)
        tests.append(McNemarTest(reference_name, name, "clean", None, None, len(order), b, c, p))

        for norm, grid in epsilons.items():
            for eps in grid:
                robust_first = _robust_flags(reference, norm, eps)
                robust_second = _robust_flags(other, norm, eps)
                b, c, p = mcnemar_exact(robust_first, robust_second)
                tests.append(McNemarTest(reference_name, name, "robust", norm, eps, len(order), b, c, p))
                difference, low, high, note = paired_bootstrap_difference(
                    robust_first.astype(np.float64), robust_second.astype(np.float64), "mean",
                    resamples=resamples, confidence=confidence, generator=generator,
                )
                intervals.append(BootstrapDifference(
                    reference_name, name, "robust_accuracy", norm, eps, difference, low, high,
                    confidence, resamples, note,
                ))
            difference, low, high, note = paired_bootstrap_difference(
                min_adversarial_distances(reference, norm),  # type: ignore[arg-type]
                min_adversarial_distances(other, norm),  # type: ignore[arg-type]
                "median", resamples=resamples, confidence=confidence, generator=generator,
            )
            intervals.append(BootstrapDifference(
                reference_name, name, "median_min_adversarial_distance", norm, None, difference, low, high,
                confidence, resamples, note,
            ))

    return Comparison(
        labels=names,
        results=list(aligned),
        sample_indices=order,
        epsilons=epsilons,
        rows=rows,
        mcnemar=tests,
        bootstrap=intervals,
        notes=notes,
        seed=seed,
    )
