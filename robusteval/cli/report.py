"""``robusteval report``: re-render the reports of a results file without recomputing anything."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app, configure_logging, console, handle_errors


@app.command()
def report(
    results_file: Path = typer.Argument(..., help="results.json written by `robusteval run`."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write the self-contained HTML report to this path."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Log details to standard error (-vv for debug)."),
) -> None:
    """Print the terminal report of a results file and optionally write its HTML report."""
    configure_logging(verbose)
    with handle_errors():
        from ..reports.html import write_html
        from ..reports.terminal import render
        from ..results import load_results

        results = load_results(results_file)
        render(results, console)
        if html is not None:
            write_html(results, html)
            console.print(f"HTML report: [bold]{_markup_escape(str(html))}[/]", highlight=False)


def _markup_escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
