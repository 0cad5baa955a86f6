"""The results contract: typed records and their JSON form, schema ``robusteval/results/v1``.

Field names listed in the design's results contract are fixed. New fields may be added; readers
ignore fields they do not know, so files written by a newer robusteval stay readable.
Every number is a plain Python float or int, and ``None`` is written as JSON ``null``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ResultsFormatError

SCHEMA = "robusteval/results/v1"


@dataclass
class NormPair:
    """One value per norm: ``l2`` and ``linf``. ``None`` means not available."""

    l2: float | None = None
    linf: float | None = None


@dataclass
class ModelInfo:
    """Model file and network shape of the evaluated model."""

    path: str
    sha256: str
    format: str
    parameter_count: int
    piecewise_linear: bool
    architecture: str | None = None
    num_classes: int | None = None
    name: str | None = None


@dataclass
class DataInfo:
    """Data set the model was evaluated on."""

    name: str
    sha256: str
    num_samples: int
    input_shape: list[int]
    input_bounds: list[float]
    num_classes: int | None = None
    has_train_split: bool = False
    sample_indices_sha256: str | None = None


@dataclass
class EnvironmentInfo:
    """Versions, device and seed: everything needed to reproduce the numbers."""

    robusteval: str
    torch: str
    foolbox: str | None
    torchattacks: str | None
    python: str
    device: str
    seed: int
    platform: str = ""
    torch_threads: int | None = None
    world_size: int = 1


@dataclass
class ThreatModelResult:
    """Robust accuracy over an epsilon grid for one norm; ``robust_accuracy[i]`` is at ``epsilons[i]``."""

    norm: str
    epsilons: list[float]
    robust_accuracy: list[float]
    attacks: list[str] = field(default_factory=list)
    attack_success_rate: list[float] = field(default_factory=list)
    per_attack_robust_accuracy: dict[str, list[float]] = field(default_factory=dict)
    skipped_attacks: dict[str, str] = field(default_factory=dict)
    attack_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class TangentShiftRecord:
    """Largest tangent shift found for one sample within an input ball of radius ``epsilon`` (L2)."""

    epsilon: float
    achieved: float
    bound: float
    crossed_region: bool
    bound_holds: bool | None = None


@dataclass
class SampleRecord:
    """Per-sample scores and empirical results. ``index`` is the row in the evaluated data."""

    index: int
    label: int
    prediction: int
    correct: bool
    tangent_sensitivity: list[float]
    region_distance: NormPair
    linear_decision_distance: NormPair
    certified_radius: NormPair
    min_adversarial_distance: NormPair
    tangent_sensitivity_stderr: list[float] | None = None
    certificate_exact: dict[str, bool] = field(default_factory=dict)
    min_adversarial_attack: dict[str, str | None] = field(default_factory=dict)
    active_units: list[int] = field(default_factory=list)
    # Short hash of the activation pattern: samples with equal values share an activation region.
    activation_region: str | None = None
    logit_margin: float | None = None
    input_gradient_norm: float | None = None
    # norm -> list over that norm's epsilon grid: True when the sample is correct and no attack
    # succeeded at that epsilon.
    robust: dict[str, list[bool]] = field(default_factory=dict)
    # attack name -> norm -> list over the epsilon grid: True when that attack succeeded.
    attack_success: dict[str, dict[str, list[bool]]] = field(default_factory=dict)
    weight_noise_radius: float | None = None
    weight_noise_flip_probability: dict[str, float] | None = None
    adversarial_weight_radius: float | None = None
    adversarial_weight_radius_first_order: float | None = None
    tangent_shift: TangentShiftRecord | None = None
    regions_crossed: dict[str, int | None] | None = None


@dataclass
class Flag:
    """A machine-readable warning raised during evaluation.

    ``code`` is a stable identifier, for example ``probability_outputs``. ``severity`` is
    ``"error"`` for findings that make the evaluation unreliable, ``"warning"`` for findings a
    user should act on, and ``"info"`` for notes.
    """

    code: str
    severity: str
    message: str
    stage: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Results:
    """Everything one evaluation of one model produced."""

    model: ModelInfo
    data: DataInfo
    environment: EnvironmentInfo
    clean_accuracy: float
    threat_models: list[ThreatModelResult]
    samples: list[SampleRecord]
    flags: list[Flag] = field(default_factory=list)
    parameter_space: dict[str, Any] | None = None
    predictive: list[dict[str, Any]] = field(default_factory=list)
    bounds: dict[str, Any] | None = None
    geometry: dict[str, Any] = field(default_factory=dict)
    regions: dict[str, Any] | None = None
    generalization: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    command: str | None = None
    created: str | None = None
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form, with non-finite floats written as ``None``."""
        return _sanitize(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Results:
        """Build results from their JSON form, raising :class:`ResultsFormatError` when invalid."""
        schema = payload.get("schema") if isinstance(payload, dict) else None
        if schema != SCHEMA:
            raise ResultsFormatError(
                f"Expected a results file with schema {SCHEMA!r}, but got schema {schema!r}. "
                "Re-run `robusteval run` to produce a current results file."
            )
        try:
            return _build(cls, payload)
        except (KeyError, TypeError, ValueError) as error:
            raise ResultsFormatError(f"Invalid results file: {error}.") from error


def _sanitize(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _sanitize(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(item) for item in value]
    return value


# Record types nested in Results, by field name, so that ``from_dict`` can rebuild them.
_NESTED: dict[str, type] = {
    "model": ModelInfo,
    "data": DataInfo,
    "environment": EnvironmentInfo,
    "region_distance": NormPair,
    "linear_decision_distance": NormPair,
    "certified_radius": NormPair,
    "min_adversarial_distance": NormPair,
    "tangent_shift": TangentShiftRecord,
}
_NESTED_LISTS: dict[str, type] = {
    "threat_models": ThreatModelResult,
    "samples": SampleRecord,
    "flags": Flag,
}


def _build(record_type: type, payload: dict[str, Any]) -> Any:
    known = {item.name for item in dataclasses.fields(record_type)}
    arguments: dict[str, Any] = {}
    for name, value in payload.items():
        if name not in known:
            continue
        if name in _NESTED and isinstance(value, dict):
            value = _build(_NESTED[name], value)
        elif name in _NESTED_LISTS and isinstance(value, list):
            value = [_build(_NESTED_LISTS[name], item) for item in value]
        arguments[name] = value
    return record_type(**arguments)


def write_json_atomic(path: str | os.PathLike[str], payload: Any, *, indent: int | None = 1) -> None:
    """Write ``payload`` as JSON to ``path`` so that readers never see a partial file.

    The text goes to a temporary file in the same directory, is flushed to disk, and then
    replaces ``path`` in one ``os.replace`` call. Non-finite floats are written as ``null``.
    ``indent=None`` writes compact JSON, which the standard library's C encoder produces
    several times faster, for files that only robusteval reads back.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(_sanitize(payload), handle, indent=indent, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file readable by its owner only; results are meant to be shared.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_results(results: Results, path: str | os.PathLike[str]) -> None:
    """Write ``results`` to ``path`` atomically."""
    # write_json_atomic replaces non-finite floats as to_dict would, so the records are converted once.
    write_json_atomic(path, dataclasses.asdict(results))


def load_results(path: str | os.PathLike[str]) -> Results:
    """Read a results file written by :func:`save_results`."""
    source = Path(path)
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsFormatError(f"Results file not found: {str(source)!r}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsFormatError(
            f"Invalid results file {str(source)!r}: not JSON ({error}). "
            "Pass the results.json that `robusteval run` wrote."
        ) from None
    return Results.from_dict(payload)
