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

The forward pass keeps each ``G_l`` as a row-major ``(N, n_l, d)`` tensor and computes
``G_l = (W_l D_{l-1}) G_{l-1}``. The mask is folded into a per-sample copy of the small
``(n_l, n_{l-1})`` weight instead of the large Jacobian, so each layer is one batched matrix
product with no copies. Until the first ReLU, ``G_l`` is the same for every sample and is kept
as one ``(n_l, d)`` matrix. Two ``(N, max n_l, d)`` buffers take turns as input and output, so
the large tensors are allocated once per chunk instead of once per layer.
"""

from __future__ import annotations

import math
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


# Working set of one chunk when the memory budget allows more. On the 2-core benchmark machine
# (4 MiB of L2 cache per core), 64 samples of the 784-256-256-256-10 MLP took 0.056 s in chunks
# of 16 and 0.10 s in one chunk. Chunks of 24 to 96 MiB came within 10% of the best time on
# MLPs with input width 784 or 3072 and hidden widths 256 to 1024.
CHUNK_WORKING_SET_BYTES = 48 * 2**20


def chain_analysis(chain: ReluChain, x: Tensor, *, memory_budget: int) -> tuple[LocalLinearPiece, Tensor]:
    """Return the local linear piece and the tangent sensitivity ``(N, K)`` of a chain at ``x``.

    Samples are processed in chunks of nearly equal size whose working set, estimated by
    :func:`_bytes_per_sample`, stays within ``memory_budget`` bytes and, on a CPU with a larger
    budget, within :data:`CHUNK_WORKING_SET_BYTES`. The results of each chunk are copied into
    tensors allocated once for all samples, so no result is held twice.
    """
    flat = x.reshape(x.shape[0], -1)
    # The forward values come from one pass over all samples, so that matrix kernels chosen by
    # batch size cannot round them differently in different chunks. Quantities divided by a
    # small pre-activation or logit margin, such as region distances, would amplify that.
    with torch.no_grad():
        forward = _forward_values(chain, [layer.weight.to(flat.dtype) for layer in chain.layers], flat)
    # The cap is about CPU caches; a GPU is fastest with the largest chunk the budget allows.
    working_set = min(memory_budget, CHUNK_WORKING_SET_BYTES) if flat.device.type == "cpu" else memory_budget
    largest_chunk = max(1, working_set // _bytes_per_sample(chain, flat.element_size()))
    if largest_chunk >= flat.shape[0]:
        return _chain_chunk(chain, flat, forward)
    # As few chunks as fit, all of one size except a smaller last one, so that no chunk is left
    # with a handful of samples.
    chunk_size = math.ceil(flat.shape[0] / math.ceil(flat.shape[0] / largest_chunk))

    piece: LocalLinearPiece | None = None
    values: Tensor | None = None
    logits, preactivations, masks = forward
    for start in range(0, flat.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        chunk_forward = (logits[rows], [z[rows] for z in preactivations], [None if m is None else m[rows] for m in masks])
        chunk_piece, chunk_values = _chain_chunk(chain, flat[rows], chunk_forward)
        if piece is None or values is None:
            piece = _empty_piece_like(chunk_piece, flat.shape[0])
            values = chunk_values.new_empty((flat.shape[0], *chunk_values.shape[1:]))
        for target, source in zip(_piece_tensors(piece), _piece_tensors(chunk_piece)):
            target[rows] = source
        values[rows] = chunk_values
        del chunk_piece, chunk_values
    assert piece is not None and values is not None
    return piece, values


def chain_tangent_sensitivity(chain: ReluChain, x: Tensor, *, memory_budget: int) -> Tensor:
    """Return the closed-form tangent sensitivity ``(N, K)`` of a chain at ``x`` (see module docstring)."""
    return chain_analysis(chain, x, memory_budget=memory_budget)[1]


def _bytes_per_sample(chain: ReluChain, element_size: int) -> int:
    """Estimate the peak bytes one sample adds to :func:`_chain_chunk`.

    Per sample the chunk stores two Jacobian buffers of ``max n_l * d`` values, one masked weight
    of ``max n_l * n_{l-1}`` values, the input Jacobian of ``K * d`` values, and the masks, row
    norms, pre-activations and backward vectors of a few ``n_l`` or ``K * n_l`` values per layer.
    """
    d = chain.input_size
    widths = [int(layer.weight.shape[0]) for layer in chain.layers]
    inputs = [d, *widths[:-1]]
    masked_weight = max(width * previous for width, previous in zip(widths, inputs))
    per_layer = sum((6 + widths[-1]) * width for width in widths)
    return element_size * (2 * max(widths) * d + masked_weight + widths[-1] * d + per_layer)


def _piece_tensors(piece: LocalLinearPiece) -> list[Tensor]:
    return [piece.logits, *piece.preactivations, *piece.unit_gradient_l2, *piece.unit_gradient_l1, piece.input_jacobian]


def _empty_piece_like(piece: LocalLinearPiece, n: int) -> LocalLinearPiece:
    def empty(t: Tensor) -> Tensor:
        return t.new_empty((n, *t.shape[1:]))

    return LocalLinearPiece(
        logits=empty(piece.logits),
        preactivations=[empty(t) for t in piece.preactivations],
        unit_gradient_l2=[empty(t) for t in piece.unit_gradient_l2],
        unit_gradient_l1=[empty(t) for t in piece.unit_gradient_l1],
        input_jacobian=empty(piece.input_jacobian),
    )


# The logits, the hidden pre-activations and each layer's 0/1 mask, or None for a layer without ReLU.
ForwardValues = tuple[Tensor, list[Tensor], list["Tensor | None"]]


@torch.no_grad()
def _chain_chunk(chain: ReluChain, flat: Tensor, forward: ForwardValues) -> tuple[LocalLinearPiece, Tensor]:
    n, d = flat.shape
    weights = [layer.weight.to(flat.dtype) for layer in chain.layers]
    logits, preactivations, masks = forward

    # Forward Jacobians G_l: ``(n_l, d)`` while shared by all samples, then ``(n, n_l, d)``.
    # Each layer's ||J_{l-1}||_F^2 is ``(n,)`` or, while shared, a scalar.
    widest = max(weight.shape[0] for weight in weights)
    buffers = [flat.new_empty(n * widest * d), flat.new_empty(n * widest * d)]
    gradient = weights[0]
    frobenius_sq: list[Tensor] = [torch.tensor(float(d), dtype=flat.dtype, device=flat.device)]
    gradient_l2, gradient_l1 = [], []
    for index, weight in enumerate(weights):
        last = index == len(weights) - 1
        if index > 0:
            out = None if last else buffers[index % 2][: n * weight.shape[0] * d].view(n, weight.shape[0], d)
            gradient = _next_gradient(gradient, weight, masks[index - 1], out)
        if last:
            break
        mask = masks[index]
        if mask is None:
            frobenius_sq.append(torch.linalg.vector_norm(gradient, dim=(-2, -1)).square())
            continue
        row_l2, row_l1 = _row_norms(gradient, n)
        gradient_l2.append(row_l2)
        gradient_l1.append(row_l1)
        frobenius_sq.append((row_l2.square() * mask).sum(dim=1))
    del buffers
    input_jacobian = gradient.expand(n, -1, -1) if gradient.dim() == 2 else gradient  # (n, K, d)

    piece = LocalLinearPiece(logits, preactivations, gradient_l2, gradient_l1, input_jacobian.contiguous())
    return piece, _tangent_sensitivity(weights, masks, frobenius_sq, n)


def _forward_values(chain: ReluChain, weights: list[Tensor], flat: Tensor) -> ForwardValues:
    """Return the logits, the hidden pre-activations and each layer's 0/1 mask ``D_l`` in the dtype of ``flat``."""
    h = flat
    masks: list[Tensor | None] = []
    preactivations = []
    for layer, weight in zip(chain.layers, weights):
        bias = None if layer.bias is None else layer.bias.to(flat.dtype)
        z = torch.nn.functional.linear(h, weight, bias)
        if layer.relu_after:
            preactivations.append(z)
            masks.append((z > 0).to(flat.dtype))
            h = torch.relu(z)
        else:
            masks.append(None)
            h = z
    return h, preactivations, masks


def _next_gradient(gradient: Tensor, weight: Tensor, mask: Tensor | None, out: Tensor | None) -> Tensor:
    """Return ``G_l = W_l D_{l-1} G_{l-1}`` without copying ``G_{l-1}``.

    ``gradient`` is ``(n_{l-1}, d)`` when shared by all samples, else ``(n, n_{l-1}, d)``, and
    ``mask`` is ``(n, n_{l-1})`` or ``None`` for a layer without ReLU. ``out``, ``(n, n_l, d)``
    or ``None`` to allocate, receives a per-sample result.
    """
    if mask is None and gradient.dim() == 2:
        return weight @ gradient
    if mask is None:
        left = weight.expand(gradient.shape[0], -1, -1)  # a stride-0 batch: bmm reads it without a copy
    else:
        left = weight * mask.unsqueeze(1)  # W_l D_{l-1}, (n, n_l, n_{l-1})
    if gradient.dim() == 3:
        return torch.bmm(left, gradient, out=out)
    # One mm for all samples: (n * n_l, n_{l-1}) @ (n_{l-1}, d).
    result = torch.mm(left.reshape(-1, left.shape[2]), gradient, out=None if out is None else out.view(-1, gradient.shape[1]))
    return result.view(left.shape[0], left.shape[1], gradient.shape[1])


def _row_norms(gradient: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Return the L2 and L1 norms ``(n, n_l)`` of the rows of ``G_l``, reducing without a full-size temporary."""
    row_l2 = torch.linalg.vector_norm(gradient, dim=-1)
    row_l1 = torch.linalg.vector_norm(gradient, ord=1, dim=-1)
    if gradient.dim() == 2:
        row_l2, row_l1 = row_l2.expand(n, -1).contiguous(), row_l1.expand(n, -1).contiguous()
    return row_l2, row_l1


def _tangent_sensitivity(
    weights: list[Tensor], masks: list[Tensor | None], frobenius_sq: list[Tensor], n: int
) -> Tensor:
    """Return ``TS_k = sqrt(sum_l ||delta_l||^2 ||J_{l-1}||_F^2)``, ``(n, K)``.

    The backward vectors of all ``K`` outputs are kept transposed, ``delta_l^T`` of shape
    ``(K, n_l)`` while shared and ``(n, K, n_l)`` after the first mask, so each step is
    ``delta_l^T = (delta_{l+1}^T W_{l+1}) D_l`` and a 3-D operand folds into one ``mm``.
    """
    num_classes = weights[-1].shape[0]
    delta_t = torch.eye(num_classes, dtype=weights[-1].dtype, device=weights[-1].device)
    ts_squared = frobenius_sq[-1].reshape(-1, 1) * delta_t.square().sum(dim=-1)
    for index in range(len(weights) - 2, -1, -1):
        delta_t = torch.matmul(delta_t, weights[index + 1])
        mask = masks[index]
        if mask is not None:
            delta_t = delta_t * mask.unsqueeze(1)
        ts_squared = ts_squared + frobenius_sq[index].reshape(-1, 1) * delta_t.square().sum(dim=-1)
    return ts_squared.expand(n, -1).sqrt()
