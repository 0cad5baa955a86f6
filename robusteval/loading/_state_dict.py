"""Turning a state_dict or a checkpoint dict into a network built from an architecture spec."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..architectures import build_architecture
from ..errors import ModelLoadError

# Keys under which common training scripts store the weights inside a checkpoint dict.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes added by torch.nn.DataParallel / DistributedDataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_LISTED = 5


def is_state_dict(value: object) -> bool:
    """Return whether ``value`` is a non-empty mapping of string keys to tensors."""
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(key, str) and isinstance(item, torch.Tensor) for key, item in value.items())
    )


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a ``module.`` or ``_orig_mod.`` prefix shared by every key, repeatedly."""
    result = dict(state_dict)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if result and all(key.startswith(prefix) for key in result):
                result = {key[len(prefix):]: value for key, value in result.items()}
                stripped = True
    return result


def describe_checkpoint(value: object) -> str:
    """Describe a loaded object that is not a usable model, for an error message."""
    if isinstance(value, Mapping):
        keys = [repr(key) for key in list(value)[:8]]
        more = ", ..." if len(value) > 8 else ""
        return f"a dict with keys [{', '.join(keys)}{more}]"
    if isinstance(value, torch.Tensor):
        return f"a single tensor of shape {tuple(value.shape)}"
    return f"an object of type {type(value).__name__}"


def build_from_state_dict(state_dict: Mapping[str, torch.Tensor], arch: str | None, source: str) -> nn.Module:
    """Build the network ``arch`` names and load ``state_dict`` into it strictly.

    Raises:
        ModelLoadError: ``arch`` is missing, or the keys or shapes do not match the network.
        ValueError: ``arch`` is not a valid architecture spec.
    """
    weights = strip_wrapper_prefixes(state_dict)
    suggestion = suggest_mlp_spec(weights)
    if arch is None:
        example = suggestion or "mlp:64-128-10"
        raise ModelLoadError(
            f"{source} contains a state_dict ({len(weights)} tensors, for example "
            f"{_first_entry(weights)}), which stores weights but not the network that uses them. "
            f"Pass the architecture with --arch, for example --arch {example} "
            f"(in Python: load_model(path, arch={example!r})), or save the model with "
            "torch.jit.save or torch.export.save instead."
        )

    network = build_architecture(arch)
    differences = _state_dict_differences(network.state_dict(), weights)
    if differences:
        hint = f" The file's weight shapes fit --arch {suggestion}." if suggestion and suggestion != arch else ""
        raise ModelLoadError(
            f"The state_dict in {source} does not fit architecture {arch!r}: {'; '.join(differences)}.{hint} "
            "Pass the --arch the model was trained with."
        )
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise ModelLoadError(f"Could not load the state_dict in {source} into architecture {arch!r}: {error}") from None
    return network


def _first_entry(weights: Mapping[str, torch.Tensor]) -> str:
    key, value = next(iter(weights.items()))
    return f"{key!r} of shape {tuple(value.shape)}"


def _state_dict_differences(expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor]) -> list[str]:
    missing = [key for key in expected if key not in actual]
    unexpected = [key for key in actual if key not in expected]
    mismatched = [
        f"{key!r} is {tuple(actual[key].shape)} in the file but {tuple(expected[key].shape)} in the architecture"
        for key in expected
        if key in actual and actual[key].shape != expected[key].shape
    ]
    differences = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            listed = ", ".join(items[:_LISTED] if label == "shape mismatches" else map(repr, items[:_LISTED]))
            more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
            differences.append(f"{label}: {listed}{more}")
    return differences


def suggest_mlp_spec(weights: Mapping[str, Any]) -> str | None:
    """Return the ``mlp:`` spec whose network has exactly these keys and shapes, or ``None``."""
    matrices = [value for key, value in weights.items() if key.endswith(".weight")]
    if not matrices or not all(isinstance(value, torch.Tensor) and value.ndim == 2 for value in matrices):
        return None
    widths = [matrices[0].shape[1]] + [matrix.shape[0] for matrix in matrices]
    spec = "mlp:" + "-".join(str(width) for width in widths)
    try:
        with torch.device("meta"):
            candidate = build_architecture(spec).state_dict()
    except ValueError:
        return None
    if _state_dict_differences(candidate, weights):
        return None
    return spec
