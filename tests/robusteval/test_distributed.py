"""Multi-process evaluation with torch.distributed (gloo on the CPU): equality, resume, failures.

The slow tests start real process groups through ``robusteval run --workers 2``; the others
start two small Python processes that join a gloo group on 127.0.0.1 directly.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robusteval.cli.run import worker_arguments
from robusteval.distributed import DistributedContext, cuda_device_for_rank
from robusteval.errors import DistributedError
from robusteval.pipeline import EvaluationConfig, evaluate

# Fields that differ between two runs of one configuration, or between 1 and 2 processes.
VOLATILE_KEYS = {"timing", "created", "command", "environment", "seconds", "attack_seconds"}
# Sums may be reduced in another order when ranks and the reference run with different thread
# counts; 1e-9 relative is far above float64 rounding and far below any change that a wrong
# seed or a lost sample would cause.
RELATIVE_TOLERANCE = 1e-9

SETTINGS = dict(samples=10, block_size=2, seed=5, attacks="quick", noise_draws=2, weight_steps=3, bootstrap=50)


def cli_arguments(out: Path) -> list[str]:
    return ["run", "--samples", "10", "--block-size", "2", "--seed", "5", "--attacks", "quick", "--noise-draws", "2",
            "--weight-steps", "3", "--bootstrap", "50", "--out", str(out), "--no-html"]


def run_workers(*arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robusteval", *arguments, "--workers", "2"],
                          capture_output=True, text=True, timeout=timeout)


def differences(expected, actual, path: str = "") -> list[str]:
    """List the paths where two JSON values differ, comparing floats to RELATIVE_TOLERANCE."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(set(expected) | set(actual)):
            if key in VOLATILE_KEYS:
                continue
            if key not in expected or key not in actual:
                found.append(f"{path}/{key}: present on one side only")
            else:
                found += differences(expected[key], actual[key], f"{path}/{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: {len(expected)} items != {len(actual)}"]
        return [d for i, (a, b) in enumerate(zip(expected, actual)) for d in differences(a, b, f"{path}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, float):
        if math.isclose(expected, actual, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12):
            return []
        return [f"{path}: {expected!r} != {actual!r}"]
    return [] if expected == actual else [f"{path}: {expected!r} != {actual!r}"]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """Results of the bundled demo model evaluated in this process, with parameter-space stages."""
    out = tmp_path_factory.mktemp("single")
    # One thread, as in each rank: on a busy 2-core machine torch's default threads make this
    # run several times slower. The comparison does not rely on it (see RELATIVE_TOLERANCE).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluate(EvaluationConfig(**SETTINGS), out_dir=out)
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "results.json").read_text())


def test_differences_catches_changed_float():
    # The comparison the equality tests rely on must notice a change in the 8th digit.
    assert differences({"a": [1.0, 2.0]}, {"a": [1.0, 2.00000002]}) == ["/a[1]: 2.0 != 2.00000002"]
    assert differences({"a": 1, "timing": 1}, {"a": 1, "timing": 2}) == []


@pytest.mark.slow
def test_two_gloo_processes_equal_one(single_process, tmp_path):
    out = tmp_path / "sharded"
    completed = run_workers(*cli_arguments(out))
    assert completed.returncode == 0, completed.stderr[-3000:]

    sharded = json.loads((out / "results.json").read_text())
    assert sharded["environment"]["world_size"] == 2
    assert single_process["environment"]["world_size"] == 1
    assert [s["index"] for s in sharded["samples"]] == list(range(10))
    assert sharded["parameter_space"] is not None
    # Every sample, every aggregate (robust accuracy, predictive validity, bounds, parameter-space
    # curves) and every flag, in the same order.
    assert differences(single_process, sharded) == []
    assert not (out / "partial").exists()


@pytest.mark.slow
def test_two_processes_resume_their_own_blocks(single_process, tmp_path):
    # Leave the partial results of an interrupted run: blocks 0 (rank 0's) and 2 (rank 1's) are
    # finished, the other three are not. A marker in each saved block shows whether it was reused.
    partial = tmp_path / "resumed" / "partial"
    partial.mkdir(parents=True)
    (partial / "run.json").write_text(json.dumps(EvaluationConfig(**SETTINGS).fingerprint()))
    for start in (0, 2):
        samples = copy.deepcopy(single_process["samples"][start:start + 2])
        for sample in samples:
            sample["logit_margin"] = 1000.0 + sample["index"]
        block = {"start": start, "samples": samples, "geometry_method": single_process["geometry"]["method"],
                 "geometry_probes": single_process["geometry"]["probes"], "flags": [], "seconds": {}, "skipped": {}}
        (partial / f"block-{start:08d}.json").write_text(json.dumps(block))

    resumed = run_workers(*cli_arguments(tmp_path / "resumed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    results = json.loads((tmp_path / "resumed" / "results.json").read_text())
    margins = {sample["index"]: sample["logit_margin"] for sample in results["samples"]}
    assert [margins[index] for index in range(4)] == [1000.0, 1001.0, 1002.0, 1003.0]
    for index in range(4, 10):
        expected = single_process["samples"][index]["logit_margin"]
        assert margins[index] == pytest.approx(expected, rel=RELATIVE_TOLERANCE)


@pytest.mark.slow
def test_workers_refuse_existing_results(tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    (out / "results.json").write_text("{}")
    started = time.monotonic()
    completed = run_workers(*cli_arguments(out), timeout=300)
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "--force" in completed.stderr
    assert "Rank 0 stopped the run" in completed.stderr
    assert (out / "results.json").read_text() == "{}"
    assert time.monotonic() - started < 300


def test_workers_with_resume_and_force_exit_before_launch(tmp_path):
    completed = run_workers(*cli_arguments(tmp_path / "out"), "--resume", "--force", timeout=120)
    assert completed.returncode == 2
    assert "cannot be combined" in completed.stderr
    assert "torch.distributed" not in completed.stderr


def test_worker_arguments_drop_workers_option():
    assert worker_arguments(["run", "--workers", "2", "--seed", "1"]) == ["run", "--seed", "1"]
    assert worker_arguments(["run", "--workers=4", "--resume"]) == ["run", "--resume"]
    assert worker_arguments(["run", "model.pt"]) == ["run", "model.pt"]


# A process of a two-process gloo group joined on 127.0.0.1, for the failure tests.
MEMBER = r"""
import os, sys, time
from robusteval.distributed import DistributedContext
from robusteval.errors import DistributedError

def prepare():
    raise ValueError("the output directory is invalid")

mode, timeout = sys.argv[1], float(sys.argv[2])
world = None
try:
    world = DistributedContext.from_environment("cpu", timeout_seconds=timeout)
    world.barrier()
    if mode == "crash" and world.rank == 1:
        os._exit(3)
    if mode == "hang" and world.rank == 1:
        time.sleep(120)
    if mode == "prepare-fails":
        world.run_on_main(prepare)
    world.gather_blocks([], [(world.rank, {})])
except (DistributedError, ValueError) as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(2)
finally:
    if world is not None:
        world.close()
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_members(mode: str, ranks: list[int], timeout: float) -> list[subprocess.Popen]:
    port = free_port()
    processes = []
    for rank in ranks:
        environment = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen([sys.executable, "-c", MEMBER, mode, str(timeout)], env=environment,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes


def finish(process: subprocess.Popen, limit: float) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"the process did not exit within {limit} s")
    return process.returncode, stderr


def test_group_of_two_gathers():
    processes = start_members("gather", [0, 1], timeout=60)
    for process in processes:
        code, stderr = finish(process, 120)
        assert code == 0, stderr


def test_missing_rank_times_out_joining():
    (process,) = start_members("gather", [0], timeout=3)
    code, stderr = finish(process, 120)
    assert code == 2
    assert "could not join the gloo process group within 3 s" in stderr


def test_crashed_rank_stops_the_other():
    rank0, rank1 = start_members("crash", [0, 1], timeout=20)
    code, stderr = finish(rank0, 120)
    assert finish(rank1, 30)[0] == 3
    assert code == 2
    assert "Rank 0 of 2 failed while gathering the per-sample results" in stderr
    assert "--resume" in stderr


def test_hung_rank_times_out_the_other():
    rank0, rank1 = start_members("hang", [0, 1], timeout=3)
    code, stderr = finish(rank0, 120)
    rank1.kill()
    rank1.communicate()
    assert code == 2
    assert "Rank 0 of 2 failed while gathering the per-sample results" in stderr
    assert "3 s timeout" in stderr


def test_rank_zero_failure_reaches_every_rank():
    rank0, rank1 = start_members("prepare-fails", [0, 1], timeout=60)
    code0, stderr0 = finish(rank0, 120)
    code1, stderr1 = finish(rank1, 120)
    assert code0 == 2
    assert code1 == 2
    assert "ValueError: the output directory is invalid" in stderr0
    assert "DistributedError: Rank 0 stopped the run (ValueError: the output directory is invalid)" in stderr1


def test_single_process_context_without_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = DistributedContext.from_environment("cpu")
    assert context == DistributedContext.single()
    assert context.gather_blocks(["record"], [(0, {})]) == (["record"], [(0, {})])


def test_invalid_rank_rejected(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK in \\[0, 1\\]"):
        DistributedContext.from_environment("cpu")


def test_cuda_rank_mapping(monkeypatch):
    selected = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: selected.append(str(device)))
    assert cuda_device_for_rank("cuda", local_rank=1, local_world_size=2) == "cuda:1"
    assert selected == ["cuda:1"]
    with pytest.raises(ValueError, match="LOCAL_RANK=2 found only 2 visible CUDA device"):
        cuda_device_for_rank("cuda", local_rank=2, local_world_size=3)
    with pytest.raises(ValueError, match="NCCL needs one GPU per process"):
        cuda_device_for_rank("cuda:1", local_rank=0, local_world_size=2)
    assert cuda_device_for_rank("cuda:1", local_rank=0, local_world_size=1) == "cuda:1"


def test_distributed_error_is_robusteval_error():
    from robusteval.errors import RobustEvalError

    assert issubclass(DistributedError, RobustEvalError)
