"""Generalization estimates on a small MLP trained on digits, against direct computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robusteval.architectures import build_architecture
from robusteval.bounds import evaluate_chain, extract_relu_chain, generalization_estimates
from robusteval.digits import digits_split


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x_train, y_train = (torch.from_numpy(array) for array in digits_split("train"))
    x_test, y_test = (torch.from_numpy(array) for array in digits_split("test"))
    x_train, y_train = x_train[:400], y_train[:400]
    model = build_architecture("mlp:64-16-10")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        optimizer.step()
    return model.eval(), x_train, y_train, x_test[:200], y_test[:200]


def test_gap_matches_direct_losses(trained: tuple) -> None:
    model, x_train, y_train, x_test, y_test = trained
    with torch.no_grad():
        train_loss = nn.functional.cross_entropy(model(x_train), y_train).item()
        test_loss = nn.functional.cross_entropy(model(x_test), y_test).item()
        train_accuracy = (model(x_train).argmax(1) == y_train).float().mean().item()
        test_accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()

    result = generalization_estimates(model, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, batch_size=64)

    assert result["train"]["loss"] == pytest.approx(train_loss, rel=1e-5)
    assert result["test"]["loss"] == pytest.approx(test_loss, rel=1e-5)
    assert result["gap"]["loss"] == pytest.approx(test_loss - train_loss, rel=1e-4)
    assert result["gap"]["accuracy"] == pytest.approx(train_accuracy - test_accuracy, abs=1e-6)
    assert result["gap"]["loss"] > 0
    assert result["estimates"]["trivial"]["estimated_test_loss"] == pytest.approx(train_loss, rel=1e-5)


def test_measures_match_references(trained: tuple) -> None:
    model, x_train, y_train, x_test, y_test = trained
    result = generalization_estimates(model, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

    jacobians = torch.func.vmap(torch.func.jacrev(lambda row: model(row.unsqueeze(0))[0]))(x_test)  # (N, K, d)
    expected_jacobian_norm = jacobians.flatten(1).norm(dim=1).mean().item()
    chain, _ = extract_relu_chain(model)
    assert chain is not None
    tangent = evaluate_chain(chain, x_test).tangent_sensitivity
    predicted = model(x_test).argmax(1)
    expected_tangent = tangent[torch.arange(len(predicted)), predicted].mean().item()

    measures = result["test"]["measures"]
    assert measures["input_jacobian_norm"] == pytest.approx(expected_jacobian_norm, rel=1e-5)
    assert measures["tangent_sensitivity"] == pytest.approx(expected_tangent, rel=1e-10)
    train_measures = result["train"]["measures"]
    for name, estimate in result["estimates"].items():
        if name == "trivial":
            continue
        ratio = measures[name] / train_measures[name]
        assert estimate["ratio"] == pytest.approx(ratio, rel=1e-12)
        assert estimate["estimated_test_loss"] == pytest.approx(result["train"]["loss"] * ratio, rel=1e-12)
        assert estimate["error"] == pytest.approx(estimate["estimated_test_loss"] - result["test"]["loss"], rel=1e-12)


def test_cnn_has_only_baselines() -> None:
    torch.manual_seed(1)
    model = build_architecture("cnn:1x4x4-2-3").eval()
    x = torch.rand(6, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])

    result = generalization_estimates(model, x_train=x, y_train=y, x_test=x, y_test=y)

    assert result["chain_measures_apply"] is False
    assert set(result["estimates"]) == {"trivial", "input_jacobian_norm"}
    assert result["estimates"]["input_jacobian_norm"]["ratio"] == pytest.approx(1.0)


def test_label_shape_is_checked() -> None:
    model = build_architecture("mlp:3-4-2").eval()
    with pytest.raises(ValueError, match="y_test of shape"):
        generalization_estimates(
            model, x_train=torch.rand(2, 3), y_train=torch.zeros(2, dtype=torch.int64),
            x_test=torch.rand(2, 3), y_test=torch.zeros(3, dtype=torch.int64),
        )


def test_train_mode_model_keeps_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).train()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    x = torch.rand(20, 4)
    y = torch.randint(0, 3, (20,))

    generalization_estimates(model, x_train=x, y_train=y, x_test=x + 0.1, y_test=y)

    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name
    assert all(module.training for module in model.modules())
