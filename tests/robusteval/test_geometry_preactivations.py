"""Tests for locating hidden ReLU layers and recording their pre-activations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robusteval.architectures import build_architecture
from robusteval.geometry import hidden_preactivations

# torch 2.13 deprecates torch.jit.script, but users still save scripted models, so tests script them.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _manual_mlp_preactivations(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """Reference: walk the Linear layers by hand and collect what each ReLU receives."""
    values = []
    h = x.flatten(1)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for index, linear in enumerate(linears):
        z = h @ linear.weight.T + linear.bias
        if index < len(linears) - 1:
            values.append(z)
            h = z.clamp_min(0)
    return values


class _FunctionalMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(5, 7)
        self.second = nn.Linear(7, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.first(x))
        h = torch.relu(self.second(h))
        return self.head(h)


class _ScriptedBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * 2


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_sequential_mlp_matches_manual(x: torch.Tensor) -> None:
    torch.manual_seed(1)
    model = build_architecture("mlp:5-8-6-3").double()
    got = hidden_preactivations(model, x)
    expected = _manual_mlp_preactivations(model, x)
    assert len(got) == 2
    for z, reference in zip(got, expected):
        torch.testing.assert_close(z, reference, rtol=1e-12, atol=1e-12)


def test_in_place_relu_keeps_negative_values(x: torch.Tensor) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)).double()
    (z,) = hidden_preactivations(model, x)
    torch.testing.assert_close(z, model[0](x))
    assert (z < 0).any()


def test_functional_relu_module(x: torch.Tensor) -> None:
    torch.manual_seed(3)
    model = _FunctionalMlp().double()
    got = hidden_preactivations(model, x)
    first = model.first(x)
    second = model.second(first.clamp_min(0))
    assert [z.shape for z in got] == [(4, 7), (4, 6)]
    torch.testing.assert_close(got[0], first)
    torch.testing.assert_close(got[1], second)


def test_scripted_and_exported_match_eager(x: torch.Tensor) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 6), nn.ReLU()), nn.Linear(6, 3))
    model = model.double().eval()
    eager = hidden_preactivations(model, x)
    scripted = hidden_preactivations(torch.jit.script(model), x)
    exported = hidden_preactivations(torch.export.export(model, (x,)), x)
    assert len(eager) == len(scripted) == len(exported) == 2
    for a, b, c in zip(eager, scripted, exported):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def test_cnn_layers_flattened() -> None:
    torch.manual_seed(5)
    model = build_architecture("cnn:1x8x8-3-4-2").double().eval()
    images = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    for candidate in (model, torch.jit.script(model)):
        first, second = hidden_preactivations(candidate, images)
        reference_first = model[0](images)
        reference_second = model[2](model[1](reference_first))
        torch.testing.assert_close(first, reference_first.flatten(1))
        torch.testing.assert_close(second, reference_second.flatten(1))


def test_linear_model_has_no_layers(x: torch.Tensor) -> None:
    assert hidden_preactivations(nn.Linear(5, 3).double(), x) == []


def test_scripted_hidden_relu_raises(x: torch.Tensor) -> None:
    model = torch.jit.script(nn.Sequential(nn.Linear(5, 4), _ScriptedBlock(), nn.Linear(4, 3)).double())
    with pytest.raises(ValueError, match="separate children"):
        hidden_preactivations(model, x)
    with pytest.raises(ValueError, match="TorchScript Sequential"):
        hidden_preactivations(torch.jit.script(_FunctionalMlp().double()), x)
