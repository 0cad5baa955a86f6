"""``robusteval gate`` exit codes 0, 1, 2 and 3, and its JUnit and Markdown files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robusteval.cli import app
from robusteval.cli._app import EXIT_BAD_INPUT, EXIT_OK, EXIT_THRESHOLD_FAILED, EXIT_UNRELIABLE
from robusteval.results import (
    DataInfo,
    EnvironmentInfo,
    Flag,
    ModelInfo,
    NormPair,
    Results,
    SampleRecord,
    ThreatModelResult,
    save_results,
)

POLICY = """
[gate]
min_clean_accuracy = {clean}
{extra}

[[gate.robust_accuracy]]
norm = "linf"
epsilon = 0.05
min = 0.5
"""


def make_results(*, flags: list[Flag] | None = None, robust: float = 0.6) -> Results:
    records = [
        SampleRecord(
            index=index, label=0, prediction=0, correct=True, tangent_sensitivity=[1.0, 2.0],
            region_distance=NormPair(), linear_decision_distance=NormPair(), certified_radius=NormPair(),
            min_adversarial_distance=NormPair(linf=0.1),
        )
        for index in range(4)
    ]
    return Results(
        model=ModelInfo(path="model.pt", sha256="ab" * 32, format="torchscript", parameter_count=10,
                        piecewise_linear=True, name="<b>model</b>"),
        data=DataInfo(name="digits", sha256="cd" * 32, num_samples=4, input_shape=[64], input_bounds=[0.0, 1.0]),
        environment=EnvironmentInfo(robusteval="0.1.0", torch="2", foolbox=None, torchattacks=None, python="3.11",
                                    device="cpu", seed=0),
        clean_accuracy=0.9,
        threat_models=[ThreatModelResult(norm="linf", epsilons=[0.05], robust_accuracy=[robust])],
        samples=records,
        flags=flags or [],
    )


@pytest.fixture()
def results_file(tmp_path: Path) -> Path:
    path = tmp_path / "results.json"
    save_results(make_results(), path)
    return path


def run_gate(tmp_path: Path, results: Path, policy_text: str, *extra: str) -> tuple[int, str]:
    policy = tmp_path / "robusteval.toml"
    policy.write_text(policy_text, encoding="utf-8")
    outcome = CliRunner().invoke(app, ["gate", str(results), "--policy", str(policy), *extra])
    return outcome.exit_code, outcome.output


def test_gate_exit_0_passed(tmp_path: Path, results_file: Path) -> None:
    code, output = run_gate(tmp_path, results_file, POLICY.format(clean=0.85, extra=""))

    assert code == EXIT_OK, output
    assert "gate passed" in output


def test_gate_exit_1_threshold_failed(tmp_path: Path, results_file: Path) -> None:
    code, output = run_gate(tmp_path, results_file, POLICY.format(clean=0.95, extra=""))

    assert code == EXIT_THRESHOLD_FAILED, output
    assert "failed: clean accuracy: 0.9 (required >= 0.95) failed" in output


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        ("[gate]\nmin_clean_accuracy = 0.5\nmin_robust = 1\n", "unknown key(s) gate.min_robust"),
        ("[gate]\nmin_clean_accuracy = '0.5'\n", "expected a number"),
        ("[[gate.robust_accuracy]]\nnorm = 'linf'\nepsilon = 0.3\nmin = 0.1\n", "linf epsilon 0.3"),
    ],
)
def test_gate_exit_2_bad_policy(tmp_path: Path, results_file: Path, policy: str, fragment: str) -> None:
    code, output = run_gate(tmp_path, results_file, policy)

    assert code == EXIT_BAD_INPUT, output
    assert fragment in " ".join(output.split())


def test_gate_exit_2_bad_results(tmp_path: Path) -> None:
    broken = tmp_path / "results.json"
    broken.write_text("<html>not json</html>", encoding="utf-8")
    code, output = run_gate(tmp_path, broken, POLICY.format(clean=0.5, extra=""))

    assert code == EXIT_BAD_INPUT, output
    assert "not JSON" in output


def test_gate_exit_2_model_without_data(tmp_path: Path) -> None:
    code, output = run_gate(tmp_path, tmp_path / "model.pt", POLICY.format(clean=0.5, extra=""))

    assert code == EXIT_BAD_INPUT, output
    assert "Expected --data" in " ".join(output.split())


def test_gate_exit_3_unreliable(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    save_results(make_results(flags=[Flag("zero_gradients", "error", "zero input gradients", "attacks")]), path)
    code, output = run_gate(tmp_path, path, POLICY.format(clean=0.5, extra=""))
    lenient_code, _ = run_gate(tmp_path, path, POLICY.format(clean=0.5, extra="fail_on_unreliable = false"))

    assert code == EXIT_UNRELIABLE, output
    assert "zero_gradients" in output
    assert lenient_code == EXIT_OK


def test_gate_writes_junit_and_markdown(tmp_path: Path, results_file: Path) -> None:
    junit = tmp_path / "reports" / "gate.xml"
    markdown = tmp_path / "reports" / "gate.md"
    code, output = run_gate(
        tmp_path, results_file, POLICY.format(clean=0.95, extra=""), "--junit", str(junit), "--markdown", str(markdown)
    )
    suite = ET.parse(junit).getroot().find("testsuite")

    assert code == EXIT_THRESHOLD_FAILED, output
    assert suite is not None
    assert [case.get("name") for case in suite.iter("testcase")] == [
        "clean_accuracy", "robust_accuracy[linf@0.05]", "reliable_evaluation",
    ]
    assert suite.get("failures") == "1"
    text = markdown.read_text(encoding="utf-8")
    assert "**Failed**" in text
    assert "&lt;b&gt;model&lt;/b&gt;" in text
    assert "<b>" not in text


def test_gate_regression_with_baseline(tmp_path: Path, results_file: Path) -> None:
    baseline = tmp_path / "baseline.json"
    save_results(make_results(robust=0.7), baseline)
    policy = POLICY.format(clean=0.5, extra="max_regression = 0.05")

    code, output = run_gate(tmp_path, results_file, policy, "--baseline", str(baseline))

    assert code == EXIT_THRESHOLD_FAILED, output
    assert "drop in robust accuracy at linf epsilon 0.05" in " ".join(output.split())


def test_merge_eps_adds_policy_epsilons() -> None:
    from robusteval.cli.gate import merge_eps_options
    from robusteval.gate import Policy, RobustAccuracyThreshold

    policy = Policy(robust_accuracy=(
        RobustAccuracyThreshold("linf", 0.05, 0.5), RobustAccuracyThreshold("l2", 0.5, 0.3),
        RobustAccuracyThreshold("linf", 0.1, 0.2),
    ))

    assert merge_eps_options(["inf=0.1,0.2"], policy) == ("linf=0.05,0.1,0.2", "l2=0.5")
    assert merge_eps_options([], Policy()) == ()
    with pytest.raises(ValueError, match="Expected --eps as NORM=EPS"):
        merge_eps_options(["linf"], policy)
    with pytest.raises(ValueError, match="Expected numbers after '='"):
        merge_eps_options(["linf=small"], policy)


def test_merge_eps_adds_distance_norm() -> None:
    from robusteval.cli.gate import merge_eps_options
    from robusteval.gate import Policy, RobustAccuracyThreshold

    policy = Policy(
        robust_accuracy=(RobustAccuracyThreshold("linf", 0.05, 0.5),),
        min_median_adversarial_distance={"l2": 0.3, "linf": 0.01},
    )
    requested: list[str] = []

    def default_grid(norm: str) -> list[float]:
        requested.append(norm)
        return [0.5, 1.0]

    assert merge_eps_options([], policy, default_grid) == ("linf=0.05", "l2=0.5,1.0")
    assert requested == ["l2"]
    with pytest.raises(ValueError, match="Pass --eps l2=EPS"):
        merge_eps_options([], policy)
    distance_only = Policy(min_median_adversarial_distance={"l2": 0.3})
    assert merge_eps_options([], distance_only, default_grid) == ()


def test_default_grid_for_digits() -> None:
    from robusteval.cli.gate import default_grid_for

    grid = default_grid_for("digits")

    # Digits have 64 features in [0, 1]: the L2 grid starts at 0.1 and ends at the box
    # diameter sqrt(64) = 8, and the Linf grid ends at the box diameter 1.
    assert grid("l2")[0] == pytest.approx(0.1)
    assert grid("l2")[-1] == pytest.approx(8.0)
    assert grid("linf")[-1] == pytest.approx(1.0)


@pytest.mark.slow
def test_gate_model_attacks_every_policy_norm(tmp_path: Path) -> None:
    import torch

    from robusteval.architectures import build_architecture
    from robusteval.results import load_results

    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.save(build_architecture("mlp:64-12-10").state_dict(), model)
    policy = tmp_path / "pass.toml"
    policy.write_text(
        POLICY.format(clean=0.0, extra="[gate.min_median_adversarial_distance]\nl2 = 0.0"), encoding="utf-8"
    )
    out = tmp_path / "run"
    arguments = [
        "gate", str(model), "--data", "digits", "--arch", "mlp:64-12-10", "--samples", "4", "--attacks", "pgd",
        "--policy", str(policy), "--out", str(out), "--junit", str(tmp_path / "gate.xml"),
    ]

    first = CliRunner().invoke(app, arguments)

    assert first.exit_code in (EXIT_OK, EXIT_THRESHOLD_FAILED), first.output
    assert (tmp_path / "gate.xml").is_file()
    norms = {threat_model.norm: threat_model.epsilons for threat_model in load_results(out / "results.json").threat_models}
    assert norms["linf"] == [0.05]
    assert norms["l2"][-1] == pytest.approx(8.0)

    again = CliRunner().invoke(app, arguments)

    assert again.exit_code == EXIT_BAD_INPUT, again.output
    message = " ".join(again.output.split())
    assert "--force" in message
    assert "--resume" not in message

    forced = CliRunner().invoke(app, [*arguments, "--force"])

    assert forced.exit_code in (EXIT_OK, EXIT_THRESHOLD_FAILED), forced.output
