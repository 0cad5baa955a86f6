"""Statistics of the activation regions the evaluated samples fall in."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

TOP_REGIONS = 10


def region_statistics(activation_patterns: list[Tensor], tangent_sensitivity: Tensor) -> dict[str, Any]:
    """Summarize distinct activation patterns, active units and tangent sensitivity per region.

    Args:
        activation_patterns: One ``(N, n_l)`` tensor per hidden layer. Bool tensors are the
            on/off states; other dtypes count entries ``> 0`` as on, so 0/1 masks and
            pre-activations both work.
        tangent_sensitivity: ``(N, K)`` TS_k at each sample.

    Returns:
        A JSON-ready dict: ``distinct_patterns``, ``samples``, ``largest_region_samples``,
        ``singleton_regions``, ``active_units_per_layer`` (mean, min, max per layer),
        ``total_active_units`` (mean, std), ``tangent_sensitivity_by_region`` (the
        ``TOP_REGIONS`` largest regions with their size and mean TS over samples and outputs)
        and ``max_relative_spread_within_region``. TS is constant on a region, so that spread
        should be rounding error; a larger one points to a wrong pattern or TS.
    """
    if not activation_patterns:
        raise ValueError("Expected at least one hidden layer of activation patterns, but got none.")
    count = tangent_sensitivity.shape[0]
    masks = [pattern.reshape(pattern.shape[0], -1) for pattern in activation_patterns]
    masks = [mask if mask.dtype == torch.bool else mask > 0 for mask in masks]
    for layer, mask in enumerate(masks):
        if mask.shape[0] != count:
            raise ValueError(
                f"Expected {count} rows in the activation pattern of hidden layer {layer + 1} to match the "
                f"tangent sensitivity, but got {mask.shape[0]}."
            )

    combined = torch.cat(masks, dim=1).to(torch.uint8)  # (N, U)
    _, region_of, sizes = torch.unique(combined, dim=0, return_inverse=True, return_counts=True)
    active = torch.stack([mask.sum(dim=1) for mask in masks], dim=1).to(torch.float64)  # (N, L-1)
    totals = active.sum(dim=1)
    per_sample = tangent_sensitivity.detach().to(torch.float64).cpu()  # (N, K)
    region_of = region_of.cpu()

    regions: list[dict[str, Any]] = []
    largest_spread = 0.0
    for region in torch.argsort(sizes.cpu(), descending=True, stable=True).tolist():
        members = per_sample[region_of == region]  # (size, K)
        mean = float(members.mean())
        if members.shape[0] > 1:
            spread = float((members.max(dim=0).values - members.min(dim=0).values).max())
            largest_spread = max(largest_spread, spread / max(float(members.abs().max()), 1e-300))
        if len(regions) < TOP_REGIONS:
            regions.append({"samples": int(members.shape[0]), "tangent_sensitivity": mean})

    return {
        "distinct_patterns": int(sizes.numel()),
        "samples": count,
        "largest_region_samples": int(sizes.max()),
        "singleton_regions": int((sizes == 1).sum()),
        "active_units_per_layer": {
            "mean": active.mean(dim=0).tolist(),
            "min": active.min(dim=0).values.tolist(),
            "max": active.max(dim=0).values.tolist(),
        },
        "total_active_units": {
            "mean": float(totals.mean()),
            "std": float(totals.std()) if count > 1 else 0.0,
        },
        "tangent_sensitivity_by_region": regions,
        "max_relative_spread_within_region": largest_spread,
    }
