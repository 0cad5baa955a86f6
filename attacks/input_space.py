"""Input-space attacks on one block of samples, and the per-threat-model summary over all blocks.

:func:`run_input_attacks` attacks the initially correct samples of a block with every requested
attack, verifies each adversarial example itself (:mod:`robusteval.attacks.recheck`) and keeps,
per attack and norm, the smallest verified perturbation of every sample. A sample counts as
broken at epsilon ``e`` when some verified example lies within ``e`` (plus the tolerance of
:func:`robusteval.attacks.threat_models.epsilon_with_tolerance`). That rule serves both kinds of
attack: a minimal-norm result counts at every epsilon at or above its norm, and a fixed-budget
result found at one epsilon counts at every epsilon at or above its own norm.
:func:`record_outcome` copies a block's outcome into :class:`~robusteval.results.SampleRecord`
fields, and :func:`summarize_threat_models` turns those into
:class:`~robusteval.results.ThreatModelResult` entries.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from robusteval._types import Bounds, Norm
from robusteval.devices import check_model_device
from robusteval.progress import NullProgress, ProgressReporter
from robusteval.results import Flag, SampleRecord, ThreatModelResult
from robusteval.seeding import derive_seed, seeded

from .adapters import ATTACKS, AttackBudget, AttackContext, AttackResult, AttackSpec
from .recheck import RecheckResult, evaluation_mode, recheck_adversarial, set_eval_mode
from .suites import resolve_attacks
from .threat_models import ThreatModel, epsilon_with_tolerance, success_at_epsilons

logger = logging.getLogger(__name__)

PROGRESS_STAGE = "input attacks"


@dataclass
class InputAttackOutcome:
    """Attack results for one block of ``N`` samples; every tensor is on the CPU.

    Attributes:
        min_distance: norm -> ``(N,)`` float64, the smallest verified adversarial perturbation
            norm; ``nan`` where no attack succeeded or the sample was not attacked.
        min_distance_attack: norm -> the attack that found it, per sample (``None`` where none).
        adversarial_examples: norm -> ``(N, *input_shape)``, the closest verified adversarial
            example; rows of ``nan`` where none.
        success: attack -> norm -> ``(N, E)`` bool, verified success within ``epsilons[i]``.
        seconds: attack -> wall-clock seconds, summed over norms.
        flags: findings of this block (recheck failures).
        skipped: attack (or ``"autoattack/<component>"``) -> why it did not run.
        correct: ``(N,)`` bool, whether the clean prediction equals the label.
        robust: norm -> ``(N, E)`` bool, correct and not broken by any attack within ``epsilons[i]``.
        seconds_per_norm: norm -> attack -> wall-clock seconds.
        epsilons: norm -> the epsilon grid the columns of ``success`` and ``robust`` refer to.
    """

    min_distance: dict[Norm, Tensor]
    min_distance_attack: dict[Norm, list[str | None]]
    adversarial_examples: dict[Norm, Tensor]
    success: dict[str, dict[Norm, Tensor]]
    seconds: dict[str, float]
    flags: list[Flag]
    skipped: dict[str, str]
    correct: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    robust: dict[Norm, Tensor] = field(default_factory=dict)
    seconds_per_norm: dict[Norm, dict[str, float]] = field(default_factory=dict)
    epsilons: dict[Norm, tuple[float, ...]] = field(default_factory=dict)


@dataclass
class _AttackRecord:
    """Smallest verified perturbation per sample found so far by one attack under one norm."""

    distances: Tensor  # (N,) float64, inf where none
    examples: Tensor  # (N, *input_shape)

    def update(self, positions: Tensor, check: RecheckResult, candidates: Tensor) -> None:
        closer = check.distances < self.distances[positions]
        self.distances[positions[closer]] = check.distances[closer]
        self.examples[positions[closer]] = candidates[closer.to(candidates.device)].detach().cpu().to(self.examples.dtype)


def run_input_attacks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    threat_models: Sequence[ThreatModel],
    attacks: str | Sequence[str],
    bounds: Bounds,
    seed: int,
    progress: ProgressReporter | None = None,
    budget: AttackBudget | None = None,
) -> InputAttackOutcome:
    """Attack one block of samples with every requested attack under every threat model.

    Misclassified samples are not attacked: their ``success`` entries are False, their
    ``min_distance`` is ``nan``, and ``robust`` is False for them. Fixed-budget attacks run at
    each epsilon in increasing order on the samples they have not broken yet; minimal-norm
    attacks run once per norm. Each run is seeded with ``derive_seed(seed, attack, norm, i)``.

    NOTE: tested on the CPU only; the adapters keep tensors on ``x.device``, but no CUDA run
    has checked that.

    Args:
        model: a classifier returning logits ``(N, C)``; it is evaluated in eval mode with
            parameter gradients off, and both are restored on return.
        x: ``(N, *input_shape)`` float inputs within ``bounds``.
        y: ``(N,)`` integer labels.
        threat_models: at most one per norm.
        attacks: a suite name, attack names, or a mix (see :func:`resolve_attacks`).
        bounds: the data bounds; adversarial examples must stay inside them.
        seed: the block's seed.
        progress: receives one step per attack run under the stage ``"input attacks"``.
        budget: iteration budgets; defaults to :class:`AttackBudget()`.

    Raises:
        ValueError, TypeError: invalid inputs, labels, bounds, threat models or attack names, or
            a model, inputs and labels that are not on one device.
    """
    threat_models = list(threat_models)
    bounds = Bounds(float(bounds[0]), float(bounds[1]))
    _check_arguments(x, y, threat_models, bounds)
    check_model_device(model, x)
    if y.device != x.device:
        raise ValueError(
            f"Expected the labels on the device of the inputs, but the inputs are on {x.device} and the labels "
            f"on {y.device}. Move both with .to(device)."
        )
    budget = budget if budget is not None else AttackBudget()
    progress = progress if progress is not None else NullProgress()

    with evaluation_mode(model):
        with torch.no_grad():
            logits = model(x)
        _check_logits(logits, len(x))
        num_classes = int(logits.shape[1])
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(
                f"Expected labels in [0, {num_classes - 1}] for a model with {num_classes} outputs, "
                f"but got labels in [{int(y.min())}, {int(y.max())}]."
            )
        correct = logits.argmax(dim=1) == y
        runnable, skipped = resolve_attacks(attacks, num_classes=num_classes, threat_models=threat_models)
        context = AttackContext(bounds=bounds, num_classes=num_classes, seed=int(seed), budget=budget)

        outcome = InputAttackOutcome(
            min_distance={}, min_distance_attack={}, adversarial_examples={},
            success={name: {} for name in runnable}, seconds={name: 0.0 for name in runnable},
            flags=[], skipped=skipped, correct=correct.cpu(),
        )
        progress.start(PROGRESS_STAGE, _count_runs(runnable, threat_models))
        for threat_model in threat_models:
            _attack_under_norm(model, x, y, correct, threat_model, runnable, context, outcome, progress)
        progress.finish(PROGRESS_STAGE)
    return outcome


def _attack_under_norm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    correct: Tensor,
    threat_model: ThreatModel,
    runnable: Sequence[str],
    context: AttackContext,
    outcome: InputAttackOutcome,
    progress: ProgressReporter,
) -> None:
    norm = threat_model.norm
    count = len(x)
    records: dict[str, _AttackRecord] = {}
    outcome.seconds_per_norm[norm] = {}
    outcome.epsilons[norm] = threat_model.epsilons

    for name in runnable:
        spec = ATTACKS[name]
        if norm not in spec.norms:
            continue
        record = _AttackRecord(
            distances=torch.full((count,), math.inf, dtype=torch.float64),
            examples=torch.full_like(x, math.nan, device="cpu"),
        )
        started = time.perf_counter()
        runs: list[tuple[int, float | None]] = (
            [(0, None)] if spec.kind == "minimal_norm" else list(enumerate(threat_model.epsilons))
        )
        for index, epsilon in runs:
            pending = correct.cpu()
            if epsilon is not None:
                pending = pending & (record.distances > float(epsilon_with_tolerance(epsilon, context.bounds)))
            positions = pending.nonzero().flatten()
            if len(positions):
                _run_once(model, x, y, positions, spec, norm, index, epsilon, context, record, outcome)
            progress.advance(PROGRESS_STAGE)
        elapsed = time.perf_counter() - started
        outcome.seconds[name] += elapsed
        outcome.seconds_per_norm[norm][name] = elapsed
        outcome.success[name][norm] = success_at_epsilons(record.distances, threat_model.epsilons, context.bounds)
        records[name] = record
        logger.info("%s under %s: %.2f s, %d of %d samples broken", name, norm, elapsed,
                    int(torch.isfinite(record.distances).sum()), count)

    _combine_attacks(records, correct, threat_model, context.bounds, x, outcome)


def _run_once(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    positions: Tensor,
    spec: AttackSpec,
    norm: Norm,
    index: int,
    epsilon: float | None,
    context: AttackContext,
    record: _AttackRecord,
    outcome: InputAttackOutcome,
) -> None:
    device_positions = positions.to(x.device)
    inputs, labels = x[device_positions], y[device_positions]
    run_context = AttackContext(
        bounds=context.bounds, num_classes=context.num_classes,
        seed=derive_seed(context.seed, spec.name, norm, index), budget=context.budget,
    )
    with seeded(run_context.seed), torch.enable_grad():
        result = spec.run(model, inputs, labels, norm, epsilon, run_context)
    set_eval_mode(model)  # in case the adapter changed the mode
    _check_result(result, inputs, spec.name)

    check = recheck_adversarial(
        model, inputs, labels, result.adversarial, result.claimed, norm=norm, epsilon=epsilon, bounds=context.bounds
    )
    record.update(positions, check, result.adversarial if check.examples is None else check.examples)
    if check.failures:
        outcome.flags.append(_recheck_flag(spec.name, norm, epsilon, positions, check, result.claimed))


def _combine_attacks(
    records: Mapping[str, _AttackRecord],
    correct: Tensor,
    threat_model: ThreatModel,
    bounds: Bounds,
    x: Tensor,
    outcome: InputAttackOutcome,
) -> None:
    """Fill the per-sample worst case over all attacks of one norm into ``outcome``."""
    norm = threat_model.norm
    count = len(x)
    best = torch.full((count,), math.inf, dtype=torch.float64)
    best_attack: list[str | None] = [None] * count
    examples = torch.full_like(x, math.nan, device="cpu")
    for name, record in records.items():
        closer = record.distances < best
        best[closer] = record.distances[closer]
        examples[closer] = record.examples[closer]
        for position in closer.nonzero().flatten().tolist():
            best_attack[position] = name

    broken = success_at_epsilons(best, threat_model.epsilons, bounds)
    outcome.min_distance[norm] = torch.where(torch.isfinite(best), best, torch.full_like(best, math.nan))
    outcome.min_distance_attack[norm] = best_attack
    outcome.adversarial_examples[norm] = examples
    outcome.robust[norm] = correct.cpu()[:, None] & ~broken


def _recheck_flag(
    name: str, norm: Norm, epsilon: float | None, positions: Tensor, check: RecheckResult, claimed: Tensor
) -> Flag:
    failed = check.failed_claims
    counts = {reason: int(mask.sum()) for reason, mask in check.failures.items()}
    budget = "without a norm limit" if epsilon is None else f"at epsilon {epsilon:g}"
    message = (
        f"{int(failed.sum())} of {int(claimed.sum())} adversarial examples that {name} reported under "
        f"{norm} {budget} failed robusteval's recheck ({', '.join(f'{k}: {v}' for k, v in counts.items())}); "
        "they were not counted. Minimal-norm attacks such as FMN stop on the decision boundary, where "
        "rounding can decide the class, which causes a few; many point to a backend that misreports "
        "success or a model whose outputs depend on the batch."
    )
    return Flag(
        code="adversarial_recheck_failed",
        severity="warning",
        message=message,
        stage="attacks",
        details={
            "attack": name,
            "norm": norm,
            "epsilon": epsilon,
            "failures": counts,
            "block_positions": positions[failed].tolist(),
        },
    )


def _count_runs(runnable: Sequence[str], threat_models: Sequence[ThreatModel]) -> int:
    total = 0
    for threat_model in threat_models:
        for name in runnable:
            spec = ATTACKS[name]
            if threat_model.norm in spec.norms:
                total += 1 if spec.kind == "minimal_norm" else len(threat_model.epsilons)
    return total


def _check_arguments(x: Tensor, y: Tensor, threat_models: Sequence[ThreatModel], bounds: Bounds) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise TypeError(
            "Expected inputs as a floating-point tensor of shape (N, *input_shape), but got "
            f"{type(x).__name__} {getattr(x, 'dtype', '')} of shape {tuple(getattr(x, 'shape', ()))}."
        )
    integer_types = (torch.int64, torch.int32, torch.int16, torch.uint8)
    if not isinstance(y, Tensor) or y.dtype not in integer_types or y.shape != (len(x),):
        raise TypeError(
            f"Expected labels as an integer tensor of shape ({len(x)},), but got "
            f"{type(y).__name__} {getattr(y, 'dtype', '')} of shape {tuple(getattr(y, 'shape', ()))}."
        )
    if not bounds.lower < bounds.upper:
        raise ValueError(f"Expected input bounds with lower < upper, but got {tuple(bounds)}.")
    if len(x) and not bool(torch.isfinite(x).all()):
        raise ValueError("Expected finite inputs, but got NaN or infinite values. Clean the data first.")
    if len(x) and (float(x.min()) < bounds.lower or float(x.max()) > bounds.upper):
        raise ValueError(
            f"Expected inputs within the bounds [{bounds.lower:g}, {bounds.upper:g}], but got values in "
            f"[{float(x.min()):g}, {float(x.max()):g}]. Pass the bounds the data uses or clip the data."
        )
    if not threat_models:
        raise ValueError("Expected at least one threat model, but got none.")
    norms = [threat_model.norm for threat_model in threat_models]
    if not all(isinstance(threat_model, ThreatModel) for threat_model in threat_models):
        raise TypeError("Expected threat models as ThreatModel instances; build them with parse_eps_options.")
    if len(set(norms)) != len(norms):
        raise ValueError(f"Expected at most one threat model per norm, but got norms {norms}. Merge their epsilons.")


def _check_logits(logits: object, count: int) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"Expected the model to return a tensor of logits, but it returned {type(logits).__name__}. "
            "Wrap the model so that it returns the logits tensor."
        )
    if logits.dim() != 2 or logits.shape[0] != count or logits.shape[1] < 2:
        raise ValueError(
            f"Expected model outputs of shape ({count}, C) with C >= 2, but got {tuple(logits.shape)}."
        )


def _check_result(result: object, inputs: Tensor, name: str) -> None:
    if not isinstance(result, AttackResult):
        raise TypeError(f"Expected attack {name!r} to return an AttackResult, but got {type(result).__name__}.")
    if tuple(result.adversarial.shape) != tuple(inputs.shape) or tuple(result.claimed.shape) != (len(inputs),):
        raise ValueError(
            f"Expected attack {name!r} to return examples of shape {tuple(inputs.shape)} and success flags of "
            f"shape ({len(inputs)},), but got {tuple(result.adversarial.shape)} and {tuple(result.claimed.shape)}."
        )


def record_outcome(samples: Sequence[SampleRecord], outcome: InputAttackOutcome) -> None:
    """Copy one block's outcome into the attack fields of its ``samples``, in block order.

    Sets ``robust``, ``attack_success``, ``min_adversarial_distance`` and
    ``min_adversarial_attack``; the other fields are left as they are.

    Raises:
        ValueError: the number of samples differs from the block size.
    """
    count = len(outcome.correct)
    if len(samples) != count:
        raise ValueError(f"Expected {count} sample records for this block, but got {len(samples)}.")
    for position, sample in enumerate(samples):
        for norm, robust in outcome.robust.items():
            sample.robust[norm] = [bool(value) for value in robust[position]]
            distance = float(outcome.min_distance[norm][position])
            setattr(sample.min_adversarial_distance, norm, None if math.isnan(distance) else distance)
            sample.min_adversarial_attack[norm] = outcome.min_distance_attack[norm][position]
        for name, per_norm in outcome.success.items():
            for norm, success in per_norm.items():
                sample.attack_success.setdefault(name, {})[norm] = [bool(value) for value in success[position]]


def summarize_threat_models(
    samples: Sequence[SampleRecord],
    threat_models: Sequence[ThreatModel],
    attacks: Sequence[str],
    skipped: Mapping[str, str],
    seconds: Mapping[str, float] | Mapping[str, Mapping[str, float]],
) -> list[ThreatModelResult]:
    """Summarize per-sample attack results into one :class:`ThreatModelResult` per threat model.

    * ``robust_accuracy[i]``: fraction of all samples with ``robust[norm][i]`` (misclassified
      samples count as not robust).
    * ``attack_success_rate[i]``: fraction of correct samples that are not robust at ``epsilons[i]``;
      ``nan`` when no sample is correct.
    * ``per_attack_robust_accuracy[a][i]``: fraction of all samples that are correct and that
      attack ``a`` did not break at ``epsilons[i]``.

    Args:
        samples: records filled by :func:`record_outcome`, all blocks together.
        threat_models: the run's threat models.
        attacks: the attacks that ran; those not supporting a norm are listed as skipped there.
        skipped: attack -> reason, from the outcomes.
        seconds: attack -> seconds summed over norms, or norm -> attack -> seconds
            (``InputAttackOutcome.seconds_per_norm`` summed over blocks).

    Raises:
        ValueError: a sample lacks ``robust`` values for a threat model, or their number differs
            from the number of epsilons.
    """
    results = []
    for threat_model in threat_models:
        norm = threat_model.norm
        width = len(threat_model.epsilons)
        robust = _boolean_matrix([sample.robust.get(norm) for sample in samples], width, f"robust[{norm!r}]")
        correct = torch.tensor([bool(sample.correct) for sample in samples], dtype=torch.bool)

        total = len(samples)
        correct_count = int(correct.sum())
        robust_accuracy = _mean_columns(robust, total)
        broken_correct = (correct[:, None] & ~robust).sum(dim=0) if total else torch.zeros(width)
        success_rate = [float(value) / correct_count if correct_count else math.nan for value in broken_correct]

        norm_attacks = [name for name in attacks if name not in ATTACKS or norm in ATTACKS[name].norms]
        per_attack = {}
        for name in norm_attacks:
            rows = [sample.attack_success.get(name, {}).get(norm, [False] * width) for sample in samples]
            broken = _boolean_matrix(rows, width, f"attack_success[{name!r}][{norm!r}]")
            per_attack[name] = _mean_columns(correct[:, None] & ~broken, total)

        norm_skipped = dict(skipped)
        for name in attacks:
            if name in ATTACKS and norm not in ATTACKS[name].norms:
                norm_skipped[name] = f"supports only {', '.join(ATTACKS[name].norms)}"

        results.append(
            ThreatModelResult(
                norm=norm,
                epsilons=list(threat_model.epsilons),
                robust_accuracy=robust_accuracy,
                attacks=norm_attacks,
                attack_success_rate=success_rate,
                per_attack_robust_accuracy=per_attack,
                skipped_attacks=norm_skipped,
                attack_seconds=_seconds_for(seconds, norm, norm_attacks),
            )
        )
    return results


def _boolean_matrix(rows: Sequence[Sequence[bool] | None], width: int, label: str) -> Tensor:
    values: list[list[bool]] = []
    for position, row in enumerate(rows):
        if row is None or len(row) != width:
            raise ValueError(
                f"Expected {label} with {width} values for every sample, but sample {position} has "
                f"{'none' if row is None else len(row)}. Fill the samples with record_outcome first."
            )
        values.append([bool(value) for value in row])
    return torch.tensor(values, dtype=torch.bool).reshape(len(rows), width)


def _mean_columns(matrix: Tensor, total: int) -> list[float]:
    if total == 0:
        return [math.nan] * matrix.shape[1]
    return [float(value) / total for value in matrix.sum(dim=0)]


def _seconds_for(
    seconds: Mapping[str, float] | Mapping[str, Mapping[str, float]], norm: Norm, attacks: Sequence[str]
) -> dict[str, float]:
    per_norm = seconds.get(norm)
    if isinstance(per_norm, Mapping):
        return {name: float(per_norm[name]) for name in attacks if name in per_norm}
    return {name: float(value) for name, value in seconds.items() if name in attacks and not isinstance(value, Mapping)}
