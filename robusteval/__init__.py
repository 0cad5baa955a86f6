"""robusteval: how robust a trained PyTorch classifier is, and why.

The public functions are imported lazily, so that ``import robusteval`` stays cheap and the
attack backends load only when an attack runs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "robusteval.loading",
    "LoadedModel": "robusteval.loading",
    "load_data": "robusteval.data",
    "Dataset": "robusteval.data",
    "tangent_sensitivity": "robusteval.geometry",
    "local_linear_analysis": "robusteval.geometry",
    "GeometryResult": "robusteval.geometry",
    "evaluate": "robusteval.pipeline",
    "EvaluationConfig": "robusteval.pipeline",
    "Results": "robusteval.results",
    "load_results": "robusteval.results",
    "save_results": "robusteval.results",
    "Bounds": "robusteval._types",
    "RobustEvalError": "robusteval.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robusteval' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
