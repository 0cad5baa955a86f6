"""Parameter-space curves and radii on the bundled demo model."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from robusteval.attacks.parameter import adversarial_weight_curve, adversarial_weight_radius, weight_noise_curve
from robusteval.data import load_data
from robusteval.loading import load_model

# Accuracy is measured on 48 samples, so one sample is about 0.02; allow one flip of noise.
SLACK = 0.025


@pytest.fixture(scope="module")
def demo():
    model = load_model("zoo:demo").module
    data = load_data("digits")
    return model, data.x[:48], data.y[:48]


@pytest.mark.parametrize("mode", ["magnitude", "layer"])
def test_weight_noise_accuracy_falls_with_scale(demo, mode):
    model, x, y = demo
    curve = weight_noise_curve(model, x, y, mode=mode, scales=(0.0, 0.1, 0.3, 1.0, 3.0), draws=4, seed=0)
    accuracy = list(curve.accuracy)
    assert accuracy[0] == pytest.approx(float((model(x).argmax(1) == y).float().mean()))
    for earlier, later in zip(accuracy, accuracy[1:]):
        assert later <= earlier + SLACK
    assert accuracy[-1] < accuracy[0] - 0.3


def test_adversarial_weight_accuracy_falls_with_gamma(demo):
    model, x, y = demo
    curve = adversarial_weight_curve(model, x, y, gammas=(0.0, 0.01, 0.03, 0.1), steps=5, seed=0)
    accuracy = list(curve.accuracy)
    for earlier, later in zip(accuracy, accuracy[1:]):
        assert later <= earlier + SLACK
    assert accuracy[-1] < accuracy[0] - 0.3


def test_adversarial_weight_radius_tracks_first_order_estimate(demo):
    model, x, _ = demo
    radius, first_order = adversarial_weight_radius(model, x[:24], steps=5, seed=0)
    finite = torch.isfinite(radius) & torch.isfinite(first_order)
    assert int(finite.sum()) >= 20
    correlation = stats.spearmanr(radius[finite].numpy(), first_order[finite].numpy()).statistic
    assert correlation > 0.7
