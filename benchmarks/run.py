"""Run robusteval's benchmarks and print one line per measurement: ratio, target, PASS or FAIL.

Every ratio compares two computations measured side by side in the same run, so that load from
other processes affects both sides alike. Usage::

    python benchmarks/run.py            # full run: geometry, pipeline, memory (4.5 minutes on 2 idle cores)
    python benchmarks/run.py --quick    # smaller sizes, for a smoke test (about 20 seconds on 2 idle cores)
    python benchmarks/run.py --only pipeline --profile

Lines marked INFO have no target. The geometry measurements come from ``bench_geometry.py``,
the overhead of a full run from ``bench_pipeline.py`` and the peak memory from
``bench_memory.py``. Each of these scripts also runs on its own. The exit status is 0 whether or not a
target fails, because a benchmark reports numbers; it is 1 only when a measurement raises.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# The benchmarks are scripts, not a package: make their modules importable.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_geometry  # noqa: E402
import bench_memory  # noqa: E402
import bench_pipeline  # noqa: E402
from _common import Measurement, load_average, machine_summary  # noqa: E402

GROUPS = ("geometry", "pipeline", "memory")
SPEEDUP_TARGET = 100.0
MATMUL_FRACTION_TARGET = 0.30
# In quick mode the torch.func baseline runs 49 of the 784 input directions (one sixteenth).
QUICK_BASELINE_DIRECTIONS = 49


def geometry_measurements(quick: bool, *, verbose: bool) -> list[Measurement]:
    """Run the geometry benchmarks and turn their numbers into measurement lines."""
    closed = _run_quietly(lambda: bench_geometry.bench_closed_form(
        quick, baseline_directions=QUICK_BASELINE_DIRECTIONS if quick else None), verbose)
    hutchinson = _run_quietly(lambda: bench_geometry.bench_hutchinson(quick), verbose)
    region = _run_quietly(lambda: bench_geometry.bench_region_distance(quick), verbose)
    load = load_average()

    baseline_note = (
        f"{QUICK_BASELINE_DIRECTIONS} of 784 directions of 1 sample, scaled" if quick else "2 samples, scaled to 64"
    )
    difference = closed["max_relative_difference"]
    checked = (
        "values not compared with torch.func in quick mode" if math.isnan(difference)
        else f"max relative difference from torch.func {difference:.1e}"
    )
    lines = [
        Measurement(
            "exact tangent sensitivity of all outputs, closed form against torch.func forward-over-reverse "
            "(784-256-256-256-10 MLP, float32, 64 samples)",
            closed["speedup"], "x", f">= {SPEEDUP_TARGET:g}x", closed["speedup"] >= SPEEDUP_TARGET,
            f"closed form {closed['closed_seconds'] * 1e3:.0f} ms, torch.func {closed['baseline_seconds']:.0f} s "
            f"({baseline_note}); {checked}; load {load}",
        ),
        Measurement(
            "achieved FLOP/s of the closed form against a 256x256 @ 256x50176 float32 matmul",
            100 * closed["matmul_fraction"], "%", f">= {100 * MATMUL_FRACTION_TARGET:g}%",
            closed["matmul_fraction"] >= MATMUL_FRACTION_TARGET,
            f"{closed['gflops']:.1f} GFLOP/s against {closed['matmul_gflops']:.1f} GFLOP/s; load {load}",
        ),
    ]
    for probes, numbers in hutchinson.items():
        lines.append(Measurement(
            f"Hutchinson estimator with {probes} probes on a small CNN (d=256), time as a fraction of the exact sum's",
            numbers["time_fraction"], "x", "", None,
            f"mean relative error against exact {numbers['mean_relative_error']:.3f}, reported standard error "
            f"{numbers['reported_standard_error']:.3f}; exact {numbers['exact_seconds']:.2f} s for "
            f"{numbers['samples']:.0f} samples",
        ))
    lines.append(Measurement(
        f"region distances of 768 hidden units, local linear analysis against one autograd pass per unit "
        f"({region['samples']:.0f} samples)",
        region["speedup"], "x", "", None,
        f"analysis {region['closed_seconds'] * 1e3:.0f} ms (all geometry, not only region distances), "
        f"autograd {region['autograd_seconds'] * 1e3:.0f} ms; load {load}",
    ))
    return lines


def _run_quietly(function: Callable[[], dict], verbose: bool) -> dict:
    """Call ``function``; show what it prints only when ``verbose``."""
    if verbose:
        return function()
    with contextlib.redirect_stdout(io.StringIO()):
        return function()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the requested benchmark groups and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats, for a smoke test")
    parser.add_argument("--only", action="append", choices=GROUPS, help="run only this group; repeatable")
    parser.add_argument("--budget", type=int, default=bench_memory.DEFAULT_BUDGET_MIB,
                        help="memory budget of the peak-memory target, in MiB")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary of one pipeline run")
    parser.add_argument("--verbose", action="store_true", help="also print the geometry benchmark's own lines")
    arguments = parser.parse_args(argv)
    groups = arguments.only or list(GROUPS)

    print(machine_summary(), flush=True)
    if "geometry" in groups:
        for measurement in geometry_measurements(arguments.quick, verbose=arguments.verbose):
            print(measurement.line(), flush=True)
    if "pipeline" in groups:
        for measurement in bench_pipeline.bench_pipeline(arguments.quick, profile=arguments.profile):
            print(measurement.line(), flush=True)
    if "memory" in groups:
        for measurement in bench_memory.bench_memory(arguments.quick, budget_mib=arguments.budget):
            print(measurement.line(), flush=True)
    print(f"load average at the end (1 min): {load_average()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
