"""Tests for local linear analysis: region and decision distances, certified radii, certificates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robusteval._types import Bounds
from robusteval.architectures import build_architecture
from robusteval.geometry import hidden_preactivations, local_linear_analysis

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _per_neuron_region_distance(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reference: one autograd pass per hidden unit for its input gradient, then min |z| / ||g||."""
    inputs = x.clone().requires_grad_(True)
    z = torch.cat(hidden_preactivations(model, inputs), dim=1)  # (N, units)
    distances = {"l2": torch.full((x.shape[0],), math.inf, dtype=x.dtype), "linf": torch.full((x.shape[0],), math.inf, dtype=x.dtype)}
    for unit in range(z.shape[1]):
        (gradient,) = torch.autograd.grad(z[:, unit].sum(), inputs, retain_graph=True)
        gradient = gradient.reshape(x.shape[0], -1)
        for norm, order in (("l2", 2), ("linf", 1)):
            dual = torch.linalg.vector_norm(gradient, ord=order, dim=1)
            candidate = torch.where(dual > 0, z[:, unit].detach().abs() / dual, torch.full_like(dual, math.inf))
            distances[norm] = torch.minimum(distances[norm], candidate)
    return distances


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)).double().eval()


def _inputs(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _hand_built_network() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        model[0].bias.copy_(torch.tensor([0.0, -0.5]))
        model[2].weight.copy_(torch.tensor([[2.0, 1.0], [-1.0, 3.0]]))
        model[2].bias.zero_()
    return model.eval()


def test_hand_built_network_exact_values() -> None:
    """A two-layer network worked out on paper.

    f(x) = W2 relu(W1 x + b1) with W1 = [[1, 1], [1, -1]], b1 = (0, -0.5),
    W2 = [[2, 1], [-1, 3]], b2 = 0, at x = (0.5, 0.25).

    Pre-activations z = (0.75, -0.25), so the pattern is (on, off), h = (0.75, 0) and the
    logits are f = (1.5, -0.75): the prediction is class 0.

    Region distance: both units have input gradients (1, 1) and (1, -1), with L2 norm sqrt(2)
    and L1 norm 2. L2: min(0.75, 0.25) / sqrt(2) = 0.25 / sqrt(2). Linf: 0.25 / 2 = 0.125.

    Tangent sensitivity, TS_k^2 = sum_l ||delta_l||^2 ||J_{l-1}||_F^2 with J_0 = I (||.||_F^2 = 2)
    and J_1 = D1 W1 = [[1, 1], [0, 0]] (||.||_F^2 = 2). For k = 0: delta_2 = e_0, delta_1 =
    D1 W2^T e_0 = (2, 0), so TS_0^2 = 1 * 2 + 4 * 2 = 10. For k = 1: delta_1 = D1 (-1, 3) =
    (-1, 0), so TS_1^2 = 1 * 2 + 1 * 2 = 4.

    Linear decision distance: the margin f_0 - f_1 = 2.25 has gradient (W2[0] - W2[1]) D1 W1 =
    (3, -2) D1 W1 = 3 (1, 1) = (3, 3). L2: 2.25 / (3 sqrt(2)) = 0.75 / sqrt(2). Linf: 2.25 / 6 =
    0.375. Both exceed the region distance, so the certified radius is the region distance and
    the certificate is not exact.
    """
    model = _hand_built_network()
    x = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    result = local_linear_analysis(model, x)

    assert result.method == "closed_form"
    assert result.predictions.tolist() == [0]
    torch.testing.assert_close(result.logits, torch.tensor([[1.5, -0.75]], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(
        result.tangent_sensitivity, torch.tensor([[math.sqrt(10), 2.0]], dtype=torch.float64), rtol=1e-15, atol=0
    )
    assert result.region_distance["l2"].item() == pytest.approx(0.25 / math.sqrt(2), rel=1e-15)
    assert result.region_distance["linf"].item() == pytest.approx(0.125, rel=1e-15)
    assert result.linear_decision_distance["l2"].item() == pytest.approx(0.75 / math.sqrt(2), rel=1e-15)
    assert result.linear_decision_distance["linf"].item() == pytest.approx(0.375, rel=1e-15)
    assert result.decision_class["l2"].tolist() == [1]
    assert result.certified_radius["l2"].item() == pytest.approx(0.25 / math.sqrt(2), rel=1e-15)
    assert result.certified_radius["linf"].item() == pytest.approx(0.125, rel=1e-15)
    assert not result.certificate_exact["l2"].item()
    assert result.active_units.tolist() == [[1]]
    assert [p.tolist() for p in result.activation_patterns] == [[[True, False]]]
    assert result.logit_margin.item() == pytest.approx(2.25, rel=1e-15)
    assert result.input_gradient_norm.item() == pytest.approx(3 * math.sqrt(2), rel=1e-15)
    # Input Jacobian W2 D1 W1 = [[2, 2], [-1, -1]]: squared Frobenius norm 4 + 4 + 1 + 1 = 10.
    assert result.input_jacobian_norm.item() == pytest.approx(math.sqrt(10), rel=1e-15)


def test_region_distance_matches_per_neuron_autograd_mlp() -> None:
    torch.manual_seed(0)
    model = build_architecture("mlp:6-9-7-4").double().eval()
    x = _inputs(5, 6)
    result = local_linear_analysis(model, x)
    reference = _per_neuron_region_distance(model, x)
    for norm in ("l2", "linf"):
        torch.testing.assert_close(result.region_distance[norm], reference[norm], rtol=1e-12, atol=0)


@pytest.mark.parametrize("scripted", [False, True])
def test_region_distance_matches_per_neuron_autograd_cnn(scripted: bool) -> None:
    model, x = _cnn(), _inputs(3, 1, 4, 4, seed=1)
    result = local_linear_analysis(torch.jit.script(model) if scripted else model, x, memory_budget=20_000)
    reference = _per_neuron_region_distance(model, x)
    assert result.method == "exact"
    for norm in ("l2", "linf"):
        torch.testing.assert_close(result.region_distance[norm], reference[norm], rtol=1e-12, atol=0)
    jacobian = torch.stack([torch.autograd.functional.jacobian(lambda s: model(s.unsqueeze(0)).squeeze(0), s).reshape(3, -1) for s in x])
    torch.testing.assert_close(result.input_jacobian_norm, torch.linalg.vector_norm(jacobian, dim=(1, 2)), rtol=1e-12, atol=0)


def test_functional_relu_network_uses_closed_form() -> None:
    class FunctionalMlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(4, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.first(x.view(x.size(0), -1))))

    torch.manual_seed(2)
    model = FunctionalMlp().double().eval()
    x = _inputs(4, 4, seed=2)
    result = local_linear_analysis(model, x)
    assert result.method == "closed_form"
    reference = _per_neuron_region_distance(model, x)
    torch.testing.assert_close(result.region_distance["l2"], reference["l2"], rtol=1e-12, atol=0)


def _points_near_decision_boundary(model: nn.Module, count: int, offset: float) -> torch.Tensor:
    """Bisect between random inputs of different predicted classes, then step ``offset`` back."""
    generator = torch.Generator().manual_seed(5)
    points = []
    for _ in range(1000):
        if len(points) == count:
            break
        a, b = torch.rand(2, 2, generator=generator, dtype=torch.float64)
        if model(a.unsqueeze(0)).argmax() == model(b.unsqueeze(0)).argmax():
            continue
        inside, outside = a, b
        for _ in range(60):
            middle = (inside + outside) / 2
            same = model(middle.unsqueeze(0)).argmax() == model(a.unsqueeze(0)).argmax()
            inside, outside = (middle, outside) if same else (inside, middle)
        points.append(inside + offset * (a - b) / (a - b).norm())
    assert len(points) == count, "the network predicts one class almost everywhere on [0, 1]^2"
    return torch.stack(points)


def test_certified_radius_below_brute_force_adversarial() -> None:
    # Seed 4 gives a network that predicts two classes on [0, 1]^2, so boundary points exist.
    torch.manual_seed(4)
    model = build_architecture("mlp:2-8-8-3").double().eval()
    with torch.no_grad():
        x = torch.cat([_inputs(6, 2, seed=3), _points_near_decision_boundary(model, 6, offset=1e-3)])
    result = local_linear_analysis(model, x, bounds=None)
    steps = torch.linspace(0, 2, 4001, dtype=torch.float64)
    assert result.certificate_exact["l2"].any()
    assert not result.certificate_exact["l2"].all()

    for index in range(x.shape[0]):
        prediction = result.predictions[index]
        radius = result.certified_radius["l2"][index].item()
        # Walk along the normal of the nearest linear decision boundary and along 32 random
        # directions, and record the first step at which the prediction changes.
        jacobian = torch.autograd.functional.jacobian(lambda s: model(s.unsqueeze(0)).squeeze(0), x[index])
        normal = jacobian[prediction] - jacobian[result.decision_class["l2"][index]]
        normal = normal / normal.norm()
        directions = torch.cat([-normal.unsqueeze(0), torch.randn(32, 2, dtype=torch.float64)])
        directions = directions / directions.norm(dim=1, keepdim=True)
        with torch.no_grad():
            points = x[index] + steps.view(1, -1, 1) * directions.unsqueeze(1)  # (directions, steps, 2)
            flipped = model(points.reshape(-1, 2)).argmax(dim=1).reshape(len(directions), -1) != prediction
            flip_distances = torch.where(flipped, steps, torch.full_like(steps, math.inf)).min(dim=1).values
            adversarial_distance = flip_distances.min().item()
            assert radius <= adversarial_distance + 1e-12
            if result.certificate_exact["l2"][index]:
                # An exact certificate is attained: just past the radius along the normal the
                # prediction changes.
                beyond = x[index] - radius * (1 + 1e-9) * normal
                assert model(beyond.unsqueeze(0)).argmax().item() != prediction.item()


def _identity_classifier() -> nn.Module:
    """f(x) = x on two inputs: no hidden units, so the region distance is infinite."""
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    return model.eval()


def test_certificate_exact_follows_bounds() -> None:
    """At x = (0.6, 0.4) the margin f_0 - f_1 = 0.2 has gradient g = (1, -1).

    L2: t = 0.2 / sqrt(2) and the closest point is x - t g / ||g|| = (0.5, 0.5). Linf: t = 0.2 / 2
    and the closest point is x - t sign(g) = (0.5, 0.5). That point is inside [0, 1] but not
    inside [0.55, 1].
    """
    model = _identity_classifier()
    x = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    inside = local_linear_analysis(model, x, bounds=Bounds(0.0, 1.0))
    outside = local_linear_analysis(model, x, bounds=Bounds(0.55, 1.0))
    unbounded = local_linear_analysis(model, x, bounds=None)

    assert inside.region_distance["l2"].item() == math.inf
    assert inside.active_units.shape == (1, 0)
    assert inside.linear_decision_distance["l2"].item() == pytest.approx(0.2 / math.sqrt(2), rel=1e-14)
    assert inside.linear_decision_distance["linf"].item() == pytest.approx(0.1, rel=1e-14)
    for norm in ("l2", "linf"):
        assert inside.certificate_exact[norm].item()
        assert not outside.certificate_exact[norm].item()
        assert unbounded.certificate_exact[norm].item()
        assert inside.certified_radius[norm].item() == inside.linear_decision_distance[norm].item()


def test_certificate_not_exact_when_region_is_closer() -> None:
    model = _hand_built_network()
    x = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    result = local_linear_analysis(model, x, bounds=None)
    assert result.region_distance["l2"] < result.linear_decision_distance["l2"]
    assert not result.certificate_exact["l2"].item()
    assert not result.certificate_exact["linf"].item()


class _ReluBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def test_scripted_custom_block_has_no_region_distance() -> None:
    """A scripted module hides its ReLUs: tangent sensitivity still comes out exact, regions do not."""
    torch.manual_seed(4)
    eager = nn.Sequential(nn.Linear(3, 5), _ReluBlock(), nn.Linear(5, 2)).double().eval()
    x = _inputs(2, 3, seed=4)
    scripted = local_linear_analysis(torch.jit.script(eager), x, method="exact")
    result = local_linear_analysis(eager, x)
    assert result.method == "closed_form"
    assert torch.isfinite(result.region_distance["l2"]).all()
    assert torch.isnan(scripted.region_distance["l2"]).all()
    assert torch.isnan(scripted.certified_radius["l2"]).all()
    torch.testing.assert_close(scripted.tangent_sensitivity, result.tangent_sensitivity, rtol=1e-9, atol=0)
    torch.testing.assert_close(scripted.linear_decision_distance["l2"], result.linear_decision_distance["l2"])


def test_integer_inputs_raise() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        local_linear_analysis(_identity_classifier(), torch.ones(1, 2, dtype=torch.int64))
