"""Renderers of a :class:`~robusteval.zoo.study.StudyResult`: rich tables and one HTML page.

Both take the result and return a renderable or a string; neither prints. The HTML page is
self-contained (inline CSS, no scripts, no external resources) and escapes every value.
"""

from __future__ import annotations

import html

from rich.console import Group
from rich.table import Table

from .study import ACROSS_EPOCH_METHODS, TARGETS, StudyResult


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(low: float | None, high: float | None) -> str:
    return "n/a" if low is None or high is None else f"[{low:.2f}, {high:.2f}]"


def _across_model_rows(result: StudyResult) -> list[list[str]]:
    rows = []
    for measure in result.measures:
        row = [measure]
        for target in TARGETS:
            record = next(
                item for item in result.across_models if item.measure == measure and item.target == target
            )
            row.append(f"{_number(record.value)} {_interval(record.low, record.high)}")
        rows.append(row)
    return rows


def _across_epoch_rows(result: StudyResult) -> list[list[str]]:
    rows = []
    for measure in result.measures:
        row = [measure]
        for target in TARGETS:
            for method in ACROSS_EPOCH_METHODS:
                summary = next(
                    item for item in result.across_epochs_summary
                    if item.measure == measure and item.target == target and item.method == method
                )
                row.append(f"{_number(summary.median, 2)} ({summary.positive}/{summary.members})")
        rows.append(row)
    return rows


def _model_rows(result: StudyResult) -> list[list[str]]:
    return [
        [
            record.member,
            str(record.epoch),
            _number(record.train_accuracy),
            _number(record.test_accuracy),
            _number(record.loss_gap, 4),
            _number(record.accuracy_gap, 4),
            _number(record.measures.get("tangent_sensitivity_train"), 2),
            _number(record.measures.get("layerwise_norm_sensitivity"), 2),
        ]
        for record in result.final_checkpoints()
    ]


_MODEL_HEADERS = ["member", "epoch", "train acc", "test acc", "loss gap", "acc gap", "TS train", "log prod max|W|"]


def _across_model_headers(result: StudyResult) -> list[str]:
    level = f"{result.confidence:.0%}"
    return ["measure", *(f"tau vs {target.replace('_', ' ')} [{level} interval]" for target in TARGETS)]


def _across_epoch_headers() -> list[str]:
    return ["measure", *(f"{method} vs {target.replace('_', ' ')}" for target in TARGETS for method in ACROSS_EPOCH_METHODS)]


def _caption(result: StudyResult) -> str:
    members = len(result.final_checkpoints())
    return (
        f"{members} models, {len(result.checkpoints)} checkpoints, {result.train_samples} train and "
        f"{result.test_samples} test samples, {result.resamples} bootstrap resamples, seed {result.seed}"
    )


def render_study_terminal(result: StudyResult) -> Group:
    """Build rich tables: final models, Kendall's tau across models, median coefficients across epochs."""
    models = Table(title="Final checkpoint of each member", caption=_caption(result))
    for header in _MODEL_HEADERS:
        models.add_column(header, justify="left" if header == "member" else "right", no_wrap=header == "member")
    for row in _model_rows(result):
        models.add_row(*row)

    across_models = Table(title="Kendall's tau between each measure and the gap, across models")
    for header in _across_model_headers(result):
        across_models.add_column(header, justify="left" if header == "measure" else "right", no_wrap=header == "measure")
    for row in _across_model_rows(result):
        across_models.add_row(*row)

    across_epochs = Table(
        title="Across epochs: median coefficient over members (members with a positive one / members)",
        caption="Per-member coefficients with bootstrap intervals are in study.json.",
    )
    for header in _across_epoch_headers():
        across_epochs.add_column(header, justify="left" if header == "measure" else "right", no_wrap=header == "measure")
    for row in _across_epoch_rows(result):
        across_epochs.add_row(*row)
    return Group(models, across_models, across_epochs)


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0 2rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f2f2f2; }
dt { font-weight: bold; }
"""


def render_study_html(result: StudyResult) -> str:
    """Return the study as one self-contained HTML page."""
    definitions = "".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(description)}</dd>"
        for name, description in {**result.measures, **result.targets}.items()
    )
    sections = [
        "<h2>Final checkpoint of each member</h2>",
        _html_table(_MODEL_HEADERS, _model_rows(result)),
        "<h2>Kendall's tau between each measure and the gap, across models</h2>",
        _html_table(_across_model_headers(result), _across_model_rows(result)),
        "<h2>Across epochs: median coefficient over members</h2>",
        "<p>In brackets: members with a positive coefficient / members with a defined one.</p>",
        _html_table(_across_epoch_headers(), _across_epoch_rows(result)),
        f"<h2>Definitions</h2><dl>{definitions}</dl>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<title>robusteval generalization study</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        "<h1>robusteval generalization study</h1>\n"
        f"<p>Zoo: <code>{html.escape(result.zoo)}</code>. {html.escape(_caption(result))}.</p>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
