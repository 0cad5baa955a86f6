"""Deterministic training of small classifiers: plain, PGD adversarial, weight decay, label
noise and input-gradient regularization.

The same configuration and seed give bit-identical weights on the same machine and torch
build: weights are initialized under a fixed seed, minibatches are shuffled by a dedicated
``torch.Generator``, and training runs with ``torch.use_deterministic_algorithms(True)`` on a
single CPU thread. Both global settings are restored afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import build_architecture
from ..seeding import derive_seed, seeded

logger = logging.getLogger(__name__)

INPUT_BOUNDS = (0.0, 1.0)


@dataclass(frozen=True)
class TrainingConfig:
    """Every hyperparameter of one training run.

    Attributes:
        architecture: spec for :func:`robusteval.architectures.build_architecture`.
        epochs: passes over the training set.
        batch_size: minibatch size.
        learning_rate: SGD step size.
        momentum: SGD momentum.
        weight_decay: L2 penalty coefficient passed to SGD (``0`` disables it).
        label_noise: fraction of training labels replaced, once before training, by a
            uniformly drawn different class.
        adversarial_epsilon: Linf radius of PGD adversarial training in input units
            (``0`` trains on clean inputs only).
        adversarial_steps: PGD steps per minibatch.
        adversarial_step_size: PGD step size in input units.
        input_gradient_penalty: coefficient of the mean squared L2 norm of the input
            gradient of the cross-entropy (``0`` disables it).
    """

    architecture: str
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_noise: float = 0.0
    adversarial_epsilon: float = 0.0
    adversarial_steps: int = 0
    adversarial_step_size: float = 0.0
    input_gradient_penalty: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected {name} >= 1, but got {getattr(self, name)}.")
        for name in ("learning_rate", "momentum", "weight_decay", "adversarial_epsilon",
                     "adversarial_step_size", "input_gradient_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"Expected {name} >= 0, but got {getattr(self, name)}.")
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"Expected label_noise in [0, 1), but got {self.label_noise}.")
        if self.adversarial_epsilon > 0 and (self.adversarial_steps < 1 or self.adversarial_step_size <= 0):
            raise ValueError(
                "Expected adversarial_steps >= 1 and adversarial_step_size > 0 with adversarial_epsilon "
                f"{self.adversarial_epsilon}, but got {self.adversarial_steps} steps of size "
                f"{self.adversarial_step_size}. Set both, or set adversarial_epsilon to 0."
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the hyperparameters as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EpochRecord:
    """Mean training loss over an epoch's minibatches (including any regularizer)."""

    epoch: int
    train_loss: float


EpochCallback = Callable[[int, nn.Module, EpochRecord], None]


@contextmanager
def deterministic_cpu() -> Iterator[None]:
    """Run the ``with`` body with deterministic algorithms on one CPU thread, then restore both."""
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
    random_start: bool = True,
) -> torch.Tensor:
    """Maximize the cross-entropy within an Linf ball with projected gradient ascent.

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks" (ICLR 2018):
    start uniformly inside the ball, step along the sign of the input gradient, project back
    onto the ball and onto the input bounds [0, 1].

    Args:
        model: classifier returning logits ``(N, K)``.
        x: inputs ``(N, d)`` in [0, 1].
        y: labels ``(N,)``.
        epsilon: Linf radius in input units.
        steps: number of ascent steps.
        step_size: size of each signed step in input units.
        generator: source of the random start; the global generator when ``None``.
        random_start: start at a uniform point of the ball instead of at ``x``.

    Returns:
        Adversarial inputs ``(N, d)``, detached, with ``||x_adv - x||_inf <= epsilon``.
    """
    lower, upper = INPUT_BOUNDS
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
        x_adv = (x + epsilon * noise).clamp(lower, upper)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_size * gradient.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x - epsilon), x + epsilon).clamp(lower, upper)
    return x_adv.detach()


def corrupt_labels(y: torch.Tensor, fraction: float, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Replace ``round(fraction * N)`` labels, chosen at random, by a different class drawn uniformly.

    Args:
        y: labels ``(N,)``.
        fraction: share of labels to replace, in [0, 1).
        num_classes: number of classes ``K``.
        generator: source of both draws.

    Returns:
        New labels ``(N,)``; exactly ``round(fraction * N)`` of them differ from ``y``.
    """
    noisy = y.clone()
    count = round(fraction * len(y))
    if count == 0:
        return noisy
    chosen = torch.randperm(len(y), generator=generator)[:count]
    # An offset in 1..K-1 modulo K always lands on a different class, each with equal probability.
    offsets = torch.randint(1, num_classes, (count,), generator=generator)
    noisy[chosen] = (y[chosen] + offsets) % num_classes
    return noisy


def train_classifier(
    config: TrainingConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    on_epoch: EpochCallback | None = None,
) -> tuple[nn.Module, list[EpochRecord]]:
    """Train ``config.architecture`` on ``(x, y)`` with SGD, deterministically.

    Args:
        config: hyperparameters.
        x: training inputs ``(N, d)`` float32 in [0, 1].
        y: training labels ``(N,)`` int64.
        seed: drives initialization, label noise, shuffling and PGD random starts.
        on_epoch: called after every epoch with the 1-based epoch number, the model (in eval
            mode) and the epoch's record, for example to save a checkpoint.

    Returns:
        The trained model in eval mode and one record per epoch.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"Expected inputs (N, d) and labels (N,), but got {tuple(x.shape)} and {tuple(y.shape)}.")
    num_classes = int(y.max()) + 1

    with deterministic_cpu(), seeded(derive_seed(seed, "init")):
        model = build_architecture(config.architecture)
    labels = corrupt_labels(y, config.label_noise, num_classes, torch.Generator().manual_seed(derive_seed(seed, "labels")))
    shuffle = torch.Generator().manual_seed(derive_seed(seed, "shuffle"))
    attack_noise = torch.Generator().manual_seed(derive_seed(seed, "pgd"))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )

    history: list[EpochRecord] = []
    with deterministic_cpu():
        for epoch in range(1, config.epochs + 1):
            loss_sum, batches = 0.0, 0
            for batch in torch.randperm(len(x), generator=shuffle).split(config.batch_size):
                loss = _minibatch_loss(model, config, x[batch], labels[batch], attack_noise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach().item()
                batches += 1
            model.eval()
            record = EpochRecord(epoch=epoch, train_loss=loss_sum / batches)
            history.append(record)
            logger.debug("epoch %d: mean training loss %.4f", epoch, record.train_loss)
            if on_epoch is not None:
                on_epoch(epoch, model, record)
    model.eval()
    return model, history


def _minibatch_loss(
    model: nn.Module, config: TrainingConfig, x: torch.Tensor, y: torch.Tensor, attack_noise: torch.Generator
) -> torch.Tensor:
    if config.adversarial_epsilon > 0:
        model.eval()
        x = pgd_linf(
            model, x, y, epsilon=config.adversarial_epsilon, steps=config.adversarial_steps,
            step_size=config.adversarial_step_size, generator=attack_noise,
        )
    model.train()

    if config.input_gradient_penalty == 0:
        return F.cross_entropy(model(x), y)

    # Ross and Doshi-Velez, "Improving the Adversarial Robustness and Interpretability of Deep
    # Neural Networks by Regularizing their Input Gradients" (AAAI 2018): add the squared L2
    # norm of each sample's input gradient of its own cross-entropy, averaged over the batch.
    x = x.detach().requires_grad_(True)
    per_sample = F.cross_entropy(model(x), y, reduction="none")
    (input_gradient,) = torch.autograd.grad(per_sample.sum(), x, create_graph=True)
    penalty = input_gradient.pow(2).sum(dim=1).mean()
    return per_sample.mean() + config.input_gradient_penalty * penalty


@torch.no_grad()
def accuracy_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Return the accuracy and mean cross-entropy of ``model`` (eval mode) on ``(x, y)``."""
    model.eval()
    logits = model(x)
    accuracy = float((logits.argmax(dim=1) == y).double().mean())
    return accuracy, float(F.cross_entropy(logits, y))
