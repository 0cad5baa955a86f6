"""``robusteval run`` on bad input: exit code 2, no traceback, and a message naming the value and the fix.

Every case builds its bad file in ``tmp_path`` and runs the real command through typer's
``CliRunner``. A few also run as ``python -m robusteval`` in a separate process. Findings that
leave the evaluation possible (train mode, probability outputs) must not fail the run: they exit
0 and appear as flags in ``results.json`` and in the printed report.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robusteval.architectures import build_architecture
from robusteval.cli import app
from robusteval.digits import digits_split

# Options every run in this file shares: few samples, no parameter space, no HTML, few bootstrap resamples.
FAST_OPTIONS = ("--samples", "8", "--no-parameter-space", "--no-html", "--bootstrap", "10")
EXIT_BAD_INPUT = 2
# Importable module with architecture factories for state_dict files (--arch MODULE:FACTORY).
FACTORY_MODULE = "robusteval_cli_bad_input_factories"
FACTORY_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class Softmaxed(nn.Module):
        """A 64-16-10 ReLU MLP whose forward() ends in a softmax, so it returns probabilities."""

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

        def forward(self, x):
            return torch.softmax(self.net(x), dim=1)


    def probability_mlp():
        return Softmaxed()
''')


class NoisyForward(nn.Module):
    """Adds fresh Gaussian noise to the input on every call, also in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + 0.1 * torch.randn_like(x))


class BatchCentered(nn.Module):
    """Subtracts the batch mean from every input, so each output depends on the other samples."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - x.mean(dim=0, keepdim=True))


class TupleOutput(nn.Module):
    """Returns ``(logits, features)``, as many training wrappers do."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.head(features), features


class DictOutput(nn.Module):
    """Returns ``{"logits": ...}``, as Hugging Face style models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_mlp()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


class OpenOnUnpickle:
    """A planted payload: unpickling it calls ``open(path, "w")``, which creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def small_mlp(classes: int = 10) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, classes))


def digits(count: int = 16) -> tuple[np.ndarray, np.ndarray]:
    x, y = digits_split("test")
    return x[:count].copy(), y[:count].copy()


def write_data(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(path, x=x, y=y)
    return str(path)


def save_script(model: nn.Module, path: Path) -> str:
    torch.jit.save(torch.jit.script(model), str(path))
    return str(path)


def good_data(root: Path) -> str:
    return write_data(root / "data.npz", *digits())


def good_model(root: Path) -> str:
    return save_script(small_mlp().eval(), root / "mlp.pt")


def run_cli(*arguments: str) -> object:
    """Run ``robusteval run ARGUMENTS`` in this process and return typer's result."""
    return CliRunner().invoke(app, ["run", *arguments, *FAST_OPTIONS])


def one_line(text: str) -> str:
    return " ".join(text.split())


# Each builder writes its bad input into the folder it gets and returns the model, --data and
# any other options of the command.

def html_page_as_model(root: Path) -> list[str]:
    page = root / "model.pt"
    page.write_text("<!DOCTYPE html>\n<html><head><title>model.pt - Downloads</title></head><body></body></html>\n")
    return [str(page), "--data", good_data(root)]


def truncated_torchscript(root: Path) -> list[str]:
    whole = Path(good_model(root)).read_bytes()
    truncated = root / "truncated.pt"
    truncated.write_bytes(whole[: len(whole) // 2])
    return [str(truncated), "--data", good_data(root)]


def truncated_legacy_state_dict(root: Path) -> list[str]:
    # The pre-1.6 format: consecutive pickles and raw storage bytes, no zip directory.
    path = root / "weights.pt"
    torch.save(build_architecture("mlp:64-16-10").state_dict(), path, _use_new_zipfile_serialization=False)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 200])
    return [str(path), "--arch", "mlp:64-16-10", "--data", good_data(root)]


def pickled_whole_model(root: Path) -> list[str]:
    path = root / "whole.pt"
    torch.save(small_mlp(), path)
    return [str(path), "--data", good_data(root)]


def state_dict_without_arch(root: Path) -> list[str]:
    path = root / "weights.pt"
    torch.save(build_architecture("mlp:64-16-10").state_dict(), path)
    return [str(path), "--data", good_data(root)]


def state_dict_of_other_width(root: Path) -> list[str]:
    path = root / "weights.pt"
    torch.save(build_architecture("mlp:64-16-10").state_dict(), path)
    return [str(path), "--arch", "mlp:64-32-10", "--data", good_data(root)]


def tuple_output_exported(root: Path) -> list[str]:
    batch = torch.export.Dim("batch")
    program = torch.export.export(TupleOutput().eval(), (torch.zeros(2, 64),), dynamic_shapes=({0: batch},))
    path = root / "tuple.pt2"
    torch.export.save(program, path)
    return [str(path), "--data", good_data(root)]


def dict_output(root: Path) -> list[str]:
    return [save_script(DictOutput().eval(), root / "dict.pt"), "--data", good_data(root)]


def batch_statistics(root: Path) -> list[str]:
    # Without running statistics, BatchNorm normalizes with the batch's own mean also in eval mode.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16, track_running_stats=False), nn.ReLU(), nn.Linear(16, 10))
    return [save_script(model.eval(), root / "batchnorm.pt"), "--data", good_data(root)]


def batch_centering(root: Path) -> list[str]:
    return [save_script(BatchCentered().eval(), root / "centered.pt"), "--data", good_data(root)]


def random_forward(root: Path) -> list[str]:
    return [save_script(NoisyForward().eval(), root / "noisy.pt"), "--data", good_data(root)]


def nan_weight(root: Path) -> list[str]:
    model = small_mlp()
    with torch.no_grad():
        model[2].weight[3, 5] = float("nan")
    return [save_script(model.eval(), root / "nan.pt"), "--data", good_data(root)]


def inf_weight(root: Path) -> list[str]:
    model = small_mlp()
    with torch.no_grad():
        model[0].bias[0] = float("inf")
    return [save_script(model.eval(), root / "inf.pt"), "--data", good_data(root)]


def overflowing_outputs(root: Path) -> list[str]:
    # Finite weights near float32's maximum: a sum of several such products overflows to inf.
    model = nn.Sequential(nn.Linear(64, 10))
    with torch.no_grad():
        model[0].weight.fill_(3e38)
        model[0].bias.zero_()
    return [save_script(model.eval(), root / "overflow.pt"), "--data", good_data(root)]


def nan_input(root: Path) -> list[str]:
    x, y = digits()
    x[2, 5] = np.nan
    return [good_model(root), "--data", write_data(root / "nan.npz", x, y)]


def integer_inputs(root: Path) -> list[str]:
    x, y = digits()
    return [good_model(root), "--data", write_data(root / "int.npz", (x * 16).astype(np.int64), y)]


def uint8_images(root: Path) -> list[str]:
    x, y = digits()
    return [good_model(root), "--data", write_data(root / "uint8.npz", (x * 255).astype(np.uint8), y)]


def inputs_beyond_bounds(root: Path) -> list[str]:
    # The raw digits pixels are 0..16; the default bounds are [0, 1].
    x, y = digits()
    return [good_model(root), "--data", write_data(root / "raw.npz", x * 16, y)]


def inputs_beyond_declared_bounds(root: Path) -> list[str]:
    x, y = digits()
    return [good_model(root), "--data", write_data(root / "data.npz", x, y), "--lower", "0.2"]


def float_labels(root: Path) -> list[str]:
    x, y = digits()
    return [good_model(root), "--data", write_data(root / "float_y.npz", x, y.astype(np.float32))]


def one_hot_labels(root: Path) -> list[str]:
    x, y = digits()
    return [good_model(root), "--data", write_data(root / "one_hot.npz", x, np.eye(10, dtype=np.int64)[y])]


def labels_per_row_missing(root: Path) -> list[str]:
    x, y = digits()
    return [good_model(root), "--data", write_data(root / "short_y.npz", x, y[:-3])]


def labels_beyond_classes(root: Path) -> list[str]:
    x, y = digits()
    return [good_model(root), "--data", write_data(root / "y_plus_10.npz", x, y + 10)]


def negative_labels(root: Path) -> list[str]:
    x, y = digits()
    y[[1, 4]] = -1
    return [good_model(root), "--data", write_data(root / "negative_y.npz", x, y)]


def data_of_other_shape(root: Path) -> list[str]:
    x, y = digits()
    return [good_model(root), "--data", write_data(root / "half.npz", x[:, :32], y)]


def image_data_for_flat_model(root: Path) -> list[str]:
    x, y = digits()
    return [good_model(root), "--data", write_data(root / "images.npz", x.reshape(-1, 1, 8, 8), y)]


def two_classes_targeted_attack(root: Path) -> list[str]:
    x, y = digits()
    model = save_script(small_mlp(classes=2).eval(), root / "binary.pt")
    return [model, "--data", write_data(root / "binary.npz", x, y % 2), "--attacks", "apgd-t"]


def two_classes_mixed_attack_list(root: Path) -> list[str]:
    return [*two_classes_targeted_attack(root)[:-2], "--attacks", "fgsm,apgd-t"]


def model_over_memory_budget(root: Path) -> list[str]:
    # 64 * 70000 + 70000 * 10 weights in float32: about 19.8 MiB of parameters, over the 16 MiB budget.
    model = nn.Sequential(nn.Linear(64, 70000), nn.ReLU(), nn.Linear(70000, 10))
    return [save_script(model.eval(), root / "wide.pt"), "--data", good_data(root), "--memory-budget", "16"]


class BadInput(NamedTuple):
    build: Callable[[Path], list[str]]
    phrases: tuple[str, ...]  # what the message must contain: the value found, then the fix


BAD_INPUTS = {
    "html page as model": BadInput(html_page_as_model, ("an HTML or XML page, not a model", "Download the raw file")),
    "truncated torchscript": BadInput(truncated_torchscript, ("probably truncated or corrupt", "save it again")),
    "truncated legacy state_dict": BadInput(truncated_legacy_state_dict, ("truncated or corrupt", "Save it again")),
    "pickled whole model": BadInput(pickled_whole_model, (
        "torch.nn.modules.container.Sequential", "did not unpickle it", "--trust-pickle", "model.state_dict()",
    )),
    "state_dict without arch": BadInput(state_dict_without_arch, ("contains a state_dict (4 tensors", "--arch")),
    "state_dict of other width": BadInput(state_dict_of_other_width, (
        "does not fit architecture 'mlp:64-32-10'", "(16, 64)", "(32, 64)", "--arch",
    )),
    "tuple output": BadInput(tuple_output_exported, (
        "returned a tuple of 2 items (Tensor(16, 10), Tensor(16, 16))", "returns only the logits", "[0]",
    )),
    "dict output": BadInput(dict_output, ("returned a dict {'logits': Tensor(16, 10)}", "self.inner(x)['logits']")),
    "batch statistics": BadInput(batch_statistics, (
        "depend on the rest of the batch", "fails on a single sample", "track_running_stats=True",
    )),
    "batch centering": BadInput(batch_centering, ("depend on the rest of the batch", "differ from the batched outputs by up to")),
    "random forward": BadInput(random_forward, ("returned different outputs", "Make forward() deterministic")),
    "nan weight": BadInput(nan_weight, ("contain NaN or inf: 2.weight", "use an earlier checkpoint")),
    "inf weight": BadInput(inf_weight, ("contain NaN or inf: 0.bias", "use an earlier checkpoint")),
    "overflowing outputs": BadInput(overflowing_outputs, ("returned NaN or inf on the probe batch", "Check the model for")),
    "nan input": BadInput(nan_input, ("finite values in x", "(rows [2])", "Remove or repair those rows")),
    "integer inputs": BadInput(integer_inputs, ("floating point, but got dtype int64", "as float32")),
    "uint8 images": BadInput(uint8_images, ("dtype uint8", "x.astype('float32') / 255")),
    "inputs beyond bounds": BadInput(inputs_beyond_bounds, (
        "within the bounds [0.0, 1.0]", "range over [0.0, 16.0]", "--lower and --upper",
    )),
    "inputs beyond declared bounds": BadInput(inputs_beyond_declared_bounds, ("within the bounds [0.2, 1.0]", "--lower")),
    "float labels": BadInput(float_labels, ("got dtype float32", "y.astype('int64')")),
    "one-hot labels": BadInput(one_hot_labels, ("got shape (16, 10)", "y.argmax(axis=1)")),
    "fewer labels than rows": BadInput(labels_per_row_missing, ("one label per row of x (16), but got 13 labels",)),
    "labels beyond classes": BadInput(labels_beyond_classes, ("below the model's 10 classes", "reach 19", "remap the labels")),
    "negative labels": BadInput(negative_labels, ("2 label(s) are negative", "(rows [1, 4]", "Map them to 0..C-1")),
    "data of other shape": BadInput(data_of_other_shape, (
        "probe batch of shape (16, 32)", "mat1 and mat2 shapes cannot be multiplied", "expects 64 input features",
        "model and the data belong together",
    )),
    "image data for flat model": BadInput(image_data_for_flat_model, (
        "probe batch of shape (16, 1, 8, 8)", "expects 64 input features",
    )),
    "too few classes for apgd-t": BadInput(two_classes_targeted_attack, (
        "model with 2 classes", "apgd-t (needs at least 4 classes)", "Remove them from --attacks", "suite",
    )),
    "too few classes in attack list": BadInput(two_classes_mixed_attack_list, ("apgd-t (needs at least 4 classes)",)),
    "model over memory budget": BadInput(model_over_memory_budget, (
        "MiB, more than the memory budget of 16.0 MiB", "--memory-budget",
    )),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_exits_2_with_fix(case: str, tmp_path: Path) -> None:
    bad = BAD_INPUTS[case]
    arguments = bad.build(tmp_path)
    if "--attacks" not in arguments:
        arguments += ["--attacks", "fgsm"]
    out = tmp_path / "out"

    result = run_cli(*arguments, "--out", str(out))

    # An exception that escaped the command would show as result.exception, not a SystemExit.
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "Traceback" not in result.stderr
    message = one_line(result.stderr)
    assert message.startswith("error: ")
    for phrase in bad.phrases:
        assert phrase in message
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("case", ["html page as model", "random forward", "labels beyond classes"])
def test_bad_input_process_prints_no_traceback(case: str, tmp_path: Path) -> None:
    bad = BAD_INPUTS[case]
    command = [sys.executable, "-m", "robusteval", "run", *bad.build(tmp_path), "--out", str(tmp_path / "out"),
               "--attacks", "fgsm", *FAST_OPTIONS]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    assert finished.returncode == EXIT_BAD_INPUT, finished.stderr
    assert "Traceback" not in finished.stderr
    assert bad.phrases[0] in one_line(finished.stderr)


@pytest.mark.parametrize("writer", ["pickle.dump", "torch.save"])
def test_planted_pickle_never_runs(writer: str, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "model.pt"
    if writer == "pickle.dump":
        with path.open("wb") as handle:
            pickle.dump(OpenOnUnpickle(marker), handle)
    else:
        torch.save({"state_dict": OpenOnUnpickle(marker)}, path)
    command = [sys.executable, "-m", "robusteval", "run", str(path), "--data", good_data(tmp_path),
               "--out", str(tmp_path / "out"), "--attacks", "fgsm", *FAST_OPTIONS]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    assert finished.returncode == EXIT_BAD_INPUT, finished.stderr
    assert not marker.exists()
    message = one_line(finished.stderr)
    assert "did not unpickle it" in message
    assert "open" in message
    assert "--trust-pickle" in message
    assert "Traceback" not in finished.stderr


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    folder = tmp_path / "factories"
    folder.mkdir()
    (folder / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, FACTORY_MODULE, raising=False)
    return FACTORY_MODULE


def read_flags(out: Path) -> dict[tuple[str, str], dict]:
    """Return the flags in ``out/results.json`` keyed by ``(stage, code)``."""
    payload = json.loads((out / "results.json").read_text())
    return {(flag["stage"], flag["code"]): flag for flag in payload["flags"]}


def test_train_mode_model_runs_with_flag(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10)).train()
    path = Path(save_script(model, tmp_path / "train_mode.pt"))
    saved = path.read_bytes()
    modified = os.stat(path).st_mtime_ns
    out = tmp_path / "out"

    result = run_cli(str(path), "--data", good_data(tmp_path), "--out", str(out), "--attacks", "fgsm")

    assert result.exit_code == 0, result.output
    assert path.read_bytes() == saved
    assert os.stat(path).st_mtime_ns == modified
    flags = read_flags(out)
    assert ("preflight", "train_mode") in flags
    flag = flags["preflight", "train_mode"]
    assert flag["severity"] == "warning"
    assert "saved in train mode" in flag["message"]
    assert "2 (Dropout)" in flag["message"]
    assert "model.eval()" in flag["message"]
    assert "[warning] train_mode" in result.stdout


def test_probability_outputs_run_with_flag(tmp_path: Path, factory_module: str) -> None:
    factories = importlib.import_module(factory_module)
    path = tmp_path / "softmax.pt"
    torch.manual_seed(0)
    torch.save(factories.probability_mlp().state_dict(), path)
    out = tmp_path / "out"

    result = run_cli(str(path), "--arch", f"{factory_module}:probability_mlp", "--data", good_data(tmp_path),
                     "--out", str(out), "--attacks", "fgsm")

    assert result.exit_code == 0, result.output
    flags = read_flags(out)
    assert ("preflight", "probability_outputs") in flags
    flag = flags["preflight", "probability_outputs"]
    assert flag["severity"] == "warning"
    assert "Remove the final softmax" in flag["message"]
    assert "[warning] probability_outputs" in result.stdout


def test_existing_results_kept_without_force(tmp_path: Path) -> None:
    model, data = good_model(tmp_path), good_data(tmp_path)
    out = tmp_path / "out"
    first = run_cli(model, "--data", data, "--out", str(out), "--attacks", "fgsm", "--seed", "0")
    assert first.exit_code == 0, first.output
    assert read_flags(out) == {}
    assert "No flags" in first.stdout
    before = (out / "results.json").read_bytes()

    refused = run_cli(model, "--data", data, "--out", str(out), "--attacks", "fgsm", "--seed", "1")

    assert refused.exit_code == EXIT_BAD_INPUT
    assert "Traceback" not in refused.stderr
    message = one_line(refused.stderr)
    assert "already holds results" in message
    assert "--force" in message
    assert "--resume" not in message  # finished results have nothing to resume
    assert (out / "results.json").read_bytes() == before

    forced = run_cli(model, "--data", data, "--out", str(out), "--attacks", "fgsm", "--seed", "1", "--force")

    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "results.json").read_text())["environment"]["seed"] == 1


def test_resume_and_force_together_rejected(tmp_path: Path) -> None:
    out = tmp_path / "out"

    result = run_cli(good_model(tmp_path), "--data", good_data(tmp_path), "--out", str(out), "--resume", "--force")

    assert result.exit_code == EXIT_BAD_INPUT
    assert "--resume and --force cannot be combined" in one_line(result.stderr)
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value", "phrase"),
    [("--memory-budget", "-5", "got -5 MiB, but it must be at least 16 MiB"), ("--samples", "0", "got 0, but it must be at least 1")],
)
def test_option_below_minimum_names_value(option: str, value: str, phrase: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", option, value, "--out", str(tmp_path / "out")])

    assert result.exit_code == EXIT_BAD_INPUT
    # Typer draws the message in a box; drop its borders before matching.
    assert phrase in one_line(result.output.replace("│", " "))
