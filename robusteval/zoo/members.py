"""The documented model family and the models bundled with robusteval.

Every member is a ReLU MLP trained on the digits training split (1,257 images of 8x8 pixels
in [0, 1]) with SGD. The family varies one factor at a time around the ``plain`` member:

====================  =========================================================================
member                what differs from ``plain``
====================  =========================================================================
plain                 nothing: ``mlp:64-64-64-10``, 30 epochs, batch 32, lr 0.05, momentum 0.9
adversarial-0.05      PGD Linf adversarial training, epsilon 0.05, 7 steps of epsilon / 2.8
adversarial-0.1       the same with epsilon 0.1
weight-decay-1e-4     SGD weight decay 1e-4 (likewise 1e-3 and 1e-2)
label-noise-0.1       10% of training labels replaced by another class (likewise 20% and 40%)
width-16              hidden width 16 (likewise 32 and 128)
depth-1               one hidden layer of 64 units (likewise 3 and 4 hidden layers)
input-gradient-0.01   input-gradient penalty 0.01 (likewise 0.03)
====================  =========================================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .training import TrainingConfig

BASE = TrainingConfig(architecture="mlp:64-64-64-10")
QUICK_EPOCHS = 10
ADVERSARIAL_STEPS = 7


@dataclass(frozen=True)
class ZooMember:
    """One named training recipe of the family."""

    name: str
    description: str
    config: TrainingConfig

    def quick(self) -> ZooMember:
        """Return this member with its epochs cut to :data:`QUICK_EPOCHS` for fast runs."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, epochs=min(QUICK_EPOCHS, self.config.epochs)))


def _hidden(width: int, depth: int) -> str:
    return "mlp:" + "-".join(["64", *[str(width)] * depth, "10"])


def _adversarial(epsilon: float) -> TrainingConfig:
    return dataclasses.replace(
        BASE,
        adversarial_epsilon=epsilon,
        adversarial_steps=ADVERSARIAL_STEPS,
        adversarial_step_size=round(2.5 * epsilon / ADVERSARIAL_STEPS, 6),
    )


def _family() -> tuple[ZooMember, ...]:
    members = [ZooMember("plain", "Plain SGD training.", BASE)]
    for epsilon in (0.05, 0.1):
        members.append(
            ZooMember(
                f"adversarial-{epsilon}",
                f"PGD Linf adversarial training at epsilon {epsilon} ({ADVERSARIAL_STEPS} steps).",
                _adversarial(epsilon),
            )
        )
    for label, decay in (("1e-4", 1e-4), ("1e-3", 1e-3), ("1e-2", 1e-2)):
        members.append(
            ZooMember(f"weight-decay-{label}", f"SGD weight decay {label}.", dataclasses.replace(BASE, weight_decay=decay))
        )
    for fraction in (0.1, 0.2, 0.4):
        members.append(
            ZooMember(
                f"label-noise-{fraction}",
                f"{fraction:.0%} of training labels replaced by another class.",
                dataclasses.replace(BASE, label_noise=fraction),
            )
        )
    for width in (16, 32, 128):
        members.append(
            ZooMember(f"width-{width}", f"Two hidden layers of {width} units.",
                      dataclasses.replace(BASE, architecture=_hidden(width, 2)))
        )
    for depth in (1, 3, 4):
        members.append(
            ZooMember(f"depth-{depth}", f"{depth} hidden layer(s) of 64 units.",
                      dataclasses.replace(BASE, architecture=_hidden(64, depth)))
        )
    for penalty in (0.01, 0.03):
        members.append(
            ZooMember(
                f"input-gradient-{penalty}",
                f"Input-gradient regularization with penalty {penalty}.",
                dataclasses.replace(BASE, input_gradient_penalty=penalty),
            )
        )
    return tuple(members)


FAMILY: tuple[ZooMember, ...] = _family()

BUNDLED_SEED = 0
BUNDLED: tuple[ZooMember, ...] = (
    ZooMember("demo", "Plain SGD training; the model `robusteval run` evaluates by default.", BASE),
    ZooMember(
        "adversarial",
        "PGD Linf adversarial training at epsilon 0.1 (7 steps); more robust than demo.",
        _adversarial(0.1),
    ),
    ZooMember(
        "gradient-regularized",
        "Input-gradient regularization with penalty 0.01; between demo and adversarial in robustness.",
        dataclasses.replace(BASE, input_gradient_penalty=0.01),
    ),
)


def select_members(names: list[str] | None, family: tuple[ZooMember, ...] = FAMILY) -> tuple[ZooMember, ...]:
    """Return the members called ``names`` in family order, or the whole family for ``None``."""
    if names is None:
        return family
    known = {member.name for member in family}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"Expected zoo member names from {sorted(known)}, but got unknown {unknown}. "
            "Run `robusteval zoo train --help` to see the family."
        )
    if not names:
        raise ValueError("Expected at least one zoo member name, but got an empty list.")
    return tuple(member for member in family if member.name in names)
