"""Gate policy: TOML validation and threshold checks against hand-computed statistics."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from robusteval.gate import Policy, RobustAccuracyThreshold, evaluate_gate, load_policy
from robusteval.results import (
    DataInfo,
    EnvironmentInfo,
    Flag,
    ModelInfo,
    NormPair,
    Results,
    SampleRecord,
    ThreatModelResult,
)

# (correct, min adversarial linf distance or None if never fooled, tangent sensitivity per class)
SAMPLES = [
    (True, 0.04, [2.0, 5.0]),
    (True, 0.10, [1.0, 3.0]),
    (False, None, [4.0, 6.0]),
    (True, None, [3.0, 1.0]),
    (True, 0.02, [2.5, 0.5]),
]


def make_results(*, clean: float = 0.8, robust: list[float] | None = None, flags: list[Flag] | None = None,
                 data_sha: str = "cd" * 32) -> Results:
    records = []
    for index, (correct, distance, sensitivity) in enumerate(SAMPLES):
        records.append(SampleRecord(
            index=index, label=0, prediction=0 if correct else 1, correct=correct,
            tangent_sensitivity=sensitivity, region_distance=NormPair(), linear_decision_distance=NormPair(),
            certified_radius=NormPair(), min_adversarial_distance=NormPair(linf=distance),
        ))
    return Results(
        model=ModelInfo(path="m.pt", sha256="ab" * 32, format="torchscript", parameter_count=10, piecewise_linear=True),
        data=DataInfo(name="digits", sha256=data_sha, num_samples=5, input_shape=[64], input_bounds=[0.0, 1.0]),
        environment=EnvironmentInfo(robusteval="0.1.0", torch="2", foolbox=None, torchattacks=None, python="3.11",
                                    device="cpu", seed=0),
        clean_accuracy=clean,
        threat_models=[ThreatModelResult(norm="linf", epsilons=[0.03, 0.05], robust_accuracy=robust or [0.6, 0.4])],
        samples=records,
        flags=flags or [],
    )


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "robusteval.toml"
    path.write_text(text, encoding="utf-8")
    return path


FULL_POLICY = """
[run]
ignored = "tables other than [gate] belong to other commands"

[gate]
min_clean_accuracy = 0.75
max_mean_tangent_sensitivity = 3
max_regression = 0.05
fail_on_unreliable = false

[gate.min_median_adversarial_distance]
linf = 0.04

[[gate.robust_accuracy]]
norm = "linf"
epsilon = 0.05
min = 0.4
"""


def test_load_full_policy(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, FULL_POLICY))

    assert policy.min_clean_accuracy == 0.75
    assert policy.max_mean_tangent_sensitivity == 3.0
    assert policy.max_regression == 0.05
    assert policy.fail_on_unreliable is False
    assert dict(policy.min_median_adversarial_distance) == {"linf": 0.04}
    assert policy.robust_accuracy == (RobustAccuracyThreshold("linf", 0.05, 0.4),)
    assert policy.epsilons() == {"linf": [0.05]}


def test_empty_gate_defaults(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, "[gate]\n"))

    assert policy == Policy(source=policy.source)
    assert policy.fail_on_unreliable is True


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[gate]\nmin_clean_acuracy = 0.9\n", "unknown key(s) gate.min_clean_acuracy"),
        ("[gate]\nmin_clean_accuracy = 'high'\n", "gate.min_clean_accuracy expected a number, but got 'high' (str)"),
        ("[gate]\nmin_clean_accuracy = 1.5\n", "gate.min_clean_accuracy expected a number [0, 1], but got 1.5"),
        ("[gate]\nmin_clean_accuracy = true\n", "expected a number, but got True (bool)"),
        ("[gate]\nfail_on_unreliable = 1\n", "gate.fail_on_unreliable expected true or false, but got 1"),
        ("[gate]\nmax_mean_tangent_sensitivity = -1\n", "expected a number >= 0, but got -1"),
        ("[gate.min_median_adversarial_distance]\nl1 = 0.1\n", "expected a norm 'linf' or 'l2' as key, but got 'l1'"),
        ("[[gate.robust_accuracy]]\nnorm = 'linf'\nepsilon = 0.1\n", "key(s) min are missing"),
        ("[[gate.robust_accuracy]]\nnorm = 'linf'\nepsilon = 0.1\nmin = 0.5\nmax = 1\n", "unknown key(s) max"),
        ("[[gate.robust_accuracy]]\nnorm = 'l3'\nepsilon = 0.1\nmin = 0.5\n", "norm expected 'linf' or 'l2', but got 'l3'"),
        ("[gate]\nrobust_accuracy = 0.5\n", "gate.robust_accuracy expected an array of tables"),
        ("gate = 3\n", "expected a [gate] table, but 'gate' is a int"),
        ("[other]\nx = 1\n", "expected a [gate] table, but found none"),
        ("[gate\n", "not valid TOML"),
    ],
)
def test_invalid_policy_messages(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        load_policy(write_policy(tmp_path, text))

    assert fragment in str(error.value)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Policy file not found"):
        load_policy(tmp_path / "absent.toml")


def test_statistics_match_hand_values() -> None:
    policy = Policy(
        min_clean_accuracy=0.8,
        robust_accuracy=(RobustAccuracyThreshold("linf", 0.05, 0.41),),
        min_median_adversarial_distance={"linf": 0.04},
        max_mean_tangent_sensitivity=2.0,
    )
    outcome = evaluate_gate(make_results(), policy)
    by_name = {check.name: check for check in outcome.checks}

    # Misclassified samples count as distance 0 and never-fooled ones as inf.
    expected_median = statistics.median([0.04, 0.10, 0.0, float("inf"), 0.02])
    # Tangent sensitivity of the predicted class: 2.0, 1.0, 6.0 (predicted 1), 3.0, 2.5.
    expected_mean = (2.0 + 1.0 + 6.0 + 3.0 + 2.5) / 5
    assert by_name["median_min_adversarial_distance[linf]"].value == pytest.approx(expected_median, abs=1e-12)
    assert by_name["median_min_adversarial_distance[linf]"].passed
    assert by_name["mean_tangent_sensitivity"].value == pytest.approx(expected_mean, abs=1e-12)
    assert not by_name["mean_tangent_sensitivity"].passed
    assert by_name["clean_accuracy"].passed
    assert by_name["robust_accuracy[linf@0.05]"].value == 0.4
    assert not by_name["robust_accuracy[linf@0.05]"].passed
    assert outcome.status == "failed"
    assert [check.name for check in outcome.failed_checks] == ["robust_accuracy[linf@0.05]", "mean_tangent_sensitivity"]


def test_unreliable_overrides_thresholds() -> None:
    flag = Flag("zero_gradients", "error", "zero input gradients", "attacks")
    results = make_results(flags=[flag, Flag("train_mode", "warning", "train mode", "preflight")])

    strict = evaluate_gate(results, Policy(min_clean_accuracy=0.99))
    lenient = evaluate_gate(results, Policy(min_clean_accuracy=0.99, fail_on_unreliable=False))

    assert strict.unreliable_flags == (flag,)
    assert strict.status == "unreliable"
    assert lenient.status == "failed"


def test_regression_against_baseline() -> None:
    baseline = make_results(clean=0.85, robust=[0.62, 0.45])
    current = make_results(clean=0.80, robust=[0.60, 0.40])
    outcome = evaluate_gate(current, Policy(max_regression=0.05), baseline)
    values = {check.name: (check.value, check.passed) for check in outcome.checks}

    assert values["regression[clean_accuracy]"][0] == pytest.approx(0.05)
    assert values["regression[clean_accuracy]"][1], "a drop equal to the limit passes"
    assert values["regression[robust_accuracy[linf@0.03]]"] == (pytest.approx(0.02), True)
    assert values["regression[robust_accuracy[linf@0.05]]"][0] == pytest.approx(0.05)
    assert evaluate_gate(current, Policy(max_regression=0.049), baseline).status == "failed"


@pytest.mark.parametrize(
    ("policy", "baseline", "fragment"),
    [
        (Policy(robust_accuracy=(RobustAccuracyThreshold("linf", 0.2, 0.1),)), None, "evaluated at linf epsilons [0.03, 0.05]"),
        (Policy(robust_accuracy=(RobustAccuracyThreshold("l2", 0.5, 0.1),)), None, "at l2 epsilons none"),
        (Policy(min_median_adversarial_distance={"l2": 0.1}), None, "was not attacked under l2"),
        (Policy(max_regression=0.01), None, "no baseline results were given"),
        (Policy(), make_results(), "the policy sets no max_regression"),
        (Policy(max_regression=0.01), make_results(data_sha="ef" * 32), "same data"),
    ],
)
def test_gate_input_errors(policy: Policy, baseline: Results | None, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        evaluate_gate(make_results(), policy, baseline)

    assert fragment in str(error.value)
