"""Tangent-sensitivity bounds and generalization estimators for ReLU networks."""

from __future__ import annotations

from .active_count_moments import GaussianCountModel, fit_gaussian_count_model, gaussian_absolute_moment
from .compute import compute_bounds
from .generalization import generalization_estimates
from .relu_chain import ReluChain, evaluate_chain, extract_relu_chain
from .spectral import mixed_derivative_matrix, spectral_norm, spectral_norms
from .tangent_bounds import (
    active_count_bound,
    layerwise_norm_sensitivity,
    total_count_bound,
    width_bound,
)

__all__ = [
    "GaussianCountModel",
    "ReluChain",
    "active_count_bound",
    "compute_bounds",
    "evaluate_chain",
    "extract_relu_chain",
    "fit_gaussian_count_model",
    "gaussian_absolute_moment",
    "generalization_estimates",
    "layerwise_norm_sensitivity",
    "mixed_derivative_matrix",
    "spectral_norm",
    "spectral_norms",
    "total_count_bound",
    "width_bound",
]
