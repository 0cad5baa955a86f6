"""Benchmarks of the geometry stage; every line is a ratio measured side by side in one run.

Run ``python benchmarks/bench_geometry.py`` (about five minutes on two shared CPU cores, most of it in the baseline) or add
``--quick`` for a smaller run. Measurements:

1. closed-form tangent sensitivity of all outputs on a 784-256-256-256-10 ReLU MLP (float32,
   64 samples) against the straightforward forward-over-reverse ``torch.func`` computation of
   the full tangent matrix ``d/dx grad_theta f``; the baseline runs on a few samples and its
   time is scaled linearly to 64, because one sample costs ``d * K`` forward-over-reverse
   products;
2. achieved FLOP/s of the closed form against a plain matmul of the same shape;
3. the Hutchinson estimator on a small CNN: relative error and time against the exact sum;
4. closed-form region distances against one autograd pass per hidden unit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from robusteval.geometry import estimate_tangent_sensitivity, hidden_preactivations, local_linear_analysis, recover_chain
from robusteval.geometry.closed_form import chain_analysis
from robusteval.geometry.generic import generic_tangent_sensitivity


def _seconds(function: Callable[[], object], repeats: int) -> float:
    """Return the best wall time of ``repeats`` calls, after one warm-up call."""
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10),
    ).eval()


def bench_closed_form(quick: bool, baseline_directions: int | None = None) -> dict[str, float]:
    """Print and return the closed form's speed-up over torch.func and its share of matmul FLOP/s.

    With ``baseline_directions``, the baseline runs the same forward-over-reverse products along
    that many Gaussian directions of one sample instead of all 784 basis directions, and its
    time is scaled by ``784 / baseline_directions``. Each direction costs the same, so this
    estimates the full time in a fraction of it, without the accuracy check.
    """
    model, x = _mlp(), torch.rand(64, 784)
    chain = recover_chain(model, x)
    assert chain is not None
    closed = _seconds(lambda: chain_analysis(chain, x, memory_budget=2**31), repeats=3)

    baseline_samples = 1 if quick or baseline_directions is not None else 2
    # One small warm-up call, so that the timed call does not pay torch.func's first-call setup,
    # which doubled the time of the short quick-mode baseline.
    generic_tangent_sensitivity(model, x[:1], exact=False, probes=2, generator=None, memory_budget=2**30)
    start = time.perf_counter()
    reference, _ = generic_tangent_sensitivity(
        model, x[:baseline_samples], exact=baseline_directions is None, probes=baseline_directions or 2,
        generator=None, memory_budget=2**30,
    )
    baseline = (time.perf_counter() - start) * x.shape[0] / baseline_samples
    scaled_from = f"{baseline_samples}"
    error = float("nan")
    if baseline_directions is None:
        _, values = chain_analysis(chain, x[:baseline_samples], memory_budget=2**31)
        error = ((values - reference).abs().max() / reference.abs().max()).item()
    else:
        baseline *= x.shape[1] / baseline_directions
        scaled_from = f"{baseline_samples}, {baseline_directions} of {x.shape[1]} directions"
    print(
        f"closed-form TS, 784-256-256-256-10 float32, 64 samples: {closed * 1e3:.1f} ms; torch.func "
        f"forward-over-reverse: {baseline:.1f} s (scaled from {scaled_from}); speed-up "
        f"{baseline / closed:.0f}x (target >= 100x); max relative difference {error:.1e}"
    )

    # Floating-point operations of the Jacobian products G_l = W_l J_{l-1} for l >= 2, which
    # dominate: 2 * N * n_l * n_{l-1} * d each.
    n, d = x.shape
    widths = [layer.weight.shape[0] for layer in chain.layers]
    flops = sum(2 * n * widths[i] * widths[i - 1] * d for i in range(1, len(widths)))
    weight, jacobian = torch.randn(256, 256), torch.randn(256, n * d)
    # The product goes into one buffer written before timing, so that the reference pays no page
    # faults. With a fresh 51 MB output per call, the closed form measured up to 115% of it.
    product = weight @ jacobian
    matmul = _seconds(lambda: torch.mm(weight, jacobian, out=product), repeats=3)
    matmul_rate = 2 * 256 * 256 * n * d / matmul
    print(
        f"closed-form TS achieved {flops / closed / 1e9:.1f} GFLOP/s against {matmul_rate / 1e9:.1f} GFLOP/s "
        f"for a 256x256 @ 256x{n * d} matmul: {100 * flops / closed / matmul_rate:.0f}% (target >= 30%)"
    )
    return {
        "closed_seconds": closed, "baseline_seconds": baseline, "speedup": baseline / closed,
        "max_relative_difference": error, "gflops": flops / closed / 1e9, "matmul_gflops": matmul_rate / 1e9,
        "matmul_fraction": flops / closed / matmul_rate,
    }


def bench_hutchinson(quick: bool) -> dict[int, dict[str, float]]:
    """Print and return, per probe count, the Hutchinson estimate's error and its time relative to exact."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    ).eval()
    x = torch.rand(4 if quick else 8, 1, 16, 16)
    start = time.perf_counter()
    exact = estimate_tangent_sensitivity(model, x, method="exact").values
    exact_time = time.perf_counter() - start
    measured = {}
    for probes in (8, 32) if quick else (8, 32, 128):
        start = time.perf_counter()
        estimate = estimate_tangent_sensitivity(
            model, x, method="hutchinson", probes=probes, generator=torch.Generator().manual_seed(0)
        )
        elapsed = time.perf_counter() - start
        error = ((estimate.values - exact).abs() / exact).mean().item()
        assert estimate.stderr is not None
        reported = (estimate.stderr / exact).mean().item()
        print(
            f"Hutchinson TS on a small CNN (d=256), {probes} probes: mean relative error {error:.3f} "
            f"(reported standard error {reported:.3f}), time {elapsed / exact_time:.2f}x of exact ({exact_time:.2f} s)"
        )
        measured[probes] = {
            "mean_relative_error": error, "reported_standard_error": reported,
            "time_fraction": elapsed / exact_time, "exact_seconds": exact_time, "samples": float(x.shape[0]),
        }
    return measured


def bench_region_distance(quick: bool) -> dict[str, float]:
    """Print and return the time of the full local linear analysis against one autograd pass per unit."""
    model = _mlp()
    x = torch.rand(16 if quick else 64, 784)
    closed = _seconds(lambda: local_linear_analysis(model, x, bounds=None), repeats=1)

    def per_unit() -> None:
        inputs = x.clone().requires_grad_(True)
        z = torch.cat(hidden_preactivations(model, inputs), dim=1)
        for unit in range(z.shape[1]):
            torch.autograd.grad(z[:, unit].sum(), inputs, retain_graph=True)

    autograd = _seconds(per_unit, repeats=1)
    print(
        f"region distances, 768 hidden units, {x.shape[0]} samples: full local linear analysis "
        f"{closed * 1e3:.0f} ms against {autograd * 1e3:.0f} ms for one autograd pass per unit "
        f"({autograd / closed:.1f}x)"
    )
    return {"closed_seconds": closed, "autograd_seconds": autograd, "speedup": autograd / closed, "samples": float(x.shape[0])}


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and probes, for a smoke test")
    arguments = parser.parse_args(argv)
    torch.manual_seed(0)
    bench_closed_form(arguments.quick)
    bench_hutchinson(arguments.quick)
    bench_region_distance(arguments.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
