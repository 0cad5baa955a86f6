"""Eager copies of TorchScript Sequentials, for stages that need ``torch.func``.

``torch.func.functional_call`` and ``vmap`` reject TorchScript modules, but the parameter-space
attacks evaluate the network with perturbed copies of its weights through exactly those. For a
scripted ``Sequential`` of standard layers, an eager ``nn.Sequential`` with copies of the same
weights computes the same function; it is checked against the scripted model before use.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _kind(module: nn.Module) -> str:
    return str(getattr(module, "original_name", type(module).__name__))


def _copy_parameters(target: nn.Module, source: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, parameter in target.named_parameters(recurse=False):
            parameter.copy_(getattr(source, name))
        for name, buffer in target.named_buffers(recurse=False):
            buffer.copy_(getattr(source, name))
    return target


def _setting(module: nn.Module, name: str) -> Any:
    """Return a layer setting (stride, padding, ...) that a scripted module keeps as a constant."""
    return getattr(module, name)


def _convert(module: nn.Module) -> nn.Module | None:
    kind = _kind(module)
    if kind == "Sequential":
        children = [_convert(child) for child in module.children()]
        if any(child is None for child in children):
            return None
        return nn.Sequential(*children)  # type: ignore[arg-type]
    if kind == "Linear":
        weight = _setting(module, "weight")
        bias = getattr(module, "bias", None)
        return _copy_parameters(nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None), module)
    if kind in ("Conv1d", "Conv2d"):
        cls = nn.Conv1d if kind == "Conv1d" else nn.Conv2d
        weight = _setting(module, "weight")
        bias = getattr(module, "bias", None)
        try:
            layer = cls(
                weight.shape[1] * _setting(module, "groups"), weight.shape[0], tuple(weight.shape[2:]),
                stride=_setting(module, "stride"), padding=_setting(module, "padding"),
                dilation=_setting(module, "dilation"), groups=_setting(module, "groups"),
                bias=bias is not None, padding_mode=_setting(module, "padding_mode"),
            )
        except (AttributeError, RuntimeError, TypeError):
            return None
        return _copy_parameters(layer, module)
    if kind == "ReLU":
        return nn.ReLU()
    if kind == "Identity":
        return nn.Identity()
    if kind in ("Dropout", "Dropout1d", "Dropout2d"):
        return nn.Identity()  # evaluation always runs in eval mode, where dropout is the identity
    if kind == "Flatten":
        return nn.Flatten(getattr(module, "start_dim", 1), getattr(module, "end_dim", -1))
    if kind in ("MaxPool2d", "AvgPool2d"):
        try:
            if kind == "MaxPool2d":
                return nn.MaxPool2d(_setting(module, "kernel_size"), _setting(module, "stride"), _setting(module, "padding"), _setting(module, "dilation"),
                                    ceil_mode=_setting(module, "ceil_mode"))
            return nn.AvgPool2d(_setting(module, "kernel_size"), _setting(module, "stride"), _setting(module, "padding"), ceil_mode=_setting(module, "ceil_mode"),
                                count_include_pad=_setting(module, "count_include_pad"))
        except AttributeError:
            return None
    return None


def eager_equivalent(model: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    """Return an eager module computing the same function as ``model``, or ``None``.

    Eager modules are returned as they are. A TorchScript ``Sequential`` of Linear, Conv1d/2d,
    ReLU, Flatten, Identity, Dropout and pooling layers becomes an ``nn.Sequential`` with copies
    of its weights, returned only if its logits on ``probe`` match the scripted model's to
    1e-6 relative. Any other TorchScript module returns ``None``.
    """
    if not isinstance(model, torch.jit.ScriptModule):
        return model
    converted = _convert(model)
    if converted is None:
        logger.info("No eager equivalent for TorchScript module %s", _kind(model))
        return None

    parameter = next(model.parameters(), None)
    if parameter is not None:
        converted = converted.to(device=parameter.device, dtype=parameter.dtype)
    converted.eval()
    with torch.no_grad():
        expected = model(probe)
        actual = converted(probe)
    if not isinstance(expected, torch.Tensor) or expected.shape != actual.shape:
        return None
    if not torch.allclose(actual, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max().clamp_min(1.0))):
        logger.info("Eager copy of TorchScript module %s does not reproduce its outputs", _kind(model))
        return None
    return converted
