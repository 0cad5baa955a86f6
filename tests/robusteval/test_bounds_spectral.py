"""Spectral norm of the mixed derivative by power iteration, against an SVD."""

from __future__ import annotations

import pytest
import torch

from robusteval.architectures import build_architecture
from robusteval.bounds import compute_bounds, mixed_derivative_matrix, spectral_norm

# torch 2.13 loads the forward-mode AD decompositions through torch.jit.script, which warns once.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.mark.parametrize(("spec", "seed"), [("mlp:5-7-6-3", 0), ("mlp:4-12-2", 1), ("cnn:1x4x4-3-4", 2)])
def test_power_iteration_matches_svd(spec: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = build_architecture(spec).double().eval()
    shape = (1, 4, 4) if spec.startswith("cnn") else (model[1].in_features,)
    sample = torch.randn(shape, dtype=torch.float64)

    for output in range(2):
        matrix = mixed_derivative_matrix(model, sample, output)  # (P, d)
        reference = torch.linalg.matrix_norm(matrix, ord=2).item()
        estimate, steps = spectral_norm(model, sample, output, iterations=500, tolerance=1e-12)

        assert matrix.shape == (sum(p.numel() for p in model.parameters()), sample.numel())
        assert estimate == pytest.approx(reference, rel=1e-6)
        assert steps < 500


def test_spectral_entry_on_cnn() -> None:
    torch.manual_seed(3)
    model = build_architecture("cnn:1x4x4-2-3").double().eval()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    predicted = model(x).argmax(dim=1)
    frobenius = torch.stack(
        [torch.stack([mixed_derivative_matrix(model, x[row], k).norm() for k in range(3)]) for row in range(3)]
    )

    section = compute_bounds(model, tangent_sensitivity=frobenius, active_units=None, spectral=True, x=x)

    entry = section["spectral_norm"]
    assert section["width"]["applies"] is False
    assert entry["applies"] is True
    assert entry["held_on_all_samples"] is True
    reference = max(
        torch.linalg.matrix_norm(mixed_derivative_matrix(model, x[row], int(predicted[row])), ord=2).item()
        for row in range(3)
    )
    assert entry["value"] == pytest.approx(reference, rel=1e-4)


def test_spectral_requires_inputs() -> None:
    model = build_architecture("mlp:3-4-2").eval()
    with pytest.raises(ValueError, match="Expected inputs x"):
        compute_bounds(model, tangent_sensitivity=torch.ones(1, 2), active_units=None, spectral=True)
