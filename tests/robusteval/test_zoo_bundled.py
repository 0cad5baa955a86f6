"""The bundled models: loadable without unpickling, accurate as recorded, ordered in robustness."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robusteval.architectures import build_architecture
from robusteval.digits import digits_split
from robusteval.zoo.artifacts import BUNDLED_DIR, build_bundled_models
from robusteval.zoo.members import BUNDLED

NAMES = [member.name for member in BUNDLED]


def _load(name: str) -> tuple[torch.nn.Module, dict]:
    metadata = json.loads((BUNDLED_DIR / f"{name}.json").read_text(encoding="utf-8"))
    model = build_architecture(metadata["architecture"])
    model.load_state_dict(torch.load(BUNDLED_DIR / f"{name}.pt", weights_only=True))
    return model.eval(), metadata


def _fgsm_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> float:
    # Fast gradient sign method (Goodfellow et al., 2015), written here independently of the
    # zoo's PGD so that the check does not reuse the training code.
    x = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    adversarial = (x.detach() + epsilon * gradient.sign()).clamp(0.0, 1.0)
    with torch.no_grad():
        return float((model(adversarial).argmax(dim=1) == y).double().mean())


@pytest.fixture(scope="module")
def digits_test_split() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_split("test")
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.mark.parametrize("name", NAMES)
def test_bundled_metadata_fields(name: str) -> None:
    _, metadata = _load(name)
    for key in ("name", "architecture", "description", "training", "command", "sha256", "test_accuracy", "train_accuracy"):
        assert key in metadata, key
    assert metadata["name"] == name
    assert metadata["command"] == "python scripts/build_bundled_models.py"
    assert metadata["training"]["seed"] == 0
    assert metadata["training"]["epochs"] >= 1


@pytest.mark.parametrize("name", NAMES)
def test_bundled_sha256_matches_file(name: str) -> None:
    _, metadata = _load(name)
    assert hashlib.sha256((BUNDLED_DIR / f"{name}.pt").read_bytes()).hexdigest() == metadata["sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_bundled_file_is_small(name: str) -> None:
    assert (BUNDLED_DIR / f"{name}.pt").stat().st_size < 100_000


@pytest.mark.parametrize("name", NAMES)
def test_bundled_recorded_test_accuracy(name: str, digits_test_split: tuple[torch.Tensor, torch.Tensor]) -> None:
    model, metadata = _load(name)
    x, y = digits_test_split
    with torch.no_grad():
        correct = int((model(x).argmax(dim=1) == y).sum())
    # The recorded accuracy is correct / N as a float; the count must match exactly.
    assert correct == round(metadata["test_accuracy"] * len(y))
    assert metadata["test_accuracy"] >= 0.95


def test_demo_reaches_full_train_fit() -> None:
    model, metadata = _load("demo")
    x, y = (torch.from_numpy(a) for a in digits_split("train"))
    with torch.no_grad():
        accuracy = float((model(x).argmax(dim=1) == y).double().mean())
    assert accuracy == pytest.approx(metadata["train_accuracy"], abs=1e-12)


@pytest.mark.parametrize("epsilon", [0.05, 0.1])
def test_bundled_robustness_order(epsilon: float, digits_test_split: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits_test_split
    accuracy = {name: _fgsm_accuracy(_load(name)[0], x, y, epsilon) for name in NAMES}
    # Adversarial training at epsilon 0.1 must beat plain training clearly; input-gradient
    # regularization must land strictly between them.
    assert accuracy["adversarial"] > accuracy["demo"] + 0.03
    assert accuracy["gradient-regularized"] > accuracy["demo"]
    assert accuracy["adversarial"] > accuracy["gradient-regularized"]


def test_build_script_reproduces_demo(tmp_path: Path) -> None:
    (written,) = build_bundled_models(tmp_path, ["demo"])
    recorded = json.loads((BUNDLED_DIR / "demo.json").read_text(encoding="utf-8"))
    assert hashlib.sha256(written.read_bytes()).hexdigest() == recorded["sha256"]
    assert written.read_bytes() == (BUNDLED_DIR / "demo.pt").read_bytes()
    assert json.loads((tmp_path / "demo.json").read_text(encoding="utf-8")) == recorded


def test_build_rejects_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        build_bundled_models(tmp_path, ["no-such-model"])
