"""The results contract: JSON round trip, fixed field names, atomic writes."""

from __future__ import annotations

import json
import math

import pytest

from robusteval.errors import ResultsFormatError
from robusteval.results import (
    SCHEMA,
    DataInfo,
    EnvironmentInfo,
    Flag,
    ModelInfo,
    NormPair,
    Results,
    SampleRecord,
    TangentShiftRecord,
    ThreatModelResult,
    load_results,
    save_results,
    write_json_atomic,
)


def make_results() -> Results:
    sample = SampleRecord(
        index=3, label=1, prediction=1, correct=True, tangent_sensitivity=[0.5, 2.0],
        region_distance=NormPair(l2=0.1, linf=0.02), linear_decision_distance=NormPair(l2=0.3, linf=0.05),
        certified_radius=NormPair(l2=0.1, linf=0.02), min_adversarial_distance=NormPair(l2=0.4, linf=None),
        tangent_shift=TangentShiftRecord(epsilon=0.1, achieved=0.05, bound=0.2, crossed_region=False, bound_holds=True),
        logit_margin=float("inf"),
    )
    return Results(
        model=ModelInfo(path="m.pt", sha256="ab", format="torchscript", parameter_count=10, piecewise_linear=True),
        data=DataInfo(name="digits", sha256="cd", num_samples=1, input_shape=[64], input_bounds=[0.0, 1.0]),
        environment=EnvironmentInfo(robusteval="0", torch="2", foolbox="3", torchattacks="3", python="3.11", device="cpu", seed=0),
        clean_accuracy=1.0,
        threat_models=[ThreatModelResult(norm="l2", epsilons=[0.5], robust_accuracy=[1.0])],
        samples=[sample],
        flags=[Flag(code="train_mode", severity="warning", message="m", stage="preflight")],
    )


def test_round_trip_keeps_every_field(tmp_path):
    original = make_results()
    path = tmp_path / "results.json"
    save_results(original, path)
    loaded = load_results(path)
    assert loaded.samples[0].tangent_shift == original.samples[0].tangent_shift
    assert loaded.samples[0].region_distance == original.samples[0].region_distance
    assert loaded.threat_models == original.threat_models
    assert loaded.flags == original.flags
    assert loaded.model == original.model


def test_fixed_field_names_present(tmp_path):
    path = tmp_path / "results.json"
    save_results(make_results(), path)
    payload = json.loads(path.read_text())
    assert payload["schema"] == SCHEMA
    for key in ("model", "data", "environment", "clean_accuracy", "threat_models", "samples",
                "parameter_space", "predictive", "flags"):
        assert key in payload
    sample = payload["samples"][0]
    for key in ("index", "label", "prediction", "tangent_sensitivity", "region_distance",
                "linear_decision_distance", "certified_radius", "min_adversarial_distance"):
        assert key in sample
    assert set(sample["certified_radius"]) == {"l2", "linf"}
    assert set(payload["threat_models"][0]) >= {"norm", "epsilons", "robust_accuracy"}


def test_non_finite_floats_written_as_null(tmp_path):
    path = tmp_path / "results.json"
    save_results(make_results(), path)
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["samples"][0]["logit_margin"] is None


def test_unknown_fields_are_ignored_when_reading(tmp_path):
    payload = make_results().to_dict()
    payload["field_from_a_newer_version"] = 1
    payload["samples"][0]["another_new_field"] = [1, 2]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(payload))
    assert load_results(path).samples[0].index == 3


@pytest.mark.parametrize("text, expected", [
    ("not json", "not JSON"),
    ('{"schema": "robusteval/results/v0"}', "schema"),
    ("[1, 2]", "schema"),
])
def test_invalid_results_file_rejected(tmp_path, text, expected):
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(ResultsFormatError, match=expected):
        load_results(path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"a": 1})

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": Unserializable()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_compact_write_reads_back_equal(tmp_path):
    path = tmp_path / "block.json"
    payload = {"samples": [{"value": 1.5, "missing": math.inf}], "start": 0}

    write_json_atomic(path, payload, indent=None)

    assert "\n " not in path.read_text()
    assert json.loads(path.read_text()) == {"samples": [{"value": 1.5, "missing": None}], "start": 0}
