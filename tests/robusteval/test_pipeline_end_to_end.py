"""The whole pipeline on a small trained MLP: contract, invariants, determinism, resume, chunking."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from robusteval.digits import digits_split
from robusteval.pipeline import EvaluationConfig, evaluate

# Timing and provenance fields differ between two runs of the same configuration.
VOLATILE_KEYS = {"timing", "created", "command", "attack_seconds", "seconds"}


def strip_volatile(value):
    if isinstance(value, dict):
        return {key: strip_volatile(item) for key, item in value.items() if key not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [strip_volatile(item) for item in value]
    return value


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A 64-32-32-10 ReLU MLP trained briefly on the digits train split, saved as TorchScript."""
    torch.manual_seed(0)
    x, y = (torch.from_numpy(a) for a in digits_split("train"))
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("model") / "mlp.pt"
    torch.jit.save(torch.jit.script(model.eval()), str(path))
    return path


def small_config(model_file: Path, **changes) -> EvaluationConfig:
    settings = dict(model=str(model_file), data="digits", samples=12, block_size=4, seed=3,
                    attacks="quick", noise_draws=2, weight_steps=3, bootstrap=50)
    settings.update(changes)
    return EvaluationConfig(**settings)


@pytest.fixture(scope="module")
def results(model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return evaluate(small_config(model_file), out_dir=out), out


def test_results_file_has_contract_fields(results):
    _, out = results
    payload = json.loads((out / "results.json").read_text())
    assert payload["schema"] == "robusteval/results/v1"
    assert payload["data"]["num_samples"] == 12
    assert len(payload["samples"]) == 12
    assert payload["model"]["piecewise_linear"] is True
    for threat_model in payload["threat_models"]:
        assert len(threat_model["robust_accuracy"]) == len(threat_model["epsilons"])
        assert threat_model["attacks"]
    assert not (out / "partial").exists()


def test_certified_radius_never_exceeds_attack_distance(results):
    evaluated, _ = results
    checked = 0
    for sample in evaluated.samples:
        for norm in ("l2", "linf"):
            certified = getattr(sample.certified_radius, norm)
            found = getattr(sample.min_adversarial_distance, norm)
            if certified is not None and found is not None:
                assert certified <= found * (1 + 1e-5), (sample.index, norm, certified, found)
                checked += 1
    assert checked > 0


def test_robust_accuracy_non_increasing_and_below_clean(results):
    evaluated, _ = results
    for threat_model in evaluated.threat_models:
        accuracy = threat_model.robust_accuracy
        assert all(a >= b for a, b in zip(accuracy, accuracy[1:]))
        assert accuracy[0] <= evaluated.clean_accuracy


def test_robust_accuracy_equals_per_sample_records(results):
    evaluated, _ = results
    for threat_model in evaluated.threat_models:
        for position, value in enumerate(threat_model.robust_accuracy):
            robust = [sample.robust[threat_model.norm][position] for sample in evaluated.samples]
            assert value == pytest.approx(sum(robust) / len(robust))


def test_same_seed_gives_identical_results(model_file, results, tmp_path):
    first, out = results
    second = evaluate(small_config(model_file), out_dir=tmp_path / "again")
    assert strip_volatile(first.to_dict()) == strip_volatile(second.to_dict())


def test_chunked_run_equals_unchunked(model_file, results, tmp_path):
    evaluated, _ = results
    # 20,000 bytes hold the 14 KB of weights but less than one sample's 32 KB of geometry working
    # set, so every geometry chunk has one sample. The numbers must not change.
    chunked = evaluate(small_config(model_file, memory_budget=20_000), out_dir=tmp_path / "chunked")
    for a, b in zip(evaluated.samples, chunked.samples):
        assert a.tangent_sensitivity == b.tangent_sensitivity
        assert a.region_distance == b.region_distance
        assert a.linear_decision_distance == b.linear_decision_distance
        assert a.certified_radius == b.certified_radius
        assert a.min_adversarial_distance == b.min_adversarial_distance


def run_cli(*arguments: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robusteval", *arguments], capture_output=True, text=True,
                          timeout=600, **kwargs)


def cli_arguments(model_file: Path, out: Path) -> list[str]:
    return ["run", str(model_file), "--data", "digits", "--samples", "12", "--block-size", "4", "--seed", "3",
            "--out", str(out), "--no-html"]


@pytest.mark.slow
def test_sigint_then_resume_equals_uninterrupted_run(model_file, tmp_path):
    reference = tmp_path / "reference"
    completed = run_cli(*cli_arguments(model_file, reference), "--no-parameter-space")
    assert completed.returncode == 0, completed.stderr

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "robusteval", *cli_arguments(model_file, interrupted),
                                "--no-parameter-space"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_block = interrupted / "partial" / "block-00000000.json"
    deadline = time.monotonic() + 300
    while not first_block.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first_block.exists(), "the run finished or failed before its first block was saved"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before SIGINT arrived; the machine was too fast to interrupt it")
    assert process.returncode == 130, stderr
    assert "--resume" in stderr
    assert not (interrupted / "results.json").exists()

    refused = run_cli(*cli_arguments(model_file, interrupted), "--no-parameter-space")
    assert refused.returncode == 2
    assert "--resume" in refused.stderr

    resumed = run_cli(*cli_arguments(model_file, interrupted), "--no-parameter-space", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    expected = strip_volatile(json.loads((reference / "results.json").read_text()))
    actual = strip_volatile(json.loads((interrupted / "results.json").read_text()))
    expected.pop("config")
    actual.pop("config")
    assert actual == expected


def test_existing_results_refused_without_force(model_file, results):
    _, out = results
    before = (out / "results.json").read_bytes()
    completed = run_cli(*cli_arguments(model_file, out))
    assert completed.returncode == 2
    assert "--force" in completed.stderr
    assert (out / "results.json").read_bytes() == before
