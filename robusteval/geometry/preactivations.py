"""Locate the hidden ReLU layers of a network and record their pre-activations.

A hidden ReLU layer is one call of a ReLU during the forward pass; its pre-activation is the
tensor the ReLU receives. Three kinds of model are understood:

* eager ``nn.Module``s of any structure, including ``nn.Sequential``, ``torch.fx`` graph modules
  and the module of a ``torch.export.ExportedProgram``: every call of ``nn.ReLU``,
  ``F.relu``, ``torch.relu``, ``Tensor.relu`` (and their in-place forms) or ``aten.relu`` is
  intercepted with a ``TorchFunctionMode`` while the model runs, so Python control flow is
  followed as it happens;
* TorchScript ``Sequential``s, possibly nested: their scripted children run one by one and the
  input of each scripted ``ReLU`` child is recorded;
* other TorchScript modules only when their graph contains no ReLU at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

PreactivationRunner = Callable[[Tensor], tuple[Tensor, list[Tensor]]]

_RELU_FUNCTIONS: frozenset[Any] = frozenset({
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    Tensor.relu,
    Tensor.relu_,
    torch.ops.aten.relu.default,
    torch.ops.aten.relu_.default,
})
_IN_PLACE_RELU_FUNCTIONS: frozenset[Any] = frozenset({
    F.relu_, torch.relu_, Tensor.relu_, torch.ops.aten.relu_.default,
})


def hidden_preactivations(model: nn.Module | torch.export.ExportedProgram, x: Tensor) -> list[Tensor]:
    """Return the pre-activations of every hidden ReLU layer of ``model`` at ``x``.

    The values stay attached to the autograd graph, so callers may differentiate them.

    Args:
        model: the network, eager, TorchScript ``Sequential`` or ``torch.export`` program.
        x: a batch of inputs, ``(N, ...)``.

    Returns:
        One tensor per hidden ReLU layer in forward order, each flattened to ``(N, n_l)``.
        The list is empty for a network without ReLUs.

    Raises:
        ValueError: when the ReLUs of a TorchScript model cannot be located.
    """
    _, preactivations = preactivation_runner(model)(x)
    return preactivations


def preactivation_runner(model: nn.Module | torch.export.ExportedProgram) -> PreactivationRunner:
    """Build a function that runs ``model`` once and returns its logits and hidden pre-activations.

    The returned function maps ``x`` of shape ``(N, ...)`` to ``(logits, [z_1, ..., z_L])`` with
    each ``z_l`` of shape ``(N, n_l)``. It can run inside ``torch.func`` transforms.

    Raises:
        ValueError: when the ReLUs of a TorchScript model cannot be located.
        TypeError: when ``model`` is neither a module nor an exported program.
    """
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected a torch.nn.Module or torch.export.ExportedProgram, but got {type(model).__name__}."
        )
    if isinstance(model, torch.jit.ScriptModule):
        return _scripted_runner(model)
    return _eager_runner(model)


class _ReluRecorder(TorchFunctionMode):
    """Record the input of every ReLU call made while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.preactivations: list[Tensor] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _RELU_FUNCTIONS:
            in_place = func in _IN_PLACE_RELU_FUNCTIONS or bool(kwargs.get("inplace", False))
            if func is F.relu and len(args) > 1:
                in_place = bool(args[1])
            preactivation = args[0]
            # An in-place ReLU overwrites its input, so the pre-activation must be copied first.
            self.preactivations.append(preactivation.clone() if in_place else preactivation)
        return func(*args, **kwargs)


def _eager_runner(model: nn.Module) -> PreactivationRunner:
    def run(x: Tensor) -> tuple[Tensor, list[Tensor]]:
        with _ReluRecorder() as recorder:
            logits = model(x)
        return logits, _flatten_all(recorder.preactivations, x.shape[0])

    return run


def _scripted_runner(model: torch.jit.ScriptModule) -> PreactivationRunner:
    if _scripted_kind(model) != "Sequential":
        # Its own forward may call ReLU, tanh or anything else in ways its graph does not show
        # reliably, so "no ReLU found" must not be read as "no hidden units".
        raise ValueError(
            f"Expected a TorchScript Sequential whose ReLUs are separate children, but got a scripted "
            f"{_scripted_kind(model)!r} with its own forward. Pass the eager module, or save the model with "
            "torch.export (.pt2) or as a state_dict with --arch."
        )
    _check_scripted_children(model)

    def run(x: Tensor) -> tuple[Tensor, list[Tensor]]:
        preactivations: list[Tensor] = []
        output = _run_scripted_sequential(model, x, preactivations)
        return output, _flatten_all(preactivations, x.shape[0])

    return run


def _check_scripted_children(sequential: torch.jit.ScriptModule) -> None:
    for name, child in sequential.named_children():
        kind = _scripted_kind(child)
        if kind == "Sequential":
            _check_scripted_children(child)  # type: ignore[arg-type]
        elif kind != "ReLU" and _graph_has_relu(child):
            raise ValueError(
                f"Expected the ReLUs of a TorchScript Sequential to be separate children, but child "
                f"{name!r} ({kind}) calls ReLU inside its own forward. Pass the eager module, or save the model "
                "with torch.export (.pt2) or as a state_dict with --arch."
            )


def _run_scripted_sequential(sequential: nn.Module, x: Tensor, preactivations: list[Tensor]) -> Tensor:
    for child in sequential.children():
        kind = _scripted_kind(child)
        if kind == "Sequential":
            x = _run_scripted_sequential(child, x, preactivations)
            continue
        if kind == "ReLU":
            preactivations.append(x)
            # Apply the ReLU out of place, so that a scripted ``ReLU(inplace=True)`` cannot
            # overwrite the pre-activation just recorded.
            x = torch.relu(x)
            continue
        x = child(x)
    return x


def _scripted_kind(module: nn.Module) -> str:
    return str(getattr(module, "original_name", type(module).__name__))


def _graph_has_relu(module: nn.Module) -> bool:
    graph = getattr(module, "inlined_graph", None)
    if graph is None:
        return False
    return any(node.kind() in ("aten::relu", "aten::relu_") for node in graph.nodes())


def _flatten_all(preactivations: list[Tensor], batch_size: int) -> list[Tensor]:
    return [z.reshape(batch_size, -1) for z in preactivations]
