"""The generalization study: do tangent sensitivity and its bounds track the generalization gap?

For every member and checkpoint of a zoo (see :mod:`robusteval.zoo.build`) the study measures,
on the digits train and test splits, the tangent sensitivity
(:func:`robusteval.geometry.tangent_sensitivity`), the bounds and estimators of
:func:`robusteval.bounds.compute_bounds` and :func:`robusteval.bounds.generalization_estimates`,
and the generalization gap. It then correlates each measure with the gap in two ways:

* across models: Kendall's tau-b over the final checkpoints of all members, the ranking
  criterion of Jiang et al., "Fantastic Generalization Measures and Where to Find Them"
  (ICLR 2020);
* across epochs: Pearson's r and Spearman's rho over the checkpoints of each member, and
  their median over members.

Each coefficient carries a percentile bootstrap interval. Losses and accuracies use the clean
digits labels, also for members trained with label noise.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..bounds import compute_bounds, evaluate_chain, extract_relu_chain, generalization_estimates
from ..geometry import tangent_sensitivity
from ..errors import OutputExistsError, ResultsFormatError
from ..progress import NullProgress, ProgressReporter
from .artifacts import json_bytes, load_digits_tensors, load_zoo_model, write_bytes_atomic
from .build import load_zoo_index
from .correlation import METHODS, Method, bootstrap_correlation, bootstrap_seed
from .training import deterministic_cpu

STUDY_SCHEMA = "robusteval/study/v1"
TARGETS = ("loss_gap", "accuracy_gap")
ACROSS_EPOCH_METHODS: tuple[Method, ...] = ("pearson", "spearman")
QUICK_SAMPLES = 400
QUICK_RESAMPLES = 500
FULL_RESAMPLES = 2000

TARGET_DESCRIPTIONS = {
    "loss_gap": "test minus train cross-entropy loss",
    "accuracy_gap": "train minus test accuracy",
}


class _Sources(NamedTuple):
    """Inputs of one checkpoint's measures."""

    estimates: dict[str, Any]  # generalization_estimates on both splits
    bounds: dict[str, Any]  # compute_bounds on the training split; empty for non-chains
    tangent: dict[str, float]  # means of robusteval.geometry.tangent_sensitivity


_Extractor = Callable[[_Sources], Any]
MEASURES: dict[str, tuple[str, _Extractor]] = {
    "tangent_sensitivity_train": (
        "mean TS_k at the predicted class k over training samples",
        lambda source: source.tangent["train"],
    ),
    "tangent_sensitivity_test": (
        "mean TS_k at the predicted class k over test samples",
        lambda source: source.tangent["test"],
    ),
    "tangent_sensitivity_ratio": (
        "tangent_sensitivity_test / tangent_sensitivity_train",
        lambda source: source.tangent["test"] / source.tangent["train"] if source.tangent["train"] > 0 else None,
    ),
    "mean_tangent_sensitivity_train": (
        "mean TS_k over training samples and all outputs k",
        lambda source: source.tangent["mean_train"],
    ),
    "layerwise_norm_sensitivity": (
        "log of the product over layers of the largest absolute weight",
        lambda source: source.bounds.get("layerwise_norm_sensitivity"),
    ),
    "log_width_bound": (
        "log of the input-free width bound on TS_k",
        lambda source: _log(source.bounds.get("width", {}).get("value")),
    ),
    "log_active_count_bound_train": (
        "log of the mean over training samples of the active-count bound on TS_k",
        lambda source: _log(source.estimates["train"]["measures"].get("active_count_bound")),
    ),
    "log_total_active_count_estimate_train": (
        "log of C E|S|^(L-3/2), S the total active count under its Gaussian model on training samples",
        lambda source: _log(source.estimates["train"]["measures"].get("total_active_count_bound")),
    ),
    "total_active_count_train": (
        "mean number of active ReLU units over training samples",
        lambda source: source.estimates["train"]["measures"].get("total_active_count"),
    ),
    "input_jacobian_norm_train": (
        "baseline: mean Frobenius norm of d f / d x over training samples",
        lambda source: source.estimates["train"]["measures"].get("input_jacobian_norm"),
    ),
    "input_jacobian_ratio": (
        "baseline: input_jacobian_norm on test divided by that on train",
        lambda source: source.estimates["estimates"].get("input_jacobian_norm", {}).get("ratio"),
    ),
}


def _log(value: float | None) -> float | None:
    return math.log(value) if value is not None and value > 0 else None


@dataclass(frozen=True)
class CheckpointRecord:
    """Measures and gaps of one checkpoint.

    Attributes:
        member: zoo member name.
        epoch: epochs trained when the checkpoint was saved.
        final: whether this is the member's last checkpoint (the model the zoo ships).
        path: checkpoint file relative to the zoo folder.
        train_loss: mean cross-entropy on the training samples.
        test_loss: mean cross-entropy on the test samples.
        train_accuracy: accuracy on the training samples.
        test_accuracy: accuracy on the test samples.
        loss_gap: ``test_loss - train_loss``.
        accuracy_gap: ``train_accuracy - test_accuracy``.
        measures: value of each measure in :data:`MEASURES`; ``None`` where it does not apply.
        bounds_held: for each tangent-sensitivity bound, whether it held on every training sample.
    """

    member: str
    epoch: int
    final: bool
    path: str
    train_loss: float
    test_loss: float
    train_accuracy: float
    test_accuracy: float
    loss_gap: float
    accuracy_gap: float
    measures: dict[str, float | None]
    bounds_held: dict[str, bool | None]


@dataclass(frozen=True)
class CorrelationRecord:
    """One coefficient between a measure and a gap, over the models or over one member's epochs."""

    measure: str
    target: str
    method: str
    scope: str
    n: int
    value: float | None
    low: float | None
    high: float | None
    resamples: int
    valid_resamples: int


@dataclass(frozen=True)
class EpochSummary:
    """Median and range over members of their across-epoch coefficients for one measure, gap and method."""

    measure: str
    target: str
    method: str
    members: int
    median: float | None
    minimum: float | None
    maximum: float | None
    positive: int


@dataclass(frozen=True)
class StudyResult:
    """Everything the study measured and computed; its JSON form is ``study.json``."""

    zoo: str
    zoo_seed: int
    zoo_quick: bool
    quick: bool
    seed: int
    confidence: float
    resamples: int
    train_samples: int
    test_samples: int
    measures: dict[str, str]
    targets: dict[str, str]
    checkpoints: tuple[CheckpointRecord, ...]
    across_models: tuple[CorrelationRecord, ...]
    across_epochs: tuple[CorrelationRecord, ...]
    across_epochs_summary: tuple[EpochSummary, ...]

    def final_checkpoints(self) -> list[CheckpointRecord]:
        """Return the last checkpoint of each member, in zoo order."""
        return [record for record in self.checkpoints if record.final]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form, with ``schema`` first."""
        return {"schema": STUDY_SCHEMA, **asdict(self)}


def run_study(
    zoo_dir: str | os.PathLike[str],
    *,
    quick: bool = False,
    seed: int = 0,
    confidence: float = 0.95,
    resamples: int | None = None,
    progress: ProgressReporter | None = None,
) -> StudyResult:
    """Measure every checkpoint of the zoo in ``zoo_dir`` and correlate the measures with the gap.

    Args:
        zoo_dir: folder written by :func:`robusteval.zoo.build.train_zoo`.
        quick: use the first :data:`QUICK_SAMPLES` samples of each split and
            :data:`QUICK_RESAMPLES` bootstrap resamples instead of all samples and
            :data:`FULL_RESAMPLES`.
        seed: seed of the bootstrap resampling.
        confidence: coverage of the bootstrap intervals.
        resamples: bootstrap resamples; overrides the default of the mode.
        progress: receives one step per checkpoint under the stage ``"study"``.

    Returns:
        The study; write it with :func:`save_study`.
    """
    index = load_zoo_index(zoo_dir)
    if not index.members:
        raise ValueError(f"Expected a zoo with at least one member in {zoo_dir}, but its zoo.json lists none.")
    if resamples is not None:
        resample_count = resamples
    else:
        resample_count = QUICK_RESAMPLES if quick else FULL_RESAMPLES
    data = load_digits_tensors()
    limit = QUICK_SAMPLES if quick else None
    x_train, y_train = data.x_train[:limit], data.y_train[:limit]
    x_test, y_test = data.x_test[:limit], data.y_test[:limit]

    reporter = progress if progress is not None else NullProgress()
    reporter.start("study", sum(len(entry.checkpoints) for entry in index.members))
    records: list[CheckpointRecord] = []
    for entry in index.members:
        for position, relative in enumerate(entry.checkpoints):
            model, _ = load_zoo_model(index.root / relative)
            records.append(
                _measure_checkpoint(
                    model, entry.name, relative, final=position == len(entry.checkpoints) - 1,
                    x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                )
            )
            reporter.advance("study")
    reporter.finish("study")

    across_models = correlate_across_models(records, seed=seed, resamples=resample_count, confidence=confidence)
    across_epochs = correlate_across_epochs(records, seed=seed, resamples=resample_count, confidence=confidence)
    return StudyResult(
        zoo=str(index.root),
        zoo_seed=index.seed,
        zoo_quick=index.quick,
        quick=quick,
        seed=seed,
        confidence=confidence,
        resamples=resample_count,
        train_samples=int(x_train.shape[0]),
        test_samples=int(x_test.shape[0]),
        measures={name: description for name, (description, _) in MEASURES.items()},
        targets=dict(TARGET_DESCRIPTIONS),
        checkpoints=tuple(records),
        across_models=tuple(across_models),
        across_epochs=tuple(across_epochs),
        across_epochs_summary=tuple(summarize_across_epochs(across_epochs)),
    )


def _epoch_of(relative: str) -> int:
    stem = Path(relative).stem  # "epoch-007"
    return int(stem.rsplit("-", 1)[1])


def _measure_checkpoint(
    model: torch.nn.Module,
    member: str,
    relative: str,
    *,
    final: bool,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
) -> CheckpointRecord:
    with deterministic_cpu():
        estimates = generalization_estimates(model, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        train_sensitivity = tangent_sensitivity(model, x_train)  # (N_train, K)
        test_sensitivity = tangent_sensitivity(model, x_test)  # (N_test, K)
        with torch.no_grad():
            train_predicted = model(x_train).argmax(dim=1, keepdim=True)
            test_predicted = model(x_test).argmax(dim=1, keepdim=True)
        tangent = {
            "train": float(train_sensitivity.gather(1, train_predicted).mean()),
            "test": float(test_sensitivity.gather(1, test_predicted).mean()),
            "mean_train": float(train_sensitivity.mean()),
        }
        chain, _ = extract_relu_chain(model)
        if chain is None:
            bounds: dict[str, Any] = {}
        else:
            active_units = evaluate_chain(chain, x_train).active_units
            bounds = compute_bounds(model, tangent_sensitivity=train_sensitivity, active_units=active_units)

    sources = _Sources(estimates, bounds, tangent)
    measures = {name: _finite_or_none(extract(sources)) for name, (_, extract) in MEASURES.items()}
    held = {
        name: bounds[name].get("held_on_all_samples") if isinstance(bounds.get(name), dict) else None
        for name in ("width", "active_count", "total_active_count")
    }
    return CheckpointRecord(
        member=member,
        epoch=_epoch_of(relative),
        final=final,
        path=relative,
        train_loss=estimates["train"]["loss"],
        test_loss=estimates["test"]["loss"],
        train_accuracy=estimates["train"]["accuracy"],
        test_accuracy=estimates["test"]["accuracy"],
        loss_gap=estimates["gap"]["loss"],
        accuracy_gap=estimates["gap"]["accuracy"],
        measures=measures,
        bounds_held=held,
    )


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def paired_values(records: list[CheckpointRecord], measure: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(n,)`` measure values and ``(n,)`` gap values of the records where the measure exists."""
    pairs = [(record.measures[measure], getattr(record, target)) for record in records if record.measures.get(measure) is not None]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    measure_values, target_values = zip(*pairs)
    return np.array(measure_values, dtype=np.float64), np.array(target_values, dtype=np.float64)


def _correlation_record(
    records: list[CheckpointRecord], measure: str, target: str, method: Method, scope: str,
    *, seed: int, resamples: int, confidence: float,
) -> CorrelationRecord:
    x, y = paired_values(records, measure, target)
    estimate = bootstrap_correlation(
        x, y, method, resamples=resamples, confidence=confidence, seed=bootstrap_seed(seed, measure, target, method, scope)
    )
    return CorrelationRecord(
        measure=measure, target=target, method=method, scope=scope, n=estimate.n, value=estimate.value,
        low=estimate.low, high=estimate.high, resamples=estimate.resamples, valid_resamples=estimate.valid_resamples,
    )


def correlate_across_models(
    records: list[CheckpointRecord], *, seed: int, resamples: int, confidence: float
) -> list[CorrelationRecord]:
    """Compute Kendall's tau-b between each measure and each gap over the members' final checkpoints."""
    finals = [record for record in records if record.final]
    return [
        _correlation_record(finals, measure, target, "kendall", "models", seed=seed, resamples=resamples, confidence=confidence)
        for measure in MEASURES
        for target in TARGETS
    ]


def correlate_across_epochs(
    records: list[CheckpointRecord], *, seed: int, resamples: int, confidence: float
) -> list[CorrelationRecord]:
    """Compute Pearson's r and Spearman's rho between each measure and each gap over each member's checkpoints."""
    members = list(dict.fromkeys(record.member for record in records))
    results = []
    for member in members:
        own = [record for record in records if record.member == member]
        for measure in MEASURES:
            for target in TARGETS:
                for method in ACROSS_EPOCH_METHODS:
                    results.append(
                        _correlation_record(
                            own, measure, target, method, member, seed=seed, resamples=resamples, confidence=confidence
                        )
                    )
    return results


def summarize_across_epochs(records: list[CorrelationRecord]) -> list[EpochSummary]:
    """Return, per measure, gap and method, the median, minimum and maximum over members and the count of positive ones."""
    summaries = []
    for measure in MEASURES:
        for target in TARGETS:
            for method in ACROSS_EPOCH_METHODS:
                values = [
                    record.value
                    for record in records
                    if record.measure == measure and record.target == target and record.method == method
                    and record.value is not None
                ]
                summaries.append(
                    EpochSummary(
                        measure=measure,
                        target=target,
                        method=method,
                        members=len(values),
                        median=statistics.median(values) if values else None,
                        minimum=min(values) if values else None,
                        maximum=max(values) if values else None,
                        positive=sum(value > 0 for value in values),
                    )
                )
    return summaries


def save_study(result: StudyResult, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Write ``result`` as JSON to ``path``; raise :class:`OutputExistsError` if it exists, unless ``overwrite``."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"Expected no file at {target}, but one exists. Pass another --out path, or --force.")
    write_bytes_atomic(target, json_bytes(result.to_dict()))


def load_study(path: str | os.PathLike[str]) -> StudyResult:
    """Read a ``study.json`` written by :func:`save_study`."""
    source = Path(path)
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
        if payload.get("schema") != STUDY_SCHEMA:
            raise ResultsFormatError(f"Expected schema {STUDY_SCHEMA!r} in {source}, but got {payload.get('schema')!r}.")
        fields = {key: value for key, value in payload.items() if key != "schema"}
        fields["checkpoints"] = tuple(CheckpointRecord(**item) for item in payload["checkpoints"])
        fields["across_models"] = tuple(CorrelationRecord(**item) for item in payload["across_models"])
        fields["across_epochs"] = tuple(CorrelationRecord(**item) for item in payload["across_epochs"])
        fields["across_epochs_summary"] = tuple(EpochSummary(**item) for item in payload["across_epochs_summary"])
        return StudyResult(**fields)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ResultsFormatError(f"Expected a study.json written by `robusteval study` in {source}, but reading it failed: {error}.") from None


__all__ = [
    "ACROSS_EPOCH_METHODS",
    "METHODS",
    "MEASURES",
    "TARGETS",
    "CheckpointRecord",
    "CorrelationRecord",
    "EpochSummary",
    "StudyResult",
    "correlate_across_epochs",
    "correlate_across_models",
    "load_study",
    "paired_values",
    "run_study",
    "save_study",
    "summarize_across_epochs",
]
