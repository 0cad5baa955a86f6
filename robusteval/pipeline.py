"""The evaluation pipeline: load, preflight, per-block stages, model-level stages, results.

Samples are processed in blocks of ``block_size`` rows. Each block runs the per-sample stages
(geometry, input-space attacks, regions crossed, per-sample parameter-space radii, tangent shift)
with seeds derived from the run's seed and the block's first row, and its records are saved
atomically before the next block starts. The model-level stages (robust accuracy, reliability
flags, parameter-space curves, bounds, predictive validity) run on the gathered records. So the
results do not depend on whether a run was interrupted and resumed, or on how blocks were spread
over processes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from . import __version__
from ._types import Bounds, Norm
from .capabilities import parameter_space_unavailable_flag, region_distance_unavailable_flag, region_walk_unavailable_flag
from .devices import check_model_device, resolve_device
from .distributed import DistributedContext
from .eager import eager_equivalent
from .errors import PreflightError
from .progress import NullProgress, ProgressReporter
from .results import (
    DataInfo,
    EnvironmentInfo,
    Flag,
    ModelInfo,
    NormPair,
    Results,
    SampleRecord,
    TangentShiftRecord,
    save_results,
)
from .run_directory import RunDirectory
from .seeding import derive_seed, seeded

logger = logging.getLogger(__name__)

DEMO_MODEL = "zoo:demo"
GIB = 2**30


@dataclass(frozen=True)
class EvaluationConfig:
    """Everything that decides the numbers of one evaluation.

    Attributes:
        model: Path of the model file, or ``zoo:<name>`` for a bundled model. ``None`` means the
            bundled demo model.
        arch: Architecture spec for state_dict files (``mlp:64-128-10`` or ``package.module:factory``).
        trust_pickle: Allow full unpickling of model files, which can run arbitrary code.
        data: ``digits``, ``digits:image``, or a path to a ``.npz`` or ``.pt`` file.
        bounds: Declared input bounds; ``None`` takes the data's default, [0, 1].
        samples: Evaluate the first ``samples`` rows; ``None`` evaluates all.
        seed: Seed for torch, numpy and every attack.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        eps: ``--eps`` options such as ``linf=0.05,0.1``; empty takes the defaults for the data's scale.
        attacks: Suite name (``quick``, ``standard``, ``thorough``) or a list of attack names.
        parameter_space: Run the parameter-space stages.
        tangent_shift_epsilon: L2 radius of the tangent-shift search; ``None`` takes the median
            certified L2 radius of the block, so that most searches start inside the region.
        ts_method: ``auto``, ``closed_form``, ``exact`` or ``hutchinson``.
        probes: Gaussian probes for the Hutchinson estimate.
        block_size: Rows per block; the unit of seeding, saving and sharding.
        memory_budget: Bytes the geometry stage may use at once; larger work is chunked.
        bootstrap: Bootstrap resamples for rank-correlation intervals.
        noise_draws: Weight-noise draws per scale.
        weight_steps: Gradient steps of the adversarial-weight searches.
    """

    model: str | None = None
    arch: str | None = None
    trust_pickle: bool = False
    data: str = "digits"
    bounds: tuple[float, float] | None = None
    samples: int | None = None
    seed: int = 0
    device: str = "cpu"
    eps: tuple[str, ...] = ()
    attacks: str | tuple[str, ...] = "quick"
    parameter_space: bool = True
    tangent_shift_epsilon: float | None = None
    ts_method: Literal["auto", "closed_form", "exact", "hutchinson"] = "auto"
    probes: int = 64
    block_size: int = 128
    memory_budget: int = 2 * GIB
    bootstrap: int = 1000
    noise_draws: int = 8
    weight_steps: int = 10

    def fingerprint(self) -> dict[str, Any]:
        """Return the fields that decide the numbers, for checking that a resume is valid."""
        fields = asdict(self)
        fields["attacks"] = list(self.attacks) if not isinstance(self.attacks, str) else self.attacks
        fields["eps"] = list(self.eps)
        return fields


@dataclass
class _Context:
    """Shared state of the stages: the loaded model and data, and settings derived from them."""

    config: EvaluationConfig
    model: nn.Module
    device: torch.device
    x: torch.Tensor
    y: torch.Tensor
    rows: np.ndarray
    bounds: Bounds
    num_classes: int
    threat_models: list[Any]
    attack_names: list[str]
    skipped_attacks: dict[str, str]
    # None when the parameter-space stages are off: only the tangent-shift search uses it.
    tangent_shift_epsilon: float | None
    # The model as the parameter-space stage runs it (an eager copy of a TorchScript
    # Sequential), or None when that stage cannot or should not run.
    parameter_model: nn.Module | None
    flags: list[Flag] = field(default_factory=list)
    # The region walk's prepared model, built at its first block.
    region_walker: Any = None
    # The float64 copy of the model that checks affinity and that the region walk reuses, built
    # at the first block that needs it. It stays None after a failed conversion, and the
    # affinity check then runs in the model's dtype.
    affine_reference: nn.Module | None = None
    affine_reference_built: bool = False


def evaluate(
    config: EvaluationConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: ProgressReporter | None = None,
    command: str | None = None,
    distributed: DistributedContext | None = None,
    strict_preflight: bool = False,
) -> Results:
    """Evaluate one model on one data set and return its results.

    With ``out_dir``, blocks are saved as they finish, ``results.json`` is written at the end,
    and ``resume=True`` continues an interrupted run. With ``distributed``, each rank evaluates
    every ``world_size``-th block, and rank 0 gathers the records and computes the aggregates.
    The other ranks return partial results that contain only their own samples.

    Preflight findings of severity ``"error"`` (outputs that change between identical calls or
    with the batch size) are recorded as flags, or raise ``PreflightError`` before any work with
    ``strict_preflight=True``, as the CLI asks, since attacks on such a model measure noise.

    Raises:
        OutputExistsError: ``out_dir`` holds results and neither ``resume`` nor ``force`` is set.
        ResumeError: the partial results in ``out_dir`` come from another configuration.
        ModelLoadError, DataLoadError, PreflightError: the inputs are not usable.
    """
    progress = progress or NullProgress()
    world = distributed or DistributedContext.single()
    started = time.perf_counter()
    timing: dict[str, float] = {}

    with _current_cuda_device(config.device):
        context, loaded_model, dataset = _prepare(config, timing, strict_preflight=strict_preflight)

        run_directory = RunDirectory(out_dir) if out_dir is not None else None
        if run_directory is not None:
            # Rank 0 alone creates or clears the directory, and the other ranks wait for it here.
            # So no rank reads partial/ before it exists, and all stop if rank 0 cannot prepare it.
            prepare_directory = run_directory.prepare
            world.run_on_main(lambda: prepare_directory(config.fingerprint(), resume=resume, force=force))

        records, block_extras = _run_blocks(context, run_directory, world, progress, timing)
        if not world.is_main:
            return _assemble(context, loaded_model, dataset, records, block_extras, {}, timing, command, world)

        model_level = _run_model_level_stages(context, dataset, records, block_extras, progress, timing)
    timing["total_seconds"] = time.perf_counter() - started
    results = _assemble(context, loaded_model, dataset, records, block_extras, model_level, timing, command, world)

    if run_directory is not None:
        save_results(results, run_directory.results_path)
        run_directory.finish()
    return results


@contextmanager
def _current_cuda_device(name: str) -> Iterator[None]:
    """Make the run's GPU torch's current CUDA device, so that plain ``cuda`` tensors land on it too."""
    device = resolve_device(name)
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        yield


def _prepare(config: EvaluationConfig, timing: dict[str, float], *, strict_preflight: bool) -> tuple[_Context, Any, Any]:
    from .attacks import default_threat_models, parse_eps_options, resolve_attacks
    from .data import load_data
    from .loading import load_model
    from .preflight import preflight

    tick = time.perf_counter()
    device = resolve_device(config.device)
    loaded = load_model(config.model or DEMO_MODEL, arch=config.arch, trust_pickle=config.trust_pickle, device=device)
    bounds = Bounds(*config.bounds) if config.bounds is not None else None
    dataset = load_data(config.data, bounds=bounds)
    report = preflight(loaded.module, dataset, device=device, memory_budget=config.memory_budget)
    errors = [flag for flag in report.flags if flag.severity == "error"]
    if strict_preflight and errors:
        raise PreflightError(" ".join(flag.message for flag in errors))

    count = len(dataset.y) if config.samples is None else min(int(config.samples), len(dataset.y))
    if count < 1:
        raise ValueError(f"Expected --samples to be at least 1, but got {config.samples}.")
    rows = np.arange(count)
    x = dataset.x[:count].to(device)
    y = dataset.y[:count].to(device)
    check_model_device(loaded.module, x, tensor_name="data")

    threat_models = parse_eps_options(config.eps) if config.eps else default_threat_models(tuple(x.shape[1:]), dataset.bounds)
    attack_spec = config.attacks if isinstance(config.attacks, str) else list(config.attacks)
    _check_named_attacks(config.attacks, report.num_classes)
    attack_names, skipped = resolve_attacks(attack_spec, num_classes=report.num_classes, threat_models=threat_models)
    if not attack_names:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise ValueError(f"None of the requested attacks can run on this model ({reasons}). Choose others with --attacks.")
    epsilon = config.tangent_shift_epsilon
    if epsilon is None and config.parameter_space:
        epsilon = _default_tangent_shift_epsilon(loaded.module, x[: config.block_size], dataset.bounds, config)
    flags = list(report.flags)
    parameter_model = None
    if config.parameter_space:
        parameter_model = eager_equivalent(loaded.module, x[:8])
        if parameter_model is None:
            flags.append(parameter_space_unavailable_flag())
    timing["prepare_seconds"] = time.perf_counter() - tick

    context = _Context(
        config=config,
        model=loaded.module,
        device=device,
        x=x,
        y=y,
        rows=rows,
        bounds=dataset.bounds,
        num_classes=report.num_classes,
        threat_models=threat_models,
        attack_names=attack_names,
        skipped_attacks=skipped,
        tangent_shift_epsilon=epsilon,
        parameter_model=parameter_model,
        flags=flags,
    )
    return context, loaded, dataset


def _check_named_attacks(spec: str | tuple[str, ...], num_classes: int) -> None:
    """Raise when an attack named explicitly (not through a suite) needs more classes than the model has.

    Suites skip such attacks and the report names them; an explicit request that cannot be
    honoured is an error instead of a silent skip.
    """
    from .attacks import ATTACKS, SUITES

    items = spec.split(",") if isinstance(spec, str) else list(spec)
    named = []
    for item in items:
        key = item.strip()
        name = key if key in ATTACKS else key.lower()
        if name in ATTACKS and name not in SUITES:
            named.append(name)
    # Unknown names are left to resolve_attacks, whose message lists every attack and suite.
    too_few = [name for name in named if ATTACKS[name].min_classes > num_classes]
    if too_few:
        needs = ", ".join(f"{name} (needs at least {ATTACKS[name].min_classes} classes)" for name in too_few)
        raise ValueError(
            f"Expected attacks that run on a model with {num_classes} classes, but --attacks names {needs}. "
            "Remove them from --attacks, or pass a suite (quick, standard, thorough), which skips the "
            "attacks a model cannot run and names them in the report."
        )


def _default_tangent_shift_epsilon(model: nn.Module, x: torch.Tensor, bounds: Bounds, config: EvaluationConfig) -> float:
    """Return the median certified L2 radius of the first block, so most searches start inside their region.

    The first block is the same in every run of a configuration, so the value is too.
    """
    from .geometry import local_linear_analysis

    with seeded(derive_seed(config.seed, "geometry", 0)) as generator:
        geometry = local_linear_analysis(model, x, bounds=bounds, method=config.ts_method, probes=config.probes,
                                         generator=generator, memory_budget=config.memory_budget)
    radius = geometry.certified_radius["l2"]
    finite = radius[torch.isfinite(radius) & (radius > 0)]
    return float(finite.median()) if len(finite) else 0.1


def _block_starts(context: _Context) -> list[int]:
    return list(range(0, len(context.rows), context.config.block_size))


def _run_blocks(
    context: _Context,
    run_directory: RunDirectory | None,
    world: DistributedContext,
    progress: ProgressReporter,
    timing: dict[str, float],
) -> tuple[list[SampleRecord], dict[str, Any]]:
    # Blocks found on disk exist only after `prepare` accepted a resume; a forced or new run
    # starts with none.
    starts = _block_starts(context)
    mine = [start for position, start in enumerate(starts) if position % world.world_size == world.rank]
    if not mine:
        logger.warning(
            "Rank %d has no block to evaluate: %d samples in blocks of %d make %d block(s) for %d processes. "
            "Lower --block-size to use every process.",
            world.rank, len(context.rows), context.config.block_size, len(starts), world.world_size,
        )
    progress.start("samples", sum(min(context.config.block_size, len(context.rows) - s) for s in mine))

    records: list[SampleRecord] = []
    extras: list[tuple[int, dict[str, Any]]] = []
    for start in mine:
        stop = min(start + context.config.block_size, len(context.rows))
        block_records = run_directory.load_block(start) if run_directory is not None else None
        if block_records is not None:
            block_extra = run_directory.load_block_extra(start)  # type: ignore[union-attr]
        else:
            block_records, block_extra = _evaluate_block(context, start, stop, progress, timing)
            if run_directory is not None:
                run_directory.save_block(start, block_records, block_extra)
        records.extend(block_records)
        extras.append((start, block_extra))
        progress.advance("samples", stop - start)
    progress.finish("samples")

    # Sorting by row and merging in block order make rank 0's result independent of how the
    # blocks were spread over ranks. The other ranks keep only their own blocks.
    records, extras = world.gather_blocks(records, extras)
    records.sort(key=lambda record: record.index)
    merged: dict[str, Any] = {}
    for _, block_extra in sorted(extras, key=lambda item: item[0]):
        _merge_extra(merged, block_extra)
    return records, merged


def _merge_extra(total: dict[str, Any], block: dict[str, Any]) -> None:
    for key, value in block.items():
        if key == "flags":
            known = {(flag["code"], flag["message"]) for flag in total.setdefault("flags", [])}
            total["flags"].extend(flag for flag in value if (flag["code"], flag["message"]) not in known)
        elif key == "seconds":
            # norm -> attack -> seconds, summed over blocks
            for norm, by_attack in value.items():
                norm_total = total.setdefault("seconds", {}).setdefault(norm, {})
                for name, seconds in by_attack.items():
                    norm_total[name] = norm_total.get(name, 0.0) + seconds
        elif key == "skipped":
            total.setdefault("skipped", {}).update(value)
        else:
            total.setdefault(key, value)


def _evaluate_block(
    context: _Context, start: int, stop: int, progress: ProgressReporter, timing: dict[str, float]
) -> tuple[list[SampleRecord], dict[str, Any]]:
    from .attacks import run_input_attacks
    from .geometry import local_linear_analysis

    config = context.config
    x = context.x[start:stop]
    y = context.y[start:stop]

    tick = time.perf_counter()
    with seeded(derive_seed(config.seed, "geometry", start)) as generator:
        geometry = local_linear_analysis(
            context.model, x, bounds=context.bounds, method=config.ts_method, probes=config.probes,
            generator=generator, memory_budget=config.memory_budget,
        )
    geometry, affine_flags = _check_affine_claims(context, x, geometry, derive_seed(config.seed, "affine", start))
    if bool(torch.isnan(geometry.region_distance["l2"]).all()) and not affine_flags:
        affine_flags.append(region_distance_unavailable_flag())
    _add_time(timing, "geometry_seconds", tick)

    tick = time.perf_counter()
    outcome = run_input_attacks(
        context.model, x, y, threat_models=context.threat_models, attacks=context.attack_names,
        bounds=context.bounds, seed=derive_seed(config.seed, "attacks", start), progress=progress,
    )
    _add_time(timing, "input_attack_seconds", tick)

    walk_flags: list[Flag] = list(affine_flags)
    regions_crossed = _regions_crossed(context, x, outcome, walk_flags, timing)
    parameter = _per_sample_parameter_space(context, x, geometry, start, timing) if context.parameter_model is not None else {}

    records = _build_records(context, start, stop, geometry, outcome, regions_crossed, parameter)
    extra = {
        "geometry_method": geometry.method,
        "geometry_probes": geometry.probes,
        "flags": [asdict(flag) for flag in [*outcome.flags, *walk_flags]],
        "seconds": {norm: dict(by_attack) for norm, by_attack in outcome.seconds_per_norm.items()},
        "skipped": dict(outcome.skipped),
    }
    return records, extra


# Largest relative difference between f(x + d) - f(x) and 2 (f(x + d/2) - f(x)) accepted as
# affine. In float64 a 784-256-256-10 ReLU MLP measured about 3e-11, while one tanh layer at
# the radii where the check runs gives 1e-2 or more.
AFFINE_TOLERANCE = 1e-3
# Samples per block whose input Hessian is probed, and the largest ||H v|| / ||g|| (per unit of
# input) accepted as zero. ReLU networks give exactly 0; a tanh layer gives order 0.1 to 10.
CURVATURE_SAMPLES = 16
CURVATURE_TOLERANCE = 1e-6
# Multiple of the machine epsilon times the logits' magnitude that rounding may add to the
# difference, for a model that cannot be converted to float64 and is checked in its own dtype.
ROUNDING_FACTOR = 64


def _check_affine_claims(context: _Context, x: torch.Tensor, geometry: Any, seed: int) -> tuple[Any, list[Flag]]:
    """Verify the certificate's premise where it reaches the decision boundary, or withdraw it.

    Where no ReLU lies closer than the linear decision boundary (region distance >= linear
    decision distance, including networks without ReLUs, where it is infinite), the certified
    radius claims the network is affine on the whole ball. That holds for piecewise-linear
    networks only; tanh, sigmoid or GELU layers break it. For those samples f(x + d) - f(x) is
    compared with 2 (f(x + d/2) - f(x)) along a random L2 direction of half the radius. If any
    sample fails, the region distances and certified radii of the block are set to NaN.

    The check runs on a float64 copy of the model. In float32 the differences at radii of 1e-3
    or less are mostly rounding: a plain ReLU MLP then deviated by 1e-2 and was flagged.
    """
    region = geometry.region_distance["l2"]
    decision = geometry.linear_decision_distance["l2"]
    model, dtype = _affine_reference(context), torch.float64
    if model is None:
        model, dtype = context.model, x.dtype

    # Every certificate assumes a piecewise-linear network, whose input Hessian is zero inside
    # each region. A tanh layer beside the ReLUs makes it nonzero at any radius, including radii
    # too small for the affinity test below to see the curvature.
    located = torch.nonzero(~torch.isnan(region)).flatten()[:CURVATURE_SAMPLES]
    if len(located):
        curvature = _input_curvature(model, x[located].to(dtype), seed)
        if curvature > CURVATURE_TOLERANCE:
            return _withdraw_certificates(geometry, Flag(
                "not_piecewise_linear", "warning",
                f"The model's input Hessian is not zero (its product with a random direction is {curvature:.2g} times "
                "the gradient's norm per unit of input), so it is not a piecewise-linear ReLU network. Region "
                "distances and certified radii are reported as unavailable; tangent sensitivity, attacks and the "
                "other scores are unaffected.",
                "geometry",
                {"relative_curvature": curvature},
            ))

    # A NaN region distance claims nothing: the radius is already unavailable there.
    claimed = torch.isfinite(decision) & (decision > 0) & ~torch.isnan(region) & (region >= decision)
    if not bool(claimed.any()):
        return geometry, []

    rows = torch.nonzero(claimed).flatten()
    inputs = x[rows].to(dtype)
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(inputs.shape, generator=generator, dtype=torch.float64).to(device=x.device, dtype=dtype)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(-1, *[1] * (x.dim() - 1))
    step = direction * (decision[rows] / 2).to(dtype).reshape(-1, *[1] * (x.dim() - 1))
    with torch.no_grad():
        base = model(inputs)
        full = model(inputs + step) - base
        half = model(inputs + step / 2) - base
    rounding = ROUNDING_FACTOR * torch.finfo(base.dtype).eps * base.abs().amax(dim=1) / AFFINE_TOLERANCE
    scale = torch.maximum(full.abs().amax(dim=1), rounding).clamp_min(torch.finfo(full.dtype).tiny)
    mismatch = ((full - 2 * half).abs().amax(dim=1) / scale).max()
    if float(mismatch) <= AFFINE_TOLERANCE:
        return geometry, []

    return _withdraw_certificates(geometry, Flag(
        "not_piecewise_linear", "warning",
        f"The model is not affine where its certificate needs it to be (relative deviation {float(mismatch):.2g} "
        f"on a ball inside the claimed radius), so it is not a piecewise-linear ReLU network. Region distances "
        "and certified radii are reported as unavailable; tangent sensitivity, attacks and the other scores "
        "are unaffected.",
        "geometry",
        {"relative_deviation": float(mismatch)},
    ))


def _withdraw_certificates(geometry: Any, flag: Flag) -> tuple[Any, list[Flag]]:
    """Return ``geometry`` with region distances and certified radii set to NaN, and ``flag``."""
    withdrawn = replace(
        geometry,
        region_distance={norm: torch.full_like(values, math.nan) for norm, values in geometry.region_distance.items()},
        certified_radius={norm: torch.full_like(values, math.nan) for norm, values in geometry.certified_radius.items()},
        certificate_exact={norm: torch.zeros_like(values, dtype=torch.bool) for norm, values in geometry.certificate_exact.items()},
    )
    return withdrawn, [flag]


def _input_curvature(model: nn.Module, inputs: torch.Tensor, seed: int) -> float:
    """Return the largest ``||H v|| / ||g||`` over ``inputs``, for ``g`` the input gradient of ``u . f``.

    ``u`` and the unit direction ``v`` are random per sample; ``H v`` is the derivative of ``g``
    along ``v``, by double backward. Through ReLU, max-pooling and affine layers it is exactly
    zero, because their second derivatives are zero in autograd.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, "curvature"))
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        weights = torch.randn(logits.shape, generator=generator, dtype=torch.float64).to(logits)
        (gradient,) = torch.autograd.grad((logits * weights).sum(), x, create_graph=True)
        if not gradient.requires_grad:
            return 0.0
        direction = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(-1, *[1] * (x.dim() - 1))
        (product,) = torch.autograd.grad((gradient * direction).sum(), x, allow_unused=True)
    if product is None:
        return 0.0
    ratio = product.flatten(1).norm(dim=1) / gradient.detach().flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
    return float(ratio.max())


def _affine_reference(context: _Context) -> nn.Module | None:
    """Return the float64 copy of the model for the affinity check, built once per run; ``None`` if it cannot be built."""
    from .analysis.region_walk import float64_copy

    if not context.affine_reference_built:
        context.affine_reference_built = True
        try:
            context.affine_reference = float64_copy(context.model)
        except (RuntimeError, TypeError) as error:
            logger.info("The affinity check runs in the model's dtype because a float64 copy failed: %s", error)
    return context.affine_reference


def _add_time(timing: dict[str, float], key: str, tick: float) -> None:
    timing[key] = timing.get(key, 0.0) + time.perf_counter() - tick


def _regions_crossed(
    context: _Context, x: torch.Tensor, outcome: Any, flags: list[Flag], timing: dict[str, float]
) -> dict[str, list[int | None]]:
    """Count the regions between each sample and its closest adversarial example, per norm.

    Appends a flag to ``flags`` instead of the run's own list, so that it travels with the
    block's saved extras to rank 0 and into resumed runs.
    """
    from .analysis.region_walk import RegionWalker

    tick = time.perf_counter()
    crossed: dict[str, list[int | None]] = {}
    for norm, examples in outcome.adversarial_examples.items():
        adversarial = examples.to(x.device)  # the attack stage returns its examples on the CPU
        found = torch.isfinite(adversarial.flatten(1)).all(dim=1)
        counts: list[int | None] = [None] * len(x)
        if bool(found.any()):
            try:
                if context.region_walker is None:
                    context.region_walker = RegionWalker(context.model, x, float64_model=_affine_reference(context))
                values = context.region_walker.count(x[found], adversarial[found])
            except ValueError as error:
                # Models whose ReLUs cannot be located have no region walk, which one flag records.
                flags.append(region_walk_unavailable_flag(error))
                return {}
            for position, value in zip(torch.nonzero(found).flatten().tolist(), values.tolist()):
                counts[position] = int(value)
        crossed[norm] = counts
    _add_time(timing, "region_walk_seconds", tick)
    return crossed


def _per_sample_parameter_space(
    context: _Context, x: torch.Tensor, geometry: Any, start: int, timing: dict[str, float]
) -> dict[str, Any]:
    from .attacks.parameter import adversarial_weight_radius, tangent_shift, weight_noise_radius

    config = context.config
    model = context.parameter_model
    epsilon = context.tangent_shift_epsilon
    assert model is not None and epsilon is not None  # both are set whenever the stage runs
    tick = time.perf_counter()
    noise_radius = weight_noise_radius(
        model, x, mode="magnitude", draws=config.noise_draws, seed=derive_seed(config.seed, "noise", start)
    )
    weight_radius, first_order = adversarial_weight_radius(
        model, x, steps=config.weight_steps, seed=derive_seed(config.seed, "weights", start)
    )

    predictions = geometry.predictions
    ts_predicted = geometry.tangent_sensitivity.gather(1, predictions[:, None]).squeeze(1)
    region_l2 = geometry.region_distance["l2"]
    shift = tangent_shift(
        model, x, epsilon=epsilon, tangent_sensitivity=ts_predicted, region_distance=region_l2,
        steps=config.weight_steps, seed=derive_seed(config.seed, "tangent_shift", start),
    )
    _add_time(timing, "parameter_space_seconds", tick)
    return {"noise_radius": noise_radius, "weight_radius": weight_radius, "first_order": first_order, "shift": shift}


def _float_or_none(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _pattern_id(patterns: list[torch.Tensor], row: int) -> str | None:
    if not patterns:
        return None
    digest = hashlib.sha1()
    for layer in patterns:
        digest.update(np.packbits(layer[row].cpu().numpy().astype(np.uint8)).tobytes())
    return digest.hexdigest()[:16]


def _build_records(
    context: _Context,
    start: int,
    stop: int,
    geometry: Any,
    outcome: Any,
    regions_crossed: dict[str, list[int | None]],
    parameter: dict[str, Any],
) -> list[SampleRecord]:
    norms: tuple[Norm, ...] = ("l2", "linf")
    records = []
    for offset in range(stop - start):
        row = int(context.rows[start + offset])
        label = int(context.y[start + offset])
        prediction = int(geometry.predictions[offset])

        def pair(values: dict[str, torch.Tensor]) -> NormPair:
            return NormPair(**{norm: _float_or_none(values[norm][offset]) for norm in norms if norm in values})

        record = SampleRecord(
            index=row,
            label=label,
            prediction=prediction,
            correct=label == prediction,
            tangent_sensitivity=[float(v) for v in geometry.tangent_sensitivity[offset]],
            tangent_sensitivity_stderr=(
                [float(v) for v in geometry.tangent_sensitivity_stderr[offset]]
                if geometry.tangent_sensitivity_stderr is not None else None
            ),
            region_distance=pair(geometry.region_distance),
            linear_decision_distance=pair(geometry.linear_decision_distance),
            certified_radius=pair(geometry.certified_radius),
            certificate_exact={norm: bool(geometry.certificate_exact[norm][offset]) for norm in norms},
            min_adversarial_distance=NormPair(**{
                norm: _float_or_none(outcome.min_distance[norm][offset]) for norm in outcome.min_distance
            }),
            min_adversarial_attack={norm: outcome.min_distance_attack[norm][offset] for norm in outcome.min_distance_attack},
            active_units=[int(v) for v in geometry.active_units[offset]],
            activation_region=_pattern_id(geometry.activation_patterns, offset),
            logit_margin=_float_or_none(geometry.logit_margin[offset]),
            input_gradient_norm=_float_or_none(geometry.input_gradient_norm[offset]),
            attack_success={
                attack: {norm: [bool(v) for v in table[offset]] for norm, table in by_norm.items()}
                for attack, by_norm in outcome.success.items()
            },
            regions_crossed={norm: counts[offset] for norm, counts in regions_crossed.items()} or None,
        )
        if parameter:
            shift = parameter["shift"]
            record.weight_noise_radius = _float_or_none(parameter["noise_radius"][offset])
            record.adversarial_weight_radius = _float_or_none(parameter["weight_radius"][offset])
            record.adversarial_weight_radius_first_order = _float_or_none(parameter["first_order"][offset])
            holds = shift.bound_holds[offset] if shift.bound_holds is not None else None
            record.tangent_shift = TangentShiftRecord(
                epsilon=float(shift.epsilon),
                achieved=float(shift.achieved[offset]),
                bound=float(shift.bound[offset]),
                crossed_region=bool(shift.crossed_region[offset]),
                bound_holds=None if holds is None or bool(shift.crossed_region[offset]) else bool(holds),
            )
        records.append(record)
    _fill_robust(context, records)
    return records


def _fill_robust(context: _Context, records: list[SampleRecord]) -> None:
    """Set ``robust[norm][i]``: correct, and no attack succeeded at ``epsilons[i]``."""
    for record in records:
        for threat_model in context.threat_models:
            norm = threat_model.norm
            flags = []
            for position, _ in enumerate(threat_model.epsilons):
                broken = any(
                    by_norm.get(norm, [False] * len(threat_model.epsilons))[position]
                    for by_norm in record.attack_success.values()
                )
                flags.append(bool(record.correct and not broken))
            record.robust[norm] = flags


def _run_model_level_stages(
    context: _Context,
    dataset: Any,
    records: list[SampleRecord],
    extras: dict[str, Any],
    progress: ProgressReporter,
    timing: dict[str, float],
) -> dict[str, Any]:
    from .analysis import certified_bracket, predictive_validity
    from .attacks import assess_reliability, summarize_threat_models
    from .bounds import compute_bounds, generalization_estimates

    config = context.config
    output: dict[str, Any] = {}

    tick = time.perf_counter()
    threat_results = summarize_threat_models(
        records, context.threat_models, context.attack_names,
        {**context.skipped_attacks, **extras.get("skipped", {})}, extras.get("seconds", {}),
    )
    output["threat_models"] = threat_results
    output["flags"] = assess_reliability(
        context.model, context.x, context.y, threat_results, records, bounds=context.bounds,
        seed=derive_seed(config.seed, "reliability"),
    )
    _add_time(timing, "reliability_seconds", tick)

    if context.parameter_model is not None:
        tick = time.perf_counter()
        progress.start("parameter space", 1)
        output["parameter_space"] = _parameter_space_section(context, records)
        progress.finish("parameter space")
        _add_time(timing, "parameter_space_seconds", tick)

    tick = time.perf_counter()
    ts = torch.tensor([record.tangent_sensitivity for record in records], dtype=torch.float64)
    active = torch.tensor([record.active_units for record in records], dtype=torch.int64) if records[0].active_units else None
    output["bounds"] = compute_bounds(context.model, tangent_sensitivity=ts, active_units=active, x=context.x)
    if dataset.x_train is not None and dataset.y_train is not None:
        output["generalization"] = generalization_estimates(
            context.model, x_train=dataset.x_train.to(context.device), y_train=dataset.y_train.to(context.device),
            x_test=context.x, y_test=context.y,
        )
    epsilons = {tm.norm: list(tm.epsilons) for tm in context.threat_models}
    output["predictive"] = predictive_validity(
        records, epsilons=epsilons, seed=derive_seed(config.seed, "bootstrap"), resamples=config.bootstrap
    )
    output["bracket"] = certified_bracket(records)
    output["regions"] = _region_statistics(records)
    _add_time(timing, "analysis_seconds", tick)
    return output


def _region_statistics(records: list[SampleRecord]) -> dict[str, Any]:
    """Summarize activation regions over the evaluated samples from their pattern hashes."""
    regions: dict[str, list[SampleRecord]] = {}
    for record in records:
        if record.activation_region is not None:
            regions.setdefault(record.activation_region, []).append(record)
    if not regions:
        return {"available": False}

    active = np.array([record.active_units for record in records], dtype=np.float64)  # (N, L)
    sizes = sorted((len(members) for members in regions.values()), reverse=True)

    # Tangent sensitivity is constant on an activation region, so samples that share a region
    # must agree up to rounding: the largest relative spread is a check of the geometry stage.
    spreads: list[float] = []
    per_region: list[dict[str, Any]] = []
    for region, members in regions.items():
        values = np.array([member.tangent_sensitivity for member in members], dtype=np.float64)  # (m, K)
        per_region.append({"region": region, "samples": len(members), "mean_tangent_sensitivity": float(values.mean())})
        if len(members) > 1:
            scale = np.maximum(np.abs(values).max(axis=0), np.finfo(np.float64).tiny)
            spreads.append(float(((values.max(axis=0) - values.min(axis=0)) / scale).max()))
    per_region.sort(key=lambda entry: -int(entry["samples"]))
    return {
        "available": True,
        "distinct_patterns": len(regions),
        "samples": len(records),
        "largest_region_samples": sizes[0],
        "singleton_regions": sum(size == 1 for size in sizes),
        "shared_regions": len(spreads),
        "max_relative_ts_spread_within_region": max(spreads) if spreads else None,
        "largest_regions": per_region[:10],
        "active_units_per_layer": {
            "mean": active.mean(axis=0).tolist(),
            "min": active.min(axis=0).tolist(),
            "max": active.max(axis=0).tolist(),
        },
        "total_active_units": {"mean": float(active.sum(axis=1).mean()), "std": float(active.sum(axis=1).std())},
    }


# Relative scales of the parameter-space curves: Gaussian noise sigma (relative to |w| or to
# each layer's norm) and the AWP budget gamma (relative to each layer's norm).
NOISE_SCALES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
WEIGHT_GAMMAS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
# Step size of the single gradient step in the single-example update attack (an SGD learning rate).
UPDATE_STEP_SIZE = 0.1


def _parameter_space_section(context: _Context, records: list[SampleRecord]) -> dict[str, Any]:
    """Run the model-level parameter-space attacks and fill each record's flip probabilities."""
    from .attacks.parameter import (
        TangentShiftResult,
        adversarial_weight_curve,
        noise_sharpness,
        parameter_space_section,
        single_example_update_attack,
        weight_noise_curve,
    )

    config = context.config
    model, x, y = context.parameter_model, context.x, context.y
    epsilon = context.tangent_shift_epsilon
    assert model is not None and epsilon is not None  # both are set whenever the stage runs
    curves = []
    sharpness: dict[str, float] = {}
    for mode in ("magnitude", "layer"):
        seed = derive_seed(config.seed, "noise_curve", mode)
        curves.append(weight_noise_curve(model, x, y, mode=mode, scales=NOISE_SCALES, draws=config.noise_draws, seed=seed))
        sharpness[mode] = noise_sharpness(model, x, y, mode=mode, draws=config.noise_draws, seed=seed)
    for record, probabilities in zip(records, curves[0].flip_probability.tolist()):
        record.weight_noise_flip_probability = {f"{scale:g}": p for scale, p in zip(NOISE_SCALES, probabilities) if scale > 0}

    weights = adversarial_weight_curve(model, x, y, gammas=WEIGHT_GAMMAS, steps=config.weight_steps,
                                       seed=derive_seed(config.seed, "weight_curve"))

    updates = []
    correct = [position for position, record in enumerate(records) if record.correct]
    if correct:
        position = correct[0]
        ts = records[position].tangent_sensitivity[records[position].prediction]
        modes: tuple[Literal["output", "label"], ...] = ("output", "label")
        for mode in modes:
            updates.append(single_example_update_attack(
                model, x[position:position + 1], x, y, epsilon=epsilon, step_size=UPDATE_STEP_SIZE,
                mode=mode, steps=config.weight_steps, seed=derive_seed(config.seed, "update", mode),
                bounds=context.bounds, tangent_sensitivity=ts,
            ))

    def column(name: str) -> torch.Tensor:
        return torch.tensor([_nan_if_none(getattr(record, name)) for record in records], dtype=torch.float64)

    shifts = [record.tangent_shift for record in records if record.tangent_shift is not None]
    shift_result = None
    if len(shifts) == len(records):
        region_l2 = torch.tensor([_nan_if_none(record.region_distance.l2) for record in records], dtype=torch.float64)
        shift_result = TangentShiftResult(
            epsilon=epsilon,
            achieved=torch.tensor([shift.achieved for shift in shifts], dtype=torch.float64),
            bound=torch.tensor([shift.bound for shift in shifts], dtype=torch.float64),
            crossed_region=torch.tensor([shift.crossed_region for shift in shifts]),
            bound_holds=tuple(shift.bound_holds for shift in shifts),
            delta=torch.empty(0),
            within_region_distance=region_l2 > epsilon,
        )

    return parameter_space_section(
        weight_noise=curves,
        sharpness_sigma=sharpness,
        adversarial_weights=weights,
        weight_noise_radius=column("weight_noise_radius"),
        adversarial_weight_radius=(column("adversarial_weight_radius"), column("adversarial_weight_radius_first_order")),
        tangent_shift=shift_result,
        single_example_update=updates,
    )


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _assemble(
    context: _Context,
    loaded: Any,
    dataset: Any,
    records: list[SampleRecord],
    extras: dict[str, Any],
    model_level: dict[str, Any],
    timing: dict[str, float],
    command: str | None,
    world: DistributedContext,
) -> Results:
    from .architectures import count_parameters, is_piecewise_linear

    config = context.config
    flags = list(context.flags)
    flags += [Flag(**flag) for flag in extras.get("flags", [])]
    flags += list(model_level.get("flags", []))

    threat_models = model_level.get("threat_models", [])
    clean_accuracy = sum(record.correct for record in records) / max(len(records), 1)
    indices = ",".join(str(record.index) for record in records)

    return Results(
        model=ModelInfo(
            path=loaded.path,
            sha256=loaded.sha256,
            format=loaded.format,
            parameter_count=count_parameters(context.model),
            piecewise_linear=is_piecewise_linear(context.model, context.x[:8]),
            architecture=loaded.architecture,
            num_classes=context.num_classes,
            name=loaded.name,
        ),
        data=DataInfo(
            name=dataset.name,
            sha256=dataset.sha256,
            num_samples=len(records),
            input_shape=list(context.x.shape[1:]),
            input_bounds=[float(context.bounds.lower), float(context.bounds.upper)],
            num_classes=context.num_classes,
            has_train_split=dataset.x_train is not None,
            sample_indices_sha256=hashlib.sha256(indices.encode()).hexdigest(),
        ),
        environment=_environment(config, world),
        clean_accuracy=clean_accuracy,
        threat_models=threat_models,
        samples=records,
        flags=flags,
        parameter_space=model_level.get("parameter_space"),
        predictive=model_level.get("predictive", []),
        bounds=model_level.get("bounds"),
        geometry={
            "method": extras.get("geometry_method"),
            "probes": extras.get("geometry_probes"),
            "bracket": model_level.get("bracket"),
        },
        regions=model_level.get("regions"),
        generalization=model_level.get("generalization"),
        config={**config.fingerprint(), "resolved_tangent_shift_epsilon": context.tangent_shift_epsilon},
        timing=timing,
        command=command,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _environment(config: EvaluationConfig, world: DistributedContext) -> EnvironmentInfo:
    from importlib.metadata import PackageNotFoundError, version

    def package_version(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return EnvironmentInfo(
        robusteval=__version__,
        torch=torch.__version__,
        foolbox=package_version("foolbox"),
        torchattacks=package_version("torchattacks"),
        python=sys.version.split()[0],
        device=config.device,
        seed=config.seed,
        platform=platform.platform(),
        torch_threads=torch.get_num_threads(),
        world_size=world.world_size,
    )


def replace_config(config: EvaluationConfig, **changes: Any) -> EvaluationConfig:
    """Return ``config`` with ``changes`` applied (a typed ``dataclasses.replace``)."""
    return replace(config, **changes)


__all__ = ["EvaluationConfig", "evaluate", "resolve_device", "replace_config", "DEMO_MODEL"]
