"""Exact count of the activation regions a straight segment passes through.

On one activation region the network is affine, so along the segment x + t (x_adv - x) every
hidden pre-activation z_i(t) is linear in t. One forward-mode product (jvp) in the direction
x_adv - x gives the slopes dz_i/dt. The next boundary is at the smallest step s > 0 with
z_i + s dz_i = 0. The walk steps just past it, recomputes values and slopes in the new region,
and repeats until t reaches 1. Activation regions are convex, so the segment enters each region
at most once and the count equals the number of distinct activation patterns along it.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import Tensor, nn

from ..modes import set_eval_mode
from torch.func import jvp

from ..geometry import preactivation_runner

logger = logging.getLogger(__name__)

# Step past each boundary by this much in t (the segment is t in [0, 1]). NOTE: two boundaries
# closer than this along the segment count as one crossing.
STEP_MARGIN = 1e-9

MAX_STEPS = 100_000


def count_regions_crossed(model: nn.Module, x: Tensor, x_adv: Tensor) -> Tensor:
    """Count the activation regions met on each segment from ``x[n]`` to ``x_adv[n]``.

    The walk runs in float64 on a copy of ``model``, batched over samples.

    Args:
        model: ReLU network in eval mode whose ReLUs
            :func:`robusteval.geometry.preactivation_runner` can locate.
        x: ``(N, ...)`` start points.
        x_adv: ``(N, ...)`` end points, for example adversarial examples.

    Returns:
        ``(N,)`` int64 number of regions the segment passes through, counting the regions of
        both ends: 1 when ``x_adv[n]`` lies in the activation region of ``x[n]``.

    Raises:
        ValueError: when shapes differ or the model's ReLUs cannot be located.
    """
    if x.shape != x_adv.shape:
        raise ValueError(
            f"Expected x and x_adv of the same shape, but got {tuple(x.shape)} and {tuple(x_adv.shape)}."
        )
    with warnings.catch_warnings():
        # Converting a copied TorchScript module reads the .grad of parameters that torch 2.13
        # reports as non-leaf tensors; the walk never uses gradients, so the warning is noise.
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf", category=UserWarning)
        # Copying a torch.export module runs torch 2.13 code that warns about its own pytree API.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
        walker = copy.deepcopy(model).to(torch.float64)
    set_eval_mode(walker)
    runner = preactivation_runner(walker)

    start = x.detach().to(torch.float64)
    direction = x_adv.detach().to(torch.float64) - start
    count = x.shape[0]
    position = torch.zeros(count, dtype=torch.float64, device=x.device)  # t along each segment
    regions = torch.ones(count, dtype=torch.int64, device=x.device)
    unfinished = torch.ones(count, dtype=torch.bool, device=x.device)

    for _ in range(MAX_STEPS):
        rows = torch.nonzero(unfinished).flatten()
        if rows.numel() == 0:
            break
        times = position[rows].reshape(-1, *([1] * (x.dim() - 1)))
        point = start[rows] + times * direction[rows]
        primals, tangents = jvp(runner, (point,), (direction[rows],))[:2]
        values, slopes = primals[1], tangents[1]
        if not values:
            break
        value = torch.cat(values, dim=1)  # (n, U) pre-activations at the current point
        slope = torch.cat(slopes, dim=1)  # (n, U) their derivatives in t
        with torch.no_grad():
            steps = -value / slope
            steps = torch.where((slope != 0) & (steps > 0), steps, torch.full_like(steps, float("inf")))
            nearest = steps.min(dim=1).values  # (n,)
            crossing = position[rows] + nearest < 1.0
            advanced = rows[crossing]
            position[advanced] += nearest[crossing] + STEP_MARGIN
            regions[advanced] += 1
            unfinished[rows[~crossing]] = False
            unfinished &= position < 1.0
    else:
        warnings.warn(
            f"The region walk stopped after {MAX_STEPS} boundary crossings on "
            f"{int(unfinished.sum())} segments; their counts are lower bounds.",
            stacklevel=2,
        )
    return regions
