"""Closed-form local linear analysis of a fully connected ReLU chain.

On the activation region of ``x`` the network is ``f(x) = W_L D_{L-1} (... D_1 (W_1 x + b_1)
...) + b_L`` with ``D_l`` the 0/1 diagonal mask of layer ``l``. With the input Jacobians
``J_0 = I``, ``J_l = D_l W_l J_{l-1}`` and the backprop vectors ``delta_L = e_k``,
``delta_l = D_l W_{l+1}^T delta_{l+1}``, the gradient of ``f_k`` with respect to ``W_l`` is
``delta_l h_{l-1}^T``, and its input derivative has squared Frobenius norm
``||delta_l||^2 ||J_{l-1}||_F^2`` because ``delta_l`` is constant on the region. Bias gradients
are ``delta_l`` and contribute nothing. Summing over layers gives the tangent sensitivity
(B. Daroczy, "Tangent Space Sensitivity and Distribution of Linear Regions in ReLU Networks",
arXiv 2006.06780):

    TS_k(x)^2 = sum_l ||delta_l||^2 ||J_{l-1}||_F^2.

One forward pass of Jacobians and one backward pass of the ``K x K`` identity give all ``K``
outputs, batched over samples. The same pass yields the pre-activation gradients
``G_l = W_l J_{l-1}`` that the region distances need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .chain import ReluChain


@dataclass(frozen=True)
class LocalLinearPiece:
    """The affine piece of the network at each sample and the hidden units that bound its region.

    Attributes:
        logits: ``(N, K)``.
        preactivations: one ``(N, n_l)`` tensor per hidden ReLU layer.
        unit_gradient_l2: L2 norms of the input gradients of those pre-activations, ``(N, n_l)``.
        unit_gradient_l1: L1 norms of the same gradients, ``(N, n_l)``.
        input_jacobian: ``d logits / d x`` on the region, ``(N, K, d)``.
    """

    logits: Tensor
    preactivations: list[Tensor]
    unit_gradient_l2: list[Tensor]
    unit_gradient_l1: list[Tensor]
    input_jacobian: Tensor


def chain_analysis(chain: ReluChain, x: Tensor, *, memory_budget: int) -> tuple[LocalLinearPiece, Tensor]:
    """Return the local linear piece and the tangent sensitivity ``(N, K)`` of a chain at ``x``.

    Samples are processed in chunks so that the Jacobians of one chunk, about
    ``3 * sum_l n_l * d`` values per sample, stay within ``memory_budget`` bytes.
    """
    flat = x.reshape(x.shape[0], -1)
    per_sample_bytes = 3 * flat.element_size() * chain.input_size * sum(
        layer.weight.shape[0] for layer in chain.layers
    )
    chunk_size = max(1, memory_budget // max(per_sample_bytes, 1))

    pieces = [_chain_chunk(chain, flat[start:start + chunk_size]) for start in range(0, flat.shape[0], chunk_size)]
    piece = LocalLinearPiece(
        logits=torch.cat([p.logits for p, _ in pieces]),
        preactivations=[torch.cat(parts) for parts in zip(*(p.preactivations for p, _ in pieces))],
        unit_gradient_l2=[torch.cat(parts) for parts in zip(*(p.unit_gradient_l2 for p, _ in pieces))],
        unit_gradient_l1=[torch.cat(parts) for parts in zip(*(p.unit_gradient_l1 for p, _ in pieces))],
        input_jacobian=torch.cat([p.input_jacobian for p, _ in pieces]),
    )
    return piece, torch.cat([ts for _, ts in pieces])


def chain_tangent_sensitivity(chain: ReluChain, x: Tensor, *, memory_budget: int) -> Tensor:
    """Return the closed-form tangent sensitivity ``(N, K)`` of a chain at ``x`` (see module docstring)."""
    return chain_analysis(chain, x, memory_budget=memory_budget)[1]


@torch.no_grad()
def _chain_chunk(chain: ReluChain, flat: Tensor) -> tuple[LocalLinearPiece, Tensor]:
    n, d = flat.shape
    weights = [layer.weight.to(flat.dtype) for layer in chain.layers]

    # Forward: G_l = W_l J_{l-1} (n, n_l, d), J_l = D_l G_l, and ||J_{l-1}||_F^2 for every layer.
    h = flat
    jacobian: Tensor | None = None  # None stands for J_0 = I
    previous_frobenius_sq = torch.full((n,), float(d), dtype=flat.dtype, device=flat.device)
    frobenius_sq: list[Tensor] = []
    masks: list[Tensor | None] = []
    preactivations, gradient_l2, gradient_l1 = [], [], []
    for layer, weight in zip(chain.layers, weights):
        bias = None if layer.bias is None else layer.bias.to(flat.dtype)
        z = torch.nn.functional.linear(h, weight, bias)
        gradient = weight.expand(n, -1, -1) if jacobian is None else torch.matmul(weight, jacobian)
        frobenius_sq.append(previous_frobenius_sq)
        if layer.relu_after:
            mask = z > 0
            row_l2 = torch.linalg.vector_norm(gradient, dim=2)
            preactivations.append(z)
            gradient_l2.append(row_l2)
            gradient_l1.append(gradient.abs().sum(dim=2))
            jacobian = gradient * mask.unsqueeze(2)
            previous_frobenius_sq = (row_l2.square() * mask).sum(dim=1)
            h = torch.relu(z)
        else:
            mask = None
            jacobian = gradient
            previous_frobenius_sq = gradient.square().sum(dim=(1, 2))
            h = z
        masks.append(mask)
    logits = h
    num_classes = logits.shape[1]

    # Backward: delta_l for all K outputs at once, (n, n_l, K), starting from the identity.
    delta = torch.eye(num_classes, dtype=flat.dtype, device=flat.device).expand(n, -1, -1)
    ts_squared = frobenius_sq[-1].unsqueeze(1) * delta.square().sum(dim=1)
    for index in range(len(weights) - 2, -1, -1):
        delta = torch.matmul(weights[index + 1].T, delta)
        mask = masks[index]
        if mask is not None:
            delta = delta * mask.unsqueeze(2)
        ts_squared = ts_squared + frobenius_sq[index].unsqueeze(1) * delta.square().sum(dim=1)

    piece = LocalLinearPiece(logits, preactivations, gradient_l2, gradient_l1, gradient)
    return piece, ts_squared.sqrt()
