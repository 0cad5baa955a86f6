"""`run` on TorchScript, state_dict, torch.export and CNN models, checked from the results file.

The per-sample values written by the pipeline (float32) are compared with independent float64
references: tangent sensitivity from the full autograd tangent matrix d/dx grad_theta f_k, and
region distances from one autograd gradient per hidden unit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacfwd, jacrev

from robusteval.architectures import build_architecture
from robusteval.data import load_data
from robusteval.digits import digits_split
from robusteval.pipeline import EvaluationConfig, evaluate

SAMPLES = 6
# float32 pipeline against float64 references
RELATIVE_TOLERANCE = 1e-4


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def reference_tangent_sensitivity(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of the full (P x d) matrix d/dx grad_theta f_k per sample and class, ``(N, K)``."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def logits(p, sample):
        return functional_call(model, p, (sample.unsqueeze(0),)).squeeze(0)

    rows = []
    for sample in x:
        tangent = jacfwd(lambda s: jacrev(logits)(params, s))(sample)
        classes = next(iter(tangent.values())).shape[0]
        rows.append(sum(t.reshape(classes, -1).square().sum(dim=1) for t in tangent.values()).sqrt())
    return torch.stack(rows)


def reference_region_distance(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """min_i |z_i| / ||grad z_i||_dual over hidden pre-activations, one autograd pass per unit."""
    preactivations: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, inputs, _o: preactivations.append(inputs[0]))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    distances = {"l2": [], "linf": []}
    try:
        for sample in x:
            preactivations.clear()
            point = sample.unsqueeze(0).clone().requires_grad_(True)
            model(point)
            values = torch.cat([z.flatten() for z in preactivations])
            best = {"l2": math.inf, "linf": math.inf}
            for unit in range(values.numel()):
                (gradient,) = torch.autograd.grad(values[unit], point, retain_graph=True)
                value = abs(float(values[unit].detach()))
                best["l2"] = min(best["l2"], value / float(gradient.norm(p=2)))
                best["linf"] = min(best["linf"], value / float(gradient.norm(p=1)))
            for norm in best:
                distances[norm].append(best[norm])
    finally:
        for hook in hooks:
            hook.remove()
    return {norm: torch.tensor(values, dtype=torch.float64) for norm, values in distances.items()}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, tuple[Path, str | None, str, nn.Module]]:
    """Three formats of trained digits classifiers: path, --arch, data spec, eager float64 twin."""
    folder = tmp_path_factory.mktemp("models")
    x, y = (torch.from_numpy(a) for a in digits_split("train"))
    files = {}

    torch.manual_seed(0)
    mlp = train(build_architecture("mlp:64-24-24-10"), x, y)
    torch.jit.save(torch.jit.script(mlp), str(folder / "mlp_scripted.pt"))
    files["torchscript_mlp"] = (folder / "mlp_scripted.pt", None, "digits", mlp)

    torch.manual_seed(1)
    arch = "mlp:64-20-10"
    weights = train(build_architecture(arch), x, y)
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.state_dict().items()}}, folder / "weights.pt")
    files["state_dict"] = (folder / "weights.pt", arch, "digits", weights)

    torch.manual_seed(3)
    exported = train(build_architecture("mlp:64-16-16-10"), x, y)
    program = torch.export.export(exported, (x[:4],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(folder / "mlp_exported.pt2"))
    files["export_mlp"] = (folder / "mlp_exported.pt2", None, "digits", exported)

    torch.manual_seed(2)
    cnn = train(build_architecture("cnn:1x8x8-6-10"), x.reshape(-1, 1, 8, 8), y)
    torch.jit.save(torch.jit.script(cnn), str(folder / "cnn_scripted.pt"))
    files["torchscript_cnn"] = (folder / "cnn_scripted.pt", None, "digits:image", cnn)
    return files


@pytest.mark.parametrize("kind", ["torchscript_mlp", "state_dict", "export_mlp", "torchscript_cnn"])
def test_run_matches_independent_references(kind, model_files, tmp_path):
    path, arch, data, twin = model_files[kind]
    config = EvaluationConfig(model=str(path), arch=arch, data=data, samples=SAMPLES, seed=0,
                              attacks=("fmn", "deepfool"), parameter_space=False, bootstrap=20)
    evaluate(config, out_dir=tmp_path)
    payload = json.loads((tmp_path / "results.json").read_text())
    samples = payload["samples"]
    assert len(samples) == SAMPLES

    x = load_data(data).x[:SAMPLES].double()
    twin = twin.double()
    expected_ts = reference_tangent_sensitivity(twin, x)
    written_ts = torch.tensor([s["tangent_sensitivity"] for s in samples], dtype=torch.float64)
    torch.testing.assert_close(written_ts, expected_ts, rtol=RELATIVE_TOLERANCE, atol=0)

    expected_regions = reference_region_distance(twin, x)
    for norm in ("l2", "linf"):
        written = torch.tensor([s["region_distance"][norm] for s in samples], dtype=torch.float64)
        torch.testing.assert_close(written, expected_regions[norm], rtol=RELATIVE_TOLERANCE, atol=1e-7)

    compared = 0
    for sample in samples:
        for norm in ("l2", "linf"):
            found = sample["min_adversarial_distance"][norm]
            if found is not None:
                assert sample["certified_radius"][norm] <= found * (1 + 1e-5)
                compared += 1
    assert compared > 0


class _ScriptedNet(nn.Module):
    """A model written as a class, the most common way to write one; scripted, its ReLU is hidden."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 12)
        self.fc2 = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_run_on_scripted_class_model(tmp_path):
    x, y = (torch.from_numpy(a) for a in digits_split("train"))
    torch.manual_seed(4)
    model = train(_ScriptedNet(), x, y)
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(model), str(path))

    results = evaluate(EvaluationConfig(model=str(path), samples=SAMPLES, attacks=("fmn", "deepfool"),
                                        parameter_space=False, bootstrap=20), out_dir=tmp_path / "out")

    codes = [flag.code for flag in results.flags]
    assert "region_distance_unavailable" in codes
    written_ts = torch.tensor([s.tangent_sensitivity for s in results.samples], dtype=torch.float64)
    expected_ts = reference_tangent_sensitivity(model.double(), load_data("digits").x[:SAMPLES].double())
    torch.testing.assert_close(written_ts, expected_ts, rtol=RELATIVE_TOLERANCE, atol=0)
    for sample in results.samples:
        assert sample.region_distance.l2 is None
        assert sample.certified_radius.l2 is None
        assert sample.linear_decision_distance.l2 is not None
