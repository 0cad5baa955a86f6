"""Model state around the parameter-space attacks: restored bit for bit, buffers untouched, tied weights once."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
import torch
from torch import nn

from robusteval.attacks.parameter import (
    adversarial_weight_curve,
    adversarial_weight_radius,
    noise_sharpness,
    preserved_state,
    single_example_update_attack,
    tangent_shift,
    weight_noise_curve,
    weight_noise_radius,
)
from robusteval.attacks.parameter._functional import parameter_tensors
from robusteval.attacks.parameter.adversarial_weights import first_order_weight_radius
from robusteval.attacks.parameter.weight_noise import noise_direction, noise_unit


def state_fingerprint(model: nn.Module) -> str:
    """Hash every parameter, buffer, gradient, requires_grad bit and training flag."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        digest.update(f"p:{name}:{parameter.dtype}:{tuple(parameter.shape)}:{parameter.requires_grad}".encode())
        digest.update(parameter.detach().cpu().numpy().tobytes())
        grad = parameter.grad
        digest.update(b"no-grad" if grad is None else grad.detach().cpu().numpy().tobytes())
    for name, buffer in model.named_buffers(remove_duplicate=False):
        digest.update(f"b:{name}:{buffer.dtype}:{tuple(buffer.shape)}".encode())
        digest.update(buffer.detach().cpu().numpy().tobytes())
    for name, module in model.named_modules(remove_duplicate=False):
        digest.update(f"m:{name}:{module.training}".encode())
    return digest.hexdigest()


class SabotagingNet(nn.Module):
    """A BatchNorm MLP whose forward writes to its own state and raises on call ``fail_on_call``.

    The references in ``targets`` are a plain list, so ``functional_call`` does not swap them:
    each forward really writes to the model's own weight and running mean.
    """

    def __init__(self, fail_on_call: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.targets = [self.body[0].weight, self.body[1].running_mean]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not torch._C._are_functorch_transforms_active():
            # torch.func rejects writes to captured tensors inside vmap and grad, so write only outside them.
            with torch.no_grad():
                self.targets[0].add_(0.5)
                self.targets[1].add_(1.0)
            self.targets[0].requires_grad_(False)
        self.body[3].train()
        if self.calls >= self.fail_on_call:
            raise RuntimeError(f"planned failure on forward call {self.calls}")
        return self.body(x)


def make_sabotaging_net(fail_on_call: int) -> SabotagingNet:
    torch.manual_seed(0)
    model = SabotagingNet(fail_on_call)
    with torch.no_grad():
        model.body[1].running_mean.uniform_(-0.2, 0.2)
        model.body[1].running_var.uniform_(0.5, 1.5)
    model.body[0].weight.grad = torch.ones_like(model.body[0].weight)
    model.eval()
    return model


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(12, 6, generator=generator)
    y = torch.randint(0, 3, (12,), generator=generator)
    return x, y


def _ts_stub(count: int) -> torch.Tensor:
    return torch.ones(count)


ATTACKS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], object]] = {
    "weight_noise_curve": lambda m, x, y: weight_noise_curve(
        m, x, y, mode="layer", scales=[0.0, 0.1, 0.5], draws=2, seed=0
    ),
    "noise_sharpness": lambda m, x, y: noise_sharpness(m, x, y, mode="magnitude", draws=2, seed=0),
    "weight_noise_radius": lambda m, x, y: weight_noise_radius(
        m, x, mode="layer", draws=2, seed=0, bisection_steps=2, max_sigma=1.0
    ),
    "adversarial_weight_curve": lambda m, x, y: adversarial_weight_curve(m, x, y, gammas=[0.0, 0.1], steps=2, seed=0),
    "adversarial_weight_radius": lambda m, x, y: adversarial_weight_radius(
        m, x, steps=2, seed=0, bracket_steps=3, bisection_steps=1
    ),
    "tangent_shift": lambda m, x, y: tangent_shift(
        m, x, epsilon=0.1, tangent_sensitivity=_ts_stub(x.shape[0]), region_distance=torch.zeros(x.shape[0]),
        steps=2, seed=0,
    ),
    "single_example_update": lambda m, x, y: single_example_update_attack(
        m, x[0], x, y, epsilon=0.5, step_size=0.1, mode="output", steps=2, seed=0
    ),
}


def test_sabotaging_net_changes_state_without_protection() -> None:
    model = make_sabotaging_net(fail_on_call=10**9)
    before = state_fingerprint(model)
    model(inputs()[0])
    assert state_fingerprint(model) != before


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_restores_state_on_success(name: str) -> None:
    model = make_sabotaging_net(fail_on_call=10**9)
    x, y = inputs()
    before = state_fingerprint(model)
    ATTACKS[name](model, x, y)
    assert model.calls > 0
    assert state_fingerprint(model) == before


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_restores_state_on_failure(name: str) -> None:
    model = make_sabotaging_net(fail_on_call=3)
    x, y = inputs()
    before = state_fingerprint(model)
    with pytest.raises(RuntimeError, match="planned failure"):
        ATTACKS[name](model, x, y)
    assert model.calls == 3
    assert state_fingerprint(model) == before


def test_preserved_state_restores_replaced_parameter() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    original = model[0].weight
    before = state_fingerprint(model)
    with pytest.raises(ValueError, match="inside"):
        with preserved_state(model):
            model[0].weight = nn.Parameter(torch.zeros(5, 5))
            model[0].register_buffer("extra", torch.ones(1))
            raise ValueError("raised inside")
    assert model[0].weight is original
    assert "extra" not in dict(model.named_buffers())
    assert state_fingerprint(model) == before


def test_preserved_state_rejects_non_module() -> None:
    with pytest.raises(TypeError, match="torch.nn.Module"):
        with preserved_state("model"):  # type: ignore[arg-type]
            pass


class RunningStatsProbe:
    """Forward pre-hook that records whether BatchNorm buffers equal their initial values."""

    def __init__(self, norm: nn.BatchNorm1d) -> None:
        self.norm = norm
        self.initial = [buffer.clone() for buffer in (norm.running_mean, norm.running_var, norm.num_batches_tracked)]
        self.unchanged: list[bool] = []

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        current = (self.norm.running_mean, self.norm.running_var, self.norm.num_batches_tracked)
        self.unchanged.append(all(torch.equal(now, then) for now, then in zip(current, self.initial)))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_batchnorm_buffers_untouched_during_attack(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
    x, _ = inputs()
    with torch.no_grad():
        y = model.eval()(x).argmax(dim=1)  # labels the model gets right, so that noise can lower accuracy
    model.train()  # attacks must switch to eval mode, so that BatchNorm uses and keeps its running statistics
    probe = RunningStatsProbe(model[1])
    model[1].register_forward_pre_hook(probe)
    ATTACKS[name](model, x, y)
    assert probe.unchanged
    assert all(probe.unchanged)
    assert model.training


def test_weight_noise_scale_zero_uses_running_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-2.0, 2.0)
    x, y = inputs()
    model.eval()
    expected = (model(x).argmax(dim=1) == y).double().mean().item()
    model.train()
    curve = weight_noise_curve(model, x, y, mode="layer", scales=[0.0], draws=1, seed=0)
    assert curve.accuracy[0] == expected


class TiedNet(nn.Module):
    """x -> W relu(W x + b) + c, with one weight matrix used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 4)
        self.second.weight = self.first.weight
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.activation(self.first(x)))


def test_tied_weight_listed_once() -> None:
    model = TiedNet()
    names = sorted(parameter_tensors(model))
    assert names == ["first.bias", "first.weight", "second.bias"]


def test_tied_weight_gets_one_noise_draw() -> None:
    torch.manual_seed(0)
    model = TiedNet().eval()
    x = torch.randn(40, 4)
    sigma, seed = 2.0, 5
    curve = weight_noise_curve(model, x, model(x).argmax(dim=1), mode="magnitude", scales=[sigma], draws=1, seed=seed)

    parameters = parameter_tensors(model)
    unit = noise_unit(parameters, "magnitude")
    direction = noise_direction(parameters, seed, 0)
    noisy = {name: parameters[name] + sigma * unit[name] * direction[name] for name in parameters}
    hidden = torch.relu(x @ noisy["first.weight"].T + noisy["first.bias"])
    reference = hidden @ noisy["first.weight"].T + noisy["second.bias"]
    expected_flips = (reference.argmax(dim=1) != model(x).argmax(dim=1)).double()

    assert expected_flips.sum() > 0
    torch.testing.assert_close(curve.flip_probability[:, 0], expected_flips, rtol=0, atol=0)


def test_tied_weight_has_one_budget_in_first_order_radius() -> None:
    torch.manual_seed(0)
    model = TiedNet().eval()
    x = torch.randn(6, 4)
    parameters = parameter_tensors(model)
    norms = {name: tensor.norm() for name, tensor in parameters.items()}
    outputs = model(x)
    predicted = outputs.argmax(dim=1)
    estimate, _ = first_order_weight_radius(model, parameters, norms, x, predicted)

    for index in range(x.shape[0]):
        best = float("inf")
        for other in range(4):
            if other == int(predicted[index]):
                continue
            model.zero_grad()
            output = model(x[index : index + 1])[0]
            (output[predicted[index]] - output[other]).backward()
            # The tied weight's .grad sums both uses and the tensor carries one budget.
            dual = sum(float(p.detach().norm() * p.grad.norm()) for p in model.parameters())
            margin = float((output[predicted[index]] - output[other]).detach())
            best = min(best, margin / dual)
        assert estimate[index].item() == pytest.approx(best, rel=1e-4)
