"""The typer application and the error handling shared by every command."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console

from ..errors import RobustEvalError

EXIT_OK = 0
EXIT_THRESHOLD_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNRELIABLE = 3
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="robusteval",
    help="How robust is a trained PyTorch classifier, and why.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Output that is not a terminal (a file, a pipe, CI logs) would otherwise be cut to 80 columns.
_WIDTH_WHEN_NOT_A_TERMINAL = 120
console = Console()
if not console.is_terminal:
    console = Console(width=_WIDTH_WHEN_NOT_A_TERMINAL)
error_console = Console(stderr=True)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``message`` as an error and exit with ``code``."""
    error_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def at_least(minimum: float, unit: str = "") -> Callable[[float | None], float | None]:
    """Return an option callback that rejects values below ``minimum``, naming the value and its unit.

    Typer's own ``min=`` check prints neither the value given nor the unit.
    """
    suffix = f" {unit}" if unit else ""

    def check(value: float | None) -> float | None:
        if value is not None and value < minimum:
            raise typer.BadParameter(f"got {value:g}{suffix}, but it must be at least {minimum:g}{suffix}.")
        return value

    return check


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn robusteval's errors and bad values into a message and exit code 2, Ctrl-C into 130."""
    try:
        yield
    except (RobustEvalError, ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError) as error:
        fail(_escape(str(error)))
    except KeyboardInterrupt:
        error_console.print("[bold yellow]interrupted:[/] partial results are kept; re-run with --resume to continue.")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def configure_logging(verbose: int) -> None:
    """Send robusteval's log records to standard error at a level set by ``-v`` flags."""
    if verbose <= 0:
        level = logging.WARNING
    elif verbose == 1:
        level = logging.INFO
    else:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("robusteval")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    # Attack libraries may configure the root logger; without this every record prints twice.
    logger.propagate = False


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """Print a library warning as one line, without the source line Python adds by default."""
    error_console.print(f"[yellow]warning:[/] {_escape(str(message))}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``robusteval`` console script."""
    warnings.showwarning = _show_warning
    command: Callable[..., object] = app
    command(args=argv, prog_name="robusteval")
