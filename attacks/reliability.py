"""Checks that tell whether an input-space evaluation can be trusted.

Each check returns :class:`~robusteval.results.Flag` entries of stage ``"attacks"``. Severity
``"error"`` marks findings that make the measured robustness unreliable (usually an
overestimate: gradient masking, random outputs, attacks that fail where success is certain);
``"warning"`` marks findings a user should look at.

Codes: ``probability_outputs``, ``nondeterministic_outputs``, ``zero_gradients``,
``black_box_beats_white_box``, ``robust_accuracy_not_zero``, ``backend_disagreement``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from robusteval._types import Bounds
from robusteval.results import Flag, SampleRecord, ThreatModelResult
from robusteval.seeding import derive_seed, seeded

from ._foolbox import run_pgd_foolbox_fixed_steps
from ._torchattacks import run_pgd_torchattacks_fixed_steps
from .adapters import ATTACKS, AttackBudget, AttackContext
from .recheck import evaluation_mode, recheck_adversarial
from .threat_models import box_diameter

STAGE = "attacks"

# Samples used by the checks that evaluate the model directly.
MAX_CHECK_SAMPLES = 256
# Samples and steps of the foolbox-versus-torchattacks PGD comparison.
BACKEND_CHECK_SAMPLES = 64
BACKEND_CHECK_STEPS = 20

# Rows of non-negative outputs that sum to 1 within this tolerance are taken for probabilities.
PROBABILITY_SUM_TOLERANCE = 1e-4
# Two identical calls may differ by this much, relative to the largest output magnitude (at least 1).
REPEAT_TOLERANCE = 1e-6
# Batched and one-at-a-time outputs may differ by this much: different batch sizes take
# different matrix-multiplication paths, which round differently.
BATCH_TOLERANCE = 1e-4
# A zero-gradient finding is an error above this fraction of samples, a warning below it.
ZERO_GRADIENT_ERROR_FRACTION = 0.1
# Samples broken only by black-box attacks that are tolerated: the larger of these two.
BLACK_BOX_TOLERANCE_FRACTION = 0.02
BLACK_BOX_TOLERANCE_SAMPLES = 1
# The two PGD implementations may differ by this fraction of attacked samples and this many samples.
BACKEND_TOLERANCE_FRACTION = 0.1
BACKEND_TOLERANCE_SAMPLES = 3


def assess_reliability(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat_model_results: Sequence[ThreatModelResult],
    samples: Sequence[SampleRecord],
    *,
    bounds: Bounds,
    seed: int,
) -> list[Flag]:
    """Run every reliability check on an evaluated model and return the findings.

    Args:
        model: the classifier; it is evaluated in eval mode and restored afterwards.
        x: ``(N, *input_shape)`` the evaluated inputs; the model checks use the first 256.
        y: ``(N,)`` their labels.
        threat_model_results: the output of :func:`summarize_threat_models`.
        samples: the per-sample records in the order of ``x``, filled by :func:`record_outcome`.
        bounds: the data bounds.
        seed: the run's seed; the backend comparison derives its seeds from it.
    """
    bounds = Bounds(float(bounds[0]), float(bounds[1]))
    subset_x, subset_y = x[:MAX_CHECK_SAMPLES], y[:MAX_CHECK_SAMPLES]
    flags: list[Flag] = []
    with evaluation_mode(model):
        flags += check_probability_outputs(model, subset_x)
        flags += check_nondeterministic_outputs(model, subset_x)
        flags += check_input_gradients(model, subset_x, subset_y)
        flags += check_backend_agreement(model, x, y, threat_model_results, bounds=bounds, seed=seed)
    flags += check_black_box(samples, threat_model_results)
    flags += check_robust_accuracy_reaches_zero(threat_model_results, tuple(x.shape[1:]), bounds)
    return flags


def check_probability_outputs(model: nn.Module, x: Tensor) -> list[Flag]:
    """Flag outputs that look like probabilities (non-negative rows summing to 1) instead of logits.

    Cross-entropy attacks then apply a second softmax, whose gradients are small and badly
    scaled, so the attacks underestimate how easily the model breaks.
    """
    with torch.no_grad():
        outputs = model(x).double()
    row_sums = outputs.sum(dim=1)
    probability_like = bool((outputs >= 0).all()) and bool(((row_sums - 1).abs() <= PROBABILITY_SUM_TOLERANCE).all())
    if not probability_like or len(x) == 0:
        return []
    return [
        Flag(
            code="probability_outputs",
            severity="error",
            message=(
                "The model's outputs are non-negative and every row sums to 1: they look like probabilities, "
                "not logits. Gradient attacks then underestimate vulnerability. Remove the final softmax."
            ),
            stage=STAGE,
            details={"samples_checked": len(x), "max_row_sum_error": float((row_sums - 1).abs().max())},
        )
    ]


def check_nondeterministic_outputs(model: nn.Module, x: Tensor) -> list[Flag]:
    """Flag outputs that differ between two identical calls, or between batched and single-sample calls."""
    if len(x) == 0:
        return []
    with torch.no_grad():
        first = model(x).double()
        second = model(x).double()
        singles = torch.cat([model(x[index : index + 1]).double() for index in range(min(len(x), 16))])
    scale = max(float(first.abs().max()), 1.0)
    repeat_difference = float((first - second).abs().max())
    batch_difference = float((first[: len(singles)] - singles).abs().max())

    problems = []
    if not math.isfinite(repeat_difference) or repeat_difference > REPEAT_TOLERANCE * scale:
        problems.append(f"two identical calls differ by up to {repeat_difference:.3g}")
    if not math.isfinite(batch_difference) or batch_difference > BATCH_TOLERANCE * scale:
        problems.append(f"batched and one-at-a-time calls differ by up to {batch_difference:.3g}")
    if not problems:
        return []
    return [
        Flag(
            code="nondeterministic_outputs",
            severity="error",
            message=(
                f"The model's outputs are not a function of its input: {'; '.join(problems)} "
                f"(largest output magnitude {scale:.3g}). Attacks and their recheck are unreliable. "
                "Remove randomness from the forward pass (dropout in eval mode, noise layers) and "
                "batch-dependent layers."
            ),
            stage=STAGE,
            details={"repeat_difference": repeat_difference, "batch_difference": batch_difference, "scale": scale},
        )
    ]


def check_input_gradients(model: nn.Module, x: Tensor, y: Tensor) -> list[Flag]:
    """Flag samples whose logit-margin gradient with respect to the input is zero or not finite.

    The margin ``f_y(x) - max_{j != y} f_j(x)`` is used rather than the cross-entropy loss so
    that a confident but healthy model, whose softmax saturates, is not flagged. Zero margin
    gradients come from non-differentiable steps such as rounding or thresholding the input,
    which hide adversarial examples from gradient attacks.
    """
    if len(x) == 0:
        return []
    inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs)
        true_logit = logits.gather(1, y.view(-1, 1)).squeeze(1)
        others = logits.scatter(1, y.view(-1, 1), -math.inf).amax(dim=1)
        (gradient,) = torch.autograd.grad((true_logit - others).sum(), inputs, allow_unused=True)
    if gradient is None:
        gradient = torch.zeros_like(inputs)
    flat = gradient.flatten(1)
    non_finite = ~torch.isfinite(flat).all(dim=1)
    zero = (flat == 0).all(dim=1)
    if not bool(non_finite.any()) and not bool(zero.any()):
        return []

    zero_fraction = float(zero.float().mean())
    severity = "error" if bool(non_finite.any()) or zero_fraction > ZERO_GRADIENT_ERROR_FRACTION else "warning"
    return [
        Flag(
            code="zero_gradients",
            severity=severity,
            message=(
                f"The input gradient of the logit margin is zero for {int(zero.sum())} and not finite for "
                f"{int(non_finite.sum())} of {len(x)} samples. Gradient attacks cannot make progress there, "
                "so their robust accuracy is an overestimate (gradient masking). Look for rounding, "
                "thresholding or other non-differentiable steps in the forward pass."
            ),
            stage=STAGE,
            details={"zero": int(zero.sum()), "non_finite": int(non_finite.sum()), "samples_checked": len(x)},
        )
    ]


def check_black_box(samples: Sequence[SampleRecord], threat_model_results: Sequence[ThreatModelResult]) -> list[Flag]:
    """Flag samples that a black-box attack broke while every white-box attack failed at the same epsilon.

    Gradient attacks with full model access should find whatever a random search finds; when
    they do not, the gradients mislead them (gradient masking). The check needs a black-box
    attack (Square) and a white-box attack run on their own; AutoAttack, which contains both,
    counts as neither. Up to ``max(1, 2%)`` of the correct samples are tolerated.
    """
    flags = []
    for result in threat_model_results:
        black = [name for name in result.attacks if name in ATTACKS and ATTACKS[name].search == "black_box"]
        white = [name for name in result.attacks if name in ATTACKS and ATTACKS[name].search == "white_box"]
        correct = sum(1 for sample in samples if sample.correct)
        if not black or not white or correct == 0:
            continue
        tolerance = max(BLACK_BOX_TOLERANCE_SAMPLES, BLACK_BOX_TOLERANCE_FRACTION * correct)
        counts = []
        for index in range(len(result.epsilons)):
            counts.append(sum(1 for sample in samples if _black_box_only(sample, result.norm, index, black, white)))
        worst = max(range(len(counts)), key=counts.__getitem__)
        if counts[worst] <= tolerance:
            continue
        flags.append(
            Flag(
                code="black_box_beats_white_box",
                severity="error",
                message=(
                    f"Under {result.norm} at epsilon {result.epsilons[worst]:g}, {counts[worst]} of {correct} correct "
                    f"samples were broken by {', '.join(black)} but by none of {', '.join(white)}. Gradient "
                    "attacks should find these; the gradients are likely masked, so white-box robust accuracy "
                    "is an overestimate."
                ),
                stage=STAGE,
                details={"norm": result.norm, "epsilons": list(result.epsilons), "black_box_only": counts},
            )
        )
    return flags


def _black_box_only(sample: SampleRecord, norm: str, index: int, black: list[str], white: list[str]) -> bool:
    def broke(name: str) -> bool:
        values = sample.attack_success.get(name, {}).get(norm)
        return bool(values[index]) if values else False

    return bool(sample.correct) and any(broke(name) for name in black) and not any(broke(name) for name in white)


def check_robust_accuracy_reaches_zero(
    threat_model_results: Sequence[ThreatModelResult], input_shape: tuple[int, ...], bounds: Bounds
) -> list[Flag]:
    """Flag threat models whose robust accuracy stays above zero at the largest epsilon.

    At an epsilon of at least the box diameter (:func:`box_diameter`), every point of the box is
    within reach of every input. A model that predicts two classes somewhere on the box can then
    be broken on every sample, so nonzero robust accuracy means the attacks failed (severity
    ``"error"``). Below the diameter it may be real robustness (severity ``"warning"``).
    """
    flags = []
    num_features = math.prod(input_shape)
    for result in threat_model_results:
        if not result.robust_accuracy or not result.robust_accuracy[-1] > 0:
            continue
        largest = result.epsilons[-1]
        diameter = box_diameter(result.norm, num_features, bounds)  # type: ignore[arg-type]
        certain = largest >= diameter * (1 - 1e-6)
        message = (
            f"Robust accuracy under {result.norm} is {result.robust_accuracy[-1]:.3g} at the largest epsilon "
            f"{largest:g}, not zero. "
        )
        if certain:
            message += (
                f"That epsilon reaches the whole input box (diameter {diameter:g}), so the attacks failed; "
                "suspect gradient masking and run the thorough suite."
            )
        else:
            message += (
                f"Add an epsilon up to the box diameter {diameter:g} to check that the attacks can break "
                "every sample."
            )
        flags.append(
            Flag(
                code="robust_accuracy_not_zero",
                severity="error" if certain else "warning",
                message=message,
                stage=STAGE,
                details={"norm": result.norm, "epsilon": largest, "robust_accuracy": result.robust_accuracy[-1],
                         "box_diameter": diameter},
            )
        )
    return flags


def check_backend_agreement(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat_model_results: Sequence[ThreatModelResult],
    *,
    bounds: Bounds,
    seed: int,
) -> list[Flag]:
    """Compare foolbox's and torchattacks' Linf PGD on the same samples with the same settings.

    Both run 20 steps of size ``2.5 * epsilon / 20`` from a random start on up to 64 correctly
    classified samples, at the Linf epsilon whose attack success rate in ``threat_model_results``
    is closest to 0.5, where the comparison is most sensitive. Each example is rechecked. No
    check runs without a Linf threat model.
    """
    linf = [result for result in threat_model_results if result.norm == "linf" and result.epsilons]
    if not linf or len(x) == 0:
        return []
    result = linf[0]
    rates = [rate if math.isfinite(rate) else 0.0 for rate in (result.attack_success_rate or [0.0] * len(result.epsilons))]
    epsilon = result.epsilons[min(range(len(rates)), key=lambda index: abs(rates[index] - 0.5))]

    with torch.no_grad():
        logits = model(x)
    context = AttackContext(bounds=bounds, num_classes=int(logits.shape[1]), seed=seed, budget=AttackBudget())
    positions = (logits.argmax(dim=1) == y).nonzero().flatten()[:BACKEND_CHECK_SAMPLES]
    if len(positions) == 0:
        return []
    inputs, labels = x[positions], y[positions]

    with seeded(derive_seed(seed, "backend-check", "foolbox")):
        foolbox_examples = run_pgd_foolbox_fixed_steps(model, inputs, labels, epsilon, BACKEND_CHECK_STEPS, context)
    with seeded(derive_seed(seed, "backend-check", "torchattacks")):
        torchattacks_examples = run_pgd_torchattacks_fixed_steps(
            model, inputs, labels, epsilon, BACKEND_CHECK_STEPS, context
        )
    everything = torch.ones(len(inputs), dtype=torch.bool)
    foolbox_success = recheck_adversarial(
        model, inputs, labels, foolbox_examples, everything, norm="linf", epsilon=epsilon, bounds=bounds
    ).verified
    torchattacks_success = recheck_adversarial(
        model, inputs, labels, torchattacks_examples, everything, norm="linf", epsilon=epsilon, bounds=bounds
    ).verified
    return compare_backend_success(foolbox_success, torchattacks_success, epsilon)


def compare_backend_success(foolbox_success: Tensor, torchattacks_success: Tensor, epsilon: float) -> list[Flag]:
    """Flag a gap in PGD success between the backends above 10% of the samples and 3 samples.

    Args:
        foolbox_success: ``(n,)`` bool, verified success of foolbox's PGD per sample.
        torchattacks_success: ``(n,)`` bool, the same for torchattacks' PGD on the same samples.
        epsilon: the Linf epsilon both ran at.
    """
    count = len(foolbox_success)
    if count == 0:
        return []
    foolbox_count = int(foolbox_success.sum())
    torchattacks_count = int(torchattacks_success.sum())
    gap = abs(foolbox_count - torchattacks_count)
    if gap <= BACKEND_TOLERANCE_SAMPLES or gap <= BACKEND_TOLERANCE_FRACTION * count:
        return []
    weaker = "foolbox" if foolbox_count < torchattacks_count else "torchattacks"
    return [
        Flag(
            code="backend_disagreement",
            severity="warning",
            message=(
                f"Linf PGD at epsilon {epsilon:g} with identical settings broke {foolbox_count} of {count} samples "
                f"in foolbox and {torchattacks_count} in torchattacks. The {weaker} result is an overestimate of "
                "robustness; a gap this large points to a model the attacks handle differently (unusual "
                "dtypes, devices or input handling)."
            ),
            stage=STAGE,
            details={
                "epsilon": epsilon,
                "samples": count,
                "foolbox_successes": foolbox_count,
                "torchattacks_successes": torchattacks_count,
                "disagreeing_samples": int((foolbox_success != torchattacks_success).sum()),
            },
        )
    ]
