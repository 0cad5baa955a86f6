"""Tangent shift: how much the parameter gradient an input induces changes when the input moves.

For a ReLU network the tangent vector g(x) = grad_theta f_k(x) is affine in x on each
activation region, g(x + delta) - g(x) = T delta with T = d/dx grad_theta f_k(x), so inside the
region the shift is at most ||T||_F ||delta||_2 = TS_k(x) ||delta||_2 (B. Daroczy, "Tangent Space
Sensitivity and Distribution of Linear Regions in ReLU Networks", arXiv 2006.06780). The attack
here searches the L2 ball for the largest shift and checks that bound where the search stayed
inside the region.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robusteval.modes import set_eval_mode
from torch.func import functional_call

from robusteval.results import TangentShiftRecord
from robusteval.seeding import derive_seed

from ._functional import (
    Parameters,
    check_count,
    check_inputs,
    check_positive,
    logits,
    parameter_tensors,
    samples_per_chunk,
)

from .state import preserved_state

logger = logging.getLogger(__name__)

# Relative slack of the bound check, for float32 rounding of the achieved shift.
BOUND_RELATIVE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class TangentShiftResult:
    """Largest tangent shift found per sample within an L2 ball of radius ``epsilon``.

    Attributes:
        epsilon: Radius of the L2 ball, in input units.
        achieved: ``(N,)`` largest ||g(x + delta) - g(x)||_2 found, g the tangent vector of
            the class predicted at x.
        bound: ``(N,)`` TS_k(x) * epsilon.
        crossed_region: ``(N,)`` whether the activation pattern at x + delta differs from x.
        bound_holds: Per sample, whether ``achieved`` is within ``bound`` (see
            :func:`tangent_shift`); ``None`` for samples that crossed a region boundary, where
            the bound does not apply.
        delta: ``(N, ...)`` the perturbation that reached ``achieved``.
        within_region_distance: ``(N,)`` whether ``epsilon`` is below the sample's region
            distance, so that the whole ball lies inside its region.
    """

    epsilon: float
    achieved: Tensor
    bound: Tensor
    crossed_region: Tensor
    bound_holds: tuple[bool | None, ...]
    delta: Tensor
    within_region_distance: Tensor

    @property
    def share_crossed(self) -> float:
        """Share of samples whose best perturbation left the activation region."""
        return float(self.crossed_region.double().mean())

    @property
    def bound_violations_inside_region(self) -> int:
        """Number of samples that stayed inside their region and exceeded the bound."""
        return sum(1 for holds in self.bound_holds if holds is False)

    def records(self) -> list[TangentShiftRecord]:
        """Return one :class:`TangentShiftRecord` per sample, for the results file."""
        return [
            TangentShiftRecord(
                epsilon=self.epsilon,
                achieved=float(achieved),
                bound=float(bound),
                crossed_region=bool(crossed),
                bound_holds=holds,
            )
            for achieved, bound, crossed, holds in zip(
                self.achieved.tolist(), self.bound.tolist(), self.crossed_region.tolist(), self.bound_holds
            )
        ]


def tangent_shift(
    model: nn.Module,
    x: Tensor,
    *,
    epsilon: float,
    tangent_sensitivity: Tensor,
    region_distance: Tensor,
    steps: int,
    seed: int,
    step_size: float = 1.0,
) -> TangentShiftResult:
    """Maximize the tangent shift ||g(x + delta) - g(x)||_2 over ||delta||_2 <= epsilon, per sample.

    g(x) = grad_theta f_k(x) with k the class predicted at x, held fixed. The objective is
    smooth inside a region (there it is ||T delta||^2, so ascent acts like power iteration
    towards T's top right singular vector), and its gradient comes from double backward
    through the network, batched over samples with ``torch.vmap``. Each sample starts at a
    random point of the sphere of radius ``epsilon`` (seeded with
    ``derive_seed(seed, "tangent-shift")``), takes ``steps`` normalized ascent steps of length
    ``step_size * epsilon``, each projected back onto the ball, and keeps its best iterate.
    The perturbation is not clipped to the input domain, since the shift is a property of the
    network around x.

    The bound TS_k(x) * epsilon is valid while x + delta stays in the activation region of x. For
    those samples ``bound_holds`` is ``achieved <= bound * (1 + 1e-5) + 1e-6 * ||g(x)||``; the
    second term allows for float32 rounding of the difference of two gradients.

    Args:
        model: ReLU classifier returning logits ``(N, K)``.
        x: Inputs ``(N, ...)``.
        epsilon: Radius of the L2 ball, in input units.
        tangent_sensitivity: TS of the predicted class ``(N,)``, or of every class ``(N, K)``.
        region_distance: L2 region distance ``(N,)``; NaN where unknown.
        steps: Ascent steps.
        seed: Seed of the random starts.
        step_size: Step length as a fraction of ``epsilon``.

    Returns:
        The per-sample result.
    """
    check_inputs(x)
    check_positive("epsilon", epsilon)
    check_positive("step_size", step_size)
    check_count("steps", steps)
    count = x.shape[0]
    distance = _per_sample_tensor("region_distance", region_distance, count)

    with preserved_state(model):
        set_eval_mode(model)
        parameters = parameter_tensors(model)
        outputs = logits(model, parameters, x, batch_size=512)
        predicted = outputs.argmax(dim=1)
        sensitivity = _predicted_class_sensitivity(tangent_sensitivity, predicted, outputs.shape[1])
        selector = F.one_hot(predicted, num_classes=outputs.shape[1]).to(x.dtype)

        generator = torch.Generator().manual_seed(derive_seed(seed, "tangent-shift"))
        start = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        start = epsilon * start / _sample_norms(start).clamp_min(1e-30)

        squared = torch.empty(count, dtype=x.dtype, device=x.device)
        reference_norm = torch.empty(count, dtype=x.dtype, device=x.device)
        best_delta = torch.empty_like(x)
        chunk = samples_per_chunk(parameters, copies_per_sample=4)
        for first in range(0, count, chunk):
            part = slice(first, first + chunk)
            squared[part], best_delta[part], reference_norm[part] = _ascend(
                model, parameters, x[part], selector[part], start[part], epsilon, steps, step_size
            )

        achieved = squared.clamp_min(0).sqrt()
        crossed = _crossed_region(model, x, best_delta, distance, epsilon).cpu()

    achieved = achieved.detach().double().cpu()
    bound = sensitivity.cpu() * epsilon
    limit = bound * (1 + BOUND_RELATIVE_TOLERANCE) + 1e-6 * reference_norm.detach().double().cpu()
    holds = [
        None if crossed_n else bool(value <= top)
        for crossed_n, value, top in zip(crossed.tolist(), achieved.tolist(), limit.tolist())
    ]
    violations = sum(1 for item in holds if item is False)
    if violations:
        logger.warning("tangent shift exceeded TS * epsilon inside the region for %d samples", violations)
    return TangentShiftResult(
        epsilon=float(epsilon),
        achieved=achieved,
        bound=bound,
        crossed_region=crossed.cpu(),
        bound_holds=tuple(holds),
        delta=best_delta.detach(),
        within_region_distance=(epsilon < distance).cpu(),
    )


def tangent_vectors(model: nn.Module, parameters: Parameters, x: Tensor, selector: Tensor) -> Parameters:
    """Return grad_theta (selector . f(x)) per sample, each tensor ``(N, *parameter_shape)``.

    With ``selector`` the one-hot rows ``(N, K)`` of class k this is the tangent vector of f_k.
    """
    return torch.vmap(_tangent_function(model, parameters))(x, selector)


def _tangent_function(model: nn.Module, parameters: Parameters) -> Callable[[Tensor, Tensor], Parameters]:
    """Return the map (sample, selector) -> grad_theta (selector . f(sample)) for one unbatched sample."""

    def tangent(sample: Tensor, selector: Tensor) -> Parameters:
        def output(candidate: Parameters) -> Tensor:
            return (functional_call(model, candidate, (sample.unsqueeze(0),)).squeeze(0) * selector).sum()

        return torch.func.grad(output)(parameters)

    return tangent


def _ascend(
    model: nn.Module,
    parameters: Parameters,
    x: Tensor,
    selector: Tensor,
    start: Tensor,
    epsilon: float,
    steps: int,
    step_size: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the projected ascent on one chunk; return best squared shift, its delta and ||g(x)||."""
    reference = tangent_vectors(model, parameters, x, selector)
    tangent = _tangent_function(model, parameters)

    def squared_shift(delta: Tensor, sample: Tensor, weights: Tensor, anchor: Parameters) -> Tensor:
        moved = tangent(sample + delta, weights)
        return sum(((moved[name] - anchor[name]) ** 2).sum() for name in moved)  # type: ignore[return-value]

    gradient_and_value = torch.vmap(torch.func.grad_and_value(squared_shift))
    best = torch.full((x.shape[0],), -1.0, dtype=x.dtype, device=x.device)
    best_delta = start.clone()
    delta = start
    for step in range(steps + 1):
        gradient, value = gradient_and_value(delta, x, selector, reference)
        improved = value > best
        best = torch.where(improved, value, best)
        best_delta[improved] = delta[improved]
        if step == steps:
            break
        moved = delta + step_size * epsilon * gradient / _sample_norms(gradient).clamp_min(1e-30)
        delta = moved * (epsilon / _sample_norms(moved)).clamp(max=1.0)

    reference_norm = sum(tensor.flatten(1).pow(2).sum(dim=1) for tensor in reference.values())
    return best.detach(), best_delta.detach(), torch.as_tensor(reference_norm).sqrt().detach()


def _crossed_region(model: nn.Module, x: Tensor, delta: Tensor, distance: Tensor, epsilon: float) -> Tensor:
    """Return ``(N,)`` whether x + delta lies in another activation region than x.

    The patterns come from :func:`robusteval.geometry.hidden_preactivations`, which also finds
    ReLUs called as functions and those of ``torch.export`` programs.
    """
    from robusteval.geometry import hidden_preactivations

    try:
        with torch.no_grad():
            before = [layer > 0 for layer in hidden_preactivations(model, x)]
            after = [layer > 0 for layer in hidden_preactivations(model, x + delta)]
    except ValueError:
        before = after = []
    if not before:
        warnings.warn(
            "The model's ReLUs could not be located, so region crossings cannot be read from activation "
            "patterns; counting every sample whose region distance is not above epsilon as crossed.",
            stacklevel=3,
        )
        return ~(epsilon < distance)
    return (torch.cat(before, dim=1) != torch.cat(after, dim=1)).any(dim=1)


def _predicted_class_sensitivity(sensitivity: Tensor, predicted: Tensor, num_classes: int) -> Tensor:
    count = predicted.shape[0]
    if not isinstance(sensitivity, Tensor):
        raise TypeError(
            f"Expected tangent_sensitivity as a tensor of shape ({count},) or ({count}, {num_classes}), "
            f"but got {type(sensitivity).__name__}."
        )
    values = sensitivity.to(device=predicted.device, dtype=torch.float64)
    if values.shape == (count, num_classes):
        return values[torch.arange(count, device=predicted.device), predicted]
    if values.shape == (count,):
        return values
    raise ValueError(
        f"Expected tangent_sensitivity of shape ({count},) or ({count}, {num_classes}), but got "
        f"{tuple(sensitivity.shape)}. Pass TS of the predicted class or of every class."
    )


def _per_sample_tensor(name: str, value: Tensor, count: int) -> Tensor:
    if not isinstance(value, Tensor) or value.shape != (count,):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"Expected {name} as a tensor of shape ({count},), but got {shape}.")
    return value.double().cpu()


def _sample_norms(values: Tensor) -> Tensor:
    """Return the L2 norm of each sample ``(N, 1, ..., 1)``, shaped to broadcast against ``values``."""
    return values.flatten(1).norm(dim=1).view(-1, *([1] * (values.ndim - 1)))

