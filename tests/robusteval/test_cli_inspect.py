"""`robusteval inspect`: format, layers and preflight findings of a model file."""

from __future__ import annotations

import torch
from torch import nn
from typer.testing import CliRunner

from robusteval.cli import app

runner = CliRunner()


def test_inspect_bundled_model_with_data():
    result = runner.invoke(app, ["inspect", "zoo:demo", "--data", "digits"])
    assert result.exit_code == 0, result.output
    assert "mlp:64-64-64-10" in result.output
    assert "8,970" in result.output
    assert "exact closed form" in result.output
    assert "preflight: no findings" in result.output


def test_inspect_reports_train_mode_flag(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).train()
    path = tmp_path / "train_mode.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    result = runner.invoke(app, ["inspect", str(path), "--data", "digits"])
    assert result.exit_code == 0, result.output
    assert "torchscript" in result.output
    assert "train_mode" in result.output


def test_inspect_rejects_non_model_file(tmp_path):
    path = tmp_path / "page.pt"
    path.write_text("<html><body>Not Found</body></html>")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert "HTML" in result.output or "html" in result.output


class _ScriptedClassNet(nn.Module):
    """A model written as a class: scripted, its ReLU runs inside its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def test_inspect_flags_what_run_would_skip(tmp_path):
    path = tmp_path / "class_model.pt"
    torch.jit.save(torch.jit.script(_ScriptedClassNet().eval()), str(path))

    result = runner.invoke(app, ["inspect", str(path), "--data", "digits"])

    assert result.exit_code == 0, result.output
    assert "region_distance_unavailable" in result.output
    assert "parameter_space_unavailable" in result.output
    assert "region_walk_unavailable" in result.output
    assert "double backward" in result.output
    assert "cannot tell" in result.output
    assert "preflight: no findings" not in result.output


def test_inspect_without_data_points_to_data_option():
    result = runner.invoke(app, ["inspect", "zoo:demo"])

    assert result.exit_code == 0, result.output
    assert "--data" in result.output
