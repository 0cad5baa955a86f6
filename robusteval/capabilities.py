"""Checks of the analyses a model supports, shared by ``run`` and ``inspect``.

Three analyses depend on how the model was saved rather than on what it computes. Region
distances, certified radii and the count of regions between a sample and its adversarial
example need the pre-activations of every ReLU, which robusteval cannot reach inside a
TorchScript module with its own ``forward``. The parameter-space attacks need ``torch.func``,
which cannot run such a module either. The stages then skip the analysis and raise one of the
flags below, and ``inspect`` reports the same flags before a run.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._types import Bounds
from .eager import eager_equivalent
from .results import Flag

REGION_DISTANCE_UNAVAILABLE = "region_distance_unavailable"
PARAMETER_SPACE_UNAVAILABLE = "parameter_space_unavailable"
REGION_WALK_UNAVAILABLE = "region_walk_unavailable"


def region_distance_unavailable_flag() -> Flag:
    """Return the flag of a model whose ReLUs robusteval cannot locate."""
    return Flag(
        REGION_DISTANCE_UNAVAILABLE, "warning",
        "robusteval could not locate this model's ReLUs (for example a TorchScript module other than a "
        "Sequential, whose ReLUs run inside its own forward), so region distances and certified radii are "
        "unavailable; tangent sensitivity, linear decision distances and attacks are not affected. Save the "
        "model with torch.export (.pt2), or as a state_dict with --arch, to get them.",
        "geometry",
    )


def parameter_space_unavailable_flag() -> Flag:
    """Return the flag of a model that ``torch.func`` cannot run, so that the parameter-space attacks are skipped."""
    return Flag(
        PARAMETER_SPACE_UNAVAILABLE, "warning",
        "The parameter-space attacks need torch.func, which cannot run a TorchScript module other than a "
        "Sequential of standard layers, so robusteval skips them. Load the model as a state_dict with --arch, "
        "or as a torch.export (.pt2) archive, to run them.",
        "parameter_space",
    )


def region_walk_unavailable_flag(error: ValueError) -> Flag:
    """Return the flag of a model whose regions between a sample and its adversarial example cannot be counted."""
    return Flag(REGION_WALK_UNAVAILABLE, "info", str(error), "analysis")


def capability_flags(model: nn.Module, probe: torch.Tensor, bounds: Bounds) -> list[Flag]:
    """Return the flags a run of ``model`` would raise for analyses it cannot support.

    ``probe`` is a few input samples ``(n, ...)`` in ``bounds``. The geometry stage runs on them
    as it would in ``robusteval run``, so the flags match those of a run.
    """
    from .analysis.region_walk import RegionWalker
    from .geometry import local_linear_analysis

    flags = []
    geometry = local_linear_analysis(model, probe, bounds=bounds)
    region = geometry.region_distance["l2"]
    if all(math.isnan(value) for value in region.tolist()):
        flags.append(region_distance_unavailable_flag())
    try:
        RegionWalker(model, probe)
    except ValueError as error:
        flags.append(region_walk_unavailable_flag(error))
    if eager_equivalent(model, probe) is None:
        flags.append(parameter_space_unavailable_flag())
    return flags
