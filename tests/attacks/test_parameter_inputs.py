"""Invalid arguments to the parameter-space attacks raise ValueError or TypeError with the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robusteval.attacks.parameter import (
    adversarial_weight_curve,
    noise_sharpness,
    single_example_update_attack,
    weight_noise_curve,
)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def test_weight_noise_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="'magnitude' or 'layer'"):
        weight_noise_curve(small_model(), torch.randn(5, 4), torch.zeros(5, dtype=torch.int64),
                           mode="global", scales=[0.1], draws=1, seed=0)  # type: ignore[arg-type]


def test_weight_noise_rejects_negative_scale() -> None:
    with pytest.raises(ValueError, match="scales"):
        weight_noise_curve(small_model(), torch.randn(5, 4), torch.zeros(5, dtype=torch.int64),
                           mode="layer", scales=[-0.1], draws=1, seed=0)


def test_attacks_reject_float_labels() -> None:
    with pytest.raises(ValueError, match="int64"):
        adversarial_weight_curve(small_model(), torch.randn(5, 4), torch.zeros(5), gammas=[0.1], steps=1, seed=0)


def test_attacks_reject_integer_inputs() -> None:
    with pytest.raises(TypeError, match="float tensor"):
        weight_noise_curve(small_model(), torch.ones(5, 4, dtype=torch.int64), torch.zeros(5, dtype=torch.int64),
                           mode="layer", scales=[0.1], draws=1, seed=0)


def test_attacks_reject_non_logit_output() -> None:
    model = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
    with pytest.raises(ValueError, match="logits of shape"):
        weight_noise_curve(model, torch.randn(5, 4), torch.zeros(5, dtype=torch.int64),
                           mode="layer", scales=[0.1], draws=1, seed=0)


def test_noise_sharpness_warns_when_accuracy_cannot_drop() -> None:
    model = small_model()
    x = torch.randn(20, 4)
    wrong = (model(x).argmax(dim=1) + 1) % 3
    with pytest.warns(UserWarning, match="below the drop"):
        assert noise_sharpness(model, x, wrong, mode="layer", draws=1, seed=0) == float("inf")


def test_single_example_update_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="example_x of shape"):
        single_example_update_attack(small_model(), torch.randn(7), torch.randn(5, 4),
                                     torch.zeros(5, dtype=torch.int64), epsilon=0.1, step_size=0.1,
                                     mode="output", steps=1, seed=0)


def test_same_seed_gives_same_results() -> None:
    from robusteval.attacks.parameter import adversarial_weight_radius, weight_noise_radius

    model = small_model()
    x = torch.randn(6, 4)
    first = weight_noise_radius(model, x, mode="layer", draws=3, seed=7, bisection_steps=3)
    second = weight_noise_radius(model, x, mode="layer", draws=3, seed=7, bisection_steps=3)
    other = weight_noise_radius(model, x, mode="layer", draws=3, seed=8, bisection_steps=3)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    radius_a, _ = adversarial_weight_radius(model, x, steps=2, seed=7, bisection_steps=2)
    radius_b, _ = adversarial_weight_radius(model, x, steps=2, seed=7, bisection_steps=2)
    assert torch.equal(radius_a, radius_b)
