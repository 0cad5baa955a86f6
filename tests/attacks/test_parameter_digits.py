"""Parameter-space curves, radii, single-example updates and the results section on a digits MLP."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from robusteval.attacks.parameter import (
    adversarial_weight_curve,
    adversarial_weight_radius,
    noise_sharpness,
    parameter_space_section,
    single_example_update_attack,
    tangent_shift,
    weight_noise_curve,
    weight_noise_radius,
)
from robusteval.digits import digits_split
from robusteval.results import write_json_atomic


@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 64-32-10 ReLU MLP trained on the digits training split, with 48 test samples."""
    torch.manual_seed(0)
    x_train, y_train = (torch.from_numpy(array) for array in digits_split("train"))
    x_test, y_test = (torch.from_numpy(array) for array in digits_split("test"))
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        optimizer.step()
    return model.eval(), x_test[:48], y_test[:48]


@pytest.mark.parametrize("mode", ["magnitude", "layer"])
def test_weight_noise_accuracy_falls(digits_model, mode: str) -> None:
    model, x, y = digits_model
    clean = (model(x).argmax(dim=1) == y).double().mean().item()
    curve = weight_noise_curve(model, x, y, mode=mode, scales=[0.0, 0.1, 0.5, 2.0], draws=4, seed=0)
    assert clean >= 0.9
    assert curve.accuracy[0] == clean
    assert curve.accuracy_std[0] == 0.0
    assert curve.accuracy[-1] < clean - 0.3
    assert curve.accuracy[1] >= curve.accuracy[2] >= curve.accuracy[3]
    assert curve.flip_probability.shape == (48, 4)
    assert torch.all(curve.flip_probability[:, 0] == 0)
    assert curve.flip_probability[:, -1].mean() > curve.flip_probability[:, 1].mean()


def test_noise_sharpness_brackets_the_drop(digits_model) -> None:
    model, x, y = digits_model
    sigma = noise_sharpness(model, x, y, mode="layer", draws=4, seed=0, tolerance=0.01)
    curve = weight_noise_curve(model, x, y, mode="layer", scales=[0.0, 0.5 * sigma, sigma], draws=4, seed=0)
    assert 0.0 < sigma < 10.0
    assert curve.accuracy[2] <= curve.accuracy[0] - 0.1
    assert curve.accuracy[1] > curve.accuracy[0] - 0.1


def test_weight_noise_radius_reaches_half(digits_model) -> None:
    model, x, _ = digits_model
    radius = weight_noise_radius(model, x, mode="magnitude", draws=6, seed=0, bisection_steps=8)
    assert torch.isfinite(radius).all()
    at_radius = weight_noise_curve(
        model, x, model(x).argmax(dim=1), mode="magnitude", scales=radius.tolist(), draws=6, seed=0
    ).flip_probability.diagonal()
    below = weight_noise_curve(
        model, x, model(x).argmax(dim=1), mode="magnitude", scales=(0.9 * radius).tolist(), draws=6, seed=0
    ).flip_probability.diagonal()
    assert torch.all(at_radius >= 0.5), at_radius.tolist()
    # The flip probability need not grow monotonically, so most (not all) samples are below 0.5 at 90%.
    assert (below < 0.5).double().mean() >= 0.75


def test_adversarial_weight_accuracy_falls(digits_model) -> None:
    model, x, y = digits_model
    clean = (model(x).argmax(dim=1) == y).double().mean().item()
    curve = adversarial_weight_curve(model, x, y, gammas=[0.0, 0.02, 0.1], steps=5, seed=0)
    noise = weight_noise_curve(model, x, y, mode="layer", scales=[0.1], draws=4, seed=0)
    assert curve.scales == (0.0, 0.02, 0.1)
    assert curve.accuracy[0] == clean
    assert curve.accuracy[0] >= curve.accuracy[1] >= curve.accuracy[2]
    assert curve.accuracy[2] < clean - 0.3
    # Adversarial directions hurt more than random ones of the same expected size.
    assert curve.accuracy[2] < noise.accuracy[0]


def test_adversarial_weight_radius_tracks_first_order(digits_model) -> None:
    model, x, _ = digits_model
    radius, first_order = adversarial_weight_radius(model, x[:32], steps=5, seed=0, bisection_steps=6)
    section = parameter_space_section(adversarial_weight_radius=(radius, first_order))
    spearman = section["sample_radii"]["first_order_spearman"]
    assert torch.isfinite(radius).all()
    assert torch.isfinite(first_order).all()
    assert spearman > 0.8
    # Every found radius is a real flip. The first-order estimate proves nothing, but on this
    # small net it stays within a factor of two of the search.
    assert torch.all(first_order < 2 * radius)
    assert torch.all(radius < 2 * first_order)


def test_single_example_update_first_order_inside_region(digits_model) -> None:
    model, x, y = digits_model
    result = single_example_update_attack(
        model, x[0], x, y, epsilon=0.02, step_size=0.05, mode="output", steps=5, seed=0
    )
    assert not result.crossed_region
    assert result.delta_l2 <= 0.02 * (1 + 1e-5)
    assert result.parameter_step_change <= result.parameter_step_change_bound * (1 + 1e-4)
    # Inside the region the output-mode step is affine in the example, so first order is exact.
    assert result.changed_first_order == result.changed_perturbed


def test_single_example_update_changes_more_predictions(digits_model) -> None:
    model, x, y = digits_model
    for mode, step_size in (("output", 0.05), ("label", 0.1)):
        result = single_example_update_attack(
            model, x[0], x, y, epsilon=1.5, step_size=step_size, mode=mode, steps=10, seed=0, norm="l2"
        )
        assert result.changed_perturbed >= result.changed_clean + 5, (mode, result)
    linf = single_example_update_attack(
        model, x[0], x, y, epsilon=0.2, step_size=0.02, mode="label", steps=5, seed=0, norm="linf",
    )
    assert linf.delta.abs().max() <= 0.2 + 1e-6
    assert linf.parameter_step_change_bound is None


def test_section_is_json_ready(digits_model, tmp_path) -> None:
    model, x, y = digits_model
    curves = [weight_noise_curve(model, x, y, mode=mode, scales=[0.0, 0.5], draws=2, seed=0)
              for mode in ("magnitude", "layer")]
    adversarial = adversarial_weight_curve(model, x, y, gammas=[0.0, 0.05], steps=2, seed=0)
    shift = tangent_shift(model, x[:8], epsilon=0.05, tangent_sensitivity=torch.ones(8),
                          region_distance=torch.ones(8), steps=2, seed=0)
    update = single_example_update_attack(model, x[0], x, y, epsilon=0.1, step_size=0.01, mode="label", steps=2, seed=0)
    radius = torch.tensor([0.1, 0.2, math.inf])
    section = parameter_space_section(
        weight_noise=curves,
        sharpness_sigma={"layer": 0.3},
        adversarial_weights=adversarial,
        weight_noise_radius=radius,
        adversarial_weight_radius=(radius, radius * 0.9),
        tangent_shift=shift,
        single_example_update=[update],
    )
    write_json_atomic(tmp_path / "section.json", section)
    loaded = json.loads((tmp_path / "section.json").read_text())
    assert [entry["mode"] for entry in loaded["weight_noise"]] == ["magnitude", "layer"]
    assert loaded["weight_noise"][1]["sharpness_sigma"] == 0.3
    assert loaded["weight_noise"][0]["sharpness_sigma"] is None
    assert loaded["adversarial_weights"]["scales"] == [0.0, 0.05]
    assert loaded["sample_radii"]["weight_noise"]["finite"] == 2
    assert loaded["sample_radii"]["first_order_spearman"] is None  # only two finite pairs
    assert loaded["tangent_shift"]["share_crossed"] == shift.share_crossed
    assert loaded["single_example_update"][0]["changed_perturbed"] == update.changed_perturbed
