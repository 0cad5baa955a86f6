"""Adversarial weight perturbations in the AWP convention: accuracy curves and per-sample radii.

A perturbation dW of relative size gamma satisfies ||dW_l||_F <= gamma ||W_l||_F for every
parameter tensor W_l (Wu et al., "Adversarial Weight Perturbation Helps Robust Generalization",
NeurIPS 2020, where the budget is set per layer). Every parameter tensor is perturbed, biases and
normalization scales included, each within its own budget; a tensor of norm zero stays as it is.
Buffers are never perturbed, and a tied parameter is one tensor with one budget.

The attacks are projected gradient ascent: each step moves every tensor by
``step_size * gamma * ||W_l||`` along its normalized gradient, then projects back onto its ball.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robusteval.modes import set_eval_mode
from torch.func import functional_call

from robusteval.seeding import derive_seed

from ._functional import (
    Parameters,
    check_count,
    check_inputs,
    check_positive,
    check_scales,
    logits,
    parameter_tensors,
    per_sample_logits,
    predictions,
    samples_per_chunk,
    tensor_norms,
)
from .state import preserved_state

logger = logging.getLogger(__name__)

# The smallest gradient norm that is normalized; smaller gradients give a zero step.
_TINY = 1e-30


@dataclass(frozen=True)
class AdversarialWeightCurve:
    """Accuracy under the worst weight perturbation found at each relative size gamma.

    Attributes:
        gammas: The relative perturbation sizes.
        accuracy: Lowest accuracy reached by any iterate of the ascent at each gamma.
        steps: Ascent steps per gamma.
    """

    gammas: tuple[float, ...]
    accuracy: tuple[float, ...]
    steps: int

    @property
    def scales(self) -> tuple[float, ...]:
        """The gammas, under the name the results file uses for every parameter-space curve."""
        return self.gammas


def adversarial_weight_curve(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    gammas: Sequence[float],
    steps: int,
    seed: int,
    step_size: float | None = None,
    batch_size: int = 512,
) -> AdversarialWeightCurve:
    """Lower accuracy on ``(x, y)`` by one weight perturbation per gamma, shared by all samples.

    Each gamma starts from a random point near the clean weights (seeded with
    ``derive_seed(seed, "adversarial-weights", index)``) and ascends the mean cross-entropy over
    all of ``x``, accumulated over batches. The reported accuracy is the lowest of all iterates,
    each of which lies within the budget. The model runs in eval mode and is restored afterwards.

    Args:
        model: Classifier returning logits ``(N, K)``.
        x: Inputs ``(N, ...)``.
        y: Labels ``(N,)``, int64.
        gammas: Relative perturbation sizes >= 0.
        steps: Ascent steps per gamma.
        seed: Seed of the random starts.
        step_size: Step length as a fraction of the budget; defaults to ``2.5 / steps``.
        batch_size: Inputs per forward pass.

    Returns:
        The curve, ``accuracy[i]`` at ``gammas[i]``.
    """
    check_inputs(x, y)
    sizes = check_scales("gammas", gammas)
    check_count("steps", steps)
    check_count("batch_size", batch_size)
    relative_step = 2.5 / steps if step_size is None else step_size
    check_positive("step_size", relative_step)

    accuracy = []
    with preserved_state(model):
        set_eval_mode(model)
        parameters = parameter_tensors(model)
        norms = tensor_norms(parameters)
        labels = y.to(next(iter(parameters.values())).device)
        clean = (predictions(model, parameters, x, batch_size) == labels).double().mean().item()
        for index, gamma in enumerate(sizes):
            if gamma == 0.0:
                accuracy.append(clean)
                continue
            budgets = {name: gamma * norm for name, norm in norms.items()}
            generator = torch.Generator().manual_seed(derive_seed(seed, "adversarial-weights", index))
            delta = _random_start(parameters, budgets, 1, generator)
            delta = {name: tensor.squeeze(0) for name, tensor in delta.items()}
            lowest = clean
            for _ in range(steps):
                gradients, current = _loss_gradient(model, parameters, delta, x, labels, batch_size)
                lowest = min(lowest, current)
                delta = _ascent_step(delta, gradients, budgets, relative_step, per_sample=False)
            final = {name: parameters[name] + delta[name] for name in parameters}
            lowest = min(lowest, (predictions(model, final, x, batch_size) == labels).double().mean().item())
            accuracy.append(lowest)
            logger.debug("adversarial weights: gamma %g gives accuracy %.4f", gamma, lowest)
    return AdversarialWeightCurve(gammas=sizes, accuracy=tuple(accuracy), steps=steps)


def adversarial_weight_radius(
    model: nn.Module,
    x: Tensor,
    *,
    steps: int,
    seed: int,
    step_size: float | None = None,
    max_gamma: float = 10.0,
    bracket_steps: int = 16,
    bisection_steps: int = 8,
) -> tuple[Tensor, Tensor]:
    """Find, per sample, the smallest relative weight perturbation gamma that changes its prediction.

    Every sample gets its own perturbation (``torch.vmap`` over per-sample parameter copies).
    At a trial gamma, projected gradient descent on the sample's margin f_k - f_j runs for
    ``steps`` steps from a random start near the clean weights. Here k is the clean prediction
    and j the class with the smallest first-order radius. The sample counts as flipped when any
    iterate changes its prediction to any class. The search starts
    at the first-order estimate, doubles or halves gamma to bracket the first flip
    (``bracket_steps`` trials at most) and bisects the bracket ``bisection_steps`` times.

    The first-order estimate linearizes the logits in the parameters:
    gamma_1 = min_{j != k} (f_k - f_j) / sum_l ||W_l|| ||grad_{W_l} (f_k - f_j)||. The denominator
    is the dual of the layer-relative norm max_l ||dW_l|| / ||W_l||, so gamma_1 is in the same
    units as the radius, and it is exact when the logits are affine in the parameters (a
    linear model).

    NOTE: each radius is where the ascent found a flip, an upper bound on the true smallest
    gamma. The ascent can miss flips, and flipping need not be monotone in gamma.

    Args:
        model: Classifier returning logits ``(N, K)``.
        x: Inputs ``(N, ...)``; a flip is a change of the clean prediction, so no labels.
        steps: Ascent steps per trial gamma.
        seed: Seed of the random starts.
        step_size: Step length as a fraction of the budget; defaults to ``2.5 / steps``.
        max_gamma: Largest gamma tried; samples not flipped up to it get ``inf``.
        bracket_steps: Trials spent bracketing the first flip.
        bisection_steps: Halvings of each bracket.

    Returns:
        ``(radius, first_order)``, both ``(N,)`` float64; ``inf`` where no flip was found or where
        the margin gradient is zero.
    """
    check_inputs(x)
    check_count("steps", steps)
    check_count("bracket_steps", bracket_steps)
    check_positive("max_gamma", max_gamma)
    if not isinstance(bisection_steps, int) or bisection_steps < 0:
        raise ValueError(f"Expected bisection_steps to be an integer >= 0, but got {bisection_steps!r}.")
    relative_step = 2.5 / steps if step_size is None else step_size
    check_positive("step_size", relative_step)

    with preserved_state(model):
        set_eval_mode(model)
        parameters = parameter_tensors(model)
        norms = tensor_norms(parameters)
        clean = predictions(model, parameters, x, batch_size=512)
        first_order, easiest = first_order_weight_radius(model, parameters, norms, x, clean)

        def flips(indices: Tensor, gamma: Tensor, trial: int) -> Tensor:
            generator = torch.Generator().manual_seed(derive_seed(seed, "adversarial-weight-radius", trial))
            return _flips_within(
                model, parameters, norms, x[indices], clean[indices], easiest[indices], gamma, steps, relative_step,
                generator,
            )

        lower, upper = _bracket(first_order, max_gamma, bracket_steps, flips)
        active = torch.isfinite(upper).nonzero().squeeze(1)
        for trial in range(bisection_steps if active.numel() else 0):
            middle = 0.5 * (lower[active] + upper[active])
            flipped = flips(active, middle, bracket_steps + trial)
            upper[active[flipped]] = middle[flipped]
            lower[active[~flipped]] = middle[~flipped]
    return upper, first_order


def first_order_weight_radius(
    model: nn.Module, parameters: Parameters, norms: Parameters, x: Tensor, clean: Tensor
) -> tuple[Tensor, Tensor]:
    """Return the first-order adversarial weight radius ``(N,)`` and the class ``(N,)`` that attains it.

    See :func:`adversarial_weight_radius` for the formula; ``clean`` are the predictions ``(N,)``.
    """

    def sample_logits(sample_parameters: Parameters, sample: Tensor) -> Tensor:
        return functional_call(model, sample_parameters, (sample.unsqueeze(0),)).squeeze(0)

    jacobian_of_sample = torch.func.jacrev(sample_logits)
    num_classes = logits(model, parameters, x[:1], batch_size=1).shape[1]
    radius = torch.empty(x.shape[0], dtype=torch.float64)
    easiest = torch.empty(x.shape[0], dtype=torch.int64)
    chunk = samples_per_chunk(parameters, copies_per_sample=2 * num_classes)
    for start in range(0, x.shape[0], chunk):
        batch = x[start : start + chunk]
        predicted = clean[start : start + chunk]
        rows = torch.arange(batch.shape[0], device=batch.device)
        with torch.no_grad():
            outputs = torch.vmap(sample_logits, in_dims=(None, 0))(parameters, batch)  # (M, K)
            jacobians = torch.vmap(jacobian_of_sample, in_dims=(None, 0))(parameters, batch)  # name -> (M, K, *shape)
        margins = outputs[rows, predicted].unsqueeze(1) - outputs  # (M, K)
        dual = torch.zeros_like(margins)
        for name, jacobian in jacobians.items():
            difference = jacobian[rows, predicted].unsqueeze(1) - jacobian  # (M, K, *shape)
            dual += norms[name] * difference.flatten(2).norm(dim=2)
        ratio = torch.where(dual > 0, margins / dual.clamp_min(_TINY), torch.full_like(margins, math.inf))
        ratio[rows, predicted] = math.inf
        smallest = ratio.min(dim=1)
        radius[start : start + chunk] = smallest.values.double().cpu()
        easiest[start : start + chunk] = smallest.indices.cpu()
    return radius, easiest


def _bracket(
    first_order: Tensor, max_gamma: float, bracket_steps: int, flips: Callable[[Tensor, Tensor, int], Tensor]
) -> tuple[Tensor, Tensor]:
    """Return ``(lower, upper)`` ``(N,)``: largest gamma found not flipping and smallest found flipping."""
    start = torch.where(torch.isfinite(first_order), first_order, torch.full_like(first_order, max_gamma))
    start = start.clamp(min=1e-8, max=max_gamma)
    lower = torch.zeros_like(first_order)
    upper = torch.full_like(first_order, math.inf)
    gave_up = torch.zeros(first_order.shape[0], dtype=torch.bool)
    for trial in range(bracket_steps):
        unbounded = torch.isinf(upper)
        trial_gamma = torch.where(unbounded, torch.where(lower > 0, 2.0 * lower, start), 0.5 * upper)
        needed = (unbounded | (lower == 0)) & ~gave_up
        gave_up |= needed & (trial_gamma > max_gamma)
        needed &= trial_gamma <= max_gamma
        indices = needed.nonzero().squeeze(1)
        if indices.numel() == 0:
            break
        flipped = flips(indices, trial_gamma[indices], trial)
        upper[indices[flipped]] = trial_gamma[indices[flipped]]
        lower[indices[~flipped]] = trial_gamma[indices[~flipped]]
    return lower, upper


def _flips_within(
    model: nn.Module,
    parameters: Parameters,
    norms: Parameters,
    x: Tensor,
    clean: Tensor,
    target: Tensor,
    gamma: Tensor,
    steps: int,
    relative_step: float,
    generator: torch.Generator,
) -> Tensor:
    """Return ``(M,)`` whether descent on f_k - f_target within each sample's own gamma changed its prediction."""
    flipped = torch.zeros(x.shape[0], dtype=torch.bool)
    chunk = samples_per_chunk(parameters)
    for start in range(0, x.shape[0], chunk):
        stop = start + chunk
        batch, predicted, towards = x[start:stop], clean[start:stop], target[start:stop].to(clean.device)
        scale = gamma[start:stop]
        budgets = {
            name: scale.to(tensor).view(-1, *([1] * tensor.ndim)) * norms[name]
            for name, tensor in parameters.items()
        }  # name -> (M, 1, ..., 1)
        delta = _random_start(parameters, budgets, batch.shape[0], generator)
        rows = torch.arange(batch.shape[0], device=batch.device)
        for step in range(steps + 1):
            variables = {name: tensor.requires_grad_(step < steps) for name, tensor in delta.items()}
            shifted = {name: parameters[name].unsqueeze(0) + variables[name] for name in parameters}
            outputs = per_sample_logits(model, shifted, batch)
            flipped[start:stop] |= (outputs.argmax(dim=1) != predicted).cpu()
            if step == steps:
                break
            margin = outputs[rows, predicted] - outputs[rows, towards]
            gradients = torch.autograd.grad((-margin).sum(), list(variables.values()))
            delta = _ascent_step(
                {name: tensor.detach() for name, tensor in variables.items()},
                dict(zip(variables, gradients)),
                budgets,
                relative_step,
                per_sample=True,
            )
    return flipped


def _random_start(parameters: Parameters, budgets: Parameters, copies: int, generator: torch.Generator) -> Parameters:
    """Return ``copies`` random points ``(copies, *shape)`` near the center of each tensor's ball.

    The direction is Gaussian and the radius uniform in [0, 0.1 * budget]. Starting near the
    clean weights lets the first steps follow the gradient. A start far out in the ball would
    take many steps to turn towards it.
    """
    start = {}
    for name, tensor in parameters.items():
        direction = torch.randn((copies, *tensor.shape), generator=generator, dtype=tensor.dtype).to(tensor.device)
        radius = 0.1 * torch.rand((copies,), generator=generator, dtype=tensor.dtype).to(tensor.device)
        norm = direction.flatten(1).norm(dim=1).clamp_min(_TINY)
        factor = (radius / norm).view(-1, *([1] * tensor.ndim))
        start[name] = direction * factor * budgets[name]
    return start


def _ascent_step(
    delta: Parameters, gradients: Parameters, budgets: Parameters, relative_step: float, *, per_sample: bool
) -> Parameters:
    """Move each tensor along its normalized gradient by ``relative_step`` of its budget, then project."""
    updated = {}
    with torch.no_grad():
        for name, tensor in delta.items():
            gradient = gradients[name]
            budget = budgets[name]
            if per_sample:
                gradient_norm = gradient.flatten(1).norm(dim=1).view(-1, *([1] * (tensor.ndim - 1)))
            else:
                gradient_norm = gradient.norm()
            moved = tensor + relative_step * budget * gradient / gradient_norm.clamp_min(_TINY)
            if per_sample:
                moved_norm = moved.flatten(1).norm(dim=1).view(-1, *([1] * (tensor.ndim - 1)))
            else:
                moved_norm = moved.norm()
            factor = torch.where(moved_norm > budget, budget / moved_norm.clamp_min(_TINY), torch.ones_like(moved_norm))
            updated[name] = moved * factor
    return updated


def _loss_gradient(
    model: nn.Module, parameters: Parameters, delta: Parameters, x: Tensor, labels: Tensor, batch_size: int
) -> tuple[Parameters, float]:
    """Return the gradient of the mean cross-entropy with respect to ``delta``, and the accuracy at ``delta``."""
    variables = {name: tensor.detach().requires_grad_(True) for name, tensor in delta.items()}
    totals = {name: torch.zeros_like(tensor) for name, tensor in delta.items()}
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        batch, target = x[start : start + batch_size], labels[start : start + batch_size]
        shifted = {name: parameters[name] + variables[name] for name in parameters}
        outputs = functional_call(model, shifted, (batch,))
        loss = F.cross_entropy(outputs, target, reduction="sum") / x.shape[0]
        for name, gradient in zip(variables, torch.autograd.grad(loss, list(variables.values()))):
            totals[name] += gradient
        correct += int((outputs.argmax(dim=1) == target).sum())
    return totals, correct / x.shape[0]
