"""Turning a state_dict or a checkpoint dict into a network built from an architecture spec."""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)


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
    """Build the network ``arch`` names and load ``state_dict`` into it.

    Keys are matched by name first. When the names differ but the file's tensors match the
    network's by position (see :func:`match_by_position`), for example a plain
    ``nn.Sequential(nn.Linear, nn.ReLU, nn.Linear)`` loaded into the Flatten-first ``mlp:`` spec,
    they are loaded in order and the match is logged at INFO level.

    Raises:
        ModelLoadError: ``arch`` is missing, or the tensors match the network neither by name nor
            by position.
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
    expected = network.state_dict()
    differences = _state_dict_differences(expected, weights)
    if differences:
        renamed = match_by_position(expected, weights)
        if renamed is None:
            hint = f" The file's weight shapes fit --arch {suggestion}." if suggestion and suggestion != arch else ""
            raise ModelLoadError(
                f"The state_dict in {source} does not fit architecture {arch!r}: {'; '.join(differences)}.{hint} "
                "Pass the --arch the model was trained with."
            )
        logger.info(
            "Matched the %d tensors of the state_dict in %s to architecture %r by position because their "
            "names differ (file %s, architecture %s). Shapes and name suffixes agree in order. Layers "
            "without parameters, such as Flatten or ReLU, are not compared.",
            len(renamed), source, arch, _first_keys(weights), _first_keys(expected),
        )
        weights = renamed
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise ModelLoadError(f"Could not load the state_dict in {source} into architecture {arch!r}: {error}") from None
    return network


def match_by_position(
    expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor] | None:
    """Rename ``actual``'s tensors to ``expected``'s keys by position, or return ``None``.

    The match holds when both have the same number of tensors and, pair by pair in order, the
    same shape and the same last key component (``weight``, ``bias``, ``running_mean``, ...). Two
    networks whose parameter and buffer layers are the same and which differ only in modules
    without tensors (``Flatten``, ``ReLU``, ``Dropout``) then match, although their indices in
    an ``nn.Sequential`` differ.
    """
    if len(expected) != len(actual):
        return None
    renamed: dict[str, torch.Tensor] = {}
    for (expected_key, expected_value), (actual_key, actual_value) in zip(expected.items(), actual.items()):
        if _key_suffix(expected_key) != _key_suffix(actual_key):
            return None
        if tuple(expected_value.shape) != tuple(actual_value.shape):
            return None
        renamed[expected_key] = actual_value
    return renamed


def _key_suffix(key: str) -> str:
    return key.rpartition(".")[2]


def _first_keys(weights: Mapping[str, torch.Tensor]) -> str:
    keys = list(weights)
    more = ", ..." if len(keys) > 3 else ""
    return "[" + ", ".join(map(repr, keys[:3])) + more + "]"


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
    """Return the ``mlp:`` spec that fits these weights, or ``None`` when they are no Linear chain.

    The widths come from the 2-D ``*.weight`` matrices, in order: the first matrix's input width,
    then each matrix's output width. The spec is returned only when each matrix's input width is
    the previous one's output width and the spec's network matches ``weights`` by name or by
    position (see :func:`match_by_position`), so ``weights`` can be loaded into it.
    """
    if not all(isinstance(value, torch.Tensor) for value in weights.values()):
        return None
    matrices = [value for key, value in weights.items() if _key_suffix(key) == "weight"]
    if not matrices or not all(value.ndim == 2 for value in matrices):
        return None
    for previous, following in zip(matrices[:-1], matrices[1:]):
        if following.shape[1] != previous.shape[0]:
            return None
    widths = [matrices[0].shape[1]] + [matrix.shape[0] for matrix in matrices]
    spec = "mlp:" + "-".join(str(width) for width in widths)
    try:
        with torch.device("meta"):
            candidate = build_architecture(spec).state_dict()
    except ValueError:
        return None
    if _state_dict_differences(candidate, weights) and match_by_position(candidate, weights) is None:
        return None
    return spec
