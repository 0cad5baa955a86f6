"""Rich progress bars behind the library's ``ProgressReporter`` protocol."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class RichProgress:
    """One progress bar per stage; a no-op when ``enabled`` is false (non-main ranks)."""

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True, disable=not enabled,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._progress.__exit__(kind, error, trace)

    def start(self, stage: str, total: int) -> None:
        if stage in self._tasks:
            self._progress.reset(self._tasks[stage], total=total)
        else:
            self._tasks[stage] = self._progress.add_task(stage, total=total)

    def advance(self, stage: str, steps: int = 1) -> None:
        if stage in self._tasks:
            self._progress.advance(self._tasks[stage], steps)

    def finish(self, stage: str) -> None:
        if stage in self._tasks:
            task = self._progress.tasks[self._tasks[stage]]
            self._progress.update(self._tasks[stage], completed=task.total)
