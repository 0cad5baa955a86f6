"""Shared pieces of the benchmarks: the measurement record, its one-line form, machine facts."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

# The network of the speed and memory targets: a 784-256-256-256-10 ReLU MLP in float32.
MLP_ARCH = "mlp:784-256-256-256-10"


class Measurement(NamedTuple):
    """One ratio measured side by side in one run, with its target.

    Attributes:
        name: what was compared, for example ``"full run against direct attack calls"``.
        value: the measured ratio, in ``unit``.
        unit: ``"x"`` for a factor, ``"%"`` for a percentage, ``""`` for a plain number.
        target: the target as text, for example ``">= 100x"``; empty for an informational line.
        passed: whether ``value`` meets the target; ``None`` for an informational line.
        detail: the absolute numbers behind the ratio and what the comparison includes.
    """

    name: str
    value: float
    unit: str
    target: str
    passed: bool | None
    detail: str

    def line(self) -> str:
        """Return the measurement as one line: verdict, name, ratio, target, details."""
        if self.passed is None:
            verdict = "INFO"
        else:
            verdict = "PASS" if self.passed else "FAIL"
        target = f" (target {self.target})" if self.target else ""
        return f"{verdict}  {self.name}: {_format_value(self.value)}{self.unit}{target}; {self.detail}"


def _format_value(value: float) -> str:
    if value != value:  # nan
        return "nan"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def best_seconds(function: Callable[[], object], repeats: int) -> float:
    """Return the best wall time of ``repeats`` calls of ``function``, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_model() -> str:
    """Return the CPU model name that ``lscpu`` reports, or ``platform.processor()`` without it."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in output.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return platform.processor() or "unknown"


def machine_summary() -> str:
    """Return one line naming the CPU, its cores, torch's version and threads, and the load average."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"load average (1, 5, 15 min): {load}"
    )


def load_average() -> str:
    """Return the 1-minute load average as text, to print next to each group of measurements."""
    return f"{os.getloadavg()[0]:.2f}"
