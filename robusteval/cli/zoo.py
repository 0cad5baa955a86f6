"""``robusteval zoo train`` and ``robusteval study``: build the model family, then study it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app, at_least, configure_logging, console, handle_errors
from ._progress import RichProgress

zoo_app = typer.Typer(help="The documented family of small digits classifiers.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("train")
def zoo_train(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for DIR/<member>/ and DIR/zoo.json; must be missing or empty."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialization, label noise, shuffling and PGD random starts."),
    quick: bool = typer.Option(False, "--quick", help="Train each member for 10 epochs instead of 30."),
    members: Optional[str] = typer.Option(None, "--members", help="Comma-separated member names (default: the whole family)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an earlier zoo in --out."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Log progress details to standard error (-vv for debug)."),
) -> None:
    """Train the family (plain, adversarial, weight decay, label noise, widths, depths, input-gradient) on digits."""
    from ..zoo.build import train_zoo
    from ..zoo.members import FAMILY

    configure_logging(verbose)
    with handle_errors():
        names = None if members is None else [name.strip() for name in members.split(",") if name.strip()]
        with RichProgress(console) as progress:
            index = train_zoo(out, seed=seed, members=names, quick=quick, progress=progress, overwrite=force)

    console.print(f"Trained {len(index.members)} of {len(FAMILY)} members into {out} (index: {out / 'zoo.json'}).", highlight=False)
    for entry in index.members:
        console.print(
            f"  {entry.name:<22} train accuracy {entry.train_accuracy:.3f}  test accuracy {entry.test_accuracy:.3f}",
            highlight=False,
        )


@app.command("study")
def study(
    zoo_dir: Path = typer.Argument(..., help="Zoo folder written by `robusteval zoo train`."),
    quick: bool = typer.Option(False, "--quick", help="Use 400 samples per split and 500 bootstrap resamples instead of all samples and 2000."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder for study.json and study.html (default: ZOO_DIR/study)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling."),
    resamples: Optional[int] = typer.Option(None, "--resamples", callback=at_least(1), help="Bootstrap resamples per coefficient (overrides the --quick default)."),
    html: bool = typer.Option(True, "--html/--no-html", help="Also write study.html."),
    force: bool = typer.Option(False, "--force", help="Overwrite study.json and study.html already in --out."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Log progress details to standard error (-vv for debug)."),
) -> None:
    """Correlate tangent sensitivity, its bounds and estimators with the generalization gap over a zoo."""
    from ..errors import OutputExistsError
    from ..zoo.artifacts import write_bytes_atomic
    from ..zoo.study import run_study, save_study
    from ..zoo.study_report import render_study_html, render_study_terminal

    configure_logging(verbose)
    folder = out if out is not None else zoo_dir / "study"
    with handle_errors():
        existing = [path for path in (folder / "study.json", folder / "study.html") if path.exists()]
        if existing and not force:
            raise OutputExistsError(
                f"Expected no earlier study in {folder}, but found {', '.join(str(path) for path in existing)}. "
                "Pass another --out folder, or --force to overwrite."
            )
        with RichProgress(console) as progress:
            result = run_study(zoo_dir, quick=quick, seed=seed, resamples=resamples, progress=progress)
        save_study(result, folder / "study.json", overwrite=True)
        if html:
            write_bytes_atomic(folder / "study.html", render_study_html(result).encode("utf-8"))

    console.print(render_study_terminal(result))
    written = "study.json and study.html" if html else "study.json"
    console.print(f"Wrote {written} to {folder}.", highlight=False)
