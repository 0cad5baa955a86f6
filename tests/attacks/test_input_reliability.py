"""Reliability flags: models that mislead attacks, and the checks on summarized results."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from robusteval._types import Bounds
from robusteval.attacks import (
    AttackBudget,
    ThreatModel,
    assess_reliability,
    run_input_attacks,
    summarize_threat_models,
)
from robusteval.attacks.reliability import (
    check_backend_agreement,
    check_black_box,
    check_input_gradients,
    check_nondeterministic_outputs,
    check_probability_outputs,
    check_robust_accuracy_reaches_zero,
    compare_backend_success,
)
from robusteval.results import NormPair, SampleRecord, ThreatModelResult

pytestmark = pytest.mark.usefixtures("single_thread")

UNIT = Bounds(0.0, 1.0)


class _RandomForward(nn.Module):
    """Adds fresh Gaussian noise to the logits on every call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        return logits + 0.1 * torch.randn_like(logits)


class _Probabilities(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.model(x), dim=1)


class _Quantized(nn.Module):
    """Rounds the input to multiples of 1/4 first: the input gradient is zero everywhere."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * 4) / 4)


class _BatchDependent(nn.Module):
    """Subtracts the batch mean of the logits, so a sample's output depends on its batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        return logits - logits.mean(dim=0, keepdim=True)


def _codes(flags: list) -> set[str]:
    return {flag.code for flag in flags}


def test_random_forward_flagged(digits_mlp: nn.Module, digits_test: tuple[Tensor, Tensor]) -> None:
    (flag,) = check_nondeterministic_outputs(_RandomForward(digits_mlp), digits_test[0])
    assert flag.code == "nondeterministic_outputs"
    assert flag.severity == "error"
    assert flag.stage == "attacks"
    assert flag.details["repeat_difference"] > 0.01


def test_batch_dependent_flagged(digits_mlp: nn.Module, digits_test: tuple[Tensor, Tensor]) -> None:
    (flag,) = check_nondeterministic_outputs(_BatchDependent(digits_mlp), digits_test[0])
    assert flag.details["repeat_difference"] == 0.0
    assert flag.details["batch_difference"] > 0.01
    assert "one-at-a-time" in flag.message


def test_probability_outputs_flagged(digits_mlp: nn.Module, digits_test: tuple[Tensor, Tensor]) -> None:
    (flag,) = check_probability_outputs(_Probabilities(digits_mlp), digits_test[0])
    assert flag.code == "probability_outputs"
    assert flag.severity == "error"
    assert check_probability_outputs(digits_mlp, digits_test[0]) == []


def test_zero_gradients_flagged(digits_mlp: nn.Module, digits_test: tuple[Tensor, Tensor]) -> None:
    x, y = digits_test
    (flag,) = check_input_gradients(_Quantized(digits_mlp), x, y)
    assert flag.code == "zero_gradients"
    assert flag.severity == "error"
    assert flag.details["zero"] == len(x)
    assert check_input_gradients(digits_mlp, x, y) == []


def test_margin_gradient_matches_finite_difference(digits_mlp: nn.Module, digits_test: tuple[Tensor, Tensor]) -> None:
    """The healthy MLP's margin gradient is nonzero and agrees with a central finite difference."""
    model = copy.deepcopy(digits_mlp).double()
    x, label = digits_test[0][:1].double(), int(digits_test[1][0])
    direction = torch.zeros_like(x)
    direction[0, 36] = 1.0

    def margin(point: Tensor) -> Tensor:
        logits = model(point)[0]
        return logits[label] - torch.cat([logits[:label], logits[label + 1 :]]).max()

    inputs = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(margin(inputs), inputs)
    step = 1e-6
    with torch.no_grad():
        finite_difference = float(margin(x + step * direction) - margin(x - step * direction)) / (2 * step)
    assert float(gradient[0, 36]) != 0.0
    assert float(gradient[0, 36]) == pytest.approx(finite_difference, rel=1e-6)
    assert check_input_gradients(model, x, digits_test[1][:1]) == []


def test_gradient_masking_found_by_attacks(
    digits_mlp: nn.Module,
    digits_test: tuple[Tensor, Tensor],
    fast_budget: AttackBudget,
    sample_records: Callable[..., list[SampleRecord]],
) -> None:
    """On the quantized model, gradient attacks stall while Square's random search breaks samples."""
    model = _Quantized(digits_mlp)
    x, y = digits_test
    threat_models = [ThreatModel("linf", (0.2, 0.4, 1.0))]
    attacks = ["fgsm", "deepfool", "square"]
    budget = AttackBudget(steps=10, square_queries=300)
    outcome = run_input_attacks(model, x, y, threat_models=threat_models, attacks=attacks, bounds=UNIT, seed=0,
                                budget=budget)
    samples = sample_records(outcome, y)
    results = summarize_threat_models(samples, threat_models, attacks, outcome.skipped, outcome.seconds)

    flags = assess_reliability(model, x, y, results, samples, bounds=UNIT, seed=0)
    codes = _codes(flags)
    assert "zero_gradients" in codes
    assert "black_box_beats_white_box" in codes
    (black_box,) = [flag for flag in flags if flag.code == "black_box_beats_white_box"]
    assert black_box.severity == "error"
    assert max(black_box.details["black_box_only"]) > 1


def test_healthy_model_has_no_flags(
    digits_mlp: nn.Module,
    digits_test: tuple[Tensor, Tensor],
    fast_budget: AttackBudget,
    sample_records: Callable[..., list[SampleRecord]],
) -> None:
    x, y = digits_test
    threat_models = [ThreatModel("linf", (0.05, 0.1, 1.0)), ThreatModel("l2", (0.5, 8.0))]
    attacks = ["fmn", "pgd", "square"]
    outcome = run_input_attacks(digits_mlp, x, y, threat_models=threat_models, attacks=attacks, bounds=UNIT, seed=0,
                                budget=fast_budget)
    samples = sample_records(outcome, y)
    results = summarize_threat_models(samples, threat_models, attacks, outcome.skipped, outcome.seconds)
    assert outcome.flags == []
    assert assess_reliability(digits_mlp, x, y, results, samples, bounds=UNIT, seed=0) == []


def test_backends_agree_on_healthy_model(digits_mlp: nn.Module, digits_test: tuple[Tensor, Tensor]) -> None:
    x, y = digits_test
    result = ThreatModelResult(norm="linf", epsilons=[0.05, 0.1, 0.2], robust_accuracy=[0.8, 0.4, 0.0],
                               attack_success_rate=[0.2, 0.6, 1.0])
    assert check_backend_agreement(digits_mlp, x, y, [result], bounds=UNIT, seed=0) == []
    assert check_backend_agreement(digits_mlp, x, y, [], bounds=UNIT, seed=0) == []


@pytest.mark.parametrize(
    "foolbox_hits, torchattacks_hits, flagged",
    [(20, 20, False), (20, 17, False), (20, 16, False), (20, 15, True), (10, 30, True), (0, 3, False)],
)
def test_backend_comparison_threshold(foolbox_hits: int, torchattacks_hits: int, flagged: bool) -> None:
    """With 40 samples the gap must exceed both 3 samples and 10% (4 samples)."""
    foolbox = torch.arange(40) < foolbox_hits
    torchattacks = torch.arange(40) < torchattacks_hits
    flags = compare_backend_success(foolbox, torchattacks, 0.1)
    assert bool(flags) == flagged
    if flagged:
        assert flags[0].code == "backend_disagreement"
        assert flags[0].details["disagreeing_samples"] == abs(foolbox_hits - torchattacks_hits)


def _sample(correct: bool, success: dict[str, list[bool]]) -> SampleRecord:
    return SampleRecord(
        index=0, label=0, prediction=0, correct=correct, tangent_sensitivity=[], region_distance=NormPair(),
        linear_decision_distance=NormPair(), certified_radius=NormPair(), min_adversarial_distance=NormPair(),
        attack_success={name: {"linf": values} for name, values in success.items()},
    )


def test_black_box_tolerance() -> None:
    result = ThreatModelResult(norm="linf", epsilons=[0.1, 0.2], robust_accuracy=[0.5, 0.0],
                               attacks=["pgd", "square", "autoattack"])
    broken_by_square_only = _sample(True, {"pgd": [False, True], "square": [True, True]})
    broken_by_both = _sample(True, {"pgd": [True, True], "square": [True, True]})
    robust = _sample(True, {"pgd": [False, False], "square": [False, False]})

    assert check_black_box([broken_by_square_only, broken_by_both, robust], [result]) == []  # 1 sample tolerated
    (flag,) = check_black_box([broken_by_square_only] * 2 + [robust], [result])
    assert flag.details["black_box_only"] == [2, 0]
    assert "0.1" in flag.message

    no_white_box = ThreatModelResult(norm="linf", epsilons=[0.1, 0.2], robust_accuracy=[0.5, 0.0],
                                     attacks=["square", "autoattack"])
    assert check_black_box([broken_by_square_only] * 3, [no_white_box]) == []


def test_robust_accuracy_not_zero_severity() -> None:
    at_diameter = ThreatModelResult(norm="l2", epsilons=[0.5, 8.0], robust_accuracy=[0.5, 0.1])
    below_diameter = ThreatModelResult(norm="linf", epsilons=[0.1, 0.3], robust_accuracy=[0.5, 0.2])
    reaches_zero = ThreatModelResult(norm="linf", epsilons=[0.1, 1.0], robust_accuracy=[0.5, 0.0])

    flags = check_robust_accuracy_reaches_zero([at_diameter, below_diameter, reaches_zero], (64,), UNIT)
    assert [(flag.details["norm"], flag.severity) for flag in flags] == [("l2", "error"), ("linf", "warning")]
    assert flags[0].details["box_diameter"] == pytest.approx(8.0)
