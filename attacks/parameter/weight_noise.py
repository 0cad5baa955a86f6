"""Gaussian weight noise: accuracy curves, noise sharpness and per-sample weight-noise radii.

Two noise models, both relative to the weights so that sigma is unitless:

* ``"magnitude"``: every weight w_i gets noise N(0, (sigma |w_i|)^2), the magnitude-aware
  perturbation of Jiang et al., "Fantastic Generalization Measures and Where to Find Them"
  (ICLR 2020), without their additive floor.
* ``"layer"``: every element of parameter tensor W_l gets noise N(0, (sigma ||W_l||_F / sqrt(n_l))^2),
  with n_l the number of elements, so that E ||dW_l||_F^2 = sigma^2 ||W_l||_F^2 as in the AWP
  convention ||dW_l|| <= gamma ||W_l||.

Every parameter tensor is perturbed (weights, biases, normalization scales); buffers are not.
Draw ``d`` uses the same standard-normal direction z_d at every sigma (common random numbers),
seeded with ``derive_seed(seed, "weight-noise", d)``, so curves and searches are deterministic
and accuracy changes with sigma only, not with fresh noise.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from robusteval.modes import set_eval_mode

from robusteval.seeding import derive_seed

from ._functional import (
    Parameters,
    check_count,
    check_inputs,
    check_positive,
    check_scales,
    parameter_tensors,
    per_sample_logits,
    predictions,
    samples_per_chunk,
)
from .state import preserved_state

logger = logging.getLogger(__name__)

NoiseMode = Literal["magnitude", "layer"]
NOISE_MODES: tuple[NoiseMode, ...] = ("magnitude", "layer")


@dataclass(frozen=True)
class WeightNoiseCurve:
    """Accuracy under relative Gaussian weight noise, one entry per scale.

    Attributes:
        mode: The noise model, ``"magnitude"`` or ``"layer"``.
        scales: The noise scales sigma.
        accuracy: Mean accuracy over the draws at each scale.
        accuracy_std: Standard deviation of the accuracy over the draws (ddof 0) at each scale.
        draws: Number of noise draws per scale.
        flip_probability: ``(N, S)`` share of draws at which the prediction of sample ``n``
            differs from its clean prediction, at scale ``s``.
    """

    mode: NoiseMode
    scales: tuple[float, ...]
    accuracy: tuple[float, ...]
    accuracy_std: tuple[float, ...]
    draws: int
    flip_probability: Tensor

    def sample_flip_probability(self, index: int) -> dict[str, float]:
        """Return sample ``index``'s flip probability by scale, keyed by the scale written with ``:g``."""
        row = self.flip_probability[index].tolist()
        return {f"{scale:g}": float(value) for scale, value in zip(self.scales, row)}


def noise_unit(parameters: Parameters, mode: NoiseMode) -> Parameters:
    """Return the per-element noise standard deviation at sigma = 1 for every parameter tensor."""
    if mode == "magnitude":
        return {name: tensor.abs() for name, tensor in parameters.items()}
    if mode == "layer":
        return {name: tensor.norm() / math.sqrt(tensor.numel()) for name, tensor in parameters.items()}
    raise ValueError(f"Expected mode 'magnitude' or 'layer', but got {mode!r}.")


def noise_direction(parameters: Parameters, seed: int, draw: int) -> Parameters:
    """Return the standard-normal direction z_d of draw ``draw``, drawn on the CPU for reproducibility."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "weight-noise", draw))
    direction = {}
    for name, tensor in parameters.items():
        sample = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        direction[name] = sample.to(tensor.device)
    return direction


def perturbed(parameters: Parameters, unit: Parameters, direction: Parameters, sigma: float) -> Parameters:
    """Return the parameters W + sigma * unit * z."""
    return {name: tensor + sigma * unit[name] * direction[name] for name, tensor in parameters.items()}


def weight_noise_curve(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    mode: NoiseMode,
    scales: Sequence[float],
    draws: int,
    seed: int,
    batch_size: int = 512,
) -> WeightNoiseCurve:
    """Measure accuracy and per-sample flip probability under relative Gaussian weight noise.

    The model runs in eval mode and is restored bit for bit afterwards.

    Args:
        model: Classifier returning logits ``(N, K)``.
        x: Inputs ``(N, ...)``.
        y: Labels ``(N,)``, int64.
        mode: Noise model (see the module docstring).
        scales: Noise scales sigma >= 0.
        draws: Noise draws per scale; draw ``d`` uses the same direction at every scale.
        seed: Seed of the noise directions.
        batch_size: Inputs per forward pass.

    Returns:
        The curve, with ``flip_probability`` of shape ``(N, len(scales))``.
    """
    check_inputs(x, y)
    _check_mode(mode)
    sigmas = check_scales("scales", scales)
    check_count("draws", draws)
    check_count("batch_size", batch_size)

    with preserved_state(model):
        set_eval_mode(model)
        parameters = parameter_tensors(model)
        unit = noise_unit(parameters, mode)
        clean = predictions(model, parameters, x, batch_size)
        correct = torch.zeros(draws, len(sigmas), dtype=torch.float64)
        flips = torch.zeros(x.shape[0], len(sigmas), dtype=torch.float64)
        labels = y.to(clean.device)
        for draw in range(draws):
            direction = noise_direction(parameters, seed, draw)
            for index, sigma in enumerate(sigmas):
                predicted = predictions(model, perturbed(parameters, unit, direction, sigma), x, batch_size)
                correct[draw, index] = (predicted == labels).double().mean().item()
                flips[:, index] += (predicted != clean).double().cpu()

    logger.info("weight noise (%s): %d scales x %d draws on %d samples", mode, len(sigmas), draws, x.shape[0])
    return WeightNoiseCurve(
        mode=mode,
        scales=sigmas,
        accuracy=tuple(correct.mean(dim=0).tolist()),
        accuracy_std=tuple(correct.std(dim=0, correction=0).tolist()),
        draws=draws,
        flip_probability=flips / draws,
    )


def noise_sharpness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    mode: NoiseMode,
    draws: int,
    seed: int,
    drop: float = 0.1,
    tolerance: float = 0.01,
    initial_sigma: float = 0.01,
    max_sigma: float = 100.0,
    batch_size: int = 512,
) -> float:
    """Find the noise scale sigma at which mean accuracy falls by ``drop`` below clean accuracy.

    This is the sharpness convention of the generalization-measure literature (Jiang et al.,
    ICLR 2020: the largest sigma keeping the accuracy drop within 0.1). The search doubles sigma
    from ``initial_sigma`` until mean accuracy over the ``draws`` fixed directions is at most
    ``clean - drop``, then bisects until the bracket is narrower than ``tolerance`` times its
    upper end, and returns that upper end.

    Args:
        model: Classifier returning logits ``(N, K)``.
        x: Inputs ``(N, ...)``.
        y: Labels ``(N,)``, int64.
        mode: Noise model (see the module docstring).
        draws: Noise draws per evaluated sigma.
        seed: Seed of the noise directions.
        drop: Accuracy drop that defines the sharpness, in (0, 1].
        tolerance: Relative width of the final bracket.
        initial_sigma: First sigma of the doubling search.
        max_sigma: Largest sigma tried; beyond it the result is ``inf``.
        batch_size: Inputs per forward pass.

    Returns:
        The sigma, or ``math.inf`` (with a warning) when accuracy never falls by ``drop`` up to
        ``max_sigma`` or cannot fall that far because clean accuracy is below ``drop``.
    """
    check_inputs(x, y)
    _check_mode(mode)
    check_count("draws", draws)
    check_count("batch_size", batch_size)
    for name, value in (("tolerance", tolerance), ("initial_sigma", initial_sigma), ("max_sigma", max_sigma)):
        check_positive(name, value)
    if not 0.0 < drop <= 1.0:
        raise ValueError(f"Expected drop in (0, 1], but got {drop!r}.")

    with preserved_state(model):
        set_eval_mode(model)
        parameters = parameter_tensors(model)
        unit = noise_unit(parameters, mode)
        directions = [noise_direction(parameters, seed, draw) for draw in range(draws)]
        labels = y.to(next(iter(parameters.values())).device)

        def mean_accuracy(sigma: float) -> float:
            total = 0.0
            for direction in directions:
                predicted = predictions(model, perturbed(parameters, unit, direction, sigma), x, batch_size)
                total += (predicted == labels).double().mean().item()
            return total / draws

        target = mean_accuracy(0.0) - drop
        if target < 0.0:
            warnings.warn(
                f"Noise sharpness is undefined: clean accuracy {target + drop:.3f} is below the drop {drop}. "
                "Returning inf.",
                stacklevel=2,
            )
            return math.inf

        lower, upper = 0.0, initial_sigma
        while mean_accuracy(upper) > target:
            lower, upper = upper, 2.0 * upper
            if upper > max_sigma:
                warnings.warn(
                    f"Accuracy did not fall by {drop} for any weight-noise sigma up to {max_sigma}; returning inf.",
                    stacklevel=2,
                )
                return math.inf
        while upper - lower > tolerance * upper:
            middle = 0.5 * (lower + upper)
            if mean_accuracy(middle) <= target:
                upper = middle
            else:
                lower = middle
    return upper


def weight_noise_radius(
    model: nn.Module,
    x: Tensor,
    *,
    mode: NoiseMode,
    draws: int,
    seed: int,
    threshold: float = 0.5,
    initial_sigma: float = 0.01,
    max_sigma: float = 100.0,
    bisection_steps: int = 10,
    batch_size: int = 512,
) -> Tensor:
    """Find, per sample, the noise scale sigma at which its flip probability reaches ``threshold``.

    The flip probability of sample n at sigma is the share of the ``draws`` fixed directions
    z_d for which the prediction at W + sigma * unit(W) * z_d differs from the clean prediction
    (``unit`` as in the module docstring). The search evaluates every sample on the shared grid
    ``initial_sigma * 2**i`` up to ``max_sigma`` to bracket its first crossing, then bisects each
    bracket ``bisection_steps`` times with a separate sigma per sample (``torch.vmap`` over
    per-sample parameter copies). The radius is the upper end of the final bracket.

    NOTE: the flip probability need not grow monotonically with sigma, so bisection finds a
    crossing inside the first bracketing grid interval, not always the smallest crossing.

    Args:
        model: Classifier returning logits ``(N, K)``.
        x: Inputs ``(N, ...)``; no labels are needed, a flip is a change of prediction.
        mode: Noise model (see the module docstring).
        draws: Number of noise directions.
        seed: Seed of the noise directions (the same as for :func:`weight_noise_curve`).
        threshold: Flip probability that defines the radius, in (0, 1].
        initial_sigma: First grid point.
        max_sigma: Last grid point; samples that never reach ``threshold`` get ``inf``.
        bisection_steps: Halvings of each bracket.
        batch_size: Inputs per forward pass on the shared grid.

    Returns:
        Radii ``(N,)``, float64, ``inf`` where the threshold is not reached up to ``max_sigma``.
    """
    check_inputs(x)
    _check_mode(mode)
    check_count("draws", draws)
    check_count("batch_size", batch_size)
    check_positive("initial_sigma", initial_sigma)
    check_positive("max_sigma", max_sigma)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"Expected threshold in (0, 1], but got {threshold!r}.")
    if not isinstance(bisection_steps, int) or bisection_steps < 0:
        raise ValueError(f"Expected bisection_steps to be an integer >= 0, but got {bisection_steps!r}.")

    with preserved_state(model):
        set_eval_mode(model)
        parameters = parameter_tensors(model)
        unit = noise_unit(parameters, mode)
        directions = [noise_direction(parameters, seed, draw) for draw in range(draws)]
        clean = predictions(model, parameters, x, batch_size)
        lower, upper = _bracket_on_grid(
            model, parameters, unit, directions, x, clean, threshold, initial_sigma, max_sigma, batch_size
        )

        active = torch.isfinite(upper).nonzero().squeeze(1)
        for _ in range(bisection_steps if active.numel() else 0):
            middle = 0.5 * (lower[active] + upper[active])
            probability = _flip_probability_per_sample(
                model, parameters, unit, directions, x[active], clean[active], middle
            )
            reached = probability >= threshold
            upper[active[reached]] = middle[reached]
            lower[active[~reached]] = middle[~reached]
    return upper


def _bracket_on_grid(
    model: nn.Module,
    parameters: Parameters,
    unit: Parameters,
    directions: list[Parameters],
    x: Tensor,
    clean: Tensor,
    threshold: float,
    initial_sigma: float,
    max_sigma: float,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """Return ``(lower, upper)`` ``(N,)``: the last grid sigma below ``threshold`` and the first at or above it."""
    lower = torch.zeros(x.shape[0], dtype=torch.float64)
    upper = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    sigma = initial_sigma
    while sigma <= max_sigma and torch.isinf(upper).any():
        flips = torch.zeros(x.shape[0], dtype=torch.float64)
        for direction in directions:
            predicted = predictions(model, perturbed(parameters, unit, direction, sigma), x, batch_size)
            flips += (predicted != clean).double().cpu()
        reached = (flips / len(directions) >= threshold) & torch.isinf(upper)
        upper[reached] = sigma
        lower[torch.isinf(upper)] = sigma
        sigma *= 2.0
    return lower, upper


def _flip_probability_per_sample(
    model: nn.Module,
    parameters: Parameters,
    unit: Parameters,
    directions: list[Parameters],
    x: Tensor,
    clean: Tensor,
    sigma: Tensor,
) -> Tensor:
    """Return the flip probability ``(M,)`` of each sample at its own sigma ``(M,)``."""
    flips = torch.zeros(x.shape[0], dtype=torch.float64)
    chunk = samples_per_chunk(parameters)
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            stop = start + chunk
            scale = sigma[start:stop]
            for direction in directions:
                per_sample = {}
                for name, tensor in parameters.items():
                    step = (unit[name] * direction[name]).unsqueeze(0)
                    factor = scale.to(tensor).view(-1, *([1] * tensor.ndim))
                    per_sample[name] = tensor.unsqueeze(0) + factor * step  # (M, *shape)
                predicted = per_sample_logits(model, per_sample, x[start:stop]).argmax(dim=1)
                flips[start:stop] += (predicted != clean[start:stop]).double().cpu()
    return flips / len(directions)


def _check_mode(mode: str) -> None:
    if mode not in NOISE_MODES:
        raise ValueError(f"Expected mode 'magnitude' or 'layer', but got {mode!r}.")
