"""Exact count of the activation regions a straight segment passes through.

Along the segment x + t (x_adv - x), t in [0, 1], every hidden pre-activation z_i(t) is
piecewise linear in t, and the activation pattern changes exactly where some z_i changes sign.
Activation regions are convex, so the segment enters each region at most once and the count is
1 plus the number of distinct parameters t in (0, 1) at which the pattern changes.

Two exact methods find those parameters, both in float64:

* For a fully connected ReLU chain (:func:`robusteval.geometry.recover_chain`), layer by layer.
  The first layer's pre-activations are affine in t on the whole segment, so their zeros follow
  at once. Between consecutive zeros of layers 1..l every layer up to l keeps its pattern, so
  z_{l+1} is affine on each such piece: its values at the piece ends locate its zeros, and
  linear interpolation gives its values there. All segments and all units of a layer are
  handled by a few batched tensor operations, with no loop over crossings.
* For any other ReLU network, a walk: one forward-mode product (jvp) in the direction
  x_adv - x gives the slopes dz_i/dt in the current region, the next boundary is at the
  smallest step s > 0 with z_i + s dz_i = 0, and the walk steps just past it and repeats until
  t reaches 1. It needs one jvp per crossing of the longest segment.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jvp

from ..geometry import LinearLayer, preactivation_runner, recover_chain
from ..geometry.preactivations import PreactivationRunner
from ..modes import set_eval_mode

logger = logging.getLogger(__name__)

# Crossings closer than this in t (the segment is t in [0, 1]) count as one. NOTE: the jvp walk
# steps this far past each boundary and skips any other boundary inside that step, and the
# chain method merges a run of crossings whose consecutive gaps are all within it, so the two
# can differ on boundaries closer together than 1e-9.
STEP_MARGIN = 1e-9

MAX_STEPS = 100_000

# Float64 elements of one (points, units) matrix of the chain method: 2**21 is 16 MiB. Segments
# are processed in groups sized from the points per segment seen so far, starting from the
# guess below. NOTE: a group's points grow with its crossings while it is processed, so this
# sizes the groups but does not bound the peak of one group.
CHUNK_ELEMENTS = 2**21
INITIAL_POINTS_PER_SEGMENT = 64.0


def float64_copy(model: nn.Module) -> nn.Module:
    """Return a float64 copy of ``model`` in eval mode, for computations that float32 rounding would spoil.

    Raises:
        RuntimeError: when the copy cannot be converted, for example a module that casts to a
            fixed dtype inside its own forward.
    """
    with warnings.catch_warnings():
        # Converting a copied TorchScript module reads the .grad of parameters that torch 2.13
        # reports as non-leaf tensors. The copy never uses gradients, so the warning is noise.
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf", category=UserWarning)
        # Copying a torch.export module runs torch 2.13 code that warns about its own pytree API.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
        converted = copy.deepcopy(model).to(torch.float64)
    set_eval_mode(converted)
    return converted


class RegionWalker:
    """A model prepared for counting regions crossed: its float64 copy, made once.

    Build one per model and reuse it across blocks, because copying and converting the model is
    a large part of the cost of a short walk. The walker copies the weights when it is built,
    so later in-place changes to ``model`` are not seen.

    Args:
        model: ReLU network in eval mode whose ReLUs
            :func:`robusteval.geometry.preactivation_runner` can locate.
        x: ``(N, ...)`` sample inputs, used to check that a fully connected chain read from
            ``model`` reproduces its logits.
        float64_model: a float64 copy of ``model`` already at hand, from :func:`float64_copy`,
            used instead of making another one when ``model`` is not a fully connected chain.

    Raises:
        ValueError: when the model's ReLUs cannot be located.
    """

    def __init__(self, model: nn.Module, x: Tensor, *, float64_model: nn.Module | None = None) -> None:
        chain = recover_chain(model, x)
        self._layers: tuple[LinearLayer, ...] | None = None
        self._runner: PreactivationRunner | None = None
        if chain is not None:
            self._layers = tuple(
                LinearLayer(
                    layer.weight.detach().to(torch.float64),
                    None if layer.bias is None else layer.bias.detach().to(torch.float64),
                    layer.relu_after,
                )
                for layer in chain.layers
            )
            return
        self._runner = preactivation_runner(float64_model if float64_model is not None else float64_copy(model))

    @property
    def method(self) -> str:
        """``"chain"`` for the layer-by-layer method, ``"jvp"`` for the walk."""
        return "chain" if self._layers is not None else "jvp"

    def count(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Count the activation regions met on each segment from ``x[n]`` to ``x_adv[n]``.

        Args:
            x: ``(N, ...)`` start points.
            x_adv: ``(N, ...)`` end points, for example adversarial examples.

        Returns:
            ``(N,)`` int64 number of regions the segment passes through, counting the regions
            of both ends: 1 when ``x_adv[n]`` lies in the activation region of ``x[n]``.

        Raises:
            ValueError: when the shapes differ.
        """
        if x.shape != x_adv.shape:
            raise ValueError(
                f"Expected x and x_adv of the same shape, but got {tuple(x.shape)} and {tuple(x_adv.shape)}."
            )
        start = x.detach().to(torch.float64)
        direction = x_adv.detach().to(torch.float64) - start
        if self._layers is not None:
            return _count_on_chain(self._layers, start.flatten(1), direction.flatten(1))
        assert self._runner is not None  # set whenever the model is not a chain
        return _walk_with_jvp(self._runner, start, direction)


def count_regions_crossed(model: nn.Module, x: Tensor, x_adv: Tensor) -> Tensor:
    """Count the activation regions met on each segment from ``x[n]`` to ``x_adv[n]``.

    Builds a :class:`RegionWalker` for this one call; build one yourself to count many batches.

    Args:
        model: ReLU network in eval mode whose ReLUs
            :func:`robusteval.geometry.preactivation_runner` can locate.
        x: ``(N, ...)`` start points.
        x_adv: ``(N, ...)`` end points, for example adversarial examples.

    Returns:
        ``(N,)`` int64 number of regions the segment passes through, counting the regions of
        both ends: 1 when ``x_adv[n]`` lies in the activation region of ``x[n]``.

    Raises:
        ValueError: when shapes differ or the model's ReLUs cannot be located.
    """
    if x.shape != x_adv.shape:
        raise ValueError(
            f"Expected x and x_adv of the same shape, but got {tuple(x.shape)} and {tuple(x_adv.shape)}."
        )
    return RegionWalker(model, x).count(x, x_adv)


def _count_on_chain(layers: tuple[LinearLayer, ...], start: Tensor, direction: Tensor) -> Tensor:
    """Count regions on ``(N, d)`` segments of a chain, in groups of segments sized by ``CHUNK_ELEMENTS``."""
    total = start.shape[0]
    width = max(int(layer.weight.shape[0]) for layer in layers)
    counts = torch.ones(total, dtype=torch.int64, device=start.device)
    points_per_segment = INITIAL_POINTS_PER_SEGMENT
    first = 0
    while first < total:
        rows = max(1, int(CHUNK_ELEMENTS / (points_per_segment * width)))
        stop = min(first + rows, total)
        counts[first:stop], points = _count_chain_group(layers, start[first:stop], direction[first:stop])
        points_per_segment = max(points_per_segment, points / (stop - first))
        first = stop
    return counts


def _count_chain_group(layers: tuple[LinearLayer, ...], start: Tensor, direction: Tensor) -> tuple[Tensor, int]:
    """Return the ``(N,)`` region counts of one group of segments and the number of points it used.

    The points are kept as flat ``(M,)`` tensors of segment index and parameter t, sorted by
    segment and then by t, with each layer's values at every point as ``(M, n_l)``.
    """
    count = start.shape[0]
    device = start.device
    segment = torch.arange(count, device=device).repeat_interleave(2)  # (M,)
    times = torch.tensor([0.0, 1.0], dtype=torch.float64, device=device).repeat(count)  # (M,)

    hidden: Tensor | None = None
    for layer in layers:
        if hidden is None:
            # The first layer is affine in t on the whole segment: z(t) = W x + b + t W (x_adv - x).
            offset = F.linear(start, layer.weight, layer.bias)  # (N, n_1)
            slope = F.linear(direction, layer.weight)
            values = offset[segment] + times[:, None] * slope[segment]
        else:
            values = F.linear(hidden, layer.weight, layer.bias)  # (M, n_l)
        if layer.relu_after:
            segment, times, values = _insert_zeros(segment, times, values)
            hidden = torch.relu(values)
        else:
            hidden = values

    interior = (times > 0) & (times < 1)
    separated = torch.ones_like(interior)
    separated[1:] = (times[1:] - times[:-1] > STEP_MARGIN) | (segment[1:] != segment[:-1])
    crossings = torch.zeros(count, dtype=torch.int64, device=device)
    crossings.index_add_(0, segment, (interior & separated).to(torch.int64))
    return crossings + 1, int(times.numel())


def _insert_zeros(segment: Tensor, times: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Add the points where a unit of ``values`` changes sign between two consecutive points.

    ``values`` ``(M, n)`` must be affine in t between consecutive points of a segment, so a
    unit changes sign at most once there, at the zero of the line through both ends.
    """
    active = values > 0
    same_segment = segment[1:] == segment[:-1]  # (M - 1,)
    changed = (active[1:] != active[:-1]) & same_segment[:, None]  # (M - 1, n)
    pair, unit = torch.nonzero(changed, as_tuple=True)
    if pair.numel() == 0:
        return segment, times, values

    left, right = values[pair], values[pair + 1]  # (C, n)
    left_unit, right_unit = left[torch.arange(len(unit)), unit], right[torch.arange(len(unit)), unit]
    # The unit's sign differs at the two ends, so left_unit != right_unit and fraction is in [0, 1].
    fraction = left_unit / (left_unit - right_unit)  # (C,)
    new_times = times[pair] + fraction * (times[pair + 1] - times[pair])
    new_values = left + fraction[:, None] * (right - left)

    segment = torch.cat([segment, segment[pair]])
    times = torch.cat([times, new_times])
    values = torch.cat([values, new_values])
    order = torch.argsort(times, stable=True)
    order = order[torch.argsort(segment[order], stable=True)]
    return segment[order], times[order], values[order]


def _walk_with_jvp(runner: PreactivationRunner, start: Tensor, direction: Tensor) -> Tensor:
    """Count regions by stepping from boundary to boundary, one jvp per step for all unfinished rows."""
    count = start.shape[0]
    device = start.device
    position = torch.zeros(count, dtype=torch.float64, device=device)  # t along each segment
    regions = torch.ones(count, dtype=torch.int64, device=device)
    unfinished = torch.ones(count, dtype=torch.bool, device=device)

    for _ in range(MAX_STEPS):
        rows = torch.nonzero(unfinished).flatten()
        if rows.numel() == 0:
            break
        times = position[rows].reshape(-1, *([1] * (start.dim() - 1)))
        point = start[rows] + times * direction[rows]
        primals, tangents = jvp(runner, (point,), (direction[rows],))[:2]
        values, slopes = primals[1], tangents[1]
        if not values:
            break
        value = torch.cat(values, dim=1)  # (n, U) pre-activations at the current point
        slope = torch.cat(slopes, dim=1)  # (n, U) their derivatives in t
        with torch.no_grad():
            steps = -value / slope
            steps = torch.where((slope != 0) & (steps > 0), steps, torch.full_like(steps, float("inf")))
            nearest = steps.min(dim=1).values  # (n,)
            crossing = position[rows] + nearest < 1.0
            advanced = rows[crossing]
            position[advanced] += nearest[crossing] + STEP_MARGIN
            regions[advanced] += 1
            unfinished[rows[~crossing]] = False
            unfinished &= position < 1.0
    else:
        warnings.warn(
            f"The region walk stopped after {MAX_STEPS} boundary crossings on "
            f"{int(unfinished.sum())} segments; their counts are lower bounds.",
            stacklevel=3,
        )
    return regions
