"""Smoke tests of the benchmark runner's pieces at their ``--quick`` sizes or smaller."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py``; the benchmarks are scripts, not an installed package."""
    if name in sys.modules:
        return sys.modules[name]
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_measurement_line_verdicts() -> None:
    common = _load("_common")
    passed = common.Measurement("speed-up", 250.0, "x", ">= 100x", True, "1 s against 250 s")
    failed = common.Measurement("overhead", 28.7, "%", "<= 15%", False, "details")
    info = common.Measurement("error", 0.043, "", "", None, "details")

    assert passed.line() == "PASS  speed-up: 250x (target >= 100x); 1 s against 250 s"
    assert failed.line().startswith("FAIL  overhead: 28.7% (target <= 15%);")
    assert info.line() == "INFO  error: 0.04; details"


def test_peak_memory_counts_allocation() -> None:
    # A child that touches 200 MiB must peak about 200 MiB above one that only imports numpy.
    memory = _load("bench_memory")
    baseline = memory.peak_rss_mib([sys.executable, "-c", "import numpy"], timeout=60)
    allocating = "import numpy; a = numpy.ones(200 * 2**20 // 8); a.sum()"
    peak = memory.peak_rss_mib([sys.executable, "-c", allocating], timeout=60)

    assert 190 <= peak - baseline <= 230


def test_peak_memory_reports_failure() -> None:
    memory = _load("bench_memory")
    with pytest.raises(RuntimeError, match="exit status 3"):
        memory.peak_rss_mib([sys.executable, "-c", "import sys; sys.exit(3)"], timeout=60)


@pytest.mark.slow
def test_direct_calls_match_robusteval() -> None:
    # Same attacks, settings, seeds and samples: the direct foolbox/torchattacks calls must
    # break exactly the samples robusteval breaks, or the overhead ratio compares different work.
    pipeline = _load("bench_pipeline")
    measurements = pipeline.bench_pipeline(quick=True)

    # Three lines per workload at the one quick size: overhead, attack stage alone, agreement of
    # robust accuracy. The overhead target is for 64 and 256 samples, so no quick line carries it.
    assert len(measurements) == 3 * len(pipeline.WORKLOADS)
    for overhead, attack_stage, agreement in zip(*[iter(measurements)] * 3):
        assert agreement.passed is True
        assert agreement.value == 0.0
        assert overhead.passed is None
        assert math.isfinite(overhead.value)
        assert overhead.value > -100
        assert attack_stage.passed is None


@pytest.mark.slow
def test_runner_quick_geometry_lines(capsys: pytest.CaptureFixture[str]) -> None:
    runner = _load("run")
    assert runner.main(["--quick", "--only", "geometry"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()

    assert lines[0].startswith("machine: ")
    assert lines[-1].startswith("load average at the end")
    measurements = lines[1:-1]
    assert len(measurements) == 5
    # Two targets (speed-up, FLOP/s share), then the Hutchinson and region lines without one.
    assert all(line[:4] in ("PASS", "FAIL") for line in measurements[:2])
    assert all(line[:4] == "INFO" for line in measurements[2:])
    # The closed form must beat the torch.func baseline by far even on a loaded machine.
    speedup = float(measurements[0].split(": ")[1].split("x")[0])
    assert speedup > 10
