"""Overhead of a full ``robusteval run`` against calling the same attacks directly.

robusteval's side is :func:`robusteval.pipeline.evaluate` with the parameter-space stages off,
the in-process equivalent of ``robusteval run MODEL --arch ... --data FILE.npz --attacks
pgd,fmn,apgd-ce --no-parameter-space``. It includes model loading, preflight, the geometry
stage, the attacks, the recheck of every adversarial example, the region walk, the reliability
checks, the analysis and writing the run directory. The terminal and HTML reports of the CLI
are not included.

The direct side calls foolbox 3.3.4 and torchattacks 3.5.1 with the settings robusteval's
adapters use (``robusteval/attacks/_foolbox.py`` and ``_torchattacks.py``): the same attacks,
steps, step sizes, restarts, epsilons, samples and seeds. Like robusteval, it runs a
fixed-budget attack at each epsilon only on the correct samples it has not broken at a smaller
one, and a minimal-norm attack once per norm. With identical seeds both sides should find the
same adversarial examples, which the agreement line checks.

Two models of the same 784-256-256-256-10 ReLU architecture, each saved as a state_dict:

* ``trained``: trained for a few epochs of Adam on synthetic data that can be learned: ten
  random class prototypes in [0, 1]^784, each input a prototype plus Gaussian noise, clipped to
  [0, 1]. The evaluated samples are held-out draws labelled with their class. The model
  classifies them all correctly and many survive the smaller epsilons, so the attacks run at
  several epsilons of each grid, as they do on a model worth evaluating. The 15% target applies
  to this model, at 64 and at 256 samples.
* ``random``: PyTorch's default random initialization, a stress case without a target. The
  inputs are uniform in [0, 1] and their labels are the model's own predictions, so every sample
  is correct and attacked. Every sample falls at the smallest epsilon of each grid, so each
  attack runs once per norm. robusteval's own work, above all the exact geometry, whose cost is
  close to one 100-step attack run on this network, then weighs most.

All samples of a line are evaluated in one block (``block_size`` equal to the sample count), so
that the direct calls can reproduce that block's seeds.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import foolbox as fb
import numpy as np
import torch
import torchattacks
from torch import Tensor, nn

from robusteval.architectures import build_architecture
from robusteval.attacks.adapters import AttackBudget

# Private names, imported so that the direct calls use exactly robusteval's settings: the PGD
# step size relative to epsilon, and the L2 FMN attack with the projection that robusteval repairs.
from robusteval.attacks._foolbox import _PGD_STEP_FACTOR, _RepairedL2FMNAttack
from robusteval.attacks.threat_models import EPSILON_ATOL_FRACTION, EPSILON_RTOL
from robusteval.pipeline import EvaluationConfig, evaluate
from robusteval.results import Results
from robusteval.seeding import derive_seed

# The benchmarks are scripts, not a package: make their shared module importable.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MLP_ARCH, Measurement, load_average  # noqa: E402

ATTACK_NAMES = ("pgd", "fmn", "apgd-ce")
OVERHEAD_TARGET_PERCENT = 15.0


def write_mlp_files(directory: Path, samples: int, *, seed: int = 0) -> tuple[Path, Path]:
    """Save the MLP as a state_dict and ``samples`` inputs with labels as ``.npz``; return both paths.

    The inputs are ``(samples, 784)`` float32, uniform in [0, 1]; the labels are the model's predictions.
    """
    torch.manual_seed(seed)
    model = build_architecture(MLP_ARCH).eval()
    x = torch.rand(samples, 784, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    model_path, data_path = directory / "mlp.pt", directory / "inputs.npz"
    torch.save(model.state_dict(), model_path)
    np.savez(data_path, x=x.numpy(), y=y.numpy())
    return model_path, data_path


# Synthetic data of the trained model: noise around each prototype, training set size, epochs.
PROTOTYPE_NOISE = 0.3
TRAIN_SAMPLES = 4096
TRAIN_EPOCHS = 3


def _synthetic_digits(count: int, prototypes: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw ``count`` inputs ``(count, 784)`` in [0, 1] around the class ``prototypes`` ``(10, 784)``, with their classes."""
    labels = torch.randint(0, len(prototypes), (count,), generator=generator)
    noise = PROTOTYPE_NOISE * torch.randn(count, prototypes.shape[1], generator=generator)
    return (prototypes[labels] + noise).clamp(0.0, 1.0), labels


def write_trained_mlp_files(directory: Path, samples: int, *, seed: int = 0) -> tuple[Path, Path]:
    """Train the MLP on synthetic class-prototype data, save it and ``samples`` held-out inputs; return both paths.

    Training is seeded and runs on one thread, so the weights are the same in every run on one machine.
    """
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, 784, generator=generator)
    x_train, y_train = _synthetic_digits(TRAIN_SAMPLES, prototypes, generator)
    x_test, y_test = _synthetic_digits(samples, prototypes, generator)

    torch.manual_seed(seed)
    model = build_architecture(MLP_ARCH)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(TRAIN_EPOCHS):
            order = torch.randperm(TRAIN_SAMPLES, generator=generator)
            for batch in order.split(128):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model_path, data_path = directory / "trained_mlp.pt", directory / "trained_inputs.npz"
    torch.save(model.state_dict(), model_path)
    np.savez(data_path, x=x_test.numpy(), y=y_test.numpy())
    return model_path, data_path


def run_robusteval(model_path: Path, data_path: Path, samples: int, out_dir: Path) -> tuple[Results, float, float]:
    """Run the pipeline without parameter-space stages; return its results, wall time and CPU time in seconds.

    All samples form one block, whose seeds the direct calls reproduce.
    """
    config = EvaluationConfig(
        model=str(model_path), arch=MLP_ARCH, data=str(data_path), samples=samples,
        attacks=ATTACK_NAMES, parameter_space=False, block_size=samples,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    results = evaluate(config, out_dir=out_dir, force=True)
    return results, time.perf_counter() - start, time.process_time() - cpu_start


def run_direct(
    model: nn.Module, x: Tensor, y: Tensor, threat_models: dict[str, list[float]], *, seed: int
) -> tuple[dict[str, Tensor], float, float]:
    """Run the attacks with foolbox and torchattacks directly, as robusteval configures them.

    Args:
        model: the MLP in eval mode.
        x: ``(N, 784)`` inputs in [0, 1].
        y: ``(N,)`` labels.
        threat_models: norm -> epsilons, taken from robusteval's results.
        seed: the run's seed; each attack run is seeded as robusteval seeds block 0.

    Returns:
        norm -> ``(N, E)`` bool robust flags (correct and unbroken at each epsilon), the wall time
        and the CPU time in seconds.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    block_seed = derive_seed(seed, "attacks", 0)
    budget = AttackBudget()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y

    robust = {}
    for norm, epsilons in threat_models.items():
        broken_any = torch.zeros(len(x), len(epsilons), dtype=torch.bool)
        for name in ATTACK_NAMES:
            distances = _attack_distances(name, fmodel, model, x, y, correct, norm, epsilons, block_seed, budget)
            limits = torch.tensor([eps * (1 + EPSILON_RTOL) + EPSILON_ATOL_FRACTION for eps in epsilons], dtype=torch.float64)
            broken_any |= distances[:, None] <= limits[None, :]
        robust[norm] = correct[:, None] & ~broken_any
    return robust, time.perf_counter() - start, time.process_time() - cpu_start


def _attack_distances(
    name: str,
    fmodel: fb.PyTorchModel,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    correct: Tensor,
    norm: str,
    epsilons: Sequence[float],
    block_seed: int,
    budget: AttackBudget,
) -> Tensor:
    """Return the ``(N,)`` perturbation norms of the adversarial examples one attack found; ``inf`` where none."""
    distances = torch.full((len(x),), math.inf, dtype=torch.float64)
    if name == "fmn":
        positions = correct.nonzero().flatten()
        torch.manual_seed(derive_seed(block_seed, name, norm, 0))
        adversarial, success = _fmn(fmodel, x[positions], y[positions], norm, budget.steps)
        _record(distances, positions, x[positions], adversarial, success, norm)
        return distances

    for index, epsilon in enumerate(epsilons):
        limit = epsilon * (1 + EPSILON_RTOL) + EPSILON_ATOL_FRACTION
        positions = (correct & (distances > limit)).nonzero().flatten()
        if len(positions) == 0:
            continue
        run_seed = derive_seed(block_seed, name, norm, index)
        torch.manual_seed(run_seed)
        inputs, labels = x[positions], y[positions]
        if name == "pgd":
            attack_type = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
            attack = attack_type(steps=budget.steps, rel_stepsize=_PGD_STEP_FACTOR / budget.steps, random_start=True)
            _, adversarial, success = attack(fmodel, inputs, fb.criteria.Misclassification(labels), epsilons=epsilon)
        else:
            attack = torchattacks.APGD(
                model, norm="Linf" if norm == "linf" else "L2", eps=epsilon, steps=budget.steps,
                n_restarts=budget.restarts, seed=run_seed % 2**31, loss="ce",
            )
            # torchattacks' APGD needs (N, C, H, W) images; the MLP flattens them again.
            adversarial = attack(inputs.reshape(-1, 1, 28, 28), labels).reshape(inputs.shape)
            with torch.no_grad():
                success = model(adversarial).argmax(dim=1) != labels
        _record(distances, positions, inputs, adversarial, success, norm)
    return distances


def _fmn(fmodel: fb.PyTorchModel, x: Tensor, y: Tensor, norm: str, steps: int) -> tuple[Tensor, Tensor]:
    if norm == "linf":
        _, adversarial, success = fb.attacks.LInfFMNAttack(steps=steps)(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
        return adversarial, success
    _, adversarial, success = _RepairedL2FMNAttack(steps=steps)(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
    missing = (~success).nonzero().flatten()
    if len(missing):
        _, fallback, fallback_success = fb.attacks.L2FMNAttack(steps=steps)(
            fmodel, x[missing], fb.criteria.Misclassification(y[missing]), epsilons=None
        )
        adversarial, success = adversarial.clone(), success.clone()
        adversarial[missing] = fallback
        success[missing] = fallback_success
    return adversarial, success


def _record(distances: Tensor, positions: Tensor, inputs: Tensor, adversarial: Tensor, success: Tensor, norm: str) -> None:
    delta = (adversarial.detach().double() - inputs.double()).flatten(1)
    found = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    found = torch.where(success.bool(), found, torch.full_like(found, math.inf))
    closer = found < distances[positions]
    distances[positions[closer]] = found[closer]


def _warm_up(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """Run one gradient step through foolbox and torchattacks, so neither side pays first-call costs."""
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
    fb.attacks.LinfPGD(steps=2)(fmodel, x[:2], fb.criteria.Misclassification(y[:2]), epsilons=0.01)
    torchattacks.APGD(model, eps=0.01, steps=2, seed=0)(x[:2].reshape(-1, 1, 28, 28), y[:2])


# Name of each workload, the function that writes its model and data files, and whether the
# overhead target applies to it.
WORKLOADS = {"trained": (write_trained_mlp_files, True), "random": (write_mlp_files, False)}


def bench_pipeline(quick: bool, *, profile: bool = False) -> list[Measurement]:
    """Measure the full run against the direct attack calls on each workload; return its overhead and agreement lines."""
    sizes, repeats = ((8,), 1) if quick else ((64, 256), 3)
    measurements = []
    for workload, (write_files, targeted) in WORKLOADS.items():
        # The random model is a stress case, measured at the smallest size only.
        workload_sizes = sizes if targeted else sizes[:1]
        with tempfile.TemporaryDirectory(prefix="robusteval-bench-") as directory:
            model_path, data_path = write_files(Path(directory), max(workload_sizes))
            for samples in workload_sizes:
                # A quick run of 8 samples, measured once, is a smoke test: the target is for 64 and 256.
                measurements += _bench_workload(
                    workload, model_path, data_path, samples, repeats, Path(directory), targeted=targeted and not quick
                )
            if profile:
                _print_profile(model_path, data_path, workload_sizes[0], Path(directory) / "profiled")
    return measurements


def _bench_workload(
    workload: str, model_path: Path, data_path: Path, samples: int, repeats: int, directory: Path, *, targeted: bool
) -> list[Measurement]:
    """Measure the first ``samples`` rows of one model and data file: the overhead of the full run, of the attack stage, and the agreement."""
    model = build_architecture(MLP_ARCH)
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    arrays = np.load(data_path)
    x, y = torch.from_numpy(arrays["x"][:samples]), torch.from_numpy(arrays["y"][:samples])
    _warm_up(model, x, y)

    # Alternate the two sides and keep the best time of each, so a burst of load from other
    # processes hits one repeat of one side, not the ratio.
    robusteval_seconds, direct_seconds, robusteval_cpu, direct_cpu = math.inf, math.inf, math.inf, math.inf
    results: Results | None = None
    robust: dict[str, Tensor] = {}
    for _ in range(repeats):
        results, seconds, cpu = run_robusteval(model_path, data_path, samples, directory / "run")
        robusteval_seconds, robusteval_cpu = min(robusteval_seconds, seconds), min(robusteval_cpu, cpu)
        threat_models = {tm.norm: list(tm.epsilons) for tm in results.threat_models}
        robust, seconds, cpu = run_direct(model, x, y, threat_models, seed=0)
        direct_seconds, direct_cpu = min(direct_seconds, seconds), min(direct_cpu, cpu)
    assert results is not None

    timing = results.timing or {}
    stages = ", ".join(
        f"{key.removesuffix('_seconds')} {value:.2f} s" for key, value in timing.items() if key != "total_seconds"
    )
    overhead = 100 * (robusteval_seconds / direct_seconds - 1)
    attack_overhead = 100 * (timing.get("input_attack_seconds", math.nan) / direct_seconds - 1)
    difference = max(
        abs(ours - theirs)
        for tm in results.threat_models
        for ours, theirs in zip(tm.robust_accuracy, robust[tm.norm].double().mean(dim=0).tolist())
    )
    accuracy = ", ".join(
        f"{tm.norm} " + " ".join(f"{epsilon:g}:{value:.2f}" for epsilon, value in zip(tm.epsilons, tm.robust_accuracy))
        for tm in results.threat_models
    )
    load = load_average()
    attacks = ",".join(ATTACK_NAMES)
    return [
        Measurement(
            f"full run --no-parameter-space against direct foolbox/torchattacks calls, {workload} MLP "
            f"({attacks}, {samples} samples{'' if targeted else ', no target at this workload or size'})",
            overhead, "%",
            f"<= {OVERHEAD_TARGET_PERCENT:g}%" if targeted else "",
            overhead <= OVERHEAD_TARGET_PERCENT if targeted else None,
            f"wall time robusteval {robusteval_seconds:.1f} s, direct {direct_seconds:.1f} s (best of {repeats}); "
            f"CPU time {robusteval_cpu:.1f} s against {direct_cpu:.1f} s ({100 * (robusteval_cpu / direct_cpu - 1):+.0f}%); "
            f"robusteval stages of its last run: {stages}; clean accuracy {results.clean_accuracy:.2f}, "
            f"robust accuracy at each epsilon (epsilon:accuracy) {accuracy}; load {load}",
        ),
        Measurement(
            f"attack stage alone (adapters, recheck, bookkeeping) against the same direct calls, {workload} MLP, "
            f"{samples} samples",
            attack_overhead, "%", "", None,
            f"robusteval attack stage {timing.get('input_attack_seconds', math.nan):.1f} s (last run), "
            f"direct {direct_seconds:.1f} s (best of {repeats})",
        ),
        Measurement(
            f"robust accuracy, robusteval against the direct calls, largest difference, {workload} MLP, {samples} samples",
            difference, "", "= 0", difference == 0.0,
            "same attacks, seeds and samples on both sides, so both should break the same samples",
        ),
    ]


def _print_profile(model_path: Path, data_path: Path, samples: int, out_dir: Path) -> None:
    """Print the functions where one robusteval run spends the most cumulative time, from cProfile."""
    profiler = cProfile.Profile()
    profiler.enable()
    run_robusteval(model_path, data_path, samples, out_dir)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(r"robusteval|attacks|foolbox|torchattacks", 30)
    print(text.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline measurements and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 samples and one repeat instead of 64 and three")
    parser.add_argument("--profile", action="store_true", help="also profile one robusteval run with cProfile")
    arguments = parser.parse_args(argv)
    for measurement in bench_pipeline(arguments.quick, profile=arguments.profile):
        print(measurement.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
