"""Region statistics on hand-made activation patterns."""

from __future__ import annotations

import pytest
import torch

from robusteval.analysis import region_statistics
from robusteval.bounds import evaluate_chain, extract_relu_chain
from robusteval.architectures import build_architecture


def test_statistics_of_known_patterns() -> None:
    first = torch.tensor([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=torch.bool)
    second = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.bool)
    tangent = torch.tensor([[2.0, 4.0], [2.0, 4.0], [1.0, 1.0], [5.0, 5.0]])

    stats = region_statistics([first, second], tangent)

    assert stats["distinct_patterns"] == 3
    assert stats["samples"] == 4
    assert stats["largest_region_samples"] == 2
    assert stats["singleton_regions"] == 2
    assert stats["active_units_per_layer"]["mean"] == pytest.approx([1.0, 1.25])
    assert stats["active_units_per_layer"]["min"] == [1.0, 0.0]
    assert stats["active_units_per_layer"]["max"] == [1.0, 2.0]
    assert stats["total_active_units"]["mean"] == pytest.approx(2.25)
    assert stats["tangent_sensitivity_by_region"][0] == {"samples": 2, "tangent_sensitivity": pytest.approx(3.0)}
    assert stats["max_relative_spread_within_region"] == 0.0


def test_spread_within_region_is_rounding_on_real_network() -> None:
    torch.manual_seed(0)
    model = build_architecture("mlp:2-3-2").double().eval()
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    forward = evaluate_chain(chain, torch.randn(50, 2, dtype=torch.float64))

    stats = region_statistics(list(forward.masks), forward.tangent_sensitivity)

    assert stats["distinct_patterns"] < 50
    assert stats["max_relative_spread_within_region"] < 1e-12


def test_mismatched_rows_raise() -> None:
    with pytest.raises(ValueError, match="Expected 3 rows"):
        region_statistics([torch.zeros(2, 4)], torch.zeros(3, 2))
