"""Tangent-sensitivity bounds: closed form against autograd, validity, and the width constant."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from robusteval.architectures import build_architecture, is_piecewise_linear
from robusteval.bounds import (
    active_count_bound,
    compute_bounds,
    evaluate_chain,
    extract_relu_chain,
    mixed_derivative_matrix,
    total_count_bound,
    width_bound,
)
from robusteval.bounds.tangent_bounds import largest_absolute_weights, path_count_bound
from robusteval.digits import digits_split

# torch 2.13 loads the forward-mode AD decompositions through torch.jit.script, which warns once.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

# Random fully connected ReLU chains: (spec, seed, input scale).
FAMILY = [
    ("mlp:3-4-2", 0, 1.0),
    ("mlp:5-8-3", 1, 3.0),
    ("mlp:6-10-7-4", 2, 1.0),
    ("mlp:4-16-16-16-2", 3, 0.5),
    ("mlp:8-5-9-6-7-3", 4, 2.0),
    ("mlp:2-30-30-5", 5, 10.0),
]


def _random_chain(spec: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_architecture(spec).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.7)
    return model


def _train_digits_mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x_train, y_train = (torch.from_numpy(array[:400]) for array in digits_split("train"))
    model = build_architecture("mlp:64-24-16-10")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        optimizer.step()
    x_test, _ = digits_split("test")
    return model.eval(), torch.from_numpy(x_test)


@pytest.mark.parametrize(("spec", "seed", "scale"), FAMILY[:4])
def test_closed_form_matches_autograd(spec: str, seed: int, scale: float) -> None:
    model = _random_chain(spec, seed)
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    x = scale * torch.randn(3, chain.widths[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    closed = evaluate_chain(chain, x).tangent_sensitivity
    for row in range(x.shape[0]):
        for output in range(chain.widths[-1]):
            reference = mixed_derivative_matrix(model, x[row], output).norm()
            assert closed[row, output].item() == pytest.approx(reference.item(), rel=1e-10)


@pytest.mark.parametrize(("spec", "seed", "scale"), FAMILY)
def test_bounds_hold_on_random_chains(spec: str, seed: int, scale: float) -> None:
    model = _random_chain(spec, seed)
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    x = scale * torch.randn(200, chain.widths[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    forward = evaluate_chain(chain, x)
    observed = forward.tangent_sensitivity.max(dim=1).values.numpy()
    active = forward.active_units.numpy()

    assert (observed <= width_bound(chain) * (1 + 1e-12)).all()
    per_sample = active_count_bound(chain, active)
    assert (observed <= per_sample * (1 + 1e-12)).all()
    assert (per_sample <= width_bound(chain) * (1 + 1e-12)).all()
    assert (observed <= total_count_bound(chain, active.sum(axis=1)) * (1 + 1e-12)).all()


def test_bounds_hold_on_trained_digits_mlp() -> None:
    model, x_test = _train_digits_mlp()
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    forward = evaluate_chain(chain, x_test)

    section = compute_bounds(model, tangent_sensitivity=forward.tangent_sensitivity, active_units=forward.active_units)

    for name in ("width", "active_count", "total_active_count"):
        assert section[name]["applies"] is True
        assert section[name]["held_on_all_samples"] is True
        assert section[name]["violations"] == 0
        assert section[name]["tightness"] >= 1.0
    assert section["active_count"]["value"] <= section["width"]["value"]
    expected_log = sum(math.log(float(layer.weight.detach().abs().max())) for layer in model if isinstance(layer, nn.Linear))
    assert section["layerwise_norm_sensitivity"] == pytest.approx(expected_log, rel=1e-12)


def _constant_positive_chain(widths: list[int], maxima: list[float]) -> nn.Module:
    spec = "mlp:" + "-".join(str(width) for width in widths)
    model = build_architecture(spec).double().eval()
    layers = [layer for layer in model if isinstance(layer, nn.Linear)]
    with torch.no_grad():
        for layer, value in zip(layers, maxima):
            layer.weight.fill_(value)
            layer.bias.zero_()
    return model


@pytest.mark.parametrize(
    ("widths", "maxima"),
    [([3, 4, 2], [0.5, 2.0]), ([2, 3, 5, 4], [1.5, 0.3, 0.8]), ([4, 2, 3, 2, 3], [1.0, 2.0, 0.5, 1.2])],
)
def test_width_bound_attained_on_constant_chain(widths: list[int], maxima: list[float]) -> None:
    # Every weight equals m_l, biases are zero and the input is positive, so every unit is active
    # and every path contributes m_1 ... m_L: the bound must equal TS exactly.
    model = _constant_positive_chain(widths, maxima)
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    x = torch.rand(5, widths[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.1
    forward = evaluate_chain(chain, x)
    observed = forward.tangent_sensitivity

    assert observed.numpy() == pytest.approx(np.full(observed.shape, width_bound(chain)), rel=1e-12)
    assert forward.active_units.numpy().tolist() == [widths[1:-1]] * 5
    reference = mixed_derivative_matrix(model, x[0], 0).norm().item()
    assert reference == pytest.approx(width_bound(chain), rel=1e-12)


def test_bound_without_width_constant_fails() -> None:
    # Counting a single path per layer (all counts 1) drops the width constant. The constant chain
    # exceeds that bound, so a bound off by the width factor would be caught.
    model = _constant_positive_chain([3, 4, 5, 2], [1.0, 1.0, 1.0])
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    x = torch.ones(1, 3, dtype=torch.float64)
    observed = evaluate_chain(chain, x).tangent_sensitivity.max().item()
    without_widths = float(path_count_bound(largest_absolute_weights(chain), 3, np.ones(2)))

    assert observed > 2 * without_widths
    assert observed == pytest.approx(width_bound(chain), rel=1e-12)


def test_weight_product_alone_is_no_bound() -> None:
    # Rescaling W_1 by s and W_2 by 1/s keeps f and m_1 m_2 fixed while TS grows, so no bound of
    # the form constant * m_1 m_2 can hold.
    model = _random_chain("mlp:4-6-3", 7)
    first, second = (layer for layer in model if isinstance(layer, nn.Linear))
    x = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    before = evaluate_chain(chain, x).tangent_sensitivity.max().item()
    product_before = float(np.prod(largest_absolute_weights(chain)))
    with torch.no_grad():
        first.weight.mul_(100.0)
        first.bias.mul_(100.0)
        second.weight.div_(100.0)
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    after = evaluate_chain(chain, x).tangent_sensitivity.max().item()

    assert float(np.prod(largest_absolute_weights(chain))) == pytest.approx(product_before, rel=1e-12)
    assert after > 20 * before
    assert after <= width_bound(chain)


def test_linear_model_bound_is_exact() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3)).double().eval()
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    observed = evaluate_chain(chain, torch.randn(2, 6, dtype=torch.float64)).tangent_sensitivity

    assert width_bound(chain) == pytest.approx(math.sqrt(6), rel=1e-12)
    assert observed.numpy() == pytest.approx(np.full((2, 3), math.sqrt(6)), rel=1e-12)


def test_cnn_bounds_do_not_apply() -> None:
    model = build_architecture("cnn:1x4x4-2-3").eval()
    section = compute_bounds(model, tangent_sensitivity=torch.ones(2, 3), active_units=None)

    assert section["applies"] is False
    for name in ("width", "active_count", "total_active_count"):
        assert section[name]["applies"] is False
        assert "Conv2d" in section[name]["reason"]


def test_violated_bound_is_reported() -> None:
    model = _random_chain("mlp:3-4-2", 0)
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    inflated = torch.full((3, 2), 2 * width_bound(chain), dtype=torch.float64)
    section = compute_bounds(model, tangent_sensitivity=inflated, active_units=torch.full((3, 1), 4))

    assert section["width"]["held_on_all_samples"] is False
    assert section["width"]["violations"] == 3
    assert section["active_count"]["held_on_all_samples"] is False


def test_active_units_shape_is_checked() -> None:
    model = _random_chain("mlp:3-4-5-2", 0)
    with pytest.raises(ValueError, match=r"active units of shape \(2, 2\)"):
        compute_bounds(model, tangent_sensitivity=torch.ones(2, 2), active_units=torch.ones(2, 3))


def test_bounds_read_exported_chain_from_graph() -> None:
    model, x_test = _train_digits_mlp()
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    forward = evaluate_chain(chain, x_test)
    program = torch.export.export(model.eval(), (x_test[:4].float(),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    exported = program.module()

    direct = compute_bounds(model, tangent_sensitivity=forward.tangent_sensitivity, active_units=forward.active_units)
    from_graph = compute_bounds(exported, tangent_sensitivity=forward.tangent_sensitivity,
                                active_units=forward.active_units, x=x_test.float())
    without_inputs = compute_bounds(exported, tangent_sensitivity=forward.tangent_sensitivity,
                                    active_units=forward.active_units)

    for name in ("width", "active_count", "total_active_count"):
        assert from_graph[name]["applies"] is True
        assert from_graph[name]["value"] == pytest.approx(direct[name]["value"], rel=1e-12)
        assert without_inputs[name]["applies"] is False


def test_exported_chain_counts_as_piecewise_linear() -> None:
    model, x_test = _train_digits_mlp()
    program = torch.export.export(model.eval(), (x_test[:4].float(),), dynamic_shapes=({0: torch.export.Dim("batch")},))

    assert is_piecewise_linear(program.module(), x_test[:8].float())
    assert not is_piecewise_linear(program.module())
