"""Activation patterns read from the ReLU modules of a network."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Modules whose on/off state at an input is the sign of their input.
_RECTIFIERS = (nn.ReLU, nn.LeakyReLU, nn.ReLU6)


def has_rectifier_modules(model: nn.Module) -> bool:
    """Return whether ``model`` contains a ReLU-type module whose pattern can be read."""
    return any(isinstance(module, _RECTIFIERS) for module in model.modules())


def activation_pattern(model: nn.Module, x: Tensor) -> Tensor:
    """Return the on/off state ``(N, U)`` of every unit feeding a ReLU-type module at ``x``.

    A unit is on when its pre-activation is > 0. ReLUs applied as functions (``F.relu``)
    are invisible to this reader.
    """
    recorded: list[Tensor] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        recorded.append((inputs[0] > 0).flatten(1))

    handles = [
        module.register_forward_pre_hook(record) for module in model.modules() if isinstance(module, _RECTIFIERS)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not recorded:
        return torch.zeros(x.shape[0], 0, dtype=torch.bool, device=x.device)
    return torch.cat(recorded, dim=1)
