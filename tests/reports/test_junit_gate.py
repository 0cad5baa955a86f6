"""JUnit XML of a gate outcome: one test case per threshold, failures and the reliability case."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from robusteval.gate import GateCheck, GateOutcome
from robusteval.reports.junit import render_junit, write_junit
from robusteval.results import Flag

CHECKS = (
    GateCheck("clean_accuracy", "clean accuracy", "min", 0.9, 0.95, True),
    GateCheck("robust_accuracy[linf@0.1]", "robust accuracy at linf epsilon 0.1", "min", 0.5, 0.25, False),
    GateCheck("mean_tangent_sensitivity", "mean tangent sensitivity", "max", 10.0, 12.0, False),
)
ERROR_FLAG = Flag("zero_gradients", "error", "gradients <&> vanished", "attacks")


def _suite(outcome: GateOutcome) -> ET.Element:
    root = ET.fromstring(render_junit(outcome).split("?>", 1)[1])
    suite = root.find("testsuite")
    assert suite is not None
    return suite


def test_one_case_per_threshold() -> None:
    suite = _suite(GateOutcome("m.pt", CHECKS, (), True))
    cases = list(suite.iter("testcase"))

    assert [case.get("name") for case in cases] == [check.name for check in CHECKS] + ["reliable_evaluation"]
    assert suite.get("tests") == "4"
    assert suite.get("failures") == "2"
    assert [case.find("failure") is not None for case in cases] == [False, True, True, False]


def test_failure_message_names_values() -> None:
    suite = _suite(GateOutcome("m.pt", CHECKS, (), True))
    failure = list(suite.iter("testcase"))[1].find("failure")

    assert failure is not None
    assert failure.get("message") == "robust accuracy at linf epsilon 0.1: 0.25 (required >= 0.5) failed"


def test_unreliable_case_fails_or_skips() -> None:
    failing = _suite(GateOutcome("m.pt", CHECKS[:1], (ERROR_FLAG,), True))
    skipped = _suite(GateOutcome("m.pt", CHECKS[:1], (ERROR_FLAG,), False))
    failing_case = list(failing.iter("testcase"))[-1]
    skipped_case = list(skipped.iter("testcase"))[-1]

    assert failing_case.find("failure") is not None
    assert "gradients <&> vanished" in (failing_case.find("failure").text or "")  # type: ignore[union-attr]
    assert failing.get("failures") == "1"
    assert skipped_case.find("skipped") is not None
    assert skipped.get("skipped") == "1"
    assert skipped.get("failures") == "0"


def test_markup_in_model_name_stays_text(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    write_junit(GateOutcome("<script>alert(1)</script>.pt", CHECKS, (), True), path)
    text = path.read_text(encoding="utf-8")
    suite = ET.parse(path).getroot().find("testsuite")

    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert suite is not None
    properties = {item.get("name"): item.get("value") for item in suite.iter("property")}
    assert properties["model"] == "<script>alert(1)</script>.pt"
    assert properties["status"] == "failed"
