"""Tests of robusteval.preflight: every finding, its message, and an untouched model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robusteval.data import dataset_from_arrays
from robusteval.errors import PreflightError
from robusteval.preflight import preflight

D, C, N = 6, 3, 10


def make_data(n: int = N, d: int = D, classes: int = C):
    generator = np.random.default_rng(0)
    x = generator.random((n, d), dtype=np.float32)
    y = np.arange(n, dtype=np.int64) % classes
    return dataset_from_arrays(x, y, name="probe-data")


def make_network(*extra: nn.Module, out: int = C) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 8), nn.ReLU(), *extra, nn.Linear(8, out)).eval()


def codes(report) -> list[str]:
    return [flag.code for flag in report.flags]


def snapshot(model: nn.Module):
    return (
        {name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
        [module.training for module in model.modules()],
        [parameter.requires_grad for parameter in model.parameters()],
    )


def assert_unchanged(model: nn.Module, before) -> None:
    tensors, training, requires_grad = before
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, tensors[name]), name
    assert [module.training for module in model.modules()] == training
    assert [parameter.requires_grad for parameter in model.parameters()] == requires_grad


class Wrapped(nn.Module):
    """Runs ``inner`` and hands its logits to ``shape`` to build the output under test."""

    def __init__(self, shape, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.inner = inner or make_network()
        self.shape = shape
        self.eval()

    def forward(self, x):
        return self.shape(self.inner(x))


def test_clean_model_no_flags():
    model = make_network()
    report = preflight(model, make_data())
    assert report.num_classes == C
    assert report.flags == []


def test_train_mode_warns_and_restores():
    model = make_network(nn.Dropout(0.5), nn.BatchNorm1d(8)).train()
    model[1].requires_grad_(False)
    before = snapshot(model)

    report = preflight(model, make_data())

    assert codes(report) == ["train_mode"]
    flag = report.flags[0]
    assert flag.severity == "warning"
    assert flag.stage == "preflight"
    assert "model.eval()" in flag.message
    assert "Dropout" in flag.message
    assert "BatchNorm1d" in flag.message
    assert_unchanged(model, before)  # BatchNorm running statistics were not updated


def test_tuple_output_error():
    model = Wrapped(lambda logits: (logits, logits.relu()))
    with pytest.raises(PreflightError) as raised:
        preflight(model, make_data())
    message = str(raised.value)
    assert "returned a tuple of 2 items (Tensor(10, 3), Tensor(10, 3))" in message
    assert "return self.inner(x)[0]" in message


def test_dict_output_error():
    model = Wrapped(lambda logits: {"features": logits.sum(1), "logits": logits})
    with pytest.raises(PreflightError) as raised:
        preflight(model, make_data())
    message = str(raised.value)
    assert "'features': Tensor(10,)" in message
    assert "['logits']" in message


def test_non_tensor_output_error():
    model = Wrapped(lambda logits: logits.tolist())
    with pytest.raises(PreflightError, match="returned a list of 10 items"):
        preflight(model, make_data())


def test_single_output_column_error():
    with pytest.raises(PreflightError, match=r"at least 2 classes.*torch.stack\(\[-z, z\], dim=1\)"):
        preflight(make_network(out=1), make_data())


def test_one_dimensional_output_error():
    model = Wrapped(lambda logits: logits[:, 0])
    with pytest.raises(PreflightError, match=r"returned shape \(10,\)\. For a binary classifier"):
        preflight(model, make_data())


def test_nan_weights_error():
    model = make_network()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(PreflightError, match=r"1 parameter or buffer tensor\(s\) contain NaN or inf: 2.weight"):
        preflight(model, make_data())


def test_inf_outputs_error():
    model = Wrapped(lambda logits: logits / (logits - logits))
    with pytest.raises(PreflightError, match="returned NaN or inf on the probe batch"):
        preflight(model, make_data())


def test_random_forward_flagged():
    model = Wrapped(lambda logits: logits + torch.randn_like(logits))
    torch.manual_seed(0)
    report = preflight(model, make_data())
    assert "nondeterministic_outputs" in codes(report)
    flag = report.flags[codes(report).index("nondeterministic_outputs")]
    assert flag.severity == "error"
    assert "identical forward passes" in flag.message
    assert flag.details["max_abs_difference"] > 0.0


def test_batch_size_dependence_flagged():
    # Centering over the batch makes each sample's output depend on the others.
    model = Wrapped(lambda logits: logits - logits.mean(dim=0, keepdim=True))
    report = preflight(model, make_data())
    assert codes(report) == ["batch_size_dependent"]
    assert "depend on the rest of the batch" in report.flags[0].message
    assert report.flags[0].details["rows_compared"] == 4


def test_softmax_outputs_flagged():
    model = Wrapped(lambda logits: torch.softmax(logits, dim=1))
    report = preflight(model, make_data())
    assert codes(report) == ["probability_outputs"]
    assert report.flags[0].details["kind"] == "probabilities"
    assert "gradient masking" in report.flags[0].message
    assert "Remove the final softmax" in report.flags[0].message


def test_log_softmax_outputs_flagged():
    model = Wrapped(lambda logits: torch.log_softmax(logits, dim=1))
    report = preflight(model, make_data())
    assert codes(report) == ["probability_outputs"]
    assert report.flags[0].details["kind"] == "log_probabilities"


def test_labels_beyond_classes_error():
    data = make_data(classes=5)
    with pytest.raises(PreflightError, match=r"below the model's 3 classes, but 4 label\(s\) in y of 'probe-data' reach 4"):
        preflight(make_network(), data)


def test_shape_mismatch_names_both_shapes():
    data = make_data(d=5)
    with pytest.raises(PreflightError) as raised:
        preflight(make_network(), data)
    message = str(raised.value)
    assert "probe batch of shape (10, 5)" in message
    assert "samples have shape (5,)" in message
    assert "expects 6 input features (nn.Linear)" in message


def test_memory_budget_error():
    model = make_network()
    with pytest.raises(PreflightError) as raised:
        preflight(model, make_data(), memory_budget=100)
    message = str(raised.value)
    assert "--memory-budget" in message
    assert "memory_budget=" in message


def test_stateful_forward_restored():
    class Counter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = make_network()
            self.register_buffer("calls", torch.zeros(()))
            self.eval()

        def forward(self, x):
            self.calls += 1
            return self.inner(x)

    model = Counter()
    report = preflight(model, make_data())
    assert "stateful_forward" in codes(report)
    assert float(model.calls) == 0.0


def test_probe_size_limits_batch():
    seen: list[int] = []
    model = Wrapped(lambda logits: seen.append(len(logits)) or logits)
    preflight(model, make_data(), probe_size=3)
    assert max(seen) == 3


def test_invalid_probe_size():
    with pytest.raises(ValueError, match="probe_size"):
        preflight(make_network(), make_data(), probe_size=0)


def test_exported_program_shape_guard(tmp_path):
    network = make_network()
    program = torch.export.export(network, (torch.zeros(2, D),))
    with pytest.raises(PreflightError, match="dynamic batch size"):
        preflight(program.module(), make_data())


def test_exported_program_with_dynamic_batch():
    network = make_network()
    program = torch.export.export(network, (torch.zeros(2, D),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    report = preflight(program.module(), make_data())
    assert report.num_classes == C
    assert report.flags == []
