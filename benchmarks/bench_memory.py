"""Peak memory of ``robusteval run`` on the 784-256-256-256-10 MLP, under two memory budgets.

Each run is a separate ``python -m robusteval run`` process. A wrapper process starts it and
reads ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, the peak resident set size of its only
child, so runs measured one after another do not see each other's peak. The baseline is the
peak of a process that only imports torch and robusteval; the reported memory is the run's peak
minus that baseline.

The runs use ``--no-parameter-space --attacks fgsm --no-html``: one gradient step per epsilon
keeps a 4,096-sample run short. ``--memory-budget`` bounds the working set of the geometry
stage, about 2.4 MiB per sample of this MLP in float32, which it splits into chunks (on a CPU
also capped at 48 MiB). The rest of a run, the samples, the attack stage and the per-sample
results, does not depend on the budget. Runs with the default block of 128 samples and with all
samples in one block show both parts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

# The benchmarks are scripts, not a package: make their shared modules importable.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MLP_ARCH, Measurement, load_average  # noqa: E402
from bench_pipeline import write_mlp_files  # noqa: E402

DEFAULT_BUDGET_MIB = 2048
SMALL_BUDGET_MIB = 256

# Runs ``sys.argv[1:]`` as a child process and prints the child's peak RSS in KiB (Linux units).
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "completed = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "if completed.returncode != 0:\n"
    "    sys.exit(f'exit status {completed.returncode}: {completed.stderr[-2000:]}')\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss_mib(command: Sequence[str], timeout: float, environment: dict[str, str] | None = None) -> float:
    """Run ``command`` in a fresh wrapper process and return the command's peak RSS in MiB.

    ``environment`` adds variables to this process's environment for the command.

    Raises:
        RuntimeError: the command failed; the message contains the end of its standard error.
    """
    completed = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *command], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(environment or {})},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"Measuring the peak memory of {' '.join(command)} failed: {completed.stderr.strip()}")
    return int(completed.stdout.strip()) / 1024


def baseline_mib(timeout: float = 120) -> float:
    """Return the peak RSS, in MiB, of a process that only imports torch and robusteval."""
    return peak_rss_mib([sys.executable, "-c", "import torch, robusteval"], timeout)


def run_command(model_path: Path, data_path: Path, samples: int, out_dir: Path, *, budget_mib: int,
                block_size: int) -> list[str]:
    """Return the ``robusteval run`` command line of one memory measurement."""
    return [
        sys.executable, "-m", "robusteval", "run", str(model_path), "--arch", MLP_ARCH, "--data", str(data_path),
        "--samples", str(samples), "--no-parameter-space", "--attacks", "fgsm", "--no-html", "--force",
        "--out", str(out_dir), "--memory-budget", str(budget_mib), "--block-size", str(block_size),
    ]


def bench_memory(quick: bool, *, budget_mib: int = DEFAULT_BUDGET_MIB) -> list[Measurement]:
    """Measure the peak memory of runs under ``budget_mib`` and under a small budget.

    Returns one line per run: the default block size under ``budget_mib`` (the target) and under
    the small budget, then all samples in one block under each budget. ``quick`` runs 128
    samples, which fill one default block, so it leaves out the one-block runs.
    """
    samples = 128 if quick else 4096
    timeout = 600 if quick else 1800
    # (budget in MiB, block size, whether the line has the target, extra environment)
    runs: list[tuple[int, int, bool, dict[str, str]]] = [(budget_mib, 128, True, {}), (SMALL_BUDGET_MIB, 128, False, {})]
    if not quick:
        runs += [(budget_mib, samples, False, {}), (SMALL_BUDGET_MIB, samples, False, {})]
    measurements = []
    with tempfile.TemporaryDirectory(prefix="robusteval-memory-") as directory:
        model_path, data_path = write_mlp_files(Path(directory), samples)
        baseline = baseline_mib()
        for budget, block_size, is_target, environment in runs:
            command = run_command(model_path, data_path, samples, Path(directory) / "run", budget_mib=budget,
                                  block_size=block_size)
            peak = peak_rss_mib(command, timeout, environment) - baseline
            malloc = "".join(f", {name}={value}" for name, value in environment.items())
            measurements.append(Measurement(
                f"peak memory of a {samples}-sample run, --memory-budget {budget} MiB, --block-size {block_size}{malloc}",
                peak / budget, "x of the budget", "<= 1x" if is_target else "", peak <= budget if is_target else None,
                f"{peak:.0f} MiB above the {baseline:.0f} MiB of a process that imports torch and robusteval; "
                f"load {load_average()}",
            ))
    return measurements


def main(argv: Sequence[str] | None = None) -> int:
    """Run the memory measurements and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 samples in two runs instead of 4,096 in four")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET_MIB, help="memory budget of the target run, in MiB")
    arguments = parser.parse_args(argv)
    for measurement in bench_memory(arguments.quick, budget_mib=arguments.budget):
        print(measurement.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
