"""Exact region walk against dense sampling of activation patterns along the segment."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robusteval.analysis import count_regions_crossed
from robusteval.analysis import region_walk
from robusteval.analysis.region_walk import RegionWalker
from robusteval.architectures import build_architecture
from robusteval.geometry import hidden_preactivations

# torch 2.13 loads the forward-mode AD decompositions through torch.jit.script, which warns once.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

GRID_POINTS = 40_001


def _dense_count(model: nn.Module, start: torch.Tensor, end: torch.Tensor) -> int:
    """Count distinct consecutive activation patterns on a fine grid of the segment."""
    model = model.double()
    times = torch.linspace(0, 1, GRID_POINTS, dtype=torch.float64).reshape(-1, *([1] * start.dim()))
    points = start.double().unsqueeze(0) + times * (end - start).double().unsqueeze(0)
    with torch.no_grad():
        patterns = torch.cat([z > 0 for z in hidden_preactivations(model, points)], dim=1)
    return int((patterns[1:] != patterns[:-1]).any(dim=1).sum()) + 1


@pytest.mark.parametrize(("spec", "seed"), [("mlp:3-8-8-2", 0), ("mlp:2-6-5-4-3", 1), ("mlp:5-10-2", 2)])
def test_walk_matches_dense_sampling(spec: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = build_architecture(spec).eval()
    width = model[1].in_features
    x = torch.randn(5, width)
    x_adv = x + 1.5 * torch.randn(5, width)

    counts = count_regions_crossed(model, x, x_adv)

    assert counts.dtype == torch.int64
    assert counts.shape == (5,)
    for row in range(5):
        assert counts[row].item() == _dense_count(model, x[row], x_adv[row])
    assert counts.max().item() > 1


def test_walk_on_small_cnn_matches_dense_sampling() -> None:
    torch.manual_seed(3)
    model = build_architecture("cnn:1x4x4-2-3").eval()
    x = torch.rand(3, 1, 4, 4)
    x_adv = x + 0.8 * torch.randn(3, 1, 4, 4)

    counts = count_regions_crossed(model, x, x_adv)

    for row in range(3):
        assert counts[row].item() == _dense_count(model, x[row], x_adv[row])


def test_walk_on_hand_built_network() -> None:
    # Hidden units relu(x - 1), relu(x - 2), relu(x - 3) on a 1-D input: the segment from 0 to
    # 2.5 crosses the boundaries at 1 and 2, so it meets 3 regions; 0 to 0.5 stays in one.
    model = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.copy_(torch.tensor([-1.0, -2.0, -3.0]))
    x = torch.zeros(3, 1)
    x_adv = torch.tensor([[2.5], [0.5], [3.5]])

    counts = count_regions_crossed(model.eval(), x, x_adv)

    assert counts.tolist() == [3, 1, 4]


def test_walk_does_not_change_model() -> None:
    model = build_architecture("mlp:3-4-2").eval()
    before = [parameter.clone() for parameter in model.parameters()]
    count_regions_crossed(model, torch.zeros(1, 3), torch.ones(1, 3))

    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert all(torch.equal(old, new) for old, new in zip(before, model.parameters()))


def test_walk_shape_mismatch_raises() -> None:
    model = build_architecture("mlp:3-4-2").eval()
    with pytest.raises(ValueError, match="same shape"):
        count_regions_crossed(model, torch.zeros(2, 3), torch.zeros(3, 3))


class _ScaledInput(nn.Module):
    """An MLP behind ``x * 1.0``: the same function, but not a chain, so the walk uses jvp."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x * 1.0)


def test_chain_and_jvp_walks_agree_on_wide_mlp() -> None:
    torch.manual_seed(4)
    mlp = build_architecture("mlp:64-48-48-48-10").eval()
    x = torch.rand(12, 64)
    x_adv = x + 0.5 * torch.sign(torch.randn(12, 64))

    chain_walker = RegionWalker(mlp, x)
    jvp_walker = RegionWalker(_ScaledInput(mlp).eval(), x)
    chain_counts = chain_walker.count(x, x_adv)
    jvp_counts = jvp_walker.count(x, x_adv)

    assert chain_walker.method == "chain"
    assert jvp_walker.method == "jvp"
    assert torch.equal(chain_counts, jvp_counts)
    assert chain_counts.min().item() > 5


def test_jvp_walk_matches_dense_sampling() -> None:
    torch.manual_seed(5)
    mlp = build_architecture("mlp:3-8-8-2").eval()
    model = _ScaledInput(mlp).eval()
    x = torch.randn(4, 3)
    x_adv = x + 1.5 * torch.randn(4, 3)

    walker = RegionWalker(model, x)
    counts = walker.count(x, x_adv)

    assert walker.method == "jvp"
    for row in range(4):
        assert counts[row].item() == _dense_count(mlp, x[row], x_adv[row])


def test_chain_walk_with_linear_layers_in_a_row() -> None:
    # Linear, Linear without a ReLU between them: the second layer's input is affine in t too.
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 6), nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    x = torch.randn(5, 3)
    x_adv = x + 2.0 * torch.randn(5, 3)

    walker = RegionWalker(model, x)
    counts = walker.count(x, x_adv)

    assert walker.method == "chain"
    for row in range(5):
        assert counts[row].item() == _dense_count(model, x[row], x_adv[row])


def test_chain_walk_groups_match_one_group(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(7)
    model = build_architecture("mlp:5-10-10-3").eval()
    x = torch.randn(9, 5)
    x_adv = x + 2.0 * torch.randn(9, 5)
    walker = RegionWalker(model, x)
    whole = walker.count(x, x_adv)

    # 40 elements of width 10 and a guess of 2 points make groups of 2 segments at first and
    # of 1 once points grow.
    monkeypatch.setattr(region_walk, "CHUNK_ELEMENTS", 40)
    monkeypatch.setattr(region_walk, "INITIAL_POINTS_PER_SEGMENT", 2.0)
    grouped = walker.count(x, x_adv)

    assert torch.equal(whole, grouped)
    assert whole.max().item() > 2


def test_walker_reuse_and_segment_of_zero_length() -> None:
    torch.manual_seed(8)
    model = build_architecture("mlp:4-6-3").eval()
    x = torch.randn(6, 4)
    x_adv = x + torch.randn(6, 4)
    walker = RegionWalker(model, x[:2])

    first = walker.count(x[:3], x_adv[:3])
    second = walker.count(x[3:], x_adv[3:])
    same_point = walker.count(x, x)

    assert torch.equal(torch.cat([first, second]), count_regions_crossed(model, x, x_adv))
    assert same_point.tolist() == [1] * 6


def test_walker_count_shape_mismatch_raises() -> None:
    model = build_architecture("mlp:3-4-2").eval()
    walker = RegionWalker(model, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same shape"):
        walker.count(torch.zeros(2, 3), torch.zeros(2, 4))
