"""The analysis sections of a results file, recomputed from its own per-sample values."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from robusteval.digits import digits_split
from robusteval.pipeline import EvaluationConfig, evaluate


def trained_on_digits(build: Callable[[], nn.Module], *, steps: int) -> tuple[nn.Module, torch.Tensor]:
    """Build a model with torch's seed 0, train it full-batch on the digits train split; return it in eval mode and the inputs."""
    torch.manual_seed(0)
    x, y = (torch.from_numpy(a) for a in digits_split("train"))
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval(), x


def save_exported(build: Callable[[], nn.Module], path: Path) -> Path:
    """Train the model of ``build`` for 60 steps and save it with torch.export, batch size dynamic; return ``path``."""
    model, x = trained_on_digits(build, steps=60)
    program = torch.export.export(model, (x[:4],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def narrow_results(tmp_path_factory):
    """A 64-3-10 network: few activation regions, so many samples share one."""
    model, _ = trained_on_digits(lambda: nn.Sequential(nn.Linear(64, 3), nn.ReLU(), nn.Linear(3, 10)), steps=100)
    folder = tmp_path_factory.mktemp("narrow")
    torch.jit.save(torch.jit.script(model), str(folder / "narrow.pt"))
    config = EvaluationConfig(model=str(folder / "narrow.pt"), samples=40, attacks=("fmn", "deepfool"),
                              parameter_space=False, bootstrap=200, seed=1)
    evaluate(config, out_dir=folder / "out")
    return json.loads((folder / "out" / "results.json").read_text())


def test_tangent_sensitivity_constant_within_region(narrow_results):
    regions = narrow_results["regions"]
    assert regions["available"] is True
    assert regions["distinct_patterns"] < regions["samples"]
    assert regions["shared_regions"] >= 1
    assert regions["max_relative_ts_spread_within_region"] < 1e-5


def test_region_counts_match_sample_hashes(narrow_results):
    hashes = [sample["activation_region"] for sample in narrow_results["samples"]]
    assert narrow_results["regions"]["distinct_patterns"] == len(set(hashes))


def test_predictive_coefficients_recomputed_from_samples(narrow_results):
    samples = narrow_results["samples"]
    entries = {(entry["score"], entry["target"]): entry for entry in narrow_results["predictive"]}
    entry = entries[("logit_margin", "min_adversarial_distance_l2")]

    pairs = [(s["logit_margin"], s["min_adversarial_distance"]["l2"]) for s in samples
             if s["logit_margin"] is not None and s["min_adversarial_distance"]["l2"] is not None]
    score, target = (np.array(values) for values in zip(*pairs))
    assert entry["n"] == len(pairs)
    assert entry["spearman"] == pytest.approx(stats.spearmanr(score, target).statistic, abs=1e-12)
    assert entry["kendall"] == pytest.approx(stats.kendalltau(score, target).statistic, abs=1e-12)
    lower, upper = entry["spearman_ci"]
    assert lower <= entry["spearman"] <= upper


def test_bracket_counts_match_samples(narrow_results):
    bracket = narrow_results["geometry"]["bracket"]["l2"]
    violations = [s for s in samples_with_both(narrow_results, "l2")
                  if s["certified_radius"]["l2"] > s["min_adversarial_distance"]["l2"] * (1 + 1e-4)]
    assert bracket["violations"] == len(violations) == 0


def samples_with_both(results, norm):
    return [s for s in results["samples"]
            if s["certified_radius"][norm] is not None and s["min_adversarial_distance"][norm] is not None]


def test_tanh_network_gets_no_certificate(tmp_path):
    """Certified radii assume a piecewise-linear network; a tanh network must not get any."""
    path = save_exported(lambda: nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)), tmp_path / "tanh.pt2")

    results = evaluate(EvaluationConfig(model=str(path), samples=12, attacks=("fmn", "deepfool"),
                                        parameter_space=False, bootstrap=20))

    assert "not_piecewise_linear" in [flag.code for flag in results.flags]
    for sample in results.samples:
        assert sample.certified_radius.l2 is None
        assert sample.certified_radius.linf is None
        assert sample.certificate_exact == {"l2": False, "linf": False}
        assert sample.linear_decision_distance.l2 is not None


def test_relu_mlp_keeps_certificates_at_small_radii(tmp_path):
    """Near the decision boundary float32 rounding dominates f(x + d) - f(x); a ReLU MLP must not be flagged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    x = torch.rand(128, 784, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    torch.save(model.state_dict(), tmp_path / "mlp.pt")
    np.savez(tmp_path / "inputs.npz", x=x.numpy(), y=y.numpy())

    results = evaluate(EvaluationConfig(model=str(tmp_path / "mlp.pt"), arch="mlp:784-256-256-10",
                                        data=str(tmp_path / "inputs.npz"), attacks=("fgsm",),
                                        parameter_space=False, bootstrap=20))

    assert "not_piecewise_linear" not in [flag.code for flag in results.flags]
    radii = [sample.certified_radius.l2 for sample in results.samples]
    assert all(radius is not None for radius in radii)
    assert min(radii) < 1e-3


def test_tanh_beside_relus_gets_no_certificate(tmp_path):
    """With ReLUs located, region distances fall below the decision distances and the radii are tiny,
    so only the curvature probe can tell that the tanh layer breaks the certificate."""
    path = save_exported(
        lambda: nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)),
        tmp_path / "mixed.pt2",
    )

    results = evaluate(EvaluationConfig(model=str(path), samples=12, attacks=("fmn",), parameter_space=False,
                                        bootstrap=20))

    flags = [flag for flag in results.flags if flag.code == "not_piecewise_linear"]
    assert flags
    assert flags[0].details["relative_curvature"] > 1e-3
    for sample in results.samples:
        assert sample.certified_radius.l2 is None
        assert sample.region_distance.l2 is None
