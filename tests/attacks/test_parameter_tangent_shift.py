"""Tangent shift against an independently computed tangent sensitivity on a small MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacfwd

from robusteval.attacks.parameter import tangent_shift

# torch 2.13's forward-mode AD (jacfwd) loads TorchScript decompositions on first use and warns.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def make_mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    # float64, so that rounding in the difference of two tangent vectors stays far below the
    # tolerances checked here.
    return model.double().eval(), torch.randn(10, 5, dtype=torch.float64)


def tangent_jacobians(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return T = d/dx grad_theta f_k(x) ``(N, P, d)`` by jacfwd, and the predicted classes ``(N,)``."""
    parameters = {name: p.detach() for name, p in model.named_parameters()}
    predicted = model(x).argmax(dim=1)
    jacobians = []
    for sample, target in zip(x, predicted.tolist()):

        def flat_tangent(point: torch.Tensor, target: int = target) -> torch.Tensor:
            gradient = grad(lambda p: functional_call(model, p, (point.unsqueeze(0),))[0, target])(parameters)
            return torch.cat([value.flatten() for value in gradient.values()])

        jacobians.append(jacfwd(flat_tangent)(sample))
    return torch.stack(jacobians), predicted


def test_tangent_shift_within_bound_inside_region() -> None:
    model, x = make_mlp()
    jacobians, _ = tangent_jacobians(model, x)
    sensitivity = torch.linalg.matrix_norm(jacobians, ord="fro")
    result = tangent_shift(
        model, x, epsilon=1e-3, tangent_sensitivity=sensitivity, region_distance=torch.full((10,), float("nan")),
        steps=30, seed=0,
    )
    inside = ~result.crossed_region
    assert inside.sum() >= 8
    assert result.bound_violations_inside_region == 0
    assert all(holds is True for holds, crossed in zip(result.bound_holds, result.crossed_region) if not crossed)
    assert torch.all(result.achieved[inside] <= result.bound[inside] * (1 + 1e-5))
    torch.testing.assert_close(result.bound, sensitivity.double() * 1e-3)


def test_tangent_shift_reaches_top_singular_value() -> None:
    model, x = make_mlp()
    jacobians, _ = tangent_jacobians(model, x)
    sensitivity = torch.linalg.matrix_norm(jacobians, ord="fro")
    top = torch.linalg.matrix_norm(jacobians, ord=2).double()
    result = tangent_shift(
        model, x, epsilon=1e-3, tangent_sensitivity=sensitivity, region_distance=torch.full((10,), float("nan")),
        steps=30, seed=0,
    )
    inside = ~result.crossed_region
    # Inside the region the largest shift over the ball is sigma_max(T) * epsilon. The ascent
    # acts like power iteration, so 30 steps get within 2% of it.
    ratio = result.achieved[inside] / (top[inside] * 1e-3)
    assert torch.all(ratio <= 1 + 1e-4), ratio.tolist()
    assert torch.all(ratio >= 0.98), ratio.tolist()


def test_tangent_shift_matches_linear_map_inside_region() -> None:
    model, x = make_mlp()
    jacobians, _ = tangent_jacobians(model, x)
    sensitivity = torch.linalg.matrix_norm(jacobians, ord="fro")
    result = tangent_shift(
        model, x, epsilon=1e-3, tangent_sensitivity=sensitivity, region_distance=torch.full((10,), float("nan")),
        steps=5, seed=1,
    )
    inside = ~result.crossed_region
    linear = torch.einsum("npd,nd->np", jacobians, result.delta).norm(dim=1).double()
    torch.testing.assert_close(result.achieved[inside], linear[inside], rtol=1e-3, atol=1e-7)


def test_tangent_shift_reports_region_crossings() -> None:
    model, x = make_mlp()
    jacobians, _ = tangent_jacobians(model, x)
    sensitivity = torch.linalg.matrix_norm(jacobians, ord="fro")
    distance = torch.full((10,), 0.05)
    result = tangent_shift(
        model, x, epsilon=2.0, tangent_sensitivity=sensitivity, region_distance=distance, steps=10, seed=0
    )
    assert 0.0 < result.share_crossed <= 1.0
    assert result.share_crossed == pytest.approx(float(result.crossed_region.double().mean()))
    assert all(holds is None for holds, crossed in zip(result.bound_holds, result.crossed_region) if crossed)
    assert not result.within_region_distance.any()
    assert torch.all(result.delta.norm(dim=1) <= 2.0 * (1 + 1e-5))
    records = result.records()
    assert len(records) == 10
    assert [record.crossed_region for record in records] == result.crossed_region.tolist()


def test_tangent_shift_accepts_per_class_sensitivity() -> None:
    model, x = make_mlp()
    per_class = torch.rand(10, 3, dtype=torch.float64)
    predicted = model(x).argmax(dim=1)
    result = tangent_shift(
        model, x, epsilon=0.1, tangent_sensitivity=per_class, region_distance=torch.ones(10), steps=1, seed=0
    )
    torch.testing.assert_close(result.bound, per_class[torch.arange(10), predicted].double() * 0.1)


def test_tangent_shift_rejects_bad_sensitivity_shape() -> None:
    model, x = make_mlp()
    with pytest.raises(ValueError, match="tangent_sensitivity of shape"):
        tangent_shift(model, x, epsilon=0.1, tangent_sensitivity=torch.ones(4), region_distance=torch.ones(10),
                      steps=1, seed=0)


def test_exact_tangent_sensitivity_matches_jacfwd() -> None:
    from robusteval.attacks.parameter.single_example_update import exact_tangent_sensitivity

    model, x = make_mlp()
    jacobians, predicted = tangent_jacobians(model, x[:3])
    parameters = {name: p.detach() for name, p in model.named_parameters()}
    for index in range(3):
        value = exact_tangent_sensitivity(model, parameters, x[index : index + 1], int(predicted[index]))
        assert value == pytest.approx(float(jacobians[index].norm()), rel=1e-9)
