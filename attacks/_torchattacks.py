"""Adapters to torchattacks 3.5: APGD-CE, APGD-T, FAB, Square and the standard AutoAttack ensemble.

torchattacks 3.5.1 assumes images of shape ``(N, C, H, W)`` with values in [0, 1]. It clips to
[0, 1], Square cuts square windows out of ``H x W``, and APGD, Square and AutoAttack raise on
flat ``(N, d)`` inputs.
:class:`ImageView` therefore maps every batch to such images and back. It rescales the data
bounds to [0, 1], which scales both norms by ``1 / (upper - lower)``, and gives flat inputs an
image layout (see :func:`image_layout`). The random starts draw from torch's global generator,
and each attack also reseeds it from its ``seed`` argument. The caller restores it afterwards.
"""

from __future__ import annotations

import math

import torch
import torchattacks
from torch import Tensor, nn

from robusteval._types import Bounds, Norm

from .adapters import AttackContext, AttackResult, AttackSpec
from .threat_models import EPSILON_ATOL_FRACTION, box_diameter

# Square's first window covers this fraction of the image (torchattacks' and AutoAttack's default).
_SQUARE_P_INIT = 0.8

# Standard AutoAttack targets the 9 most likely wrong classes (Croce and Hein, arXiv 2003.01690).
_AUTOATTACK_TARGET_CLASSES = 9

# APGD-T's targeted DLR loss divides by z_max - (z_3rd + z_4th) / 2 of the sorted logits.
APGD_T_MIN_CLASSES = 4

AUTOATTACK_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def image_layout(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return the ``(C, H, W)`` image shape that torchattacks attacks in place of ``input_shape``.

    Image inputs keep their shape when Square's first window fits. Any other shape is flattened
    to ``d`` features and laid out as ``(d / s**2, s, s)`` with ``s`` the largest integer whose
    square divides ``d``: 64 features become ``(1, 8, 8)``, 3072 become ``(3, 32, 32)``, and a
    prime ``d`` becomes ``(d, 1, 1)``. Square images always fit Square's windows.
    """
    if len(input_shape) == 3:
        _, height, width = input_shape
        if max(round(math.sqrt(_SQUARE_P_INIT * height * width)), 1) <= min(height, width):
            return (input_shape[0], input_shape[1], input_shape[2])
    num_features = math.prod(input_shape)
    side = math.isqrt(num_features)
    while num_features % (side * side):
        side -= 1
    return (num_features // (side * side), side, side)


class ImageView(nn.Module):
    """``model`` seen as a network on ``(N, C, H, W)`` images with values in [0, 1].

    Attributes:
        device_anchor: an empty parameter on the data's device. torchattacks reads its device
            from the first model parameter and prints a message when the model has none.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], bounds: Bounds, device: torch.device):
        super().__init__()
        self.device_anchor = nn.Parameter(torch.empty(0, device=device), requires_grad=False)
        self.model = model
        self.input_shape = tuple(input_shape)
        self.layout = image_layout(self.input_shape)
        self.lower = float(bounds.lower)
        self.upper = float(bounds.upper)
        self.width = self.upper - self.lower
        self.unit_bounds = self.lower == 0.0 and self.upper == 1.0

    def to_images(self, x: Tensor) -> Tensor:
        """Map inputs ``(N, *input_shape)`` in the data bounds to images ``(N, C, H, W)`` in [0, 1]."""
        images = x if self.unit_bounds else (x - self.lower) / self.width
        return images.reshape(len(x), *self.layout)

    def from_images(self, images: Tensor) -> Tensor:
        """Map images ``(N, C, H, W)`` back to inputs ``(N, *input_shape)`` in the data bounds.

        Values that rounding put at most ``EPSILON_ATOL_FRACTION * (upper - lower)`` outside the
        bounds are clipped; larger violations are kept so that the recheck reports them.
        """
        x = images.reshape(len(images), *self.input_shape)
        if self.unit_bounds:
            return x
        x = self.lower + self.width * x
        slack = EPSILON_ATOL_FRACTION * self.width
        x = torch.where((x < self.lower) & (x >= self.lower - slack), torch.full_like(x, self.lower), x)
        return torch.where((x > self.upper) & (x <= self.upper + slack), torch.full_like(x, self.upper), x)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(self.from_images(images))

    def train(self, mode: bool = True) -> ImageView:
        """Set only the wrapper's flag: torchattacks toggles it, but the model must stay in eval mode.

        Calling ``train`` or ``eval`` on the wrapped model would also fail for ``torch.export``
        programs, which raise ``NotImplementedError`` on both.
        """
        self.training = mode
        return self


def _backend_norm(norm: Norm) -> str:
    return "Linf" if norm == "linf" else "L2"


def _backend_seed(seed: int) -> int:
    return int(seed) % 2**31


def _run_on_images(attack: torchattacks.attack.Attack, view: ImageView, x: Tensor, y: Tensor) -> AttackResult:
    with torch.enable_grad():
        adversarial_images = attack(view.to_images(x), y).detach()
    with torch.no_grad():
        claimed = view(adversarial_images).argmax(dim=1) != y
    return AttackResult(adversarial=view.from_images(adversarial_images), claimed=claimed)


def _view(model: nn.Module, x: Tensor, context: AttackContext) -> ImageView:
    return ImageView(model, tuple(x.shape[1:]), context.bounds, x.device).eval()


def _target_classes(num_classes: int) -> int:
    """Return the ``n_classes`` argument that makes torchattacks target ``min(C - 1, 9)`` classes."""
    return min(num_classes - 1, _AUTOATTACK_TARGET_CLASSES) + 1


def _apgd(view: ImageView, norm: Norm, epsilon: float, context: AttackContext) -> torchattacks.APGD:
    return torchattacks.APGD(
        view, norm=_backend_norm(norm), eps=epsilon / view.width, steps=context.budget.steps,
        n_restarts=context.budget.restarts, seed=_backend_seed(context.seed), loss="ce",
    )


def _apgd_targeted(view: ImageView, norm: Norm, epsilon: float, context: AttackContext) -> torchattacks.APGDT:
    return torchattacks.APGDT(
        view, norm=_backend_norm(norm), eps=epsilon / view.width, steps=context.budget.steps,
        n_restarts=context.budget.restarts, seed=_backend_seed(context.seed),
        n_classes=_target_classes(context.num_classes),
    )


def _fab(view: ImageView, norm: Norm, epsilon: float, context: AttackContext, *, targeted: bool) -> torchattacks.FAB:
    return torchattacks.FAB(
        view, norm=_backend_norm(norm), eps=epsilon / view.width, steps=context.budget.steps,
        n_restarts=context.budget.restarts, seed=_backend_seed(context.seed),
        multi_targeted=targeted, n_classes=_target_classes(context.num_classes),
    )


def _square(view: ImageView, norm: Norm, epsilon: float, context: AttackContext) -> torchattacks.Square:
    return torchattacks.Square(
        view, norm=_backend_norm(norm), eps=epsilon / view.width, n_queries=context.budget.square_queries,
        n_restarts=1, p_init=_SQUARE_P_INIT, loss="margin", seed=_backend_seed(context.seed),
    )


def run_apgd_ce(model: nn.Module, x: Tensor, y: Tensor, norm: Norm, epsilon: float | None,
                context: AttackContext) -> AttackResult:
    """Run APGD on the cross-entropy loss (Croce and Hein, arXiv 2003.01690)."""
    view = _view(model, x, context)
    return _run_on_images(_apgd(view, norm, _required(epsilon), context), view, x, y)


def run_apgd_targeted(model: nn.Module, x: Tensor, y: Tensor, norm: Norm, epsilon: float | None,
                      context: AttackContext) -> AttackResult:
    """Run APGD-T on the targeted DLR loss against the ``min(C - 1, 9)`` most likely wrong classes."""
    view = _view(model, x, context)
    return _run_on_images(_apgd_targeted(view, norm, _required(epsilon), context), view, x, y)


def run_fab(model: nn.Module, x: Tensor, y: Tensor, norm: Norm, epsilon: float | None,
            context: AttackContext) -> AttackResult:
    """Run untargeted FAB (Croce and Hein, arXiv 1907.02044) as a minimal-norm attack.

    FAB minimizes the perturbation norm and keeps results within its ``eps``, so ``eps`` is set
    to the diameter of the input box, which no perturbation can exceed.
    """
    view = _view(model, x, context)
    diameter = box_diameter(norm, math.prod(view.input_shape), context.bounds)
    return _run_on_images(_fab(view, norm, diameter, context, targeted=False), view, x, y)


def run_square(model: nn.Module, x: Tensor, y: Tensor, norm: Norm, epsilon: float | None,
               context: AttackContext) -> AttackResult:
    """Run the Square attack (Andriushchenko et al., arXiv 1912.00049), a black-box random search."""
    view = _view(model, x, context)
    return _run_on_images(_square(view, norm, _required(epsilon), context), view, x, y)


def autoattack_skipped_components(num_classes: int) -> dict[str, str]:
    """Return the AutoAttack components that a model with ``num_classes`` outputs cannot run, with the reason."""
    if num_classes < APGD_T_MIN_CLASSES:
        return {
            "apgd-t": f"APGD-T's targeted DLR loss needs at least {APGD_T_MIN_CLASSES} classes; "
            f"the model has {num_classes}",
        }
    return {}


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, norm: Norm, epsilon: float | None,
                   context: AttackContext) -> AttackResult:
    """Run the standard AutoAttack ensemble (Croce and Hein, arXiv 2003.01690).

    APGD-CE, APGD-T, FAB-T and Square run in that order, each on the samples the previous ones
    did not break, as in torchattacks' ``AutoAttack(version="standard")``. The targeted
    components attack the ``min(C - 1, 9)`` most likely wrong classes; APGD-T is left out for
    models with fewer than 4 classes.
    """
    eps = _required(epsilon)
    view = _view(model, x, context)
    skipped = autoattack_skipped_components(context.num_classes)
    builders = {
        "apgd-ce": lambda: _apgd(view, norm, eps, context),
        "apgd-t": lambda: _apgd_targeted(view, norm, eps, context),
        "fab-t": lambda: _fab(view, norm, eps, context, targeted=True),
        "square": lambda: _square(view, norm, eps, context),
    }

    adversarial = x.detach().clone()
    claimed = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for component in AUTOATTACK_COMPONENTS:
        remaining = (~claimed).nonzero().flatten()
        if component in skipped or len(remaining) == 0:
            continue
        result = _run_on_images(builders[component](), view, x[remaining], y[remaining])
        broken = remaining[result.claimed]
        adversarial[broken] = result.adversarial[result.claimed]
        claimed[broken] = True
    return AttackResult(adversarial=adversarial, claimed=claimed)


def run_pgd_torchattacks_fixed_steps(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, steps: int,
                                     context: AttackContext) -> Tensor:
    """Return torchattacks' Linf PGD examples at ``epsilon`` after ``steps`` steps of ``2.5 * epsilon / steps``."""
    view = _view(model, x, context)
    eps = epsilon / view.width
    attack = torchattacks.PGD(view, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    return _run_on_images(attack, view, x, y).adversarial


def _required(epsilon: float | None) -> float:
    if epsilon is None:
        raise ValueError("Expected an epsilon for a fixed-budget attack, but got None.")
    return float(epsilon)


TORCHATTACKS_ATTACKS = (
    AttackSpec(
        name="apgd-ce", kind="fixed_budget", backend="torchattacks", norms=("linf", "l2"), min_classes=2,
        search="white_box", description="APGD on the cross-entropy loss", run=run_apgd_ce,
    ),
    AttackSpec(
        name="apgd-t", kind="fixed_budget", backend="torchattacks", norms=("linf", "l2"), min_classes=APGD_T_MIN_CLASSES,
        search="white_box", description="APGD-T on the targeted DLR loss", run=run_apgd_targeted,
    ),
    AttackSpec(
        name="fab", kind="minimal_norm", backend="torchattacks", norms=("linf", "l2"), min_classes=2,
        search="white_box", description="untargeted FAB, minimizing the norm", run=run_fab,
    ),
    AttackSpec(
        name="square", kind="fixed_budget", backend="torchattacks", norms=("linf", "l2"), min_classes=2,
        search="black_box", description="Square attack (black-box random search)", run=run_square,
    ),
    AttackSpec(
        name="autoattack", kind="fixed_budget", backend="torchattacks", norms=("linf", "l2"), min_classes=2,
        search="ensemble", description="standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square", run=run_autoattack,
    ),
)
