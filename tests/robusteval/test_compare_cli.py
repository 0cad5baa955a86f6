"""``robusteval compare`` and ``robusteval report`` on results files, and compare against separate runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from robusteval.architectures import build_architecture
from robusteval.cli import app
from robusteval.cli._app import EXIT_BAD_INPUT, EXIT_OK
from robusteval.compare import compare_results, median_min_adversarial_distance
from robusteval.results import (
    DataInfo,
    EnvironmentInfo,
    ModelInfo,
    NormPair,
    Results,
    SampleRecord,
    ThreatModelResult,
    load_results,
    save_results,
)


def make_results(name: str, shift: float, *, first_index: int = 0) -> Results:
    records = []
    for position in range(6):
        distance = 0.02 * (position + 1) + shift
        records.append(SampleRecord(
            index=first_index + position, label=0, prediction=0, correct=True, tangent_sensitivity=[1.0, 2.0],
            region_distance=NormPair(l2=0.1, linf=0.01), linear_decision_distance=NormPair(l2=0.2, linf=0.02),
            certified_radius=NormPair(l2=0.1, linf=0.01), min_adversarial_distance=NormPair(linf=distance),
            robust={"linf": [distance > 0.05]},
        ))
    return Results(
        model=ModelInfo(path=f"{name}.pt", sha256="ab" * 32, format="torchscript", parameter_count=10,
                        piecewise_linear=True, name=name),
        data=DataInfo(name="digits", sha256="cd" * 32, num_samples=6, input_shape=[64], input_bounds=[0.0, 1.0]),
        environment=EnvironmentInfo(robusteval="0.1.0", torch="2", foolbox=None, torchattacks=None, python="3.11",
                                    device="cpu", seed=0),
        clean_accuracy=1.0,
        threat_models=[ThreatModelResult(norm="linf", epsilons=[0.05],
                                         robust_accuracy=[sum(r.robust["linf"][0] for r in records) / 6])],
        samples=records,
    )


def test_compare_results_files(tmp_path: Path) -> None:
    first, second = tmp_path / "plain.json", tmp_path / "adv.json"
    save_results(make_results("plain", 0.0), first)
    save_results(make_results("adv", 0.03), second)
    out = tmp_path / "cmp"

    outcome = CliRunner().invoke(app, ["compare", str(first), str(second), "--out", str(out), "--bootstrap", "200"])

    assert outcome.exit_code == EXIT_OK, outcome.output
    assert (out / "comparison.html").is_file()
    assert "Models side by side" in outcome.output
    # plain: distances 0.02..0.12, robust at 0.05 for 4 of 6; adv: 0.05..0.15, 5 of 6 (0.05 is not > 0.05).
    assert "66.7%" in outcome.output
    assert "83.3%" in outcome.output


def test_compare_mismatched_samples_exit_2(tmp_path: Path) -> None:
    first, second = tmp_path / "plain.json", tmp_path / "adv.json"
    save_results(make_results("plain", 0.0), first)
    save_results(make_results("adv", 0.03, first_index=3), second)

    outcome = CliRunner().invoke(app, ["compare", str(first), str(second), "--out", str(tmp_path / "cmp")])

    assert outcome.exit_code == EXIT_BAD_INPUT, outcome.output
    assert "to be evaluated on the same samples" in " ".join(outcome.output.split())
    assert not (tmp_path / "cmp" / "comparison.html").exists()


def test_compare_needs_two_models(tmp_path: Path) -> None:
    only = tmp_path / "plain.json"
    save_results(make_results("plain", 0.0), only)

    outcome = CliRunner().invoke(app, ["compare", str(only)])

    assert outcome.exit_code == EXIT_BAD_INPUT
    assert "at least two models" in outcome.output


def test_report_rerenders_results(tmp_path: Path) -> None:
    source = tmp_path / "results.json"
    save_results(make_results("<i>plain</i>", 0.0), source)
    html = tmp_path / "report.html"

    outcome = CliRunner().invoke(app, ["report", str(source), "--html", str(html)])

    assert outcome.exit_code == EXIT_OK, outcome.output
    text = html.read_text(encoding="utf-8")
    assert "&lt;i&gt;plain&lt;/i&gt;" in text
    assert "<i>" not in text


def test_report_rejects_invalid_file(tmp_path: Path) -> None:
    source = tmp_path / "results.json"
    source.write_text('{"schema": "something/else"}', encoding="utf-8")

    outcome = CliRunner().invoke(app, ["report", str(source)])

    assert outcome.exit_code == EXIT_BAD_INPUT
    assert "robusteval/results/v1" in outcome.output


@pytest.mark.slow
def test_compare_equals_separate_runs(tmp_path: Path) -> None:
    from robusteval.pipeline import EvaluationConfig, evaluate

    paths = []
    for seed, name in ((0, "first"), (1, "second")):
        torch.manual_seed(seed)
        path = tmp_path / f"{name}.pt"
        torch.save(build_architecture("mlp:64-12-10").state_dict(), path)
        paths.append(path)
    options = ["--data", "digits", "--arch", "mlp:64-12-10", "--samples", "6", "--seed", "4", "--attacks", "pgd",
               "--eps", "linf=0.1", "--no-parameter-space"]
    out = tmp_path / "cmp"

    outcome = CliRunner().invoke(app, ["compare", *map(str, paths), "--out", str(out), *options, "--bootstrap", "200"])

    assert outcome.exit_code == EXIT_OK, outcome.output
    assert (out / "comparison.html").is_file()
    config = EvaluationConfig(data="digits", arch="mlp:64-12-10", samples=6, seed=4, attacks=("pgd",),
                              eps=("linf=0.1",), parameter_space=False)
    separate = [evaluate(dataclasses.replace(config, model=str(path))) for path in paths]
    from_cli = [load_results(directory / "results.json") for directory in sorted(out.iterdir()) if directory.is_dir()]
    comparison = compare_results(from_cli, seed=4, resamples=200)
    for row, alone in zip(comparison.rows, separate):
        assert row.clean_accuracy == alone.clean_accuracy
        assert row.robust_accuracy["linf"] == alone.threat_models[0].robust_accuracy
        assert row.median_min_adversarial_distance["linf"] == median_min_adversarial_distance(alone, "linf")
    assert [s.index for s in from_cli[0].samples] == [s.index for s in separate[1].samples]


def test_compare_table_fits_80_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robusteval.cli import _app

    # Console.width has a setter but no way back to "detect", so patch the stored value.
    monkeypatch.setattr(_app.console, "_width", 80)
    names = ("a-rather-long-model-name-trained-plainly", "a-rather-long-model-name-trained-adversarially")
    paths = []
    for name, shift in zip(names, (0.0, 0.03)):
        path = tmp_path / f"{name}.json"
        save_results(make_results(name, shift), path)
        paths.append(str(path))

    outcome = CliRunner().invoke(app, ["compare", *paths, "--out", str(tmp_path / "cmp"), "--bootstrap", "200",
                                       "--no-html"])

    assert outcome.exit_code == EXIT_OK, outcome.output
    assert "…" not in outcome.output
    assert max(len(line) for line in outcome.output.splitlines()) <= 80
    assert f"M1: {names[0]}" in outcome.output
    assert f"M2: {names[1]}" in outcome.output
    assert "robust acc. linf 0.05" in outcome.output


def test_compare_run_directories(tmp_path: Path) -> None:
    first, second = tmp_path / "plain", tmp_path / "adv"
    save_results(make_results("plain", 0.0), first / "results.json")
    save_results(make_results("adv", 0.03), second / "results.json")

    outcome = CliRunner().invoke(app, ["compare", str(first), str(second), "--out", str(tmp_path / "cmp"),
                                       "--bootstrap", "200"])

    assert outcome.exit_code == EXIT_OK, outcome.output
    assert "66.7%" in outcome.output
    assert "83.3%" in outcome.output


def test_compare_saved_runs_notes_ignored_options(tmp_path: Path) -> None:
    first, second = tmp_path / "plain.json", tmp_path / "adv.json"
    save_results(make_results("plain", 0.0), first)
    save_results(make_results("adv", 0.03), second)

    outcome = CliRunner().invoke(app, ["compare", str(first), str(second), "--data", "digits", "--samples", "3",
                                       "--out", str(tmp_path / "cmp"), "--bootstrap", "200"])

    assert outcome.exit_code == EXIT_OK, outcome.output
    assert "apply only to model files" in " ".join(outcome.stderr.split())
