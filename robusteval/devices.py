"""Resolving ``--device`` names, and checking that a model and its inputs share one device.

robusteval never moves work to another device behind the caller's back. A run asked for
``cuda`` either runs on a GPU or stops with an error, and a model on one device with inputs on
another raises an error that names both devices.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

DEVICE_FORMS = "'cpu', 'cuda' or 'cuda:N'"


def resolve_device(name: str | torch.device) -> torch.device:
    """Return the torch device ``name``, with an explicit index for CUDA devices.

    Plain ``cuda`` becomes ``cuda:<current device>``, which is ``cuda:LOCAL_RANK`` in a process
    of a multi-process run (see :mod:`robusteval.distributed`). An explicit index lets every
    later device comparison be exact.

    Raises:
        ValueError: ``name`` is not a CPU or CUDA device, CUDA is not available, or the index
            is not below the number of visible CUDA devices.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"Expected --device to be {DEVICE_FORMS}, but got {name!r}.") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"Expected --device to be {DEVICE_FORMS}, but got {name!r}.")

    if not torch.cuda.is_available():
        raise ValueError(
            f"Expected a machine with a usable CUDA device for --device {name}, but torch {torch.__version__} "
            "finds none (torch.cuda.is_available() is False). Use --device cpu, or run on a machine with an "
            "NVIDIA GPU and a CUDA build of torch."
        )
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        raise ValueError(
            f"Expected a CUDA device index below {count}, because this machine has {count} visible CUDA "
            f"device(s){where}, but got --device {name}. Use --device cuda:0 to cuda:{count - 1}."
        )
    return torch.device("cuda", index)


def module_devices(model: nn.Module) -> list[torch.device]:
    """Return the distinct devices of ``model``'s parameters and buffers, sorted by name."""
    tensors = [*model.parameters(), *model.buffers()]
    return sorted({tensor.device for tensor in tensors}, key=str)


def check_model_device(model: nn.Module, tensor: Tensor, *, tensor_name: str = "inputs") -> None:
    """Raise when ``model`` is spread over several devices or sits on another device than ``tensor``.

    A model without parameters or buffers passes, because nothing ties it to a device.

    Args:
        model: The network.
        tensor: A tensor the model will be applied to, or labels compared with its outputs.
        tensor_name: Name of ``tensor`` in the message, for example ``"inputs"`` or ``"labels"``.

    Raises:
        ValueError: The devices differ; the message names each of them.
    """
    devices = module_devices(model)
    if len(devices) > 1:
        raise ValueError(
            f"Expected the model's parameters and buffers on one device, but they are on "
            f"{', '.join(str(device) for device in devices)}. Move the whole model with model.to(device)."
        )
    if devices and devices[0] != tensor.device:
        raise ValueError(
            f"Expected the model and the {tensor_name} on the same device, but the model is on {devices[0]} and "
            f"the {tensor_name} are on {tensor.device}. Move both to one device with .to(device)."
        )


__all__ = ["check_model_device", "module_devices", "resolve_device"]
