"""Markdown summary of a gate outcome: status, table rows and escaping."""

from __future__ import annotations

from robusteval.gate import GateCheck, GateOutcome
from robusteval.reports.markdown import escape_markdown, render_markdown
from robusteval.results import Flag

CHECKS = (
    GateCheck("clean_accuracy", "clean accuracy", "min", 0.9, 0.95, True),
    GateCheck("mean_tangent_sensitivity", "mean tangent sensitivity", "max", 10.0, 12.0, False),
)


def test_table_has_one_row_per_check() -> None:
    text = render_markdown(GateOutcome("m.pt", CHECKS, (), True))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]

    assert rows[1:] == [
        "| clean accuracy | 0.95 | &ge; 0.9 | pass |",
        "| mean tangent sensitivity | 12 | &le; 10 | **FAIL** |",
    ]
    assert "**Failed**" in text


def test_status_lines() -> None:
    flag = Flag("zero_gradients", "error", "zero gradients", "attacks")

    assert "**Passed**" in render_markdown(GateOutcome("m.pt", CHECKS[:1], (), True))
    assert "**Unreliable**" in render_markdown(GateOutcome("m.pt", CHECKS[:1], (flag,), True))
    reported = render_markdown(GateOutcome("m.pt", CHECKS[:1], (flag,), False))
    assert "**Passed**" in reported
    assert "are reported only (fail_on_unreliable = false)" in reported
    assert "- zero\\_gradients (attacks): zero gradients" in reported


def test_markup_is_escaped() -> None:
    text = render_markdown(GateOutcome("<script>alert(1)</script>|*x*.pt", CHECKS, (), True))

    assert "<script>" not in text
    assert "## robusteval gate: &lt;script&gt;alert(1)&lt;/script&gt;\\|\\*x\\*.pt" in text


def test_escape_collapses_newlines() -> None:
    assert escape_markdown("a\n# b") == "a # b"
    assert escape_markdown("`code` [link](x)") == "\\`code\\` \\[link\\](x)"
