"""Single-example update attack: one perturbed example whose gradient step flips many predictions.

The attack perturbs one training example so that one gradient step on it changes as many
predictions on an evaluation set as possible. This measures the tangent-space view of poisoning: the step an example induces is
proportional to its tangent vector, and inside its activation region a perturbation delta
changes that tangent vector by T delta, at most TS_k(x) ||delta||_2 (B. Daroczy, "Tangent Space
Sensitivity and Distribution of Linear Regions in ReLU Networks", arXiv 2006.06780).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robusteval.modes import set_eval_mode
from torch.func import functional_call

from robusteval._types import Bounds, Norm
from robusteval.seeding import derive_seed

from ._functional import (
    PER_SAMPLE_ELEMENT_BUDGET,
    Parameters,
    check_count,
    check_inputs,
    check_positive,
    logits,
    parameter_count,
    parameter_tensors,
    predictions,
)
from ._patterns import activation_pattern
from .state import preserved_state

logger = logging.getLogger(__name__)

UpdateMode = Literal["output", "label"]


@dataclass(frozen=True)
class SingleExampleUpdateResult:
    """Effect of one gradient step on a single (perturbed) example on an evaluation set.

    Changed predictions are counted against the predictions of the model before any step.

    Attributes:
        epsilon: Perturbation budget, in input units of ``norm``.
        norm: ``"l2"`` or ``"linf"``.
        step_size: Learning rate eta of the single step.
        mode: ``"output"`` (step eta * grad_theta f_k) or ``"label"`` (step
            -eta * grad_theta CE(f, k)), k the class predicted at the clean example.
        num_eval: Number of evaluation samples.
        changed_clean: Predictions changed by the step on the unperturbed example.
        changed_perturbed: Predictions changed by the step on the perturbed example.
        changed_first_order: Predictions changed by the first-order step
            step(x) + J delta, J the Jacobian of the step with respect to the example (for
            ``"output"`` mode J = eta T, exact inside the activation region).
        delta: The perturbation, shaped like the example.
        delta_l2: ``||delta||_2``.
        parameter_step_change: ``||step(x + delta) - step(x)||_2``.
        parameter_step_change_bound: ``eta * TS_k(x) * ||delta||_2``, the bound on
            ``parameter_step_change`` inside the region; ``None`` in ``"label"`` mode, where the
            step is not piecewise linear in the example.
        crossed_region: Whether x + delta lies in another activation region than x.
    """

    epsilon: float
    norm: Norm
    step_size: float
    mode: UpdateMode
    num_eval: int
    changed_clean: int
    changed_perturbed: int
    changed_first_order: int
    delta: Tensor
    delta_l2: float
    parameter_step_change: float
    parameter_step_change_bound: float | None
    crossed_region: bool


def single_example_update_attack(
    model: nn.Module,
    example_x: Tensor,
    x_eval: Tensor,
    y_eval: Tensor,
    *,
    epsilon: float,
    step_size: float,
    mode: UpdateMode,
    steps: int,
    seed: int,
    norm: Norm = "l2",
    bounds: Bounds | None = None,
    tangent_sensitivity: float | None = None,
    batch_size: int = 512,
) -> SingleExampleUpdateResult:
    """Perturb one example within ``epsilon`` so that one step on it flips many evaluation predictions.

    The step on example x' is ``eta * grad_theta f_k(x')`` (``mode="output"``, label-free) or
    ``-eta * grad_theta CE(f(x'), k)`` (``mode="label"``), with k the class predicted at the clean
    example. Projected gradient ascent on delta maximizes the smooth surrogate
    ``-sum_i relu(m_i)``, where m_i is evaluation sample i's margin for its original prediction
    after the step. Its gradient comes from double backward through the network. Steps have
    length ``2.5 * epsilon / steps`` (normalized gradient for L2, its sign for Linf), start from a
    random point of the ball (seeded with ``derive_seed(seed, "single-example-update")``), and
    the iterate that changes the most predictions is kept; delta = 0 counts as an iterate.

    Args:
        model: Classifier returning logits ``(N, K)``.
        example_x: The example, ``(1, ...)`` or unbatched ``(...)`` matching ``x_eval``'s samples.
        x_eval: Evaluation inputs ``(N, ...)``.
        y_eval: Evaluation labels ``(N,)``, int64; checked but not used by the count, which
            compares predictions before and after the step.
        epsilon: Perturbation budget in input units.
        step_size: Learning rate eta of the single step.
        mode: ``"output"`` or ``"label"``.
        steps: Ascent steps.
        seed: Seed of the random start.
        norm: Norm of the budget, ``"l2"`` or ``"linf"``.
        bounds: Input domain; when given, x + delta is clipped to it after each projection.
        tangent_sensitivity: TS_k of the clean example; computed exactly (one forward-mode
            product per input dimension) when not given.
        batch_size: Evaluation inputs per forward pass.

    Returns:
        The counts, the perturbation and the tangent-space comparison.
    """
    check_inputs(x_eval, y_eval)
    example = example_x.unsqueeze(0) if example_x.ndim == x_eval.ndim - 1 else example_x
    check_inputs(example)
    if example.shape != (1, *x_eval.shape[1:]):
        raise ValueError(
            f"Expected example_x of shape {tuple(x_eval.shape[1:])} or (1, ...), matching x_eval, but got "
            f"{tuple(example_x.shape)}."
        )
    if mode not in ("output", "label"):
        raise ValueError(f"Expected mode 'output' or 'label', but got {mode!r}.")
    if norm not in ("l2", "linf"):
        raise ValueError(f"Expected norm 'l2' or 'linf', but got {norm!r}.")
    check_positive("epsilon", epsilon)
    check_positive("step_size", step_size)
    check_count("steps", steps)
    check_count("batch_size", batch_size)

    with preserved_state(model):
        set_eval_mode(model)
        parameters = parameter_tensors(model)
        target = int(predictions(model, parameters, example, batch_size=1)[0])
        original = predictions(model, parameters, x_eval, batch_size)
        update = _update_function(model, parameters, target, step_size, mode)

        def changed_by(step: Parameters) -> int:
            shifted = {name: parameters[name] + step[name] for name in parameters}
            return int((predictions(model, shifted, x_eval, batch_size) != original).sum())

        clean_step = _detached(update(example))
        delta = _search(
            model, parameters, update, example, x_eval, original, epsilon, norm, bounds, steps, seed, batch_size,
            changed_by,
        )
        perturbed_step = _detached(update(example + delta))
        direction_derivative = _directional_derivative(update, example, delta)
        first_order_step = {name: clean_step[name] + direction_derivative[name].detach() for name in parameters}

        delta_l2 = float(delta.norm())
        step_change = math.sqrt(sum(float((perturbed_step[n] - clean_step[n]).pow(2).sum()) for n in parameters))
        bound = None
        if mode == "output":
            sensitivity = (
                tangent_sensitivity
                if tangent_sensitivity is not None
                else exact_tangent_sensitivity(model, parameters, example, target)
            )
            bound = step_size * float(sensitivity) * delta_l2
        crossed = bool((activation_pattern(model, example) != activation_pattern(model, example + delta)).any())
        result = SingleExampleUpdateResult(
            epsilon=float(epsilon),
            norm=norm,
            step_size=float(step_size),
            mode=mode,
            num_eval=int(x_eval.shape[0]),
            changed_clean=changed_by(clean_step),
            changed_perturbed=changed_by(perturbed_step),
            changed_first_order=changed_by(first_order_step),
            delta=delta.squeeze(0).detach(),
            delta_l2=delta_l2,
            parameter_step_change=step_change,
            parameter_step_change_bound=bound,
            crossed_region=crossed,
        )
    logger.info(
        "single-example update (%s): %d -> %d changed predictions", mode, result.changed_clean, result.changed_perturbed
    )
    return result


def exact_tangent_sensitivity(model: nn.Module, parameters: Parameters, example: Tensor, target: int) -> float:
    """Return TS_k = ||d/dx grad_theta f_k(x)||_F at one example ``(1, ...)``.

    Exact: one Jacobian-vector product per input dimension, vectorized over chunks of the
    standard basis so that a chunk of ``(c, P)`` products fits the per-sample memory budget.
    """
    tangent = _update_function(model, parameters, target, 1.0, "output")
    pullback = torch.func.vjp(tangent, example)[1]
    cotangent_shape = {name: tensor.shape for name, tensor in parameters.items()}

    def flat_derivative(direction: Tensor) -> Tensor:
        derivative = _pushforward(pullback, cotangent_shape, direction.view_as(example), example)
        return torch.cat([value.flatten() for value in derivative.values()])

    dimension = example.numel()
    chunk = max(1, PER_SAMPLE_ELEMENT_BUDGET // parameter_count(parameters))
    total = 0.0
    for start in range(0, dimension, chunk):
        basis = torch.eye(dimension, dtype=example.dtype, device=example.device)[start : start + chunk]
        total += float(torch.vmap(flat_derivative)(basis).double().pow(2).sum())
    return math.sqrt(total)


def _directional_derivative(update: Callable[[Tensor], Parameters], example: Tensor, direction: Tensor) -> Parameters:
    """Return J direction, J the Jacobian of ``update`` at ``example``."""
    pullback = torch.func.vjp(update, example)[1]
    shapes = {name: tensor.shape for name, tensor in update(example).items()}
    return {name: tensor.detach() for name, tensor in _pushforward(pullback, shapes, direction, example).items()}


def _pushforward(
    pullback: Callable[[Parameters], tuple[Tensor, ...]], shapes: dict[str, torch.Size], direction: Tensor, example: Tensor
) -> Parameters:
    """Return the Jacobian-vector product J direction from the vector-Jacobian product ``pullback``.

    u -> <J^T u, direction> is linear in u with gradient J direction, so one more reverse pass
    gives the forward-mode product. Reverse mode only: torch 2.13's forward-mode AD loads
    TorchScript decompositions on first use, which raises a DeprecationWarning.
    """

    def projected(cotangent: Parameters) -> Tensor:
        (pulled,) = pullback(cotangent)
        return (pulled * direction).sum()

    zeros = {name: example.new_zeros(shape) for name, shape in shapes.items()}
    return torch.func.grad(projected)(zeros)


def _update_function(
    model: nn.Module, parameters: Parameters, target: int, step_size: float, mode: UpdateMode
) -> Callable[[Tensor], Parameters]:
    """Return the map from an example ``(1, ...)`` to the parameter step it induces."""

    def objective(candidate: Parameters, example: Tensor) -> Tensor:
        output = functional_call(model, candidate, (example,))
        if mode == "output":
            return step_size * output[0, target]
        labels = torch.full((1,), target, dtype=torch.int64, device=output.device)
        return -step_size * F.cross_entropy(output, labels)

    def update(example: Tensor) -> Parameters:
        return torch.func.grad(objective)(parameters, example)

    return update


def _search(
    model: nn.Module,
    parameters: Parameters,
    update: Callable[[Tensor], Parameters],
    example: Tensor,
    x_eval: Tensor,
    original: Tensor,
    epsilon: float,
    norm: Norm,
    bounds: Bounds | None,
    steps: int,
    seed: int,
    batch_size: int,
    changed_by: Callable[[Parameters], int],
) -> Tensor:
    """Run the projected ascent on delta and return the iterate that changed the most predictions."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "single-example-update"))
    delta = _project(torch.randn(example.shape, generator=generator, dtype=example.dtype).to(example.device) * epsilon,
                     example, epsilon, norm, bounds)
    step_length = 2.5 * epsilon / steps
    # The unperturbed example is the first candidate, so the attack never reports fewer changes.
    best_delta, best_count = torch.zeros_like(example), changed_by(_detached(update(example)))

    def surrogate(candidate_delta: Tensor) -> Tensor:
        step = update(example + candidate_delta)
        shifted = {name: parameters[name] + step[name] for name in parameters}
        total = candidate_delta.new_zeros(())
        for start in range(0, x_eval.shape[0], batch_size):
            output = functional_call(model, shifted, (x_eval[start : start + batch_size],))
            before = original[start : start + batch_size]
            is_before = F.one_hot(before, num_classes=output.shape[1]).bool()
            runner_up = output.masked_fill(is_before, -math.inf).max(dim=1).values
            margin = output.gather(1, before.unsqueeze(1)).squeeze(1) - runner_up
            total = total - F.relu(margin).sum()
        return total

    for step in range(steps + 1):
        count = changed_by(_detached(update(example + delta)))
        if count > best_count:
            best_delta, best_count = delta, count
        if step == steps:
            break
        gradient = torch.func.grad(surrogate)(delta)
        if norm == "l2":
            moved = delta + step_length * gradient / gradient.norm().clamp_min(1e-30)
        else:
            moved = delta + step_length * gradient.sign()
        delta = _project(moved.detach(), example, epsilon, norm, bounds)
    return best_delta


def _project(delta: Tensor, example: Tensor, epsilon: float, norm: Norm, bounds: Bounds | None) -> Tensor:
    """Project onto the epsilon ball, then clip x + delta to ``bounds``.

    NOTE: clipping after projecting stays inside both sets but is not the exact Euclidean
    projection onto their intersection.
    """
    if norm == "l2":
        delta = delta * (epsilon / delta.norm().clamp_min(1e-30)).clamp(max=1.0)
    else:
        delta = delta.clamp(-epsilon, epsilon)
    if bounds is not None:
        delta = (example + delta).clamp(bounds.lower, bounds.upper) - example
    return delta


def _detached(step: Parameters) -> Parameters:
    return {name: tensor.detach() for name, tensor in step.items()}
