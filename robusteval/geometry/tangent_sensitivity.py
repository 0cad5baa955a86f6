"""Tangent sensitivity ``TS_k(x) = ||d/dx grad_theta f_k(x)||_F`` with the cheapest exact method available.

The tangent vector ``grad_theta f_k(x)`` is the parameter gradient of output ``k``; its input
derivative is a ``(P, d)`` matrix whose Frobenius norm is the tangent sensitivity (B. Daroczy,
arXiv 2006.06780). Methods:

* ``"closed_form"``: fully connected ReLU chains, see :mod:`robusteval.geometry.closed_form`;
* ``"exact"``: forward-over-reverse products along all ``d`` input directions;
* ``"hutchinson"``: an unbiased estimate of the squared norm from ``probes`` Gaussian
  directions, with a standard error;
* ``"auto"``: the closed form when the model is a chain that reproduces its logits on ``x``,
  otherwise ``"exact"`` when ``d <= 4 * probes`` (at most four times the cost of the estimate),
  otherwise ``"hutchinson"``.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from .chain import ReluChain, recover_chain
from .closed_form import chain_tangent_sensitivity
from .generic import generic_tangent_sensitivity

Method = Literal["auto", "closed_form", "exact", "hutchinson"]
_METHODS = ("auto", "closed_form", "exact", "hutchinson")
_EXACT_COST_FACTOR = 4


class TangentSensitivityEstimate(NamedTuple):
    """Tangent sensitivity ``(N, K)``, its standard error (Hutchinson only) and how it was computed."""

    values: Tensor
    stderr: Tensor | None
    method: Literal["closed_form", "exact", "hutchinson"]
    probes: int | None


def tangent_sensitivity(
    model: nn.Module,
    x: Tensor,
    *,
    method: Method = "auto",
    probes: int = 64,
    generator: torch.Generator | None = None,
    memory_budget: int = 2**31,
) -> Tensor:
    """Return the tangent sensitivity ``TS_k(x)`` of every output ``k`` at every sample, ``(N, K)``.

    Args:
        model: a classifier in eval mode returning logits ``(N, K)``.
        x: inputs ``(N, ...)`` in the dtype the model computes in.
        method: ``"auto"``, ``"closed_form"``, ``"exact"`` or ``"hutchinson"`` (module docstring).
        probes: Gaussian probes per sample for ``"hutchinson"``. Defaults to 64.
        generator: random source of the probes, on any device. Defaults to the global CPU generator.
        memory_budget: bytes the working set of one chunk of samples may use. Defaults to 2 GiB.

    Returns:
        Frobenius norms, not squared, ``(N, K)``. Use :func:`estimate_tangent_sensitivity` for
        the standard error and the method used.
    """
    return estimate_tangent_sensitivity(
        model, x, method=method, probes=probes, generator=generator, memory_budget=memory_budget
    ).values


def validate_arguments(method: str, probes: int, memory_budget: int) -> None:
    """Raise ``ValueError`` for an unknown method, ``probes < 2`` or a non-positive memory budget."""
    if method not in _METHODS:
        raise ValueError(f"Expected method to be one of {_METHODS}, but got {method!r}.")
    if not isinstance(probes, int) or probes < 2:
        raise ValueError(f"Expected probes to be an integer >= 2 for a standard error, but got {probes!r}.")
    if not isinstance(memory_budget, int) or memory_budget <= 0:
        raise ValueError(f"Expected a positive memory_budget in bytes, but got {memory_budget!r}.")


def estimate_tangent_sensitivity(
    model: nn.Module,
    x: Tensor,
    *,
    method: Method = "auto",
    probes: int = 64,
    generator: torch.Generator | None = None,
    memory_budget: int = 2**31,
    chain: ReluChain | None = None,
) -> TangentSensitivityEstimate:
    """Compute the tangent sensitivity as :func:`tangent_sensitivity` does, reporting how.

    ``chain`` skips the chain recovery when the caller has already recovered it.

    Raises:
        ValueError: for an unknown method, ``probes < 2`` with Hutchinson, or ``"closed_form"``
            on a model that is not a fully connected ReLU chain.
    """
    validate_arguments(method, probes, memory_budget)
    if chain is None and method in ("auto", "closed_form"):
        chain = recover_chain(model, x)
    if method == "closed_form" and chain is None:
        raise ValueError(
            "Expected a fully connected ReLU chain (Linear, ReLU, Flatten, Identity, eval-mode Dropout) for "
            "method='closed_form', but the model is not one or does not reproduce its logits as one. "
            "Use method='auto', 'exact' or 'hutchinson'."
        )
    if chain is not None and method in ("auto", "closed_form"):
        values = chain_tangent_sensitivity(chain, x, memory_budget=memory_budget)
        return TangentSensitivityEstimate(values, None, "closed_form", None)

    if method == "auto":
        input_size = math.prod(x.shape[1:])
        method = "exact" if input_size <= _EXACT_COST_FACTOR * probes else "hutchinson"
    exact = method == "exact"
    values, stderr = generic_tangent_sensitivity(
        model, x, exact=exact, probes=probes, generator=generator, memory_budget=memory_budget
    )
    return TangentSensitivityEstimate(values, stderr, "exact" if exact else "hutchinson", None if exact else probes)
