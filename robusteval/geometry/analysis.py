"""Per-sample local linear analysis: the affine piece of a ReLU network at each input.

For every sample this collects the activation pattern, the tangent sensitivity of every output,
the distances to the activation-region boundary and to the linear decision boundary, and the
certified radius ``min(region distance, linear decision distance)``. Inside the ball whose
radius is the region distance the network equals its affine piece, so no adversarial example
lies closer than the certified radius. When the linear decision distance is the smaller one,
the closest point of that hyperplane is adversarial, and the radius is exact if that point also
lies within the input bounds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

from .._types import NORMS, Bounds, Norm
from ..devices import check_model_device
from .chain import ReluChain, recover_chain
from .closed_form import LocalLinearPiece, chain_analysis
from .generic import generic_analysis
from .region_distance import certificate_is_exact, linear_decision_distance, region_distance
from .tangent_sensitivity import Method, TangentSensitivityEstimate, estimate_tangent_sensitivity, validate_arguments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeometryResult:
    """Local linear analysis of ``N`` samples of a ``K``-class network with ``L`` hidden ReLU layers.

    Attributes:
        logits: ``(N, K)``.
        predictions: ``(N,)`` int64.
        tangent_sensitivity: ``(N, K)`` Frobenius norms ``||d/dx grad_theta f_k||_F``, not squared.
        tangent_sensitivity_stderr: ``(N, K)`` standard errors for Hutchinson, else ``None``.
        method: ``"closed_form"``, ``"exact"`` or ``"hutchinson"``.
        probes: Gaussian probes per sample for Hutchinson, else ``None``.
        region_distance: per norm, ``(N,)`` distances to the activation-region boundary; ``inf``
            without hidden units, ``nan`` where the ReLUs could not be located.
        linear_decision_distance: per norm, ``(N,)`` distances to the decision boundary of the
            affine piece, for the predicted class.
        decision_class: per norm, ``(N,)`` the class ``j`` attaining that minimum.
        certified_radius: per norm, ``(N,)`` ``min(region, linear decision distance)``.
        certificate_exact: per norm, ``(N,)`` bool; ``True`` where the certified radius is the
            true minimal adversarial distance, otherwise it is only a lower bound.
        active_units: ``(N, L)`` int64 active ReLUs per hidden layer.
        activation_patterns: ``L`` tensors ``(N, n_l)`` bool.
        logit_margin: ``(N,)`` ``f_pred - max_{j != pred} f_j``.
        input_gradient_norm: ``(N,)`` L2 norm of the input gradient of that margin on the region.
        input_jacobian_norm: ``(N,)`` Frobenius norm of the ``(K, d)`` input Jacobian.
    """

    logits: Tensor
    predictions: Tensor
    tangent_sensitivity: Tensor
    tangent_sensitivity_stderr: Tensor | None
    method: str
    probes: int | None
    region_distance: dict[Norm, Tensor]
    linear_decision_distance: dict[Norm, Tensor]
    decision_class: dict[Norm, Tensor]
    certified_radius: dict[Norm, Tensor]
    certificate_exact: dict[Norm, Tensor]
    active_units: Tensor
    activation_patterns: list[Tensor]
    logit_margin: Tensor
    input_gradient_norm: Tensor
    input_jacobian_norm: Tensor


def local_linear_analysis(
    model: nn.Module | torch.export.ExportedProgram,
    x: Tensor,
    *,
    bounds: Bounds | None = Bounds(0.0, 1.0),
    method: Method = "auto",
    probes: int = 64,
    generator: torch.Generator | None = None,
    memory_budget: int = 2**31,
) -> GeometryResult:
    """Analyse the affine piece of ``model`` at every sample of ``x``.

    Args:
        model: a classifier in eval mode returning logits ``(N, K)``, eager, TorchScript or a
            ``torch.export`` program.
        x: inputs ``(N, ...)``; all work happens in their dtype.
        bounds: the input domain for ``certificate_exact``; ``None`` for an unbounded domain.
        method: tangent-sensitivity method, see :func:`tangent_sensitivity`.
        probes: Gaussian probes per sample for Hutchinson.
        generator: random source of the probes.
        memory_budget: bytes the working set of one chunk may use.

    Raises:
        TypeError: for integer inputs.
        ValueError: for inputs without a batch dimension, a model on another device than ``x``
            (the message names both), or outputs that are not ``(N, K)`` logits with ``K >= 2``.
    """
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"Expected a floating-point tensor x, but got {getattr(x, 'dtype', type(x))}. Convert it with x.float().")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"Expected x of shape (N, ...) with N >= 1, but got {tuple(x.shape)}.")
    x = x.detach()
    check_model_device(model, x)

    validate_arguments(method, probes, memory_budget)

    chain = recover_chain(model, x)
    piece: LocalLinearPiece | _UnlocatedPiece
    if chain is not None and method in ("auto", "closed_form"):
        # One closed-form pass gives the affine piece and the tangent sensitivity together.
        piece, values = chain_analysis(chain, x, memory_budget=memory_budget)
        estimate = TangentSensitivityEstimate(values, None, "closed_form", None)
    else:
        piece = _local_piece(model, x, chain, memory_budget)
        estimate = estimate_tangent_sensitivity(
            model, x, method=method, probes=probes, generator=generator, memory_budget=memory_budget, chain=chain
        )

    logits = piece.logits
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"Expected the model to return logits of shape (N, K) with K >= 2, but got {tuple(logits.shape)}.")
    n = logits.shape[0]
    predictions = logits.argmax(dim=1)
    rows = torch.arange(n, device=logits.device)

    region, decision_distance, decision_class, certified, exact = {}, {}, {}, {}, {}
    for norm in NORMS:
        if piece.preactivations is None:
            region[norm] = torch.full((n,), math.nan, dtype=x.dtype, device=x.device)
        else:
            norms = piece.unit_gradient_l2 if norm == "l2" else piece.unit_gradient_l1
            region[norm] = region_distance(piece.preactivations, norms, batch_size=n, dtype=x.dtype, device=x.device)
        decision = linear_decision_distance(logits, piece.input_jacobian, predictions, norm)
        decision_distance[norm] = decision.distance
        decision_class[norm] = decision.decision_class
        # torch.minimum propagates nan, so an unknown region distance leaves the radius unknown.
        certified[norm] = torch.minimum(region[norm], decision.distance)
        exact[norm] = certificate_is_exact(x, region[norm], decision, norm, bounds)

    runner_up = logits.masked_fill(nn.functional.one_hot(predictions, logits.shape[1]).bool(), -torch.inf).argmax(dim=1)
    margin_gradient = piece.input_jacobian[rows, predictions] - piece.input_jacobian[rows, runner_up]
    patterns = [z > 0 for z in piece.preactivations or []]
    active = torch.stack([p.sum(dim=1) for p in patterns], dim=1) if patterns else torch.zeros(n, 0, dtype=torch.int64, device=x.device)

    return GeometryResult(
        logits=logits,
        predictions=predictions,
        tangent_sensitivity=estimate.values,
        tangent_sensitivity_stderr=estimate.stderr,
        method=estimate.method,
        probes=estimate.probes,
        region_distance=region,
        linear_decision_distance=decision_distance,
        decision_class=decision_class,
        certified_radius=certified,
        certificate_exact=exact,
        active_units=active.to(torch.int64),
        activation_patterns=patterns,
        logit_margin=logits[rows, predictions] - logits[rows, runner_up],
        input_gradient_norm=torch.linalg.vector_norm(margin_gradient, dim=1),
        input_jacobian_norm=torch.linalg.vector_norm(piece.input_jacobian, dim=(1, 2)),
    )


@dataclass(frozen=True)
class _UnlocatedPiece:
    """The affine piece of a model whose ReLUs could not be located: logits and Jacobian only."""

    logits: Tensor
    input_jacobian: Tensor
    preactivations: None = None
    unit_gradient_l2: None = None
    unit_gradient_l1: None = None


def _local_piece(
    model: nn.Module, x: Tensor, chain: ReluChain | None, memory_budget: int
) -> LocalLinearPiece | _UnlocatedPiece:
    if chain is not None:
        return chain_analysis(chain, x, memory_budget=memory_budget)[0]
    try:
        return generic_analysis(model, x, memory_budget=memory_budget)
    except ValueError as error:
        logger.info("Region distances are unavailable: %s", error)

    with torch.no_grad():
        logits = model(x)
    d = math.prod(x.shape[1:])
    basis = torch.eye(d, dtype=x.dtype, device=x.device).reshape(d, *x.shape[1:])
    with torch.no_grad():
        columns = vmap(lambda e: jvp(model, (x,), (e.expand_as(x),))[1])(basis)  # (d, N, K)
    return _UnlocatedPiece(logits, columns.permute(1, 2, 0))
