"""Restoring a model's state after code that may change it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class _TensorState:
    tensor: torch.Tensor
    data: torch.Tensor
    requires_grad: bool
    grad: torch.Tensor | None


@dataclass
class _ModuleState:
    module: nn.Module
    training: bool
    parameters: dict[str, nn.Parameter | None]
    buffers: dict[str, torch.Tensor | None]


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[nn.Module]:
    """Restore ``model`` bit for bit when the ``with`` body ends, also when it raises.

    Restored are the parameters and buffers of every submodule (the same tensor objects, with
    their values, ``requires_grad`` bits and ``.grad`` tensors), the ``training`` flag of every
    submodule, and the set of registered parameters and buffers. A tied parameter (one
    ``nn.Parameter`` object registered under several names) is saved and restored once.

    Args:
        model: The network to protect. The ``with`` body receives the same object.

    Raises:
        TypeError: When ``model`` is not a ``torch.nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected a torch.nn.Module, but got {type(model).__name__}. Pass the model object itself.")
    module_states, tensor_states = _snapshot(model)
    try:
        yield model
    finally:
        _restore(module_states, tensor_states)


def _snapshot(model: nn.Module) -> tuple[list[_ModuleState], list[_TensorState]]:
    module_states: list[_ModuleState] = []
    tensor_states: dict[int, _TensorState] = {}
    with torch.no_grad():
        for module in model.modules():
            module_states.append(
                _ModuleState(module, module.training, dict(module._parameters), dict(module._buffers))
            )
            tensors = [*module._parameters.values(), *module._buffers.values()]
            for tensor in tensors:
                if tensor is None or id(tensor) in tensor_states:
                    continue
                grad = tensor.grad.detach().clone() if tensor.grad is not None else None
                tensor_states[id(tensor)] = _TensorState(tensor, tensor.detach().clone(), tensor.requires_grad, grad)
    return module_states, list(tensor_states.values())


def _restore(module_states: list[_ModuleState], tensor_states: list[_TensorState]) -> None:
    for state in module_states:
        # Put back the registered objects first, in case the body replaced or added one.
        state.module._parameters.clear()
        state.module._parameters.update(state.parameters)
        state.module._buffers.clear()
        state.module._buffers.update(state.buffers)
        state.module.training = state.training

    with torch.no_grad():
        for saved in tensor_states:
            tensor = saved.tensor
            same_layout = (
                tensor.shape == saved.data.shape
                and tensor.dtype == saved.data.dtype
                and tensor.device == saved.data.device
            )
            if same_layout:
                tensor.copy_(saved.data)
            else:
                tensor.data = saved.data
            if tensor.is_leaf:
                tensor.requires_grad_(saved.requires_grad)
            tensor.grad = saved.grad
