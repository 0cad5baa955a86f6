"""JUnit XML of a gate outcome: one test case per threshold, for CI test-report viewers.

The layout follows the common JUnit schema that Jenkins, GitLab and GitHub test reporters read.
One ``<testsuite>`` contains one ``<testcase>`` per check, with a ``<failure>`` child on a
failed check. A last ``reliable_evaluation`` case fails if the evaluation raised flags of
severity ``"error"``, or is skipped when the policy does not fail on them.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from robusteval.gate import GateCheck, GateOutcome

SUITE_NAME = "robusteval.gate"


def render_junit(outcome: GateOutcome) -> str:
    """Return the JUnit XML document of ``outcome`` as text, with an XML declaration."""
    cases = [_check_case(check) for check in outcome.checks]
    cases.append(_reliability_case(outcome))
    failures = sum(case.find("failure") is not None for case in cases)
    skipped = sum(case.find("skipped") is not None for case in cases)

    suites = ET.Element("testsuites", name="robusteval gate", tests=str(len(cases)), failures=str(failures))
    suite = ET.SubElement(
        suites, "testsuite", name=SUITE_NAME, tests=str(len(cases)), failures=str(failures),
        errors="0", skipped=str(skipped),
    )
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="model", value=outcome.model)
    ET.SubElement(properties, "property", name="status", value=outcome.status)
    if outcome.baseline is not None:
        ET.SubElement(properties, "property", name="baseline", value=outcome.baseline)
    suite.extend(cases)

    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(outcome: GateOutcome, path: str | os.PathLike[str]) -> None:
    """Write :func:`render_junit` of ``outcome`` to ``path`` as UTF-8."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_junit(outcome), encoding="utf-8")


def describe_check(check: GateCheck) -> str:
    """Return one sentence with the measured value, the threshold and the result of ``check``."""
    relation = ">=" if check.bound == "min" else "<="
    verdict = "passed" if check.passed else "failed"
    return f"{check.description}: {check.value:.6g} (required {relation} {check.threshold:.6g}) {verdict}"


def _check_case(check: GateCheck) -> ET.Element:
    case = ET.Element("testcase", classname=SUITE_NAME, name=check.name)
    if not check.passed:
        failure = ET.SubElement(case, "failure", message=describe_check(check), type="threshold")
        failure.text = describe_check(check)
    return case


def _reliability_case(outcome: GateOutcome) -> ET.Element:
    case = ET.Element("testcase", classname=SUITE_NAME, name="reliable_evaluation")
    if not outcome.unreliable_flags:
        return case
    listing = "\n".join(f"{flag.code} ({flag.stage}): {flag.message}" for flag in outcome.unreliable_flags)
    summary = f"{len(outcome.unreliable_flags)} flag(s) of severity error make the evaluation unreliable"
    if outcome.fail_on_unreliable:
        failure = ET.SubElement(case, "failure", message=summary, type="unreliable")
        failure.text = listing
    else:
        ET.SubElement(case, "skipped", message=f"{summary}; the policy sets fail_on_unreliable = false")
    return case
