"""The recheck: backends that misreport success, and the checks one by one."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from robusteval._types import Bounds, Norm
from robusteval.attacks import (
    AttackBudget,
    AttackContext,
    AttackResult,
    AttackSpec,
    ThreatModel,
    recheck_adversarial,
    register_attack,
    run_input_attacks,
    unregister_attack,
)
from robusteval.attacks._foolbox import run_pgd

pytestmark = pytest.mark.usefixtures("single_thread")

UNIT = Bounds(0.0, 1.0)
EPSILON = 0.1


def _other_class_examples(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """For each input, a real digit from the same block that the model assigns to another class."""
    with torch.no_grad():
        predictions = model(x).argmax(dim=1)
    chosen = []
    for label in y:
        (candidates,) = (predictions != label).nonzero(as_tuple=True)
        chosen.append(x[candidates[0]])
    return torch.stack(chosen)


def _lying_backends(model: nn.Module, pool_x: Tensor, pool_y: Tensor) -> dict[str, Callable[..., AttackResult]]:
    """Backends that report success for every sample, each violating the check it is named after.

    The first two violate nothing else; the last two also return inputs the model classifies correctly.
    """

    def unchanged(model: nn.Module, x: Tensor, y: Tensor, norm: Norm, epsilon: float | None,
                  context: AttackContext) -> AttackResult:
        return AttackResult(x.clone(), torch.ones(len(x), dtype=torch.bool))

    def too_far(model: nn.Module, x: Tensor, y: Tensor, norm: Norm, epsilon: float | None,
                context: AttackContext) -> AttackResult:
        return AttackResult(_other_class_examples(model, pool_x, y), torch.ones(len(x), dtype=torch.bool))

    def out_of_bounds(model: nn.Module, x: Tensor, y: Tensor, norm: Norm, epsilon: float | None,
                      context: AttackContext) -> AttackResult:
        # The first pixel of every digit is 0; moving it to -epsilon / 2 stays within epsilon.
        shifted = x.clone()
        shifted[:, 0] = x[:, 0] - 0.5 * float(epsilon or 0.0)
        return AttackResult(shifted, torch.ones(len(x), dtype=torch.bool))

    def not_finite(model: nn.Module, x: Tensor, y: Tensor, norm: Norm, epsilon: float | None,
                   context: AttackContext) -> AttackResult:
        return AttackResult(torch.full_like(x, math.nan), torch.ones(len(x), dtype=torch.bool))

    return {
        "not_misclassified": unchanged,
        "outside_epsilon": too_far,
        "out_of_bounds": out_of_bounds,
        "non_finite": not_finite,
    }


@pytest.fixture
def registered() -> Iterator[Callable[[str, Callable[..., AttackResult], str], None]]:
    names: list[str] = []

    def register(name: str, run: Callable[..., AttackResult], kind: str = "fixed_budget") -> None:
        spec = AttackSpec(
            name=name, kind=kind, backend="custom", norms=("linf", "l2"), min_classes=2,  # type: ignore[arg-type]
            search="white_box", description="test backend", run=run,
        )
        register_attack(spec)
        names.append(name)

    yield register
    for name in names:
        unregister_attack(name)


@pytest.mark.parametrize("reason", ["not_misclassified", "outside_epsilon", "out_of_bounds", "non_finite"])
def test_lying_backend_is_flagged_and_ignored(
    reason: str,
    registered: Callable[..., None],
    digits_mlp: nn.Module,
    digits_test: tuple[Tensor, Tensor],
    fast_budget: AttackBudget,
) -> None:
    x, y = digits_test[0][:8], digits_test[1][:8]
    registered(f"liar-{reason}", _lying_backends(digits_mlp, *digits_test)[reason])
    outcome = run_input_attacks(digits_mlp, x, y, threat_models=[ThreatModel("linf", (EPSILON,))],
                                attacks=[f"liar-{reason}"], bounds=UNIT, seed=0, budget=fast_budget)

    correct = int(outcome.correct.sum())
    assert correct > 0
    assert not bool(outcome.success[f"liar-{reason}"]["linf"].any())
    assert bool(torch.isnan(outcome.min_distance["linf"]).all())
    assert torch.equal(outcome.robust["linf"][:, 0], outcome.correct)

    (flag,) = outcome.flags
    assert flag.code == "adversarial_recheck_failed"
    assert flag.stage == "attacks"
    assert flag.details["attack"] == f"liar-{reason}"
    assert flag.details["failures"][reason] == correct
    if reason in ("not_misclassified", "outside_epsilon"):
        assert set(flag.details["failures"]) == {reason}
    assert flag.details["block_positions"] == outcome.correct.nonzero().flatten().tolist()


def test_lying_minimal_norm_backend_is_flagged(
    registered: Callable[..., None], digits_mlp: nn.Module, digits_test: tuple[Tensor, Tensor],
    fast_budget: AttackBudget,
) -> None:
    x, y = digits_test[0][:8], digits_test[1][:8]
    registered("liar-minimal", _lying_backends(digits_mlp, *digits_test)["not_misclassified"], "minimal_norm")
    outcome = run_input_attacks(digits_mlp, x, y, threat_models=[ThreatModel("l2", (0.5,))],
                                attacks=["liar-minimal"], bounds=UNIT, seed=0, budget=fast_budget)
    (flag,) = outcome.flags
    assert flag.details["epsilon"] is None
    assert "without a norm limit" in flag.message
    assert not bool(outcome.success["liar-minimal"]["l2"].any())


def test_unclaimed_real_examples_count(
    registered: Callable[..., None], digits_mlp: nn.Module, digits_test: tuple[Tensor, Tensor],
    fast_budget: AttackBudget,
) -> None:
    """A backend that finds examples but reports failure: the recheck, not the claim, decides."""

    def modest(model: nn.Module, x: Tensor, y: Tensor, norm: Norm, epsilon: float | None,
               context: AttackContext) -> AttackResult:
        result = run_pgd(model, x, y, norm, epsilon, context)
        return AttackResult(result.adversarial, torch.zeros(len(x), dtype=torch.bool))

    x, y = digits_test[0][:16], digits_test[1][:16]
    registered("modest", modest)
    outcome = run_input_attacks(digits_mlp, x, y, threat_models=[ThreatModel("linf", (0.15,))],
                                attacks=["modest", "pgd"], bounds=UNIT, seed=0, budget=fast_budget)
    assert outcome.flags == []
    assert bool(outcome.success["modest"]["linf"].any())
    with torch.no_grad():
        broken = outcome.success["modest"]["linf"][:, 0]
        examples = outcome.adversarial_examples["linf"][broken]
        assert bool((digits_mlp(examples).argmax(dim=1) != y[broken]).all())


class _BatchSizeRecorder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.batch_sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.batch_sizes.append(len(x))
        return self.model(x)


@pytest.mark.parametrize("count, expected", [(5, [3, 2]), (4, [2, 2]), (1, [2])])
def test_recheck_batch_size_differs(
    count: int, expected: list[int], digits_mlp: nn.Module, digits_test: tuple[Tensor, Tensor]
) -> None:
    recorder = _BatchSizeRecorder(digits_mlp)
    x, y = digits_test[0][:count], digits_test[1][:count]
    recheck_adversarial(recorder, x, y, x.clone(), torch.zeros(count, dtype=torch.bool), norm="l2", epsilon=None,
                        bounds=UNIT)
    assert recorder.batch_sizes == expected


def test_recheck_hand_built_linear_model() -> None:
    """A 2-class linear model f(x) = (0, x_0 + x_1 - 1): the prediction is class 1 where x_0 + x_1 > 1."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        model.bias.copy_(torch.tensor([0.0, -1.0]))
    inputs = torch.tensor([[0.4, 0.4], [0.4, 0.4], [0.4, 0.4], [0.4, 0.4]])
    labels = torch.zeros(4, dtype=torch.long)
    candidates = torch.tensor([
        [0.55, 0.55],  # adversarial, Linf 0.15, L2 0.2121
        [0.40, 0.70],  # adversarial? 1.1 > 1: yes, Linf 0.3
        [0.45, 0.45],  # not adversarial: 0.9 < 1
        [1.20, 0.40],  # adversarial but outside [0, 1]
    ])
    claimed = torch.ones(4, dtype=torch.bool)

    check = recheck_adversarial(model, inputs, labels, candidates, claimed, norm="linf", epsilon=0.2, bounds=UNIT)
    assert check.verified.tolist() == [True, False, False, False]
    assert check.distances[0].item() == pytest.approx(0.15, abs=1e-7)
    assert math.isinf(check.distances[1].item())
    assert check.failures["outside_epsilon"].tolist() == [False, True, False, True]
    assert check.failures["not_misclassified"].tolist() == [False, False, True, False]
    assert check.failures["out_of_bounds"].tolist() == [False, False, False, True]
    assert check.failed_claims.tolist() == [False, True, True, True]

    check = recheck_adversarial(model, inputs, labels, candidates, claimed, norm="l2", epsilon=None, bounds=UNIT)
    assert check.verified.tolist() == [True, True, False, False]
    assert check.distances[0].item() == pytest.approx(math.hypot(0.15, 0.15), abs=1e-7)
    assert check.distances[1].item() == pytest.approx(0.3, abs=1e-7)


def test_recheck_epsilon_tolerance() -> None:
    """Float32 rounding above epsilon passes; a real excess of 0.1% does not."""
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [1.0]]))
        model.bias.copy_(torch.tensor([0.0, -0.5]))
    inputs = torch.tensor([[0.45], [0.45]], dtype=torch.float64)
    model = model.double()
    candidates = torch.tensor([[0.55 + 1e-7], [0.55 + 1e-4]], dtype=torch.float64)
    check = recheck_adversarial(model, inputs, torch.zeros(2, dtype=torch.long), candidates,
                                torch.ones(2, dtype=torch.bool), norm="linf", epsilon=0.1, bounds=UNIT)
    assert check.verified.tolist() == [True, False]


def test_recheck_moves_boundary_example_outward() -> None:
    """On the boundary x_0 + x_1 = 1 both logits are 0 and argmax picks the label; a tiny step out counts."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        model.bias.copy_(torch.tensor([0.0, -1.0]))
    inputs = torch.tensor([[0.4, 0.4], [0.4, 0.4]])
    candidates = torch.tensor([[0.5, 0.5], [0.45, 0.45]])  # on the boundary; well inside class 0
    labels = torch.zeros(2, dtype=torch.long)

    check = recheck_adversarial(model, inputs, labels, candidates, torch.ones(2, dtype=torch.bool),
                                norm="linf", epsilon=None, bounds=UNIT)

    assert check.verified.tolist() == [True, False]
    assert 0.1 <= check.distances[0].item() <= 0.1 * 1.001
    assert check.examples is not None
    assert model(check.examples[:1]).argmax(dim=1).item() == 1
    assert torch.equal(check.examples[1], candidates[1])
    assert check.failures["not_misclassified"].tolist() == [False, True]
