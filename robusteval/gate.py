"""A CI gate: thresholds from a TOML policy, checked against one evaluation's results.

The policy lives in the ``[gate]`` table of a TOML file (other tables are left to other
commands)::

    [gate]
    min_clean_accuracy = 0.90              # fraction in [0, 1]
    max_mean_tangent_sensitivity = 40.0    # mean over samples, predicted class
    max_regression = 0.02                  # largest allowed drop in accuracy against --baseline
    fail_on_unreliable = true              # fail on flags of severity "error" (the default)

    [gate.min_median_adversarial_distance] # per norm, in input units
    linf = 0.02
    l2 = 0.3

    [[gate.robust_accuracy]]               # one table per (norm, epsilon)
    norm = "linf"
    epsilon = 0.05
    min = 0.40

Every key is optional. The median minimal adversarial distance counts misclassified samples as
0 and samples no attack fooled as ``inf`` (see :func:`robusteval.compare.min_adversarial_distances`).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._types import NORMS, Norm
from .compare import (
    find_epsilon,
    mean_tangent_sensitivity,
    median_min_adversarial_distance,
    model_label,
    robust_accuracy_at,
)
from .results import Flag, Results

GateStatus = Literal["passed", "failed", "unreliable"]

_GATE_KEYS = {
    "min_clean_accuracy": "a fraction in [0, 1]",
    "robust_accuracy": "an array of tables with keys norm, epsilon and min",
    "min_median_adversarial_distance": "a table mapping 'linf' and/or 'l2' to a distance >= 0",
    "max_mean_tangent_sensitivity": "a number >= 0",
    "max_regression": "a fraction in [0, 1]",
    "fail_on_unreliable": "true or false",
}
_ROBUST_ACCURACY_KEYS = ("norm", "epsilon", "min")
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class RobustAccuracyThreshold:
    """Minimum robust accuracy at one epsilon (input units) of one norm."""

    norm: Norm
    epsilon: float
    minimum: float


@dataclass(frozen=True)
class Policy:
    """Thresholds of a gate; ``None`` or empty means the check is not made."""

    min_clean_accuracy: float | None = None
    robust_accuracy: tuple[RobustAccuracyThreshold, ...] = ()
    min_median_adversarial_distance: Mapping[Norm, float] = field(default_factory=dict)
    max_mean_tangent_sensitivity: float | None = None
    max_regression: float | None = None
    fail_on_unreliable: bool = True
    source: str | None = None

    def epsilons(self) -> dict[Norm, list[float]]:
        """Return, per norm, the epsilons the robust-accuracy thresholds need, in policy order."""
        grid: dict[Norm, list[float]] = {}
        for threshold in self.robust_accuracy:
            values = grid.setdefault(threshold.norm, [])
            if find_epsilon(values, threshold.epsilon) is None:
                values.append(threshold.epsilon)
        return grid


@dataclass(frozen=True)
class GateCheck:
    """One threshold and its outcome. ``bound`` is ``"min"`` or ``"max"``; ``value`` is what was measured."""

    name: str
    description: str
    bound: Literal["min", "max"]
    threshold: float
    value: float
    passed: bool


@dataclass(frozen=True)
class GateOutcome:
    """Every check of a gate, the unreliable-evaluation flags, and the overall status.

    ``status`` is ``"unreliable"`` when the policy fails on unreliable evaluations and a flag of
    severity ``"error"`` was raised (this overrides threshold results, which cannot be trusted
    then), ``"failed"`` when a check failed, and ``"passed"`` otherwise.
    """

    model: str
    checks: tuple[GateCheck, ...]
    unreliable_flags: tuple[Flag, ...]
    fail_on_unreliable: bool
    baseline: str | None = None

    @property
    def status(self) -> GateStatus:
        """Overall result: ``"passed"``, ``"failed"`` or ``"unreliable"``."""
        if self.fail_on_unreliable and self.unreliable_flags:
            return "unreliable"
        if any(not check.passed for check in self.checks):
            return "failed"
        return "passed"

    @property
    def failed_checks(self) -> tuple[GateCheck, ...]:
        """The checks whose threshold was not met."""
        return tuple(check for check in self.checks if not check.passed)


# Loading and validating the policy.


def load_policy(path: str | Path) -> Policy:
    """Read and validate the ``[gate]`` table of the TOML file at ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not TOML, has no ``[gate]`` table, or a key is unknown or has a
            value of the wrong type or range.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"Policy file not found: {str(source)!r}. Pass the path of a TOML policy.") from None
    except UnicodeDecodeError:
        raise ValueError(f"Invalid policy file {str(source)!r}: expected UTF-8 TOML text.") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"Invalid policy file {str(source)!r}: not valid TOML ({error}).") from None
    return parse_policy(document, source=str(source))


def parse_policy(document: Mapping[str, Any], *, source: str = "<policy>") -> Policy:
    """Validate a parsed TOML document and return its ``[gate]`` table as a :class:`Policy`."""
    table = document.get("gate")
    if not isinstance(table, Mapping):
        raise ValueError(
            f"Invalid policy file {source!r}: expected a [gate] table, but "
            + ("found none." if table is None else f"'gate' is a {type(table).__name__}.")
            + " Put the thresholds under a [gate] heading."
        )
    unknown = sorted(set(table) - set(_GATE_KEYS))
    if unknown:
        raise ValueError(
            f"Invalid policy file {source!r}: unknown key(s) {', '.join(f'gate.{k}' for k in unknown)}. "
            f"Allowed keys: {', '.join(_GATE_KEYS)}."
        )

    def where(key: str) -> str:
        return f"Invalid policy file {source!r}: gate.{key}"

    fail_on_unreliable = table.get("fail_on_unreliable", True)
    if not isinstance(fail_on_unreliable, bool):
        raise ValueError(f"{where('fail_on_unreliable')} expected true or false, but got {fail_on_unreliable!r}.")

    distances: dict[Norm, float] = {}
    distance_table = table.get("min_median_adversarial_distance", {})
    if not isinstance(distance_table, Mapping):
        raise ValueError(f"{where('min_median_adversarial_distance')} expected {_GATE_KEYS['min_median_adversarial_distance']}, but got {distance_table!r}.")
    for norm, value in distance_table.items():
        if norm not in NORMS:
            raise ValueError(f"{where('min_median_adversarial_distance')}: expected a norm 'linf' or 'l2' as key, but got {norm!r}.")
        distances[norm] = _number(value, f"{where('min_median_adversarial_distance.' + norm)}", minimum=0.0)

    return Policy(
        min_clean_accuracy=_optional_fraction(table, "min_clean_accuracy", where),
        robust_accuracy=_robust_accuracy_thresholds(table.get("robust_accuracy", []), where("robust_accuracy")),
        min_median_adversarial_distance=distances,
        max_mean_tangent_sensitivity=(
            None if "max_mean_tangent_sensitivity" not in table
            else _number(table["max_mean_tangent_sensitivity"], where("max_mean_tangent_sensitivity"), minimum=0.0)
        ),
        max_regression=_optional_fraction(table, "max_regression", where),
        fail_on_unreliable=fail_on_unreliable,
        source=source,
    )


def _number(value: Any, where: str, *, minimum: float, maximum: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} expected a number, but got {value!r} ({type(value).__name__}).")
    number = float(value)
    if not (minimum <= number <= maximum) or math.isnan(number):
        upper = "" if maximum == math.inf else f", {maximum:g}]"
        allowed = f"[{minimum:g}{upper}" if upper else f">= {minimum:g}"
        raise ValueError(f"{where} expected a number {allowed}, but got {value!r}.")
    return number


def _optional_fraction(table: Mapping[str, Any], key: str, where: Any) -> float | None:
    if key not in table:
        return None
    return _number(table[key], where(key), minimum=0.0, maximum=1.0)


def _robust_accuracy_thresholds(entries: Any, where: str) -> tuple[RobustAccuracyThreshold, ...]:
    if not isinstance(entries, list):
        raise ValueError(f"{where} expected {_GATE_KEYS['robust_accuracy']} ([[gate.robust_accuracy]]), but got {entries!r}.")
    thresholds = []
    for position, entry in enumerate(entries):
        here = f"{where}[{position}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{here} expected a table with keys norm, epsilon and min, but got {entry!r}.")
        unknown = sorted(set(entry) - set(_ROBUST_ACCURACY_KEYS))
        missing = [key for key in _ROBUST_ACCURACY_KEYS if key not in entry]
        if unknown or missing:
            raise ValueError(
                f"{here} expected the keys norm, epsilon and min, but "
                + (f"got unknown key(s) {', '.join(unknown)}" if unknown else f"key(s) {', '.join(missing)} are missing")
                + "."
            )
        norm = entry["norm"]
        if norm not in NORMS:
            raise ValueError(f"{here}.norm expected 'linf' or 'l2', but got {norm!r}.")
        epsilon = _number(entry["epsilon"], f"{here}.epsilon", minimum=0.0)
        minimum = _number(entry["min"], f"{here}.min", minimum=0.0, maximum=1.0)
        thresholds.append(RobustAccuracyThreshold(norm, epsilon, minimum))
    return tuple(thresholds)


# Checking results against the policy.


def evaluate_gate(results: Results, policy: Policy, baseline: Results | None = None) -> GateOutcome:
    """Check ``results`` against every threshold of ``policy``.

    With ``baseline``, the clean accuracy and the robust accuracy at every (norm, epsilon) that
    both results share may drop by at most ``policy.max_regression`` (absolute).

    Raises:
        ValueError: the policy needs a number that the results do not contain, such as an
            epsilon that was not evaluated, a norm without attacks or tangent sensitivity.
            Also raised when ``max_regression`` is set without a baseline or the reverse, and
            when the baseline was computed on other data.
    """
    label = model_label(results)
    checks: list[GateCheck] = []

    if policy.min_clean_accuracy is not None:
        checks.append(_check("clean_accuracy", "clean accuracy", "min", policy.min_clean_accuracy, results.clean_accuracy))

    for threshold in policy.robust_accuracy:
        value = robust_accuracy_at(results, threshold.norm, threshold.epsilon)
        if value is None:
            grid = next((tm.epsilons for tm in results.threat_models if tm.norm == threshold.norm), None)
            raise ValueError(
                f"The policy needs robust accuracy at {threshold.norm} epsilon {threshold.epsilon:g}, but "
                f"{label!r} was evaluated at {threshold.norm} epsilons {grid if grid is not None else 'none'}. "
                "Re-run with that epsilon (gate does this when given a model file) or change the policy."
            )
        checks.append(_check(
            f"robust_accuracy[{threshold.norm}@{threshold.epsilon:g}]",
            f"robust accuracy at {threshold.norm} epsilon {threshold.epsilon:g}",
            "min", threshold.minimum, value,
        ))

    for norm, minimum in policy.min_median_adversarial_distance.items():
        if not any(tm.norm == norm for tm in results.threat_models):
            raise ValueError(
                f"The policy needs the median minimal adversarial distance under {norm}, but {label!r} "
                f"was not attacked under {norm}. Re-run with a {norm} threat model or change the policy."
            )
        median = median_min_adversarial_distance(results, norm)
        if median is None:
            raise ValueError(f"The policy needs the median minimal adversarial distance, but {label!r} has no samples.")
        checks.append(_check(
            f"median_min_adversarial_distance[{norm}]", f"median minimal adversarial distance ({norm})",
            "min", minimum, median,
        ))

    if policy.max_mean_tangent_sensitivity is not None:
        mean = mean_tangent_sensitivity(results)
        if mean is None:
            raise ValueError(
                f"The policy sets max_mean_tangent_sensitivity, but {label!r} has no finite tangent "
                "sensitivity values. Re-run the evaluation or remove the threshold."
            )
        checks.append(_check(
            "mean_tangent_sensitivity", "mean tangent sensitivity (predicted class)",
            "max", policy.max_mean_tangent_sensitivity, mean,
        ))

    checks.extend(_regression_checks(results, policy, baseline))
    unreliable = tuple(flag for flag in results.flags if flag.severity == "error")
    return GateOutcome(
        model=label,
        checks=tuple(checks),
        unreliable_flags=unreliable,
        fail_on_unreliable=policy.fail_on_unreliable,
        baseline=model_label(baseline) if baseline is not None else None,
    )


def _check(name: str, description: str, bound: Literal["min", "max"], threshold: float, value: float) -> GateCheck:
    # The tolerance keeps rounding in differences such as 0.90 - 0.88 from failing a 0.02 limit.
    passed = value >= threshold - _TOLERANCE if bound == "min" else value <= threshold + _TOLERANCE
    return GateCheck(name, description, bound, threshold, value, bool(passed))


def _regression_checks(results: Results, policy: Policy, baseline: Results | None) -> list[GateCheck]:
    if baseline is None:
        if policy.max_regression is not None:
            raise ValueError(
                "The policy sets max_regression, but no baseline results were given. "
                "Pass --baseline results.json, or remove max_regression from the policy."
            )
        return []
    if policy.max_regression is None:
        raise ValueError(
            "A baseline was given, but the policy sets no max_regression. "
            "Add max_regression (largest allowed accuracy drop, for example 0.02) to the [gate] table."
        )
    if baseline.data.sha256 != results.data.sha256:
        raise ValueError(
            f"Expected the baseline to be evaluated on the same data, but it used {baseline.data.name!r} "
            f"(sha256 {baseline.data.sha256[:12]}) and the model used {results.data.name!r} "
            f"(sha256 {results.data.sha256[:12]}). Pass a baseline from the same --data."
        )

    limit = policy.max_regression
    checks = [_check(
        "regression[clean_accuracy]", "drop in clean accuracy against the baseline",
        "max", limit, baseline.clean_accuracy - results.clean_accuracy,
    )]
    for threat_model in baseline.threat_models:
        for position, epsilon in enumerate(threat_model.epsilons):
            current = robust_accuracy_at(results, threat_model.norm, epsilon)
            if current is None or position >= len(threat_model.robust_accuracy):
                continue
            checks.append(_check(
                f"regression[robust_accuracy[{threat_model.norm}@{epsilon:g}]]",
                f"drop in robust accuracy at {threat_model.norm} epsilon {epsilon:g} against the baseline",
                "max", limit, threat_model.robust_accuracy[position] - current,
            ))
    return checks
