"""Eager copies of TorchScript Sequentials, for stages that need ``torch.func``.

``torch.func.functional_call`` and ``vmap`` reject TorchScript modules, but the parameter-space
attacks evaluate the network with perturbed copies of its weights through exactly those. The
geometry stage already rebuilds a scripted ``Sequential`` of standard layers in eager form and
checks it against the scripted model. This module gives the other stages the same copy.
"""

from __future__ import annotations

import torch
from torch import nn


def eager_equivalent(model: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    """Return an eager module computing the same function as ``model``, or ``None``.

    Eager modules are returned as they are. A TorchScript ``Sequential`` of standard layers
    becomes an ``nn.Sequential`` with copies of its weights, returned only if its logits on
    ``probe`` match the scripted model's. Any other TorchScript module returns ``None``.
    """
    from .geometry.generic import eager_equivalent as rebuild_eager

    try:
        return rebuild_eager(model, probe)
    except ValueError:
        return None
