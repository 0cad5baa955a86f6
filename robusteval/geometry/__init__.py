"""Per-sample local linear analysis of ReLU networks: activation patterns, tangent sensitivity,
region and decision distances, certified radii."""

from __future__ import annotations

from .preactivations import hidden_preactivations, preactivation_runner

__all__ = ["hidden_preactivations", "preactivation_runner"]
