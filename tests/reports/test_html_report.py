"""HTML report: escaping, offline self-containment, absent sections and table contents."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from robusteval.compare import compare_results
from robusteval.reports.html import render_comparison_html, render_html, write_html
from robusteval.results import (
    DataInfo,
    EnvironmentInfo,
    Flag,
    ModelInfo,
    NormPair,
    Results,
    SampleRecord,
    ThreatModelResult,
)

HOSTILE_PATH = "<script>alert(1)</script>.pt"
HOSTILE_ATTACK = "<img src=x onerror=alert(2)>"
EPSILONS = {"linf": [0.02, 0.05, 0.1], "l2": [0.5, 1.0]}


def make_results(path: str = "model.pt", *, samples: int = 12, shift: float = 0.0, attack: str = "pgd",
                 flags: list[Flag] | None = None, name: str | None = None, **overrides: object) -> Results:
    """Build consistent synthetic results: robust flags follow the minimal adversarial distances."""
    records = []
    for i in range(samples):
        correct = i % 5 != 0
        fooled = i % 4 != 3
        distance = {"linf": 0.015 * (i + 1) + shift if fooled else None, "l2": 0.2 * (i + 1) + shift if fooled else None}
        robust = {
            norm: [correct and (distance[norm] is None or distance[norm] > eps) for eps in grid]
            for norm, grid in EPSILONS.items()
        }
        records.append(SampleRecord(
            index=100 + i, label=i % 10, prediction=i % 10 if correct else (i + 1) % 10, correct=correct,
            tangent_sensitivity=[1.0 + 0.1 * i + k for k in range(10)],
            region_distance=NormPair(l2=0.05 * (i + 1), linf=0.005 * (i + 1)),
            linear_decision_distance=NormPair(l2=0.1 * (i + 1), linf=0.01 * (i + 1)),
            certified_radius=NormPair(l2=0.05 * (i + 1), linf=0.005 * (i + 1)),
            min_adversarial_distance=NormPair(
                l2=distance["l2"] if correct else None, linf=distance["linf"] if correct else None
            ),
            logit_margin=0.3 * i, robust=robust,
        ))
    threat_models = []
    for norm, grid in EPSILONS.items():
        accuracy = [sum(r.robust[norm][k] for r in records) / samples for k in range(len(grid))]
        threat_models.append(ThreatModelResult(
            norm=norm, epsilons=grid, robust_accuracy=accuracy, attacks=[attack],
            per_attack_robust_accuracy={attack: accuracy},
        ))
    fields: dict[str, object] = {
        "parameter_space": {
            "weight_noise": [{"mode": "relative", "scales": [0.0, 0.1, 0.2], "accuracy": [0.8, 0.6, 0.3],
                              "accuracy_std": [0.0, 0.05, 0.05], "draws": 8, "sharpness_sigma": 0.12}],
            "adversarial_weights": {"scales": [0.0, 0.05], "accuracy": [0.8, 0.2], "steps": 10},
            "tangent_shift": {"epsilon": 0.1, "share_crossed_unusual_key": 0.25},
        },
        "bounds": {"product_of_max_weights": {"value": 12.5, "held_on_all_samples": True, "tightness": 3.2,
                                               "applies": True, "assumptions": ["ReLU network"]}},
        "predictive": [
            {"score": "tangent_sensitivity", "target": "min_adversarial_distance_linf", "spearman": -0.4,
             "spearman_ci": [-0.7, -0.1], "kendall": -0.3, "kendall_ci": [-0.5, -0.05], "n": samples},
            {"score": "certified_radius_l2", "target": "min_adversarial_distance_l2", "spearman": 0.8,
             "spearman_ci": [0.6, 0.9], "kendall": 0.6, "kendall_ci": [0.4, 0.8], "n": samples, "auroc": 0.91},
            {"score": "logit_margin", "target": "robust_linf_0.05", "spearman": 0.5, "n": samples},
        ],
    }
    fields.update(overrides)
    return Results(
        model=ModelInfo(path=path, sha256="ab" * 32, format="torchscript", parameter_count=1000,
                        piecewise_linear=True, name=name),
        data=DataInfo(name="digits", sha256="cd" * 32, num_samples=samples, input_shape=[64], input_bounds=[0.0, 1.0]),
        environment=EnvironmentInfo(robusteval="0.1.0", torch="2.x", foolbox="3.3.4", torchattacks="3.5.1",
                                    python="3.11", device="cpu", seed=7),
        clean_accuracy=sum(r.correct for r in records) / samples,
        threat_models=threat_models, samples=records, flags=flags or [],
        **fields,  # type: ignore[arg-type]
    )


class _TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    collector = _TagCollector()
    collector.feed(page)
    return collector.tags


def _svg_blocks(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)


def test_markup_in_names_is_escaped() -> None:
    flag = Flag("zero_gradients", "error", "gradient <b>zero</b> at sample", "attacks", {"<key>": "<value>"})
    page = render_html(make_results(HOSTILE_PATH, attack=HOSTILE_ATTACK, flags=[flag]))

    assert "&lt;script&gt;alert(1)&lt;/script&gt;.pt" in page
    assert "<script" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<img" not in page
    assert "&lt;b&gt;zero&lt;/b&gt;" in page
    assert "<b>" not in page
    assert "&lt;key&gt;" in page
    assert not any(tag in ("script", "img", "b") for tag, _ in _tags(page))


def test_markup_in_svg_text_is_escaped() -> None:
    page = render_html(make_results(HOSTILE_PATH, attack=HOSTILE_ATTACK))
    legends = [block for block in _svg_blocks(page) if "robust accuracy" in block]

    assert legends, "expected the robust-accuracy charts to be inline SVG"
    assert all("&lt;img src=x onerror=alert(2)&gt;" in block for block in legends)
    assert not any("<img" in block for block in _svg_blocks(page))


def test_comparison_svg_escapes_model_names() -> None:
    first = make_results(HOSTILE_PATH, name=HOSTILE_PATH)
    second = make_results("other.pt", shift=0.01)
    page = render_comparison_html(compare_results([first, second], seed=0, resamples=200))
    overlaid = [block for block in _svg_blocks(page) if "Robust accuracy against epsilon" in block]

    assert len(overlaid) == 2
    assert all("&lt;script&gt;alert(1)&lt;/script&gt;.pt" in block for block in overlaid)
    assert "<script" not in page


def test_report_needs_no_network() -> None:
    page = render_html(make_results())
    tags = _tags(page)

    assert not any(tag in ("script", "link", "img", "iframe", "object", "embed") for tag, _ in tags)
    assert not any("src" in attributes or "href" in attributes for _, attributes in tags)
    assert "url(" not in page
    assert "@import" not in page
    # The only absolute URL is the SVG namespace, which browsers never fetch.
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}


def test_sections_present_with_data() -> None:
    page = render_html(make_results())
    headings = re.findall(r"<h2>(.*?)</h2>", page)

    assert headings == [
        "Summary", "Robust accuracy", "Scores against minimal adversarial distance",
        "Region distance and certified radius", "Parameter space", "Bounds", "Predictive validity", "Flags",
        "Reproducibility",
    ]
    assert "share crossed unusual key" in page  # unknown keys are shown with spaces for underscores
    assert "product_of_max_weights" in page
    assert "robusteval run model.pt --data digits --seed 7" in page


def test_absent_sections_are_explained() -> None:
    results = make_results(parameter_space=None, bounds=None, predictive=[])
    page = render_html(results)

    assert "The parameter-space stages were not run for this evaluation." in page
    assert "No bounds were computed for this evaluation." in page
    assert "No predictive-validity analysis is available." in page
    assert "No flags were raised." in page


def test_report_without_samples_or_attacks() -> None:
    results = make_results(samples=1)
    results.samples.clear()
    results.threat_models.clear()
    page = render_html(results)

    assert "No input-space attacks were run, so there is no robust accuracy." in page
    assert "No per-sample scores or attack results are available." in page


def test_predictive_table_rows() -> None:
    results = make_results()
    page = render_html(results)
    table = re.search(r'<table class="predictive">.*?</table>', page, flags=re.DOTALL)

    assert table is not None
    body = table.group(0).split("<tbody>")[1]
    assert body.count("<tr>") == len(results.predictive)
    assert "[-0.7, -0.1]" in body
    assert "0.91" in body


def test_summary_cards_numbers() -> None:
    results = make_results()
    page = render_html(results)

    # 9 of 12 samples are correct (i % 5 != 0), so the clean accuracy is 75.0%.
    assert '<div class="value">75.0%</div><div class="label">clean accuracy</div>' in page
    # At linf 0.02, the smallest epsilon: robust when correct and distance 0.015 (i + 1) > 0.02,
    # or never fooled.
    expected = sum(
        (i % 5 != 0) and (i % 4 == 3 or 0.015 * (i + 1) > 0.02) for i in range(12)
    ) / 12
    assert f'<div class="value">{100 * expected:.1f}%</div><div class="label">robust accuracy, linf epsilon 0.02</div>' in page


def test_write_html_creates_file(tmp_path: pytest.TempPathFactory) -> None:
    target = tmp_path / "nested" / "report.html"  # type: ignore[operator]
    write_html(make_results(), target)

    text = target.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert text.rstrip().endswith("</html>")


def test_chart_titles_fit_svg_width() -> None:
    from robusteval.reports.html import MAX_CHART_TITLE, chart_title

    page = render_html(make_results())
    titles = re.findall(r'<text class="chart-title"[^>]*>([^<]*)</text>', page)

    assert len(titles) >= 5
    assert max(len(title) for title in titles) <= MAX_CHART_TITLE
    assert "tangent sensitivity vs. min. adv. distance (linf)" in titles
    assert chart_title("a " * 40, limit=10) == "a a a a…"
    assert chart_title("short", limit=10) == "short"


def test_parameter_space_summaries_table() -> None:
    summary = {"count": 12, "finite": 11, "min": 0.125, "q25": 0.25, "median": 0.5, "q75": 0.75, "max": 2.5,
               "mean": 0.625}
    results = make_results(parameter_space={
        "sample_radii": {"adversarial_weight_first_order": summary, "first_order_spearman": 0.875},
    })

    page = render_html(results)
    section = page[page.index('<section id="parameter-space">'):page.index('<section id="bounds">')]
    text = " ".join(re.sub(r"<[^>]+>", " ", section).split())

    assert "q25" not in section
    assert "adversarial_weight_first_order" not in section
    assert "per-sample radii" in text
    assert "adversarial weight radius, first-order estimate 0.5 0.125 to 2.5 0.25 to 0.75 0.625 11 / 12" in text
    assert "Spearman correlation of the radius and its first-order estimate 0.875" in text


def test_comparison_tables_scroll() -> None:
    first, second = make_results("first.pt"), make_results("second.pt", shift=0.01)

    page = render_comparison_html(compare_results([first, second], seed=0, resamples=200))

    for table in ("side-by-side", "mcnemar", "bootstrap"):
        assert f'<div class="table-scroll"><table class="{table}">' in page
    assert ".table-scroll { max-width: 100%; overflow-x: auto; }" in page


def test_predictive_auroc_per_epsilon_is_readable() -> None:
    per_epsilon = [{"epsilon": 0.1, "auroc": 0.1834, "robust": 3, "not_robust": 9},
                   {"epsilon": 0.2, "auroc": None, "robust": 0, "not_robust": 12}]
    entry = {"score": "tangent_sensitivity", "target": "min_adversarial_distance_l2", "spearman": -0.2,
             "spearman_ci": [-0.5, 0.1], "kendall": -0.1, "kendall_ci": [-0.3, 0.1], "n": 12, "auroc": per_epsilon}
    page = render_html(make_results(predictive=[entry]))

    body = re.search(r'<table class="predictive">.*?</table>', page, flags=re.DOTALL).group(0)
    assert "0.1: 0.183" in body
    assert "0.2: " in body
    assert "{" not in body
    assert "&#39;epsilon&#39;" not in body


def test_predictive_rows_strongest_first_within_target() -> None:
    entries = [
        {"score": "weak", "target": "t", "spearman": 0.1, "n": 10},
        {"score": "strong", "target": "t", "spearman": -0.9, "n": 10},
    ]
    page = render_html(make_results(predictive=entries))

    body = re.search(r'<table class="predictive">.*?</table>', page, flags=re.DOTALL).group(0)
    assert body.index("strong") < body.index("weak")


def test_predictive_rows_without_samples_left_out() -> None:
    entries = [
        {"score": "logit_margin", "target": "min_adversarial_distance_l2", "spearman": 0.5, "n": 10},
        {"score": "logit_margin", "target": "adversarial_weight_radius", "spearman": None, "n": 0,
         "skipped": "only 0 samples have finite values of both (at least 5 needed)"},
    ]
    page = render_html(make_results(predictive=entries))

    body = re.search(r'<table class="predictive">.*?</table>', page, flags=re.DOTALL).group(0)
    assert "min_adversarial_distance_l2" in body
    assert "adversarial_weight_radius" not in body
