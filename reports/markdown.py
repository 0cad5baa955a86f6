"""Markdown summary of a gate outcome, for CI job summaries and pull-request comments.

Text that comes from model files or flags is escaped, so that a model named with HTML or
Markdown syntax shows as plain text on renderers that allow inline HTML (GitHub among them).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from robusteval.gate import GateOutcome

_STATUS_LINES = {
    "passed": "**Passed**: every threshold was met.",
    "failed": "**Failed**: at least one threshold was not met.",
    "unreliable": "**Unreliable**: the evaluation raised error flags, so its numbers cannot be trusted.",
}
# Inline syntax only: escaped text never starts a line, so block markers such as # and - stay.
_MARKDOWN_SPECIAL = "\\`*_[]|~"


def escape_markdown(text: str) -> str:
    """Return ``text`` with HTML special characters as entities and Markdown syntax backslash-escaped."""
    escaped = html.escape(text, quote=True)
    escaped = "".join(f"\\{char}" if char in _MARKDOWN_SPECIAL else char for char in escaped)
    return " ".join(escaped.split())


def render_markdown(outcome: GateOutcome) -> str:
    """Return a Markdown summary: status, a table of every check, and the unreliable-evaluation flags."""
    lines = [f"## robusteval gate: {escape_markdown(outcome.model)}", "", _STATUS_LINES[outcome.status], ""]
    if outcome.baseline is not None:
        lines += [f"Baseline: {escape_markdown(outcome.baseline)}", ""]

    if outcome.checks:
        lines += ["| check | value | threshold | result |", "|---|---:|---:|---|"]
        for check in outcome.checks:
            relation = "&ge;" if check.bound == "min" else "&le;"
            result = "pass" if check.passed else "**FAIL**"
            lines.append(
                f"| {escape_markdown(check.description)} | {check.value:.4g} | {relation} {check.threshold:.4g} | {result} |"
            )
        lines.append("")
    else:
        lines += ["The policy sets no thresholds.", ""]

    if outcome.unreliable_flags:
        consequence = "fail the gate" if outcome.fail_on_unreliable else "are reported only (fail_on_unreliable = false)"
        lines += [f"Flags of severity error ({consequence}):", ""]
        lines += [
            f"- {escape_markdown(flag.code)} ({escape_markdown(flag.stage)}): {escape_markdown(flag.message)}"
            for flag in outcome.unreliable_flags
        ]
        lines.append("")
    return "\n".join(lines)


def write_markdown(outcome: GateOutcome, path: str | os.PathLike[str]) -> None:
    """Write :func:`render_markdown` of ``outcome`` to ``path`` as UTF-8."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_markdown(outcome), encoding="utf-8")
