"""Tangent sensitivity and region quantities of any differentiable network, with ``torch.func``.

For a network that is not a fully connected chain (convolutions, pooling, arbitrary modules),
the tangent matrix ``T_k(x) = d/dx grad_theta f_k(x)`` of shape ``(P, d)`` is never formed.
Its products with input directions ``T_k u`` come from forward-over-reverse differentiation: a
``jvp`` in ``x`` of the ``vjp`` in ``theta`` with cotangent ``e_k``. Then

* exact: ``||T_k||_F^2 = sum_m ||T_k e_m||^2`` over all ``d`` basis directions;
* Hutchinson: ``||T_k||_F^2 = E ||T_k u||^2`` for ``u ~ N(0, I_d)``, estimated from ``S``
  probes with the standard error of the mean (M. F. Hutchinson, "A stochastic estimator of
  the trace of the influence matrix for Laplacian smoothing splines", 1989, applied to
  ``T^T T``).

Per-unit input gradients of the hidden pre-activations come from forward-mode ``jvp`` over the
input basis directions, one chunk of directions at a time.
"""

from __future__ import annotations

import math
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

from .closed_form import LocalLinearPiece
from .preactivations import preactivation_runner

logger = logging.getLogger(__name__)

# Bytes per (sample, direction) item are estimated as this many copies of K * P values: the
# parameter gradients, their tangents and the squares reduced from them.
_COPIES_PER_ITEM = 6


@torch.no_grad()
def generic_tangent_sensitivity(
    model: nn.Module,
    x: Tensor,
    *,
    exact: bool,
    probes: int,
    generator: torch.Generator | None,
    memory_budget: int,
) -> tuple[Tensor, Tensor | None]:
    """Return the tangent sensitivity ``(N, K)`` and, for Hutchinson, its standard error ``(N, K)``.

    Args:
        model: an eager module, or a scripted ``Sequential`` of standard layers.
        x: inputs ``(N, ...)``.
        exact: sum over all ``d`` input directions instead of drawing ``probes`` Gaussian ones.
        probes: number ``S`` of Gaussian probes per sample for the Hutchinson estimate.
        generator: source of the probes, on any device; the global CPU generator when ``None``.
        memory_budget: bytes that one vectorized chunk of (sample, direction) items may use.
    """
    draw_device = generator.device if generator is not None else torch.device("cpu")
    if isinstance(model, torch.jit.ScriptModule) and _rebuild_scripted(model) is None:
        return _scripted_tangent_sensitivity(model, x, exact=exact, probes=probes, generator=generator)
    module = eager_equivalent(model, x)
    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = {name: b.detach() for name, b in module.named_buffers()}
    with torch.no_grad():
        num_classes = module(x[:1]).shape[1]
    identity = torch.eye(num_classes, dtype=x.dtype, device=x.device)
    sample_shape = x.shape[1:]
    d = math.prod(sample_shape)

    def squared_norms(sample: Tensor, direction: Tensor) -> Tensor:
        """Return ``||T_k u||^2`` for every output ``k`` at one sample, ``(K,)``."""

        def parameter_gradients(inputs: Tensor) -> dict[str, Tensor]:
            def logits(p: dict[str, Tensor]) -> Tensor:
                return functional_call(module, (p, buffers), (inputs.unsqueeze(0),)).squeeze(0)

            pullback = vjp(logits, params)[1]
            return vmap(pullback)(identity)[0]  # each (K, *parameter shape)

        tangents = jvp(parameter_gradients, (sample,), (direction,))[1]
        return sum(t.reshape(num_classes, -1).square().sum(dim=1) for t in tangents.values())

    per_direction = vmap(squared_norms, in_dims=(None, 0))
    per_sample = vmap(per_direction, in_dims=(0, 0))

    num_parameters = sum(p.numel() for p in params.values())
    item_bytes = _COPIES_PER_ITEM * x.element_size() * num_classes * (num_parameters + d)
    items_per_chunk = max(1, memory_budget // item_bytes)
    num_directions = d if exact else probes

    results = []
    for start in range(0, x.shape[0], max(1, items_per_chunk // num_directions)):
        samples = x[start:start + max(1, items_per_chunk // num_directions)]
        if exact:
            directions = torch.eye(d, dtype=x.dtype, device=x.device).reshape(d, *sample_shape)
            directions = directions.expand(samples.shape[0], *directions.shape)
        else:
            # Drawn where the generator lives (the CPU by default), so that a seed gives the same
            # probes whichever device x is on.
            directions = torch.randn(
                samples.shape[0], probes, *sample_shape, generator=generator, dtype=x.dtype, device=draw_device
            ).to(x.device)
        chunks = [
            per_sample(samples, directions[:, begin:begin + items_per_chunk])
            for begin in range(0, num_directions, items_per_chunk)
        ]
        results.append(torch.cat(chunks, dim=1))  # (n, directions, K)
    return _summarize_squared_norms(torch.cat(results), exact=exact, probes=probes)


def _summarize_squared_norms(squared: Tensor, *, exact: bool, probes: int) -> tuple[Tensor, Tensor | None]:
    """Turn squared norms ``||T_k u||^2`` of shape ``(N, directions, K)`` into TS and its standard error.

    With all ``d`` basis directions the sum is exact. With Gaussian probes the mean estimates
    ``||T_k||_F^2`` (Hutchinson), and the delta method gives the standard error of its square root.
    """
    if exact:
        return squared.sum(dim=1).sqrt(), None
    mean = squared.mean(dim=1)
    stderr_of_mean = squared.std(dim=1) / math.sqrt(probes) if probes > 1 else torch.full_like(mean, math.inf)
    ts = mean.sqrt()
    # Delta method: the standard error of sqrt(m) is se(m) / (2 sqrt(m)).
    stderr = torch.where(ts > 0, stderr_of_mean / (2 * ts), stderr_of_mean.sqrt())
    return ts, stderr


def _scripted_tangent_sensitivity(
    model: nn.Module, x: Tensor, *, exact: bool, probes: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor | None]:
    """Tangent sensitivity of a TorchScript module that torch.func cannot run, by double backward.

    ``T_k u = d/dtheta (grad_x f_k(x) . u)``, so each product is one backward pass through the
    graph of ``grad_x f_k`` built with ``create_graph=True``; the directions of one sample and
    output go through together as a batched backward (``is_grads_batched``), or one at a time
    where the scripted graph does not support that. This costs ``N * K`` graph builds and is
    much slower than the torch.func path, which is why it is used only for scripted modules
    that cannot be rebuilt in eager form.
    """
    parameters: list[Tensor] = list(model.parameters())
    flags = [parameter.requires_grad for parameter in parameters]
    try:
        for parameter in parameters:
            parameter.requires_grad_(True)
        # The optimized TorchScript executor builds differentiable subgraphs without double
        # backward; the plain interpreter records ordinary autograd nodes.
        with torch.jit.optimized_execution(False), torch.enable_grad():
            rows = _scripted_rows(model, x, parameters, exact=exact, probes=probes, generator=generator)
    finally:
        for parameter, flag in zip(parameters, flags):
            parameter.requires_grad_(flag)
    return _summarize_squared_norms(torch.stack(rows), exact=exact, probes=probes)  # rows: (directions, K) each


def _scripted_rows(
    model: nn.Module, x: Tensor, parameters: list[Tensor], *, exact: bool, probes: int, generator: torch.Generator | None
) -> list[Tensor]:
    """Return, per sample, the squared norms ``||T_k u||^2`` of every direction and output, ``(directions, K)``."""
    draw_device = generator.device if generator is not None else torch.device("cpu")
    sample_shape = x.shape[1:]
    d = math.prod(sample_shape)
    rows: list[Tensor] = []
    for sample in x:
        point = sample.unsqueeze(0).detach().requires_grad_(True)
        logits = model(point)  # (1, K)
        if exact:
            directions = torch.eye(d, dtype=x.dtype, device=x.device).reshape(d, 1, *sample_shape)
        else:
            directions = torch.randn(
                probes, 1, *sample_shape, generator=generator, dtype=x.dtype, device=draw_device
            ).to(x.device)
        per_output = []
        for k in range(logits.shape[1]):
            (gradient,) = torch.autograd.grad(logits[0, k], point, create_graph=True, retain_graph=True)
            per_output.append(_squared_products(gradient, parameters, directions))  # (directions,)
        rows.append(torch.stack(per_output, dim=1).detach())  # (directions, K)
    return rows


def _squared_products(gradient: Tensor, parameters: list[Tensor], directions: Tensor) -> Tensor:
    """Return ``||d/dtheta (gradient . u)||^2`` for each direction ``u`` in ``directions``, ``(S,)``."""
    try:
        products = torch.autograd.grad(
            gradient, parameters, grad_outputs=directions, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        return sum((p.reshape(p.shape[0], -1).square().sum(dim=1) for p in products if p is not None),
                   torch.zeros(directions.shape[0], dtype=gradient.dtype, device=gradient.device))
    except RuntimeError:
        values = []
        for direction in directions:
            single = torch.autograd.grad(gradient, parameters, grad_outputs=direction, retain_graph=True, allow_unused=True)
            values.append(sum((p.square().sum() for p in single if p is not None),
                              torch.zeros((), dtype=gradient.dtype, device=gradient.device)))
        return torch.stack(values)


@torch.no_grad()
def generic_analysis(model: nn.Module, x: Tensor, *, memory_budget: int) -> LocalLinearPiece:
    """Return the local linear piece at ``x`` with per-unit gradients from forward-mode ``jvp``.

    Column ``m`` of every Jacobian comes from one ``jvp`` along basis direction ``e_m``, shared
    by all samples because samples do not interact in eval mode. Only the L2 and L1 norms of
    each unit's gradient are kept, accumulated over chunks of directions.
    """
    runner = preactivation_runner(model)
    with torch.no_grad():
        logits, preactivations = runner(x)
    n, num_classes = logits.shape
    sample_shape = x.shape[1:]
    d = math.prod(sample_shape)

    values_per_direction = n * (num_classes + sum(z.shape[1] for z in preactivations) + 4 * d)
    chunk = max(1, memory_budget // (4 * x.element_size() * values_per_direction))

    def column(direction: Tensor) -> tuple[Tensor, list[Tensor]]:
        logit_tangent, unit_tangents = jvp(runner, (x,), (direction.expand_as(x),))[1]
        return logit_tangent, unit_tangents

    l2_squared = [torch.zeros_like(z) for z in preactivations]
    l1 = [torch.zeros_like(z) for z in preactivations]
    columns = []
    basis = torch.eye(d, dtype=x.dtype, device=x.device).reshape(d, *sample_shape)
    for start in range(0, d, chunk):
        logit_columns, unit_columns = vmap(column)(basis[start:start + chunk])  # (c, n, K), (c, n, n_l)
        columns.append(logit_columns)
        for index, unit_column in enumerate(unit_columns):
            l2_squared[index] += unit_column.square().sum(dim=0)
            l1[index] += unit_column.abs().sum(dim=0)
    input_jacobian = torch.cat(columns).permute(1, 2, 0)  # (n, K, d)
    return LocalLinearPiece(logits, preactivations, [v.sqrt() for v in l2_squared], l1, input_jacobian)


def eager_equivalent(model: nn.Module, x: Tensor) -> nn.Module:
    """Return ``model`` itself when it is eager, or an eager copy of a scripted ``Sequential``.

    ``torch.func.functional_call`` cannot swap the parameters of a TorchScript module, so a
    scripted ``Sequential`` of standard layers is rebuilt in eager form with the same weights
    and checked to give the same logits on ``x``.

    Raises:
        ValueError: for a scripted module that cannot be rebuilt.
    """
    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    if not isinstance(model, torch.jit.ScriptModule):
        return model
    rebuilt = _rebuild_scripted(model)
    if rebuilt is not None:
        with torch.no_grad():
            if torch.allclose(rebuilt(x), model(x), rtol=1e-6, atol=1e-6):
                return rebuilt
    raise ValueError(
        f"Expected an eager module or a TorchScript Sequential of standard layers for tangent sensitivity, "
        f"but got a scripted {getattr(model, 'original_name', type(model).__name__)!r} that could not be "
        "rebuilt. Pass the eager module instead."
    )


_REBUILDERS: dict[str, Callable[[Any], nn.Module]] = {
    "Linear": lambda m: nn.Linear(m.in_features, m.out_features, bias=m.bias is not None),
    "Conv1d": lambda m: nn.Conv1d(
        m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
        m.bias is not None, m.padding_mode,
    ),
    "Conv2d": lambda m: nn.Conv2d(
        m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
        m.bias is not None, m.padding_mode,
    ),
    "ReLU": lambda m: nn.ReLU(),
    "LeakyReLU": lambda m: nn.LeakyReLU(m.negative_slope),
    "Flatten": lambda m: nn.Flatten(m.start_dim, m.end_dim),
    "Identity": lambda m: nn.Identity(),
    "Dropout": lambda m: nn.Dropout(m.p),
    "MaxPool2d": lambda m: nn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode),
    "AvgPool2d": lambda m: nn.AvgPool2d(
        m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override
    ),
    "BatchNorm1d": lambda m: nn.BatchNorm1d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats),
    "BatchNorm2d": lambda m: nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats),
}


def _rebuild_scripted(module: nn.Module) -> nn.Module | None:
    kind = str(getattr(module, "original_name", ""))
    if kind == "Sequential":
        children = [_rebuild_scripted(child) for child in module.children()]
        if any(child is None for child in children):
            return None
        return nn.Sequential(*children).train(module.training)  # type: ignore[arg-type]
    rebuild = _REBUILDERS.get(kind)
    if rebuild is None:
        return None
    state = module.state_dict()
    try:
        rebuilt = rebuild(module)
        floating = [value for value in state.values() if value.is_floating_point()]
        if floating:
            rebuilt = rebuilt.to(dtype=floating[0].dtype, device=floating[0].device)
        rebuilt.load_state_dict(state)
    except (AttributeError, RuntimeError, TypeError) as error:
        logger.info("Could not rebuild a scripted %s in eager form: %s", kind, error)
        return None
    return rebuilt.train(module.training)
