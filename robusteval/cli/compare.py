"""``robusteval compare``: evaluate several models on the same samples and compare them, paired."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table
from rich.text import Text

from ._app import app, at_least, configure_logging, console, error_console, fail, handle_errors

if TYPE_CHECKING:
    from ..compare import Comparison
    from ..pipeline import EvaluationConfig
    from ..results import Results


def results_path(target: str) -> Path | None:
    """Return the results file a MODEL argument names: a ``*.json`` file or a run directory's ``results.json``.

    ``None`` when the argument names a model instead.
    """
    if target.lower().endswith(".json"):
        return Path(target)
    inside = Path(target) / "results.json"
    return inside if inside.is_file() else None


def is_results_file(target: str) -> bool:
    """Return whether a MODEL argument names a results file or a run directory instead of a model."""
    return results_path(target) is not None


def results_or_evaluation(
    target: str, config: EvaluationConfig | None, out_dir: Path | None, *, force: bool = False
) -> Results:
    """Load ``target`` if it is a results file, else evaluate it as a model with ``config``.

    ``config`` is the configuration shared by all models, and ``target`` replaces its ``model``.
    It is ``None`` when no data was given, and then only results files are accepted.
    """
    from dataclasses import replace

    from ..errors import OutputExistsError
    from ..pipeline import evaluate
    from ..results import load_results

    path = results_path(target)
    if path is not None:
        return load_results(path)
    if config is None:
        raise ValueError(
            f"Expected --data to evaluate the model {target!r}, but none was given. "
            "Pass --data, or pass a results.json in place of the model."
        )
    command = "robusteval " + " ".join(shlex.quote(argument) for argument in sys.argv[1:])
    try:
        return evaluate(replace(config, model=target), out_dir=out_dir, force=force, command=command)
    except OutputExistsError:
        # The pipeline's message suggests --resume, which only `robusteval run` has.
        raise OutputExistsError(
            f"Output directory {str(out_dir)!r} already contains results or partial results. "
            "Pass --force to overwrite them, or choose another --out."
        ) from None


def run_directory_name(position: int, target: str) -> str:
    """Return a file-system-safe directory name for the ``position``-th compared model."""
    stem = Path(target).stem or "model"
    safe = "".join(char if char.isalnum() or char in "-_." else "_" for char in stem)[:60]
    return f"{position + 1:02d}-{safe}"


@app.command()
def compare(
    models: list[str] = typer.Argument(..., help="Two or more model files, or results.json files (or run directories) of runs on the same samples."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Data for the models: 'digits', 'digits:image', or a .npz/.pt file. Required unless every MODEL is a results.json."),
    out: Path = typer.Option(Path("robusteval-compare"), "--out", "-o", help="Output directory: one run directory per model and comparison.html."),
    seed: int = typer.Option(0, "--seed", help="Seed of every evaluation and of the bootstrap resampling."),
    samples: Optional[int] = typer.Option(None, "--samples", "-n", callback=at_least(1), help="Evaluate only the first N samples."),
    attacks: str = typer.Option("quick", "--attacks", help="Attack suite (quick, standard, thorough) or a comma-separated list of attacks."),
    eps: list[str] = typer.Option([], "--eps", help="Threat model as NORM=EPS,EPS,... (linf or l2), repeatable. Default: a grid for the data's scale."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture for state_dict files, the same for every model."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow loading fully pickled models. Unpickling runs arbitrary code: use only for files you trust."),
    parameter_space: bool = typer.Option(True, "--parameter-space/--no-parameter-space", help="Run the parameter-space attacks."),
    resamples: int = typer.Option(2000, "--bootstrap", callback=at_least(100), help="Bootstrap resamples for the intervals on the differences."),
    force: bool = typer.Option(False, "--force", help="Overwrite results already in the run directories under --out."),
    html: bool = typer.Option(True, "--html/--no-html", help="Write DIR/comparison.html."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Log progress details to standard error (-vv for debug)."),
) -> None:
    """Compare models on the same samples, seed and attacks: side-by-side table and paired tests."""
    configure_logging(verbose)
    with handle_errors():
        if len(models) < 2:
            fail(f"Expected at least two models to compare, but got {len(models)}.")
        from ..compare import compare_results
        from ..pipeline import EvaluationConfig

        config = None
        if data is not None:
            attack_spec: str | tuple[str, ...] = attacks if "," not in attacks else tuple(a.strip() for a in attacks.split(",") if a.strip())
            config = EvaluationConfig(
                arch=arch, trust_pickle=trust_pickle, data=data, samples=samples, seed=seed, eps=tuple(eps),
                attacks=attack_spec, parameter_space=parameter_space,
            )
        saved = [target for target in models if is_results_file(target)]
        if saved and config is not None:
            error_console.print(Text(
                f"note: {', '.join(saved)} {'is a saved run' if len(saved) == 1 else 'are saved runs'}, compared "
                "as saved; --data, --samples, --seed, --eps and --attacks apply only to model files."
            ))
        evaluated = [
            results_or_evaluation(target, config, out / run_directory_name(position, target), force=force)
            for position, target in enumerate(models)
        ]
        comparison = compare_results(evaluated, seed=seed, resamples=resamples)
        print_comparison(comparison)
        if html:
            from ..reports.html import write_comparison_html

            write_comparison_html(comparison, out / "comparison.html")
            console.print(Text.assemble("HTML report: ", (str(out / "comparison.html"), "bold")))


_STATISTIC_NAMES = {
    "robust_accuracy": "robust accuracy",
    "median_min_adversarial_distance": "median min. adv. distance",
}


def short_labels(labels: list[str]) -> dict[str, str]:
    """Return a short column label (``M1``, ``M2``, ...) for each model label, in order."""
    return {label: f"M{position + 1}" for position, label in enumerate(labels)}


def print_comparison(comparison: Comparison) -> None:
    """Print the side-by-side table, the paired tests and the notes of ``comparison``.

    Models are columns under short labels with a legend, and metrics are rows, so that the
    tables stay readable in an 80-column terminal for a few models.
    """
    from ..reports.html import format_number, format_percent

    short = short_labels(comparison.labels)
    for label, name in short.items():
        console.print(Text.assemble((f"{name}: ", "bold"), label), soft_wrap=True)

    table = Table(title="Models side by side")
    table.add_column("metric")
    for row in comparison.rows:
        table.add_column(short[row.label], justify="right")
    table.add_row("clean accuracy", *(format_percent(row.clean_accuracy) for row in comparison.rows))
    for norm, epsilons in comparison.epsilons.items():
        for position, epsilon in enumerate(epsilons):
            table.add_row(f"robust acc. {norm} {epsilon:g}",
                          *(format_percent(row.robust_accuracy[norm][position]) for row in comparison.rows))
        table.add_row(f"median min. adv. distance {norm}",
                      *(format_number(row.median_min_adversarial_distance[norm]) for row in comparison.rows))
    table.add_row("mean tangent sensitivity", *(format_number(row.mean_tangent_sensitivity) for row in comparison.rows))
    table.add_row("flags (error / warning)", *(f"{row.error_flags} / {row.warning_flags}" for row in comparison.rows))
    console.print(table)

    first = short[comparison.labels[0]]
    tests = Table(title=f"McNemar exact tests (paired with {first})")
    for column in ("model", "outcome", "epsilon", f"only {first}", "only model", "p-value"):
        tests.add_column(column, justify="left" if column in ("model", "outcome") else "right")
    for test in comparison.mcnemar:
        outcome = "clean" if test.norm is None else f"robust {test.norm}"
        tests.add_row(short.get(test.second, test.second), outcome, format_number(test.epsilon),
                      str(test.only_first), str(test.only_second), format_number(test.p_value, 3))
    console.print(tests)

    intervals = Table(title=f"Differences (model minus {first}), paired bootstrap")
    for column in ("model", "statistic", "norm", "epsilon", "difference", "interval"):
        intervals.add_column(column, justify="left" if column in ("model", "statistic", "norm") else "right")
    for item in comparison.bootstrap:
        interval = item.note if item.low is None else f"[{format_number(item.low)}, {format_number(item.high)}]"
        intervals.add_row(short.get(item.second, item.second), _STATISTIC_NAMES.get(item.statistic, item.statistic),
                          item.norm, format_number(item.epsilon), format_number(item.difference), Text(str(interval)))
    console.print(intervals)
    for note in comparison.notes:
        console.print(Text(f"note: {note}"))
