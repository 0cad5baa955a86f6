"""Shared fixtures for the input-space attack tests: small networks trained on real digits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from robusteval.architectures import build_architecture
from robusteval.attacks import AttackBudget, InputAttackOutcome, record_outcome
from robusteval.digits import digits_split
from robusteval.results import NormPair, SampleRecord
from robusteval.seeding import seeded

# Iteration budgets small enough for a test run of a few seconds per attack suite.
FAST_BUDGET = AttackBudget(steps=10, restarts=1, square_queries=100, cw_steps=30, cw_binary_search_steps=3)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run the test with one torch thread: on a loaded machine, small attacks run 20x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, epochs: int) -> nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(epochs):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def digits_train() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_split("train")
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.fixture(scope="session")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 32 test samples, flat ``(32, 64)`` in [0, 1]."""
    x, y = digits_split("test")
    return torch.from_numpy(x[:32]), torch.from_numpy(y[:32])


@pytest.fixture(scope="session")
def digits_mlp(digits_train: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """A 64-64-10 ReLU MLP trained full-batch for 80 Adam steps (about 97% test accuracy)."""
    with seeded(0):
        model = build_architecture("mlp:64-64-10")
        return _train(model, *digits_train, epochs=80)


@pytest.fixture(scope="session")
def digits_cnn(digits_train: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """A two-layer ReLU CNN on digits reshaped to ``(N, 1, 8, 8)``."""
    x, y = digits_train
    with seeded(0):
        model = build_architecture("cnn:1x8x8-8-16-10")
        return _train(model, x.reshape(-1, 1, 8, 8), y, epochs=60)


@pytest.fixture(scope="session")
def few_class_mlp(digits_train: tuple[torch.Tensor, torch.Tensor]) -> Callable[[tuple[int, ...]], nn.Module]:
    """Build an MLP trained on the given digit classes only, relabelled 0, 1, ..."""
    cache: dict[tuple[int, ...], nn.Module] = {}

    def build(classes: tuple[int, ...]) -> nn.Module:
        if classes not in cache:
            x, y = few_class_data(digits_train, classes)
            with seeded(0):
                cache[classes] = _train(build_architecture(f"mlp:64-16-{len(classes)}"), x, y, epochs=60)
        return cache[classes]

    return build


def few_class_data(
    data: tuple[torch.Tensor, torch.Tensor], classes: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data
    keep = torch.isin(y, torch.tensor(classes))
    relabel = {digit: index for index, digit in enumerate(classes)}
    return x[keep], torch.tensor([relabel[int(label)] for label in y[keep]])


@pytest.fixture(scope="session")
def few_class_test() -> Callable[[tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]]:
    """Return the test samples of the given digit classes, relabelled 0, 1, ..."""
    x, y = digits_split("test")
    data = (torch.from_numpy(x), torch.from_numpy(y))
    return lambda classes: tuple(part[:32] for part in few_class_data(data, classes))  # type: ignore[return-value]


@pytest.fixture
def fast_budget() -> AttackBudget:
    return FAST_BUDGET


@pytest.fixture
def sample_records() -> Callable[[InputAttackOutcome, torch.Tensor], list[SampleRecord]]:
    """Build one SampleRecord per sample of a block and fill it from the outcome."""

    def build(outcome: InputAttackOutcome, labels: torch.Tensor) -> list[SampleRecord]:
        samples = [
            SampleRecord(
                index=index, label=int(labels[index]), prediction=-1, correct=bool(outcome.correct[index]),
                tangent_sensitivity=[], region_distance=NormPair(), linear_decision_distance=NormPair(),
                certified_radius=NormPair(), min_adversarial_distance=NormPair(),
            )
            for index in range(len(labels))
        ]
        record_outcome(samples, outcome)
        return samples

    return build
