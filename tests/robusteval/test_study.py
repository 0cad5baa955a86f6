"""The generalization study: its numbers are reproducible from its own output files."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from typer.testing import CliRunner

from robusteval.cli import app
from robusteval.digits import digits_split
from robusteval.zoo.artifacts import load_zoo_model
from robusteval.zoo.build import train_zoo
from robusteval.zoo.correlation import bootstrap_correlation, bootstrap_seed
from robusteval.zoo.study import QUICK_SAMPLES, _measure_checkpoint, load_study, run_study, save_study
from robusteval.zoo.study_report import render_study_html, render_study_terminal

MEMBERS = ["plain", "label-noise-0.4", "width-16"]
RESAMPLES = 200
SCIPY = {"kendall": stats.kendalltau, "pearson": stats.pearsonr, "spearman": stats.spearmanr}


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    zoo = tmp_path_factory.mktemp("study") / "zoo"
    train_zoo(zoo, seed=0, members=MEMBERS, quick=True)
    result = run_study(zoo, quick=True, seed=5, resamples=RESAMPLES)
    save_study(result, zoo / "study.json")
    return zoo, zoo / "study.json"


@pytest.fixture(scope="module")
def payload(study_files: tuple[Path, Path]) -> dict:
    return json.loads(study_files[1].read_text(encoding="utf-8"))


def _pairs(records: list[dict], measure: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    kept = [record for record in records if record["measures"][measure] is not None]
    return (
        np.array([record["measures"][measure] for record in kept]),
        np.array([record[target] for record in kept]),
    )


def test_study_covers_every_checkpoint(payload: dict) -> None:
    assert payload["schema"] == "robusteval/study/v1"
    assert len(payload["checkpoints"]) == len(MEMBERS) * 10
    finals = [record["member"] for record in payload["checkpoints"] if record["final"]]
    assert finals == MEMBERS
    assert payload["train_samples"] == QUICK_SAMPLES
    assert payload["test_samples"] == QUICK_SAMPLES


def test_gaps_consistent_with_losses(payload: dict) -> None:
    for record in payload["checkpoints"]:
        assert record["loss_gap"] == pytest.approx(record["test_loss"] - record["train_loss"], abs=1e-12)
        assert record["accuracy_gap"] == pytest.approx(record["train_accuracy"] - record["test_accuracy"], abs=1e-12)


def test_kendall_across_models_from_json(payload: dict) -> None:
    finals = [record for record in payload["checkpoints"] if record["final"]]
    assert len(payload["across_models"]) == len(payload["measures"]) * 2
    for entry in payload["across_models"]:
        x, y = _pairs(finals, entry["measure"], entry["target"])
        assert entry["n"] == len(x)
        expected = stats.kendalltau(x, y)[0]
        assert entry["value"] == pytest.approx(expected, abs=1e-12), entry

        interval = bootstrap_correlation(
            x, y, "kendall", resamples=payload["resamples"], confidence=payload["confidence"],
            seed=bootstrap_seed(payload["seed"], entry["measure"], entry["target"], "kendall", "models"),
        )
        assert (entry["low"], entry["high"]) == (interval.low, interval.high)


def test_epoch_correlations_from_json(payload: dict) -> None:
    for entry in payload["across_epochs"]:
        own = [record for record in payload["checkpoints"] if record["member"] == entry["scope"]]
        x, y = _pairs(own, entry["measure"], entry["target"])
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            assert entry["value"] is None
            continue
        expected = SCIPY[entry["method"]](x, y)[0]
        assert entry["value"] == pytest.approx(expected, abs=1e-12), entry


def test_epoch_summary_from_json(payload: dict) -> None:
    for summary in payload["across_epochs_summary"]:
        values = [
            entry["value"]
            for entry in payload["across_epochs"]
            if (entry["measure"], entry["target"], entry["method"]) == (summary["measure"], summary["target"], summary["method"])
            and entry["value"] is not None
        ]
        assert summary["members"] == len(values)
        assert summary["median"] == pytest.approx(statistics.median(values), abs=1e-12)
        assert summary["positive"] == sum(value > 0 for value in values)


def test_losses_recomputed_from_checkpoint(study_files: tuple[Path, Path], payload: dict) -> None:
    zoo, _ = study_files
    record = payload["checkpoints"][3]
    model, _ = load_zoo_model(zoo / record["path"])
    x, y = (torch.from_numpy(array)[:QUICK_SAMPLES] for array in digits_split("train"))
    with torch.no_grad():
        logits = model(x).double()
    assert record["train_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert record["train_accuracy"] == pytest.approx(float((logits.argmax(dim=1) == y).double().mean()), abs=1e-12)


def test_tangent_sensitivity_against_torch_func(study_files: tuple[Path, Path], payload: dict) -> None:
    # Reference: TS_k(x) = ||d/dx grad_theta f_k(x)||_F from reverse-over-reverse autograd,
    # averaged at the predicted class k. The study's own measurement runs on the first 20
    # training samples here, because the reference costs seconds per hundred samples.
    zoo, _ = study_files
    record = next(item for item in payload["checkpoints"] if item["member"] == "width-16" and item["final"])
    model, _ = load_zoo_model(zoo / record["path"])
    x_train, y_train = (torch.from_numpy(array)[:20] for array in digits_split("train"))
    x_test, y_test = (torch.from_numpy(array)[:20] for array in digits_split("test"))
    measured = _measure_checkpoint(
        model, "width-16", record["path"], final=True, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test
    )

    model = model.double()
    parameters = {name: value.detach() for name, value in model.named_parameters()}
    x = x_train.double()
    selectors = F.one_hot(model(x).argmax(dim=1), num_classes=10).double()

    def output(params: dict, row: torch.Tensor, selector: torch.Tensor) -> torch.Tensor:
        # f_k as a dot product with the one-hot vector of k, because vmap cannot index by a tensor.
        return torch.dot(torch.func.functional_call(model, params, (row.unsqueeze(0),))[0], selector)

    def tangent_norm(row: torch.Tensor, selector: torch.Tensor) -> torch.Tensor:
        mixed = torch.func.jacrev(lambda point: torch.func.grad(output)(parameters, point, selector))(row)
        return torch.sqrt(sum(block.pow(2).sum() for block in mixed.values()))

    norms = torch.func.vmap(tangent_norm)(x, selectors)
    assert measured.measures["tangent_sensitivity_train"] == pytest.approx(float(norms.mean()), rel=1e-5)
    # The recorded value of the same checkpoint, over 400 samples, is of the same size.
    assert 0.5 < record["measures"]["tangent_sensitivity_train"] / float(norms.mean()) < 2.0


def test_study_round_trips_through_json(study_files: tuple[Path, Path]) -> None:
    _, path = study_files
    result = load_study(path)
    assert json.loads(json.dumps(result.to_dict())) == json.loads(path.read_text(encoding="utf-8"))


def test_save_study_rejects_existing(study_files: tuple[Path, Path]) -> None:
    from robusteval.errors import OutputExistsError

    _, path = study_files
    with pytest.raises(OutputExistsError):
        save_study(load_study(path), path)


def test_html_escapes_values(study_files: tuple[Path, Path]) -> None:
    _, path = study_files
    result = dataclasses.replace(load_study(path), zoo="<script>alert(1)</script>")
    page = render_study_html(result)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http" not in page.lower()


def test_terminal_lists_every_measure(study_files: tuple[Path, Path]) -> None:
    from rich.console import Console

    _, path = study_files
    result = load_study(path)
    console = Console(width=200, record=True)
    console.print(render_study_terminal(result))
    text = console.export_text()
    for measure in result.measures:
        assert measure in text
    for member in MEMBERS:
        assert member in text


def test_cli_study_writes_files(study_files: tuple[Path, Path], tmp_path: Path) -> None:
    zoo, _ = study_files
    runner = CliRunner()
    result = runner.invoke(app, ["study", str(zoo), "--quick", "--resamples", "50", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out/study.json").is_file()
    assert (tmp_path / "out/study.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")

    again = runner.invoke(app, ["study", str(zoo), "--quick", "--out", str(tmp_path / "out")])
    assert again.exit_code == 2


def test_cli_study_missing_zoo(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["study", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
