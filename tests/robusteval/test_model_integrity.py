"""The model robusteval is given comes back exactly as it was, after success and after failure.

"Exactly" covers the values, dtypes, shapes and identities of every parameter and buffer (so a
tied weight stays one shared tensor), every ``requires_grad`` bit and ``.grad`` slot, and every
module's ``training`` flag. ``evaluate`` takes a model file, not a module. So the pipeline tests
check the file's bytes and the module the pipeline loaded from them. The stage-function tests
hand an in-memory model in train mode to each stage of the Python API.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import robusteval.attacks
import robusteval.attacks.parameter
import robusteval.loading
from robusteval._types import Bounds
from robusteval.attacks import ThreatModel, run_input_attacks
from robusteval.attacks.parameter import adversarial_weight_curve, noise_sharpness, weight_noise_curve
from robusteval.bounds import compute_bounds, generalization_estimates
from robusteval.data import dataset_from_arrays
from robusteval.digits import digits_split
from robusteval.eager import eager_equivalent
from robusteval.geometry import local_linear_analysis
from robusteval.pipeline import EvaluationConfig, evaluate
from robusteval.preflight import preflight

FACTORY_MODULE = "robusteval_integrity_factories"
# The network under test: BatchNorm with non-trivial running statistics, Dropout, frozen
# parameters and one weight shared by two layers. It is importable from a file so that a
# state_dict can name it with --arch and a pickled copy can be rebuilt.
FACTORY_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    def tied_network():
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        network = nn.Sequential(
            nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.25),
            nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10),
        )
        network[6].weight = network[4].weight
        with torch.no_grad():
            network[1].running_mean.copy_(0.1 * torch.randn(16, generator=generator))
            network[1].running_var.copy_(0.5 + torch.rand(16, generator=generator))
            network[1].num_batches_tracked.fill_(7)
        network[0].bias.requires_grad_(False)
        network[1].weight.requires_grad_(False)
        return network
''')
BOUNDS = Bounds(0.0, 1.0)
SAMPLES = 8
TRAINING_STEPS = 40
TRAINING_ROWS = 400


class InjectedFailure(RuntimeError):
    """Raised by a patched stage after it has used the model."""


def tensor_digest(tensor: torch.Tensor) -> str:
    # Bytes, not values, so that -0.0 against 0.0 and NaN payloads count as changes too.
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()


def model_state(model: nn.Module) -> dict[str, Any]:
    """Return everything about ``model`` that robusteval must not change, keyed by qualified name."""
    state: dict[str, Any] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        state[f"module {name or '<root>'}"] = (type(module).__name__, module.training,
                                               sorted(module._parameters), sorted(module._buffers))
    for name, parameter in model.named_parameters(remove_duplicate=False):
        grad = None if parameter.grad is None else tensor_digest(parameter.grad)
        state[f"parameter {name}"] = (id(parameter), parameter.dtype, tuple(parameter.shape),
                                      parameter.requires_grad, tensor_digest(parameter), grad)
    for name, buffer in model.named_buffers(remove_duplicate=False):
        state[f"buffer {name}"] = (id(buffer), buffer.dtype, tuple(buffer.shape), tensor_digest(buffer))
    return state


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert sorted(after) == sorted(before)
    for key in before:
        assert after[key] == before[key], key


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def factories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("factories")
    (folder / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        patch.delitem(sys.modules, FACTORY_MODULE, raising=False)
        yield importlib.import_module(FACTORY_MODULE)
        sys.modules.pop(FACTORY_MODULE, None)


@pytest.fixture(scope="module")
def trained_model(factories: Any) -> nn.Sequential:
    model = factories.tied_network().train()
    inputs, labels = (torch.from_numpy(array[:TRAINING_ROWS]) for array in digits_split("train"))
    optimizer = torch.optim.Adam([parameter for parameter in model.parameters() if parameter.requires_grad], lr=0.01)
    for _ in range(TRAINING_STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model


@pytest.fixture
def user_model(trained_model: nn.Sequential) -> nn.Sequential:
    """A copy of the trained network, left in train mode on purpose and holding its last gradients."""
    model = copy.deepcopy(trained_model)
    # deepcopy keeps ties and requires_grad but not .grad.
    for original, copied in zip(trained_model.parameters(), model.parameters()):
        copied.grad = None if original.grad is None else original.grad.clone()
    return model


def test_fixture_model_has_every_feature(user_model: nn.Sequential) -> None:
    # The integrity checks below are only as strong as the model they run on.
    assert user_model.training
    assert user_model[6].weight is user_model[4].weight
    assert not user_model[0].bias.requires_grad
    assert not user_model[1].weight.requires_grad
    assert user_model[4].weight.grad is not None
    assert user_model[4].weight.grad.abs().sum() > 0
    assert int(user_model[1].num_batches_tracked) == 7 + TRAINING_STEPS
    assert len(list(user_model.parameters())) < len(list(user_model.named_parameters(remove_duplicate=False)))


def test_state_detects_each_kind_of_change(factories: Any) -> None:
    # model_state must see every change the tests below rule out; otherwise they could not fail.
    changes: list[Callable[[nn.Sequential], None]] = [
        lambda model: model[3].eval(),
        lambda model: model[0].bias.requires_grad_(True),
        lambda model: model[8].weight.data.add_(1e-7),
        lambda model: model[1].running_var.mul_(1.0 + 1e-6),
        lambda model: setattr(model[6], "weight", nn.Parameter(model[4].weight.detach().clone())),
        lambda model: setattr(model[4].weight, "grad", None),
        lambda model: model[1].num_batches_tracked.add_(1),
    ]
    for change in changes:
        model = factories.tied_network().train()
        model[4].weight.grad = torch.ones_like(model[4].weight)
        before = model_state(model)
        with torch.no_grad():
            change(model)
        assert model_state(model) != before


@pytest.fixture
def split() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_split("test")
    return torch.from_numpy(x[:SAMPLES]), torch.from_numpy(y[:SAMPLES])


def run_preflight(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    preflight(model, dataset_from_arrays(x, y, name="digits test rows"))


def run_geometry(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    local_linear_analysis(model, x, bounds=BOUNDS, method="exact", generator=torch.Generator().manual_seed(0))


def run_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    run_input_attacks(model, x, y, threat_models=[ThreatModel("linf", (0.05, 0.1))], attacks=["fgsm"],
                      bounds=BOUNDS, seed=0)


def run_weight_noise(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    weight_noise_curve(model, x, y, mode="layer", scales=(0.0, 0.1), draws=2, seed=0)
    noise_sharpness(model, x, y, mode="magnitude", draws=2, seed=0)


def run_adversarial_weights(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    adversarial_weight_curve(model, x, y, gammas=(0.0, 0.05), steps=2, seed=0)


def run_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    compute_bounds(model, tangent_sensitivity=torch.ones(len(x), 10, dtype=torch.float64), active_units=None)
    generalization_estimates(model, x_train=x, y_train=y, x_test=x, y_test=y)


def run_eager_equivalent(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    eager_equivalent(model, x)


# Stage functions and the mode the model is handed over in. Preflight and the attacks switch to
# eval mode themselves and must restore the caller's flags. Geometry and the bounds document
# eval mode as a precondition, so they get the model in eval mode.
STAGES = {
    "preflight": (run_preflight, "train"),
    "geometry": (run_geometry, "eval"),
    "fgsm": (run_fgsm, "train"),
    "weight noise": (run_weight_noise, "train"),
    "adversarial weights": (run_adversarial_weights, "train"),
    "bounds": (run_bounds, "eval"),
    "eager equivalent": (run_eager_equivalent, "train"),
}


@pytest.mark.parametrize("stage", list(STAGES), ids=list(STAGES))
def test_stage_leaves_model_unchanged(stage: str, user_model: nn.Sequential, split) -> None:
    run_stage, mode = STAGES[stage]
    user_model.train(mode == "train")
    before = model_state(user_model)

    run_stage(user_model, *split)

    assert_same_state(before, model_state(user_model))


def test_mixed_training_flags_survive_attacks(user_model: nn.Sequential, split) -> None:
    # A frozen BatchNorm inside a model in train mode, as when fine-tuning: a blanket
    # model.train() on exit would switch it back to batch statistics.
    user_model[1].eval()
    before = model_state(user_model)

    run_fgsm(user_model, *split)
    run_preflight(user_model, *split)

    assert_same_state(before, model_state(user_model))


def test_attack_failure_restores_model(user_model: nn.Sequential, split, monkeypatch: pytest.MonkeyPatch) -> None:
    before = model_state(user_model)
    calls = []

    def fail_after_attack(*arguments: Any, **options: Any) -> Any:
        calls.append(1)
        raise InjectedFailure("recheck failed after the attack used the model")

    # The recheck runs inside the attack stage's eval-mode, gradients-off section.
    monkeypatch.setattr("robusteval.attacks.input_space.recheck_adversarial", fail_after_attack)
    with pytest.raises(InjectedFailure):
        run_fgsm(user_model, *split)

    assert calls
    assert_same_state(before, model_state(user_model))


# --- evaluate(): the model file, and the module loaded from it ---------------------------------


@pytest.fixture
def model_files(tmp_path: Path, user_model: nn.Sequential, split) -> dict[str, tuple[Path, str | None, bool]]:
    """The user's model saved as a state_dict (with --arch) and fully pickled (with --trust-pickle)."""
    state_dict = tmp_path / "tied_state_dict.pt"
    torch.save(user_model.state_dict(), state_dict)
    pickled = tmp_path / "tied_pickled.pt"
    torch.save(user_model, pickled)
    return {
        "state_dict": (state_dict, f"{FACTORY_MODULE}:tied_network", False),
        "pickle": (pickled, None, True),
    }


def small_config(path: Path, arch: str | None, trust_pickle: bool, data: Path) -> EvaluationConfig:
    return EvaluationConfig(
        model=str(path), arch=arch, trust_pickle=trust_pickle, data=str(data), samples=SAMPLES, block_size=SAMPLES,
        attacks=("fgsm",), eps=("linf=0.05,0.1", "l2=0.5"), noise_draws=2, weight_steps=2, bootstrap=10,
        tangent_shift_epsilon=0.1,
    )


@pytest.fixture
def data_file(tmp_path: Path, split) -> Path:
    path = tmp_path / "digits_rows.npz"
    np.savez(path, x=split[0].numpy(), y=split[1].numpy())
    return path


@pytest.fixture
def loaded_modules(monkeypatch: pytest.MonkeyPatch) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Each module the pipeline loads, with its state right after loading."""
    loaded: list[tuple[nn.Module, dict[str, Any]]] = []
    real_load_model = robusteval.loading.load_model

    def recording_load_model(*arguments: Any, **options: Any) -> Any:
        result = real_load_model(*arguments, **options)
        loaded.append((result.module, model_state(result.module)))
        return result

    monkeypatch.setattr(robusteval.loading, "load_model", recording_load_model)
    return loaded


@pytest.mark.parametrize("kind", ["state_dict", "pickle"])
def test_evaluate_leaves_model_unchanged(kind: str, model_files, data_file, loaded_modules, user_model, tmp_path) -> None:
    path, arch, trust = model_files[kind]
    file_before = file_digest(path)
    user_before = model_state(user_model)

    results = evaluate(small_config(path, arch, trust, data_file), out_dir=tmp_path / "out")

    assert results.parameter_space is not None
    assert len(loaded_modules) == 1
    module, after_loading = loaded_modules[0]
    assert module[6].weight is module[4].weight
    assert not module.training
    assert_same_state(after_loading, model_state(module))
    assert file_digest(path) == file_before
    assert_same_state(user_before, model_state(user_model))


# Stages the pipeline looks up at call time, each patched to run and then raise.
FAILING_STAGES = {
    "input attacks": (robusteval.attacks, "run_input_attacks"),
    "adversarial weights": (robusteval.attacks.parameter, "adversarial_weight_curve"),
}


@pytest.mark.parametrize("stage", list(FAILING_STAGES), ids=list(FAILING_STAGES))
def test_evaluate_failure_leaves_model_unchanged(
    stage: str, model_files, data_file, loaded_modules, tmp_path, monkeypatch
) -> None:
    owner, name = FAILING_STAGES[stage]
    real_stage = getattr(owner, name)
    calls = []

    def run_then_fail(*arguments: Any, **options: Any) -> Any:
        real_stage(*arguments, **options)
        calls.append(name)
        raise InjectedFailure(f"{name} failed after using the model")

    monkeypatch.setattr(owner, name, run_then_fail)
    path, arch, trust = model_files["state_dict"]
    file_before = file_digest(path)
    out = tmp_path / "out"

    with pytest.raises(InjectedFailure):
        evaluate(small_config(path, arch, trust, data_file), out_dir=out)

    assert calls == [name]
    module, after_loading = loaded_modules[0]
    assert_same_state(after_loading, model_state(module))
    assert file_digest(path) == file_before
    assert not (out / "results.json").exists()
