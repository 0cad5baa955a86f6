"""One interface for every input-space attack, whichever library implements it.

An attack is an :class:`AttackSpec` in the :data:`ATTACKS` registry. Its ``run`` callable takes
the model, a batch of initially correct inputs with their labels, a norm and an epsilon
(``None`` for minimal-norm attacks) and returns an :class:`AttackResult`. robusteval does not
trust the result: :mod:`robusteval.attacks.recheck` verifies every example before it counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from torch import Tensor, nn

from robusteval._types import Bounds, Norm

AttackKind = Literal["fixed_budget", "minimal_norm"]
SearchKind = Literal["white_box", "black_box", "ensemble"]


@dataclass(frozen=True)
class AttackBudget:
    """Iteration budgets shared by all attacks.

    Attributes:
        steps: iterations of the gradient attacks (PGD, APGD, APGD-T, FAB, FMN, DeepFool).
        restarts: random restarts of APGD, APGD-T and FAB.
        square_queries: model queries of the Square attack per sample.
        cw_steps: gradient steps per binary-search step of Carlini-Wagner.
        cw_binary_search_steps: binary-search steps over the Carlini-Wagner constant.
    """

    steps: int = 100
    restarts: int = 1
    square_queries: int = 5000
    cw_steps: int = 1000
    cw_binary_search_steps: int = 9

    def __post_init__(self) -> None:
        for name in ("steps", "restarts", "square_queries", "cw_steps", "cw_binary_search_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected a positive integer for AttackBudget.{name}, but got {value!r}.")


@dataclass(frozen=True)
class AttackContext:
    """Settings an adapter receives with each batch: data bounds, class count, seed and budget."""

    bounds: Bounds
    num_classes: int
    seed: int
    budget: AttackBudget


class AttackResult(NamedTuple):
    """A backend's output for a batch of ``N`` inputs.

    Attributes:
        adversarial: ``(N, *input_shape)`` candidate examples in the data's bounds.
        claimed: ``(N,)`` bool, where the backend reports success.
    """

    adversarial: Tensor
    claimed: Tensor


AttackRunner = Callable[[nn.Module, Tensor, Tensor, Norm, "float | None", AttackContext], AttackResult]


@dataclass(frozen=True)
class AttackSpec:
    """An attack robusteval can run, with what it needs.

    Attributes:
        name: the name users pass, for example ``"pgd"``.
        kind: ``"fixed_budget"`` attacks run once per epsilon; ``"minimal_norm"`` attacks run
            once per norm and search for the smallest adversarial perturbation.
        backend: the library that implements it (``"foolbox"``, ``"torchattacks"`` or
            ``"custom"``).
        norms: the norms it supports.
        min_classes: the smallest number of model outputs it works with.
        search: ``"white_box"`` for gradient attacks, ``"black_box"`` for attacks that only query
            predictions (Square), ``"ensemble"`` for a mix of both (AutoAttack).
        description: one line for help text and reports.
        run: the adapter.
    """

    name: str
    kind: AttackKind
    backend: str
    norms: tuple[Norm, ...]
    min_classes: int
    search: SearchKind
    description: str
    run: AttackRunner


ATTACKS: dict[str, AttackSpec] = {}


def register_attack(spec: AttackSpec, *, replace: bool = False) -> None:
    """Add ``spec`` to :data:`ATTACKS`, so that suites and attack lists can name it.

    Raises:
        ValueError: an attack of the same name exists and ``replace`` is false.
    """
    if spec.name in ATTACKS and not replace:
        raise ValueError(
            f"An attack named {spec.name!r} is already registered. Pass replace=True to override it."
        )
    ATTACKS[spec.name] = spec


def unregister_attack(name: str) -> None:
    """Remove the attack ``name`` from :data:`ATTACKS`; unknown names are ignored."""
    ATTACKS.pop(name, None)
