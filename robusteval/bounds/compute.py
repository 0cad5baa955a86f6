"""The ``bounds`` section of the results: every tangent-sensitivity bound, checked on the data."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .active_count_moments import fit_gaussian_count_model
from .relu_chain import extract_relu_chain, relu_chain_from_graph
from .spectral import spectral_norms
from .tangent_bounds import (
    active_count_bound,
    layerwise_norm_sensitivity,
    total_count_bound,
    total_count_constant,
    total_count_exponent,
    width_bound,
)

logger = logging.getLogger(__name__)

# Relative slack when checking "observed <= bound": tangent sensitivity computed in float32
# may exceed a bound that is attained exactly by rounding error alone.
RELATIVE_TOLERANCE = 1e-5

MOMENT_ORDERS = (1.0, 2.0)
# Samples of x on which a chain recovered from a graph must reproduce the model's logits.
GRAPH_PROBE_SAMPLES = 8

_CHAIN_ASSUMPTIONS = "Fully connected ReLU chain (Linear layers with ReLU between them). "


def _not_applicable(reason: str, assumptions: str) -> dict[str, Any]:
    return {
        "value": None,
        "held_on_all_samples": None,
        "tightness": None,
        "applies": False,
        "reason": reason,
        "assumptions": assumptions,
    }


def _holds(observed: np.ndarray, bound: np.ndarray | float) -> np.ndarray:
    return observed <= np.asarray(bound) * (1 + RELATIVE_TOLERANCE)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def compute_bounds(
    model: nn.Module,
    *,
    tangent_sensitivity: Tensor,
    active_units: Tensor | None,
    spectral: bool = False,
    x: Tensor | None = None,
) -> dict[str, Any]:
    """Evaluate the tangent-sensitivity bounds and check them against the observed values.

    Args:
        model: The evaluated network. The bounds apply to fully connected ReLU chains only; for
            other networks each bound has ``applies=False`` and the reason.
        tangent_sensitivity: ``(N, K)`` observed TS_k at each evaluated sample.
        active_units: ``(N, L-1)`` active ReLU units per hidden layer at each sample, or
            ``None`` to skip the data-dependent bounds.
        spectral: Also compute the spectral norm of T_k at the predicted class k (needs ``x``).
        x: ``(N, ...)`` the evaluated inputs, for the spectral norm and to recognize a chain
            saved as TorchScript or torch.export from its graph.

    Returns:
        A JSON-ready dict. Each bound (``width``, ``active_count``, ``total_active_count``,
        optionally ``spectral_norm``) has an entry with ``value``, ``held_on_all_samples``,
        ``tightness`` (bound divided by the observed value it bounds), ``applies`` and
        ``assumptions``. Beside them are ``layerwise_norm_sensitivity`` and
        ``gaussian_active_count``, the Gaussian model of the total active count with ``mu``,
        ``sigma`` and ``moments``. A bound is counted as held on a sample when
        observed <= bound * (1 + 1e-5).
    """
    observed = tangent_sensitivity.detach().to(torch.float64).cpu().numpy()
    if observed.ndim != 2 or observed.shape[0] == 0:
        raise ValueError(
            f"Expected tangent sensitivity of shape (N, K) with N >= 1, but got shape {tuple(observed.shape)}."
        )
    if spectral and x is None:
        raise ValueError("Expected inputs x together with spectral=True, but got x=None. Pass the evaluated inputs.")
    per_sample_max = observed.max(axis=1)  # (N,) max over outputs k
    section: dict[str, Any] = {"relative_tolerance": RELATIVE_TOLERANCE}

    chain, reason = extract_relu_chain(model)
    if chain is None and x is not None:
        # TorchScript Sequentials and torch.export programs: read the chain from the graph.
        recovered = relu_chain_from_graph(model, x[:GRAPH_PROBE_SAMPLES])
        if recovered is not None:
            chain, reason = recovered, ""
        elif isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule)):
            reason = (
                "The bounds need a fully connected chain of Linear layers alternating with ReLU; robusteval "
                "could not recover one from this model's graph."
            )
    if chain is None:
        section["applies"] = False
        section["reason"] = reason
        section["layerwise_norm_sensitivity"] = None
        for name in ("width", "active_count", "total_active_count"):
            section[name] = _not_applicable(reason, _CHAIN_ASSUMPTIONS)
        section["gaussian_active_count"] = None
    else:
        section["applies"] = True
        section["layerwise_norm_sensitivity"] = layerwise_norm_sensitivity(chain)
        section["width"] = _width_entry(chain, per_sample_max)
        active = None if active_units is None else active_units.detach().cpu().numpy().astype(np.float64)
        if active is not None and active.shape != (observed.shape[0], chain.depth - 1):
            raise ValueError(
                f"Expected active units of shape ({observed.shape[0]}, {chain.depth - 1}) "
                f"(samples, hidden layers), but got {tuple(active.shape)}."
            )
        section.update(_active_entries(chain, per_sample_max, active))

    if spectral:
        assert x is not None
        section["spectral_norm"] = _spectral_entry(model, x, observed)
    return section


def _width_entry(chain: Any, per_sample_max: np.ndarray) -> dict[str, Any]:
    value = width_bound(chain)
    holds = _holds(per_sample_max, value)
    return {
        "value": value,
        "observed_max": float(per_sample_max.max()),
        "held_on_all_samples": bool(holds.all()),
        "violations": int((~holds).sum()),
        "tightness": _ratio(value, float(per_sample_max.max())),
        "applies": True,
        "assumptions": _CHAIN_ASSUMPTIONS
        + "Holds for every input. Input-free: uses the largest absolute weight m_l of each layer and the layer widths; "
        "equality when all weights equal m_l > 0, biases are zero and inputs are positive.",
    }


def _active_entries(chain: Any, per_sample_max: np.ndarray, active: np.ndarray | None) -> dict[str, Any]:
    assumptions = _CHAIN_ASSUMPTIONS + "Data-dependent: uses the active units per hidden layer at each sample."
    if active is None:
        reason = "No active unit counts were given."
        return {
            "active_count": _not_applicable(reason, assumptions),
            "total_active_count": _not_applicable(reason, assumptions),
            "gaussian_active_count": None,
        }
    if chain.depth < 2:
        reason = "The network has no hidden layer, so it has no active units."
        return {
            "active_count": _not_applicable(reason, assumptions),
            "total_active_count": _not_applicable(reason, assumptions),
            "gaussian_active_count": None,
        }

    bound = active_count_bound(chain, active)  # (N,)
    holds = _holds(per_sample_max, bound)
    active_entry = {
        "value": float(bound.max()),
        "per_sample_max": float(bound.max()),
        "per_sample_mean": float(bound.mean()),
        "observed_max": float(per_sample_max.max()),
        "held_on_all_samples": bool(holds.all()),
        "violations": int((~holds).sum()),
        "tightness": _ratio(float(bound.max()), float(per_sample_max.max())),
        "per_sample_tightness_median": float(np.median(bound / np.maximum(per_sample_max, np.finfo(float).tiny))),
        "applies": True,
        "assumptions": assumptions + " Replaces the widths of the width bound by active counts; holds "
        "on each sample's activation region.",
    }

    totals = active.sum(axis=1)  # (N,) total active count S
    model_fit = fit_gaussian_count_model(totals)
    exponent = total_count_exponent(chain.depth)
    constant = total_count_constant(chain)
    per_sample_total = total_count_bound(chain, totals)
    total_holds = _holds(per_sample_max, per_sample_total)
    expected_bound = constant * model_fit.absolute_moment(exponent)
    observed_mean = float(per_sample_max.mean())
    total_entry = {
        "value": expected_bound,
        "constant": constant,
        "exponent": exponent,
        "per_sample_max": float(per_sample_total.max()),
        "empirical_mean": float(per_sample_total.mean()),
        "observed_mean": observed_mean,
        "held_on_all_samples": bool(total_holds.all()),
        "violations": int((~total_holds).sum()),
        "tightness": _ratio(expected_bound, observed_mean),
        "applies": True,
        "assumptions": assumptions + f" Per sample TS_k <= C S^{exponent:g} with S the total active count; "
        "value is C E|S|^v under the Gaussian model of S, an estimate of the mean bound over the data "
        "distribution that is exact only if S is Gaussian.",
    }

    orders = sorted({*MOMENT_ORDERS, exponent})
    gaussian = {
        "mu": model_fit.mu,
        "sigma": model_fit.sigma,
        "samples": model_fit.samples,
        "moments": {f"{order:g}": model_fit.absolute_moment(order) for order in orders},
        "empirical_moments": {f"{order:g}": float(np.mean(np.abs(totals) ** order)) for order in orders},
    }
    return {"active_count": active_entry, "total_active_count": total_entry, "gaussian_active_count": gaussian}


def _spectral_entry(model: nn.Module, x: Tensor, observed: np.ndarray) -> dict[str, Any]:
    with torch.no_grad():
        predicted = model(x).argmax(dim=1).cpu()
    norms = spectral_norms(model, x, predicted).numpy()  # (N,)
    frobenius = observed[np.arange(len(norms)), predicted.numpy()]
    holds = _holds(norms, frobenius)
    return {
        "value": float(norms.max()),
        "per_sample_max": float(norms.max()),
        "per_sample_mean": float(norms.mean()),
        "held_on_all_samples": bool(holds.all()),
        "violations": int((~holds).sum()),
        "tightness": _ratio(float(frobenius.max()), float(norms.max())),
        "applies": True,
        "assumptions": "Any network torch.func can differentiate twice. ||T_k||_2 at the predicted class "
        "by power iteration (a lower estimate that converges to the spectral norm); it must not exceed "
        "the tangent sensitivity TS_k = ||T_k||_F, and tightness is max TS_k / max ||T_k||_2.",
    }
