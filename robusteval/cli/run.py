"""``robusteval run``: evaluate one model and write ``DIR/results.json`` and the reports."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Literal, Optional, cast

import typer

from ..pipeline import EvaluationConfig
from ._app import app, at_least, configure_logging, console, error_console, fail, handle_errors
from ._progress import RichProgress

TsMethod = Literal["auto", "closed_form", "exact", "hutchinson"]
TS_METHODS: tuple[TsMethod, ...] = ("auto", "closed_form", "exact", "hutchinson")


@app.command()
def run(
    ctx: typer.Context,
    model: Optional[str] = typer.Argument(None, help="Model file (.pt TorchScript, .pt2 export, state_dict with --arch), or zoo:<name>. Omit to evaluate the bundled demo model."),
    data: str = typer.Option("digits", "--data", "-d", help="'digits' (bundled real handwritten digits, test split), 'digits:image', or a .npz/.pt file with arrays x and y."),
    out: Path = typer.Option(Path("robusteval-out"), "--out", "-o", help="Output directory for results.json and the HTML report."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture for state_dict files: 'mlp:64-128-10', 'cnn:1x8x8-16-10' or 'package.module:factory'."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow loading a fully pickled model. Unpickling runs arbitrary code from the file: use only for files you trust."),
    samples: Optional[int] = typer.Option(None, "--samples", "-n", callback=at_least(1), help="Evaluate only the first N samples."),
    seed: int = typer.Option(0, "--seed", help="Seed for torch, numpy and every attack."),
    device: str = typer.Option("cpu", "--device", help="'cpu', 'cuda' or 'cuda:N'."),
    eps: list[str] = typer.Option([], "--eps", help="Threat model as NORM=EPS,EPS,... (linf or l2), repeatable. Default: a grid for the data's scale."),
    attacks: str = typer.Option("quick", "--attacks", help="Attack suite (quick, standard, thorough) or a comma-separated list of attacks."),
    parameter_space: bool = typer.Option(True, "--parameter-space/--no-parameter-space", help="Run the parameter-space attacks."),
    lower: Optional[float] = typer.Option(None, "--lower", help="Lower input bound (default 0)."),
    upper: Optional[float] = typer.Option(None, "--upper", help="Upper input bound (default 1)."),
    ts_method: str = typer.Option("auto", "--ts-method", help="Tangent sensitivity: auto, closed_form, exact or hutchinson."),
    probes: int = typer.Option(64, "--probes", callback=at_least(1), help="Gaussian probes for the Hutchinson estimate."),
    noise_draws: int = typer.Option(8, "--noise-draws", callback=at_least(1), help="Weight-noise draws per scale."),
    weight_steps: int = typer.Option(10, "--weight-steps", callback=at_least(1), help="Gradient steps of the adversarial-weight and tangent-shift searches."),
    tangent_shift_epsilon: Optional[float] = typer.Option(None, "--tangent-shift-eps", callback=at_least(0.0), help="L2 radius of the tangent-shift search. Default: the median certified L2 radius of the first block (--block-size samples)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", callback=at_least(10), help="Bootstrap resamples for the rank-correlation intervals."),
    block_size: int = typer.Option(128, "--block-size", callback=at_least(1), help="Samples per block: the unit of seeding, saving and sharding across workers."),
    memory_budget_mib: int = typer.Option(2048, "--memory-budget", callback=at_least(16, "MiB"), help="Memory the geometry stage's working set may use at once, in MiB (on a CPU its chunks also stay under 48 MiB, which runs fastest). Model weights beyond it fail the preflight."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    force: bool = typer.Option(False, "--force", help="Overwrite results already in --out."),
    workers: int = typer.Option(1, "--workers", callback=at_least(1), help="Processes to shard the samples over on this machine (launches torchrun; gloo backend on the CPU, NCCL with --device cuda, one GPU per process)."),
    worker_timeout: float = typer.Option(1800.0, "--worker-timeout", callback=at_least(1.0, "s"), help="Seconds a process of a multi-process run waits for the others (joining, and gathering the results) before it stops with an error."),
    html: bool = typer.Option(True, "--html/--no-html", help="Write DIR/report.html."),
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file whose \\[run] table sets defaults for these options (threat models under \\[run.eps]); options on the command line win."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Log progress details to standard error (-vv for debug)."),
) -> None:
    """Evaluate one model: geometry, attacks, parameter space, bounds; print the report and write results."""
    configure_logging(verbose)
    with handle_errors():
        if config_file is not None:
            from ..run_config import load_run_table

            settings = load_run_table(config_file)
            defaults = {key: value for key, value in settings.items() if _given_by_default(ctx, key)}
            data = defaults.get("data", data)
            arch = defaults.get("arch", arch)
            samples = defaults.get("samples", samples)
            seed = defaults.get("seed", seed)
            device = defaults.get("device", device)
            eps = defaults.get("eps", eps)
            attacks = defaults.get("attacks", attacks)
            parameter_space = defaults.get("parameter_space", parameter_space)
            lower = defaults.get("lower", lower)
            upper = defaults.get("upper", upper)
            ts_method = defaults.get("ts_method", ts_method)
            probes = defaults.get("probes", probes)
            noise_draws = defaults.get("noise_draws", noise_draws)
            weight_steps = defaults.get("weight_steps", weight_steps)
            tangent_shift_epsilon = defaults.get("tangent_shift_eps", tangent_shift_epsilon)
            bootstrap = defaults.get("bootstrap", bootstrap)
            block_size = defaults.get("block_size", block_size)
            memory_budget_mib = defaults.get("memory_budget", memory_budget_mib)
        if ts_method not in TS_METHODS:
            fail(f"Expected --ts-method to be one of {', '.join(TS_METHODS)}, but got {ts_method!r}.")
        if resume and force:
            fail("--resume and --force cannot be combined: --resume keeps finished blocks, --force discards them.")
        if workers > 1 and "WORLD_SIZE" not in os.environ:
            _check_workers(workers, device)
            raise typer.Exit(_launch_workers(workers))
        bounds = None
        if lower is not None or upper is not None:
            bounds = (0.0 if lower is None else lower, 1.0 if upper is None else upper)
        attack_spec: str | tuple[str, ...] = attacks if "," not in attacks else tuple(a.strip() for a in attacks.split(",") if a.strip())
        config = EvaluationConfig(
            model=model, arch=arch, trust_pickle=trust_pickle, data=data, bounds=bounds, samples=samples,
            seed=seed, device=device, eps=tuple(eps), attacks=attack_spec, parameter_space=parameter_space,
            ts_method=cast(TsMethod, ts_method), probes=probes, noise_draws=noise_draws, weight_steps=weight_steps,
            tangent_shift_epsilon=tangent_shift_epsilon, bootstrap=bootstrap, block_size=block_size, memory_budget=memory_budget_mib * 2**20,
        )
        execute_run(config, out, resume=resume, force=force, html=html, worker_timeout=worker_timeout)


# Keys of the [run] table whose command-line parameter has another name.
_PARAMETER_NAMES = {"tangent_shift_eps": "tangent_shift_epsilon", "memory_budget": "memory_budget_mib"}


def _given_by_default(ctx: typer.Context, key: str) -> bool:
    """Return whether the option for config key ``key`` kept its default (was not on the command line)."""
    # typer ships its own copy of click, so compare the enum member by name.
    source = ctx.get_parameter_source(_PARAMETER_NAMES.get(key, key))
    return source is None or source.name in ("DEFAULT", "DEFAULT_MAP")


def execute_run(
    config: EvaluationConfig, out: Path, *, resume: bool, force: bool, html: bool, worker_timeout: float = 1800.0
) -> None:
    """Run the evaluation with progress bars, then print the report and write the files.

    Under torchrun, this process joins the group first; with a CUDA device that also makes
    ``cuda:LOCAL_RANK`` its current GPU, which plain ``--device cuda`` then resolves to.
    """
    from ..distributed import DistributedContext
    from ..pipeline import evaluate
    from ..reports.terminal import render

    command = "robusteval " + " ".join(shlex.quote(argument) for argument in sys.argv[1:])
    world = DistributedContext.from_environment(config.device, timeout_seconds=worker_timeout)
    try:
        with RichProgress(console, enabled=world.is_main) as progress:
            results = evaluate(config, out_dir=out, resume=resume, force=force, progress=progress,
                               command=command, distributed=world, strict_preflight=True)
    finally:
        world.close()
    if not world.is_main:
        return

    render(results, console)
    console.print(f"results: [bold]{out / 'results.json'}[/]", highlight=False)
    if html:
        from ..reports.html import write_html

        write_html(results, out / "report.html")
        console.print(f"HTML report: [bold]{out / 'report.html'}[/]", highlight=False)


def _check_workers(workers: int, device: str) -> None:
    """Raise before launching when ``workers`` processes cannot run on ``device`` on this machine."""
    import torch

    from ..devices import resolve_device

    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return
    if device != "cuda":
        raise ValueError(
            f"Expected --device cuda with --workers {workers}, but got --device {device}, which puts every "
            "process on one GPU; NCCL needs one GPU per process. Pass --device cuda, and choose the GPUs with "
            "CUDA_VISIBLE_DEVICES."
        )
    if workers > torch.cuda.device_count():
        raise ValueError(
            f"Expected at most one process per GPU, but --workers {workers} asks for {workers} processes and "
            f"only {torch.cuda.device_count()} CUDA device(s) are visible. Lower --workers."
        )


def worker_arguments(arguments: list[str]) -> list[str]:
    """Return the command-line ``arguments`` without ``--workers N``, for the processes torchrun starts."""
    cleaned: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
            continue
        if argument == "--workers":
            skip = True
            continue
        if argument.startswith("--workers="):
            continue
        cleaned.append(argument)
    return cleaned


def _launch_workers(workers: int) -> int:
    """Re-run this command under torchrun with ``workers`` local processes and return its exit code.

    torchrun's agent runs in this process, so that the exit code of the first process that
    failed (2 for bad input) becomes this command's exit code instead of torchrun's generic 1.
    When one process fails, the agent stops the others. ``--standalone`` keeps the rendezvous
    on localhost.

    NOTE: the arguments come from ``sys.argv``, so ``--workers`` works from the console script
    and ``python -m robusteval``, not from an in-process call of the typer app.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    launch = ["--standalone", f"--nproc-per-node={workers}", "-m", "robusteval", *worker_arguments(sys.argv[1:])]
    try:
        run(parse_args(launch))
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        # A negative exit code is the signal that ended the process.
        code = failure.exitcode if failure.exitcode > 0 else 1
        error_console.print(f"[bold red]error:[/] worker {rank} of {workers} exited with code {failure.exitcode}; "
                            "its message is above.", highlight=False)
        return code
    return 0
