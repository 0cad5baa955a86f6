"""Threat models, epsilon parsing, suites and the torchattacks image layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robusteval._types import Bounds
from robusteval.attacks import SUITES, ThreatModel, default_threat_models, parse_eps_options, resolve_attacks
from robusteval.attacks._torchattacks import image_layout
from robusteval.attacks.threat_models import perturbation_norm, success_at_epsilons

UNIT = Bounds(0.0, 1.0)


def test_parse_eps_basic_options() -> None:
    threat_models = parse_eps_options(["linf=0.05,0.1", "l2=0.5,1"])
    assert threat_models == [ThreatModel("linf", (0.05, 0.1)), ThreatModel("l2", (0.5, 1.0))]


def test_parse_eps_fractions_sorted_merged() -> None:
    threat_models = parse_eps_options(["inf=8/255, 2/255", "linf=8/255,0.5", "2=3"])
    assert threat_models[0].norm == "linf"
    assert threat_models[0].epsilons == (2 / 255, 8 / 255, 0.5)
    assert threat_models[1] == ThreatModel("l2", (3.0,))


@pytest.mark.parametrize(
    "option, fragment",
    [
        ("linf", "NORM=EPS"),
        ("linf=", "NORM=EPS"),
        ("l1=0.1", "norm 'linf' or 'l2'"),
        ("linf=abc", "finite number or a fraction"),
        ("linf=0", "positive epsilon"),
        ("linf=-0.1", "positive epsilon"),
        ("linf=nan", "finite number or a fraction"),
        ("linf=inf", "finite number or a fraction"),
        ("linf=1/0", "finite number or a fraction"),
    ],
)
def test_parse_eps_rejects_bad_values(option: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_eps_options([option])


@pytest.mark.parametrize("epsilons", [(), (0.1, 0.1), (0.2, 0.1), (0.0,), (math.inf,)])
def test_threat_model_rejects_bad_grid(epsilons: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        ThreatModel("linf", epsilons)


def test_threat_model_rejects_unknown_norm() -> None:
    with pytest.raises(ValueError, match="'linf' or 'l2'"):
        ThreatModel("l1", (0.1,))  # type: ignore[arg-type]


def test_defaults_digits_scale() -> None:
    linf, l2 = default_threat_models((64,), UNIT)
    assert linf.norm == "linf"
    assert l2.norm == "l2"
    assert linf.epsilons == (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 1.0)
    assert l2.epsilons[:-1] == (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
    assert l2.epsilons[-1] == pytest.approx(8.0)  # sqrt(64) * (1 - 0)


def test_defaults_mnist_scale_contains_usual_budget() -> None:
    linf, l2 = default_threat_models((1, 28, 28), UNIT)
    assert 0.3 in linf.epsilons
    assert linf.epsilons[-1] == 1.0
    assert l2.epsilons[-1] == pytest.approx(28.0)


def test_defaults_cifar_scale_contains_usual_budgets() -> None:
    linf, l2 = default_threat_models((3, 32, 32), UNIT)
    assert 8 / 255 in linf.epsilons
    assert 0.5 in l2.epsilons
    assert l2.epsilons[-1] == pytest.approx(math.sqrt(3072))


def test_defaults_scale_with_bounds_width() -> None:
    unit_linf, unit_l2 = default_threat_models((64,), UNIT)
    wide_linf, wide_l2 = default_threat_models((64,), Bounds(0.0, 255.0))
    np.testing.assert_allclose(wide_linf.epsilons, np.array(unit_linf.epsilons) * 255, rtol=1e-12)
    np.testing.assert_allclose(wide_l2.epsilons, np.array(unit_l2.epsilons) * 255, rtol=1e-12)


def test_defaults_drop_epsilons_above_diameter() -> None:
    linf, l2 = default_threat_models((2,), UNIT)
    assert linf.epsilons[-1] == 1.0
    assert l2.epsilons[-1] == pytest.approx(math.sqrt(2))
    assert all(value < math.sqrt(2) for value in l2.epsilons[:-1])


def test_resolve_expands_suites_in_order() -> None:
    threat_models = default_threat_models((64,), UNIT)
    runnable, skipped = resolve_attacks("quick", num_classes=10, threat_models=threat_models)
    assert runnable == list(SUITES["quick"])
    assert skipped == {}

    runnable, _ = resolve_attacks(["pgd", "standard", "fgsm"], num_classes=10, threat_models=threat_models)
    assert runnable == ["pgd", "fmn", "deepfool", "autoattack", "fgsm"]

    runnable, _ = resolve_attacks(" fmn, DeepFool ", num_classes=10, threat_models=threat_models)
    assert runnable == ["fmn", "deepfool"]


def test_resolve_skips_by_classes_and_norm() -> None:
    linf_only = [ThreatModel("linf", (0.1,))]
    runnable, skipped = resolve_attacks("thorough", num_classes=2, threat_models=linf_only)
    assert "apgd-t" not in runnable
    assert "4 classes" in skipped["apgd-t"]
    assert "cw" not in runnable
    assert "supports only l2" in skipped["cw"]
    assert "autoattack" in runnable
    assert "autoattack/apgd-t" in skipped
    assert "fab" in runnable


def test_resolve_rejects_unknown_attack() -> None:
    with pytest.raises(ValueError, match="Suites: quick, standard, thorough"):
        resolve_attacks(["pgd", "boundary"], num_classes=10, threat_models=[ThreatModel("linf", (0.1,))])


def test_resolve_rejects_one_class() -> None:
    with pytest.raises(ValueError, match="at least 2 outputs"):
        resolve_attacks("quick", num_classes=1, threat_models=[ThreatModel("linf", (0.1,))])


@pytest.mark.parametrize(
    "shape, layout",
    [
        ((64,), (1, 8, 8)),
        ((784,), (1, 28, 28)),
        ((3072,), (3, 32, 32)),
        ((7,), (7, 1, 1)),
        ((2,), (2, 1, 1)),
        ((12,), (3, 2, 2)),
        ((1, 8, 8), (1, 8, 8)),
        ((3, 32, 64), (6, 32, 32)),
        ((4, 16), (1, 8, 8)),
    ],
)
def test_image_layout_keeps_features(shape: tuple[int, ...], layout: tuple[int, int, int]) -> None:
    assert image_layout(shape) == layout
    assert math.prod(layout) == math.prod(shape)


def test_perturbation_norm_matches_numpy() -> None:
    generator = torch.Generator().manual_seed(3)
    inputs = torch.rand(5, 2, 3, generator=generator)
    adversarial = torch.rand(5, 2, 3, generator=generator)
    delta = (adversarial.double() - inputs.double()).numpy().reshape(5, -1)
    np.testing.assert_allclose(perturbation_norm(adversarial, inputs, "linf").numpy(), np.abs(delta).max(axis=1), rtol=0)
    np.testing.assert_allclose(perturbation_norm(adversarial, inputs, "l2").numpy(), np.linalg.norm(delta, axis=1),
                               rtol=1e-12)


def test_success_at_epsilons_uses_tolerance() -> None:
    distances = torch.tensor([0.1 * (1 + 5e-6), 0.1 * (1 + 1e-3), math.inf, math.nan], dtype=torch.float64)
    success = success_at_epsilons(distances, [0.05, 0.1, 0.2], UNIT)
    assert success.tolist() == [
        [False, True, True],
        [False, False, True],
        [False, False, False],
        [False, False, False],
    ]
