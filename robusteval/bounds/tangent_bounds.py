"""Upper bounds on tangent sensitivity of fully connected ReLU chains.

The bounds follow the program of B. Daroczy, "Tangent Space Sensitivity and Distribution of
Linear Regions in ReLU Networks" (arXiv 2006.06780): a simple bound from the product over layers
of the largest absolute weight, and data-dependent bounds from the number of active units per
layer. NOTE: the paper's text was not available while this module was written, so the constants
below are derived here from the closed form and may differ from the paper's.

Derivation. On an activation region TS_k(x)^2 = sum_{l=1}^{L} ||delta_l||^2 ||J_{l-1}||_F^2
(see :func:`robusteval.bounds.relu_chain.evaluate_chain`). Let m_l = max |W_l| and c_l the
number of units of hidden layer l that may be nonzero: the width n_l, or the active count a_l(x).

* ``J_j[a, b]`` (j >= 1) is a sum over paths from input b to unit a through one unit of each
  hidden layer 1..j-1, of products of j weights. At most ``c_1 ... c_{j-1}`` paths pass only
  through units that can be active, and only c_j rows are nonzero, so
  ``||J_j||_F^2 <= n_0 c_j (c_1 ... c_{j-1})^2 (m_1 ... m_j)^2``, and ``||J_0||_F^2 = n_0``.
* ``delta_l[a]`` (l < L) is likewise a sum over ``c_{l+1} ... c_{L-1}`` paths from unit a to
  output k, of products of L - l weights, and only c_l entries are nonzero, so
  ``||delta_l||^2 <= c_l (c_{l+1} ... c_{L-1})^2 (m_{l+1} ... m_L)^2``, and ``||delta_L|| = 1``.

Each term lacks exactly the factor m_l, so with M = m_1 ... m_L

    TS_k(x)^2 <= sum_l (M / m_l)^2 A_l B_l,
    A_1 = n_0,  A_l = n_0 c_{l-1} (c_1 ... c_{l-2})^2,  B_L = 1,  B_l = c_l (c_{l+1} ... c_{L-1})^2.

Every inequality is an equality when all weights equal m_l > 0, biases are zero and the input is
positive (every unit active), so the width constant cannot be lowered. A bound of the form
``constant * M`` alone cannot hold: scaling W_1 by s and W_2 by 1/s keeps f and M fixed while
TS grows without limit as s grows, because the W_2-gradient term scales with ||J_1||_F^2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .relu_chain import ReluChain


def largest_absolute_weights(chain: ReluChain) -> np.ndarray:
    """Return ``(L,)`` float64 m_l = max |W_l| for each weight layer."""
    return np.array([float(weight.abs().max()) for weight in chain.weights], dtype=np.float64)


def layerwise_norm_sensitivity(chain: ReluChain) -> float:
    """Return log(m_1 ... m_L), the log of the product of the largest absolute weights.

    ``-inf`` when some layer is all zeros.
    """
    maxima = largest_absolute_weights(chain)
    with np.errstate(divide="ignore"):
        return float(np.log(maxima).sum())


def _products_without_each_layer(maxima: np.ndarray) -> np.ndarray:
    """Return ``(L,)`` prod_{i != l} m_i, computed without dividing so zero weights are safe."""
    depth = len(maxima)
    return np.array([np.prod(np.delete(maxima, layer)) for layer in range(depth)], dtype=np.float64)


def path_count_bound(maxima: np.ndarray, input_size: int, counts: np.ndarray) -> np.ndarray:
    """Evaluate the bound sqrt(sum_l (M / m_l)^2 A_l B_l) of the module docstring.

    Args:
        maxima: ``(L,)`` largest absolute weight per layer.
        input_size: n_0.
        counts: ``(N, L-1)`` or ``(L-1,)`` units per hidden layer that may be nonzero (widths
            or active counts).

    Returns:
        ``(N,)`` or scalar-shaped ``()`` float64 upper bound on TS_k for every k.
    """
    counts = np.asarray(counts, dtype=np.float64)
    depth = len(maxima)
    if counts.shape[-1] != depth - 1:
        raise ValueError(
            f"Expected {depth - 1} hidden-layer counts for a chain of {depth} weight layers, "
            f"but got {counts.shape[-1]}."
        )
    others = _products_without_each_layer(maxima)
    ones = np.ones(counts.shape[:-1], dtype=np.float64)

    def product(first: int, last: int) -> np.ndarray:
        """prod_{i=first}^{last} c_i over hidden layers (1-based), 1 when empty."""
        if last < first:
            return ones
        return np.prod(counts[..., first - 1 : last], axis=-1)

    total = np.zeros(counts.shape[:-1], dtype=np.float64)
    for layer in range(1, depth + 1):
        if layer == 1:
            a_term = input_size * ones
        else:
            a_term = input_size * counts[..., layer - 2] * product(1, layer - 2) ** 2
        if layer == depth:
            b_term = ones
        else:
            b_term = counts[..., layer - 1] * product(layer + 1, depth - 1) ** 2
        total = total + others[layer - 1] ** 2 * a_term * b_term
    return np.sqrt(total)


def width_bound(chain: ReluChain) -> float:
    """Return the input-free upper bound on TS_k(x), valid for every input and every k.

    Uses the layer widths as path counts (module docstring), so it depends only on the weights.
    """
    widths = np.array(chain.widths[1:-1], dtype=np.float64)
    return float(path_count_bound(largest_absolute_weights(chain), chain.widths[0], widths))


def active_count_bound(chain: ReluChain, active_units: np.ndarray) -> np.ndarray:
    """Return the per-sample upper bound on TS_k(x) from the active units per hidden layer.

    Args:
        chain: The network's weights.
        active_units: ``(N, L-1)`` number of active ReLU units per hidden layer at each sample.

    Returns:
        ``(N,)`` float64; each entry bounds TS_k at that sample for every k.
    """
    active = np.asarray(active_units, dtype=np.float64)
    if active.ndim != 2:
        raise ValueError(f"Expected active unit counts of shape (N, L-1), but got shape {active.shape}.")
    return path_count_bound(largest_absolute_weights(chain), chain.widths[0], active)


def total_count_exponent(depth: int) -> float:
    """Return v = L - 3/2, the power of the total active count S in :func:`total_count_bound`."""
    return depth - 1.5


def total_count_constant(chain: ReluChain) -> float:
    """Return C with TS_k(x) <= C S(x)^(L - 3/2), S(x) the total number of active units.

    Replacing every active count a_l by S >= a_l in the path-count bound leaves n_0 times a
    power of S in each term: 2L - 3 for the first and last layer, 2L - 4 for the others, and
    S^(2L-4) <= S^(2L-3) because S is a nonnegative integer (both sides vanish at S = 0, since
    every term contains some a_l). So C^2 = n_0 sum_l prod_{i != l} m_i^2. Needs L >= 2.
    """
    if chain.depth < 2:
        raise ValueError("Expected a chain with at least one hidden layer, but got a single Linear layer.")
    others = _products_without_each_layer(largest_absolute_weights(chain))
    return math.sqrt(chain.widths[0] * float(np.sum(others**2)))


def total_count_bound(chain: ReluChain, total_active: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return the per-sample bound C S^(L - 3/2) of :func:`total_count_constant`, shape ``(N,)``."""
    totals = np.asarray(total_active, dtype=np.float64)
    return total_count_constant(chain) * np.power(totals, total_count_exponent(chain.depth))
