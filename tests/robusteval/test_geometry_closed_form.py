"""Tests for the closed-form analysis of fully connected ReLU chains against autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacfwd, jacrev

from robusteval.geometry import closed_form, recover_chain
from robusteval.geometry.closed_form import LocalLinearPiece, chain_analysis


def _reference_tangent_sensitivity(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Build d/dx grad_theta f_k(x) in full with torch.func and take its Frobenius norm, ``(N, K)``."""
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


def _reference_unit_gradients(model: nn.Sequential, sample: torch.Tensor) -> torch.Tensor:
    """Return the input gradients of the pre-activations that enter a ReLU, ``(units, d)``, by autograd."""

    def preactivations(s: torch.Tensor) -> torch.Tensor:
        values = []
        h = s
        for module in model:
            if isinstance(module, nn.ReLU):
                values.append(h)
            h = module(h)
        return torch.cat(values)

    return torch.autograd.functional.jacobian(preactivations, sample)


def _check_against_autograd(model: nn.Sequential, x: torch.Tensor, piece: LocalLinearPiece, values: torch.Tensor) -> None:
    torch.testing.assert_close(values, _reference_tangent_sensitivity(model, x), rtol=1e-10, atol=0)
    torch.testing.assert_close(piece.logits, model(x), rtol=1e-12, atol=1e-12)
    for index, sample in enumerate(x):
        jacobian = torch.autograd.functional.jacobian(lambda s: model(s.unsqueeze(0)).squeeze(0), sample)
        torch.testing.assert_close(piece.input_jacobian[index], jacobian, rtol=1e-12, atol=1e-12)
        unit_gradients = _reference_unit_gradients(model, sample)
        expected_l2 = torch.linalg.vector_norm(unit_gradients, dim=1)
        expected_l1 = torch.linalg.vector_norm(unit_gradients, ord=1, dim=1)
        torch.testing.assert_close(torch.cat([v[index] for v in piece.unit_gradient_l2]), expected_l2, rtol=1e-12, atol=0)
        torch.testing.assert_close(torch.cat([v[index] for v in piece.unit_gradient_l1]), expected_l1, rtol=1e-12, atol=0)


def _inputs(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_unit_gradient_reference_on_hand_example() -> None:
    """The helper's reference itself: z = W1 x with W1 = [[1, 2], [3, -4]] has gradients W1's rows."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -4.0]]))
    gradients = _reference_unit_gradients(model, torch.tensor([0.5, 0.25], dtype=torch.float64))
    torch.testing.assert_close(gradients, torch.tensor([[1.0, 2.0], [3.0, -4.0]], dtype=torch.float64))


def test_relu_mlp_matches_autograd() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 4)).double().eval()
    x = _inputs(5, 6, seed=3)
    chain = recover_chain(model, x)
    assert chain is not None
    piece, values = chain_analysis(chain, x, memory_budget=2**30)
    _check_against_autograd(model, x, piece, values)


def test_layers_without_relu_match_autograd() -> None:
    """Linear layers with no ReLU between them, before the first ReLU and after the last one."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Linear(5, 6), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 4), nn.Linear(4, 3),
    ).double().eval()
    x = _inputs(4, 5, seed=4)
    chain = recover_chain(model, x)
    assert chain is not None
    assert [layer.relu_after for layer in chain.layers] == [False, True, False, True, False, False]
    piece, values = chain_analysis(chain, x, memory_budget=2**30)
    assert len(piece.unit_gradient_l2) == 2
    _check_against_autograd(model, x, piece, values)


def test_single_linear_layer() -> None:
    """For f(x) = W x + b, grad_W f_k is x^T in row k, whose input derivative is the d x d identity."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 3)).double().eval()
    x = _inputs(4, 5, seed=5)
    chain = recover_chain(model, x)
    assert chain is not None
    piece, values = chain_analysis(chain, x, memory_budget=2**30)
    # The bias gradient is constant, so TS_k is the Frobenius norm of the 5x5 identity, sqrt(5).
    torch.testing.assert_close(values, torch.full((4, 3), 5.0**0.5, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(piece.input_jacobian, model[0].weight.detach().expand(4, -1, -1), rtol=0, atol=0)
    assert piece.preactivations == []


def test_chunks_match_one_pass() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 4)).double().eval()
    x = _inputs(7, 6, seed=6)
    chain = recover_chain(model, x)
    assert chain is not None
    whole, whole_values = chain_analysis(chain, x, memory_budget=2**30)
    # A 1-byte budget forces one sample per chunk.
    chunked, chunked_values = chain_analysis(chain, x, memory_budget=1)
    torch.testing.assert_close(chunked_values, whole_values, rtol=1e-12, atol=0)
    torch.testing.assert_close(chunked.logits, whole.logits, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(chunked.input_jacobian, whole.input_jacobian, rtol=1e-12, atol=0)
    for name in ("preactivations", "unit_gradient_l2", "unit_gradient_l1"):
        for got, expected in zip(getattr(chunked, name), getattr(whole, name), strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_float32_stays_float32() -> None:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 4)).eval()
    x = _inputs(5, 6, seed=7, dtype=torch.float32)
    chain = recover_chain(model, x)
    assert chain is not None
    piece, values = chain_analysis(chain, x, memory_budget=2**30)
    tensors = [values, piece.logits, piece.input_jacobian, *piece.preactivations, *piece.unit_gradient_l2, *piece.unit_gradient_l1]
    assert all(t.dtype == torch.float32 for t in tensors)
    reference = _reference_tangent_sensitivity(model.double(), x.double())
    torch.testing.assert_close(values.double(), reference, rtol=1e-5, atol=0)


@pytest.mark.parametrize("samples", [1, 3])
def test_input_jacobian_is_contiguous(samples: int) -> None:
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    x = _inputs(samples, 4, seed=8)
    chain = recover_chain(model, x)
    assert chain is not None
    piece, _ = chain_analysis(chain, x, memory_budget=2**30)
    assert piece.input_jacobian.shape == (samples, 3, 4)
    assert piece.input_jacobian.is_contiguous()


def test_working_set_cap_splits_into_equal_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 4)).double().eval()
    x = _inputs(10, 6, seed=9)
    chain = recover_chain(model, x)
    assert chain is not None
    whole, whole_values = chain_analysis(chain, x, memory_budget=2**30)
    sizes: list[int] = []
    original = closed_form._chain_chunk

    def recording_chunk(chain_: object, flat: torch.Tensor, forward: object) -> tuple[LocalLinearPiece, torch.Tensor]:
        sizes.append(flat.shape[0])
        return original(chain_, flat, forward)

    # Room for 4 samples per chunk: 10 samples need 3 chunks, of ceil(10 / 3) = 4 samples except the last.
    monkeypatch.setattr(closed_form, "CHUNK_WORKING_SET_BYTES", 4 * closed_form._bytes_per_sample(chain, 8))
    monkeypatch.setattr(closed_form, "_chain_chunk", recording_chunk)
    chunked, chunked_values = chain_analysis(chain, x, memory_budget=2**30)

    assert sizes == [4, 4, 2]
    torch.testing.assert_close(chunked_values, whole_values, rtol=1e-12, atol=0)
    torch.testing.assert_close(chunked.input_jacobian, whole.input_jacobian, rtol=1e-12, atol=0)


@pytest.mark.parametrize("budget_mib", [1, 4, 16])
def test_float32_chunks_equal_one_pass_exactly(budget_mib: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """In float32 the region-distance inputs must not depend on the chunk size, not even in the last bit."""
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    x = torch.rand(60, 784, generator=torch.Generator().manual_seed(11))
    chain = recover_chain(model, x)
    assert chain is not None

    chunked, chunked_values = chain_analysis(chain, x, memory_budget=budget_mib * 2**20)
    # Without the working-set cap, all 60 samples (about 140 MiB) form one chunk.
    monkeypatch.setattr(closed_form, "CHUNK_WORKING_SET_BYTES", 2**30)
    whole, whole_values = chain_analysis(chain, x, memory_budget=2**30)

    assert torch.equal(chunked_values, whole_values)
    assert torch.equal(chunked.logits, whole.logits)
    assert torch.equal(chunked.input_jacobian, whole.input_jacobian)
    for name in ("preactivations", "unit_gradient_l2", "unit_gradient_l1"):
        for got, expected in zip(getattr(chunked, name), getattr(whole, name), strict=True):
            assert torch.equal(got, expected), name
