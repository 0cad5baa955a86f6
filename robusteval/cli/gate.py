"""``robusteval gate``: check one model (or its results file) against a TOML policy, for CI.

Exit codes: 0 every threshold passed, 1 a threshold failed, 2 bad input or usage, 3 the
evaluation is unreliable (flags of severity "error") and the policy fails on that.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import typer
from rich.table import Table
from rich.text import Text

from ._app import EXIT_OK, EXIT_THRESHOLD_FAILED, EXIT_UNRELIABLE, app, at_least, configure_logging, console, handle_errors
from .compare import is_results_file, results_or_evaluation

if TYPE_CHECKING:
    from .._types import Norm
    from ..gate import GateOutcome, Policy

_EXIT_CODES = {"passed": EXIT_OK, "failed": EXIT_THRESHOLD_FAILED, "unreliable": EXIT_UNRELIABLE}


def merge_eps_options(
    options: list[str], policy: Policy, default_grid: Callable[[Norm], Sequence[float]] | None = None
) -> tuple[str, ...]:
    """Return ``--eps`` options (``NORM=EPS,...``) that cover ``options`` and every norm the policy uses.

    Robust-accuracy thresholds add their epsilons. A norm that only a median-distance threshold
    uses gets the epsilons of ``default_grid(norm)``, so the evaluation attacks under that norm.
    Without any option and without robust-accuracy thresholds, returns ``()`` so that the
    evaluation takes its default grid, which covers both norms.

    Raises:
        ValueError: the policy needs a norm that no option covers and ``default_grid`` is ``None``.
    """
    from .._types import parse_norm
    from ..compare import find_epsilon

    grid: dict[Norm, list[float]] = {}
    for option in options:
        norm_text, separator, epsilon_text = option.partition("=")
        if not separator or not epsilon_text.strip():
            raise ValueError(f"Expected --eps as NORM=EPS,EPS,... (for example linf=0.05,0.1), but got {option!r}.")
        try:
            epsilons = [float(value) for value in epsilon_text.split(",") if value.strip()]
        except ValueError:
            raise ValueError(f"Expected numbers after '=' in --eps {option!r}, for example linf=0.05,0.1.") from None
        grid.setdefault(parse_norm(norm_text), []).extend(epsilons)
    for norm, epsilons in policy.epsilons().items():
        grid.setdefault(norm, []).extend(epsilons)
    if grid:
        for norm in policy.min_median_adversarial_distance:
            if norm in grid:
                continue
            if default_grid is None:
                raise ValueError(
                    f"Expected --eps to cover the norm {norm}, which the policy's "
                    f"min_median_adversarial_distance uses, but no epsilon for {norm} was given. "
                    f"Pass --eps {norm}=EPS,... ."
                )
            grid[norm] = list(default_grid(norm))

    options_out = []
    for norm, epsilons in grid.items():
        unique: list[float] = []
        for epsilon in sorted(epsilons):
            if find_epsilon(unique, epsilon) is None:
                unique.append(epsilon)
        options_out.append(f"{norm}={','.join(repr(epsilon) for epsilon in unique)}")
    return tuple(options_out)


def default_grid_for(data: str) -> Callable[[Norm], Sequence[float]]:
    """Return a function that gives the default epsilon grid of a norm for ``data``.

    The data is loaded on the first call only, because it is needed only when the policy uses a
    norm that neither ``--eps`` nor a robust-accuracy threshold covers.
    """
    from ..attacks import default_threat_models
    from ..data import load_data

    grids: dict[str, tuple[float, ...]] = {}

    def default_grid(norm: Norm) -> Sequence[float]:
        if not grids:
            dataset = load_data(data)
            for threat_model in default_threat_models(tuple(dataset.x.shape[1:]), dataset.bounds):
                grids[threat_model.norm] = tuple(threat_model.epsilons)
        return grids[norm]

    return default_grid


@app.command()
def gate(
    model: str = typer.Argument(..., help="Model file to evaluate, or a results.json (or run directory) to gate without re-running."),
    policy_file: Path = typer.Option(..., "--policy", "-p", help="TOML file with the thresholds in a [gate] table."),
    baseline_file: Optional[Path] = typer.Option(None, "--baseline", help="results.json of a baseline; the policy's max_regression bounds the drop in accuracy against it."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML file with one test case per threshold."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write a Markdown summary (for CI job summaries)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Data to evaluate MODEL on: 'digits', 'digits:image', or a .npz/.pt file. Required unless MODEL is a results.json."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Keep the evaluation's results.json in this directory."),
    seed: int = typer.Option(0, "--seed", help="Seed for torch, numpy and every attack."),
    samples: Optional[int] = typer.Option(None, "--samples", "-n", callback=at_least(1), help="Evaluate only the first N samples."),
    attacks: str = typer.Option("quick", "--attacks", help="Attack suite (quick, standard, thorough) or a comma-separated list of attacks."),
    eps: list[str] = typer.Option([], "--eps", help="Extra threat models as NORM=EPS,EPS,... . The policy's epsilons are always added, and a norm used only by its distance threshold gets the default grid."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture for state_dict files."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow loading a fully pickled model. Unpickling runs arbitrary code: use only for files you trust."),
    parameter_space: bool = typer.Option(False, "--parameter-space/--no-parameter-space", help="Also run the parameter-space attacks (no threshold uses them)."),
    force: bool = typer.Option(False, "--force", help="Overwrite results already in --out."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Log progress details to standard error (-vv for debug)."),
) -> None:
    """Check a model against a policy: exit 0 passed, 1 a threshold failed, 2 bad input, 3 unreliable."""
    configure_logging(verbose)
    with handle_errors():
        from ..gate import evaluate_gate, load_policy
        from ..results import load_results

        policy = load_policy(policy_file)
        baseline = load_results(baseline_file) if baseline_file is not None else None
        config = None
        if not is_results_file(model) and data is not None:
            from ..pipeline import EvaluationConfig

            attack_spec: str | tuple[str, ...] = attacks if "," not in attacks else tuple(a.strip() for a in attacks.split(",") if a.strip())
            config = EvaluationConfig(
                arch=arch, trust_pickle=trust_pickle, data=data, samples=samples, seed=seed,
                eps=merge_eps_options(eps, policy, default_grid_for(data)), attacks=attack_spec,
                parameter_space=parameter_space,
            )
        results = results_or_evaluation(model, config, out, force=force)
        outcome = evaluate_gate(results, policy, baseline)

        print_outcome(outcome)
        if junit is not None:
            from ..reports.junit import write_junit

            write_junit(outcome, junit)
        if markdown is not None:
            from ..reports.markdown import write_markdown

            write_markdown(outcome, markdown)
    raise typer.Exit(_EXIT_CODES[outcome.status])


def print_outcome(outcome: GateOutcome) -> None:
    """Print every check and the overall status of a gate."""
    from ..reports.junit import describe_check

    table = Table(title=Text(f"robusteval gate: {outcome.model}"))
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("threshold", justify="right")
    table.add_column("result")
    for check in outcome.checks:
        relation = ">=" if check.bound == "min" else "<="
        result = Text("pass", style="green") if check.passed else Text("FAIL", style="bold red")
        table.add_row(check.description, f"{check.value:.4g}", f"{relation} {check.threshold:.4g}", result)
    console.print(table)

    for flag in outcome.unreliable_flags:
        console.print(Text(f"error flag {flag.code} ({flag.stage}): {flag.message}", style="red"))
    for check in outcome.failed_checks:
        console.print(Text(f"failed: {describe_check(check)}", style="red"))
    messages = {
        "passed": Text("gate passed", style="bold green"),
        "failed": Text(f"gate failed: {len(outcome.failed_checks)} threshold(s) not met", style="bold red"),
        "unreliable": Text("gate failed: the evaluation is unreliable (flags of severity error)", style="bold red"),
    }
    console.print(messages[outcome.status])
