"""Progress reporting from library code without printing.

Library functions take an optional :class:`ProgressReporter`; the CLI passes one backed by
rich progress bars, and library callers may pass their own or nothing.
"""

from __future__ import annotations

from typing import Protocol


class ProgressReporter(Protocol):
    """Receives progress of long-running stages, each named by a short label."""

    def start(self, stage: str, total: int) -> None:
        """Announce that ``stage`` begins and will take ``total`` steps."""

    def advance(self, stage: str, steps: int = 1) -> None:
        """Record that ``steps`` more steps of ``stage`` are done."""

    def finish(self, stage: str) -> None:
        """Record that ``stage`` is complete."""


class NullProgress:
    """A :class:`ProgressReporter` that discards everything."""

    def start(self, stage: str, total: int) -> None:
        return None

    def advance(self, stage: str, steps: int = 1) -> None:
        return None

    def finish(self, stage: str) -> None:
        return None
