"""The ``parameter_space`` section of the results file, built from the attacks' typed results."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from scipy.stats import spearmanr
from torch import Tensor

from .adversarial_weights import AdversarialWeightCurve
from .single_example_update import SingleExampleUpdateResult
from .tangent_shift import TangentShiftResult
from .weight_noise import WeightNoiseCurve


def summarize(values: Tensor) -> dict[str, Any]:
    """Return count, number finite, and min, quartiles, max and mean of the finite values of ``values``."""
    data = values.detach().double().cpu().flatten()
    finite = data[torch.isfinite(data)]
    summary: dict[str, Any] = {"count": int(data.numel()), "finite": int(finite.numel())}
    if finite.numel() == 0:
        return summary | {"min": None, "q25": None, "median": None, "q75": None, "max": None, "mean": None}
    quartiles = torch.quantile(finite, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return summary | {
        "min": float(finite.min()),
        "q25": quartiles[0],
        "median": quartiles[1],
        "q75": quartiles[2],
        "max": float(finite.max()),
        "mean": float(finite.mean()),
    }


def finite_spearman(first: Tensor, second: Tensor) -> float | None:
    """Return Spearman's rank correlation over the samples where both values are finite.

    ``None`` when fewer than three such samples exist or either side is constant there.
    """
    a = first.detach().double().cpu().flatten()
    b = second.detach().double().cpu().flatten()
    both = torch.isfinite(a) & torch.isfinite(b)
    if int(both.sum()) < 3 or a[both].unique().numel() < 2 or b[both].unique().numel() < 2:
        return None
    return float(spearmanr(a[both].numpy(), b[both].numpy()).statistic)


def parameter_space_section(
    *,
    weight_noise: Sequence[WeightNoiseCurve] = (),
    sharpness_sigma: Mapping[str, float] | None = None,
    adversarial_weights: AdversarialWeightCurve | None = None,
    weight_noise_radius: Tensor | None = None,
    adversarial_weight_radius: tuple[Tensor, Tensor] | None = None,
    tangent_shift: TangentShiftResult | None = None,
    single_example_update: Sequence[SingleExampleUpdateResult] = (),
) -> dict[str, Any]:
    """Build the JSON-ready ``parameter_space`` section from the parameter-space results.

    Every argument is optional, and a missing one leaves its key out (or ``None`` for
    ``adversarial_weights``). Non-finite numbers are kept as floats here; the results writer
    turns them into ``null``.

    Args:
        weight_noise: One curve per noise mode.
        sharpness_sigma: Noise sharpness by mode, from :func:`noise_sharpness`.
        adversarial_weights: The adversarial weight curve.
        weight_noise_radius: Per-sample weight-noise radii ``(N,)``.
        adversarial_weight_radius: ``(radius, first_order)`` from :func:`adversarial_weight_radius`.
        tangent_shift: The tangent-shift result.
        single_example_update: Results of single-example update attacks, one per example and mode.

    Returns:
        The section, with keys ``weight_noise``, ``adversarial_weights``, ``sample_radii``,
        ``tangent_shift`` and ``single_example_update``.
    """
    sharpness = dict(sharpness_sigma or {})
    section: dict[str, Any] = {
        "weight_noise": [
            {
                "mode": curve.mode,
                "scales": list(curve.scales),
                "accuracy": list(curve.accuracy),
                "accuracy_std": list(curve.accuracy_std),
                "draws": curve.draws,
                "sharpness_sigma": sharpness.get(curve.mode),
            }
            for curve in weight_noise
        ],
        "adversarial_weights": None,
    }
    if adversarial_weights is not None:
        section["adversarial_weights"] = {
            "scales": list(adversarial_weights.scales),
            "accuracy": list(adversarial_weights.accuracy),
            "steps": adversarial_weights.steps,
        }

    radii: dict[str, Any] = {}
    if weight_noise_radius is not None:
        radii["weight_noise"] = summarize(weight_noise_radius)
    if adversarial_weight_radius is not None:
        radius, first_order = adversarial_weight_radius
        radii["adversarial_weight"] = summarize(radius)
        radii["adversarial_weight_first_order"] = summarize(first_order)
        radii["first_order_spearman"] = finite_spearman(radius, first_order)
    if weight_noise_radius is not None and adversarial_weight_radius is not None:
        radii["weight_noise_vs_adversarial_spearman"] = finite_spearman(weight_noise_radius, adversarial_weight_radius[0])
    if radii:
        section["sample_radii"] = radii

    if tangent_shift is not None:
        inside = ~tangent_shift.crossed_region
        ratio = tangent_shift.achieved[inside] / tangent_shift.bound[inside]
        section["tangent_shift"] = {
            "epsilon": tangent_shift.epsilon,
            "share_crossed": tangent_shift.share_crossed,
            "bound_violations_inside_region": tangent_shift.bound_violations_inside_region,
            "samples_inside_region": int(inside.sum()),
            "achieved": summarize(tangent_shift.achieved),
            "bound": summarize(tangent_shift.bound),
            "achieved_over_bound_inside_region": summarize(ratio),
        }

    if single_example_update:
        section["single_example_update"] = [_update_entry(result) for result in single_example_update]
    return section


def _update_entry(result: SingleExampleUpdateResult) -> dict[str, Any]:
    bound = result.parameter_step_change_bound
    return {
        "mode": result.mode,
        "norm": result.norm,
        "epsilon": result.epsilon,
        "step_size": result.step_size,
        "num_eval": result.num_eval,
        "changed_clean": result.changed_clean,
        "changed_perturbed": result.changed_perturbed,
        "changed_first_order": result.changed_first_order,
        "delta_l2": result.delta_l2,
        "parameter_step_change": result.parameter_step_change,
        "parameter_step_change_bound": bound if bound is None or math.isfinite(bound) else None,
        "crossed_region": result.crossed_region,
    }
