"""Device handling: ``--device`` resolution, mixed-device errors, and CUDA runs where a GPU exists.

The CPU tests check the errors; tensors on the ``meta`` device stand in for a second device. The
CUDA tests compare each stage on the GPU with the same stage on the CPU and run only where
``torch.cuda.is_available()``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robusteval.attacks import ThreatModel, run_input_attacks
from robusteval.cli import app
from robusteval.devices import check_model_device, module_devices, resolve_device
from robusteval.geometry import local_linear_analysis
from robusteval.pipeline import EvaluationConfig, evaluate
from robusteval.seeding import seeded

EXIT_BAD_INPUT = 2
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@no_cuda
@pytest.mark.parametrize("workers", ["1", "2"])
def test_cuda_without_cuda_exits_2(tmp_path, workers):
    result = CliRunner().invoke(app, ["run", "--device", "cuda", "--samples", "2", "--no-html",
                                      "--out", str(tmp_path / "out"), "--workers", workers])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "torch.cuda.is_available() is False" in result.output
    assert "--device cpu" in result.output
    assert not (tmp_path / "out" / "results.json").exists()


def test_cuda_index_beyond_gpu_count_rejected(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    with pytest.raises(ValueError, match="index below 2") as raised:
        resolve_device("cuda:7")
    assert "cuda:7" in str(raised.value)
    assert "cuda:0 to cuda:1" in str(raised.value)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "meta", ""])
def test_unknown_device_rejected(name):
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(name)


def test_cpu_device_resolves_to_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


def test_model_and_data_on_different_devices_named():
    model = small_mlp().to("meta")
    x = torch.rand(4, 6)
    with pytest.raises(ValueError) as raised:
        check_model_device(model, x, tensor_name="data")
    message = str(raised.value)
    assert "the model is on meta" in message
    assert "the data are on cpu" in message


def test_model_spread_over_devices_named():
    model = small_mlp()
    model[2].to("meta")
    assert module_devices(model) == [torch.device("cpu"), torch.device("meta")]
    with pytest.raises(ValueError, match="on cpu, meta"):
        check_model_device(model, torch.rand(4, 6))


def test_model_without_parameters_passes():
    check_model_device(nn.ReLU(), torch.rand(4, 6))


def test_geometry_rejects_mixed_devices():
    with pytest.raises(ValueError, match="the model is on meta and the inputs are on cpu"):
        local_linear_analysis(small_mlp().to("meta"), torch.rand(4, 6))


def test_input_attacks_reject_mixed_devices():
    x = torch.rand(4, 6)
    y = torch.zeros(4, dtype=torch.int64)
    threat_models = [ThreatModel("linf", (0.1,))]
    with pytest.raises(ValueError, match="the model is on meta and the inputs are on cpu"):
        run_input_attacks(small_mlp().to("meta"), x, y, threat_models=threat_models, attacks="quick", bounds=(0.0, 1.0), seed=0)
    with pytest.raises(ValueError, match="the inputs are on cpu and the labels on meta"):
        run_input_attacks(small_mlp(), x, y.to("meta"), threat_models=threat_models, attacks="quick", bounds=(0.0, 1.0), seed=0)


def test_hutchinson_probes_follow_generator_seed():
    # The probes are drawn from the explicit generator, so the same seed gives the same estimate.
    model, x = small_mlp(), torch.rand(3, 6)
    first = local_linear_analysis(model, x, method="hutchinson", probes=4, generator=torch.Generator().manual_seed(1))
    second = local_linear_analysis(model, x, method="hutchinson", probes=4, generator=torch.Generator().manual_seed(1))
    other = local_linear_analysis(model, x, method="hutchinson", probes=4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first.tangent_sensitivity, second.tangent_sensitivity)
    assert not torch.equal(first.tangent_sensitivity, other.tangent_sensitivity)


@needs_cuda
@pytest.mark.parametrize("method", ["closed_form", "exact", "hutchinson"])
def test_geometry_on_cuda_equals_cpu(method):
    model, x = small_mlp().double(), torch.rand(5, 6, dtype=torch.float64)
    on_cpu = local_linear_analysis(model, x, method=method, probes=8, generator=torch.Generator().manual_seed(3))
    on_gpu = local_linear_analysis(model.cuda(), x.cuda(), method=method, probes=8,
                                   generator=torch.Generator().manual_seed(3))
    assert on_gpu.tangent_sensitivity.device.type == "cuda"
    torch.testing.assert_close(on_gpu.tangent_sensitivity.cpu(), on_cpu.tangent_sensitivity, rtol=1e-9, atol=1e-12)
    for norm in ("l2", "linf"):
        torch.testing.assert_close(on_gpu.certified_radius[norm].cpu(), on_cpu.certified_radius[norm], rtol=1e-9, atol=1e-12)


@needs_cuda
def test_seeded_restores_cuda_generator():
    torch.cuda.init()
    before = torch.cuda.get_rng_state()
    with seeded(7):
        torch.rand(10, device="cuda")
    assert torch.equal(torch.cuda.get_rng_state(), before)


@needs_cuda
def test_pipeline_on_cuda_equals_cpu(tmp_path):
    settings = dict(samples=6, block_size=3, seed=2, attacks="quick", noise_draws=2, weight_steps=2, bootstrap=20)
    on_cpu = evaluate(EvaluationConfig(**settings), out_dir=tmp_path / "cpu")
    on_gpu = evaluate(EvaluationConfig(**settings, device="cuda"), out_dir=tmp_path / "gpu")
    assert on_gpu.environment.device == "cuda"
    for a, b in zip(on_cpu.samples, on_gpu.samples):
        assert a.prediction == b.prediction
        # float32 on two devices: sums are reduced in another order.
        assert b.tangent_sensitivity == pytest.approx(a.tangent_sensitivity, rel=1e-4)
        assert b.certified_radius.l2 == pytest.approx(a.certified_radius.l2, rel=1e-4)
    assert on_gpu.parameter_space is not None
