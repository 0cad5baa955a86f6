"""The HTML report in headless Chromium: no console errors, no network, escaped names in the DOM.

Needs Debian's chromium at /usr/bin/chromium (``.ci/install-browser.sh`` installs it) and Python
playwright, which drives that binary directly (no ``playwright install``). Without chromium the
tests skip, except on CI (``CI`` set), where they fail instead.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from robusteval.compare import compare_results
from robusteval.reports.html import write_comparison_html, write_html
from robusteval.results import DataInfo, EnvironmentInfo, Flag, ModelInfo, NormPair, Results, SampleRecord, ThreatModelResult

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
HOSTILE_PATH = "<script>alert(1)</script>.pt"
# Measured with this test's viewport and Debian chromium 156: a page with only a heading gives a
# 5.7 KB PNG, and a full report about 490 KB.
MIN_SCREENSHOT_BYTES = 50_000


def make_results(path: str, shift: float = 0.0) -> Results:
    records = []
    for i in range(10):
        correct = i % 4 != 0
        distance = 0.01 * (i + 1) + shift
        records.append(SampleRecord(
            index=i, label=0, prediction=0 if correct else 1, correct=correct,
            tangent_sensitivity=[1.0 + i, 2.0], region_distance=NormPair(l2=0.05 * (i + 1), linf=0.004 * (i + 1)),
            linear_decision_distance=NormPair(l2=0.1, linf=0.01), certified_radius=NormPair(l2=0.05, linf=0.004 * (i + 1)),
            min_adversarial_distance=NormPair(linf=distance if correct else None),
            robust={"linf": [correct and distance > eps for eps in (0.03, 0.06)]},
        ))
    accuracy = [sum(r.robust["linf"][k] for r in records) / 10 for k in range(2)]
    return Results(
        model=ModelInfo(path=path, sha256="ab" * 32, format="torchscript", parameter_count=10, piecewise_linear=True,
                        name=path),
        data=DataInfo(name="digits", sha256="cd" * 32, num_samples=10, input_shape=[64], input_bounds=[0.0, 1.0]),
        environment=EnvironmentInfo(robusteval="0.1.0", torch="2", foolbox=None, torchattacks=None, python="3.11",
                                    device="cpu", seed=0),
        clean_accuracy=sum(r.correct for r in records) / 10,
        threat_models=[ThreatModelResult(norm="linf", epsilons=[0.03, 0.06], robust_accuracy=accuracy,
                                         per_attack_robust_accuracy={"<b>pgd</b>": accuracy})],
        samples=records,
        flags=[Flag("zero_gradients", "error", "gradient <img src=x> zero", "attacks")],
        parameter_space=None,
        predictive=[
            {"score": "tangent_sensitivity", "target": "min_adversarial_distance_linf", "spearman": -0.5,
             "spearman_ci": [-0.8, -0.1], "kendall": -0.4, "kendall_ci": [-0.6, -0.1], "n": 10},
            {"score": "certified_radius_linf", "target": "min_adversarial_distance_linf", "spearman": 0.7, "n": 10},
        ],
    )


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found; run .ci/install-browser.sh to install Debian's chromium"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so the browser tests must run)")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def open_page(browser, path: Path):  # type: ignore[no-untyped-def]
    """Open ``path`` and return the page, its console errors and opened dialogs, and every requested URL."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (errors.append(f"dialog opened: {dialog.message}"), dialog.dismiss()))
    page.goto(path.as_uri(), wait_until="load")
    return page, errors, requests


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_renders_offline(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "report.html"
    results = make_results(HOSTILE_PATH)
    write_html(results, report)
    page, errors, requests = open_page(browser, report)

    screenshot = page.screenshot(full_page=True)
    headings = page.locator("h2").all_inner_texts()
    predictive_rows = page.locator("table.predictive tbody tr").count()
    page.close()

    assert errors == []
    assert requests == [report.as_uri()]
    assert len(screenshot) > MIN_SCREENSHOT_BYTES
    width, height = png_size(screenshot)
    assert width == 1200
    assert height > 2000
    assert headings == [
        "Summary", "Robust accuracy", "Scores against minimal adversarial distance",
        "Region distance and certified radius", "Parameter space", "Bounds", "Predictive validity", "Flags",
        "Reproducibility",
    ]
    assert predictive_rows == len(results.predictive)


def test_markup_is_text_in_dom(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "report.html"
    write_html(make_results(HOSTILE_PATH), report)
    page, errors, _ = open_page(browser, report)

    script_count = page.locator("script").count()
    image_count = page.locator("img").count()
    bold_count = page.locator("b").count()
    title_text = page.locator("h1").inner_text()
    rerun_text = page.locator("pre.rerun").inner_text()
    svg_legends = page.locator("svg text.legend").all_text_contents()
    page.close()

    assert errors == []
    assert script_count == 0
    assert image_count == 0
    assert bold_count == 0
    assert title_text == "robusteval report: " + HOSTILE_PATH
    assert HOSTILE_PATH in rerun_text
    assert "<b>pgd</b>" in svg_legends


def test_comparison_renders_offline(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "comparison.html"
    comparison = compare_results([make_results(HOSTILE_PATH), make_results("other.pt", 0.02)], seed=0, resamples=200)
    write_comparison_html(comparison, report)
    page, errors, requests = open_page(browser, report)

    rows = page.locator("table.side-by-side tbody tr").count()
    legends = page.locator("svg text.legend").all_text_contents()
    script_count = page.locator("script").count()
    page.close()

    assert errors == []
    assert requests == [report.as_uri()]
    assert rows == 2
    assert HOSTILE_PATH in legends
    assert script_count == 0
