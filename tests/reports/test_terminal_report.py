"""The terminal report rendered on a fixed-width console."""

from __future__ import annotations

from rich.console import Console

from robusteval.reports.terminal import _scale_at_drop, render
from robusteval.results import (
    DataInfo,
    EnvironmentInfo,
    Flag,
    ModelInfo,
    NormPair,
    Results,
    SampleRecord,
    ThreatModelResult,
)


def make_results(flags: list[Flag]) -> Results:
    samples = [
        SampleRecord(
            index=i, label=1, prediction=1, correct=True, tangent_sensitivity=[1.0 + i, 2.0],
            region_distance=NormPair(l2=0.01 * (i + 1), linf=0.001), linear_decision_distance=NormPair(l2=0.5, linf=0.05),
            certified_radius=NormPair(l2=0.01 * (i + 1), linf=0.001), min_adversarial_distance=NormPair(l2=0.6, linf=0.07),
            certificate_exact={"l2": i == 0, "linf": False}, active_units=[3, 2], activation_region=f"r{i}",
        )
        for i in range(4)
    ]
    return Results(
        model=ModelInfo(path="m.pt", sha256="ab", format="torchscript", parameter_count=1234, piecewise_linear=True,
                        architecture="mlp:64-8-2", num_classes=2, name="m.pt"),
        data=DataInfo(name="digits", sha256="cd", num_samples=4, input_shape=[64], input_bounds=[0.0, 1.0], num_classes=2),
        environment=EnvironmentInfo(robusteval="0.1.0", torch="2.13.0", foolbox="3.3.4", torchattacks="3.5.1",
                                    python="3.11", device="cpu", seed=5),
        clean_accuracy=1.0,
        threat_models=[ThreatModelResult(norm="linf", epsilons=[0.05, 0.1, 0.3], robust_accuracy=[0.75, 0.25, 0.0],
                                         attacks=["fmn"], attack_success_rate=[0.25, 0.75, 1.0],
                                         per_attack_robust_accuracy={"fmn": [0.75, 0.25, 0.0]})],
        samples=samples,
        flags=flags,
        parameter_space={"weight_noise": [{"mode": "layer", "scales": [0.0, 0.5], "accuracy": [1.0, 0.5],
                                           "sharpness_sigma": 0.3}],
                         "adversarial_weights": {"scales": [0.0, 0.1, 0.2], "accuracy": [1.0, 0.8, 0.4]}},
        predictive=[{"score": "logit_margin", "target": "min_adversarial_distance_l2", "spearman": 0.8,
                     "spearman_ci": [0.5, 0.9], "kendall": 0.6, "kendall_ci": [0.3, 0.8], "n": 4}],
        geometry={"method": "closed_form"},
    )


def rendered(results: Results) -> str:
    console = Console(width=100, record=True, force_terminal=False, color_system=None)
    render(results, console)
    return console.export_text()


def test_report_names_model_data_and_accuracy():
    text = rendered(make_results([]))
    assert "m.pt" in text
    assert "1,234 parameters" in text
    assert "mlp:64-8-2" in text
    assert "digits: 4 samples of shape (64,)" in text
    assert "100.0%" in text
    assert "75.0% at 0.05, 25.0% at 0.1, 0.0% at 0.3" in text
    assert "tangent sensitivity: closed_form" in text
    assert "l2 1/4" in text  # one exact certificate
    assert "No flags" in text


def test_report_lists_flags_with_severity():
    flag = Flag("zero_gradients", "error", "Input gradients are zero for 3 samples.", "attacks")
    text = rendered(make_results([flag]))
    assert "[error] zero_gradients" in text
    assert "Input gradients are zero for 3 samples." in text
    assert "No flags" not in text


def test_report_shows_predictive_and_parameter_space():
    text = rendered(make_results([]))
    assert "logit margin" in text
    assert "min. adv. dist. l2" in text
    assert "+0.80 [+0.50, +0.90]" in text
    awp_row = next(line for line in text.splitlines() if "adversarial weights (AWP)" in line)
    assert awp_row.rstrip(" │").endswith("0.05")  # accuracy 1.0 -> 0.8 over [0, 0.1] crosses 0.9 at 0.05


def test_scale_at_drop_interpolates_between_grid_points():
    assert _scale_at_drop([0.0, 0.1, 0.2], [1.0, 0.8, 0.4]) == 0.05
    assert _scale_at_drop([0.0, 0.1], [1.0, 0.95]) is None
    assert _scale_at_drop([0.0], [1.0]) is None


def test_report_without_certified_radii_says_so():
    results = make_results([])
    for sample in results.samples:
        sample.certified_radius = NormPair(l2=None, linf=None)
        sample.certificate_exact = {"l2": False, "linf": False}

    # The caption wraps, so compare with whitespace collapsed.
    text = " ".join(rendered(results).split())

    assert "No certified radii" in text
    assert "Certified radius is exact" not in text


def test_report_marks_correlations_on_few_samples():
    text = " ".join(rendered(make_results([])).split())

    assert "4*" in text
    assert "fewer than 20 samples" in text


def test_report_says_update_search_kept_clean_example():
    results = make_results([])
    results.parameter_space["single_example_update"] = [
        {"mode": "output", "step_size": 0.1, "changed_clean": 458, "num_eval": 540, "norm": "l2",
         "epsilon": 0.003, "changed_perturbed": 458, "delta_l2": 0.0},
    ]

    text = " ".join(rendered(results).split())

    assert "changes 458 of 540 predictions" in text
    assert "kept the unperturbed example" in text
