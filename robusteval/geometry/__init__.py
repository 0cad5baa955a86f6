"""Per-sample local linear analysis of ReLU networks: activation patterns, tangent sensitivity,
region and decision distances, certified radii."""

from __future__ import annotations

from .analysis import GeometryResult, local_linear_analysis
from .chain import LinearLayer, ReluChain, recover_chain
from .preactivations import hidden_preactivations, preactivation_runner
from .tangent_sensitivity import TangentSensitivityEstimate, estimate_tangent_sensitivity, tangent_sensitivity

__all__ = [
    "GeometryResult",
    "LinearLayer",
    "ReluChain",
    "TangentSensitivityEstimate",
    "estimate_tangent_sensitivity",
    "hidden_preactivations",
    "local_linear_analysis",
    "preactivation_runner",
    "recover_chain",
    "tangent_sensitivity",
]
