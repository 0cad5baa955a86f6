"""Spectral norm of the mixed derivative T_k(x) = d/dx grad_theta f_k(x), a ``(P, d)`` matrix.

TS_k is the Frobenius norm of T_k; the spectral norm ||T_k||_2 <= TS_k is the tighter constant
in the tangent-shift bound ||grad_theta f_k(x + delta) - grad_theta f_k(x)|| <= ||T_k||_2 ||delta||_2,
which holds while x + delta stays in the activation region of x. Power iteration on T_k^T T_k
needs only T_k v (a forward-mode product through the parameter gradient) and T_k^T u (the input
gradient of <u, grad_theta f_k>), so T_k is never formed. Works for any network that
``torch.func`` can differentiate twice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp


def _parameter_gradient_function(model: nn.Module, output: int) -> Callable[[Tensor], Tensor]:
    """Return x -> grad_theta f_output(x) flattened to ``(P,)``, for one unflattened sample x."""
    parameters = {name: value.detach() for name, value in model.named_parameters()}

    def logit(params: dict[str, Tensor], sample: Tensor) -> Tensor:
        return functional_call(model, params, (sample.unsqueeze(0),))[0, output]

    def tangent_vector(sample: Tensor) -> Tensor:
        gradients = grad(logit)(parameters, sample)
        return torch.cat([gradients[name].reshape(-1) for name in parameters])

    return tangent_vector


def mixed_derivative_matrix(model: nn.Module, sample: Tensor, output: int) -> Tensor:
    """Return the explicit ``(P, d)`` matrix T_output at one sample (for checks on small networks)."""
    function = _parameter_gradient_function(model, output)
    flat = sample.reshape(-1)
    matrix = torch.func.jacfwd(lambda z: function(z.reshape(sample.shape)))(flat)
    return matrix


def spectral_norm(
    model: nn.Module, sample: Tensor, output: int, *, iterations: int = 100, tolerance: float = 1e-6, seed: int = 0
) -> tuple[float, int]:
    """Estimate ||T_output(sample)||_2 by power iteration with jvp and vjp products.

    Args:
        model: Network in eval mode.
        sample: One input without batch dimension, for example ``(d,)`` or ``(C, H, W)``.
        output: Index k of the output neuron.
        iterations: Maximum number of power-iteration steps.
        tolerance: Stop when the estimate changes by less than this relative amount.
        seed: Seed of the random start vector.

    Returns:
        ``(estimate, steps)``. Power iteration approaches the largest singular value from below.
    """
    function = _parameter_gradient_function(model, output)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    direction = torch.randn(sample.shape, generator=generator, dtype=sample.dtype).to(sample.device)
    direction = direction / direction.norm()
    pullback = vjp(function, sample)[1]

    estimate = 0.0
    steps = 0
    for steps in range(1, iterations + 1):
        image = jvp(function, (sample,), (direction,))[1]  # T v, shape (P,)
        (back,) = pullback(image)  # T^T T v, shape of the sample
        norm = float(back.norm())
        if norm == 0.0:
            return 0.0, steps
        previous, estimate = estimate, norm**0.5
        direction = back / norm
        if abs(estimate - previous) <= tolerance * estimate:
            break
    return estimate, steps


def spectral_norms(model: nn.Module, x: Tensor, outputs: Tensor, **options: float | int) -> Tensor:
    """Return ``(N,)`` float64 ||T_k(x_n)||_2 with k = ``outputs[n]`` for each row of ``x``."""
    values = [
        spectral_norm(model, x[index], int(outputs[index]), **options)[0]  # type: ignore[arg-type]
        for index in range(x.shape[0])
    ]
    return torch.tensor(values, dtype=torch.float64)
