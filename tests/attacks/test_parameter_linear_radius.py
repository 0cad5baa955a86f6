"""Adversarial weight radius on a linear model, where the first-order estimate is exact."""

from __future__ import annotations

import torch
from torch import nn

from robusteval.attacks.parameter import adversarial_weight_radius


def make_linear_model() -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(3)
    model = nn.Linear(5, 3)
    with torch.no_grad():
        model.bias.uniform_(-0.5, 0.5)
    return model.eval(), torch.randn(8, 5)


def worst_case_radius(model: nn.Linear, sample: torch.Tensor, grid: torch.Tensor) -> float:
    """Smallest grid gamma at which the aligned per-class perturbation changes the prediction.

    For class j the perturbation moves W and b against the autograd gradient of f_k - f_j, each
    by gamma times its own norm. The prediction is recomputed from the perturbed W and b.
    """
    predicted = int(model(sample).argmax())
    weight, bias = model.weight.detach(), model.bias.detach()
    smallest = float("inf")
    for other in range(3):
        if other == predicted:
            continue
        model.zero_grad()
        output = model(sample)
        (output[predicted] - output[other]).backward()
        weight_step = -model.weight.grad / model.weight.grad.norm() * weight.norm()
        bias_step = -model.bias.grad / model.bias.grad.norm() * bias.norm()
        gammas = grid.to(weight.dtype).view(-1, 1, 1)
        outputs = torch.einsum("gkd,d->gk", weight + gammas * weight_step, sample) + bias + gammas[:, 0] * bias_step
        changed = (outputs.argmax(dim=1) != predicted).nonzero()
        if changed.numel():
            smallest = min(smallest, float(grid[changed[0, 0]]))
    return smallest


def test_first_order_matches_brute_force_on_linear_model() -> None:
    model, x = make_linear_model()
    _, first_order = adversarial_weight_radius(model, x, steps=1, seed=0, bracket_steps=1, bisection_steps=0)
    for index in range(x.shape[0]):
        estimate = float(first_order[index])
        # Grid step of 0.1% of the estimate; the brute-force radius is the first grid point past it.
        grid = torch.linspace(0.5 * estimate, 1.5 * estimate, 1001, dtype=torch.float64)
        brute_force = worst_case_radius(model, x[index], grid)
        assert abs(brute_force - estimate) <= 1.5e-3 * estimate, (index, brute_force, estimate)


def test_random_perturbations_below_first_order_never_flip() -> None:
    model, x = make_linear_model()
    _, first_order = adversarial_weight_radius(model, x, steps=1, seed=0, bracket_steps=1, bisection_steps=0)
    predicted = model(x).argmax(dim=1)
    generator = torch.Generator().manual_seed(0)
    weight, bias = model.weight.detach(), model.bias.detach()
    for index in range(x.shape[0]):
        gamma = 0.999 * float(first_order[index])
        noise_weight = torch.randn(2000, *weight.shape, generator=generator)
        noise_bias = torch.randn(2000, *bias.shape, generator=generator)
        noise_weight *= gamma * weight.norm() / noise_weight.flatten(1).norm(dim=1).view(-1, 1, 1)
        noise_bias *= gamma * bias.norm() / noise_bias.norm(dim=1, keepdim=True)
        outputs = torch.einsum("skd,d->sk", weight + noise_weight, x[index]) + bias + noise_bias
        assert (outputs.argmax(dim=1) == predicted[index]).all()


def test_searched_radius_matches_exact_on_linear_model() -> None:
    model, x = make_linear_model()
    radius, first_order = adversarial_weight_radius(model, x, steps=20, seed=0, bisection_steps=10)
    # The search reports only gammas at which it found a flip, so it cannot undercut the exact
    # radius beyond rounding. Bisection leaves it within 1% above.
    assert torch.all(radius >= first_order * (1 - 1e-5))
    assert torch.all(radius <= first_order * 1.01), (radius / first_order).tolist()
