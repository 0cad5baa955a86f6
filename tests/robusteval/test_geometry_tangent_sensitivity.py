"""Tests for tangent sensitivity: closed form, exact forward-over-reverse and Hutchinson."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacfwd, jacrev

from robusteval.architectures import build_architecture
from robusteval.geometry import estimate_tangent_sensitivity, recover_chain, tangent_sensitivity

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _reference_tangent_sensitivity(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Build d/dx grad_theta f_k(x) in full with autograd and take its Frobenius norm, ``(N, K)``."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def logits(p: dict[str, torch.Tensor], sample: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (sample.unsqueeze(0),)).squeeze(0)

    rows = []
    for sample in x:
        tangent = jacfwd(lambda s: jacrev(logits)(params, s))(sample)  # each (K, *param, *input)
        num_classes = next(iter(tangent.values())).shape[0]
        squared = sum(t.reshape(num_classes, -1).square().sum(dim=1) for t in tangent.values())
        rows.append(squared.sqrt())
    return torch.stack(rows)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return build_architecture("mlp:6-9-7-4").double().eval()


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)).double().eval()


def _inputs(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_closed_form_matches_autograd_mlp() -> None:
    model, x = _mlp(), _inputs(5, 6)
    estimate = estimate_tangent_sensitivity(model, x)
    assert estimate.method == "closed_form"
    assert estimate.stderr is None
    torch.testing.assert_close(estimate.values, _reference_tangent_sensitivity(model, x), rtol=1e-6, atol=0)


def test_closed_form_matches_autograd_scripted_mlp() -> None:
    model, x = _mlp(), _inputs(4, 6, seed=1)
    estimate = estimate_tangent_sensitivity(torch.jit.script(model), x)
    assert estimate.method == "closed_form"
    torch.testing.assert_close(estimate.values, _reference_tangent_sensitivity(model, x), rtol=1e-6, atol=0)


def test_closed_form_matches_autograd_state_dict_model() -> None:
    torch.manual_seed(2)
    trained = build_architecture("mlp:16-10-5")
    rebuilt = build_architecture("mlp:16-10-5")
    rebuilt.load_state_dict(trained.state_dict())
    rebuilt = rebuilt.double().eval()
    x = _inputs(3, 1, 4, 4, seed=2)
    estimate = estimate_tangent_sensitivity(rebuilt, x)
    assert estimate.method == "closed_form"
    torch.testing.assert_close(estimate.values, _reference_tangent_sensitivity(rebuilt, x), rtol=1e-6, atol=0)


def test_closed_form_on_exported_model() -> None:
    model, x = _mlp(), _inputs(3, 6, seed=3)
    reference = _reference_tangent_sensitivity(model, x)
    exported = torch.export.export(model, (x,))
    assert recover_chain(exported, x) is not None
    torch.testing.assert_close(tangent_sensitivity(exported, x, method="closed_form"), reference, rtol=1e-6, atol=0)


def test_exact_generic_matches_closed_form() -> None:
    model, x = _mlp(), _inputs(4, 6, seed=4)
    closed = tangent_sensitivity(model, x, method="closed_form")
    estimate = estimate_tangent_sensitivity(model, x, method="exact", memory_budget=50_000)
    assert estimate.method == "exact"
    torch.testing.assert_close(estimate.values, closed, rtol=1e-6, atol=0)


def test_hutchinson_within_four_standard_errors() -> None:
    model, x = _mlp(), _inputs(4, 6, seed=5)
    closed = tangent_sensitivity(model, x, method="closed_form")
    estimate = estimate_tangent_sensitivity(
        model, x, method="hutchinson", probes=64, generator=torch.Generator().manual_seed(0)
    )
    assert estimate.method == "hutchinson"
    assert estimate.probes == 64
    assert estimate.stderr is not None
    z_scores = (estimate.values - closed).abs() / estimate.stderr
    assert z_scores.max() < 4
    # The error must shrink with more probes: at 1024 probes the standard error is about 4x smaller.
    precise = estimate_tangent_sensitivity(
        model, x, method="hutchinson", probes=1024, generator=torch.Generator().manual_seed(1)
    )
    assert precise.stderr is not None
    assert (precise.stderr < estimate.stderr).all()
    assert ((precise.values - closed).abs() / precise.stderr).max() < 4


@pytest.mark.parametrize("scripted", [False, True])
def test_cnn_exact_matches_autograd(scripted: bool) -> None:
    model, x = _cnn(), _inputs(3, 1, 4, 4, seed=6)
    candidate = torch.jit.script(model) if scripted else model
    estimate = estimate_tangent_sensitivity(candidate, x)
    assert estimate.method == "exact"  # d = 16 <= 4 * 64 probes
    torch.testing.assert_close(estimate.values, _reference_tangent_sensitivity(model, x), rtol=1e-6, atol=0)


def test_cnn_hutchinson_within_four_standard_errors() -> None:
    model, x = _cnn(), _inputs(3, 1, 4, 4, seed=7)
    estimate = estimate_tangent_sensitivity(
        torch.jit.script(model), x, method="hutchinson", probes=128, generator=torch.Generator().manual_seed(2)
    )
    assert estimate.stderr is not None
    reference = _reference_tangent_sensitivity(model, x)
    assert ((estimate.values - reference).abs() / estimate.stderr).max() < 4


def test_auto_picks_hutchinson_for_wide_inputs() -> None:
    model, x = _cnn(), _inputs(2, 1, 4, 4, seed=8)
    estimate = estimate_tangent_sensitivity(model, x, probes=2, generator=torch.Generator().manual_seed(3))
    assert estimate.method == "hutchinson"  # d = 16 > 4 * 2 probes
    assert estimate.probes == 2


def test_invalid_arguments_raise() -> None:
    model, x = _cnn(), _inputs(2, 1, 4, 4)
    with pytest.raises(ValueError, match="method"):
        tangent_sensitivity(model, x, method="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probes"):
        tangent_sensitivity(model, x, method="hutchinson", probes=1)
    with pytest.raises(ValueError, match="closed_form"):
        tangent_sensitivity(model, x, method="closed_form")
