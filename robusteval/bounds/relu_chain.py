"""Fully connected ReLU chains: recognizing them and evaluating their local linear pieces.

A fully connected ReLU chain is ``f(x) = W_L D_{L-1} (... D_1 (W_1 x + b_1) ...) + b_L``: a
``torch.nn.Sequential`` (possibly nested) of ``Linear`` layers with one ``ReLU`` between
consecutive ones, optionally preceded by ``Flatten`` and interleaved with ``Identity`` or
``Dropout`` (a no-op in eval mode). The bounds in this package apply only to such chains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

_NEUTRAL = (nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class ReluChain:
    """Weights of a fully connected ReLU chain, in float64.

    Attributes:
        weights: ``W_1 .. W_L``; ``W_l`` has shape ``(n_l, n_{l-1})``.
        biases: ``b_1 .. b_L``; a layer without bias has a zero vector.
    """

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]

    @property
    def widths(self) -> tuple[int, ...]:
        """Layer widths ``(n_0, n_1, ..., n_L)``: input size, hidden widths, number of outputs."""
        return (self.weights[0].shape[1], *(weight.shape[0] for weight in self.weights))

    @property
    def depth(self) -> int:
        """Number of weight layers ``L``; the chain has ``L - 1`` hidden ReLU layers."""
        return len(self.weights)


def _flatten_modules(model: nn.Module) -> list[nn.Module] | None:
    # An exact type check, because a Sequential subclass may override forward.
    if type(model) is nn.Sequential:
        modules: list[nn.Module] = []
        for child in model:
            inner = _flatten_modules(child)
            if inner is None:
                return None
            modules += inner
        return modules
    if isinstance(model, (nn.Linear, nn.ReLU, nn.Flatten, *_NEUTRAL)):
        return [model]
    return None


def extract_relu_chain(model: nn.Module) -> tuple[ReluChain | None, str]:
    """Return the chain's weights, or ``None`` with the reason the model is not such a chain.

    Args:
        model: Any module. TorchScript modules, convolutions, pooling, normalization layers and
            custom ``forward`` methods are not recognized, because their structure cannot be read
            from the module list alone.

    Returns:
        ``(chain, "")`` for a fully connected ReLU chain, otherwise ``(None, reason)``.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return None, "TorchScript modules cannot be inspected layer by layer."
    modules = _flatten_modules(model)
    if modules is None:
        kinds = sorted({type(sub).__name__ for sub in model.modules()} - {"Sequential"})
        return None, (
            "The bounds need a torch.nn.Sequential of Linear and ReLU layers (Flatten first, Identity "
            f"and Dropout allowed); this model contains {', '.join(kinds)}."
        )

    layers = [module for module in modules if not isinstance(module, _NEUTRAL)]
    while layers and isinstance(layers[0], nn.Flatten):
        layers = layers[1:]
    linear = layers[0::2]
    activations = layers[1::2]
    if (
        not layers
        or not all(isinstance(layer, nn.Linear) for layer in linear)
        or not all(isinstance(layer, nn.ReLU) for layer in activations)
        or not isinstance(layers[-1], nn.Linear)
    ):
        order = ", ".join(type(layer).__name__ for layer in layers)
        return None, (
            "The bounds need Linear layers alternating with ReLU and ending in Linear, "
            f"but the model's layers are: {order}."
        )

    linear_layers = [layer for layer in linear if isinstance(layer, nn.Linear)]
    weights = tuple(layer.weight.detach().to(torch.float64) for layer in linear_layers)
    biases = tuple(
        layer.bias.detach().to(torch.float64) if layer.bias is not None
        else torch.zeros(layer.out_features, dtype=torch.float64, device=layer.weight.device)
        for layer in linear_layers
    )
    return ReluChain(weights, biases), ""


def relu_chain_from_graph(model: nn.Module, x: Tensor) -> ReluChain | None:
    """Return the chain that the geometry stage recovers from ``model``'s graph, or ``None``.

    This recognizes chains saved as TorchScript Sequentials or torch.export programs, whose
    module lists :func:`extract_relu_chain` cannot read. The recovered chain reproduces the
    model's logits on ``x``; it counts only if its layers alternate Linear and ReLU.
    """
    from ..geometry import recover_chain

    recovered = recover_chain(model, x)
    if recovered is None:
        return None
    layers = recovered.layers
    if layers[-1].relu_after or not all(layer.relu_after for layer in layers[:-1]):
        return None
    weights = tuple(layer.weight.detach().to(torch.float64) for layer in layers)
    biases = tuple(
        layer.bias.detach().to(torch.float64) if layer.bias is not None
        else torch.zeros(layer.weight.shape[0], dtype=torch.float64, device=layer.weight.device)
        for layer in layers
    )
    return ReluChain(weights, biases)


@dataclass(frozen=True)
class ChainForward:
    """Per-sample activation masks and closed-form tangent sensitivity of a chain.

    Attributes:
        masks: One ``(N, n_l)`` bool tensor per hidden layer ``l = 1 .. L-1``.
        tangent_sensitivity: ``(N, K)`` float64, TS_k(x) for every output k.
        logits: ``(N, K)`` float64 network outputs.
    """

    masks: tuple[Tensor, ...]
    tangent_sensitivity: Tensor
    logits: Tensor

    @property
    def active_units(self) -> Tensor:
        """``(N, L-1)`` int64 number of active ReLU units per hidden layer."""
        if not self.masks:
            return torch.zeros(self.logits.shape[0], 0, dtype=torch.int64, device=self.logits.device)
        return torch.stack([mask.sum(dim=1) for mask in self.masks], dim=1)


def evaluate_chain(chain: ReluChain, x: Tensor) -> ChainForward:
    """Compute activation masks and every TS_k at each row of ``x`` in closed form.

    TS_k(x)^2 = sum_l ||delta_l||^2 ||J_{l-1}||_F^2 with delta_L = e_k,
    delta_l = D_l W_{l+1}^T delta_{l+1}, J_0 = I and J_l = D_l W_l J_{l-1}: the parameter
    gradient of f_k with respect to W_l is delta_l h_{l-1}^T, and on an activation region
    d h_{l-1} / dx = J_{l-1} while delta_l is constant. Biases contribute nothing.

    Args:
        chain: The network's weights.
        x: ``(N, ...)`` inputs; flattened to ``(N, n_0)``.
    """
    h = x.reshape(x.shape[0], -1).to(torch.float64)
    if h.shape[1] != chain.widths[0]:
        raise ValueError(
            f"Expected inputs with {chain.widths[0]} features per sample, but got {h.shape[1]}. "
            "Pass inputs of the shape the model was built for."
        )
    count = h.shape[0]
    jacobian = torch.eye(h.shape[1], dtype=torch.float64, device=h.device).expand(count, -1, -1)
    jacobian_norms_squared = [torch.full((count,), float(h.shape[1]), dtype=torch.float64, device=h.device)]
    masks: list[Tensor] = []
    for weight, bias in zip(chain.weights[:-1], chain.biases[:-1]):
        pre = h @ weight.T + bias
        mask = pre > 0
        masks.append(mask)
        h = pre.clamp_min(0)
        jacobian = mask.unsqueeze(2) * torch.matmul(weight, jacobian)  # (N, n_l, n_0)
        jacobian_norms_squared.append(jacobian.square().sum(dim=(1, 2)))
    logits = h @ chain.weights[-1].T + chain.biases[-1]

    num_classes = logits.shape[1]
    delta = torch.eye(num_classes, dtype=torch.float64, device=h.device).expand(count, -1, -1)  # (N, K, n_L)
    # The last layer's term is ||e_k||^2 ||J_{L-1}||_F^2 = ||J_{L-1}||_F^2 for every k.
    total = jacobian_norms_squared[-1].unsqueeze(1).expand(count, num_classes).clone()  # (N, K)
    for layer in range(chain.depth - 1, 0, -1):
        delta = masks[layer - 1].unsqueeze(1) * torch.matmul(delta, chain.weights[layer])  # (N, K, n_layer)
        total += delta.square().sum(dim=2) * jacobian_norms_squared[layer - 1].unsqueeze(1)
    return ChainForward(tuple(masks), total.sqrt(), logits)
