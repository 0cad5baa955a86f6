"""The output directory: no silent overwrite, resume only with the same configuration."""

from __future__ import annotations

import pytest

from robusteval.errors import OutputExistsError, ResumeError
from robusteval.results import NormPair, SampleRecord
from robusteval.run_directory import RunDirectory


def record(index: int) -> SampleRecord:
    pair = NormPair(l2=0.1, linf=0.01)
    return SampleRecord(index=index, label=0, prediction=0, correct=True, tangent_sensitivity=[1.0, 2.0],
                        region_distance=pair, linear_decision_distance=pair, certified_radius=pair,
                        min_adversarial_distance=NormPair())


def test_existing_results_not_overwritten(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="--force"):
        RunDirectory(tmp_path).prepare({"seed": 0}, resume=False, force=False)
    assert (tmp_path / "results.json").read_text() == "{}"


def test_force_removes_only_own_files(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("keep me")
    RunDirectory(tmp_path).prepare({"seed": 0}, resume=False, force=True)
    assert not (tmp_path / "results.json").exists()
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_interrupted_run_needs_resume(tmp_path):
    directory = RunDirectory(tmp_path)
    directory.prepare({"seed": 0}, resume=False, force=False)
    directory.save_block(0, [record(0), record(1)], {"flags": []})
    with pytest.raises(OutputExistsError, match="--resume"):
        RunDirectory(tmp_path).prepare({"seed": 0}, resume=False, force=False)


def test_resume_reuses_blocks(tmp_path):
    directory = RunDirectory(tmp_path)
    directory.prepare({"seed": 0}, resume=False, force=False)
    directory.save_block(0, [record(0), record(1)], {"geometry_method": "closed_form"})

    resumed = RunDirectory(tmp_path)
    resumed.prepare({"seed": 0}, resume=True, force=False)
    blocks = resumed.load_block(0)
    assert [r.index for r in blocks] == [0, 1]
    assert blocks[0].region_distance == NormPair(l2=0.1, linf=0.01)
    assert resumed.load_block_extra(0) == {"geometry_method": "closed_form"}
    assert resumed.load_block(2) is None


def test_resume_with_other_configuration_rejected(tmp_path):
    RunDirectory(tmp_path).prepare({"seed": 0, "samples": 10}, resume=False, force=False)
    with pytest.raises(ResumeError, match="seed"):
        RunDirectory(tmp_path).prepare({"seed": 1, "samples": 10}, resume=True, force=False)


def test_resume_of_finished_run_rejected(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="nothing to resume"):
        RunDirectory(tmp_path).prepare({"seed": 0}, resume=True, force=False)


def test_output_path_that_is_a_file_rejected(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputExistsError, match="not a directory"):
        RunDirectory(target).prepare({}, resume=False, force=False)
