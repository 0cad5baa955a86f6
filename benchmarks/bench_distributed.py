"""Wall time of one ``robusteval run`` in 1 process and in 2 gloo processes, and the speed-up.

Three configurations run the same command on the bundled demo model and the digits test split
(``--no-parameter-space --no-html --block-size 32``, seed 0):

* 1 process with ``OMP_NUM_THREADS=1``;
* 1 process with ``OMP_NUM_THREADS=2``, torch's intra-op threads being the other way to use
  a second core;
* 2 processes with ``--workers 2`` and ``OMP_NUM_THREADS=1`` each (torchrun's own default).

Each wall time includes starting Python, loading the model and data, and the model-level stages
that rank 0 runs alone after gathering. The configurations take turns, ``--repeats`` times, and
the best time of each counts, so that load from other processes hits all of them alike. The
script also checks that the 2-process results equal the 1-process ones sample for sample.

Usage::

    python benchmarks/bench_distributed.py                  # 256 samples
    python benchmarks/bench_distributed.py --samples 64     # a quicker look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple


class Configuration(NamedTuple):
    """One way to run the benchmark command: processes and intra-op threads per process."""

    name: str
    processes: int
    threads: int


class Timings(NamedTuple):
    """Best wall times per configuration, rank 0's stage times of those runs, and the ratios."""

    seconds: dict[str, float]
    rank0_stage_seconds: dict[str, dict[str, float]]
    speedup_over_1_thread: float
    speedup_over_2_threads: float
    max_relative_difference: float


# Blocks are the unit of sharding: 256 samples make 8 blocks, 4 per process.
BLOCK_SIZE = 32

CONFIGURATIONS = (
    Configuration("1 process, 1 thread", 1, 1),
    Configuration("1 process, 2 threads", 1, 2),
    Configuration("2 processes, 1 thread each", 2, 1),
)


def run_once(configuration: Configuration, samples: int, out_dir: Path) -> tuple[float, dict]:
    """Run ``robusteval run`` once and return its wall time in seconds and its results payload."""
    command = [sys.executable, "-m", "robusteval", "run", "--samples", str(samples), "--block-size", str(BLOCK_SIZE), "--seed", "0",
               "--no-parameter-space", "--no-html", "--out", str(out_dir), "--force"]
    if configuration.processes > 1:
        command += ["--workers", str(configuration.processes)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(configuration.threads)}
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{configuration.name} failed with exit code {completed.returncode}:\n{completed.stderr[-3000:]}")
    return seconds, json.loads((out_dir / "results.json").read_text())


def max_relative_difference(expected: dict, actual: dict) -> float:
    """Return the largest relative difference of the per-sample minimal adversarial distances.

    Raises:
        RuntimeError: the runs evaluated different samples or disagree on a prediction or on
            which samples an attack broke.
    """
    first, second = expected["samples"], actual["samples"]
    if [s["index"] for s in first] != [s["index"] for s in second]:
        raise RuntimeError("The runs evaluated different samples.")
    largest = 0.0
    for a, b in zip(first, second):
        if a["prediction"] != b["prediction"] or a["robust"] != b["robust"]:
            raise RuntimeError(f"Sample {a['index']} differs between the runs: {a['robust']} != {b['robust']}.")
        for norm in ("l2", "linf"):
            x, y = a["min_adversarial_distance"][norm], b["min_adversarial_distance"][norm]
            if (x is None) != (y is None):
                raise RuntimeError(f"Sample {a['index']}: only one run found an {norm} adversarial example.")
            if x is not None and x != y:
                largest = max(largest, abs(x - y) / max(abs(x), abs(y)))
    return largest


def measure(samples: int, repeats: int) -> Timings:
    """Time every configuration ``repeats`` times and return the best times and the speed-ups."""
    best = {configuration.name: math.inf for configuration in CONFIGURATIONS}
    stages: dict[str, dict[str, float]] = {}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as scratch:
        for _ in range(repeats):
            for configuration in CONFIGURATIONS:
                out_dir = Path(scratch) / configuration.name.replace(" ", "-").replace(",", "")
                seconds, payload = run_once(configuration, samples, out_dir)
                if seconds < best[configuration.name]:
                    best[configuration.name] = seconds
                    stages[configuration.name] = payload["timing"]
                results[configuration.name] = payload

    single, threaded, sharded = (best[configuration.name] for configuration in CONFIGURATIONS)
    return Timings(
        seconds=best,
        rank0_stage_seconds=stages,
        speedup_over_1_thread=single / sharded,
        speedup_over_2_threads=threaded / sharded,
        max_relative_difference=max_relative_difference(results[CONFIGURATIONS[0].name], results[CONFIGURATIONS[2].name]),
    )


def machine_line() -> str:
    """Return the logical CPU count and the load averages, which the speed-up depends on."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"machine: {os.cpu_count()} logical CPUs; load average (1, 5, 15 min) after the runs: {load}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print one line per configuration and one per speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256, help="samples of the digits test split (default 256)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration; the best counts")
    arguments = parser.parse_args(argv)

    timings = measure(arguments.samples, arguments.repeats)
    for configuration in CONFIGURATIONS:
        timing = timings.rank0_stage_seconds[configuration.name]
        print(f"{configuration.name}: {timings.seconds[configuration.name]:.1f} s wall "
              f"(rank 0 inside robusteval: {timing['total_seconds']:.1f} s, of which input attacks "
              f"{timing.get('input_attack_seconds', 0.0):.1f} s, region walk {timing.get('region_walk_seconds', 0.0):.1f} s)")
    print(f"speed-up of 2 processes over 1 process with 1 thread: {timings.speedup_over_1_thread:.2f}x "
          f"({arguments.samples} samples of the demo, --no-parameter-space, best of {arguments.repeats})")
    print(f"speed-up of 2 processes over 1 process with 2 threads: {timings.speedup_over_2_threads:.2f}x")
    print(f"2 processes against 1: max relative difference of the minimal adversarial distances "
          f"{timings.max_relative_difference:.1e}")
    print(machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
