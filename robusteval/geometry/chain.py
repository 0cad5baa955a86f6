"""Recover a fully connected ReLU chain ``W_L D (... D (W_1 x + b_1) ...) + b_L`` from a model.

The closed forms of the geometry stage need the weight matrices in order and the positions of
the ReLUs. They are read from eager and scripted ``Sequential``s (nested ones included), from
the ``torch.fx`` graph of any other eager module, and from the graph of a
``torch.export.ExportedProgram``'s module. A recovered chain counts only after it reproduces
the model's logits on the given inputs (see :func:`recover_chain`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

logger = logging.getLogger(__name__)

_RELU_TARGETS: frozenset[Any] = frozenset({
    F.relu, torch.relu, torch.ops.aten.relu.default, "relu",
})
_LINEAR_TARGETS: frozenset[Any] = frozenset({F.linear, torch.ops.aten.linear.default})
_RESHAPE_TARGETS: frozenset[Any] = frozenset({
    torch.flatten, torch.reshape, torch.ops.aten.view.default, torch.ops.aten.reshape.default,
    torch.ops.aten.flatten.using_ints, "view", "reshape", "flatten",
})
_NO_OP_TARGETS: frozenset[Any] = frozenset({
    torch.ops.aten.clone.default, torch.ops.aten.alias.default, "contiguous", "clone",
})
_SHAPE_QUERY_TARGETS: frozenset[Any] = frozenset({"size", "dim", torch.ops.aten.sym_size.int})


@dataclass(frozen=True)
class LinearLayer:
    """One affine map ``z = W h + b`` and whether a ReLU follows it."""

    weight: Tensor  # (n_out, n_in)
    bias: Tensor | None  # (n_out,)
    relu_after: bool


@dataclass(frozen=True)
class ReluChain:
    """A fully connected network: the input is flattened, then each layer is applied in order.

    Attributes:
        layers: the affine layers; the last one produces the logits and has no ReLU after it.
    """

    layers: tuple[LinearLayer, ...]

    @property
    def input_size(self) -> int:
        """Number of input features ``d``."""
        return int(self.layers[0].weight.shape[1])

    def forward(self, x: Tensor) -> Tensor:
        """Return the chain's logits ``(N, K)`` at inputs ``x`` of shape ``(N, ...)``."""
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = F.linear(h, layer.weight, layer.bias)
            if layer.relu_after:
                h = torch.relu(h)
        return h


def recover_chain(model: nn.Module | torch.export.ExportedProgram, x: Tensor) -> ReluChain | None:
    """Return ``model`` as a :class:`ReluChain`, or ``None`` when it is not one.

    Allowed pieces: ``Linear``, ``ReLU`` (module, ``F.relu``, ``torch.relu``, ``Tensor.relu``),
    a flatten or reshape of the input before the first ``Linear``, ``Identity``, ``Dropout`` in
    eval mode and nested ``Sequential``s. The chain is returned only when its logits match
    ``model(x)`` to a tolerance set by the dtype, so a misread graph falls back to the generic
    path instead of giving wrong numbers.
    """
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    layers = _layers_from_sequential(model)
    if layers is None and not isinstance(model, torch.jit.ScriptModule):
        layers = _layers_from_graph(model)
    if not layers or layers[-1].relu_after:
        return None
    chain = ReluChain(tuple(layers))
    if not _reproduces_logits(chain, model, x):
        logger.info("A fully connected chain was read from the model but does not reproduce its logits.")
        return None
    return chain


def _kind(module: nn.Module) -> str:
    if isinstance(module, torch.jit.ScriptModule):
        return str(getattr(module, "original_name", type(module).__name__))
    return type(module).__name__


def _layers_from_sequential(model: nn.Module) -> list[LinearLayer] | None:
    if _kind(model) != "Sequential":
        return None
    if not isinstance(model, (nn.Sequential, torch.jit.ScriptModule)):
        return None
    leaves: list[nn.Module] = []
    if not _collect_leaves(model, leaves):
        return None

    builder = _ChainBuilder()
    for leaf in leaves:
        kind = _kind(leaf)
        if kind == "Linear":
            weight, bias = leaf.weight, getattr(leaf, "bias", None)
            ok = isinstance(weight, Tensor) and builder.add_linear(weight, bias)
        elif kind == "ReLU":
            ok = builder.add_relu()
        elif kind == "Flatten":
            ok = builder.add_reshape()
        elif kind in ("Identity", "Dropout"):
            ok = kind == "Identity" or not leaf.training
        else:
            ok = False
        if not ok:
            return None
    return builder.layers


def _collect_leaves(module: nn.Module, leaves: list[nn.Module]) -> bool:
    for child in module.children():
        if _kind(child) == "Sequential":
            if not _collect_leaves(child, leaves):
                return False
        else:
            leaves.append(child)
    return True


class _ChainBuilder:
    """Accumulate layers while checking that the pieces arrive in the order of a chain."""

    def __init__(self) -> None:
        self.layers: list[LinearLayer] = []

    def add_linear(self, weight: Tensor, bias: Tensor | None) -> bool:
        if weight.dim() != 2:
            return False
        self.layers.append(LinearLayer(weight, bias, relu_after=False))
        return True

    def add_relu(self) -> bool:
        if not self.layers or self.layers[-1].relu_after:
            return False
        last = self.layers[-1]
        self.layers[-1] = LinearLayer(last.weight, last.bias, relu_after=True)
        return True

    def add_reshape(self) -> bool:
        # Only a flatten of the input is a chain piece. The logit check rejects other reshapes.
        return not self.layers


def _layers_from_graph(model: nn.Module) -> list[LinearLayer] | None:
    if isinstance(model, fx.GraphModule):
        graph_module = model
    else:
        try:
            graph_module = fx.symbolic_trace(model)
        except Exception as error:  # noqa: BLE001 - any tracing failure means "not a chain"
            logger.info("torch.fx could not trace the model (%s); using the generic path.", error)
            return None
    return _walk_graph(graph_module)


def _walk_graph(graph_module: fx.GraphModule) -> list[LinearLayer] | None:
    placeholders = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    current = placeholders[0]
    chain_nodes = {current}
    builder = _ChainBuilder()

    for node in graph_module.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        inputs = [arg for arg in node.all_input_nodes if arg in chain_nodes]
        if node.op == "output":
            returned = node.args[0]
            if isinstance(returned, (tuple, list)) and len(returned) == 1:
                returned = returned[0]
            return builder.layers if returned is current else None
        if not inputs or not node.users or node.target in _SHAPE_QUERY_TARGETS:
            continue  # x.size(0), export's guard call and other values off the chain
        if inputs != [current] or node.args[0] is not current:
            return None
        if not _add_graph_node(builder, graph_module, node):
            return None
        current = node
        chain_nodes.add(node)
    return None


def _add_graph_node(builder: _ChainBuilder, graph_module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        module = graph_module.get_submodule(str(node.target))
        if isinstance(module, nn.Linear):
            return builder.add_linear(module.weight, module.bias)
        if isinstance(module, nn.ReLU):
            return builder.add_relu()
        if isinstance(module, nn.Flatten):
            return builder.add_reshape()
        return isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout) and not module.training)

    target = node.target
    if target in _RELU_TARGETS:
        return builder.add_relu()
    if target in _RESHAPE_TARGETS:
        return builder.add_reshape()
    if target in _NO_OP_TARGETS:
        return True
    if target in _LINEAR_TARGETS:
        weight = _resolve_attribute(graph_module, node.args[1] if len(node.args) > 1 else node.kwargs.get("weight"))
        bias_arg = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        bias = None if bias_arg is None else _resolve_attribute(graph_module, bias_arg)
        if weight is None or (bias_arg is not None and bias is None):
            return False
        return builder.add_linear(weight, bias)
    return False


def _resolve_attribute(graph_module: fx.GraphModule, arg: Any) -> Tensor | None:
    if not isinstance(arg, fx.Node) or arg.op != "get_attr":
        return None
    value: Any = graph_module
    for part in str(arg.target).split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, Tensor) else None


def _reproduces_logits(chain: ReluChain, model: nn.Module, x: Tensor) -> bool:
    with torch.no_grad():
        try:
            expected = model(x)
            got = chain.forward(x)
        except RuntimeError as error:
            logger.info("The recovered chain could not run on the inputs (%s).", error)
            return False
    if not isinstance(expected, Tensor) or expected.shape != got.shape:
        return False
    tolerance = 1e-9 if expected.dtype == torch.float64 else 1e-4
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(torch.allclose(got, expected, rtol=tolerance, atol=tolerance * max(scale, 1.0)))
