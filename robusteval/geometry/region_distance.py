"""Distances from an input to its activation-region boundary and to the linear decision boundary.

Both follow from the affine piece at ``x``. Every hidden pre-activation ``z_i`` is affine on the
region with input gradient ``g_i``, and the region is the intersection of the half-spaces
``sign(z_i) (z_i + g_i . v) >= 0``. The distance from ``x`` to a hyperplane ``a + g . v = 0`` is
``|a| / ||g||_*`` with ``||.||_*`` the dual norm (Hoelder's inequality): ``||g||_2`` for L2
balls and ``||g||_1`` for Linf balls.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._types import Bounds, Norm


def region_distance(
    preactivations: list[Tensor],
    unit_gradient_norms: list[Tensor],
    *,
    batch_size: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Return ``min_i |z_i| / ||g_i||_*`` per sample, ``(N,)``.

    Args:
        preactivations: one ``(N, n_l)`` tensor per hidden ReLU layer.
        unit_gradient_norms: the dual norms ``||g_i||_*`` in the same layout.
        batch_size: ``N``, needed when there are no hidden units.
        dtype: dtype of the result when there are no hidden units.
        device: device of the result when there are no hidden units.

    Returns:
        ``(N,)`` distances; ``inf`` where no unit can change state (no hidden units, or every
        unit has a zero gradient).
    """
    if not preactivations:
        return torch.full((batch_size,), torch.inf, dtype=dtype, device=device)
    z = torch.cat(preactivations, dim=1)
    norms = torch.cat(unit_gradient_norms, dim=1)
    distances = torch.where(norms > 0, z.abs() / norms, torch.full_like(z, torch.inf))
    return distances.min(dim=1).values


class DecisionDistance(NamedTuple):
    """The nearest linear decision boundary of each sample, with what is needed to reach it."""

    distance: Tensor  # (N,), inf where every margin gradient is zero
    decision_class: Tensor  # (N,) int64, the class j attaining the minimum
    margin_gradient: Tensor  # (N, d), grad (f_pred - f_j) for that class


def linear_decision_distance(logits: Tensor, input_jacobian: Tensor, predictions: Tensor, norm: Norm) -> DecisionDistance:
    """Return ``min_{j != pred} (f_pred - f_j) / ||grad(f_pred - f_j)||_*`` per sample.

    Args:
        logits: ``(N, K)``.
        input_jacobian: ``d logits / d x`` on the region, ``(N, K, d)``.
        predictions: ``(N,)`` predicted classes.
        norm: the threat norm; the dual norm of L2 is L2 and of Linf is L1.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    margins = logits[rows, predictions].unsqueeze(1) - logits  # (N, K)
    gradients = input_jacobian[rows, predictions].unsqueeze(1) - input_jacobian  # (N, K, d)
    dual = torch.linalg.vector_norm(gradients, ord=2 if norm == "l2" else 1, dim=2)
    distances = torch.where(dual > 0, margins / dual, torch.full_like(margins, torch.inf))
    distances[rows, predictions] = torch.inf
    distance, decision_class = distances.min(dim=1)
    return DecisionDistance(distance, decision_class, gradients[rows, decision_class])


def closest_boundary_point(x: Tensor, decision: DecisionDistance, norm: Norm) -> Tensor:
    """Return the point of the linear decision boundary closest to ``x`` in ``norm``, ``(N, ...)``.

    The margin ``m = f_pred - f_j`` decreases fastest per unit of L2 along ``-g / ||g||_2`` and
    per unit of Linf along ``-sign(g)``, so the point is ``x - t g / ||g||_2`` or
    ``x - t sign(g)`` with ``t`` the linear decision distance.
    """
    flat = x.reshape(x.shape[0], -1)
    gradient = decision.margin_gradient
    if norm == "l2":
        step = gradient / torch.linalg.vector_norm(gradient, dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    else:
        step = gradient.sign()
    distance = torch.where(torch.isfinite(decision.distance), decision.distance, torch.zeros_like(decision.distance))
    return (flat - distance.unsqueeze(1) * step).reshape(x.shape)


def certificate_is_exact(
    x: Tensor, region: Tensor, decision: DecisionDistance, norm: Norm, bounds: Bounds | None
) -> Tensor:
    """Return where the certified radius equals the true minimal adversarial distance, ``(N,)`` bool.

    That holds when the linear decision distance is at most the region distance, so the closest
    point of the decision hyperplane lies in the region and is adversarial, and that point lies
    within ``bounds`` (any point counts when ``bounds`` is ``None``).
    """
    exact = torch.isfinite(decision.distance) & (decision.distance <= region)
    if bounds is None:
        return exact
    point = closest_boundary_point(x, decision, norm).reshape(x.shape[0], -1)
    slack = 1e3 * torch.finfo(x.dtype).eps * max(1.0, abs(bounds.lower), abs(bounds.upper))
    inside = ((point >= bounds.lower - slack) & (point <= bounds.upper + slack)).all(dim=1)
    return exact & inside
