"""Architectures named by a spec string, for state_dicts that carry weights but no structure.

Built-in specs:

* ``mlp:D-H1-...-K``: a ``torch.nn.Sequential`` of ``Flatten``, then ``Linear`` layers of the
  given widths with ``ReLU`` between them; ``D`` is the flattened input size, ``K`` the number
  of classes. ``mlp:64-128-128-10`` has two hidden layers of 128 units. Its keys are
  ``1.weight``, ``1.bias``, ``3.weight``, ... because of the leading ``Flatten``. A state_dict of
  a plain ``nn.Sequential(nn.Linear(64, 128), nn.ReLU(), ...)`` (keys ``0.weight``, ...) still
  loads into it, because the loader matches tensors by position when only layers without
  parameters differ.
* ``cnn:CxHxW-C1-...-K``: 3x3 convolutions with stride 2 and padding 1 (channels ``C1``, ...),
  each followed by ``ReLU``, then ``Flatten`` and one ``Linear`` layer to ``K`` classes.

Any other spec of the form ``package.module:factory`` imports ``factory`` and calls it with no
arguments; it must return a ``torch.nn.Module``.
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn


def build_architecture(spec: str) -> nn.Module:
    """Build the untrained network that ``spec`` names (see the module docstring for the forms)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"Expected an architecture spec such as 'mlp:64-128-10' or 'package.module:factory', "
            f"but got {spec!r}."
        )
    kind, _, body = spec.partition(":")
    if kind == "mlp":
        return _build_mlp(spec, body)
    if kind == "cnn":
        return _build_cnn(spec, body)
    return _build_from_factory(spec, kind, body)


def _parse_widths(spec: str, text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split("-")]
    except ValueError:
        widths = []
    if len(widths) < 2 or any(width < 1 for width in widths):
        raise ValueError(
            f"Expected positive integer widths separated by '-' in architecture spec {spec!r}, "
            "for example 'mlp:64-128-10'."
        )
    return widths


def _build_mlp(spec: str, body: str) -> nn.Module:
    widths = _parse_widths(spec, body)
    if widths[-1] < 2:
        raise ValueError(f"Expected at least 2 output classes in architecture spec {spec!r}, but got {widths[-1]}.")
    layers: list[nn.Module] = [nn.Flatten()]
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _build_cnn(spec: str, body: str) -> nn.Module:
    shape_text, _, rest = body.partition("-")
    try:
        channels, height, width = (int(part) for part in shape_text.lower().split("x"))
    except ValueError:
        raise ValueError(
            f"Expected an input shape CxHxW at the start of architecture spec {spec!r}, "
            "for example 'cnn:1x8x8-16-32-10'."
        ) from None
    widths = _parse_widths(spec, rest) if "-" in rest else _parse_widths(spec, f"{rest}-{rest}")[:1]
    *conv_channels, num_classes = widths
    if num_classes < 2:
        raise ValueError(f"Expected at least 2 output classes in architecture spec {spec!r}, but got {num_classes}.")

    layers: list[nn.Module] = []
    in_channels = channels
    for out_channels in conv_channels:
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1), nn.ReLU()]
        in_channels = out_channels
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    layers += [nn.Flatten(), nn.Linear(in_channels * height * width, num_classes)]
    return nn.Sequential(*layers)


def _build_from_factory(spec: str, module_name: str, factory_name: str) -> nn.Module:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"Could not import module {module_name!r} named by architecture spec {spec!r}: {error}. "
            "Check that the package is installed or on PYTHONPATH."
        ) from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"Module {module_name!r} has no callable {factory_name!r} (architecture spec {spec!r}).")
    network = factory()
    if not isinstance(network, nn.Module):
        raise TypeError(
            f"Expected architecture factory {spec!r} to return a torch.nn.Module, but got {type(network).__name__}."
        )
    return network


def count_parameters(model: nn.Module) -> int:
    """Return the number of distinct parameter elements; tied weights count once."""
    return sum(parameter.numel() for parameter in {id(p): p for p in model.parameters()}.values())


def is_piecewise_linear(model: nn.Module, probe: torch.Tensor | None = None) -> bool:
    """Return whether every submodule is of a type on robusteval's list of piecewise-linear layers.

    With input samples ``probe``, a model whose layers cannot be listed, such as a torch.export
    program, also counts when a Linear/ReLU chain recovered from its graph reproduces its logits
    there. TorchScript and exported modules that pass neither test return ``False``.
    """
    if probe is not None and not _listed_piecewise_linear(model):
        from .geometry import recover_chain

        return recover_chain(model, probe) is not None
    return _listed_piecewise_linear(model)


def _listed_piecewise_linear(model: nn.Module) -> bool:
    allowed = (
        nn.Sequential, nn.Linear, nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout,
        nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
        nn.LeakyReLU, nn.BatchNorm1d, nn.BatchNorm2d, nn.ModuleList,
    )
    if isinstance(model, torch.jit.ScriptModule):
        return all(_scripted_kind(sub) in _PIECEWISE_LINEAR_SCRIPTED for sub in model.modules())
    return all(isinstance(sub, allowed) for sub in model.modules())


_PIECEWISE_LINEAR_SCRIPTED = {
    "Sequential", "Linear", "ReLU", "Flatten", "Identity", "Dropout", "Conv1d", "Conv2d", "MaxPool2d",
    "AvgPool2d", "LeakyReLU", "BatchNorm1d", "BatchNorm2d",
}


def _scripted_kind(module: nn.Module) -> str:
    qualified = getattr(module, "original_name", type(module).__name__)
    return str(qualified)
